//! Where kept logs should live (issue 21, point 1): the two candidates measured side by side
//! with `--demos` builds (20 by default) writing their output at once.
//!
//! - `postgres`: what the controller's keeper does (crate `keep_logs`): lines gathered into
//!   batches of at most 2,000 or 100 ms, each batch one `db::logs::append` (one row per
//!   line, appends taking turns), every generation written to trimmed to `--keep-bytes`
//!   every 5 s (`db::logs::trim`).
//! - `disk`: what an agent would do to keep them itself: one file per demo and generation,
//!   lines appended through a buffer flushed on the same 100 ms, a file past `--keep-bytes`
//!   cut to its newest half on the same 5 s (serving them would then be NATS request/reply
//!   to that agent, not measured here).
//!
//! Each build writes `--lines` lines of about 100 bytes, paced at `--rate` lines a second
//! (0: as fast as it can). Every line is distinct and the number kept is checked against
//! what was written before and after the trim. Reports lines a second, the time from a
//! line's writing to its being stored (p50/p99/max), the CPU spent by this process and by
//! every PostgreSQL process, and what the store holds afterwards.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::sync::mpsc;
use uuid::Uuid;

use demofleet_controller::db::logs::{self, NewLine};

#[derive(Debug, Parser)]
struct Args {
    /// A migrated benchmark database of its own (its demos and kept lines are replaced).
    #[arg(long, env = "DEMOFLEET_DATABASE_URL")]
    database_url: String,
    /// Where the `disk` store writes (emptied first).
    #[arg(long, default_value = "/var/tmp/demofleet-bench-logs")]
    dir: PathBuf,
    #[arg(long, default_value_t = 20)]
    demos: usize,
    /// Lines each build writes.
    #[arg(long, default_value_t = 20_000)]
    lines: usize,
    /// Lines a second each build writes; 0 for as fast as it can.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = 5 * 1024 * 1024)]
    keep_bytes: i64,
}

const BATCH: usize = 2_000;
const FLUSH_EVERY: Duration = Duration::from_millis(100);
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// A line on its way to the store, with the moment it was written.
struct Written {
    line: NewLine,
    at: Instant,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    demofleet_controller::migrate(&args.database_url).await?;
    let db = demofleet_controller::connect_db(&args.database_url, 4).await?;
    sqlx::query("delete from demo_logs").execute(&db).await?;
    sqlx::query("delete from demos where owner = 'bench-logs'").execute(&db).await?;
    let mut demos = Vec::new();
    for n in 0..args.demos {
        let id = Uuid::new_v4();
        sqlx::query(
            "insert into demos (id, owner, repo, pr, name, desired, state, sha, clone_url, github_user)
             values ($1, 'bench-logs', 'build', $2, $3, 'running', 'starting', 'x', 'x', 'x')",
        )
        .bind(id)
        .bind(n as i64 + 1)
        .bind(format!("build-bench-logs-pr-{}", n + 1))
        .execute(&db)
        .await?;
        demos.push(id);
    }
    println!(
        "{} builds at once, {} lines each ({} a second each), keeping {} bytes per generation",
        args.demos,
        args.lines,
        if args.rate == 0 { "as many as possible".to_string() } else { args.rate.to_string() },
        args.keep_bytes
    );
    println!(
        "| store | lines/s | stored after p50 | p99 | max | CPU here | CPU PostgreSQL | kept lines | kept bytes |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for store in [Store::Postgres(db.clone()), Store::Disk(args.dir.clone())] {
        let run = run(&args, &demos, store).await?;
        println!("{run}");
    }
    Ok(())
}

enum Store {
    Postgres(sqlx::PgPool),
    Disk(PathBuf),
}

