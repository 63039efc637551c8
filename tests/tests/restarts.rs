//! Crashes under load: three bursts of 1,000 signed deliveries for ten pull requests, sent
//! shuffled, 32 at a time and paced, like GitHub does (a delivery that is not answered 2xx
//! is sent again under the same id), while, in turn, RabbitMQ is killed with SIGKILL and
//! started again, PostgreSQL is killed with SIGKILL and started again (it recovers from its
//! write-ahead log), and the controller (a process here) is killed with SIGKILL and started
//! again. RabbitMQ and PostgreSQL are the test's own (`tests/src/cluster.rs`,
//! `tests/src/postgres.rs`): the machine's, which other tests use, stay up.
//!
//! After each: every delivery answered 2xx is recorded with its outcome, each pull
//! request's demo ends in the state its newest event asks for, no chain is left under way,
//! and each running demo has exactly one container. The convergence time is printed.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use demofleet_tests::burst::{self, send_all, Bursts, Sending, BURST};
use demofleet_tests::cluster::RabbitCluster;
use demofleet_tests::postgres::PrivatePostgres;
use demofleet_tests::services::Services;
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;

/// The fault strikes once this many deliveries of a burst were answered.
const STRIKE_AFTER: usize = 100;

/// What is killed with SIGKILL in the middle of a burst, and started again.
#[derive(Debug, Clone, Copy)]
enum Fault {
    RabbitMq,
    Postgres,
    Controller,
}

/// The services the stack runs on, of this test's own.
struct Own {
    rabbitmq: RabbitCluster,
    postgres: PrivatePostgres,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_lost_when_rabbitmq_postgres_or_the_controller_crash_mid_burst() {
    let rabbitmq = tokio::task::spawn_blocking(|| RabbitCluster::start(1)).await.unwrap();
    let postgres = PrivatePostgres::start().await;
    let services = Services { database_url: postgres.url(), ..rabbitmq.services(0) };
    let mut own = Own { rabbitmq, postgres };
    let options = StackOptions {
        agents: 2,
        controller_args: burst::FAULT_FLAGS.map(String::from).to_vec(),
        services: Some(services),
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
            strike(&mut stack, &mut own, fault).await;
            (before, sending.answered.load(Ordering::Relaxed))
        };
        let (statuses, (struck_at, back_at)) = tokio::join!(sent, striking);
        // The fault really came in the middle of the burst.
        match fault {
            Fault::RabbitMq => {
                assert!(back_at > struck_at, "deliveries were accepted while RabbitMQ was down")
            }
            Fault::Postgres => {
                assert_ne!(postgres_start_time(&stack).await, postgres_started, "PostgreSQL restarted");
            }
            Fault::Controller => {}
        }
        assert!(statuses.iter().all(|s| matches!(s, 200 | 202)), "{statuses:?}");
        let resent = sending.resent.load(Ordering::Relaxed);
        // (Requests that PostgreSQL's outage held are answered once it is back: no resend.)
        if matches!(fault, Fault::Controller) {
            assert!(resent > 0, "the controller was killed while deliveries were still to be sent");
        }
        bursts.settled(&stack).await;
        let took = started.elapsed();
        println!(
            "{fault:?} killed between deliveries {struck_at} and {back_at} of {BURST} ({resent} sends repeated): \
             all recorded, all settled after {took:.1?}"
        );
    }
    stack.stop().await;
}

async fn strike(stack: &mut Stack, own: &mut Own, fault: Fault) {
    match fault {
        Fault::RabbitMq => {
            own.rabbitmq.kill(0);
            // Down for a while: deliveries keep being taken into the outbox meanwhile.
            tokio::time::sleep(Duration::from_secs(2)).await;
            tokio::task::block_in_place(|| own.rabbitmq.restart(0));
        }
        Fault::Postgres => {
            own.postgres.kill();
            tokio::time::sleep(Duration::from_secs(1)).await;
            own.postgres.restart().await;
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
