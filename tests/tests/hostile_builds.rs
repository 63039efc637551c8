//! Hostile repositories against the real controller, agent and Docker: paths that leave the
//! clone through symlinks, Dockerfiles that reach for another demo's image, builds that
//! never end, eat memory or send the world as their context, a host short of disk, and
//! demos that try to be root or flood their logs. Each is refused or contained with a
//! reason the demo's error shows, and the demos already running keep running.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use demofleet_tests::command;
use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;

const DEADLINE: Duration = Duration::from_secs(180);

fn docker(args: &[&str]) -> String {
    let out = command::output(Command::new("docker").args(args), command::DOCKER).expect("docker runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn files<'a>(list: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    list.iter().map(|(p, c)| (*p, c.as_str())).collect()
}

/// A fixture repository of its own, named `<prefix>-<random>`.
fn repo(stack: &Stack, prefix: &str) -> FixtureRepo {
    let name = format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..8]);
    FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &name)
}

/// Open pull request 2 of `repo` at `sha`; its demo's name.
async fn open(stack: &Stack, repo: &FixtureRepo, sha: &str) -> String {
    let (_, response) =
        stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", repo, sha)).await;
    assert_eq!(response.status(), 202);
    format!("{}-fixture-owner-pr-2", repo.repo)
}

/// Wait for the demo to fail; its error, after checking the failing step was not retried.
async fn failure(stack: &Stack, name: &str) -> String {
    let demo = stack.wait_for_state(name, "failed", DEADLINE).await;
    let detail = stack.get_json(&format!("/api/demos/{}", demo["id"].as_str().unwrap())).await;
    let steps = detail["chains"][0]["steps"].as_array().unwrap();
    let failed: Vec<&Value> = steps.iter().filter(|s| s["status"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{name}: {steps:?}");
    assert_eq!(failed[0]["attempts"], 1, "{name}: refused at once, not retried");
    demo["error"].as_str().unwrap().to_string()
}

/// A demo that keeps running through the test, and its page.
async fn bystander(stack: &Stack) -> (String, String) {
    let repo = repo(stack, "bystander");
    let marker = format!("bystander-{}", Uuid::new_v4().simple());
    let sha = repo.commit("site", &files(&fixtures::static_site(&stack.services.base_image, &marker)));
    let name = open(stack, &repo, &sha).await;
    stack.wait_for_state(&name, "running", DEADLINE).await;
    (name, marker)
}

async fn still_serves(stack: &Stack, (name, marker): &(String, String)) {
    let (status, page) = stack.edge_get(&format!("{name}.localhost"), "/").await;
    assert_eq!((status, page.contains(marker.as_str())), (200, true), "{name} still answers: {page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_leaving_the_clone_are_refused_naming_the_path() {
    let stack = Stack::start(StackOptions::default()).await;
    let bystander = bystander(&stack).await;
    let secret = stack.scratch.path().join("agent-secret.toml");
    std::fs::write(&secret, "amqp_password = \"hunter2\"\n").unwrap();
    let site = fixtures::static_site(&stack.services.base_image, "never");

    let ctx = repo(&stack, "ctx");
    ctx.symlink("ctx", "..");
    let mut with_toml = site.clone();
    with_toml.push((".demofleet.toml", "context = \"ctx\"\n".into()));
    let ctx_name = open(&stack, &ctx, &ctx.commit("ctx -> ..", &files(&with_toml))).await;

    let toml = repo(&stack, "toml");
    toml.symlink(".demofleet.toml", secret.to_str().unwrap());
    let toml_name = open(&stack, &toml, &toml.commit("linked config", &files(&site))).await;

    let dockerfile = repo(&stack, "dockerfile");
    dockerfile.symlink("Dockerfile", "../../../../../../../../etc/hostname");
    let dockerfile_name =
        open(&stack, &dockerfile, &dockerfile.commit("linked Dockerfile", &[("index.html", "x")])).await;

    let dots = repo(&stack, "dots");
    let mut with_dots = site.clone();
    with_dots.push((".demofleet.toml", "dockerfile = \"../Dockerfile\"\n".into()));
    let dots_name = open(&stack, &dots, &dots.commit("..", &files(&with_dots))).await;

    for (name, expected) in [
        (&ctx_name, "build failed: \"ctx\" leads outside the repository"),
        (&toml_name, "build failed: \".demofleet.toml\" leads outside the repository"),
        (&dockerfile_name, "build failed: \"Dockerfile\" leads outside the repository"),
        (&dots_name, "build failed: .demofleet.toml: `dockerfile` \"../Dockerfile\" must be a relative path inside the build context"),
    ] {
        let error = failure(&stack, name).await;
        assert!(error.starts_with(expected), "{name}: {error}");
        assert!(!error.contains("hunter2"), "{name}: nothing of the file outside is shown: {error}");
        assert_eq!(docker(&["images", "-q", &format!("demofleet/{name}")]), "", "{name}: nothing built");
    }
    still_serves(&stack, &bystander).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dockerfile_cannot_reach_another_demo_s_image() {
    let options = StackOptions { controller_args: vec!["--retry-delays".into(), "100ms".into()], ..Default::default() };
    let stack = Stack::start(options).await;
    let victim = bystander(&stack).await;
    // Its image's tag carries a token no Dockerfile can know.
    let tags = docker(&["images", "--format", "{{.Tag}}", &format!("demofleet/{}", victim.0)]);
    let token = tags.strip_prefix("g1-").unwrap_or_else(|| panic!("one tag g1-<token>: {tags:?}"));
    assert!(token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()), "{tags}");
    let base = &stack.services.base_image;
    let guess = format!("demofleet/{}:g1", victim.0);
    let steal = |dockerfile: String| vec![("Dockerfile", dockerfile), ("index.html", "thief".to_string())];
    let cases = [
        ("from", steal(format!("FROM {guess}\nEXPOSE 8080\n")), format!("line 1: `FROM {guess}` names the demo image")),
        (
            "copy",
            steal(format!("FROM {base}\nCOPY --from={guess} /www/index.html /www/index.html\n")),
            format!("line 2: `COPY --from={guess} /www/index.html /www/index.html` names the demo image"),
        ),
        // Hidden from the reading of the Dockerfile, and still nothing to find: the tag is not `g1`.
        ("arg", steal(format!("ARG VICTIM={guess}\nFROM $VICTIM\nEXPOSE 8080\n")), "docker build failed".to_string()),
    ];
    for (prefix, dockerfile, expected) in cases {
        let thief = repo(&stack, prefix);
        let name = open(&stack, &thief, &thief.commit("steal", &files(&dockerfile))).await;
        let demo = stack.wait_for_state(&name, "failed", DEADLINE).await;
        let error = demo["error"].as_str().unwrap();
        assert!(error.starts_with("build failed: ") && error.contains(&expected), "{name}: {error}");
        assert_eq!(docker(&["images", "-q", &format!("demofleet/{name}")]), "", "{name}: nothing built");
    }
    still_serves(&stack, &victim).await;
    stack.stop().await;
}

/// A CGI script reporting who the demo runs as and what it may do.
const WHOAMI: &str = "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho uid=$(id -u)\n\
                      grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status\n";

/// The site of a demo `tag` (in a build step of its own, so that no build reuses another's).
fn whoami_site(base: &str, tag: &str, user_lines: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "Dockerfile",
            format!(
                "FROM {base}\nCOPY whoami.cgi /www/cgi-bin/whoami\nRUN chmod 755 /www/cgi-bin/whoami && echo hi > /www/index.html \
                 && ip route > /www/build-route && echo {tag}\n\
                 {user_lines}EXPOSE 8080\nCMD [\"sh\", \"-c\", \"head -c 3000000 /dev/zero | tr '\\\\0' x | fold -w 100; \
                 exec httpd -f -p 8080 -h /www\"]\n"
            ),
        ),
        ("whoami.cgi", WHOAMI.to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_containers_run_unprivileged_with_bounded_logs() {
    let options = StackOptions {
        agent_args: ["--demo-log-max-size", "200k", "--demo-log-files", "2"].map(String::from).to_vec(),
        ..Default::default()
    };
    let stack = Stack::start(options).await;
    let base = &stack.services.base_image;
    let cases = [
        ("rootimage", String::new(), "65534"),
        // A name the image's own /etc/passwd makes root: root in disguise, run as nobody.
        ("disguised", "RUN echo 'app:x:0:0:app:/:/bin/sh' >> /etc/passwd\nUSER app\n".to_string(), "65534"),
        ("ownuser", "USER 1234:1234\n".to_string(), "1234"),
    ];
    for (prefix, user_lines, uid) in cases {
        let repo = repo(&stack, prefix);
        let name =
            open(&stack, &repo, &repo.commit("whoami", &files(&whoami_site(base, &repo.repo, &user_lines)))).await;
        stack.wait_for_state(&name, "running", DEADLINE).await;
        let (status, body) = stack.edge_get(&format!("{name}.localhost"), "/cgi-bin/whoami").await;
        assert_eq!(status, 200, "{name}: {body}");
        for line in [
            format!("uid={uid}"),
            "CapEff:\t0000000000000000".into(),
            "CapBnd:\t0000000000000000".into(),
            "NoNewPrivs:\t1".into(),
        ] {
            assert!(body.lines().any(|l| l == line), "{name}: {line:?} missing from\n{body}");
        }
        // Its build ran on its own network, not on Docker's default one.
        let gateway = docker(&[
            "network",
            "inspect",
            "--format",
            "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
            &format!("demofleet-{name}"),
        ]);
        let (_, route) = stack.edge_get(&format!("{name}.localhost"), "/build-route").await;
        assert!(
            !gateway.is_empty() && route.starts_with(&format!("default via {gateway} ")),
            "{name}: {route} / {gateway}"
        );
        let container = format!("demofleet-{name}-g1");
        let inspect = |format: &str| docker(&["inspect", "--format", format, &container]);
        assert_eq!(inspect("{{.HostConfig.CapDrop}} {{.HostConfig.SecurityOpt}}"), "[ALL] [no-new-privileges]");
        assert_eq!(
            inspect("{{.HostConfig.LogConfig.Type}} {{index .HostConfig.LogConfig.Config \"max-size\"}}"),
            "json-file 200k"
        );
        // Its 3 MB of output at start are kept to two files of 200 kB.
        let log = inspect("{{.LogPath}}");
        let kept: u64 = [log.clone(), format!("{log}.1"), format!("{log}.2")]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        assert!(kept <= 2 * 210_000, "{name}: {kept} bytes of logs kept");
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_are_bounded_in_time_memory_and_context() {
    let options = StackOptions {
        agent_args: ["--build-timeout", "20s", "--build-memory-mb", "64", "--build-context-mb", "1"]
            .map(String::from)
            .to_vec(),
        controller_args: vec!["--retry-delays".into(), "100ms".into()],
        ..Default::default()
    };
    let stack = Stack::start(options).await;
    let bystander = bystander(&stack).await;
    let base = &stack.services.base_image;
    let marker = format!("endless-{}", Uuid::new_v4().simple());
    let big: String =
        (0..2_000_000u32).map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26)).collect();
    let cases = [
        (
            "endless",
            vec![("Dockerfile", format!("FROM {base}\nRUN sleep 600 && echo {marker}\n"))],
            "the build took longer than 20s",
        ),
        (
            "greedy",
            vec![("Dockerfile", format!("FROM {base}\nRUN dd if=/dev/zero of=/dev/null bs=200M count=1\n"))],
            "returned a non-zero code: 137",
        ),
        (
            "huge",
            vec![("Dockerfile", format!("FROM {base}\nCOPY big /big\n")), ("big", big)],
            "the build context is over 1 MiB",
        ),
    ];
    let mut names = Vec::new();
    for (prefix, list, expected) in cases {
        let repo = repo(&stack, prefix);
        names.push((open(&stack, &repo, &repo.commit(prefix, &files(&list))).await, expected));
    }
    for (name, expected) in names {
        let demo = stack.wait_for_state(&name, "failed", DEADLINE).await;
        let error = demo["error"].as_str().unwrap();
        assert!(error.starts_with("build failed: ") && error.contains(expected), "{name}: {error}");
        assert_eq!(docker(&["images", "-q", &format!("demofleet/{name}")]), "", "{name}: nothing built");
    }
    // The endless build's container was stopped with it.
    wait::until_seen("the endless build's container to go", Duration::from_secs(60), || async {
        let commands = docker(&["ps", "-a", "--no-trunc", "--format", "{{.Command}}"]);
        if commands.contains(&marker) {
            Err(commands)
        } else {
            Ok(())
        }
    })
    .await;
    still_serves(&stack, &bystander).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_fetched_or_built_on_a_host_short_of_disk() {
    let options = StackOptions {
        agent_args: vec!["--build-min-free-disk-mb".into(), (u64::MAX / (1 << 21)).to_string()],
        controller_args: vec!["--retry-delays".into(), "100ms".into()],
        ..Default::default()
    };
    let stack = Stack::start(options).await;
    let repo = repo(&stack, "disk");
    let sha = repo.commit("site", &files(&fixtures::static_site(&stack.services.base_image, "never")));
    let name = open(&stack, &repo, &sha).await;
    let demo = stack.wait_for_state(&name, "failed", DEADLINE).await;
    let error = demo["error"].as_str().unwrap();
    assert!(
        error.starts_with("checkout failed: only ") && error.contains("(DEMOFLEET_BUILD_MIN_FREE_DISK_MB)"),
        "{error}"
    );
    assert!(!stack.agents[0].demo_dir.join(&name).exists(), "nothing fetched");
    stack.stop().await;
}
