//! Restarts under load: three bursts of 1,000 signed deliveries for ten pull requests,
//! sent shuffled, 32 at a time and paced, like GitHub does (a delivery that is not answered 2xx is
//! sent again under the same id), while, in turn, RabbitMQ is restarted, PostgreSQL is
//! restarted, and the controller (a process here) is killed with SIGKILL and started again.
//!
//! After each: every delivery answered 2xx is recorded with its outcome, each pull
//! request's demo ends in the state its newest event asks for, no chain is left under way,
//! and each running demo has exactly one container. The convergence time is printed.
//!
//! This binary holds one test: it restarts shared services, and cargo runs test binaries
//! one at a time.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::rng::Rng;
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;

const PRS: u64 = 10;
const BURST: usize = 1_000;
/// The fault strikes once this many deliveries of a burst were answered.
const STRIKE_AFTER: usize = 100;
/// Each of the 32 senders waits this long before a delivery: about 300 a second, so a
/// burst lasts a few seconds and the fault lands in its middle.
const PACE: Duration = Duration::from_millis(100);

struct Delivery {
    id: String,
    body: Vec<u8>,
}

/// The newest event of each pull request: (when, closes, head commit).
type Newest = HashMap<u64, (OffsetDateTime, bool, String)>;

#[derive(Debug, Clone, Copy)]
enum Fault {
    RabbitMq,
    Postgres,
    Controller,
}

/// Starts RabbitMQ and PostgreSQL again even if the test fails half way.
struct ServicesBackOnDrop;

