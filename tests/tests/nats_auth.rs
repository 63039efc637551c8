//! NATS as a fleet runs it (issue 18, points 2, 4 and 5). On a real NATS server whose users
//! are those of the controller's authorization file (`DEMOFLEET_NATS_AUTH_FILE`, written as
//! the controller starts and at each enrolment and revocation, read again on SIGHUP):
//! a client without credentials or with a wrong password is refused; an enrolled host
//! publishes its own heartbeats and the log lines of the demos placed on it, while NATS
//! refuses (and tells it so) a heartbeat or a log line on another host's subjects; the
//! controller refuses, counts and audits log lines a host sends for a demo placed
//! elsewhere, and garbage on every subject it reads; nothing of it is stored; a revoked
//! host's credentials stop working. And two fleets on one RabbitMQ and one NATS, with the
//! same subject prefix, never see each other's hosts, demos or log lines.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use demofleet_common::topology;
use demofleet_controller::enrolment::nats;
use demofleet_tests::fixtures::{self, heartbeat, FixtureRepo};
use demofleet_tests::services::PrivateNats;
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;
use futures::StreamExt;
use serde_json::Value;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(30);
const BUILD_DEADLINE: Duration = Duration::from_secs(120);

fn short() -> String {
    Uuid::new_v4().simple().to_string()[..10].to_string()
}

/// What a NATS server told a client (permission violations, errors), as text.
type Reports = Arc<Mutex<Vec<String>>>;

/// A client of the server at `url` with the user and password in it, keeping what the
/// server reports to it; an error when the server refuses it.
async fn client(url: &str) -> Result<(async_nats::Client, Reports), async_nats::ConnectError> {
    let url = reqwest::Url::parse(url).unwrap();
    let reports = Reports::default();
    let kept = reports.clone();
    let options = async_nats::ConnectOptions::with_user_and_password(
        url.username().to_string(),
        url.password().unwrap_or_default().to_string(),
    )
    .event_callback(move |event| {
        let kept = kept.clone();
        async move { kept.lock().unwrap().push(event.to_string()) }
    });
    let address = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    Ok((options.connect(address).await?, reports))
}

/// Every message the server delivers on `subject` to `watcher`, as `(subject, payload)`,
/// gathered in the background.
async fn gather(watcher: &async_nats::Client, subject: String) -> Arc<Mutex<Vec<(String, String)>>> {
    let mut messages = watcher.subscribe(subject).await.unwrap();
    // The client's flush only writes to the socket. A message to itself coming back shows
    // the server has taken the subscription before it (it reads a connection in order), so
    // nothing published from now on is missed.
    let inbox = watcher.new_inbox();
    let mut echo = watcher.subscribe(inbox.clone()).await.unwrap();
    watcher.publish(inbox, "subscribed".into()).await.unwrap();
    tokio::time::timeout(DEADLINE, echo.next()).await.expect("the subscription confirmed").unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = seen.clone();
    tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            let payload = String::from_utf8_lossy(&message.payload).to_string();
            keep.lock().unwrap().push((message.subject.to_string(), payload));
        }
    });
    seen
}

async fn on_hosts_page(stack: &Stack, host: &str) -> bool {
    let hosts = stack.get_json("/api/hosts").await;
    hosts.as_array().is_some_and(|all| all.iter().any(|h| h["id"] == host))
}

/// A demo placed on `host`, as placement records one.
async fn demo_on(stack: &Stack, host: &str) -> Uuid {
    let id = Uuid::new_v4();
    let pr = (id.as_u128() % 100_000) as i64 + 1;
    sqlx::query(
        "insert into demos (id, owner, repo, pr, name, desired, state, sha, clone_url, github_user, host_id)
         values ($1, 'fixture-owner', 'placed', $2, $3, 'running', 'starting', 'x', 'x', 'x', $4)",
    )
    .bind(id)
    .bind(pr)
    .bind(format!("placed-fixture-owner-pr-{pr}"))
    .bind(host)
    .execute(&stack.db)
    .await
    .unwrap();
    id
}

