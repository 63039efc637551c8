//! Running one step of a chain. Every step is idempotent: run twice, same outcome.

use std::path::PathBuf;
use std::time::Duration;

use demofleet_common::names;
use demofleet_common::secret::Secret;
use demofleet_common::wire::{DemoSpec, Step, StepOutcome, StepOutput};

use crate::demo_config::{self, PlanError};
use crate::{docker, git, legacy, AgentContext};

/// Run `step` for `spec` and say how it went.
#[tracing::instrument(skip_all, fields(demo = %spec.name, step = step.as_str(), generation = spec.generation))]
pub async fn run(ctx: &AgentContext, step: Step, spec: &DemoSpec) -> StepOutcome {
    match run_inner(ctx, step, spec).await {
        Ok(output) => StepOutcome::Succeeded(output),
        Err(err) => {
            let error = format!("{err:#}");
            let retryable = !is_permanent(&err);
            tracing::warn!(%error, retryable, "step failed");
            ctx.log(spec, &format!("{} failed: {error}", step.as_str()));
            StepOutcome::Failed { error, retryable }
        }
    }
}

async fn run_inner(ctx: &AgentContext, step: Step, spec: &DemoSpec) -> anyhow::Result<StepOutput> {
    let dir = clone_dir(ctx, spec)?;
    let mut output = StepOutput::default();
    match step {
        Step::Checkout => {
            ctx.log(spec, &format!("checking out {}", spec.sha));
            let token = git_token(ctx).await?;
            git::checkout(&dir, &spec.clone_url, &spec.sha, token.as_ref()).await?;
        }
        Step::Build => {
            let plan = demo_config::plan(&dir, &ctx.config)?;
            if plan.legacy_run {
                ctx.log(spec, "legacy ./run mode: ./run serve builds and starts the container at launch");
                return Ok(output);
            }
            // The demo's network is made meanwhile, so that launch finds it ready; if that
            // fails, launch tries again and reports it.
            let (image, network) = tokio::join!(
                docker::build(&ctx.docker, spec, &plan, |line| ctx.log(spec, line)),
                docker::ensure_network(&ctx.docker, &ctx.config, spec),
            );
            if let Err(err) = network {
                tracing::debug!(error = %err, "making the demo's network during the build failed");
            }
            output.image = Some(image?);
        }
        Step::Launch => {
            // Beside the running generation, if any: it keeps serving until this one is healthy.
            let plan = demo_config::plan(&dir, &ctx.config)?;
            let (container, port) = if plan.legacy_run {
                legacy::launch(ctx, spec, &dir).await?
            } else {
                docker::launch(&ctx.docker, &ctx.config, &ctx.host_id, spec, &plan).await?
            };
            ctx.log(spec, &format!("container {container} answers on {}:{port}", ctx.config.host_address));
            ctx.follow_container(spec, 0);
            output.container_id = Some(container);
            output.host_port = Some(port);
        }
        Step::Health => {
            let plan = demo_config::plan(&dir, &ctx.config)?;
            let port = docker::published_port(&ctx.docker, spec).await?;
            wait_healthy(ctx, spec, port, &plan.health_path).await?;
            output.host_port = Some(port);
        }
        Step::Retire => docker::retire_older(&ctx.docker, spec).await?,
        Step::Stop => {
            docker::remove_demo(&ctx.docker, spec).await?;
            match tokio::fs::remove_dir_all(&dir).await {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err.into()),
                _ => {}
            }
        }
        Step::Sleep => {
            docker::sleep(&ctx.docker, spec).await?;
            ctx.log(spec, "no requests for a while: the container sleeps until the next visit");
        }
        Step::Wake => {
            // Its output from now on: what it printed before it slept was sent then.
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            docker::wake(&ctx.docker, spec).await?;
            ctx.log(spec, "a visit woke the container");
            ctx.follow_container(spec, i32::try_from(now.as_secs()).unwrap_or(0));
        }
        Step::Authorize | Step::Route | Step::Unroute => anyhow::bail!("{} is a controller step", step.as_str()),
    }
    Ok(output)
}

/// The token in `DEMOFLEET_GIT_TOKEN_FILE`, read now so a rotated one is used at once.
async fn git_token(ctx: &AgentContext) -> anyhow::Result<Option<Secret>> {
    let Some(path) = &ctx.config.git_token_file else { return Ok(None) };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|err| anyhow::anyhow!("reading DEMOFLEET_GIT_TOKEN_FILE {}: {err}", path.display()))?;
    Ok(Some(Secret::new(text.trim())))
}

/// Failures that trying again cannot mend.
fn is_permanent(err: &anyhow::Error) -> bool {
    matches!(err.downcast_ref::<PlanError>(), Some(PlanError::NothingToBuild | PlanError::Invalid(_)))
        || err.downcast_ref::<UnsafeName>().is_some()
        || matches!(err.downcast_ref::<docker::DockerError>(), Some(docker::DockerError::Gone(_)))
}

#[derive(Debug, thiserror::Error)]
#[error("refusing unsafe demo name {0:?}")]
struct UnsafeName(String);

/// `DEMO_DIR/<name>`, for a name that is a safe folder name and nothing else.
fn clone_dir(ctx: &AgentContext, spec: &DemoSpec) -> anyhow::Result<PathBuf> {
    if !names::is_valid_name(&spec.name) {
        return Err(UnsafeName(spec.name.clone()).into());
    }
    Ok(ctx.config.demo_dir.join(&spec.name))
}

/// Wait for a 2xx or 3xx answer on the health path until the health deadline.
async fn wait_healthy(ctx: &AgentContext, spec: &DemoSpec, port: u16, path: &str) -> anyhow::Result<()> {
    let url = format!("http://{}:{port}{path}", ctx.config.host_address);
    let deadline = tokio::time::Instant::now() + ctx.config.health_timeout;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut last = String::from("no answer");
    // Most demos answer within milliseconds of starting: ask again soon, then less often.
    let mut pause = Duration::from_millis(10);
    while tokio::time::Instant::now() < deadline {
        match client.get(&url).send().await {
            Ok(response) if response.status().is_success() || response.status().is_redirection() => return Ok(()),
            Ok(response) => last = format!("answered {}", response.status()),
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
    let logs = docker::log_tail(&ctx.docker, spec, 20).await;
    anyhow::bail!(
        "no 2xx/3xx answer on {url} within {:?} (last: {last}); container output:\n{logs}",
        ctx.config.health_timeout
    )
}
