//! Bursts of signed `pull_request` deliveries for a few pull requests of one fixture
//! repository, sent the way GitHub does, and the check that the fleet settled after them:
//! for tests that break things in the middle of a burst (`restarts.rs`, `replicas.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::fixtures::{self, FixtureRepo};
use crate::rng::Rng;
use crate::stack::Stack;
use crate::wait;

/// Pull requests a burst is spread over.
pub const PRS: u64 = 10;
/// Deliveries in a burst.
pub const BURST: usize = 1_000;
/// Each of the 32 senders waits this long before a delivery: about 300 a second, so a
/// burst lasts a few seconds and a fault lands in its middle.
const PACE: Duration = Duration::from_millis(100);
/// How long a delivery is sent again before the burst gives up on it (GitHub gives up far
/// sooner): longer than any fault a test makes lasts.
const RESEND_FOR: Duration = Duration::from_secs(180);
/// The controller's flags in tests that break things under a burst: a difference from a
/// host's inventory acted on after 2 s, and a step left unanswered (its message or its result
/// lost with a broker) retried after 60 s, so that everything settles within [`Bursts::settled`].
pub const FAULT_FLAGS: [&str; 4] = ["--reconcile-grace", "2s", "--step-deadline", "60s"];
/// Set to a seed a failed run printed to send its bursts again, in the same order.
pub const SEED_VAR: &str = "DEMOFLEET_BURST_SEED";

pub struct Delivery {
    pub id: String,
    pub body: Vec<u8>,
}

/// Bursts for one repository whose four commits serve `version 0` to `version 3`, each
/// burst newer than the last; what every pull request should end as.
pub struct Bursts {
    repo: FixtureRepo,
    commits: Vec<String>,
    rng: Rng,
    clock: OffsetDateTime,
    /// The newest event of each pull request: (when, closes, head commit).
    newest: HashMap<u64, (OffsetDateTime, bool, String)>,
    /// Every delivery of every burst made (each is sent until answered 2xx).
    accepted: HashSet<String>,
}

/// What sending a burst saw.
#[derive(Default)]
pub struct Sending {
    /// Deliveries answered 2xx so far.
    pub answered: AtomicUsize,
    /// Sends repeated after an error or a 5xx answer.
    pub resent: AtomicUsize,
}

