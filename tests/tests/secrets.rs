//! Repository secrets (issue 20, point 3) on real parts: a secret set through the API
//! (and one set through the dashboard's form) reaches the demo's container as an environment
//! variable (its page prints it), and appears
//! in no API answer, no dashboard page, no controller or agent log, and nowhere in the
//! database in clear (a pg_dump of the test's database); a fork's preview gets none until the
//! repository shares its secrets with forks; without a key, setting one is refused.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::oidc;
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;

const DEADLINE: Duration = Duration::from_secs(180);

/// A demo whose page prints its `API_TOKEN`, written at start by whatever user the agent
/// runs the demo as.
fn printing_site(base_image: &str) -> Vec<(&'static str, String)> {
    let script =
        "#!/bin/sh\necho \"token=[$API_TOKEN] dash=[$DASH_TOKEN]\" >/www/index.html\nexec httpd -f -p 8080 -h /www\n";
    let dockerfile = format!(
        "FROM {base_image}\nCOPY start.sh /start.sh\nRUN mkdir -p /www && chmod 777 /www\nEXPOSE 8080\n\
         CMD [\"/bin/sh\", \"/start.sh\"]\n"
    );
    vec![("Dockerfile", dockerfile), ("start.sh", script.to_string())]
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_the_container_and_nothing_else() {
    let keys = tempfile::tempdir().unwrap();
    let stack = Stack::start_keeping_secrets(
        keys.path(),
        env!("CARGO_BIN_EXE_fleet-controller"),
        env!("CARGO_BIN_EXE_fleet-agent"),
    )
    .await;

    let repo_name = format!("sec-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let files = printing_site(&stack.services.base_image);
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    let sha = repo.commit("a demo printing its token", &files);

    let value = format!("sv-{}", Uuid::new_v4().simple());
    let env_path = format!("/api/repos/fixture-owner/{repo_name}/env");
    let put = stack.put_json(&format!("{env_path}/API_TOKEN"), &json!({ "value": value })).await;
    assert_eq!(put.status(), 200);
    let answer = put.text().await.unwrap();
    assert!(answer.contains("API_TOKEN") && !answer.contains(&value), "{answer}");
    for bad in ["1ABC", "PORT", "A-B"] {
        let refused = stack.put_json(&format!("{env_path}/{bad}"), &json!({ "value": value })).await;
        assert_eq!(refused.status(), 400, "{bad}");
        assert!(!refused.text().await.unwrap().contains(&value));
    }
    let listed = stack.get(&env_path).await.text().await.unwrap();
    assert!(listed.contains("API_TOKEN") && !listed.contains(&value), "{listed}");
    // Another through the dashboard's form.
    let dash = format!("dv-{}", Uuid::new_v4().simple());
    let session = oidc::sign_in(&stack, "admin@example.com").await;
    let env_page = format!("/repos/fixture-owner/{repo_name}/env");
    let page = oidc::get_with(&stack, &env_page, &session).await.text().await.unwrap();
    let csrf = csrf_of(&page);
    let form = [("csrf", csrf.as_str()), ("name", "DASH_TOKEN"), ("value", dash.as_str())];
    let posted = oidc::client().post(stack.url(&env_page)).header("cookie", &session).form(&form).send().await.unwrap();
    assert_eq!(posted.status(), 303);

    // A pull request from the repository itself: its container has the secret.
    let body = fixtures::numbered_pull_request("pull_request.opened.json", &repo, &sha, 1);
    assert_eq!(stack.deliver("pull_request", &body).await.1.status(), 202);
    let name = format!("{repo_name}-fixture-owner-pr-1");
    let demo = stack.wait_for_state(&name, "running", DEADLINE).await;
    let (status, page) = stack.edge_get(&format!("{name}.localhost"), "/").await;
    assert_eq!(status, 200);
    assert!(page.contains(&format!("token=[{value}] dash=[{dash}]")), "{page}");

    // A fork's pull request: built from the fork, without the secret.
    let fork = FixtureRepo::create(&stack.repos_dir(), "fork-owner", &repo_name);
    let fork_sha = fork.commit("from a fork", &files);
    let mut body = fixtures::numbered_pull_request("pull_request.opened.json", &repo, &fork_sha, 2);
    let head = &mut body["pull_request"]["head"]["repo"];
    head["owner"]["login"] = "fork-owner".into();
    head["full_name"] = format!("fork-owner/{repo_name}").into();
    head["fork"] = true.into();
    assert_eq!(stack.deliver("pull_request", &body).await.1.status(), 202);
    let fork_name = format!("{repo_name}-fixture-owner-pr-2");
    let fork_demo = stack.wait_for_state(&fork_name, "running", DEADLINE).await;
    let (status, page) = stack.edge_get(&format!("{fork_name}.localhost"), "/").await;
    assert_eq!((status, page.contains("token=[] dash=[]")), (200, true), "the fork's page: {page}");

    // Shared with forks, the fork's next deploy has it.
    let shared = stack.put_settings("fixture-owner", &repo_name, &json!({ "secrets_for_forks": true })).await;
    assert_eq!(shared.status(), 200);
    let fork_id = fork_demo["id"].as_str().unwrap().to_string();
    assert_eq!(stack.post(&format!("/api/demos/{fork_id}/redeploy")).await.status(), 202);
    let host = format!("{fork_name}.localhost");
    let expected = format!("token=[{value}]");
    wait::until("the fork's new generation to print the secret", DEADLINE, || async {
        let (status, page) = stack.edge_get(&host, "/").await;
        (status == 200 && page.contains(&expected)).then_some(())
    })
    .await;

    // Nowhere else: API answers, dashboard pages, the database, the logs.
    let demo_id = demo["id"].as_str().unwrap();
    let mut answers = Vec::new();
    for path in [
        "/api/demos".to_string(),
        format!("/api/demos/{demo_id}"),
        format!("/api/demos/{fork_id}"),
        env_path.clone(),
        format!("/api/repos/fixture-owner/{repo_name}/settings"),
    ] {
        let response = stack.get(&path).await;
        assert_eq!(response.status(), 200, "{path}");
        answers.push((path, response.text().await.unwrap()));
    }
    for path in [
        "/".to_string(),
        format!("/demos/{demo_id}"),
        format!("/demos/{fork_id}"),
        format!("/repos/fixture-owner/{repo_name}/env"),
    ] {
        let response = oidc::get_with(&stack, &path, &session).await;
        assert_eq!(response.status(), 200, "{path}");
        answers.push((path, response.text().await.unwrap()));
    }
    let env_page = &answers.last().unwrap().1;
    assert!(env_page.contains("API_TOKEN") && env_page.contains("DASH_TOKEN"), "names listed: {env_page}");
    for (path, text) in &answers {
        assert!(!text.contains(&value) && !text.contains(&dash), "{path} shows a secret: {text}");
    }
    let audit: Vec<String> = sqlx::query_scalar("select detail::text from audit_events where action = 'secret'")
        .fetch_all(&stack.db)
        .await
        .unwrap();
    assert!(audit.iter().any(|d| d.contains("set secret API_TOKEN")), "{audit:?}");
    let dump = demofleet_tests::command::output(
        std::process::Command::new("pg_dump").args(["--data-only", stack.database_url()]),
        Duration::from_secs(60),
    )
    .expect("pg_dump runs");
    assert!(dump.status.success(), "pg_dump: {}", String::from_utf8_lossy(&dump.stderr));
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("API_TOKEN"), "the dump holds the secret's row");
    assert!(!dump.contains(&value) && !dump.contains(&dash), "the database holds a secret in clear");
    let controller_log = std::fs::read_to_string(stack.scratch.path().join("controller.log")).unwrap();
    let agent_log = stack.agent_process_log(0);
    assert!(!agent_log.is_empty() && !controller_log.is_empty(), "both logged");
    for secret in [&value, &dash] {
        assert!(!controller_log.contains(secret.as_str()), "the controller's log shows a secret");
        assert!(!agent_log.contains(secret.as_str()), "the agent's log shows a secret");
    }

    // Removed, listed no more.
    assert_eq!(stack.delete(&format!("{env_path}/API_TOKEN")).await.status(), 204);
    let listed = stack.get(&env_path).await.text().await.unwrap();
    assert!(!listed.contains("API_TOKEN"), "{listed}");
    assert_eq!(stack.delete(&format!("{env_path}/API_TOKEN")).await.status(), 404);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_setting_a_secret_is_refused() {
    let stack = Stack::start(StackOptions { agents: 0, ..Default::default() }).await;
    let put = stack.put_json("/api/repos/fixture-owner/nokey/env/API_TOKEN", &json!({ "value": "never-stored" })).await;
    assert_eq!(put.status(), 503);
    let text = put.text().await.unwrap();
    assert!(text.contains("DEMOFLEET_SECRETS_KEY_FILE") && !text.contains("never-stored"), "{text}");
    assert_eq!(stack.count("repo_secrets").await, 0);
    stack.stop().await;
}
