//! The legacy `./run` mode of the service demofleet replaces: the repository's own
//! executable `./run serve --detach --port P` starts the demo's container, and demofleet
//! hands it the labels, name, network, limits and environment it must carry in
//! `CANONICAL_WEBTEAM_RUN_SERVE_DOCKER_OPTS` (whitespace-separated `docker run` options).
//!
//! The script runs on the host as the agent's user, so only commits an authorized author
//! pushed (or someone approved) ever get here; it gets a cleared environment (none of the
//! agent's credentials), and the container must still come out under our name and labels,
//! or the step fails.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use bollard::Docker;
use tokio::io::{AsyncBufReadExt, BufReader};

use demofleet_common::labels;
use demofleet_common::wire::DemoSpec;

use crate::config::Config;
use crate::docker::{self, container_name};
use crate::AgentContext;

/// The variable the `./run` script reads its extra `docker run` options from.
pub const OPTS_VARIABLE: &str = "CANONICAL_WEBTEAM_RUN_SERVE_DOCKER_OPTS";

/// The `docker run` options for `spec`'s container, serving on `port`.
pub fn docker_opts(
    config: &Config,
    host_id: &str,
    spec: &DemoSpec,
    port: u16,
    network: &str,
) -> anyhow::Result<String> {
    let mut opts = vec![
        format!("--name={}", container_name(spec)),
        format!("--network={network}"),
        format!("--memory={}m", config.demo_memory_mb),
        format!("--cpus={}", config.demo_cpus),
        format!("--pids-limit={}", config.demo_pids),
        "--restart=unless-stopped".to_string(),
        "--security-opt=no-new-privileges".to_string(),
        "--cap-drop=ALL".to_string(),
        "--log-driver=json-file".to_string(),
        format!("--log-opt=max-size={}", config.demo_log_max_size),
        format!("--log-opt=max-file={}", config.demo_log_files),
    ];
    let mut labels: Vec<(String, String)> = labels::demo_labels(spec, host_id, port).into_iter().collect();
    labels.sort();
    opts.extend(labels.into_iter().map(|(k, v)| format!("--label={k}={v}")));
    let mut env = docker::demo_env(spec, port);
    env.extend(config.demo_opts());
    opts.extend(env.into_iter().map(|e| format!("--env={e}")));
    if let Some(bad) = opts.iter().find(|o| o.contains(char::is_whitespace)) {
        anyhow::bail!("{OPTS_VARIABLE} is split on whitespace, and this option has some: {bad:?}");
    }
    Ok(opts.join(" "))
}

/// Start `spec`'s container with the clone's `./run` (unless it exists), and return its
/// id and the port it answers on.
pub async fn launch(ctx: &AgentContext, spec: &DemoSpec, dir: &Path) -> anyhow::Result<(String, u16)> {
    let name = container_name(spec);
    if ctx.docker.inspect_container(&name, None).await.is_err() {
        let port = free_port(ctx.config.publish_address())?;
        let network = docker::ensure_network(&ctx.docker, &ctx.config, &ctx.host_id, spec).await?;
        let opts = docker_opts(&ctx.config, &ctx.host_id, spec, port, &network)?;
        ctx.log(spec, "launch", &format!("./run serve --detach --port {port}"));
        run_script(ctx, spec, dir, port, &opts).await?;
    }
    ctx.docker.start_container(&name, None).await.or_else(docker::already_started)?;
    ours(&ctx.docker, spec).await
}

/// A port nobody listens on at `address` now.
fn free_port(address: &str) -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind((address, 0)).with_context(|| format!("finding a free port on {address}"))?;
    Ok(listener.local_addr()?.port())
}