/// Publish a build log line for `demo` on `subject`.
async fn log_line(client: &async_nats::Client, subject: String, line: &str) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(topology::LOG_GENERATION_HEADER, "1");
    headers.insert(topology::LOG_STEP_HEADER, "build");
    client.publish_with_headers(subject, headers, line.to_string().into()).await.unwrap();
    client.flush().await.unwrap();
}

/// The kept lines of every demo, as `(demo, line)`, in order.
async fn kept_lines(db: &sqlx::PgPool) -> Vec<(Uuid, String)> {
    sqlx::query_as("select demo_id, line from demo_logs order by id").fetch_all(db).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_speaks_on_nats_only_for_itself_and_the_demos_placed_on_it() {
    // NATS first, with only the controller's user; the controller rewrites the file.
    let (user, password) = (format!("controller-{}", short()), short());
    let controller = Some((user.clone(), nats::hash(&password).unwrap()));
    let first = nats::authorization("unused", controller, &[]).unwrap();
    let nats = PrivateNats::start_with_authorization(&first);
    let controller_url = format!("nats://{user}:{password}@127.0.0.1:{}", nats.port);
    let path = |p: std::path::PathBuf| p.to_str().unwrap().to_string();
    let options = StackOptions {
        agents: 0,
        nats_url: Some(controller_url.clone()),
        controller_args: vec![
            "--nats-auth-file".into(),
            path(nats.auth_file()),
            "--nats-pid-file".into(),
            path(nats.pid_file()),
        ],
        ..Default::default()
    };
    let stack = Stack::start(options).await;
    let prefix = stack.nats_prefix.clone();
    let written = std::fs::read_to_string(nats.auth_file()).unwrap();
    assert_eq!(written, first, "a controller starting on a file that holds its user changes nothing");

    // Strangers are refused at the door.
    let bare = format!("nats://127.0.0.1:{}", nats.port);
    let bare = tokio::time::timeout(Duration::from_secs(10), async_nats::connect(&bare)).await;
    assert!(bare.expect("bare connect timed out").is_err(), "a client without credentials was let in");
    let wrong = format!("nats://{user}:wrong@127.0.0.1:{}", nats.port);
    let wrong = tokio::time::timeout(Duration::from_secs(10), client(&wrong)).await;
    assert!(wrong.expect("wrong connect timed out").is_err(), "a wrong password was let in");

    // Two enrolled hosts, each with the NATS user its enrolment printed.
    let (a, b) = (format!("host-{}", short()), format!("host-{}", short()));
    let (settings_a, settings_b) = (stack.enrol(&a).await, stack.enrol(&b).await);
    let url_of = |settings: &Value| settings["nats_url"].as_str().unwrap().to_string();
    let (url_a, url_b) = (url_of(&settings_a), url_of(&settings_b));
    assert!(url_a.contains(&format!("://{}{a}:", stack.vhost.agent_user_prefix())), "{url_a}");
    let connect = |url: String| async move {
        wait::until("an enrolled host connects", DEADLINE, || async { client(&url).await.ok() }).await
    };
    let ((host_a, reports_a), (host_b, _)) = (connect(url_a.clone()).await, connect(url_b).await);
    let (watcher, _) = client(&controller_url).await.expect("the controller's user connects");
    let seen = gather(&watcher, format!("{prefix}.host.>")).await;

    // A's own heartbeat counts; one it sends on B's subject never leaves NATS.
    host_a.publish(topology::heartbeat_subject(&prefix, &a), heartbeat(&a).into()).await.unwrap();
    host_a.publish(topology::heartbeat_subject(&prefix, &b), heartbeat(&b).into()).await.unwrap();
    host_a.flush().await.unwrap();
    wait::until("A on the Hosts page", DEADLINE, || async { on_hosts_page(&stack, &a).await.then_some(()) }).await;
    let violations = || reports_a.lock().unwrap().iter().filter(|r| r.to_lowercase().contains("permissions")).count();
    wait::until("NATS reports A's heartbeat for B", DEADLINE, || async { (violations() >= 1).then_some(()) }).await;
    assert!(!on_hosts_page(&stack, &b).await, "A's heartbeat for B counted");
    host_b.publish(topology::heartbeat_subject(&prefix, &b), heartbeat(&b).into()).await.unwrap();
    wait::until("B on the Hosts page", DEADLINE, || async { on_hosts_page(&stack, &b).await.then_some(()) }).await;

    // Log lines: each host's for its own demo are kept. A's for B's demo: on B's subject
    // NATS refuses it, on A's own the controller does; so for a demo of no host.
    let (demo_a, demo_b) = (demo_on(&stack, &a).await, demo_on(&stack, &b).await);
    log_line(&host_a, topology::log_subject(&prefix, &a, &demo_a), "a-own").await;
    log_line(&host_a, topology::log_subject(&prefix, &b, &demo_b), "a-on-b-subject").await;
    log_line(&host_a, topology::log_subject(&prefix, &a, &demo_b), "a-for-b-demo").await;
    log_line(&host_a, topology::log_subject(&prefix, &a, &Uuid::new_v4()), "a-for-no-demo").await;
    log_line(&host_b, topology::log_subject(&prefix, &b, &demo_b), "b-own").await;

    // Garbage on every subject the controller reads: heartbeats that are not, a log subject
    // naming no demo, headers that mean nothing.
    for body in [&b"\xff\xfe\x00"[..], &b""[..], &b"{\"version\": 1}"[..]] {
        host_a.publish(topology::heartbeat_subject(&prefix, &a), body.to_vec().into()).await.unwrap();
    }
    host_a.publish(format!("{prefix}.host.{a}.demo.not-a-demo.log"), "garbage".into()).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(topology::LOG_GENERATION_HEADER, "-7");
    headers.insert(topology::LOG_STEP_HEADER, "Not A Step\u{1}");
    let subject = topology::log_subject(&prefix, &a, &demo_a);
    host_a.publish_with_headers(subject, headers, b"odd \xff bytes"[..].into()).await.unwrap();
    host_a.flush().await.unwrap();

    wait::until("the refusals counted in /metrics", DEADLINE, || async {
        let counts = [
            stack.refused("log", "not_its_demo").await,
            stack.refused("log", "unreadable").await,
            stack.refused("heartbeat", "unreadable").await,
        ];
        (counts == [2.0, 1.0, 3.0]).then_some(())
    })
    .await;
    wait::until("the lines kept", DEADLINE, || async { (kept_lines(&stack.db).await.len() >= 3).then_some(()) }).await;
    let kept = kept_lines(&stack.db).await;
    let expected =
        vec![(demo_a, "a-own".to_string()), (demo_b, "b-own".to_string()), (demo_a, "odd \u{fffd} bytes".to_string())];
    let mut sorted = kept.clone();
    sorted.sort();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(sorted, expected_sorted, "only each host's lines for its own demos");
    let odd: (i64, String) = sqlx::query_as("select generation, step from demo_logs where line like 'odd %'")
        .fetch_one(&stack.db)
        .await
        .unwrap();
    assert_eq!(odd, (0, "unknown".to_string()), "meaningless headers are not kept as sent");
    wait::until("NATS reports A's line on B's subject", DEADLINE, || async { (violations() >= 2).then_some(()) }).await;
    let on_b: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(subject, _)| subject.starts_with(&format!("{prefix}.host.{b}.")))
        .map(|(subject, payload)| format!("{subject} {payload}"))
        .collect();
    assert_eq!(on_b.len(), 2, "only B's own heartbeat and line crossed B's subjects: {on_b:?}");
    assert!(on_b.iter().all(|m| !m.contains("a-on-b-subject")), "{on_b:?}");

    // Audited once per host and reason; nothing else recorded of it.
    let audited: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "select detail->>'reason', detail->>'host' from audit_events where action = 'log_refused' order by 1",
    )
    .fetch_all(&stack.db)
    .await
    .unwrap();
    assert_eq!(audited, [(Some("not_its_demo".into()), Some(a.clone())), (Some("unreadable".into()), None)]);
    assert_eq!(stack.get("/readyz").await.status(), 200, "the controller took it all");

    // Everything A sent on its own subjects crossed NATS: its heartbeat, three lines and five
    // pieces of garbage (not the line on B's subject).
    let from_a = || -> Vec<String> {
        let seen = seen.lock().unwrap();
        seen.iter().filter(|(s, _)| s.contains(&format!(".host.{a}."))).map(|(s, p)| format!("{s} {p:?}")).collect()
    };
    wait::until_seen("A's messages seen on NATS", DEADLINE, || async {
        let seen = from_a();
        if seen.len() >= 9 {
            Ok(())
        } else {
            Err(format!("{seen:#?}"))
        }
    })
    .await;

    // Revoked: A's credentials stop working, and what it still sends reaches nobody.
    let response = stack.post(&format!("/api/hosts/{a}/revoke")).await;
    assert!(response.status().is_success(), "revoking: {}", response.status());
    wait::until("A's credentials refused", DEADLINE, || async { client(&url_a).await.is_err().then_some(()) }).await;
    // (Its client, cut off, tries to connect again and again: nothing waits for it.)
    let _ = host_a.publish(topology::heartbeat_subject(&prefix, &a), heartbeat(&a).into()).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), host_a.flush()).await;
    let after = from_a();
    assert_eq!(after.len(), 9, "only what A sent before its revocation crossed NATS: {after:#?}");
    assert!(!on_hosts_page(&stack, &a).await, "a revoked host leaves the Hosts page");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fleets_on_one_broker_and_one_nats_never_see_each_other() {
    // The same NATS server and prefix (as two fleets left at the default `demofleet`),
    // the same RabbitMQ node (a vhost each), a database each.
    let prefix = format!("shared-{}", short());
    let options = || StackOptions {
        nats_prefix: Some(prefix.clone()),
        controller_args: vec!["--retry-delays".into(), "100ms".into()],
        ..Default::default()
    };
    let fleets = [Stack::start(options()).await, Stack::start(options()).await];
    let hosts: Vec<String> = fleets.iter().map(|f| f.agents[0].host_id.clone()).collect();

    // Each fleet hears the other's heartbeats and refuses them.
    for (n, fleet) in fleets.iter().enumerate() {
        wait::until("the other fleet's heartbeats refused", DEADLINE, || async {
            (fleet.refused("heartbeat", "unknown_host").await >= 2.0).then_some(())
        })
        .await;
        let listed: Vec<String> = fleet
            .get_json("/api/hosts")
            .await
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(listed, [hosts[n].clone()], "fleet {n} lists only its own host");
    }

    // A build in each fleet, failing after printing its fleet's marker.
    let mut markers = Vec::new();
    for (n, fleet) in fleets.iter().enumerate() {
        let repo_name = format!("fleet{n}-{}", &short()[..6]);
        let repo = FixtureRepo::create(&fleet.repos_dir(), "fixture-owner", &repo_name);
        let marker = format!("marker-of-fleet-{n}-{repo_name}");
        let dockerfile = format!("FROM {}\nRUN echo {marker} && exit 3\n", fleet.services.base_image);
        let sha = repo.commit("a build that fails", &[("Dockerfile", &dockerfile)]);
        let body = fixtures::pull_request("pull_request.opened.json", &repo, &sha);
        let (_, response) = fleet.deliver("pull_request", &body).await;
        assert_eq!(response.status(), 202);
        markers.push((format!("{repo_name}-fixture-owner-pr-2"), marker));
    }
    for (fleet, (name, _)) in fleets.iter().zip(&markers) {
        fleet.wait_for_state(name, "failed", BUILD_DEADLINE).await;
    }
    for (n, fleet) in fleets.iter().enumerate() {
        let (own, other) = (&markers[n].1, &markers[1 - n].1);
        wait::until("the fleet's own build output kept", DEADLINE, || async {
            kept_lines(&fleet.db).await.iter().any(|(_, l)| l.contains(own.as_str())).then_some(())
        })
        .await;
        let kept = kept_lines(&fleet.db).await;
        assert!(!kept.iter().any(|(_, l)| l.contains(other.as_str())), "fleet {n} kept the other's output");
        let demos: Vec<String> = sqlx::query_scalar("select name from demos").fetch_all(&fleet.db).await.unwrap();
        assert_eq!(demos, [markers[n].0.clone()], "fleet {n} has only its own demo");
        assert!(
            fleet.refused("log", "unknown_host").await >= 1.0,
            "fleet {n} heard the other's lines and refused them"
        );
        let listed = fleet.get_json("/api/hosts").await;
        assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    }
    for fleet in fleets {
        fleet.stop().await;
    }
}
