//! `demofleet-controller deploy-local DIR`: a folder on this machine deployed as a pull
//! request's demo exactly the way GitHub would do it, so that a person can try an app's
//! `.demofleet.toml` before connecting GitHub.
//!
//! The folder's content goes, as a commit, into the local bare repository the controller
//! clones from (`DEMOFLEET_GIT_URL`, a `file://` template; the agent must be allowed to
//! fetch from it with `DEMOFLEET_GIT_LOCAL_ROOT`), on the branch `pr-<n>`; then a signed
//! `pull_request` webhook goes to the controller: `opened` the first time, `synchronize`
//! for an update, `reopened` after the demo was closed. What is deployed:
//! - DIR the top of a git work tree, clean: its `HEAD` commit;
//! - with changes not committed (untracked files too, `.gitignore` respected): a commit of
//!   the work tree on top of `HEAD`, made in a private index, leaving the person's index and
//!   branches alone;
//! - DIR a folder inside a repository, or in none: a commit of its files, on top of the
//!   previous one deployed for that pull request.
//!
//! Then it waits for the demo to run that commit (or fail) and prints its URL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;

use super::context;
use crate::config::Database;
use crate::urls::DemoUrls;
use demofleet_common::names;

/// Who a local demo's pull request is opened by, and the owner of its repository.
const LOCAL_OWNER: &str = "local";

#[derive(Debug, Args)]
pub struct DeployLocal {
    /// The folder to deploy: the top of a git work tree, a folder in one, or any folder.
    pub dir: PathBuf,
    /// The pull request number.
    #[arg(long, default_value_t = 1)]
    pub pr: u64,
    /// Repository name; default: the folder's name.
    #[arg(long)]
    pub repo: Option<String>,
    /// Owner of the repository and author of the pull request.
    #[arg(long, default_value = LOCAL_OWNER)]
    pub owner: String,
    /// Send the webhook and return, without waiting for the demo to run.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the demo to run.
    #[arg(long, default_value = "10m", value_parser = demofleet_common::duration::parse_duration)]
    pub timeout: Duration,
    /// The controller's clone URL template; must be `file://…/{owner}/{repo}.git`.
    #[arg(long, env = "DEMOFLEET_GIT_URL")]
    pub git_url: String,
    /// The controller's address (its webhook is `http://<it>/webhook/github`).
    #[arg(long, env = "DEMOFLEET_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// The webhook secret.
    #[arg(long, env = "DEMOFLEET_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// A file holding the webhook secret, instead.
    #[arg(long, env = "DEMOFLEET_WEBHOOK_SECRET_FILE", conflicts_with = "webhook_secret")]
    pub webhook_secret_file: Option<PathBuf>,
    /// For the URL printed: as the controller's settings of the same names.
    #[arg(long, env = "DEMOFLEET_BASE_DOMAIN", default_value = "localhost")]
    pub base_domain: String,
    #[arg(long, env = "DEMOFLEET_PUBLIC_SCHEME", default_value = "http")]
    pub public_scheme: String,
    #[arg(long, env = "DEMOFLEET_PUBLIC_PORT")]
    pub public_port: Option<u16>,
    #[arg(long, env = "DEMOFLEET_EDGE_LISTEN", default_value = "127.0.0.1:8080")]
    pub edge_listen: SocketAddr,
    #[command(flatten)]
    pub database: Database,
}

