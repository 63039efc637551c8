//! Placement and lifecycle policies: capacity never overfilled under concurrency, per-repo
//! quotas with demos starting in order as room frees, TTL since the last push, the draft
//! policy, and the metrics that show it all.

use std::time::Duration;

use demofleet_controller::scheduler::placement;
use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::services::{Services, TestDb};
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;
use serde_json::{json, Value};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_placements_never_overfill_a_host() {
    let services = Services::from_env();
    let test_db = TestDb::create(&services).await;
    let db = sqlx::PgPool::connect(&test_db.url).await.unwrap();
    // `full` has room for demos but not 2 GiB of free disk; `b` reports plenty, `a` nothing.
    for (host, capacity, free_mb) in
        [("a", 3, None), ("b", 2, Some(5000)), ("drained", 50, None), ("full", 50, Some(100))]
    {
        sqlx::query(
            "insert into hosts (id, address, capacity, draining, disk_total_bytes, disk_free_bytes)
             values ($1, '127.0.0.1', $2, $3, $4 * 4, $4)",
        )
        .bind(host)
        .bind(capacity)
        .bind(host == "drained")
        .bind(free_mb.map(|mb: i64| mb << 20))
        .execute(&db)
        .await
        .unwrap();
    }
    let mut tasks = Vec::new();
    for pr in 1..=12i64 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let id = Uuid::new_v4();
            let mut tx = db.begin().await.unwrap();
            sqlx::query(
                "insert into demos (id, owner, repo, pr, name, desired, state, sha, clone_url, github_user)
                 values ($1, 'o', 'r', $2, $3, 'running', 'pending', 'x', 'u', 'a')",
            )
            .bind(id)
            .bind(pr)
            .bind(format!("r-o-pr-{pr}"))
            .execute(&mut *tx)
            .await
            .unwrap();
            let host = placement::place(&mut tx, None, Duration::from_secs(30), 2048 << 20).await.unwrap();
            sqlx::query("update demos set host_id = $2 where id = $1")
                .bind(id)
                .bind(&host)
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            host
        }));
    }
    let mut placed = Vec::new();
    for task in tasks {
        placed.push(task.await.unwrap());
    }
    let count = |h: &str| placed.iter().filter(|p| p.as_deref() == Some(h)).count();
    assert_eq!((count("a"), count("b"), count("drained"), count("full")), (3, 2, 0, 0), "{placed:?}");
    assert_eq!(placed.iter().filter(|p| p.is_none()).count(), 7, "the rest wait");
    db.close().await;
    test_db.drop_db().await;
}

fn site(stack: &Stack, repo_name: &str) -> (FixtureRepo, String) {
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", repo_name);
    let files = fixtures::static_site(&stack.services.base_image, "policy");
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    let sha = repo.commit("demo", &files);
    (repo, sha)
}

fn event(file: &str, repo: &FixtureRepo, sha: &str, pr: u64) -> Value {
    let mut body = fixtures::pull_request(file, repo, sha);
    body["number"] = pr.into();
    body["pull_request"]["number"] = pr.into();
    body["pull_request"]["updated_at"] = Value::Null;
    body
}

