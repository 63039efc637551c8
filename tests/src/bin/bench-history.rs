//! Fills a migrated, empty benchmark database with months of made-up use, for the sustained
//! intake benchmark (`scripts/bench`, part `sustained`): past webhook deliveries, demos of
//! many repositories with every generation's chain, the steps each chain reached and their
//! attempts, audit events and GitHub feedback. Set-based (`generate_series` into staging
//! tables, then one `insert … select` per table), so a million deliveries take minutes.
//!
//! Proportions: demos opened evenly over `--months`; a pull request gets one to forty
//! pushes (about four on average), each a deploy chain; most older demos are closed
//! (a teardown chain, `stopped`); of those opened in the last month about half run, a fifth
//! sleep, a tenth failed and a few await approval. Older generations' chains mostly
//! succeeded, some were superseded part way or failed. The rest of the deliveries are
//! events demofleet records and ignores (labels, comments, pushes, checks).
//!
//! Running and sleeping demos are placed on hosts `sim-001`… as `fleet-sim` names them;
//! `--inventory` writes their containers for `fleet-sim --inventory`, so the simulated
//! agents report what the record says they run and reconcile finds nothing to do.
//! Pseudo-random choices come from `hashint8` of the row number and `--seed`: the same
//! seed makes the same history.

use std::io::Write;
use std::time::Instant;

use clap::Parser;
use sqlx::{Connection, Executor, PgConnection};

#[derive(Debug, Parser)]
struct Args {
    /// The benchmark database, migrated and without demos.
    #[arg(long, env = "DEMOFLEET_DATABASE_URL")]
    database_url: String,
    #[arg(long, default_value_t = 100_000)]
    demos: i64,
    /// Webhook deliveries in all: one per chain a webhook caused, the rest ignored events.
    #[arg(long, default_value_t = 1_000_000)]
    deliveries: i64,
    /// How far back the history goes.
    #[arg(long, default_value_t = 6)]
    months: i64,
    /// Hosts the open demos are spread over (`sim-001`, …; the same as `fleet-sim --agents`).
    #[arg(long, default_value_t = 100)]
    hosts: i64,
    /// Demos each host may run.
    #[arg(long, default_value_t = 200)]
    capacity: i64,
    #[arg(long, default_value_t = 22)]
    seed: i64,
    /// Write the running and sleeping demos' containers here, for `fleet-sim --inventory`.
    #[arg(long)]
    inventory: Option<std::path::PathBuf>,
}

/// The staging tables: one row per demo, then one per chain.
const STAGE_DEMOS: &str = "
create temp table h_demo as
with drawn as (
    select n, pg_temp.r(n, 1) as age, floor(pg_temp.r(n, 2) * 400)::int as repo_index,
           1 + least(39, floor(-ln(1 - pg_temp.r(n, 3)) * 3.5))::int as pushes,
           pg_temp.r(n, 4) as fate, pg_temp.r(n, 5) as place
    from generate_series(1, $1::bigint) n
), fated as (
    select *,
           case when age < 1.0 / $2 then
                    case when fate < 0.48 then 'running' when fate < 0.66 then 'sleeping'
                         when fate < 0.75 then 'failed' when fate < 0.78 then 'awaiting_approval' else 'stopped' end
                when fate < 0.005 then 'running' else 'stopped' end as state
    from drawn
)
select n, md5('demo-' || n)::uuid as id, 'org-' || (repo_index % 25) as owner, 'repo-' || repo_index as repo,
       state, pushes, repo_index,
       now() - make_interval(days => ($2 * 30)::int) * age as created_at,
       -- How long the pull request lived: up to three weeks for closed ones (closed before
       -- now), until now for open ones.
       make_interval(days => ($2 * 30)::int) * age
           * case when state = 'stopped'
                  then least(0.95, (3600 + pg_temp.r(n, 6) * 20 * 86400)
                                   / greatest(extract(epoch from make_interval(days => ($2 * 30)::int) * age), 1))
                  else 1 end as lifetime,
       case when state in ('running', 'sleeping') or (state = 'failed' and place < 0.6)
            then 'sim-' || lpad((1 + floor(place * $3))::int::text, 3, '0') end as host_id
from fated";

