//! Two controller replicas (processes) against one PostgreSQL and one RabbitMQ: webhooks
//! land on either, as behind a load balancer; one replica holds the fleet lease; a
//! dashboard session made on one works on the other. The replica holding the lease (asked of
//! PostgreSQL) is killed with SIGKILL during a burst of 1,000 deliveries spread over both:
//! the other takes the lease over, nothing is lost, nothing is done twice, the other
//! carries on, and the restarted one rejoins.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use demofleet_tests::burst::{self, send_all, Bursts, Sending, BURST};
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;
use demofleet_tests::{command, oidc};

const KILL_AFTER: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_the_work_and_survive_losing_one() {
    let options = StackOptions {
        agents: 2,
        controller_args: burst::FAULT_FLAGS.map(String::from).to_vec(),
        ..Default::default()
    };
    let mut stack = Stack::start(options).await;
    let binary = env!("CARGO_BIN_EXE_fleet-controller");
    stack.run_controller_as_process(binary).await;
    let mut replica = stack.start_replica(binary).await;
    one_lease_holder(&stack).await;

    // A session made on one replica opens the dashboard on the other.
    let cookie = oidc::sign_in(&stack, "admin@example.com").await;
    let other = oidc::client().get(replica.url("/")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(other.status(), 200, "the session works on the other replica");

    // A burst spread over both; the replica holding the fleet lease dies at delivery 300 and
    // comes back.
    let mut bursts = Bursts::new(&stack, "replicas");
    let deliveries = bursts.next_burst();
    let started = Instant::now();
    let sending = Sending::default();
    let urls = [stack.url("/webhook/github"), replica.url("/webhook/github")];
    let secret = stack.secret.clone();
    let sent = send_all(&urls, &secret, &deliveries, &sending);
    let killing = async {
        burst::answered(&sending, KILL_AFTER).await;
        let holder = lease_holder(&stack).await;
        let (first, second) = (stack.controller_pid().unwrap(), replica.pid().unwrap());
        let survivor = if holder == first {
            stack.kill_controller();
            second
        } else {
            assert_eq!(holder, second, "the lease is held by one of the two replicas");
            replica.kill();
            first
        };
        let killed = Instant::now();
        let killed_at = sending.answered.load(Ordering::Relaxed);
        // The other replica takes the lease over, and carries the burst on alone for a while.
        wait::until("the surviving replica to hold the fleet lease", Duration::from_secs(30), || async {
            (lease_holder_now(&stack).await? == survivor).then_some(())
        })
        .await;
        let failover = killed.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let alone = sending.answered.load(Ordering::Relaxed) - killed_at;
        if holder == first {
            stack.start_controller().await;
        } else {
            replica.start().await;
        }
        (killed_at, alone, holder == first, failover)
    };
    let (statuses, (killed_at, alone, first_held, failover)) = tokio::join!(sent, killing);
    assert!(statuses.iter().all(|s| matches!(s, 200 | 202)), "{statuses:?}");
    assert!(alone > 0, "the surviving replica answered while the other was down");
    println!(
        "the lease holder ({} replica) killed; the other held the lease {failover:.1?} later",
        if first_held { "first" } else { "second" }
    );
    bursts.settled(&stack).await;
    println!(
        "the lease holder killed after {killed_at} of {BURST} deliveries ({alone} answered by the other alone, {} sends \
         repeated): all recorded, all settled after {:.1?}",
        sending.resent.load(Ordering::Relaxed),
        started.elapsed()
    );

    // Nothing done twice: one start per delivery that started something, one deploy chain
    // per generation, and one lease holder after the restart.
    let twice: i64 = sqlx::query_scalar(
        "select count(*) from (select detail->>'delivery' from audit_events
                               where action = 'start' and detail->>'delivery' is not null
                               group by 1 having count(*) > 1) as repeated",
    )
    .fetch_one(&stack.db)
    .await
    .unwrap();
    assert_eq!(twice, 0, "a delivery started something twice");
    let chains_twice: i64 = sqlx::query_scalar(
        "select count(*) from (select demo_id, generation from chains where kind = 'deploy'
                               group by 1, 2 having count(*) > 1) as repeated",
    )
    .fetch_one(&stack.db)
    .await
    .unwrap();
    assert_eq!(chains_twice, 0, "a generation got two deploy chains");
    one_lease_holder(&stack).await;
    let rejoined = demofleet_tests::http_client().build().unwrap().get(replica.url("/readyz")).send().await.unwrap();
    assert_eq!(rejoined.status(), 200);
    drop(replica);
    stack.stop().await;
}

/// Exactly one replica holds the fleet lease (soon after a change).
async fn one_lease_holder(stack: &Stack) {
    wait::until("one fleet lease holder", Duration::from_secs(30), || async {
        let holders = demofleet_controller::lease::holders(&stack.db).await.ok()?;
        (holders == 1).then_some(())
    })
    .await;
}

/// The process id of the replica holding the fleet lease, waited for (30 s at most).
async fn lease_holder(stack: &Stack) -> u32 {
    wait::until("a fleet lease holder", Duration::from_secs(30), || lease_holder_now(stack)).await
}

/// The process id of the replica holding the fleet lease now: PostgreSQL names the session
/// holding the advisory lock and its client port, and the socket on that port names its
/// process.
async fn lease_holder_now(stack: &Stack) -> Option<u32> {
    let port: i32 = sqlx::query_scalar(
        "select a.client_port from pg_locks l join pg_stat_activity a on a.pid = l.pid
         where l.locktype = 'advisory' and l.granted and ((l.classid::bigint << 32) | l.objid::bigint) = $1
           and l.database = (select oid from pg_database where datname = current_database())",
    )
    .bind(demofleet_controller::lease::KEY)
    .fetch_optional(&stack.db)
    .await
    .ok()??;
    let out = command::output(Command::new("ss").args(["-Htnp", &format!("sport = :{port}")]), command::QUICK).ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pid = text.split("pid=").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?;
    pid.parse().ok()
}
