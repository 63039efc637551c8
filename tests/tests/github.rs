//! What GitHub hears and what it decides: App auth, one comment kept up to date, a
//! deployment with statuses, commit statuses, rate limits waited out, failing notifications
//! retried alone, and authors without write access waiting for approval.

use std::time::Duration;

use axum::http::Method;
use demofleet_tests::fake_github::Fault;
use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::stack::{GitHubAuth, Stack, StackOptions};
use demofleet_tests::wait;
use serde_json::{json, Value};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(120);

/// A fixture repository with a static site committed; its demo name and head commit.
fn site(stack: &Stack) -> (FixtureRepo, String, String) {
    let repo_name = format!("gh-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let files = fixtures::static_site(&stack.services.base_image, "feedback");
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    let sha = repo.commit("demo", &files);
    (repo, format!("{repo_name}-fixture-owner-pr-2"), sha)
}

fn full_name(repo: &FixtureRepo) -> String {
    format!("{}/{}", repo.owner, repo.repo)
}

/// Wait until the PR's only comment contains `text`.
async fn comment_says(stack: &Stack, repo: &FixtureRepo, text: &str) -> String {
    wait::until(&format!("the PR comment to say {text:?}"), DEADLINE, || async {
        let comments = stack.github.comments(&full_name(repo), 2);
        comments.last().filter(|c| c.contains(text)).cloned()
    })
    .await
}

fn states(calls: &[demofleet_tests::fake_github::Call], part: &str) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.path.contains(part) && c.status < 300)
        .map(|c| c.body["state"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_app_keeps_one_comment_a_deployment_and_statuses_up_to_date() {
    let stack = Stack::start(StackOptions { github_auth: GitHubAuth::App, ..Default::default() }).await;
    let (repo, name, sha) = site(&stack);
    let (_, response) =
        stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    assert_eq!(response.status(), 202);
    let demo = stack.wait_for_state(&name, "running", DEADLINE).await;
    let url = demo["url"].as_str().unwrap();
    let comment = comment_says(&stack, &repo, "is running").await;
    assert!(comment.contains(url) && comment.contains(&sha[..7]), "{comment}");

    let calls = stack.github.calls();
    // App auth: the installation is found and a token bought with the JWT, once, then reused.
    assert_eq!(stack.github.successful(Method::POST, "/access_tokens").len(), 1);
    assert!(calls
        .iter()
        .filter(|c| c.path.starts_with("/app/") || c.path.ends_with("/installation"))
        .all(|c| c.auth == "jwt"));
    assert!(calls
        .iter()
        .filter(|c| c.path.starts_with("/repos/") && !c.path.ends_with("/installation"))
        .all(|c| c.auth == "installation"));
    // The author's permission was asked.
    assert_eq!(stack.github.successful(Method::GET, "/collaborators/Codertocat/permission").len(), 1);
    // One deployment for the head commit, with statuses ending in success and the URL.
    let deployments = stack.github.successful(Method::POST, "/deployments");
    let created: Vec<_> = deployments.iter().filter(|c| c.path.ends_with("/deployments")).collect();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].body["ref"], sha.as_str());
    assert_eq!(created[0].body["transient_environment"], true);
    let deployment_states = states(&calls, "/statuses");
    assert!(deployment_states.ends_with(&["success".into()]), "{deployment_states:?}");
    let success =
        calls.iter().rev().find(|c| c.path.contains("/deployments/") && c.body["state"] == "success").unwrap();
    assert_eq!(success.body["environment_url"], url);
    let commit_states = states(&calls, &format!("/statuses/{sha}"));
    assert_eq!(commit_states.first().map(String::as_str), Some("pending"));
    assert_eq!(commit_states.last().map(String::as_str), Some("success"));

    // Closing: the deployment goes inactive and the same comment says so.
    let (_, response) =
        stack.deliver("pull_request", &fixtures::pull_request("pull_request.closed.json", &repo, &sha)).await;
    assert_eq!(response.status(), 202);
    stack.wait_for_state(&name, "stopped", DEADLINE).await;
    comment_says(&stack, &repo, "has been stopped").await;
    wait::until("an inactive deployment status", DEADLINE, || async {
        states(&stack.github.calls(), "/deployments/").contains(&"inactive".to_string()).then_some(())
    })
    .await;
    assert_eq!(stack.github.successful(Method::POST, "/issues/2/comments").len(), 1, "one comment, edited in place");
    assert!(!stack.github.successful(Method::PATCH, "/issues/comments/").is_empty());
    assert_eq!(stack.github.comments(&full_name(&repo), 2).len(), 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_waited_out_and_failing_notifications_retry_alone() {
    let options = StackOptions {
        controller_args: vec![
            "--retry-delays".into(),
            "300ms,600ms,1s".into(),
            "--github-patience".into(),
            "5s".into(),
        ],
        ..Default::default()
    };
    let stack = Stack::start(options).await;
    let (repo, name, sha) = site(&stack);
    // The permission check meets a secondary limit, then a spent primary limit.
    stack.github.fail_next("/permission", 1, Fault::RetryAfter(1));
    stack.github.fail_next("/permission", 1, Fault::Exhausted(1));
    // Comments fail with server errors longer than one call's patience.
    stack.github.fail_next("/comments", 15, Fault::ServerError);
    let (_, response) =
        stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    assert_eq!(response.status(), 202);
    stack.wait_for_state(&name, "running", DEADLINE).await;

    let permission_calls: Vec<_> =
        stack.github.calls().into_iter().filter(|c| c.path.ends_with("/permission")).collect();
    assert_eq!(permission_calls.iter().map(|c| c.status).collect::<Vec<_>>(), [429, 403, 200]);
    assert!(permission_calls[1].at - permission_calls[0].at >= Duration::from_secs(1), "waited for retry-after");
    assert!(permission_calls[2].at - permission_calls[1].at >= Duration::from_millis(900), "waited for the reset");

    // The comment lands once GitHub recovers; the demo kept running throughout.
    comment_says(&stack, &repo, "is running").await;
    assert_eq!(stack.demo(&name).await.unwrap()["generation"], 1, "the demo was never restarted");
    let chains: i64 = stack.count("chains").await;
    assert_eq!(chains, 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authors_without_write_access_wait_for_an_approval() {
    let stack = Stack::start(StackOptions::default()).await;
    let (repo, name, sha) = site(&stack);
    let full = full_name(&repo);
    stack.github.set_permission(&full, "stranger", "read");
    stack.github.set_permission(&full, "bystander", "read");
    stack.github.set_permission(&full, "maintainer", "write");
    let mut opened = fixtures::pull_request("pull_request.opened.json", &repo, &sha);
    opened["pull_request"]["user"]["login"] = "stranger".into();
    opened["sender"]["login"] = "stranger".into();
    let (_, response) = stack.deliver("pull_request", &opened).await;
    assert_eq!(response.status(), 202);
    let demo = stack.wait_for_state(&name, "awaiting_approval", DEADLINE).await;
    comment_says(&stack, &repo, &format!("/demo approve {sha}")).await;
    assert!(!stack.agents[0].demo_dir.join(&name).exists(), "nothing ran");

    // A comment by someone without write access approves nothing.
    let ids = std::sync::atomic::AtomicU64::new(1);
    let comment = |login: &str, body: &str| {
        let id = ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        json!({
            "action": "created",
            "issue": { "number": 2, "pull_request": { "url": "https://api.github.com/repos/x/y/pulls/2" } },
            "comment": { "id": id, "body": body, "user": { "login": login } },
            "repository": opened["repository"].clone(),
            "sender": { "login": login },
        })
    };
    let approve = format!("/demo approve {sha}");
    let (_, response) = stack.deliver("issue_comment", &comment("bystander", &approve)).await;
    assert_eq!(response.status(), 202);
    wait::until("the refusal to be audited", DEADLINE, || async {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from audit_events where action = 'approval_refused' and actor = 'github:bystander'",
        )
        .fetch_one(&stack.db)
        .await
        .unwrap();
        (n == 1).then_some(())
    })
    .await;
    assert_eq!(stack.demo(&name).await.unwrap()["state"], "awaiting_approval");
    // An ordinary comment is recorded and ignored.
    let (_, response) = stack.deliver("issue_comment", &comment("maintainer", "looks good")).await;
    assert_eq!(response.json::<Value>().await.unwrap()["outcome"], "ignored");

    // A maintainer's `/demo approve <sha>` starts it.
    let (_, response) = stack.deliver("issue_comment", &comment("maintainer", &format!("{approve}\nthanks"))).await;
    assert_eq!(response.json::<Value>().await.unwrap()["outcome"], "approval_requested");
    stack.wait_for_state(&name, "running", DEADLINE).await;
    let audit: Vec<(String, String)> =
        sqlx::query_as("select actor, action from audit_events where demo_id = $1 order by id")
            .bind(Uuid::parse_str(demo["id"].as_str().unwrap()).unwrap())
            .fetch_all(&stack.db)
            .await
            .unwrap();
    let expected =
        [("github:stranger", "start"), ("github:bystander", "approval_refused"), ("github:maintainer", "approve")];
    assert_eq!(audit, expected.map(|(a, b)| (a.to_string(), b.to_string())));

    // A new push by the stranger needs approval again; this time through the API.
    let sha2 = repo.commit("more", &[("extra.txt", "x")]);
    let mut pushed = fixtures::pull_request("pull_request.synchronize.json", &repo, &sha2);
    pushed["pull_request"]["user"]["login"] = "stranger".into();
    pushed["sender"]["login"] = "stranger".into();
    let (_, response) = stack.deliver("pull_request", &pushed).await;
    assert_eq!(response.status(), 202);
    let demo = stack.wait_for_state(&name, "awaiting_approval", DEADLINE).await;
    let id = demo["id"].as_str().unwrap();
    let approved = stack.post_json(&format!("/api/demos/{id}/approve"), &json!({ "sha": sha2 })).await;
    assert_eq!(approved.status(), 202);
    let demo = stack.wait_for_state(&name, "running", DEADLINE).await;
    assert_eq!(demo["sha"], sha2.as_str());
    let again = stack.post_json(&format!("/api/demos/{id}/approve"), &json!({ "sha": sha2 })).await;
    assert_eq!(again.status(), 409, "nothing waits for approval now");
    stack.stop().await;
}
