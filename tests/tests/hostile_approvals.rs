//! Approvals against someone who can push to a pull request's branch but not to the
//! repository: a maintainer's pull request from a stranger's fork runs the maintainer's
//! commits, and the stranger's later pushes wait for an approval that names the exact
//! commit; approvals of another commit, approvals naming none, and a signed approval
//! comment delivered again under a new delivery id all approve nothing.

use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;

const DEADLINE: Duration = Duration::from_secs(120);

/// A `pull_request` event of `file` for PR 2 of `base`, head `sha` in `fork`, by `author`, sent by `sender`.
fn event(file: &str, base: &FixtureRepo, fork: &FixtureRepo, sha: &str, author: &str, sender: &str) -> Value {
    let mut body = fixtures::pull_request(file, base, sha);
    let head = &mut body["pull_request"]["head"]["repo"];
    head["owner"]["login"] = fork.owner.clone().into();
    head["full_name"] = format!("{}/{}", fork.owner, fork.repo).into();
    head["fork"] = true.into();
    body["pull_request"]["user"]["login"] = author.into();
    body["sender"]["login"] = sender.into();
    body
}

fn comment(base: &FixtureRepo, id: u64, login: &str, body: &str) -> Value {
    json!({
        "action": "created",
        "issue": { "number": 2, "pull_request": { "url": "https://api.github.com/repos/x/y/pulls/2" } },
        "comment": { "id": id, "body": body, "user": { "login": login } },
        "repository": { "name": base.repo, "owner": { "login": base.owner } },
        "sender": { "login": login },
    })
}

async fn audited(stack: &Stack, action: &str) -> Vec<Value> {
    let rows: Vec<(String, Value)> =
        sqlx::query_as("select actor, detail from audit_events where action = $1 order by id")
            .bind(action)
            .fetch_all(&stack.db)
            .await
            .unwrap();
    rows.into_iter().map(|(actor, detail)| json!({ "actor": actor, "detail": detail })).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_s_push_waits_for_an_approval_of_that_very_commit() {
    let stack = Stack::start(StackOptions::default()).await;
    let repo_name = format!("appr-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let base = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let fork = FixtureRepo::create(&stack.repos_dir(), "stranger", &repo_name);
    let full = format!("{}/{}", base.owner, base.repo);
    stack.github.set_permission(&full, "maintainer", "write");
    stack.github.set_permission(&full, "stranger", "read");
    let name = format!("{repo_name}-fixture-owner-pr-2");
    let site = |marker: &str| fixtures::static_site(&stack.services.base_image, marker);
    let commit = |marker: &str| {
        let files = site(marker);
        fork.commit(marker, &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>())
    };

    // The maintainer opens a pull request from the stranger's fork: it runs.
    let first = commit("first");
    let opened = event("pull_request.opened.json", &base, &fork, &first, "maintainer", "maintainer");
    assert_eq!(stack.deliver("pull_request", &opened).await.1.status(), 202);
    let demo = stack.wait_for_state(&name, "running", DEADLINE).await;
    let id = demo["id"].as_str().unwrap().to_string();

    // The stranger pushes to their branch: the maintainer's pull request does not vouch for it.
    let second = commit("second");
    let pushed = event("pull_request.synchronize.json", &base, &fork, &second, "maintainer", "stranger");
    assert_eq!(stack.deliver("pull_request", &pushed).await.1.status(), 202);
    let waiting = stack.wait_for_state(&name, "awaiting_approval", DEADLINE).await;
    assert_eq!(waiting["sha"], second.as_str());
    let (_, page) = stack.edge_get(&format!("{name}.localhost"), "/").await;
    assert!(page.contains("first"), "the maintainer's commit still serves, the stranger's is not built: {page}");

    // Approvals that do not name the head commit approve nothing.
    let path = format!("/api/demos/{id}/approve");
    let unnamed = stack.post_json(&path, &json!({})).await;
    assert_eq!(unnamed.status(), 400);
    assert!(unnamed.text().await.unwrap().contains("names the head commit"));
    let older = stack.post_json(&path, &json!({ "sha": first })).await;
    assert_eq!(older.status(), 409);
    let said = older.text().await.unwrap();
    assert!(said.contains(&format!("head commit is {second}, not {first}")), "{said}");
    let (_, answer) = stack.deliver("issue_comment", &comment(&base, 501, "maintainer", "/demo approve")).await;
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["outcome"], "approval_refused", "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("/demo approve <sha>"), "{answer}");
    let stale = comment(&base, 502, "maintainer", &format!("/demo approve {first}"));
    assert_eq!(stack.deliver("issue_comment", &stale).await.1.status(), 202);
    wait::until("the stale approval to be refused", DEADLINE, || async {
        let refused = audited(&stack, "approval_refused").await;
        refused.iter().any(|r| r["detail"]["sha"] == first.as_str()).then_some(())
    })
    .await;
    assert_eq!(stack.demo(&name).await.unwrap()["state"], "awaiting_approval");

    // The maintainer approves the stranger's commit by name: it runs.
    let approval = comment(&base, 503, "maintainer", &format!("/demo approve {second}\nlooks fine"));
    let approval_body = serde_json::to_vec(&approval).unwrap();
    let (_, answer) = stack.deliver("issue_comment", &approval).await;
    assert_eq!(answer.json::<Value>().await.unwrap()["outcome"], "approval_requested");
    let running = stack.wait_for_state(&name, "running", DEADLINE).await;
    assert_eq!(running["sha"], second.as_str());

    // The stranger pushes again, then replays the signed approval under a new delivery id.
    let third = commit("third");
    let pushed = event("pull_request.synchronize.json", &base, &fork, &third, "maintainer", "stranger");
    assert_eq!(stack.deliver("pull_request", &pushed).await.1.status(), 202);
    stack.wait_for_state(&name, "awaiting_approval", DEADLINE).await;
    let replay = stack.deliver_raw("issue_comment", &Uuid::new_v4().to_string(), &approval_body).await;
    let answer: Value = replay.json().await.unwrap();
    assert_eq!(answer["outcome"], "ignored", "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("a comment approves once"), "{answer}");
    assert_eq!(audited(&stack, "approve").await.len(), 1, "one approval, the maintainer's");
    assert_eq!(stack.demo(&name).await.unwrap()["state"], "awaiting_approval");

    // A push by the maintainer to the fork's branch is theirs: it runs unapproved.
    let fourth = commit("fourth");
    let pushed = event("pull_request.synchronize.json", &base, &fork, &fourth, "maintainer", "maintainer");
    assert_eq!(stack.deliver("pull_request", &pushed).await.1.status(), 202);
    let running = stack.wait_for_state(&name, "running", DEADLINE).await;
    assert_eq!(running["sha"], fourth.as_str());
    let (_, page) = stack.edge_get(&format!("{name}.localhost"), "/").await;
    assert!(page.contains("fourth"), "{page}");
    stack.stop().await;
}
