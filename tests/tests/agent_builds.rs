//! What the agent builds and how it runs it: `.demofleet.toml` (Dockerfile path, build
//! arguments, port, environment, health path, limits), host variables passed into every
//! demo, a network of its own (a /28 of the host's pool), never privileged; hostile files refused with a reason; a
//! teardown that removes exactly the demo's container, image, network and folder; and the
//! legacy `./run serve` mode.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use demofleet_tests::command;
use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::stack::{Stack, StackOptions};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(120);

fn docker(args: &[&str]) -> String {
    let out = command::output(Command::new("docker").args(args), command::DOCKER).expect("docker runs");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn commit(repo: &FixtureRepo, files: &[(&str, String)]) -> String {
    repo.commit("demo", &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demofleet_toml_decides_the_build_and_the_run_and_teardown_is_exact() {
    let options = StackOptions {
        agent_args: vec![
            "--demo-opt".into(),
            "DEMO_OPT_COLOR=blue".into(),
            "--demo-subnets".into(),
            "10.213.0.0/16".into(),
        ],
        ..Default::default()
    };
    let stack = Stack::start(options).await;
    let agent = &stack.agents[0];
    let repo_name = format!("toml-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let base = &stack.services.base_image;
    let files = vec![
        (
            ".demofleet.toml",
            "dockerfile = \"deploy/Containerfile\"\nport = 9000\nhealth_path = \"/health.html\"\n\
             [build_args]\nMARKER = \"built-with-args\"\n[env]\nGREETING = \"hi\"\n[limits]\nmemory_mb = 64\npids = 64\n"
                .to_string(),
        ),
        (
            "deploy/Containerfile",
            format!(
                "FROM {base}\nARG MARKER\nCOPY env.cgi /www/cgi-bin/env\nRUN chmod 755 /www/cgi-bin/env && \
                 echo \"<h1>$MARKER</h1>\" > /www/index.html && echo ok > /www/health.html\n\
                 CMD [\"httpd\", \"-f\", \"-p\", \"9000\", \"-h\", \"/www\"]\n"
            ),
        ),
        ("env.cgi", "#!/bin/sh\necho 'Content-Type: text/plain'\necho\nenv\n".to_string()),
    ];
    let sha = commit(&repo, &files);
    let name = format!("{repo_name}-fixture-owner-pr-2");
    stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    let demo = stack.wait_for_state(&name, "running", DEADLINE).await;
    let host = format!("{name}.localhost");
    let (status, page) = stack.edge_get(&host, "/").await;
    assert_eq!((status, page.contains("built-with-args")), (200, true), "{page}");
    let (_, env) = stack.edge_get(&host, "/cgi-bin/env").await;
    for line in ["GREETING=hi", "DEMO_OPT_COLOR=blue", "PORT=9000", &format!("DEMO_SHA={sha}")] {
        assert!(env.lines().any(|l| l == line), "missing {line} in\n{env}");
    }

    let container = format!("demofleet-{name}-g1");
    let inspect = |format: &str| docker(&["inspect", "--format", format, &container]);
    assert_eq!(inspect("{{.HostConfig.Memory}}"), (64u64 * 1024 * 1024).to_string());
    assert_eq!(inspect("{{.HostConfig.PidsLimit}}"), "64");
    assert_eq!(inspect("{{.HostConfig.Privileged}}"), "false");
    assert_eq!(inspect("{{.HostConfig.NetworkMode}}"), format!("demofleet-{name}"));
    let subnet = docker(&[
        "network",
        "inspect",
        "--format",
        "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
        &format!("demofleet-{name}"),
    ]);
    assert!(subnet.starts_with("10.213.") && subnet.ends_with("/28"), "a /28 of DEMOFLEET_DEMO_SUBNETS: {subnet}");
    assert_eq!(inspect("{{len .Mounts}}"), "0", "no host paths, no Docker socket");
    assert_eq!(inspect("{{.HostConfig.RestartPolicy.Name}}"), "unless-stopped");

    // Things that are not the demo's: another demo's container, an image and a folder.
    let decoy_id = Uuid::new_v4().to_string();
    let decoy = format!("decoy-{}", &decoy_id[..8]);
    docker(&[
        "run",
        "-d",
        "--name",
        &decoy,
        "--label",
        "run.demo=true",
        "--label",
        &format!("run.demo.id={decoy_id}"),
        base,
        "sleep",
        "600",
    ]);
    let decoy_image = format!("demofleet/decoy-{}:g1", &decoy_id[..8]);
    docker(&["tag", base, &decoy_image]);
    let decoy_dir = agent.demo_dir.join("another-demo-pr-1");
    std::fs::create_dir_all(&decoy_dir).unwrap();

    stack.deliver("pull_request", &fixtures::pull_request("pull_request.closed.json", &repo, &sha)).await;
    stack.wait_for_state(&name, "stopped", DEADLINE).await;
    let demo_id = demo["id"].as_str().unwrap();
    assert_eq!(docker(&["ps", "-aq", "--filter", &format!("label=run.demo.id={demo_id}")]), "");
    assert_eq!(docker(&["images", "-q", "--filter", &format!("reference=demofleet/{name}")]), "");
    assert_eq!(docker(&["network", "ls", "-q", "--filter", &format!("name=^demofleet-{name}$")]), "");
    assert!(!agent.demo_dir.join(&name).exists());
    // ...and everything else survives.
    assert_eq!(docker(&["inspect", "--format", "{{.State.Running}}", &decoy]), "true");
    assert!(!docker(&["images", "-q", &decoy_image]).is_empty());
    assert!(decoy_dir.is_dir());
    docker(&["rm", "-f", &decoy]);
    docker(&["rmi", &decoy_image]);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_demofleet_toml_is_refused_with_its_reason() {
    let stack = Stack::start(StackOptions::default()).await;
    let repo_name = format!("evil-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let mut files = fixtures::static_site(&stack.services.base_image, "never");
    files.push((".demofleet.toml", "privileged = true\n".into()));
    let sha = commit(&repo, &files);
    let name = format!("{repo_name}-fixture-owner-pr-2");
    stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    let demo = stack.wait_for_state(&name, "failed", DEADLINE).await;
    let error = demo["error"].as_str().unwrap();
    assert!(error.starts_with("build failed: .demofleet.toml: unknown field `privileged`"), "{error}");
    let detail = stack.get_json(&format!("/api/demos/{}", demo["id"].as_str().unwrap())).await;
    let steps: HashMap<String, serde_json::Value> = detail["chains"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s.clone()))
        .collect();
    assert_eq!(steps["build"]["attempts"], 1, "refused at once, not retried");
    assert_eq!(steps["launch"]["status"], "pending", "nothing was run");
    stack.stop().await;
}

/// A stand-in for the canonical-webteam `./run`: `serve --detach --port P` runs the site in
/// a container with the options it is handed, publishing P.
fn legacy_run(base_image: &str) -> String {
    format!(
        r#"#!/bin/sh
set -eu
[ "$1 $2 $3" = "serve --detach --port" ] || {{ echo "usage: ./run serve --detach --port PORT" >&2; exit 2; }}
port=$4
env > "$HOME/run-env"
echo "legacy run serving on $port"
docker run -d $CANONICAL_WEBTEAM_RUN_SERVE_DOCKER_OPTS -p 127.0.0.1:$port:$port {base_image} \
    sh -c "mkdir -p /w && echo legacy-run-says-\$DEMO_PR > /w/index.html && exec httpd -f -p $port -h /w"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_run_script_serves_the_demo_with_our_labels() {
    let stack = Stack::start(StackOptions::default()).await;
    let repo_name = format!("legacy-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let sha = commit(&repo, &[("run", legacy_run(&stack.services.base_image)), ("README", "no Dockerfile".into())]);
    let name = format!("{repo_name}-fixture-owner-pr-2");
    stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    // The script would run on the agent's host: not before an admin enables it.
    let refused = stack.wait_for_state(&name, "failed", DEADLINE).await;
    let error = refused["error"].as_str().unwrap();
    let expected = format!("build failed: the repository has only a legacy ./run, which runs on the agent's host; \
                            an admin must enable it for fixture-owner/{repo_name} first (repository setting legacy_run)");
    assert_eq!(error, expected);
    let run_env = stack.agents[0].demo_dir.join(&name).join("run-env");
    assert!(!run_env.exists(), "the script did not run");
    let put = stack.put_settings("fixture-owner", &repo_name, &serde_json::json!({ "legacy_run": true })).await;
    assert_eq!(put.status(), 200);
    let id = refused["id"].as_str().unwrap();
    assert_eq!(stack.post(&format!("/api/demos/{id}/redeploy")).await.status(), 202);
    let demo = stack.wait_for_state(&name, "running", DEADLINE).await;
    // It ran with nothing of the agent's environment (this process's, with its service URLs).
    let seen = std::fs::read_to_string(&run_env).unwrap();
    let names: Vec<&str> = seen.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
    let allowed = [
        "PATH",
        "HOME",
        "PORT",
        "PWD",
        "SHLVL",
        "CANONICAL_WEBTEAM_RUN_SERVE_DOCKER_OPTS",
        "DOCKER_HOST",
        "OLDPWD",
        "_",
    ];
    assert!(names.iter().all(|n| allowed.contains(n)), "{names:?}");
    assert!(std::env::var("DEMOFLEET_DATABASE_URL").is_ok() && !seen.contains("DEMOFLEET_"), "{seen}");
    let (status, body) = stack.edge_get(&format!("{name}.localhost"), "/").await;
    assert_eq!((status, body.trim()), (200, "legacy-run-says-2"), "the page of ./run's container, with our env");

    let id = demo["id"].as_str().unwrap();
    let container = docker(&["ps", "-q", "--no-trunc", "--filter", &format!("label=run.demo.id={id}")]);
    let labels: HashMap<String, String> =
        serde_json::from_str(&docker(&["inspect", "--format", "{{json .Config.Labels}}", &container])).unwrap();
    assert_eq!(labels["run.demo"], "true");
    assert_eq!(labels["run.demo.host"], stack.agents[0].host_id);
    assert_eq!(labels["run.demo.generation"], demo["generation"].to_string());
    let privileged =
        docker(&["inspect", "--format", "{{.HostConfig.Privileged}} {{.HostConfig.PidsLimit}}", &container]);
    assert_eq!(privileged, "false 256", "never privileged, limited");

    // Closing the pull request removes the container ./run started.
    stack.deliver("pull_request", &fixtures::pull_request("pull_request.closed.json", &repo, &sha)).await;
    stack.wait_for_state(&name, "stopped", DEADLINE).await;
    assert_eq!(docker(&["ps", "-aq", "--filter", &format!("label=run.demo.id={id}")]), "");
    stack.stop().await;
}
