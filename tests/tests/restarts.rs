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

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use demofleet_tests::burst::{self, send_all, Bursts, Sending, BURST};
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;

/// The fault strikes once this many deliveries of a burst were answered.
const STRIKE_AFTER: usize = 100;

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
    let mut bursts = Bursts::new(&stack, "restarts");
    for fault in [Fault::RabbitMq, Fault::Postgres, Fault::Controller] {
        let burst = bursts.next_burst();
        let postgres_started = postgres_start_time(&stack).await;
        let started = Instant::now();
        let sending = Sending::default();
        let urls = [stack.url("/webhook/github")];
        let secret = stack.secret.clone();
        let sent = send_all(&urls, &secret, &burst, &sending);
        let striking = async {
            burst::answered(&sending, STRIKE_AFTER).await;
            let before = sending.answered.load(Ordering::Relaxed);
            strike(&mut stack, fault).await;
            (before, sending.answered.load(Ordering::Relaxed))
        };
        let (statuses, (struck_at, back_at)) = tokio::join!(sent, striking);
        // The fault really came in the middle of the burst.
        match fault {
            Fault::RabbitMq => assert!(back_at > struck_at, "deliveries were accepted while RabbitMQ was down"),
            Fault::Postgres => {
                assert_ne!(postgres_start_time(&stack).await, postgres_started, "PostgreSQL restarted");
            }
            Fault::Controller => {}
        }
        assert!(statuses.iter().all(|s| matches!(s, 200 | 202)), "{statuses:?}");
        let resent = sending.resent.load(Ordering::Relaxed);
        if matches!(fault, Fault::Controller) {
            assert!(resent > 0, "the controller was killed while deliveries were still to be sent");
        }
        bursts.settled(&stack).await;
        let took = started.elapsed();
        println!(
            "{fault:?} restarted between deliveries {struck_at} and {back_at} of {BURST} ({resent} sends repeated): \
             all recorded, all settled after {took:.1?}"
        );
    }
    stack.stop().await;
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