struct Run {
    name: &'static str,
    lines: usize,
    elapsed: Duration,
    delays: Vec<Duration>,
    cpu_here: Duration,
    cpu_postgres: Duration,
    kept_lines: i64,
    kept_bytes: i64,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut delays = self.delays.clone();
        delays.sort_unstable();
        let at = |q: f64| delays[((delays.len() - 1) as f64 * q) as usize];
        write!(
            f,
            "| {} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {:.2} s | {:.2} s | {} | {} |",
            self.name,
            self.lines as f64 / self.elapsed.as_secs_f64(),
            at(0.5).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3,
            at(1.0).as_secs_f64() * 1e3,
            self.cpu_here.as_secs_f64(),
            self.cpu_postgres.as_secs_f64(),
            self.kept_lines,
            self.kept_bytes
        )
    }
}

async fn run(args: &Args, demos: &[Uuid], store: Store) -> anyhow::Result<Run> {
    let (cpu_here, cpu_postgres) = (own_cpu(), postgres_cpu());
    let started = Instant::now();
    let (tx, mut rx) = mpsc::channel::<Written>(100_000);
    // Each run writes a generation of its own, so no line repeats between runs.
    let generation = match store {
        Store::Postgres(_) => 1,
        Store::Disk(_) => 2,
    };
    for (n, demo) in demos.iter().enumerate() {
        let (tx, demo, lines, rate) = (tx.clone(), *demo, args.lines, args.rate);
        tokio::spawn(async move {
            let pace = (rate > 0).then(|| Duration::from_secs_f64(1.0 / rate as f64));
            let begun = Instant::now();
            for i in 0..lines {
                let line =
                    format!("#{n:02} step {i:06}/{lines}: RUN make -j2 all && sha256sum build/output-{i:06}.bin ok");
                let written = Written {
                    line: NewLine { demo_id: demo, generation, step: "build".into(), line },
                    at: Instant::now(),
                };
                if tx.send(written).await.is_err() {
                    return;
                }
                if let Some(pace) = pace {
                    let due = begun + pace * (i as u32 + 1);
                    tokio::time::sleep_until(due.into()).await;
                }
            }
        });
    }
    drop(tx);
    let mut delays = Vec::with_capacity(args.lines * demos.len());
    let mut batch: Vec<Written> = Vec::new();
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    let mut trimmed = Instant::now();
    let mut files: HashMap<Uuid, std::io::BufWriter<std::fs::File>> = HashMap::new();
    if let Store::Disk(dir) = &store {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
    }
    let mut open = true;
    while open || !batch.is_empty() {
        let full = batch.len() >= BATCH;
        if open && !full {
            tokio::select! {
                written = rx.recv() => match written {
                    Some(written) => { batch.push(written); continue; }
                    None => open = false,
                },
                _ = flush.tick() => {}
            }
        }
        if batch.is_empty() {
            continue;
        }
        let lines: Vec<Written> = std::mem::take(&mut batch);
        match &store {
            Store::Postgres(db) => {
                let rows: Vec<NewLine> = lines.iter().map(|w| w.line.clone()).collect();
                logs::append(db, &rows).await?;
            }
            Store::Disk(dir) => {
                for written in &lines {
                    let file = match files.get_mut(&written.line.demo_id) {
                        Some(file) => file,
                        None => {
                            let path = log_file(dir, written.line.demo_id, generation);
                            let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
                            files.entry(written.line.demo_id).or_insert(std::io::BufWriter::new(file))
                        }
                    };
                    writeln!(file, "{}", written.line.line)?;
                }
                for file in files.values_mut() {
                    file.flush()?;
                }
            }
        }
        let stored = Instant::now();
        delays.extend(lines.iter().map(|w| stored - w.at));
        if trimmed.elapsed() >= TRIM_EVERY || (!open && rx.is_empty()) {
            trim(&store, demos, generation, args.keep_bytes, &mut files).await?;
            trimmed = Instant::now();
        }
    }
    trim(&store, demos, generation, args.keep_bytes, &mut files).await?;
    let elapsed = started.elapsed();
    let (kept_lines, kept_bytes) = kept(&store, demos, generation).await?;
    let written = args.lines * demos.len();
    anyhow::ensure!(delays.len() == written, "{} lines stored of {written} written", delays.len());
    // Every demo keeps its newest lines up to the bound: no more, and not much less.
    let bound = args.keep_bytes * demos.len() as i64;
    anyhow::ensure!(kept_bytes <= bound, "kept {kept_bytes} bytes, more than {bound}");
    anyhow::ensure!(kept_lines > 0, "nothing kept");
    Ok(Run {
        name: match store {
            Store::Postgres(_) => "PostgreSQL (demo_logs)",
            Store::Disk(_) => "agent's disk (a file per generation)",
        },
        lines: written,
        elapsed,
        delays,
        cpu_here: own_cpu() - cpu_here,
        cpu_postgres: postgres_cpu().saturating_sub(cpu_postgres),
        kept_lines,
        kept_bytes,
    })
}