const STAGE_CHAINS: &str = "
create temp table h_chain as
with chains as (
    -- Every push: a deploy chain of its own generation.
    select d.n, d.id as demo_id, g as generation, 'deploy' as kind, d.state, g = d.pushes as last,
           d.created_at + d.lifetime * ((g - 1)::float8 / d.pushes) as created_at
    from h_demo d, generate_series(1, d.pushes) g
    union all
    -- Closed: a teardown, one generation later.
    select d.n, d.id, d.pushes + 1, 'teardown', d.state, true, d.created_at + d.lifetime
    from h_demo d where d.state = 'stopped'
    union all
    -- Asleep: a sleep chain of the newest generation, an hour or more after the last push.
    select d.n, d.id, d.pushes, 'sleep', d.state, true, now() - make_interval(secs => 3600 + pg_temp.r(d.n, 7) * 86400)
    from h_demo d where d.state = 'sleeping'
), judged as (
    select c.*, pg_temp.r(c.n * 64 + c.generation, 8) as luck from chains c
)
select md5('chain-' || n || '-' || generation || '-' || kind)::uuid as id, demo_id, n, generation, kind, created_at,
       case when kind <> 'deploy' then 'succeeded'
            when last and state = 'failed' then 'failed'
            when last and state = 'awaiting_approval' then 'awaiting_approval'
            when last then 'succeeded'
            when luck < 0.85 then 'succeeded' when luck < 0.95 then 'superseded' else 'failed' end as status,
       case when kind = 'sleep' then null
            else md5('delivery-' || n || '-' || generation || '-' || kind)::uuid::text end as delivery_id,
       case kind when 'deploy' then case when generation = 1 then 'opened' else 'synchronize' end
                 when 'teardown' then 'closed' end as action,
       luck
from judged";

/// How far each chain got: the steps stored are positions 1..reached; the last one ends
/// as `ending` after `attempts` attempts.
const STAGE_REACH: &str = "
alter table h_chain add column reached int, add column ending text, add column attempts int;
update h_chain set (reached, ending, attempts) = (
    select case when status = 'succeeded' then case kind when 'deploy' then 7 else 2 end
                when status = 'awaiting_approval' then 1
                when status = 'superseded' then 1 + floor(luck * 100)::int % 5
                -- Failed deploys: mostly the build, then the health check, then the checkout.
                when luck * 10 - floor(luck * 10) < 0.6 then 3 when luck * 10 - floor(luck * 10) < 0.9 then 5
                else 2 end,
           case status when 'succeeded' then 'succeeded' when 'awaiting_approval' then 'waiting'
                       when 'superseded' then 'queued' else 'failed' end,
           case status when 'failed' then 5 else 1 end)";

const INSERT_HOSTS: &str = "
insert into hosts (id, address, capacity, agent_version, first_seen, last_seen, disk_total_bytes, disk_free_bytes)
select 'sim-' || lpad(i::text, 3, '0'), '10.99.' || ((i - 1) / 250) || '.' || ((i - 1) % 250 + 1), $2, '0.1.0',
       now() - make_interval(days => ($1 * 30)::int), now(), 200::bigint << 30, 150::bigint << 30
from generate_series(1, $3::bigint) i";

const INSERT_DEMOS: &str = "
insert into demos (id, owner, repo, pr, name, desired, state, generation, sha, clone_url, github_user, host_id,
                   serving_host, host_port, routed, error, created_at, updated_at, event_at, deployed_at,
                   last_request_at, notify)
select d.id, d.owner, d.repo, d.n, d.repo || '-' || d.owner || '-pr-' || d.n,
       case d.state when 'stopped' then 'stopped' else 'running' end, d.state,
       d.pushes + (d.state = 'stopped')::int,
       md5(d.n || '-' || d.pushes) || left(md5(d.n::text), 8),
       'https://github.com/' || d.owner || '/' || d.repo || '.git', 'user-' || d.n % 300,
       d.host_id, case when d.state in ('running', 'sleeping') then d.host_id end,
       case when d.state in ('running', 'sleeping') then 20000 + (d.n % 40000)::int end,
       d.state = 'running',
       case d.state when 'failed' then 'build: the Dockerfile''s RUN step exited with 1' end,
       d.created_at, d.created_at + d.lifetime, d.created_at + d.lifetime, d.created_at + d.lifetime,
       case when d.state in ('running', 'sleeping') then now() - make_interval(secs => pg_temp.r(d.n, 9) * 86400) end,
       true
