//! Retention: with `--retention 1h` and batches of two, the fleet's tick removes webhook
//! deliveries and finished chains (with their steps and attempts) older than an hour, a few
//! at a time, and keeps what is recent, every demo's newest chain however old, chains still
//! running, and the deliveries those name. The kept log lines of a demo stopped long ago go
//! too; those of a running demo stay. `/metrics` counts the same before and after: its
//! counters never go down. And `/metrics` counts the history as a count of every row would,
//! though it reads only the rows after a mark the tick moves.

use std::time::Duration;

use uuid::Uuid;

use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_outlived_the_retention_goes_in_batches_and_the_counts_stay() {
    let options = StackOptions {
        agents: 0,
        controller_args: ["--retention", "1h", "--retention-batch", "2"].map(String::from).to_vec(),
        ..Default::default()
    };
    let stack = Stack::start(options).await;
    let db = &stack.db;
    let (a, b) = (demo(db, 1).await, demo(db, 2).await);
    // Deliveries: five old ones nothing names, one recent, and two old ones that chains name.
    for n in 0..5 {
        delivery(db, &format!("old-{n}"), "3 days").await;
    }
    delivery(db, "recent", "1 minute").await;
    delivery(db, "old-of-pruned-chain", "3 days").await;
    delivery(db, "old-of-newest-chain", "2 days").await;
    // Demo a: an old finished chain with a step and two attempts, then its newest (old too).
    let pruned = chain(db, a, "succeeded", "3 days", Some("old-of-pruned-chain")).await;
    let superseded = chain(db, a, "superseded", "2 days 12 hours", None).await;
    let newest_a = chain(db, a, "failed", "2 days", Some("old-of-newest-chain")).await;
    // Demo b: an old finished chain, then one still running since long ago.
    let old_b = chain(db, b, "failed", "5 days", None).await;
    let running_b = chain(db, b, "running", "4 days", None).await;
    // Kept log lines: a demo stopped two days ago, and running demo a's (old too).
    let stopped = demo(db, 3).await;
    sqlx::query(
        "update demos set desired = 'stopped', state = 'stopped', updated_at = now() - interval '2 days' where id = $1",
    )
    .bind(stopped)
    .execute(db)
    .await
    .unwrap();
    for demo in [stopped, stopped, stopped, a] {
        sqlx::query(
            "insert into demo_logs (demo_id, generation, step, line, at)
             values ($1, 1, 'build', 'x', now() - interval '2 days')",
        )
        .bind(demo)
        .execute(db)
        .await
        .unwrap();
    }
    let before = counters(&stack).await;
    assert!(before.contains("demofleet_step_attempts_total{step=\"build\",outcome=\"failed\"} 10"), "{before}");

    wait::until_seen("the old rows to go", DEADLINE, || async {
        let left: Vec<String> = sqlx::query_scalar(
            "select delivery_id from webhook_deliveries union all select id::text from chains order by 1",
        )
        .fetch_all(db)
        .await
        .map_err(|e| e.to_string())?;
        let expected = {
            let mut kept = vec![
                "old-of-newest-chain".to_string(),
                "recent".to_string(),
                newest_a.to_string(),
                running_b.to_string(),
            ];
            kept.sort();
            kept
        };
        if left == expected {
            Ok(())
        } else {
            Err(format!("left: {left:?}"))
        }
    })
    .await;
    for gone in [pruned, superseded, old_b] {
        let steps: i64 = sqlx::query_scalar("select count(*) from chain_steps where chain_id = $1")
            .bind(gone)
            .fetch_one(db)
            .await
            .unwrap();
        assert_eq!(steps, 0, "the steps of chain {gone} went with it");
    }
    let steps: i64 = sqlx::query_scalar("select count(*) from step_attempts where chain_id = $1")
        .bind(newest_a)
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(steps, 2, "the newest chain keeps its attempts");
    wait::until_seen("the stopped demo's log lines to go", DEADLINE, || async {
        let left: Vec<Uuid> =
            sqlx::query_scalar("select demo_id from demo_logs").fetch_all(db).await.map_err(|e| e.to_string())?;
        if left == [a] {
            Ok(())
        } else {
            Err(format!("lines of {left:?}"))
        }
    })
    .await;
    assert_eq!(counters(&stack).await, before, "the counters of /metrics never go down");
    stack.stop().await;
}

/// `/metrics` reads the history's counts from a tally up to a mark that the tick moves, plus
/// the rows after it. Its counters equal a count of every row while the mark passes rows, when
/// a counted delivery changes its outcome, and for rows written with a time the mark passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counts_hold_as_the_mark_passes_the_history() {
    let stack = Stack::start(StackOptions { agents: 0, ..Default::default() }).await;
    let db = &stack.db;
    let a = demo(db, 1).await;
    for n in 0..3 {
        delivery(db, &format!("recent-{n}"), "30 seconds").await;
    }
    chain(db, a, "failed", "30 seconds", None).await;
    assert_eq!(counters(&stack).await, every_row(db).await);

    wait::until_seen("the marks to pass the rows", DEADLINE, || async {
        let passed: bool =
            sqlx::query_scalar("select bool_and(until > now() - interval '20 seconds') from count_marks")
                .fetch_one(db)
                .await
                .map_err(|e| e.to_string())?;
        passed.then_some(()).ok_or("not yet".to_string())
    })
    .await;
    let tallied: i64 =
        sqlx::query_scalar("select sum(counted)::int8 from webhook_delivery_counts").fetch_one(db).await.unwrap();
    assert_eq!(tallied, 3, "the deliveries passed are in the tally");
    assert_eq!(counters(&stack).await, every_row(db).await);

    // A counted delivery counted again under its new outcome.
    sqlx::query("update webhook_deliveries set outcome = 'deploy_queued' where delivery_id = 'recent-0'")
        .execute(db)
        .await
        .unwrap();
    assert_eq!(counters(&stack).await, every_row(db).await);

    // Rows written with times the marks passed long ago.
    delivery(db, "late", "1 hour").await;
    chain(db, a, "succeeded", "1 hour", None).await;
    let metrics = counters(&stack).await;
    assert_eq!(metrics, every_row(db).await);
    assert!(
        metrics.contains("demofleet_webhook_deliveries_total{event=\"pull_request\",outcome=\"ignored\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("demofleet_step_attempts_total{step=\"build\",outcome=\"failed\"} 4"), "{metrics}");
    stack.stop().await;
}