fn log_file(dir: &Path, demo: Uuid, generation: i64) -> PathBuf {
    dir.join(format!("{demo}-{generation}.log"))
}

/// Trim every demo's generation to `keep` bytes: in PostgreSQL as the keeper does; on disk,
/// a file past the bound is cut to its newest lines within half of it (so it is not
/// rewritten at every look).
async fn trim(
    store: &Store,
    demos: &[Uuid],
    generation: i64,
    keep: i64,
    files: &mut HashMap<Uuid, std::io::BufWriter<std::fs::File>>,
) -> anyhow::Result<()> {
    match store {
        Store::Postgres(db) => {
            for demo in demos {
                logs::trim(db, *demo, generation, keep, 3).await?;
            }
        }
        Store::Disk(dir) => {
            for demo in demos {
                let path = log_file(dir, *demo, generation);
                let Ok(meta) = std::fs::metadata(&path) else { continue };
                if meta.len() as i64 <= keep {
                    continue;
                }
                if let Some(mut file) = files.remove(demo) {
                    file.flush()?;
                }
                let text = std::fs::read(&path)?;
                let mut start = text.len() - (keep as usize / 2);
                while start < text.len() && text[start - 1] != b'\n' {
                    start += 1;
                }
                let cut = path.with_extension("cut");
                std::fs::write(&cut, &text[start..])?;
                std::fs::rename(&cut, &path)?;
            }
        }
    }
    Ok(())
}

/// Lines and bytes (each line with its newline) the store keeps of `generation`.
async fn kept(store: &Store, demos: &[Uuid], generation: i64) -> anyhow::Result<(i64, i64)> {
    match store {
        Store::Postgres(db) => Ok(sqlx::query_as(
            "select count(*), coalesce(sum(octet_length(line) + 1), 0)::int8 from demo_logs where generation = $1",
        )
        .bind(generation)
        .fetch_one(db)
        .await?),
        Store::Disk(dir) => {
            let (mut lines, mut bytes) = (0, 0);
            for demo in demos {
                let text = std::fs::read(log_file(dir, *demo, generation)).unwrap_or_default();
                lines += text.iter().filter(|b| **b == b'\n').count() as i64;
                bytes += text.len() as i64;
            }
            Ok((lines, bytes))
        }
    }
}

/// CPU time this process has spent.
fn own_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    Duration::from_secs_f64(stat_ticks(&stat, 2).map_or(0.0, |(_, ticks)| ticks) / USER_HZ)
}

/// CPU time every process named `postgres` has spent, with its exited children's (so the
/// backends that ended meanwhile count through the server that started them).
fn postgres_cpu() -> Duration {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        if let Some(("postgres", ticks)) = stat_ticks(&stat, 4) {
            total += ticks;
        }
    }
    Duration::from_secs_f64(total / USER_HZ)
}

/// Clock ticks a second in /proc (USER_HZ).
const USER_HZ: f64 = 100.0;

/// A /proc/<pid>/stat line's command name and the sum of its first `n` CPU times (utime,
/// stime, cutime, cstime: fields 14 to 17).
fn stat_ticks(stat: &str, n: usize) -> Option<(&str, f64)> {
    let (head, rest) = stat.rsplit_once(") ")?;
    let name = head.split_once('(')?.1;
    let fields: Vec<&str> = rest.split(' ').collect();
    Some((name, fields.get(11..11 + n)?.iter().filter_map(|v| v.parse::<f64>().ok()).sum()))
}
