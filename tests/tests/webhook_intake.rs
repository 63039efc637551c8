//! What the webhook endpoint refuses, and that a refusal stores and queues nothing.

use demofleet_tests::fixtures::{self, sign};
use demofleet_tests::stack::{Stack, StackOptions};
use uuid::Uuid;

async fn nothing_stored_or_queued(stack: &Stack) {
    for table in ["webhook_deliveries", "demos", "chains", "outbox"] {
        assert_eq!(stack.count(table).await, 0, "{table} is empty");
    }
    for queue in ["demofleet.controller", &format!("demofleet.host.{}", stack.agents[0].host_id)] {
        assert_eq!(stack.vhost.queue_depth(queue).await, 0, "{queue} is empty");
    }
}

async fn error_of(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.unwrap();
    body["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_signatures_are_refused_and_nothing_is_kept() {
    let stack = Stack::start(StackOptions::default()).await;
    let body = serde_json::to_vec(&fixtures::payload("pull_request.opened.json")).unwrap();
    let delivery = Uuid::new_v4().to_string();

    let unsigned = stack.webhook("pull_request", &delivery, "application/json", None, body.clone()).await;
    assert_eq!(unsigned.status(), 401);
    assert!(error_of(unsigned).await.contains("missing X-Hub-Signature-256"));

    let wrong = sign("not the secret", &body);
    let forged = stack.webhook("pull_request", &delivery, "application/json", Some(&wrong), body.clone()).await;
    assert_eq!(forged.status(), 401);
    assert!(error_of(forged).await.contains("does not match"));

    // A signature of another body (a replay onto an edited payload) fails too.
    let signature = sign(&stack.secret, b"{}");
    let replayed = stack.webhook("pull_request", &delivery, "application/json", Some(&signature), body.clone()).await;
    assert_eq!(replayed.status(), 401);

    let sha1 = "sha1=7d38cdd689735b008b3c702edd92eea23791c5f6";
    let legacy = stack.webhook("pull_request", &delivery, "application/json", Some(sha1), body).await;
    assert_eq!(legacy.status(), 401);

    nothing_stored_or_queued(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_precise_answer() {
    let options =
        StackOptions { controller_args: vec!["--webhook-max-bytes".into(), "65536".into()], ..Default::default() };
    let stack = Stack::start(options).await;

    // Body over the limit → 413.
    let huge = vec![b' '; 70_000];
    let response = stack.deliver_raw("pull_request", "d-huge", &huge).await;
    assert_eq!(response.status(), 413);

    // Unsupported content type → 415.
    let body = br#"{"zen":"x"}"#.to_vec();
    let signature = sign(&stack.secret, &body);
    let response = stack.webhook("ping", "d-type", "text/plain", Some(&signature), body).await;
    assert_eq!(response.status(), 415);

    // Wrongly typed and missing fields → 400 naming the field.
    let mut payload = fixtures::payload("pull_request.opened.json");
    payload["number"] = "two".into();
    let (_, response) = stack.deliver("pull_request", &payload).await;
    assert_eq!(response.status(), 400);
    assert!(error_of(response).await.contains("`number`"));
    let mut payload = fixtures::payload("pull_request.opened.json");
    payload["pull_request"]["head"].as_object_mut().unwrap().remove("sha");
    let (_, response) = stack.deliver("pull_request", &payload).await;
    assert_eq!(response.status(), 400);
    assert!(error_of(response).await.contains("pull_request.head"));

    // Names that could escape a folder or a DNS label → 400.
    let mut payload = fixtures::payload("pull_request.opened.json");
    payload["repository"]["name"] = "../../etc".into();
    let (_, response) = stack.deliver("pull_request", &payload).await;
    assert_eq!(response.status(), 400);
    assert!(error_of(response).await.contains("repository name"));

    // Missing delivery header → 400.
    let body = serde_json::to_vec(&fixtures::payload("ping.json")).unwrap();
    let signature = sign(&stack.secret, &body);
    let response = stack.webhook("ping", "", "application/json", Some(&signature), body).await;
    assert_eq!(response.status(), 400);

    nothing_stored_or_queued(&stack).await;

    // What is accepted is recorded: ping → 200, an unused event → 202, both with outcomes.
    let (ping, response) = stack.deliver("ping", &fixtures::payload("ping.json")).await;
    assert_eq!(response.status(), 200);
    let (other, response) = stack.deliver("issues", &serde_json::json!({"action": "opened"})).await;
    assert_eq!(response.status(), 202);
    // GitHub's form encoding is accepted too.
    let form = format!("payload={}", urlencode(&serde_json::to_string(&fixtures::payload("ping.json")).unwrap()));
    let signature = sign(&stack.secret, form.as_bytes());
    let formed = Uuid::new_v4().to_string();
    let response =
        stack.webhook("ping", &formed, "application/x-www-form-urlencoded", Some(&signature), form.into_bytes()).await;
    assert_eq!(response.status(), 200);
    let outcomes: Vec<(String, String)> =
        sqlx::query_as("select delivery_id, outcome from webhook_deliveries order by received_at")
            .fetch_all(&stack.db)
            .await
            .unwrap();
    assert_eq!(outcomes, [(ping, "ping".into()), (other, "ignored".into()), (formed, "ping".into())]);
    stack.stop().await;
}

fn urlencode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