pub async fn run(args: DeployLocal) -> anyhow::Result<()> {
    let secret = match (&args.webhook_secret, &args.webhook_secret_file) {
        (Some(secret), _) => secret.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("reading the webhook secret from {}", file.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
        (None, None) => bail!("the webhook secret is needed: DEMOFLEET_WEBHOOK_SECRET or --webhook-secret-file"),
    };
    let dir = args.dir.canonicalize().with_context(|| format!("{}", args.dir.display()))?;
    if !dir.is_dir() {
        bail!("{} is not a folder", dir.display());
    }
    let repo = match &args.repo {
        Some(repo) => repo.clone(),
        None => repo_name(&dir)?,
    };
    names::validate_repo(&repo).map_err(anyhow::Error::msg)?;
    names::validate_login(&args.owner).map_err(anyhow::Error::msg)?;
    let name = names::demo_name(&repo, &args.owner, args.pr)?;
    let bare = bare_path(&args.git_url, &args.owner, &repo)?;
    let branch = format!("refs/heads/pr-{}", args.pr);

    ensure_bare(&bare)?;
    let previous = git_out(&bare, &["rev-parse", "--verify", "--quiet", &format!("{branch}^{{commit}}")]).ok();
    let sha = snapshot(&dir, &bare, previous.as_deref())?;
    push(&dir, &bare, &sha, &branch)?;

    let db = context::connect(&args.database).await?;
    let demo: Option<(String, String)> =
        sqlx::query_as("select desired, sha from demos where owner = $1 and repo = $2 and pr = $3")
            .bind(&args.owner)
            .bind(&repo)
            .bind(args.pr as i64)
            .fetch_optional(&db)
            .await?;
    let action = match &demo {
        None => "opened",
        Some((desired, _)) if desired == "stopped" => "reopened",
        Some((_, deployed)) if *deployed == sha => {
            eprintln!("{name}: commit {} is already its demo's", &sha[..12]);
            ""
        }
        Some(_) => "synchronize",
    };
    if !action.is_empty() {
        let body = serde_json::to_vec(&payload(action, args.pr, &args.owner, &repo, &sha, &dir))?;
        send(&args.listen, &secret, &body).await?;
        eprintln!("{name}: sent pull_request {action} for commit {}", &sha[..12]);
    }

    let urls = DemoUrls {
        base_domain: args.base_domain.clone(),
        scheme: args.public_scheme.clone(),
        port: args.public_port.or_else(|| (args.base_domain == "localhost").then_some(args.edge_listen.port())),
    };
    let url = urls.url(&urls.hostname(&name));
    if !args.no_wait {
        wait_running(&db, &name, &sha, args.timeout).await?;
    }
    println!("{url}/");
    Ok(())
}

/// A repository name from a folder's name: what GitHub would keep of it.
fn repo_name(dir: &Path) -> anyhow::Result<String> {
    let base = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let name: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' }).collect();
    let name = name.trim_matches(['-', '.']).to_string();
    if name.is_empty() {
        bail!("{} makes no repository name: give one with --repo", dir.display());
    }
    Ok(name)
}

/// The bare repository the controller clones `owner/repo` from.
fn bare_path(git_url: &str, owner: &str, repo: &str) -> anyhow::Result<PathBuf> {
    let url = git_url.replace("{owner}", owner).replace("{repo}", repo);
    match url.strip_prefix("file://") {
        Some(path) if path.starts_with('/') => Ok(PathBuf::from(path)),
        _ => bail!(
            "DEMOFLEET_GIT_URL is {git_url:?}: deploy-local pushes to local bare repositories, so the controller must \
             clone from file:///<folder>/{{owner}}/{{repo}}.git and the agent may fetch from it \
             (DEMOFLEET_GIT_LOCAL_ROOT=<folder>); scripts/up sets both when no GitHub credentials are given"
        ),
    }
}

fn ensure_bare(bare: &Path) -> anyhow::Result<()> {
    if bare.join("HEAD").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(bare).with_context(|| format!("creating {}", bare.display()))?;
    git_out(bare, &["init", "--quiet", "--bare"])?;
    // The agent fetches the one commit it deploys, by its id.
    git_out(bare, &["config", "uploadpack.allowReachableSHA1InWant", "true"])?;
    Ok(())
}

/// The commit that holds `dir` as it is now (see the module's documentation).
fn snapshot(dir: &Path, bare: &Path, previous: Option<&str>) -> anyhow::Result<String> {
    let top = git_out(dir, &["rev-parse", "--show-toplevel"]).ok().map(PathBuf::from);
    let index = tempfile_path(bare);
    let is_top = top.and_then(|t| t.canonicalize().ok()).is_some_and(|t| t == dir);
    if is_top {
        let head = git_out(dir, &["rev-parse", "--verify", "--quiet", "HEAD^{commit}"]).ok();
        let dirty = !git_out(dir, &["status", "--porcelain", "--untracked-files=normal"])?.is_empty();
        if let (Some(head), false) = (&head, dirty) {
            return Ok(head.clone());
        }
        // The work tree as it is, in an index of our own: the person's stays as it is.
        let tree = with_index(&index, || {
            if let Some(head) = &head {
                git_env(dir, &index, &["read-tree", head])?;
            }
            git_env(dir, &index, &["add", "--all", "."])?;
            git_env(dir, &index, &["write-tree"])
        })?;
        if let Some(previous) = same_tree(bare, previous, &tree) {
            return Ok(previous);
        }
        let parent = head.iter().flat_map(|h| ["-p", h.as_str()]).collect::<Vec<_>>();
        return commit_tree(dir, &tree, &parent, "deploy-local: the work tree with changes not committed");
    }
    // Not a repository's top: the folder's files, committed in the bare repository itself.
    let git_dir = format!("--git-dir={}", bare.display());
    let work_tree = format!("--work-tree={}", dir.display());
    let tree = with_index(&index, || {
        git_env(dir, &index, &[&git_dir, &work_tree, "add", "--all"])?;
        git_env(bare, &index, &["write-tree"])
    })?;
    if let Some(previous) = same_tree(bare, previous, &tree) {
        return Ok(previous);
    }
    let parent = previous.iter().flat_map(|p| ["-p", *p]).collect::<Vec<_>>();
    commit_tree(bare, &tree, &parent, &format!("deploy-local: {}", dir.display()))
}

/// The commit deployed before, when it holds `tree` already (nothing changed since).
fn same_tree(bare: &Path, previous: Option<&str>, tree: &str) -> Option<String> {
    let previous = previous?;
    let its_tree = git_out(bare, &["rev-parse", &format!("{previous}^{{tree}}")]).ok()?;
    (its_tree == tree).then(|| previous.to_string())
}

fn tempfile_path(bare: &Path) -> PathBuf {
    bare.join(format!("deploy-local-index-{}", uuid::Uuid::new_v4().simple()))
}

fn with_index<T>(index: &Path, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let result = f();
    let _ = std::fs::remove_file(index);
    result
}

fn commit_tree(repo: &Path, tree: &str, parents: &[&str], message: &str) -> anyhow::Result<String> {
    let mut args = vec!["commit-tree", tree];
    args.extend_from_slice(parents);
    args.extend_from_slice(&["-m", message]);
    let mut command = git(repo, &args);
    for (key, value) in [
        ("GIT_AUTHOR_NAME", "demofleet deploy-local"),
        ("GIT_AUTHOR_EMAIL", "deploy-local@localhost"),
        ("GIT_COMMITTER_NAME", "demofleet deploy-local"),
        ("GIT_COMMITTER_EMAIL", "deploy-local@localhost"),
    ] {
        command.env(key, value);
    }
    output(command, &args)
}

/// Put `sha` on `branch` of the bare repository.
fn push(dir: &Path, bare: &Path, sha: &str, branch: &str) -> anyhow::Result<()> {
    if git_out(bare, &["cat-file", "-e", &format!("{sha}^{{commit}}")]).is_ok() {
        git_out(bare, &["update-ref", branch, sha])?;
        return Ok(());
    }
    let target = bare.to_str().context("the bare repository's path is not text")?;
    git_out(dir, &["push", "--quiet", "--force", target, &format!("{sha}:{branch}")])?;
    Ok(())
}

/// A `pull_request` event as GitHub sends it, with the fields demofleet reads and the few a
/// person looks at.
fn payload(action: &str, pr: u64, owner: &str, repo: &str, sha: &str, dir: &Path) -> serde_json::Value {
    let now =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let user = json!({ "login": owner, "type": "User" });
    let repository = json!({
        "name": repo, "full_name": format!("{owner}/{repo}"), "owner": user, "private": true,
        "html_url": format!("file://{}", dir.display()),
    });
    json!({
        "action": action,
        "number": pr,
        "pull_request": {
            "number": pr,
            "state": "open",
            "title": format!("{} (deployed with deploy-local)", dir.display()),
            "user": user,
            "updated_at": now,
            "draft": false,
            "merged": false,
            "head": { "ref": format!("pr-{pr}"), "sha": sha, "repo": repository },
            "base": { "ref": "main", "repo": repository },
        },
        "repository": repository,
        "sender": user,
    })
}

async fn send(listen: &SocketAddr, secret: &str, body: &[u8]) -> anyhow::Result<()> {
    let mut address = *listen;
    if address.ip().is_unspecified() {
        address.set_ip(if address.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let url = format!("http://{address}/webhook/github");
    let response = reqwest::Client::new()
        .post(&url)
        .header("Content-Type", "application/json")
        .header("User-Agent", "GitHub-Hookshot/demofleet-deploy-local")
        .header("X-GitHub-Event", "pull_request")
        .header("X-GitHub-Delivery", uuid::Uuid::new_v4().to_string())
        .header("X-Hub-Signature-256", demofleet_common::webhook::signature::sign(secret.as_bytes(), body))
        .body(body.to_vec())
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("sending the webhook to {url}"))?;
    let status = response.status();
    let answer = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{url} answered {status}: {answer}");
    }
    let outcome = serde_json::from_str::<serde_json::Value>(&answer).unwrap_or_default();
    match outcome["outcome"].as_str() {
        Some("deploy_queued") => Ok(()),
        _ => bail!("the controller did not queue a deploy: {answer}"),
    }
}

/// Wait until demo `name` runs `sha`; fail when it failed or waits for an approval.
async fn wait_running(db: &sqlx::PgPool, name: &str, sha: &str, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut said = String::new();
    loop {
        let row: Option<(String, String, Option<String>)> =
            sqlx::query_as("select state, sha, error from demos where name = $1").bind(name).fetch_optional(db).await?;
        if let Some((state, deployed, error)) = row {
            if deployed == sha {
                match state.as_str() {
                    "running" | "sleeping" => return Ok(()),
                    "failed" => bail!("{name} failed: {}", error.unwrap_or_default()),
                    "awaiting_approval" => bail!(
                        "{name} waits for an approval: its author {:?} is not trusted (DEMOFLEET_TRUSTED_AUTHORS)",
                        LOCAL_OWNER
                    ),
                    _ => {}
                }
            }
            if state != said {
                eprintln!("{name}: {state}");
                said = state;
            }
        }
        if start.elapsed() > timeout {
            bail!("{name} did not run commit {sha} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn git(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("git");
    command.args(args).current_dir(dir).env("GIT_TERMINAL_PROMPT", "0");
    command
}

fn git_out(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    output(git(dir, args), args)
}

fn git_env(dir: &Path, index: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut command = git(dir, args);
    command.env("GIT_INDEX_FILE", index);
    output(command, args)
}

fn output(mut command: Command, args: &[&str]) -> anyhow::Result<String> {
    let output = command.output().context("running git")?;
    if !output.status.success() {
        bail!("git {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_and_bare_paths() {
        assert_eq!(repo_name(Path::new("/src/My App!")).unwrap(), "My-App");
        assert_eq!(repo_name(Path::new("/src/web-app")).unwrap(), "web-app");
        assert!(repo_name(Path::new("/")).is_err());
        let bare = bare_path("file:///var/git/{owner}/{repo}.git", "local", "web-app").unwrap();
        assert_eq!(bare, Path::new("/var/git/local/web-app.git"));
        let refused = bare_path("https://github.com/{owner}/{repo}.git", "local", "x").unwrap_err();
        assert!(refused.to_string().contains("DEMOFLEET_GIT_LOCAL_ROOT"), "{refused}");
    }

    #[test]
    fn the_payload_reads_as_a_pull_request_event() {
        let sha = "a".repeat(40);
        let value = payload("opened", 3, "local", "web-app", &sha, Path::new("/src/web-app"));
        let event: demofleet_common::webhook::event::PullRequestEvent =
            demofleet_common::webhook::event::parse(&serde_json::to_vec(&value).unwrap()).unwrap();
        assert_eq!((event.number, event.pull_request.head.sha.as_str()), (3, sha.as_str()));
        assert_eq!(event.repository.owner.login, "local");
        assert!(event.pull_request.updated_at.is_some());
    }
}