impl Bursts {
    pub fn new(stack: &Stack, name: &str) -> Bursts {
        let repo_name = format!("{name}-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
        let commits = (0..4)
            .map(|v| {
                let files = fixtures::static_site(&stack.services.base_image, &format!("version {v}"));
                let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
                repo.commit(&format!("version {v}"), &files)
            })
            .collect();
        Bursts {
            repo,
            commits,
            rng: Rng(seed()),
            clock: OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() - time::Duration::days(1),
            newest: HashMap::new(),
            accepted: HashSet::new(),
        }
    }

    /// 1,000 events for the pull requests, newer than any before, shuffled.
    pub fn next_burst(&mut self) -> Vec<Delivery> {
        let mut burst = Vec::new();
        for _ in 0..BURST {
            self.clock += time::Duration::seconds(1);
            let pr = self.rng.next_u64() % PRS + 1;
            let action = ["opened", "synchronize", "reopened", "closed"][(self.rng.next_u64() % 4) as usize];
            let sha = self.commits[(self.rng.next_u64() % self.commits.len() as u64) as usize].clone();
            let mut body = fixtures::pull_request(&format!("pull_request.{action}.json"), &self.repo, &sha);
            body["number"] = pr.into();
            body["pull_request"]["number"] = pr.into();
            body["pull_request"]["updated_at"] = self.clock.format(&Rfc3339).unwrap().into();
            self.newest.insert(pr, (self.clock, action == "closed", sha));
            let id = Uuid::new_v4().to_string();
            self.accepted.insert(id.clone());
            burst.push(Delivery { id, body: serde_json::to_vec(&body).unwrap() });
        }
        self.rng.shuffle(&mut burst);
        burst
    }

    /// Wait until every delivery is recorded with an outcome, each pull request's demo is
    /// in the state its newest event asks for with nothing under way, and each running
    /// demo has exactly one container (a stopped one none).
    pub async fn settled(&self, stack: &Stack) {
        let known = ["deploy_queued", "teardown_queued", "stale", "ignored"];
        let deadline = Duration::from_secs(240);
        // A timeout says what was still unsettled at the last look.
        wait::until_seen("deliveries recorded and demos settled", deadline, || async {
            let recorded: Vec<(String, Option<String>)> =
                sqlx::query_as("select delivery_id, outcome from webhook_deliveries")
                    .fetch_all(&stack.db)
                    .await
                    .map_err(|err| format!("reading the deliveries: {err}"))?;
            let recorded: HashMap<String, Option<String>> = recorded.into_iter().collect();
            let lost: Vec<&String> = self.accepted.iter().filter(|id| !recorded.contains_key(*id)).collect();
            assert!(lost.is_empty(), "accepted deliveries not recorded: {lost:?}");
            for outcome in recorded.values() {
                let outcome = outcome.as_deref().ok_or("deliveries without an outcome yet")?;
                assert!(known.contains(&outcome), "outcome {outcome}");
            }
            let under_way: i64 = sqlx::query_scalar(
                "select count(*) from chains where status in ('waiting', 'running', 'awaiting_approval')",
            )
            .fetch_one(&stack.db)
            .await
            .map_err(|err| format!("counting the chains under way: {err}"))?;
            if under_way > 0 {
                let chains: Vec<(String, String, String, String)> = sqlx::query_as(
                    "select d.name, c.kind, c.status, d.id::text from chains c join demos d on d.id = c.demo_id
                     where c.status in ('waiting', 'running', 'awaiting_approval') order by 1",
                )
                .fetch_all(&stack.db)
                .await
                .unwrap_or_default();
                // The steps of the first one's demo: where it is stuck, and on which host.
                let first = match chains.first() {
                    Some((name, _, _, id)) => format!("; {name}: {}", history(stack, id).await),
                    None => String::new(),
                };
                let chains: Vec<(String, String, String)> =
                    chains.into_iter().map(|(name, kind, status, _)| (name, kind, status)).collect();
                // What placement sees: a chain waits for a live host with room.
                let hosts: Vec<(String, f64, bool, i32, i64)> = sqlx::query_as(
                    "select h.id, extract(epoch from now() - h.last_seen)::float8, h.draining, h.capacity,
                            (select count(*) from demos d where d.host_id = h.id and d.state <> 'stopped')
                     from hosts h order by 1",
                )
                .fetch_all(&stack.db)
                .await
                .unwrap_or_default();
                let lease = demofleet_controller::lease::holders(&stack.db).await.unwrap_or(-1);
                return Err(format!(
                    "chains under way (demo, kind, status): {chains:?}; hosts (id, seconds since heard, draining, \
                     capacity, demos): {hosts:?}; fleet lease holders: {lease}{first}"
                ));
            }
            let demos = stack.get_json("/api/demos").await;
            let demos: Vec<&Value> = demos
                .as_array()
                .ok_or("no demo list from /api/demos")?
                .iter()
                .filter(|d| d["repo"] == self.repo.repo.as_str())
                .collect();
            if demos.len() as u64 != PRS {
                return Err(format!("{} of {PRS} demos listed", demos.len()));
            }
            for demo in demos {
                let pr = demo["pr"].as_u64().ok_or("a demo without a pull request number")?;
                let (_, closes, sha) = &self.newest[&pr];
                let containers: Vec<(String, bool)> = stack
                    .containers_of(demo["id"].as_str().ok_or("a demo without an id")?)
                    .into_iter()
                    .map(|c| (c.generation, c.running))
                    .collect();
                let settled = if *closes {
                    demo["state"] == "stopped" && containers.is_empty()
                } else {
                    let generation = demo["generation"].to_string();
                    demo["state"] == "running" && demo["sha"] == sha.as_str() && containers == [(generation, true)]
                };
                if !settled {
                    let id = demo["id"].as_str().unwrap_or_default();
                    return Err(format!(
                        "demo {} is {} at {} (error: {}) with containers {containers:?}; its newest event asks for {}; \
                         {}",
                        demo["name"],
                        demo["state"],
                        demo["sha"],
                        demo["error"],
                        if *closes { "stopped".to_string() } else { format!("running at {sha}") },
                        history(stack, id).await,
                    ));
                }
            }
            Ok(())
        })
        .await;
    }
}

/// Where demo `id` is placed and its newest chains: each step's status and the hosts its
/// attempts ran on, for a failure to tell what ran where.
async fn history(stack: &Stack, id: &str) -> String {
    let placed: Option<(Option<String>, Option<String>)> =
        sqlx::query_as("select host_id, serving_host from demos where id = $1::uuid")
            .bind(id)
            .fetch_optional(&stack.db)
            .await
            .unwrap_or_default();
    let chains: Vec<(i64, String, String, Option<String>)> = sqlx::query_as(
        "select c.generation, c.kind, c.status,
                string_agg(s.name || ' ' || s.status || coalesce(' (' || (
                    select string_agg(a.attempt || ' on ' || coalesce(a.host_id, '?') || ' ' || a.outcome, ', '
                                      order by a.attempt)
                    from step_attempts a where a.chain_id = s.chain_id and a.position = s.position) || ')', '')
                    || coalesce(' image ' || (s.output->>'image'), ''),
                    ', ' order by s.position)
         from chains c left join chain_steps s on s.chain_id = c.id
         where c.demo_id = $1::uuid group by c.id order by c.created_at desc limit 3",
    )
    .bind(id)
    .fetch_all(&stack.db)
    .await
    .unwrap_or_default();
    format!("placed (host, serving host): {placed:?}; newest chains (generation, kind, status, steps): {chains:?}")
}

/// The seed of this run's bursts, printed so that a failure can be replayed: `SEED_VAR`'s,
/// else one of its own.
fn seed() -> u64 {
    let seed = match std::env::var(SEED_VAR) {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("{SEED_VAR}={text} is not a number")),
        // xorshift needs a seed other than 0.
        Err(_) => Uuid::new_v4().as_u64_pair().0 | 1,
    };
    println!("bursts from seed {seed} (replay: {SEED_VAR}={seed})");
    seed
}