from h_demo d";

/// The deliveries that caused chains, each with the event it carried (as the intake keeps it).
const INSERT_CHAIN_DELIVERIES: &str = "
insert into webhook_deliveries (delivery_id, event, action, received_at, outcome, demo_id, chain_id, item)
select c.delivery_id, 'pull_request', c.action, c.created_at - interval '40 ms',
       case c.kind when 'teardown' then 'teardown_queued' else 'deploy_queued' end, c.demo_id, c.id,
       jsonb_build_object('kind', c.kind, 'delivery', c.delivery_id, 'event', 'pull_request', 'action', c.action,
                          'owner', d.owner, 'repo', d.repo, 'pr', d.n, 'name', d.repo || '-' || d.owner || '-pr-' || d.n,
                          'sha', md5(d.n || '-' || c.generation) || left(md5(d.n::text), 8),
                          'clone_url', 'https://github.com/' || d.owner || '/' || d.repo || '.git',
                          'github_user', 'user-' || d.n % 300, 'event_at', c.created_at - interval '1 s',
                          'actor', 'github:user-' || d.n % 300)
from h_chain c join h_demo d using (n)
where c.delivery_id is not null";

/// The rest: events demofleet records and ignores.
const INSERT_IGNORED_DELIVERIES: &str = "
insert into webhook_deliveries (delivery_id, event, action, received_at, outcome, detail)
select md5('ignored-' || $3 || '-' || k)::uuid::text, e.event, e.action,
       now() - make_interval(days => ($2 * 30)::int) * pg_temp.r(k, 11), 'ignored', e.detail
from generate_series(1, $1::bigint) k
cross join lateral (
    select * from (values
        (0, 'pull_request', 'labeled', 'action not used by demofleet'),
        (1, 'pull_request', 'edited', 'action not used by demofleet'),
        (2, 'pull_request', 'review_requested', 'action not used by demofleet'),
        (3, 'issue_comment', 'created', 'not an approval'),
        (4, 'issue_comment', 'created', 'not an approval'),
        (5, 'pull_request_review', 'submitted', 'event not used by demofleet'),
        (6, 'push', null, 'event not used by demofleet'),
        (7, 'check_suite', 'completed', 'event not used by demofleet'),
        (8, 'check_run', 'completed', 'event not used by demofleet'),
        (9, 'status', null, 'event not used by demofleet')
    ) v (i, event, action, detail)
    where v.i = floor(pg_temp.r(k, 12) * 10)::int
) e";

const INSERT_CHAINS: &str = "
insert into chains (id, demo_id, generation, kind, status, delivery_id, error, created_at, finished_at)
select id, demo_id, generation, kind, status, delivery_id,
       case status when 'failed' then 'step failed after 5 attempts' end, created_at,
       case when status in ('succeeded', 'failed', 'superseded') then created_at + interval '9 s' end
from h_chain";

/// Every chain's steps up to the one it reached, with the outputs agents report.
const INSERT_STEPS: &str = "
insert into chain_steps (chain_id, position, name, status, attempts, error, output, queued_at, finished_at)
select c.id, p.position, p.name,
       case when p.position < c.reached then 'succeeded' else c.ending end,
       case when p.position < c.reached then 1 else c.attempts end,
       case when p.position = c.reached and c.ending = 'failed' then p.name || ': exited with status 1' end,
       case p.name
           when 'build' then jsonb_build_object('image', 'demofleet/' || c.n || ':g' || c.generation)
           when 'launch' then jsonb_build_object('container_id', md5(c.id::text) || md5(c.n::text),
                                                 'host_port', 20000 + c.n % 40000)
       end,
       c.created_at + make_interval(secs => p.offset_s),
       case when p.position < c.reached or c.ending in ('succeeded', 'failed')
            then c.created_at + make_interval(secs => p.offset_s + p.seconds * (0.5 + c.luck)) end