async fn run_script(ctx: &AgentContext, spec: &DemoSpec, dir: &Path, port: u16, opts: &str) -> anyhow::Result<()> {
    // Nothing of the agent's environment (broker and NATS URLs with passwords, tokens):
    // only where programs are, the engine to talk to, and what the script needs.
    let mut command = tokio::process::Command::new(dir.join("run"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .env("HOME", dir);
    // The script's `docker` runs against this host's engine, as the agent's own calls do.
    if let Some(host) = &ctx.config.docker_host {
        let host = if host.contains("://") { host.clone() } else { format!("unix://{host}") };
        command.env("DOCKER_HOST", host);
    } else if let Some(host) = std::env::var_os("DOCKER_HOST") {
        command.env("DOCKER_HOST", host);
    }
    let mut child = command
        .args(["serve", "--detach", "--port", &port.to_string()])
        .current_dir(dir)
        .env(OPTS_VARIABLE, opts)
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting ./run")?;
    let (stdout, stderr) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let mut lines =
        futures::stream::select(tokio_stream_lines(BufReader::new(stdout)), tokio_stream_lines(BufReader::new(stderr)));
    let mut tail: Vec<String> = Vec::new();
    let finished = tokio::time::timeout(ctx.config.health_timeout.max(Duration::from_secs(600)), async {
        use futures::StreamExt;
        while let Some(line) = lines.next().await {
            ctx.log(spec, "launch", &line);
            tail.push(line);
            if tail.len() > 20 {
                tail.remove(0);
            }
        }
        child.wait().await
    })
    .await;
    let status = match finished {
        Ok(status) => status.context("waiting for ./run")?,
        Err(_) => anyhow::bail!("./run serve did not finish in time"),
    };
    anyhow::ensure!(status.success(), "./run serve failed ({status}):\n{}", tail.join("\n"));
    Ok(())
}

fn tokio_stream_lines<R: tokio::io::AsyncBufRead + Unpin + Send + 'static>(
    reader: R,
) -> impl futures::Stream<Item = String> + Send + Unpin {
    Box::pin(futures::stream::unfold(reader.lines(), |mut lines| async move {
        lines.next_line().await.ok().flatten().map(|line| (line, lines))
    }))
}

/// The container `./run` started: it must carry our name and this generation's labels.
async fn ours(docker: &Docker, spec: &DemoSpec) -> anyhow::Result<(String, u16)> {
    let name = container_name(spec);
    let inspected = docker
        .inspect_container(&name, None)
        .await
        .with_context(|| format!("./run did not start a container named {name} (from {OPTS_VARIABLE})"))?;
    let labels = inspected.config.as_ref().and_then(|c| c.labels.as_ref());
    let label = |key: &str| labels.and_then(|l| l.get(key)).cloned().unwrap_or_default();
    anyhow::ensure!(
        label(labels::ID) == spec.id.to_string() && label(labels::GENERATION) == spec.generation.to_string(),
        "the container {name} lacks the labels passed in {OPTS_VARIABLE}"
    );
    let port = docker::host_port_of(&inspected)
        .with_context(|| format!("./run started {name} without publishing its port on the host"))?;
    Ok((inspected.id.unwrap_or(name), port))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use clap::Parser;

    /// A demo spec as the controller sends it, for the agent's unit tests.
    pub(crate) fn spec(github_user: &str) -> DemoSpec {
        DemoSpec {
            id: uuid::Uuid::nil(),
            name: "site-owner-pr-1".into(),
            owner: "owner".into(),
            repo: "site".into(),
            pr: 1,
            sha: "a".repeat(40),
            clone_url: "https://github.com/owner/site.git".into(),
            url: "http://site-owner-pr-1.demos.example".into(),
            hostname: "site-owner-pr-1.demos.example".into(),
            github_user: github_user.into(),
            generation: 3,
            legacy_run: false,
            closed_outbound: false,
            env: None,
        }
    }

    #[test]
    fn the_options_carry_name_labels_limits_and_environment() {
        let config = Config::try_parse_from(["demofleet-agent", "--demo-opt", "DEMO_OPT_COLOR=blue"]).unwrap();
        let opts = docker_opts(&config, "host-a", &spec("alice"), 4100, "demofleet-site-owner-pr-1").unwrap();
        for expected in [
            "--name=demofleet-site-owner-pr-1-g3",
            "--network=demofleet-site-owner-pr-1",
            "--label=run.demo=true",
            "--label=run.demo.host=host-a",
            "--label=run.demo.generation=3",
            "--env=PORT=4100",
            "--env=DEMO_OPT_COLOR=blue",
            "--security-opt=no-new-privileges",
            "--cap-drop=ALL",
            "--log-opt=max-size=10m",
        ] {
            assert!(opts.split(' ').any(|o| o == expected), "{expected} missing from {opts}");
        }
        assert!(!opts.contains("privileged") && !opts.contains("docker.sock"), "{opts}");
    }

    #[test]
    fn an_option_with_whitespace_is_refused() {
        let config =
            Config::try_parse_from(["demofleet-agent", "--demo-opt", "DEMO_OPT_GREETING=hello world"]).unwrap();
        let err = docker_opts(&config, "host-a", &spec("alice"), 4100, "net").unwrap_err();
        assert!(err.to_string().contains("hello world"), "{err}");
    }
}