/// Send every delivery to the webhook URLs `urls` (delivery i to `urls[i % n]`, as a load
/// balancer would), 32 at a time and paced, each again under the same id, to the next URL,
/// until answered 2xx (for [`RESEND_FOR`] at most, then the test fails); the statuses.
pub async fn send_all(urls: &[String], secret: &str, burst: &[Delivery], sending: &Sending) -> Vec<u16> {
    let client = crate::http_client().timeout(Duration::from_secs(10)).build().unwrap();
    futures::stream::iter(burst.iter().enumerate())
        .map(|(index, delivery)| {
            let client = client.clone();
            async move {
                tokio::time::sleep(PACE).await;
                let signature = fixtures::sign(secret, &delivery.body);
                let began = tokio::time::Instant::now();
                for attempt in 0.. {
                    let sent = client
                        .post(&urls[(index + attempt) % urls.len()])
                        .header("content-type", "application/json")
                        .header("x-github-event", "pull_request")
                        .header("x-github-delivery", &delivery.id)
                        .header("x-hub-signature-256", &signature)
                        .body(delivery.body.clone())
                        .send()
                        .await;
                    let failed = match sent {
                        Ok(response) if response.status().is_success() => {
                            sending.answered.fetch_add(1, Ordering::Relaxed);
                            return response.status().as_u16();
                        }
                        Ok(response) if response.status().is_client_error() => return response.status().as_u16(),
                        Ok(response) => format!("answered {}", response.status()),
                        Err(err) => format!("not answered: {err}"),
                    };
                    assert!(
                        began.elapsed() < RESEND_FOR,
                        "delivery {} sent {} times for {RESEND_FOR:?}, never answered 2xx; last {failed}",
                        delivery.id,
                        attempt + 1
                    );
                    sending.resent.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                unreachable!("the loop returns")
            }
        })
        .buffer_unordered(32)
        .collect()
        .await
}

/// Wait until `sending` has `count` deliveries answered.
pub async fn answered(sending: &Sending, count: usize) {
    wait::until_seen(&format!("{count} deliveries answered"), RESEND_FOR, || async {
        let answered = sending.answered.load(Ordering::Relaxed);
        if answered >= count {
            Ok(())
        } else {
            Err(format!("{answered} answered, {} sends repeated", sending.resent.load(Ordering::Relaxed)))
        }
    })
    .await
}