impl Drop for ServicesBackOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
        let (version, cluster) = postgres_cluster();
        let _ = Command::new("pg_ctlcluster").args([&version, &cluster, "start"]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_lost_when_rabbitmq_postgres_or_the_controller_restart_mid_burst() {
    let _services_back = ServicesBackOnDrop;
    let options = StackOptions {
        agents: 2,
        controller_args: ["--reconcile-grace", "2s"].map(String::from).to_vec(),
        ..Default::default()
    };
    let mut stack = Stack::start(options).await;
    stack.run_controller_as_process(env!("CARGO_BIN_EXE_fleet-controller")).await;
    let repo_name = format!("restarts-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let commits: Vec<String> = (0..4)
        .map(|v| {
            let files = fixtures::static_site(&stack.services.base_image, &format!("version {v}"));
            let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
            repo.commit(&format!("version {v}"), &files)
        })
        .collect();

    let mut rng = Rng(0x5eed_0000_0000_0005 ^ u64::from(std::process::id()));
    let mut clock = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() - time::Duration::days(1);
    let mut newest = Newest::new();
    let mut accepted = HashSet::new();
    for fault in [Fault::RabbitMq, Fault::Postgres, Fault::Controller] {
        let burst = make_burst(&repo, &commits, &mut rng, &mut clock, &mut newest);
        let postgres_started = postgres_start_time(&stack).await;
        let started = Instant::now();
        let answered = AtomicUsize::new(0);
        let resent = AtomicUsize::new(0);
        let url = stack.url("/webhook/github");
        let secret = stack.secret.clone();
        let sending = send_all(&url, &secret, &burst, &answered, &resent);
        let striking = async {
            while answered.load(Ordering::Relaxed) < STRIKE_AFTER {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let before = answered.load(Ordering::Relaxed);
            strike(&mut stack, fault).await;
            (before, answered.load(Ordering::Relaxed))
        };
        let (statuses, (struck_at, back_at)) = tokio::join!(sending, striking);
        // The fault really came in the middle of the burst.
        match fault {
            Fault::RabbitMq => assert!(back_at > struck_at, "deliveries were accepted while RabbitMQ was down"),
            Fault::Postgres => {
                assert_ne!(postgres_start_time(&stack).await, postgres_started, "PostgreSQL restarted");
            }
            Fault::Controller => {}
        }
        assert!(statuses.iter().all(|s| matches!(s, 200 | 202)), "{statuses:?}");
        let resent = resent.load(Ordering::Relaxed);
        if matches!(fault, Fault::Controller) {
            assert!(resent > 0, "the controller was killed while deliveries were still to be sent");
        }
        accepted.extend(burst.iter().map(|d| d.id.clone()));
        converged(&stack, &repo_name, &accepted, &newest).await;
        let took = started.elapsed();
        println!(
            "{fault:?} restarted between deliveries {struck_at} and {back_at} of {BURST} ({resent} sends repeated): \
             all recorded, all settled after {took:.1?}"
        );
    }
    stack.stop().await;
}

/// 1,000 events for the pull requests, newer than any before, shuffled.
fn make_burst(
    repo: &FixtureRepo,
    commits: &[String],
    rng: &mut Rng,
    clock: &mut OffsetDateTime,
    newest: &mut Newest,
) -> Vec<Delivery> {
    let mut burst = Vec::new();
    for _ in 0..BURST {
        *clock += time::Duration::seconds(1);
        let pr = rng.next_u64() % PRS + 1;
        let action = ["opened", "synchronize", "reopened", "closed"][(rng.next_u64() % 4) as usize];
        let sha = commits[(rng.next_u64() % commits.len() as u64) as usize].clone();
        let mut body = fixtures::pull_request(&format!("pull_request.{action}.json"), repo, &sha);
        body["number"] = pr.into();
        body["pull_request"]["number"] = pr.into();
        body["pull_request"]["updated_at"] = clock.format(&Rfc3339).unwrap().into();
        newest.insert(pr, (*clock, action == "closed", sha));
        burst.push(Delivery { id: Uuid::new_v4().to_string(), body: serde_json::to_vec(&body).unwrap() });
    }
    rng.shuffle(&mut burst);
    burst
}

/// Send every delivery, 32 at a time, each again (same id) until answered 2xx; the statuses.
async fn send_all(
    url: &str,
    secret: &str,
    burst: &[Delivery],
    answered: &AtomicUsize,
    resent: &AtomicUsize,
) -> Vec<u16> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    futures::stream::iter(burst)
        .map(|delivery| {
            let client = client.clone();
            async move {
                tokio::time::sleep(PACE).await;
                let signature = fixtures::sign(secret, &delivery.body);
                loop {
                    let sent = client
                        .post(url)
                        .header("content-type", "application/json")
                        .header("x-github-event", "pull_request")
                        .header("x-github-delivery", &delivery.id)
                        .header("x-hub-signature-256", &signature)
                        .body(delivery.body.clone())
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status().is_success() => {
                            answered.fetch_add(1, Ordering::Relaxed);
                            return response.status().as_u16();
                        }
                        Ok(response) if response.status().is_client_error() => return response.status().as_u16(),
                        _ => {
                            resent.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
        })
        .buffer_unordered(32)
        .collect()
        .await
}

async fn strike(stack: &mut Stack, fault: Fault) {
    match fault {
        Fault::RabbitMq => {
            run("rabbitmqctl", &["stop_app"]);
            tokio::time::sleep(Duration::from_secs(3)).await;
            run("rabbitmqctl", &["start_app"]);
        }
        Fault::Postgres => {
            let (version, cluster) = postgres_cluster();
            run("pg_ctlcluster", &["--force", &version, &cluster, "restart"]);
        }
        Fault::Controller => {
            stack.kill_controller();
            tokio::time::sleep(Duration::from_secs(1)).await;
            stack.start_controller().await;
        }
    }
}

/// Wait until every accepted delivery is recorded with an outcome, each pull request's demo
/// is in the state its newest event asks for with nothing under way, and each running demo
/// has exactly one container (a stopped one none).
async fn converged(stack: &Stack, repo: &str, accepted: &HashSet<String>, newest: &Newest) {
    let known = ["deploy_queued", "teardown_queued", "stale", "ignored"];
    let deadline = Duration::from_secs(240);
    wait::until("deliveries recorded and demos settled", deadline, || async {
        let recorded: Vec<(String, Option<String>)> =
            sqlx::query_as("select delivery_id, outcome from webhook_deliveries").fetch_all(&stack.db).await.ok()?;
        let recorded: HashMap<String, Option<String>> = recorded.into_iter().collect();
        let lost: Vec<&String> = accepted.iter().filter(|id| !recorded.contains_key(*id)).collect();
        assert!(lost.is_empty(), "accepted deliveries not recorded: {lost:?}");
        for outcome in recorded.values() {
            let outcome = outcome.as_deref()?;
            assert!(known.contains(&outcome), "outcome {outcome}");
        }
        let under_way: i64 = sqlx::query_scalar(
            "select count(*) from chains where status in ('waiting', 'running', 'awaiting_approval')",
        )
        .fetch_one(&stack.db)
        .await
        .ok()?;
        if under_way > 0 {
            return None;
        }
        let demos = stack.get_json("/api/demos").await;
        let demos: Vec<&Value> = demos.as_array()?.iter().filter(|d| d["repo"] == repo).collect();
        if demos.len() as u64 != PRS {
            return None;
        }
        for demo in demos {
            let (_, closes, sha) = &newest[&demo["pr"].as_u64()?];
            let containers = containers_of(demo["id"].as_str()?);
            let settled = if *closes {
                demo["state"] == "stopped" && containers.is_empty()
            } else {
                let generation = demo["generation"].to_string();
                demo["state"] == "running" && demo["sha"] == sha.as_str() && containers == [(generation, true)]
            };
            if !settled {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// The demo's containers: (generation, running).
fn containers_of(demo_id: &str) -> Vec<(String, bool)> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=run.demo.id={demo_id}"),
            "--format",
            "{{.Label \"run.demo.generation\"}} {{.State}}",
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(g, s)| (g.to_string(), s == "running")))
        .collect()
}

async fn postgres_start_time(stack: &Stack) -> OffsetDateTime {
    wait::until("PostgreSQL answers", Duration::from_secs(30), || async {
        sqlx::query_scalar("select pg_postmaster_start_time()").fetch_one(&stack.db).await.ok()
    })
    .await
}

fn postgres_cluster() -> (String, String) {
    let out = Command::new("pg_lsclusters").arg("-h").output().expect("pg_lsclusters");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.lines().next().unwrap_or_default().split_whitespace();
    (fields.next().unwrap_or("15").to_string(), fields.next().unwrap_or("main").to_string())
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}
