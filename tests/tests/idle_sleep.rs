//! Idle sleep: a demo that nobody visits for its idle time is stopped (state `sleeping`;
//! container, image and clone kept), and the next request through the edge wakes it with a
//! "waking up" page that reloads itself until the demo answers again. A demo that keeps
//! getting requests stays awake. Which demos count as idle: by the repository's setting,
//! else the controller's default, with neither meaning never.

use std::process::Command;
use std::time::Duration;

use demofleet_tests::command;
use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::services::{Services, TestDb};
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;
use serde_json::json;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(120);

fn docker(args: &[&str]) -> String {
    let output = command::output(Command::new("docker").args(args), command::DOCKER).expect("docker runs");
    assert!(output.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// `(id, state)` of each container of the demo, running or not.
fn containers_of(demo_id: &str) -> Vec<(String, String)> {
    docker(&[
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &format!("label=run.demo.id={demo_id}"),
        "--format",
        "{{.ID}} {{.State}}",
    ])
    .lines()
    .filter_map(|l| l.split_once(' ').map(|(id, state)| (id.to_string(), state.to_string())))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_demo_sleeps_and_the_next_request_wakes_it() {
    let stack = Stack::start(StackOptions::default()).await;
    let repo_name = format!("idle-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    // The controller's default is never; this repository's demos sleep after 3 s.
    let put = stack.put_settings(&repo.owner, &repo.repo, &json!({ "idle_sleep_seconds": 3 })).await;
    assert_eq!(put.status(), 200);
    let bad = stack.put_settings(&repo.owner, &repo.repo, &json!({ "idle_sleep_seconds": -1 })).await;
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("idle_sleep_seconds"));

    let files = fixtures::static_site(&stack.services.base_image, "sleepy");
    let sha = repo.commit("demo", &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    let name = format!("{repo_name}-fixture-owner-pr-2");
    let host = format!("{name}.localhost");
    stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    let demo = stack.wait_for_state(&name, "running", DEADLINE).await;
    let demo_id = demo["id"].as_str().unwrap().to_string();
    let before = containers_of(&demo_id);
    assert_eq!(before.len(), 1, "{before:?}");

    // Traefik would send this demo's traffic through the edge, which sees it and wakes it.
    let dynamic = stack.get_json("/traefik/dynamic").await;
    let server = &dynamic["http"]["services"][&name]["loadBalancer"]["servers"][0]["url"];
    assert_eq!(server.as_str().unwrap(), format!("http://{}", stack.edge_addr));

    // Requests keep it awake: one a second for twice its idle time.
    for _ in 0..6 {
        let (status, body) = stack.edge_get(&host, "/").await;
        assert_eq!((status, body.contains("sleepy")), (200, true));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(stack.demo(&name).await.unwrap()["state"], "running", "a visited demo stays awake");
    }

    // Then nobody comes: it sleeps. Its container is stopped, not removed; image and clone stay.
    let asleep = stack.wait_for_state(&name, "sleeping", DEADLINE).await;
    let stopped = wait::until("the container to stop", DEADLINE, || async {
        let now = containers_of(&demo_id);
        (now.len() == 1 && now[0].1 == "exited").then_some(now)
    })
    .await;
    assert_eq!(stopped[0].0, before[0].0, "the same container, kept");
    let tags = docker(&["images", "--format", "{{.Tag}}", &format!("demofleet/{name}")]);
    let generation = format!("g{}-", demo["generation"]);
    assert!(tags.lines().any(|t| t.starts_with(&generation)), "the image of {generation}… kept: {tags}");
    assert!(stack.agents[0].demo_dir.join(&name).join(".git").exists(), "clone kept");
    assert_eq!(asleep["generation"], demo["generation"]);
    let dynamic = stack.get_json("/traefik/dynamic").await;
    assert_eq!(
        dynamic["http"]["routers"][&name]["rule"],
        format!("Host(`{name}.localhost`)"),
        "a sleeping demo keeps its router, to the edge"
    );

    // The next request gets the waking-up page, which reloads itself, and wakes it.
    let response = stack.edge_request(&host, "/").await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["refresh"], "2");
    assert_eq!(response.headers()["retry-after"], "2");
    let page = response.text().await.unwrap();
    assert!(page.contains("<h1>Waking up the demo</h1>") && page.contains("http-equiv=\"refresh\""), "{page}");
    wait::until("the demo to answer again", DEADLINE, || async {
        let (status, body) = stack.edge_get(&host, "/").await;
        (status == 200 && body.contains("sleepy")).then_some(())
    })
    .await;
    let awake = stack.wait_for_state(&name, "running", DEADLINE).await;
    assert_eq!(awake["generation"], demo["generation"], "woken, not redeployed");
    let after = containers_of(&demo_id);
    assert_eq!(after, vec![(before[0].0.clone(), "running".to_string())], "the same container runs again");

    // The chains say what happened, and the audit trail who asked.
    let detail = stack.get_json(&format!("/api/demos/{demo_id}")).await;
    let kinds: Vec<&str> = detail["chains"].as_array().unwrap().iter().map(|c| c["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"sleep") && kinds.contains(&"wake"), "{kinds:?}");
    let actions: Vec<(String, String)> = sqlx::query_as("select actor, action from audit_events where demo_id = $1")
        .bind(Uuid::parse_str(&demo_id).unwrap())
        .fetch_all(&stack.db)
        .await
        .unwrap();
    assert!(actions.contains(&("idle".into(), "sleep".into())) && actions.contains(&("visitor".into(), "wake".into())));

    // A sleeping demo whose pull request closes is torn down like any other.
    stack.wait_for_state(&name, "sleeping", DEADLINE).await;
    stack.deliver("pull_request", &fixtures::pull_request("pull_request.closed.json", &repo, &sha)).await;
    stack.wait_for_state(&name, "stopped", DEADLINE).await;
    assert!(containers_of(&demo_id).is_empty());
    assert!(!stack.agents[0].demo_dir.join(&name).exists());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_demos_are_those_of_a_repository_setting_or_the_default() {
    let services = Services::from_env();
    let test_db = TestDb::create(&services).await;
    let db = sqlx::PgPool::connect(&test_db.url).await.unwrap();
    for (repo, seconds) in [("sleepy", 60), ("awake", 0)] {
        sqlx::query("insert into repo_settings (owner, repo, idle_sleep_seconds) values ('o', $1, $2)")
            .bind(repo)
            .bind(seconds)
            .execute(&db)
            .await
            .unwrap();
    }
    // (repo, pr, state, routed, seconds since the last request)
    let demos = [
        ("sleepy", 1, "running", true, 7200),
        ("sleepy", 2, "running", true, 10),
        ("sleepy", 3, "running", false, 7200),
        ("sleepy", 4, "stopped", false, 7200),
        ("plain", 1, "running", true, 7200),
        ("plain", 2, "running", true, 10),
        ("awake", 1, "running", true, 7200),
    ];
    let mut ids = std::collections::BTreeMap::new();
    for (repo, pr, state, routed, idle_for) in demos {
        let id = Uuid::new_v4();
        sqlx::query(
            "insert into demos (id, owner, repo, pr, name, desired, state, routed, sha, clone_url, github_user,
                                created_at, updated_at, last_request_at)
             values ($1, 'o', $2, $3, $2 || '-o-pr-' || $3, case $4 when 'stopped' then 'stopped' else 'running' end,
                     $4, $5, 'x', 'u', 'a', now() - interval '1 day', now() - interval '1 day',
                     now() - make_interval(secs => $6))",
        )
        .bind(id)
        .bind(repo)
        .bind(pr)
        .bind(state)
        .bind(routed)
        .bind(idle_for as f64)
        .execute(&db)
        .await
        .unwrap();
        ids.insert(id, format!("{repo}-{pr}"));
    }
    let idle = |default: i32| {
        let db = db.clone();
        let ids = ids.clone();
        async move {
            let found = demofleet_controller::db::demos::idle(&db, default).await.unwrap();
            let mut names: Vec<String> = found.iter().map(|id| ids[id].clone()).collect();
            names.sort();
            names
        }
    };
    // No default: only the repository that set an idle time.
    assert_eq!(idle(0).await, ["sleepy-1"]);
    // A default of ten minutes: also the repository without a setting; `awake` set 0, never.
    assert_eq!(idle(600).await, ["plain-1", "sleepy-1"]);
    db.close().await;
    test_db.drop_db().await;
}
