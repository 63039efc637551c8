//! A burst of 1,000 signed deliveries for 50 pull requests, sent shuffled and 32 at a time:
//! every one is accepted durably, and each pull request ends in the state its newest event
//! (by the event's time, not its arrival) asks for.

use std::collections::HashMap;

use demofleet_tests::fixtures;
use demofleet_tests::rng::Rng;
use demofleet_tests::stack::{Stack, StackOptions};
use futures::StreamExt;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

const PRS: u64 = 50;
const EVENTS_PER_PR: u64 = 20;

struct Event {
    pr: u64,
    at: OffsetDateTime,
    closes: bool,
    sha: String,
    body: Value,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shuffled_burst_ends_in_each_pull_requests_newest_state() {
    // No agents: demos that should run wait as `pending`, so the outcome is pure ordering.
    let stack = Stack::start(StackOptions { agents: 0, ..Default::default() }).await;
    let repo = format!("burst-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut rng = Rng(0x5eed_0000_0000_0001 ^ u64::from(std::process::id()));
    let start = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() - Duration::days(1);
    let mut events = Vec::new();
    for pr in 1..=PRS {
        for k in 0..EVENTS_PER_PR {
            let action = ["opened", "synchronize", "reopened", "closed"][(rng.next_u64() % 4) as usize];
            let file = match action {
                "closed" => "pull_request.closed.json",
                "synchronize" => "pull_request.synchronize.json",
                "reopened" => "pull_request.reopened.json",
                _ => "pull_request.opened.json",
            };
            let sha = format!("{:016x}{:016x}{:08x}", rng.next_u64(), rng.next_u64(), rng.next_u64() as u32);
            let at = start + Duration::seconds((pr * 100 + k) as i64);
            let mut body = fixtures::payload(file);
            body["number"] = pr.into();
            body["pull_request"]["number"] = pr.into();
            body["pull_request"]["head"]["sha"] = sha.clone().into();
            body["pull_request"]["updated_at"] = at.format(&Rfc3339).unwrap().into();
            body["repository"]["name"] = repo.clone().into();
            events.push(Event { pr, at, closes: action == "closed", sha, body });
        }
    }
    // The newest event of each pull request decides.
    let mut newest: HashMap<u64, (OffsetDateTime, bool, String)> = HashMap::new();
    for e in &events {
        let entry = newest.entry(e.pr).or_insert((e.at, e.closes, e.sha.clone()));
        if e.at > entry.0 {
            *entry = (e.at, e.closes, e.sha.clone());
        }
    }
    rng.shuffle(&mut events);

    let statuses: Vec<u16> = futures::stream::iter(events.iter())
        .map(|e| async { stack.deliver("pull_request", &e.body).await.1.status().as_u16() })
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(statuses.len(), 1000);
    assert!(
        statuses.iter().all(|s| *s == 202),
        "every delivery accepted: {:?}",
        statuses.iter().filter(|s| **s != 202).collect::<Vec<_>>()
    );

    // None lost: every delivery is recorded with a final outcome.
    let outcomes: Vec<(String, i64)> =
        sqlx::query_as("select outcome, count(*) from webhook_deliveries group by outcome order by outcome")
            .fetch_all(&stack.db)
            .await
            .unwrap();
    let total: i64 = outcomes.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 1000, "{outcomes:?}");
    let known = ["deploy_queued", "teardown_queued", "stale", "ignored"];
    assert!(outcomes.iter().all(|(o, _)| known.contains(&o.as_str())), "{outcomes:?}");

    // Exactly one demo per pull request, in the state its newest event asks for, once the
    // controller's own steps (authorize) have run.
    let demos = demofleet_tests::wait::until("every demo to settle", std::time::Duration::from_secs(60), || async {
        let demos = stack.get_json("/api/demos").await;
        let settled = demos.as_array()?.iter().all(|d| d["state"] == "pending" || d["state"] == "stopped");
        settled.then_some(demos)
    })
    .await;
    let demos: Vec<&Value> = demos.as_array().unwrap().iter().filter(|d| d["repo"] == repo.as_str()).collect();
    assert_eq!(demos.len(), PRS as usize);
    for demo in demos {
        let pr = demo["pr"].as_u64().unwrap();
        let (_, closes, sha) = &newest[&pr];
        if *closes {
            assert_eq!(
                (demo["desired"].as_str(), demo["state"].as_str()),
                (Some("stopped"), Some("stopped")),
                "PR {pr}: {demo}"
            );
        } else {
            assert_eq!(demo["desired"], "running", "PR {pr}: {demo}");
            assert_eq!(demo["state"], "pending", "PR {pr}: no host yet: {demo}");
            assert_eq!(demo["sha"], sha.as_str(), "PR {pr} runs its newest head");
        }
        // Only the newest generation's chain is live; older ones were superseded.
        let live: i64 = sqlx::query_scalar(
            "select count(*) from chains c join demos d on d.id = c.demo_id
             where d.repo = $1 and d.pr = $2 and c.status in ('waiting', 'running', 'awaiting_approval')",
        )
        .bind(&repo)
        .bind(pr as i64)
        .fetch_one(&stack.db)
        .await
        .unwrap();
        assert!(live <= 1, "PR {pr} has {live} live chains");
    }
    stack.stop().await;
}