async fn put_settings(stack: &Stack, repo: &FixtureRepo, settings: Value) -> reqwest::Response {
    stack.put_settings(&repo.owner, &repo.repo, &settings).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repo_quota_ttl_and_draft_policy() {
    let stack = Stack::start(StackOptions::default()).await;
    let repo_name = format!("pol-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let (repo, sha) = site(&stack, &repo_name);
    let name = |pr: u64| format!("{repo_name}-fixture-owner-pr-{pr}");

    // Settings are validated.
    let bad = put_settings(&stack, &repo, json!({ "draft_policy": "explode" })).await;
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("draft_policy"));
    let unknown = put_settings(&stack, &repo, json!({ "max_demo": 1 })).await;
    assert_eq!(unknown.status(), 400);
    let ok = put_settings(&stack, &repo, json!({ "max_demos": 1, "draft_policy": "stop" })).await;
    assert_eq!(ok.status(), 200);

    // Quota: one demo of this repository at a time; the second waits, then starts.
    for pr in [1, 2] {
        let (_, response) = stack.deliver("pull_request", &event("pull_request.opened.json", &repo, &sha, pr)).await;
        assert_eq!(response.status(), 202);
        if pr == 1 {
            stack.wait_for_state(&name(1), "running", DEADLINE).await;
        }
    }
    stack.wait_for_state(&name(2), "pending", DEADLINE).await;
    // Draft policy `stop`: converting PR 1 to a draft stops it, which frees room for PR 2.
    let mut draft = event("pull_request.opened.json", &repo, &sha, 1);
    draft["action"] = "converted_to_draft".into();
    let (_, response) = stack.deliver("pull_request", &draft).await;
    assert_eq!(response.json::<Value>().await.unwrap()["outcome"], "teardown_queued");
    stack.wait_for_state(&name(1), "stopped", DEADLINE).await;
    stack.wait_for_state(&name(2), "running", DEADLINE).await;

    // TTL: with a one-second TTL the running demo is stopped, by "ttl".
    let ok = put_settings(&stack, &repo, json!({ "max_demos": 1, "ttl_seconds": 1 })).await;
    assert_eq!(ok.status(), 200);
    stack.wait_for_state(&name(2), "stopped", DEADLINE).await;
    let actor: String = sqlx::query_scalar(
        "select a.actor from audit_events a join demos d on d.id = a.demo_id where d.pr = 2 and a.action = 'stop'",
    )
    .fetch_one(&stack.db)
    .await
    .unwrap();
    assert_eq!(actor, "ttl");

    // The metrics tell the story.
    let metrics = stack.get("/metrics").await.text().await.unwrap();
    for line in [
        "demofleet_webhook_deliveries_total{event=\"pull_request\",outcome=\"deploy_queued\"} 2",
        "demofleet_webhook_deliveries_total{event=\"pull_request\",outcome=\"teardown_queued\"} 1",
        "demofleet_demos{state=\"stopped\"} 2",
        "demofleet_hosts{status=\"up\"} 1",
        "demofleet_step_attempts_total{step=\"build\",outcome=\"succeeded\"} 2",
        "demofleet_queue_messages{queue=\"demofleet.dead\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in\n{metrics}");
    }
    assert!(metrics.contains("demofleet_step_duration_seconds_count{step=\"health\"} 2"), "{metrics}");
    wait::until("the outbox to drain", DEADLINE, || async { (stack.count("outbox").await == 0).then_some(()) }).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_short_of_disk_reports_it_and_gets_no_new_demo() {
    // No file system here has a million GiB free.
    let options = StackOptions {
        controller_args: vec!["--min-free-disk-mb".into(), (1u64 << 30).to_string()],
        ..Default::default()
    };
    let stack = Stack::start(options).await;
    let host = wait::until("the agent's disk in its heartbeat", DEADLINE, || async {
        let hosts = stack.get_json("/api/hosts").await;
        let host = hosts.get(0)?.clone();
        (host["disk_free_bytes"].as_i64()? > 0).then_some(host)
    })
    .await;
    assert!(host["disk_total_bytes"].as_i64().unwrap() >= host["disk_free_bytes"].as_i64().unwrap());
    assert_eq!(host["low_disk"], true, "{host}");

    let (repo, sha) = site(&stack, &format!("disk-{}", &Uuid::new_v4().simple().to_string()[..8]));
    let (_, response) =
        stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    assert_eq!(response.status(), 202);
    // Several ticks later it still waits for a host with room on disk.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let demo = stack.demo(&format!("{}-fixture-owner-pr-2", repo.repo)).await.unwrap();
    assert_eq!((demo["state"].as_str(), demo["host"].as_str()), (Some("pending"), None), "{demo}");
    assert!(demo.get("host").is_some(), "the API names a demo's host (null here): {demo}");
    stack.stop().await;
}
