//! Where the agent fetches from: a fork PR from the fork (its head repository); a private
//! repository over smart HTTP with the token from `DEMOFLEET_GIT_TOKEN_FILE`, which never
//! lands on disk (the clone, its `.git/config`), in the chain's errors or in the live log,
//! and which is read again at each checkout, so it can be rotated in place.

use std::path::Path;
use std::time::Duration;

use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::stack::{Stack, StackOptions};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(120);

/// Files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_repositories_are_fetched_with_a_token_that_is_never_stored() {
    let token = format!("ghs_{}", Uuid::new_v4().simple());
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("git-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let options = StackOptions {
        private_repos_token: Some(token.clone()),
        agent_args: vec!["--git-token-file".into(), token_file.to_str().unwrap().into()],
        controller_args: vec!["--retry-delays".into(), "300ms".into()],
        ..Default::default()
    };
    let stack = Stack::start(options).await;
    let repo_name = format!("priv-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let files = fixtures::static_site(&stack.services.base_image, "private one");
    let sha = repo.commit("demo", &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    let name = format!("{repo_name}-fixture-owner-pr-2");
    stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    let demo = stack.wait_for_state(&name, "running", DEADLINE).await;
    let id = demo["id"].as_str().unwrap().to_string();
    let (status, body) = stack.edge_get(&format!("{name}.localhost"), "/").await;
    assert_eq!((status, body.contains("private one")), (200, true));

    // Every request to the git server carried the token.
    let git_http = stack.git_http.as_ref().unwrap();
    let requests = git_http.requests();
    assert!(!requests.is_empty() && requests.iter().all(|(_, authorized)| *authorized), "{requests:?}");
    // Nothing on disk holds it: not the clone, not its .git/config.
    let clone = stack.agents[0].demo_dir.join(&name);
    assert!(clone.join(".git/config").exists());
    assert_eq!(files_containing(&stack.agents[0].demo_dir, &token), Vec::<String>::new());
    let config = std::fs::read_to_string(clone.join(".git/config")).unwrap();
    assert!(!config.contains("extraheader") && !config.contains("Authorization"), "{config}");

    // A wrong token (rotated in place) fails the fetch with a message that does not show it;
    // the right one, rotated back, serves the retry.
    let wrong = format!("ghs_{}", Uuid::new_v4().simple());
    std::fs::write(&token_file, &wrong).unwrap();
    let mut log = stack.follow(&format!("/api/demos/{id}/logs")).await;
    let files = fixtures::static_site(&stack.services.base_image, "private two");
    let sha2 = repo.commit("second", &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    stack.deliver("pull_request", &fixtures::pull_request("pull_request.synchronize.json", &repo, &sha2)).await;
    let failed = stack.wait_for_state(&name, "failed", DEADLINE).await;
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("checkout failed") && error.contains("git fetch failed"), "{error}");
    assert!(!error.contains(&wrong) && !error.contains(&token), "{error}");
    let detail = stack.get_json(&format!("/api/demos/{id}")).await;
    let chain = &detail["chains"][0];
    let text = chain.to_string();
    assert!(!text.contains(&wrong) && !text.contains(&token));
    let mut seen = String::new();
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout(Duration::from_millis(500), log.chunk()).await {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("checkout failed"), "the live log tells of the failure: {seen}");
    assert!(!seen.contains(&wrong) && !seen.contains(&token));

    std::fs::write(&token_file, &token).unwrap();
    let chain_id = chain["id"].as_str().unwrap();
    assert_eq!(stack.post(&format!("/api/chains/{chain_id}/retry")).await.status(), 202);
    stack.wait_for_state(&name, "running", DEADLINE).await;
    let (status, body) = stack.edge_get(&format!("{name}.localhost"), "/").await;
    assert_eq!((status, body.contains("private two")), (200, true));
    assert_eq!(files_containing(&stack.agents[0].demo_dir, &token), Vec::<String>::new());
    assert_eq!(files_containing(&stack.agents[0].demo_dir, &wrong), Vec::<String>::new());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_pr_is_built_from_the_fork() {
    let stack = Stack::start(StackOptions::default()).await;
    let repo_name = format!("fork-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let base = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let files = fixtures::static_site(&stack.services.base_image, "upstream");
    base.commit("base", &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    // The contributor's fork, a repository of another owner, holds the PR's head commit.
    let fork = FixtureRepo::create(&stack.repos_dir(), "fork-owner", &repo_name);
    let files = fixtures::static_site(&stack.services.base_image, "from the fork");
    let sha = fork.commit("change", &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    let mut body = fixtures::pull_request("pull_request.opened.json", &base, &sha);
    let head = &mut body["pull_request"]["head"]["repo"];
    head["owner"]["login"] = "fork-owner".into();
    head["full_name"] = format!("fork-owner/{repo_name}").into();
    head["fork"] = true.into();

    stack.deliver("pull_request", &body).await;
    // Named after the base repository, built from the fork's commit.
    let name = format!("{repo_name}-fixture-owner-pr-2");
    let demo = stack.wait_for_state(&name, "running", DEADLINE).await;
    assert_eq!(demo["sha"], sha.as_str());
    let (status, page) = stack.edge_get(&format!("{name}.localhost"), "/").await;
    assert_eq!((status, page.contains("from the fork")), (200, true), "{page}");
    stack.stop().await;
}
