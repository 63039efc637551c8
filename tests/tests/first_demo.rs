//! The first demo without GitHub: `demofleet-controller deploy-local DIR` deploys a folder of
//! this machine as a pull request's demo, through a local bare repository and a signed
//! `pull_request` webhook, and updates it when run again after a change.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use demofleet_tests::command;
use demofleet_tests::fixtures;
use demofleet_tests::stack::{Stack, StackOptions};
use uuid::Uuid;

const DEPLOY_DEADLINE: Duration = Duration::from_secs(240);

/// The repository's `examples/` folder.
fn examples() -> PathBuf {
    demofleet_tests::workspace_root().join("examples")
}

/// Run `deploy-local` against `stack` with `args`, as scripts/deploy-local does.
async fn deploy_local(stack: &Stack, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleet-controller"));
    cmd.arg("deploy-local")
        .args(args)
        .args(["--timeout", "200s"])
        .env("DEMOFLEET_GIT_URL", format!("file://{}/{{owner}}/{{repo}}.git", stack.repos_dir().display()))
        .env("DEMOFLEET_LISTEN", stack.http_addr.to_string())
        .env("DEMOFLEET_EDGE_LISTEN", stack.edge_addr.to_string())
        .env("DEMOFLEET_WEBHOOK_SECRET", &stack.secret)
        .env("DEMOFLEET_DATABASE_URL", stack.database_url())
        .env_remove("DEMOFLEET_WEBHOOK_SECRET_FILE")
        .env_remove("DEMOFLEET_BASE_DOMAIN")
        .env_remove("DEMOFLEET_PUBLIC_PORT")
        .env_remove("DEMOFLEET_PUBLIC_SCHEME");
    tokio::task::spawn_blocking(move || command::output(&mut cmd, DEPLOY_DEADLINE).expect("deploy-local runs"))
        .await
        .unwrap()
}

fn succeeded(output: &Output) -> (String, String) {
    let (stdout, stderr) =
        (String::from_utf8_lossy(&output.stdout).to_string(), String::from_utf8_lossy(&output.stderr).to_string());
    assert!(output.status.success(), "deploy-local failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

/// Copy folder `from` to `to`, keeping executable bits, with the stack's base image.
fn copy_example(from: &Path, to: &Path, base_image: &str) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_example(&entry.path(), &target, base_image);
        } else if entry.file_name() == "Dockerfile" {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            std::fs::write(&target, text.replace("demofleet/base:busybox", base_image)).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_folder_becomes_a_pull_request_demo_and_follows_its_changes() {
    let stack = Stack::start(StackOptions::default()).await;
    let suffix = &Uuid::new_v4().simple().to_string()[..8];

    // The web app example as a person's own repository, committed.
    let repo = format!("web-app-{suffix}");
    let work = stack.repos_dir().join("people").join(&repo);
    copy_example(&examples().join("web-app"), &work, &stack.services.base_image);
    fixtures::git(&work, &["init", "--quiet", "-b", "main"]);
    fixtures::git(&work, &["add", "--all"]);
    fixtures::git(&work, &["commit", "--quiet", "-m", "the example web app"]);
    let head = fixtures::git_output(&work, &["rev-parse", "HEAD"]);

    let dir = work.to_str().unwrap();
    let (stdout, stderr) = succeeded(&deploy_local(&stack, &[dir, "--pr", "7", "--repo", &repo]).await);
    let name = format!("{repo}-local-pr-7");
    let hostname = format!("{name}.localhost");
    let url = format!("http://{hostname}:{}/", stack.edge_addr.port());
    assert_eq!(stdout.trim(), url, "the demo's URL is printed: {stderr}");
    assert!(stderr.contains("pull_request opened"), "{stderr}");
    let demo = stack.demo(&name).await.expect("the demo is listed");
    assert_eq!((demo["state"].as_str(), demo["sha"].as_str()), (Some("running"), Some(head.as_str())));
    assert_eq!((demo["owner"].as_str(), demo["pr"].as_i64()), (Some("local"), Some(7)));
    // Delivered like any webhook, signed and recorded.
    let outcomes: Vec<(String, Option<String>)> =
        sqlx::query_as("select outcome, action from webhook_deliveries where event = 'pull_request'")
            .fetch_all(&stack.db)
            .await
            .unwrap();
    assert_eq!(outcomes, [("deploy_queued".to_string(), Some("opened".to_string()))]);
    // The bare repository holds the pull request's branch.
    let bare = stack.repos_dir().join("local").join(format!("{repo}.git"));
    assert_eq!(fixtures::git_output(&bare, &["rev-parse", "refs/heads/pr-7"]), head);

    // It answers on its hostname through the edge, with its [env] and its health path.
    let (status, body) = stack.edge_get(&hostname, "/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Hello from the example web app") && body.contains(&head), "{body}");
    let (status, body) = stack.edge_get(&hostname, "/cgi-bin/health").await;
    assert_eq!((status, body.trim()), (200, "ok"));

    // A change not committed: run again, and the demo is updated (synchronize).
    let config = work.join(".demofleet.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("Hello from the example web app", "Hello again, changed")).unwrap();
    let (_, stderr) = succeeded(&deploy_local(&stack, &[dir, "--pr", "7", "--repo", &repo]).await);
    assert!(stderr.contains("pull_request synchronize"), "{stderr}");
    let demo = stack.demo(&name).await.unwrap();
    let updated = demo["sha"].as_str().unwrap().to_string();
    assert_ne!(updated, head, "a commit of the work tree");
    assert_eq!(fixtures::git_output(&work, &["rev-parse", &format!("{updated}^")]), head, "on top of HEAD");
    assert_eq!((demo["state"].as_str(), demo["generation"].as_i64()), (Some("running"), Some(2)));
    let (status, body) = stack.edge_get(&hostname, "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("Hello again, changed") && body.contains(&updated), "{body}");
    assert_eq!(fixtures::git_output(&work, &["status", "--porcelain"]), "M .demofleet.toml", "the index is left alone");

    // Nothing changed since: nothing is sent.
    let (_, stderr) = succeeded(&deploy_local(&stack, &[dir, "--pr", "7", "--repo", &repo]).await);
    assert!(stderr.contains("already its demo's"), "{stderr}");
    assert_eq!(stack.demo(&name).await.unwrap()["generation"], 2);

    // A folder inside a repository (the static site, here in this very repository) is
    // deployed with its own files only.
    let site_repo = format!("static-site-{suffix}");
    let site = stack.repos_dir().join("people").join("checkout").join("examples").join("static-site");
    copy_example(&examples().join("static-site"), &site, &stack.services.base_image);
    fixtures::git(&stack.repos_dir().join("people").join("checkout"), &["init", "--quiet"]);
    let (stdout, _) =
        succeeded(&deploy_local(&stack, &[site.to_str().unwrap(), "--pr", "8", "--repo", &site_repo]).await);
    let site_host = format!("{site_repo}-local-pr-8.localhost");
    assert_eq!(stdout.trim(), format!("http://{site_host}:{}/", stack.edge_addr.port()));
    let (status, body) = stack.edge_get(&site_host, "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("A static site, as a pull request demo"), "{body}");
    let site_bare = stack.repos_dir().join("local").join(format!("{site_repo}.git"));
    let files = fixtures::git_output(&site_bare, &["ls-tree", "--name-only", "refs/heads/pr-8"]);
    assert_eq!(files.lines().collect::<Vec<_>>(), [".demofleet.toml", "Dockerfile", "index.html", "style.css"]);
    stack.stop().await;
}