from h_chain c
join (values ('deploy', 1, 'authorize', 0.0, 0.01), ('deploy', 2, 'checkout', 0.05, 0.1),
             ('deploy', 3, 'build', 0.2, 6.0), ('deploy', 4, 'launch', 6.3, 1.2),
             ('deploy', 5, 'health', 7.6, 0.02), ('deploy', 6, 'route', 7.7, 0.01),
             ('deploy', 7, 'retire', 7.8, 0.05), ('teardown', 1, 'unroute', 0.0, 0.01),
             ('teardown', 2, 'stop', 0.05, 0.5), ('sleep', 1, 'unroute', 0.0, 0.01),
             ('sleep', 2, 'sleep', 0.05, 0.3))
     p (kind, position, name, offset_s, seconds)
  on p.kind = c.kind and p.position <= c.reached";

/// One row per attempt of each step an agent ran to an end.
const INSERT_ATTEMPTS: &str = "
insert into step_attempts (chain_id, position, attempt, host_id, outcome, error, duration_ms, finished_at)
select s.chain_id, s.position, a, coalesce(d.host_id, 'sim-001'),
       case when a < s.attempts or s.status = 'failed' then 'failed' else 'succeeded' end,
       case when a < s.attempts or s.status = 'failed' then s.name || ': exited with status 1' end,
       greatest(1, extract(epoch from s.finished_at - s.queued_at) * 1000)::bigint, s.finished_at
from chain_steps s
join h_chain c on c.id = s.chain_id
join h_demo d on d.n = c.n
cross join generate_series(1, s.attempts) a
where s.name not in ('authorize', 'route', 'unroute') and s.status in ('succeeded', 'failed')";

const INSERT_AUDIT: &str = "
insert into audit_events (at, actor, action, demo_id, detail)
select c.created_at, case c.kind when 'sleep' then 'idle-sleep' else 'github:user-' || c.n % 300 end,
       case c.kind when 'deploy' then 'start' when 'teardown' then 'stop' else 'sleep' end, c.demo_id,
       jsonb_build_object('generation', c.generation, 'delivery', c.delivery_id)
from h_chain c";

const INSERT_FEEDBACK: &str = "
insert into github_feedback (demo_id, comment_id, deployment_id, deployment_sha, synced)
select d.id, 1000000 + d.n, 2000000 + d.n, md5(d.n || '-' || d.pushes) || left(md5(d.n::text), 8), d.state
from h_demo d where d.state <> 'awaiting_approval'";

/// The hosts' numbers of demos, as migration 10's trigger would have kept them.
const FOLD_HOST_LOAD: &str = "
truncate host_load_changes;
insert into host_load (host_id, demos)
select host_id, count(*) from demos where desired = 'running' and host_id is not null group by host_id
on conflict (host_id) do update set demos = excluded.demos";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.demos >= 1 && args.hosts >= 1 && args.months >= 1, "--demos, --hosts, --months: at least 1");
    let mut db = PgConnection::connect(&args.database_url).await?;
    let existing: i64 = sqlx::query_scalar("select count(*) from demos").fetch_one(&mut db).await?;
    anyhow::ensure!(existing == 0, "the database already holds {existing} demos: give an empty, migrated one");
    // Row number and a salt → [0, 1), the same for the same seed whatever the plan's order.
    db.execute(
        format!(
            "create function pg_temp.r(n bigint, salt int) returns float8 language sql immutable as
             $$ select (hashint8(n * 1000003 + salt * 7919 + {}) & 2147483647)::float8 / 2147483648 $$",
            args.seed
        )
        .as_str(),
    )
    .await?;
    let began = Instant::now();
    step(&mut db, "staging demos", sqlx::query(STAGE_DEMOS).bind(args.demos).bind(args.months).bind(args.hosts))
        .await?;
    step(&mut db, "staging chains", sqlx::query(STAGE_CHAINS)).await?;
    for part in statements(STAGE_REACH) {
        step(&mut db, "staging how far chains got", sqlx::query(part)).await?;
    }
    let chain_deliveries: i64 =
        sqlx::query_scalar("select count(*) from h_chain where delivery_id is not null").fetch_one(&mut db).await?;
    let ignored = args.deliveries - chain_deliveries;
    anyhow::ensure!(
        ignored >= 0,
        "{chain_deliveries} chains came from webhooks, more than --deliveries {}: ask for more deliveries or fewer demos",
        args.deliveries
    );
    let hosts = sqlx::query(INSERT_HOSTS).bind(args.months).bind(args.capacity as i32).bind(args.hosts);
    step(&mut db, "hosts", hosts).await?;
    step(&mut db, "demos", sqlx::query(INSERT_DEMOS)).await?;
    step(&mut db, "deliveries that made chains", sqlx::query(INSERT_CHAIN_DELIVERIES)).await?;
    let others = sqlx::query(INSERT_IGNORED_DELIVERIES).bind(ignored).bind(args.months).bind(args.seed);
    step(&mut db, "ignored deliveries", others).await?;
    step(&mut db, "chains", sqlx::query(INSERT_CHAINS)).await?;
    step(&mut db, "chain steps", sqlx::query(INSERT_STEPS)).await?;
    step(&mut db, "step attempts", sqlx::query(INSERT_ATTEMPTS)).await?;
    step(&mut db, "audit events", sqlx::query(INSERT_AUDIT)).await?;
    step(&mut db, "GitHub feedback", sqlx::query(INSERT_FEEDBACK)).await?;
    for part in statements(FOLD_HOST_LOAD) {
        step(&mut db, "host load", sqlx::query(part)).await?;
    }
    // As autovacuum would have, over months: statistics and the visibility map.
    for table in ["webhook_deliveries", "demos", "chains", "chain_steps", "step_attempts", "audit_events", "hosts"] {
        step(&mut db, &format!("vacuum analyze {table}"), sqlx::query(&format!("vacuum analyze {table}"))).await?;
    }
    eprintln!("history made in {:.1} s", began.elapsed().as_secs_f64());
    report(&mut db, args.seed).await?;
    if let Some(path) = &args.inventory {
        write_inventory(&mut db, path).await?;
    }
    Ok(())
}

