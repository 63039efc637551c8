//! Load for the webhook intake benchmarks (`scripts/bench`, parts `intake` and `sustained`):
//! signed `pull_request` deliveries over N keep-alive connections for a fixed time, each
//! with a delivery id of its own (`<prefix>-<connection>-<counter>`: a run id and a phase in
//! the prefix make them unique across warm-ups, rounds and runs). Every request sent before
//! the deadline is waited for, so the answers counted are every delivery the service saw.
//!
//! Prints one `BENCH intake …` summary line, a line per window on stderr as the run goes,
//! and (`--windows-out`) the windows as JSON lines: requests per second and latency
//! quantiles of the responses completed in each window.
//!
//! Closed loop by default, as wrk: each connection sends its next request when the previous
//! one is answered, so a stall shows as fewer requests and a long maximum, not as a queue.
//! This measures how much the service can take.
//!
//! Open loop with `--rate`, as wrk2 and as GitHub sends (its deliveries do not wait for our
//! answers to others): each connection has a schedule of its share of the rate, and a
//! request's latency counts from the moment the schedule set for it, not from when it went
//! out. A request held back by a slow answer before it on its connection is counted late by
//! as much, so a stall shows as the latencies of every request it delayed (no coordinated
//! omission). This measures how fast the service answers at a given load.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use demofleet_common::duration::parse_duration;

#[derive(Debug, Parser)]
struct Args {
    /// Where deliveries go: `http://HOST:PORT/PATH`.
    #[arg(long)]
    url: String,
    /// The webhook secret the deliveries are signed with (`X-Hub-Signature-256`).
    #[arg(long, env = "DEMOFLEET_BENCH_SECRET")]
    secret: String,
    /// A `pull_request` payload to send, edited per pull request.
    #[arg(long)]
    payload: std::path::PathBuf,
    /// Pull requests the deliveries go to, round-robin (numbers 1..=N).
    #[arg(long, default_value_t = 50)]
    prs: u32,
    #[arg(long, default_value_t = 32)]
    connections: u32,
    #[arg(long, value_parser = parse_duration)]
    duration: Duration,
    /// Width of a reporting window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    window: Duration,
    /// Delivery ids are `<prefix>-<connection>-<counter>`.
    #[arg(long)]
    delivery_prefix: String,
    /// A name for the target, in the output (`demofleet`, `demoservice`).
    #[arg(long, default_value = "target")]
    label: String,
    /// Write the windows here, one JSON object a line.
    #[arg(long)]
    windows_out: Option<std::path::PathBuf>,
    /// The pull requests' `updated_at` (RFC 3339). Default: now, so that no earlier run's
    /// event is newer; loads sent at once to replicas share one, or the later start's
    /// events make the earlier's stale.
    #[arg(long)]
    updated_at: Option<String>,
    /// Requests a second over all connections, on a fixed schedule (open loop); without it,
    /// as many as the service answers (closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Write each request answered slower than `--slow` here, one line each: when it was
    /// due (seconds into the run), its latency in ms, its pull request and its connection;
    /// to see when stalls happen and what they hold up.
    #[arg(long)]
    slow_out: Option<std::path::PathBuf>,
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    slow: Duration,
    /// How long to wait for the answers of requests sent before the deadline.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    drain: Duration,
}

/// The responses completed within one window.
#[derive(Debug, Default, Clone)]
struct Window {
    /// Latency of each 2xx answer, in microseconds.
    latencies_us: Vec<u32>,
    non2xx: u64,
    errors: u64,
}

/// Every window of the run, by index.
#[derive(Default)]
struct Record {
    windows: Mutex<Vec<Window>>,
    /// Requests slower than `--slow`, kept only for `--slow-out`: due (s into the run),
    /// latency, pull request, connection.
    slow: Mutex<Vec<(f64, Duration, usize, u32)>>,
}

impl Record {
    fn add(&self, index: usize, outcome: Result<(u16, Duration), ()>) {
        let mut windows = self.windows.lock().expect("windows");
        if windows.len() <= index {
            windows.resize_with(index + 1, Window::default);
        }
        let window = &mut windows[index];
        match outcome {
            Ok((status, latency)) if (200..300).contains(&status) => {
                window.latencies_us.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX))
            }
            Ok(_) => window.non2xx += 1,
            Err(()) => window.errors += 1,
        }
    }
}

/// One signed body per pull request.
struct Deliveries {
    bodies: Vec<Bytes>,
    signatures: Vec<String>,
}