/// What [`counters`] shows, counted from every row (nothing removed).
async fn every_row(db: &sqlx::PgPool) -> String {
    let deliveries: Vec<(String, String, i64)> =
        sqlx::query_as("select event, outcome, count(*) from webhook_deliveries group by 1, 2 order by 1, 2")
            .fetch_all(db)
            .await
            .unwrap();
    let attempts: Vec<(String, String, i64, f64)> = sqlx::query_as(
        "select s.name, a.outcome, count(*), sum(a.duration_ms)::float8 / 1000
         from step_attempts a join chain_steps s on s.chain_id = a.chain_id and s.position = a.position
         group by 1, 2 order by 1, 2",
    )
    .fetch_all(db)
    .await
    .unwrap();
    let mut lines: Vec<String> = deliveries
        .iter()
        .map(|(event, outcome, n)| {
            format!("demofleet_webhook_deliveries_total{{event=\"{event}\",outcome=\"{outcome}\"}} {}", *n as f64)
        })
        .collect();
    lines.extend(attempts.iter().map(|(step, outcome, n, _)| {
        format!("demofleet_step_attempts_total{{step=\"{step}\",outcome=\"{outcome}\"}} {}", *n as f64)
    }));
    let steps: std::collections::BTreeSet<&String> = attempts.iter().map(|(step, ..)| step).collect();
    for step in steps {
        let of_step = attempts.iter().filter(|(s, ..)| s == step);
        let (count, sum) = of_step.fold((0, 0.0), |(c, t), (_, _, n, secs)| (c + n, t + secs));
        lines.push(format!("demofleet_step_duration_seconds_sum{{step=\"{step}\"}} {sum}"));
        lines.push(format!("demofleet_step_duration_seconds_count{{step=\"{step}\"}} {}", count as f64));
    }
    lines.join("\n")
}

/// A running demo of its own.
async fn demo(db: &sqlx::PgPool, pr: i64) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "insert into demos (id, owner, repo, pr, name, desired, state, sha, clone_url, github_user)
         values ($1, 'keep', 'history', $2, $3, 'running', 'running', 'x', 'x', 'x')",
    )
    .bind(id)
    .bind(pr)
    .bind(format!("history-keep-pr-{pr}"))
    .execute(db)
    .await
    .unwrap();
    id
}

/// A webhook delivery received `age` ago (a PostgreSQL interval).
async fn delivery(db: &sqlx::PgPool, id: &str, age: &str) {
    sqlx::query(
        "insert into webhook_deliveries (delivery_id, event, action, outcome, received_at)
         values ($1, 'pull_request', 'synchronize', 'ignored', now() - $2::interval)",
    )
    .bind(id)
    .bind(age)
    .execute(db)
    .await
    .unwrap();
}

/// A deploy chain of `demo` made `age` ago (and finished then, unless running), with a build
/// step that took two attempts.
async fn chain(db: &sqlx::PgPool, demo: Uuid, status: &str, age: &str, delivery: Option<&str>) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "insert into chains (id, demo_id, generation, kind, status, delivery_id, created_at, finished_at)
         values ($1, $2, 1, 'deploy', $3, $4, now() - $5::interval,
                 case when $3 = 'running' then null else now() - $5::interval end)",
    )
    .bind(id)
    .bind(demo)
    .bind(status)
    .bind(delivery)
    .bind(age)
    .execute(db)
    .await
    .unwrap();
    // The delivery names the chain it started, as the intake records it.
    sqlx::query("update webhook_deliveries set chain_id = $1 where delivery_id = $2")
        .bind(id)
        .bind(delivery)
        .execute(db)
        .await
        .unwrap();
    sqlx::query("insert into chain_steps (chain_id, position, name, status) values ($1, 2, 'build', 'failed')")
        .bind(id)
        .execute(db)
        .await
        .unwrap();
    for attempt in 1..=2 {
        sqlx::query(
            "insert into step_attempts (chain_id, position, attempt, outcome, duration_ms, finished_at)
             values ($1, 2, $2, 'failed', 1500, now() - $3::interval)",
        )
        .bind(id)
        .bind(attempt)
        .bind(age)
        .execute(db)
        .await
        .unwrap();
    }
    id
}

/// The counters of `/metrics` about deliveries and step attempts.
async fn counters(stack: &Stack) -> String {
    let text = stack.get("/metrics").await.text().await.unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("demofleet_webhook_deliveries_total") || l.starts_with("demofleet_step_"))
        .collect();
    lines.join("\n")
}
