//! Enrolment (issue 18, point 2): a host joins with credentials issued for it, and leaves
//! when revoked. On the real RabbitMQ: the broker user an enrolment makes may touch only
//! its host's queue; revoking deletes it (its connection closed), drains the host and
//! takes it off the Hosts list.

use std::time::Duration;

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