impl Deliveries {
    fn new(args: &Args) -> anyhow::Result<Deliveries> {
        let template: Value = serde_json::from_slice(&std::fs::read(&args.payload)?)?;
        let now = match &args.updated_at {
            Some(at) => at.clone(),
            None => time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?,
        };
        let (mut bodies, mut signatures) = (Vec::new(), Vec::new());
        for pr in 1..=args.prs {
            let mut payload = template.clone();
            payload["number"] = json!(pr);
            payload["pull_request"]["number"] = json!(pr);
            payload["pull_request"]["updated_at"] = json!(now);
            let sha = hex::encode(Sha256::digest(pr.to_string()));
            payload["pull_request"]["head"]["sha"] = json!(sha[..40]);
            let body = serde_json::to_vec(&payload)?;
            let mut mac = Hmac::<Sha256>::new_from_slice(args.secret.as_bytes())?;
            mac.update(&body);
            signatures.push(format!("sha256={}", hex::encode(mac.finalize().into_bytes())));
            bodies.push(Bytes::from(body));
        }
        Ok(Deliveries { bodies, signatures })
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(authority: &str) -> std::io::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One connection's loop: a request, its answer, the next, until `deadline`; connecting
/// again whenever the server closed the connection (gunicorn's sync workers close each).
async fn run_connection(
    index: u32,
    args: Arc<Args>,
    deliveries: Arc<Deliveries>,
    record: Arc<Record>,
    start: Instant,
    deadline: Instant,
) {
    let uri: hyper::Uri = args.url.parse().expect("--url is a URL");
    let authority = uri.authority().expect("--url names a host").to_string();
    let mut sender: Option<Sender> = None;
    let mut counter: u64 = 0;
    let mut schedule = args.rate.map(|rate| Schedule::new(rate, args.connections, index, start));
    loop {
        // An open loop's request is due at its set time; a closed loop's when it goes out.
        let due = schedule.as_mut().map(Schedule::next);
        if due.unwrap_or_else(Instant::now) >= deadline {
            break;
        }
        if let Some(due) = due.filter(|due| *due > Instant::now()) {
            // The timer's resolution is a millisecond: a request may go out up to one late,
            // and that counts in its latency. One already due goes at once.
            tokio::time::sleep_until(due.into()).await;
        }
        let kept = match sender.take() {
            Some(mut s) => s.ready().await.is_ok().then_some(s),
            None => None,
        };
        let mut ready = match kept {
            Some(s) => s,
            None => match connect(&authority).await {
                Ok(s) => s,
                Err(_) => {
                    record.add(window_of(start, args.window, args.duration, Instant::now()), Err(()));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        counter += 1;
        let pr = (u64::from(index) + counter) as usize % deliveries.bodies.len();
        let request = hyper::Request::post(uri.clone())
            .header(hyper::header::HOST, &authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "GitHub-Hookshot/bench")
            .header("x-github-event", "pull_request")
            .header("x-github-delivery", format!("{}-{index}-{counter}", args.delivery_prefix))
            .header("x-hub-signature-256", &deliveries.signatures[pr])
            .body(Full::new(deliveries.bodies[pr].clone()))
            .expect("a valid request");
        // Latency counts from when the request was due.
        let from = due.unwrap_or_else(Instant::now);
        let outcome = match ready.send_request(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.into_body().collect().await {
                    Ok(_) => Ok((status, from.elapsed())),
                    Err(_) => Err(()),
                }
            }
            Err(_) => Err(()),
        };
        if let (Ok((_, latency)), Some(_)) = (outcome, &args.slow_out) {
            if latency >= args.slow {
                let at = from.saturating_duration_since(start).as_secs_f64();
                record.slow.lock().expect("slow").push((at, latency, pr + 1, index));
            }
        }
        let failed = outcome.is_err();
        record.add(window_of(start, args.window, args.duration, Instant::now()), outcome);
        if !failed {
            sender = Some(ready);
        }
    }
}

/// One connection's share of an open loop's requests: `rate / connections` a second, evenly
/// spaced, the connections' schedules staggered so that the requests of all of them are too.
struct Schedule {
    first: Instant,
    interval: Duration,
    sent: u32,
}

impl Schedule {
    fn new(rate: f64, connections: u32, index: u32, start: Instant) -> Schedule {
        let interval = Duration::from_secs_f64(f64::from(connections) / rate);
        Schedule { first: start + interval * index / connections, interval, sent: 0 }
    }

    /// When the next request is due.
    fn next(&mut self) -> Instant {
        let due = self.first + self.interval * self.sent;
        self.sent += 1;
        due
    }
}

/// The window a moment falls in; answers after the deadline count in the last window.
fn window_of(start: Instant, width: Duration, duration: Duration, at: Instant) -> usize {
    let last = (duration.as_secs_f64() / width.as_secs_f64()).ceil().max(1.0) as usize - 1;
    ((at.saturating_duration_since(start).as_secs_f64() / width.as_secs_f64()) as usize).min(last)
}

/// Quantile `q` of sorted `values`, by the nearest-rank method.
fn quantile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1000.0
}

/// One window (or the whole run) as JSON: counts, rate over `seconds`, latency in ms.
fn summary(window: &Window, seconds: f64) -> Value {
    let mut sorted = window.latencies_us.clone();
    sorted.sort_unstable();
    let ok = sorted.len() as u64;
    json!({
        "ok": ok, "non2xx": window.non2xx, "errors": window.errors,
        "rps": (ok as f64 / seconds.max(1e-9) * 10.0).round() / 10.0,
        "p50_ms": quantile(&sorted, 0.50), "p90_ms": quantile(&sorted, 0.90),
        "p99_ms": quantile(&sorted, 0.99), "max_ms": sorted.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
    })
}

/// CPU time this process used so far, in seconds (utime + stime, in clock ticks of 1/100 s
/// as on every Linux this runs on).
fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
    ticks / 100.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    anyhow::ensure!(args.prs >= 1 && args.connections >= 1, "--prs and --connections must be at least 1");
    anyhow::ensure!(args.rate.is_none_or(|rate| rate > 0.0), "--rate must be more than 0");
    let deliveries = Arc::new(Deliveries::new(&args)?);
    let record = Arc::new(Record::default());
    let start = Instant::now();
    let deadline = start + args.duration;
    let tasks: Vec<_> = (0..args.connections)
        .map(|index| {
            let work = run_connection(index, args.clone(), deliveries.clone(), record.clone(), start, deadline);
            tokio::spawn(work)
        })
        .collect();
    let reporter = tokio::spawn(report_windows(args.clone(), record.clone(), start));
    let drained = tokio::time::timeout(args.duration + args.drain, futures::future::join_all(tasks)).await;
    let elapsed = start.elapsed().as_secs_f64();
    reporter.abort();
    anyhow::ensure!(drained.is_ok(), "requests still unanswered {:?} after the deadline", args.drain);

    let windows = record.windows.lock().expect("windows").clone();
    let width = args.window.as_secs_f64();
    let mut lines = Vec::new();
    for (i, window) in windows.iter().enumerate() {
        let end = ((i + 1) as f64 * width).min(args.duration.as_secs_f64());
        let mut line = summary(window, end - i as f64 * width);
        line["label"] = json!(args.label);
        line["t_s"] = json!(end);
        lines.push(line);
    }
    if let Some(path) = &args.windows_out {
        let mut file = std::fs::File::create(path)?;
        for line in &lines {
            writeln!(file, "{line}")?;
        }
    }
    if let Some(path) = &args.slow_out {
        let mut file = std::fs::File::create(path)?;
        let mut slow = record.slow.lock().expect("slow").clone();
        slow.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (at, latency, pr, connection) in slow {
            writeln!(file, "{at:.4} {:.2} {pr} {connection}", latency.as_secs_f64() * 1000.0)?;
        }
    }
    let mut total = Window::default();
    for window in &windows {
        total.latencies_us.extend(&window.latencies_us);
        total.non2xx += window.non2xx;
        total.errors += window.errors;
    }
    let all = summary(&total, args.duration.as_secs_f64());
    println!(
        "BENCH intake label={} prefix={} requests={} ok={} non2xx={} errors={} seconds={:.1} rps={:.0} \
         p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2} loadgen_cpu_s={:.1}",
        args.label,
        args.delivery_prefix,
        all["ok"].as_u64().unwrap_or(0) + total.non2xx + total.errors,
        all["ok"],
        total.non2xx,
        total.errors,
        elapsed,
        all["rps"].as_f64().unwrap_or(0.0),
        all["p50_ms"].as_f64().unwrap_or(0.0),
        all["p90_ms"].as_f64().unwrap_or(0.0),
        all["p99_ms"].as_f64().unwrap_or(0.0),
        all["max_ms"].as_f64().unwrap_or(0.0),
        own_cpu_seconds(),
    );
    Ok(())
}

/// Each window on stderr once it has closed, while the run goes on.
async fn report_windows(args: Arc<Args>, record: Arc<Record>, start: Instant) {
    let mut index = 0;
    loop {
        let end = start + args.window * (index as u32 + 1);
        if end > start + args.duration {
            return;
        }
        tokio::time::sleep_until(end.into()).await;
        // Answers in flight at the window's end are counted by when they complete.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let window = record.windows.lock().expect("windows").get(index).cloned().unwrap_or_default();
        let line = summary(&window, args.window.as_secs_f64());
        eprintln!(
            "{} window {} (to {:.0} s): {} req/s, p50 {} ms, p99 {} ms, max {} ms, non-2xx {}, errors {}",
            args.label,
            index + 1,
            (end - start).as_secs_f64(),
            line["rps"],
            line["p50_ms"],
            line["p99_ms"],
            line["max_ms"],
            line["non2xx"],
            line["errors"]
        );
        index += 1;
    }
}
