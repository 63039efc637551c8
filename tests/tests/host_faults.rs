//! Hosts failing under load: a fleet of three test hosts (agents as processes, each on a
//! machine of its own, `tests/src/fleet.rs`) takes a burst of 1,000 signed deliveries for ten
//! pull requests and settles, so that the hosts run demos; then a second burst, and once 300
//! of it are answered, the agent of the host running the most demo containers is killed with
//! SIGKILL (its containers run on) and the link of the host running the next most is cut (its
//! demos run on, unreachable). After a few host timeouts the agent starts again and the link
//! is healed. Every accepted delivery is recorded with its outcome, every pull request's demo
//! ends in the state its newest event asks for, no chain is left under way, and each running
//! demo has exactly one container on the three engines: the leftovers of both hosts are
//! removed. The burst's seed is printed (`DEMOFLEET_BURST_SEED` replays it).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use demofleet_tests::burst::{self, send_all, Bursts, Sending, BURST};
use demofleet_tests::fleet::{Fleet, FleetHost};
use demofleet_tests::stack::StackOptions;
use demofleet_tests::wait;

/// The faults strike once this many deliveries were answered.
const STRIKE_AFTER: usize = 300;
/// How long the hosts stay down: past the stack's host timeout (5 s), so their demos are
/// placed elsewhere meanwhile.
const DOWN_FOR: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_agent_and_a_cut_link_mid_burst_lose_nothing() {
    let options = StackOptions { controller_args: burst::FAULT_FLAGS.map(String::from).to_vec(), ..Default::default() };
    let mut fleet = Fleet::start(env!("CARGO_BIN_EXE_fleet-agent"), &[10, 10, 10], options).await;
    let mut bursts = Bursts::new(&fleet.stack, "host-faults");
    let secret = fleet.stack.secret.clone();
    let urls = [fleet.stack.url("/webhook/github")];
    // A first burst leaves demos running, with their containers, on the hosts.
    let deliveries = bursts.next_burst();
    let statuses = send_all(&urls, &secret, &deliveries, &Sending::default()).await;
    assert!(statuses.iter().all(|s| matches!(s, 200 | 202)), "{statuses:?}");
    bursts.settled(&fleet.stack).await;

    let deliveries = bursts.next_burst();
    let started = Instant::now();
    let sending = Sending::default();
    let sent = send_all(&urls, &secret, &deliveries, &sending);
    let striking = async {
        burst::answered(&sending, STRIKE_AFTER).await;
        let ([busiest, next], on_them) = busiest_two(&fleet.hosts).await;
        let struck_at = sending.answered.load(Ordering::Relaxed);
        let (killed, cut) = (fleet.hosts[busiest].host_id.clone(), fleet.hosts[next].host_id.clone());
        fleet.hosts[busiest].kill_agent();
        fleet.hosts[next].set_link(false);
        // Both go silent: the controller sees them down while the burst goes on.
        wait::until_seen("the killed and the cut-off host silent", Duration::from_secs(30), || async {
            let hosts = fleet.stack.get_json("/api/hosts").await;
            let alive: Vec<String> = hosts
                .as_array()
                .ok_or("no host list")?
                .iter()
                .filter(|h| h["alive"] == true)
                .filter_map(|h| h["id"].as_str().map(String::from))
                .collect();
            if alive.contains(&killed) || alive.contains(&cut) {
                Err(format!("alive: {alive:?}"))
            } else {
                Ok(())
            }
        })
        .await;
        tokio::time::sleep(DOWN_FOR).await;
        let back_at = sending.answered.load(Ordering::Relaxed);
        fleet.hosts[busiest].start_agent();
        fleet.hosts[next].set_link(true);
        (killed, cut, struck_at, back_at, on_them)
    };
    let (statuses, (killed, cut, struck_at, back_at, on_them)) = tokio::join!(sent, striking);
    assert!(statuses.iter().all(|s| matches!(s, 200 | 202)), "{statuses:?}");
    bursts.settled(&fleet.stack).await;
    println!(
        "{killed}'s agent killed and {cut}'s link cut after {struck_at} of {BURST} deliveries, with {on_them} \
         demo containers running on them, back after {back_at}: all recorded, all settled after {:.1?}",
        started.elapsed()
    );
    fleet.stop().await;
}

/// The indices of the two hosts running the most demo containers, and how many the two run,
/// once they run any: a redeploy or a teardown in the burst can leave a host without
/// containers for a moment, and a fault on such hosts would leave nothing behind to clean up.
async fn busiest_two(hosts: &[FleetHost]) -> ([usize; 2], usize) {
    wait::until_seen("demo containers running on the hosts", Duration::from_secs(60), || async {
        let mut running: Vec<(usize, usize)> = hosts
            .iter()
            .enumerate()
            .map(|(index, host)| (host.containers().iter().filter(|c| c.running).count(), index))
            .collect();
        running.sort_unstable_by(|a, b| b.cmp(a));
        match running[..] {
            [(most, busiest), (next_most, next), ..] if most > 0 => Ok(([busiest, next], most + next_most)),
            _ => Err(format!("running demo containers (count, host): {running:?}")),
        }
    })
    .await
}
