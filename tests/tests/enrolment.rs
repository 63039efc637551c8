//! Enrolment (issue 18, point 2): a host joins with credentials issued for it, and leaves
//! when revoked. On the real RabbitMQ: the broker user an enrolment makes may touch only
//! its host's queue; revoking deletes it (its connection closed), drains the host and
//! takes it off the Hosts list. On the real NATS: only an enrolled host's heartbeat counts;
//! a stranger's, a revoked host's and a malformed one are refused, counted in `/metrics`
//! and audited once per source. On the controller's queue: a host's broker user may send only
//! results of its own steps; RabbitMQ itself refuses a message naming another user.

use std::time::Duration;

use demofleet_common::topology;
use demofleet_common::wire::{Step, StepOutcome, StepResult, KIND_RESULT, KIND_STEP, WIRE_VERSION};
use demofleet_tests::fixtures::{self, heartbeat, FixtureRepo};
use demofleet_tests::oidc::{self, get_with};
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;
use lapin::options::QueueDeclareOptions;
use serde_json::{json, Value};
use uuid::Uuid;

/// Run the controller's command line (`hosts ...`) against the stack's database and broker.
fn cli(stack: &Stack, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_fleet-controller"))
        .args(args)
        .env("DEMOFLEET_DATABASE_URL", stack.test_db_url())
        .env("DEMOFLEET_AMQP_URL", &stack.vhost.amqp_url)
        .env("DEMOFLEET_AMQP_MANAGEMENT_URL", &stack.services.amqp_management_url)
        .env("DEMOFLEET_AGENT_USER_PREFIX", stack.vhost.agent_user_prefix())
        .env("DEMOFLEET_NATS_PREFIX", &stack.nats_prefix)
        .output()
        .expect("running the controller's command line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_host_gets_its_own_broker_user_and_loses_it_when_revoked() {
    let stack = Stack::start(StackOptions { agents: 0, ..StackOptions::default() }).await;
    let host = format!("host-{}", &Uuid::new_v4().simple().to_string()[..10]);

    // Enrolled through the API: its settings, with a broker user of its own.
    let response = stack.post_json("/api/hosts", &json!({ "id": host })).await;
    assert_eq!(response.status(), 201);
    let settings: Value = response.json().await.unwrap();
    let user = format!("{}{host}", stack.vhost.agent_user_prefix());
    let amqp_url = settings["amqp_url"].as_str().unwrap().to_string();
    assert!(amqp_url.contains(&format!("://{user}:")), "{amqp_url}");
    assert_eq!(settings["host_id"], host.as_str());
    assert_eq!(stack.post_json("/api/hosts", &json!({ "id": "Not A Host" })).await.status(), 400);

    // The user may declare its own queue, not another host's.
    let connection = lapin::Connection::connect(&amqp_url, Default::default()).await.expect("the host's user connects");
    let channel = connection.create_channel().await.unwrap();
    let own = demofleet_common::topology::host_queue(&host);
    channel.queue_declare(own.as_str().into(), QueueDeclareOptions::default(), Default::default()).await.unwrap();
    let other = connection.create_channel().await.unwrap();
    let refused = other
        .queue_declare("demofleet.host.someone-else".into(), QueueDeclareOptions::default(), Default::default())
        .await;
    assert!(refused.is_err(), "another host's queue is refused");

    // Its agent heartbeats (recorded as its agent would), then it is revoked.
    sqlx::query("insert into hosts (id, address, capacity) values ($1, '10.0.0.9', 4)")
        .bind(&host)
        .execute(&stack.db)
        .await
        .unwrap();
    let listed = stack.get_json("/api/hosts").await;
    assert!(listed.as_array().unwrap().iter().any(|h| h["id"] == host.as_str()));
    let revoked = stack.post(&format!("/api/hosts/{host}/revoke")).await;
    assert_eq!(revoked.status(), 200);
    assert_eq!(stack.post(&format!("/api/hosts/{host}/revoke")).await.status(), 404, "revoked once");

    let listed = stack.get_json("/api/hosts").await;
    assert!(!listed.as_array().unwrap().iter().any(|h| h["id"] == host.as_str()), "a revoked host leaves the list");
    let (draining, silent): (bool, bool) =
        sqlx::query_as("select draining, last_seen < now() - interval '1 hour' from hosts where id = $1")
            .bind(&host)
            .fetch_one(&stack.db)
            .await
            .unwrap();
    assert!(draining && silent, "its demos are moved off at the next tick");
    assert!(!stack.vhost.enrolled_users().await.contains(&user), "its broker user is deleted");
    wait::until("the revoked user's connection closed", Duration::from_secs(15), || async {
        (!connection.status().connected()).then_some(())
    })
    .await;
    assert!(lapin::Connection::connect(&amqp_url, Default::default()).await.is_err(), "its credentials are refused");
    let audited: i64 =
        sqlx::query_scalar("select count(*) from audit_events where action in ('enrol_host', 'revoke_host')")
            .fetch_one(&stack.db)
            .await
            .unwrap();
    assert_eq!(audited, 2);

    // The command line: enrol again (new credentials), list, revoke.
    let enrolled = cli(&stack, &["hosts", "enroll", &host]);
    assert!(enrolled.status.success(), "{}", String::from_utf8_lossy(&enrolled.stderr));
    let env_file = String::from_utf8(enrolled.stdout).unwrap();
    assert!(env_file.contains(&format!("DEMOFLEET_HOST_ID={host}\n")), "{env_file}");
    assert!(env_file.lines().any(|l| l.starts_with("DEMOFLEET_CONTROLLER_AMQP_USER=") && l.len() > 31), "{env_file}");
    let again = env_file.lines().find_map(|l| l.strip_prefix("DEMOFLEET_AMQP_URL=")).unwrap().to_string();
    assert_ne!(again, amqp_url, "a new password");
    let reconnected = lapin::Connection::connect(&again, Default::default()).await.expect("enrolled again");
    let _ = reconnected.close(200, "done".into()).await;
    let list = cli(&stack, &["hosts", "list", "--json"]);
    let list = String::from_utf8(list.stdout).unwrap();
    let row: Value = serde_json::from_str(list.lines().find(|l| l.contains(&host)).unwrap()).unwrap();
    assert!(row["revoked_at"].is_null() && row["amqp_user"] == user.as_str(), "{row}");
    let revoked = cli(&stack, &["hosts", "revoke", &host]);
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    assert!(!stack.vhost.enrolled_users().await.contains(&user));
    stack.stop().await;
}

/// The value of `demofleet_channel_refused_total` for heartbeats refused for `reason` (0 when absent).
async fn refused(stack: &Stack, reason: &str) -> f64 {
    stack.refused("heartbeat", reason).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_enrolled_hosts_heartbeat_counts() {
    let stack = Stack::start(StackOptions { agents: 0, ..StackOptions::default() }).await;
    let id = || format!("host-{}", &Uuid::new_v4().simple().to_string()[..10]);
    let (stranger, revoked, enrolled) = (id(), id(), id());
    stack.enrol(&revoked).await;
    assert_eq!(stack.post(&format!("/api/hosts/{revoked}/revoke")).await.status(), 200);
    stack.enrol(&enrolled).await;

    // Anyone on NATS: a never-enrolled host's heartbeats, a revoked one's, one naming another
    // host than its subject, bytes that are no heartbeat; then the enrolled host's, last,
    // on the same connection (so the controller has handled the others once it shows).
    let nats = async_nats::connect(&stack.services.nats_url).await.expect("NATS");
    let subject = |host: &str| topology::heartbeat_subject(&stack.nats_prefix, host);
    for _ in 0..5 {
        nats.publish(subject(&stranger), heartbeat(&stranger).into()).await.unwrap();
        nats.publish(subject(&revoked), heartbeat(&revoked).into()).await.unwrap();
    }
    nats.publish(subject(&stranger), heartbeat(&enrolled).into()).await.unwrap();
    nats.publish(subject(&stranger), b"not a heartbeat"[..].into()).await.unwrap();
    nats.publish(subject(&enrolled), heartbeat(&enrolled).into()).await.unwrap();
    nats.flush().await.unwrap();

    wait::until("the enrolled host alive in /api/hosts", Duration::from_secs(20), || async {
        let hosts = stack.get_json("/api/hosts").await;
        hosts.as_array()?.iter().any(|h| h["id"] == enrolled.as_str() && h["alive"] == true).then_some(())
    })
    .await;
    wait::until("the refusals counted in /metrics", Duration::from_secs(20), || async {
        let counts = [
            refused(&stack, "unknown_host").await,
            refused(&stack, "revoked_host").await,
            refused(&stack, "wrong_subject").await,
            refused(&stack, "unreadable").await,
        ];
        (counts == [5.0, 5.0, 1.0, 1.0]).then_some(())
    })
    .await;

    let listed = stack.get_json("/api/hosts").await;
    let ids: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|h| h["id"].as_str()).collect();
    assert_eq!(ids, [enrolled.as_str()], "only the enrolled host is listed");
    let session = oidc::sign_in(&stack, "admin@example.com").await;
    let page = get_with(&stack, "/hosts", &session).await.text().await.unwrap();
    assert!(page.contains(&enrolled), "the enrolled host is on the Hosts page");
    assert!(!page.contains(&stranger) && !page.contains(&revoked), "no other host is on the Hosts page:\n{page}");
    let recorded: i64 = sqlx::query_scalar("select count(*) from hosts where id = $1")
        .bind(&stranger)
        .fetch_one(&stack.db)
        .await
        .unwrap();
    assert_eq!(recorded, 0, "nothing recorded for the stranger");

    // Audited once per source, not once per heartbeat.
    let audited: Vec<(String, String)> = sqlx::query_as(
        "select detail->>'reason', coalesce(detail->>'host', detail->>'subject') from audit_events
         where action = 'heartbeat_refused' order by 1, 2",
    )
    .fetch_all(&stack.db)
    .await
    .unwrap();
    let mut wanted = vec![
        ("revoked_host".to_string(), revoked.clone()),
        ("unknown_host".to_string(), stranger.clone()),
        ("unreadable".to_string(), subject(&stranger)),
        ("wrong_subject".to_string(), subject(&stranger)),
    ];
    wanted.sort();
    assert_eq!(audited, wanted);
    stack.stop().await;
}

/// Publish `body` of `kind` to the controller's queue on `channel` (in confirm mode), naming
/// `user` as its sender; an error when the broker refuses it.
async fn publish(channel: &lapin::Channel, kind: &str, user: Option<&str>, body: &[u8]) -> Result<(), lapin::Error> {
    let mut properties = lapin::BasicProperties::default().with_type(kind.into());
    if let Some(user) = user {
        properties = properties.with_user_id(user.into());
    }
    let confirm = channel
        .basic_publish(
            topology::EXCHANGE.into(),
            topology::CONTROLLER_QUEUE.into(),
            Default::default(),
            body,
            properties,
        )
        .await?;
    confirm.await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_reports_only_its_own_steps_and_gives_the_controller_no_work() {
    let stack = Stack::start(StackOptions { agents: 0, ..StackOptions::default() }).await;
    let id = || format!("host-{}", &Uuid::new_v4().simple().to_string()[..10]);
    let (other, intruder) = (id(), id());
    stack.enrol(&other).await;
    let settings = stack.enrol(&intruder).await;
    let user =
        settings["amqp_url"].as_str().unwrap().split("://").nth(1).unwrap().split(':').next().unwrap().to_string();
    let controller_user = settings["controller_amqp_user"].as_str().unwrap().to_string();
    assert_ne!(user, controller_user);
    let connection = lapin::Connection::connect(settings["amqp_url"].as_str().unwrap(), Default::default())
        .await
        .expect("the host's user connects");
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let result = |host: &str| {
        serde_json::to_vec(&StepResult {
            version: WIRE_VERSION,
            chain_id: Uuid::new_v4(),
            demo_id: Uuid::new_v4(),
            generation: 1,
            step: Step::Launch,
            attempt: 1,
            host_id: host.to_string(),
            duration_ms: 1,
            outcome: StepOutcome::Failed { error: "forged".into(), retryable: false },
        })
        .unwrap()
    };

    // A result for another host's step, work for the controller, a result naming no sender.
    publish(&channel, KIND_RESULT, Some(&user), &result(&other)).await.expect("the broker takes it");
    publish(&channel, KIND_STEP, Some(&user), b"{}").await.expect("the broker takes it");
    publish(&channel, KIND_RESULT, None, &result(&intruder)).await.expect("the broker takes it");
    wait::until("the refused messages counted in /metrics", Duration::from_secs(20), || async {
        let counts = [
            stack.refused("message", "another_hosts_result").await,
            stack.refused("message", "not_a_result").await,
            stack.refused("message", "unknown_sender").await,
        ];
        (counts == [1.0, 1.0, 1.0]).then_some(())
    })
    .await;
    let audited: i64 =
        sqlx::query_scalar("select count(*) from audit_events where action = 'message_refused' and actor = 'channel'")
            .fetch_one(&stack.db)
            .await
            .unwrap();
    assert_eq!(audited, 3, "each refusal audited once");

    // Garbage: bytes that are no result, a result of another wire version, a kind the
    // controller does not know; each dropped and counted, nothing recorded, nothing stuck.
    let mut old_version: serde_json::Value = serde_json::from_slice(&result(&intruder)).unwrap();
    old_version["version"] = json!(WIRE_VERSION + 1);
    let old_version = serde_json::to_vec(&old_version).unwrap();
    for (kind, body) in [
        (KIND_RESULT, &b"\xff\xfe not json"[..]),
        (KIND_RESULT, &b""[..]),
        (KIND_RESULT, &b"{\"version\": 1, \"chain_id\": 7}"[..]),
        (KIND_RESULT, &old_version[..]),
        ("launch-the-missiles", &result(&intruder)[..]),
    ] {
        publish(&channel, kind, Some(&user), body).await.expect("the broker takes it");
    }
    wait::until("the garbage counted in /metrics", Duration::from_secs(20), || async {
        let counts = [
            stack.refused("message", "unreadable").await,
            stack.refused("message", "wrong_version").await,
            stack.refused("message", "not_a_result").await,
        ];
        (counts == [3.0, 1.0, 2.0]).then_some(())
    })
    .await;
    assert_eq!(stack.vhost.messages(topology::CONTROLLER_QUEUE).await, 0, "nothing left on the controller's queue");
    let attempts: i64 = sqlx::query_scalar("select count(*) from step_attempts").fetch_one(&stack.db).await.unwrap();
    assert_eq!(attempts, 0, "no result recorded");

    // Claiming to be the controller: RabbitMQ refuses the message itself.
    let claimed = publish(&channel, KIND_STEP, Some(&controller_user), b"{}").await;
    assert!(claimed.is_err(), "a message naming another broker user was taken");
    let _ = connection.close(200, "done".into()).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_result_changes_nothing() {
    let stack = Stack::start(StackOptions::default()).await;
    let repo_name = format!("replay-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let files = fixtures::static_site(&stack.services.base_image, "replayed");
    let sha = repo.commit("a demo", &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    let (_, response) =
        stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    assert_eq!(response.status(), 202);
    let name = format!("{repo_name}-fixture-owner-pr-2");
    let demo = stack.wait_for_state(&name, "running", Duration::from_secs(120)).await;

    // The launch's answer, sent again by the host that gave it, as it would be after a
    // redelivery or by someone replaying a captured message; this time saying it failed.
    let (chain_id, demo_id, generation, attempt): (Uuid, Uuid, i64, i32) = sqlx::query_as(
        "select c.id, c.demo_id, c.generation, s.attempts from chains c join chain_steps s on s.chain_id = c.id
         where s.name = 'launch' and c.kind = 'deploy'",
    )
    .fetch_one(&stack.db)
    .await
    .unwrap();
    let before: i64 = sqlx::query_scalar("select count(*) from step_attempts").fetch_one(&stack.db).await.unwrap();
    let agent = &stack.agents[0];
    let connection = lapin::Connection::connect(agent.flag("--amqp-url").unwrap(), Default::default())
        .await
        .expect("the host's user connects");
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let replayed = StepResult {
        version: WIRE_VERSION,
        chain_id,
        demo_id,
        generation,
        step: Step::Launch,
        attempt: attempt as u32,
        host_id: agent.host_id.clone(),
        duration_ms: 1,
        outcome: StepOutcome::Failed { error: "replayed".into(), retryable: false },
    };
    let user = reqwest::Url::parse(agent.flag("--amqp-url").unwrap()).unwrap().username().to_string();
    for _ in 0..2 {
        let bytes = serde_json::to_vec(&replayed).unwrap();
        publish(&channel, KIND_RESULT, Some(&user), &bytes).await.expect("the broker takes it");
    }
    // And one naming a chain that never was: no demo is found for it, and nothing locked.
    let unknown = StepResult { chain_id: Uuid::new_v4(), ..replayed };
    publish(&channel, KIND_RESULT, Some(&user), &serde_json::to_vec(&unknown).unwrap()).await.expect("taken");
    wait::until("the replays counted in /metrics", Duration::from_secs(20), || async {
        // Its chain has finished: so says the reason (a replay while the chain still runs
        // is a `duplicate`, decided the same way; see chain/decide/tests.rs).
        let replays = stack.refused("result", "finished_chain").await;
        (replays == 2.0 && stack.refused("result", "unknown_chain").await == 1.0).then_some(())
    })
    .await;
    let after: i64 = sqlx::query_scalar("select count(*) from step_attempts").fetch_one(&stack.db).await.unwrap();
    assert_eq!(after, before, "no attempt recorded for a replay");
    let now = stack.get_json(&format!("/api/demos/{}", demo["id"].as_str().unwrap())).await;
    assert_eq!(now["state"], "running", "{now}");
    let status: String = sqlx::query_scalar("select status from chains where id = $1")
        .bind(chain_id)
        .fetch_one(&stack.db)
        .await
        .unwrap();
    assert_eq!(status, "succeeded");
    let _ = connection.close(200, "done".into()).await;
    stack.stop().await;
}