/// The statements of a `;`-separated script.
fn statements(script: &str) -> impl Iterator<Item = &str> {
    script.split(';').filter(|s| !s.trim().is_empty())
}

async fn step<'q>(
    db: &mut PgConnection,
    what: &str,
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> anyhow::Result<()> {
    let began = Instant::now();
    let rows = query.execute(&mut *db).await.map_err(|e| anyhow::anyhow!("{what}: {e}"))?.rows_affected();
    eprintln!("{what}: {rows} rows, {:.1} s", began.elapsed().as_secs_f64());
    Ok(())
}

/// What the history holds, as `BENCH history …` lines.
async fn report(db: &mut PgConnection, seed: i64) -> anyhow::Result<()> {
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "select 'deliveries', count(*) from webhook_deliveries union all select 'demos', count(*) from demos
         union all select 'chains', count(*) from chains union all select 'chain_steps', count(*) from chain_steps
         union all select 'step_attempts', count(*) from step_attempts
         union all select 'audit_events', count(*) from audit_events",
    )
    .fetch_all(&mut *db)
    .await?;
    let line: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("BENCH history seed={seed} {}", line.join(" "));
    for (what, sql) in [
        ("demo states", "select state, count(*) from demos group by 1 order by 2 desc"),
        ("chain statuses", "select kind || '/' || status, count(*) from chains group by 1 order by 2 desc"),
        ("delivery outcomes", "select outcome, count(*) from webhook_deliveries group by 1 order by 2 desc"),
        (
            "generations per demo",
            "select 'p50=' || percentile_disc(0.5) within group (order by generation) || ' p90=' ||
                    percentile_disc(0.9) within group (order by generation), max(generation) from demos",
        ),
        ("database size", "select pg_size_pretty(pg_database_size(current_database())), 0::bigint"),
    ] {
        let rows: Vec<(String, i64)> = sqlx::query_as(sql).fetch_all(&mut *db).await?;
        let parts: Vec<String> = rows.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        println!("BENCH history {what}: {}", parts.join(", "));
    }
    Ok(())
}

/// `host demo generation port running|exited`, one line per container the record says runs.
async fn write_inventory(db: &mut PgConnection, path: &std::path::Path) -> anyhow::Result<()> {
    let rows: Vec<(String, uuid::Uuid, i64, i32, String)> = sqlx::query_as(
        "select host_id, id, generation, host_port, state from demos
         where desired = 'running' and state in ('running', 'sleeping') order by host_id, id",
    )
    .fetch_all(&mut *db)
    .await?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (host, demo, generation, port, state) in &rows {
        let running = if state == "running" { "running" } else { "exited" };
        writeln!(out, "{host} {demo} {generation} {port} {running}")?;
    }
    out.flush()?;
    eprintln!("inventory of {} containers written to {}", rows.len(), path.display());
    Ok(())
}
