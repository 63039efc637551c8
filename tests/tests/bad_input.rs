//! The bad input suite: hostile or broken webhooks and `.demofleet.toml` files, each
//! refused with an error saying what is wrong, and nothing stored, queued or launched.
//! (Signatures, sizes and content types: also webhook_intake.rs.)

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use demofleet_tests::command;
use demofleet_tests::fixtures::{self, sign, FixtureRepo};
use demofleet_tests::spy::Spy;
use demofleet_tests::stack::{Stack, StackOptions};

/// A webhook case: what it is, the body, and the answer expected (status, error part).
struct Case {
    what: &'static str,
    body: Vec<u8>,
    status: u16,
    error: &'static str,
}

fn edited(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut body = fixtures::payload("pull_request.opened.json");
    edit(&mut body);
    serde_json::to_vec(&body).unwrap()
}

fn cases() -> Vec<Case> {
    let case = |what, body, status, error| Case { what, body, status, error };
    let name = |value: &'static str| edited(move |b| b["repository"]["name"] = value.into());
    let owner = |value: &'static str| edited(move |b| b["repository"]["owner"]["login"] = value.into());
    let number = |value: Value| edited(move |b| b["number"] = value);
    let long: &'static str = "r".repeat(101).leak();
    vec![
        case("truncated JSON", br#"{"action": "opened", "number": "#.to_vec(), 400, "the body is not a JSON object"),
        case("not an object", b"[1, 2, 3]".to_vec(), 400, "the body is not a JSON object"),
        case("not JSON at all", b"\xff\xfe\x00garbage".to_vec(), 400, "the body is not a JSON object"),
        case("a repository name with ..", name(".."), 400, "repository name"),
        case("a repository name with /", name("a/b"), 400, "repository name"),
        case("a repository name in unicode", name("démo-😀"), 400, "repository name"),
        case("a repository name of 101 characters", name(long), 400, "repository name"),
        case("an empty repository name", name(""), 400, "repository name"),
        case("an owner with ..", owner("../root"), 400, "owner"),
        case("an owner with a space", owner("a b"), 400, "owner"),
        case("pull request number 0", number(0.into()), 400, "number"),
        case("a negative pull request number", number((-7).into()), 400, "number"),
        case("a pull request number past 2^63", number(serde_json::json!(18446744073709551615u64)), 400, "number"),
        case("a pull request number of 1e300", number(serde_json::json!(1e300)), 400, "number"),
        case(
            "a head commit that is not a hash",
            edited(|b| b["pull_request"]["head"]["sha"] = "HEAD~1; rm -rf /".into()),
            400,
            "sha",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_webhooks_are_refused_with_their_reason_and_nothing_is_kept() {
    let stack = Stack::start(StackOptions::default()).await;
    let spy = Spy::start(&stack).await;
    let mut failures = Vec::new();
    for case in cases() {
        let signature = sign(&stack.secret, &case.body);
        let delivery = Uuid::new_v4().to_string();
        let response =
            stack.webhook("pull_request", &delivery, "application/json", Some(&signature), case.body.clone()).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or_default();
        let error = body["error"].as_str().unwrap_or_default();
        if status != case.status || !error.contains(case.error) {
            failures.push(format!(
                "{}: {status} {error:?}, expected {} mentioning {:?}",
                case.what, case.status, case.error
            ));
        }
    }
    // Signatures that are not signatures.
    let body = serde_json::to_vec(&fixtures::payload("pull_request.opened.json")).unwrap();
    for (what, signature) in [
        ("a signature that is not hex", "sha256=zz".to_string()),
        ("a signature cut short", sign(&stack.secret, &body)[..40].to_string()),
        ("a signature of an unknown scheme", "md5=00".to_string()),
        ("an empty signature", String::new()),
    ] {
        let response = stack.webhook("pull_request", "d-sig", "application/json", Some(&signature), body.clone()).await;
        if response.status() != 401 {
            failures.push(format!("{what}: {}", response.status()));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    for table in ["webhook_deliveries", "demos", "chains", "outbox"] {
        assert_eq!(stack.count(table).await, 0, "{table} is empty");
    }
    assert_eq!(spy.copies().await, 0, "messages were sent to the controller's or the agent's queue");

    // A replay: the same delivery again changes nothing, even with another (signed) body.
    let (delivery, first) = stack.deliver("ping", &fixtures::payload("ping.json")).await;
    assert_eq!(first.status(), 200);
    let again = stack.deliver_raw("pull_request", &delivery, &body).await;
    assert!(again.status().is_success(), "{}", again.status());
    assert_eq!(stack.count("webhook_deliveries").await, 1);
    assert_eq!(stack.count("demos").await, 0);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_demo_configurations_are_refused_and_nothing_is_launched() {
    let stack = Stack::start(StackOptions::default()).await;
    let repo_name = format!("hostile-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let configs = [
        ("limits.memory_mb = 1000000\n", "limits.memory_mb = 1000000 is over this host's limit"),
        ("[limits]\ncpus = 64\n", "limits.cpus = 64 is over this host's limit"),
        ("[limits]\npids = 4000000\n", "limits.pids = 4000000 is over this host's limit"),
        ("context = \"/etc\"\n", "`context` \"/etc\" must be a relative path inside the repository"),
        (
            "dockerfile = \"../../../../etc/passwd\"\n",
            "`dockerfile` \"../../../../etc/passwd\" must be a relative path inside the build context",
        ),
        ("privileged = true\n", "unknown field `privileged`"),
        ("volumes = [\"/var/run/docker.sock:/var/run/docker.sock\"]\n", "unknown field `volumes`"),
        ("network_mode = \"host\"\n", "unknown field `network_mode`"),
    ];
    let mut prs = Vec::new();
    for (index, (config, reason)) in configs.iter().enumerate() {
        let pr = index as u64 + 1;
        let mut files = fixtures::static_site(&stack.services.base_image, "never served");
        files.push((".demofleet.toml", config.to_string()));
        let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
        let sha = repo.commit(&format!("hostile {pr}"), &files);
        let mut body = fixtures::pull_request("pull_request.opened.json", &repo, &sha);
        body["number"] = pr.into();
        body["pull_request"]["number"] = pr.into();
        let (_, response) = stack.deliver("pull_request", &body).await;
        assert_eq!(response.status(), 202);
        prs.push((format!("{repo_name}-fixture-owner-pr-{pr}"), *reason));
    }
    for (name, reason) in prs {
        let demo = stack.wait_for_state(&name, "failed", Duration::from_secs(120)).await;
        let error = demo["error"].as_str().unwrap_or_default();
        assert!(error.starts_with("build failed: .demofleet.toml") && error.contains(reason), "{name}: {error}");
        let id = demo["id"].as_str().unwrap();
        let containers = command::output(
            Command::new("docker").args(["ps", "-aq", "--filter", &format!("label=run.demo.id={id}")]),
            command::DOCKER,
        )
        .unwrap()
        .stdout;
        assert!(containers.is_empty(), "{name}: nothing launched");
        let images = command::output(
            Command::new("docker").args(["images", "-q", &format!("demofleet/{name}")]),
            command::DOCKER,
        )
        .unwrap()
        .stdout;
        assert!(images.is_empty(), "{name}: nothing built");
    }
    stack.stop().await;
}
