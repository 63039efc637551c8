//! Running one step of a chain. Every step is idempotent: run twice, same outcome.

use std::path::PathBuf;
use std::time::Duration;

use demofleet_common::sealed;
use demofleet_common::secret::Secret;
use demofleet_common::wire::{DemoEnv, DemoSpec, Step, StepOutcome, StepOutput};

use crate::demo_config::{self, Plan, PlanError};
use crate::{docker, git, legacy, services, AgentContext};

/// Run `step` for `spec` and say how it went.
#[tracing::instrument(skip_all, fields(demo = %spec.name, step = step.as_str(), generation = spec.generation))]
pub async fn run(ctx: &AgentContext, step: Step, spec: &DemoSpec) -> StepOutcome {
    match run_inner(ctx, step, spec).await {
        Ok(output) => StepOutcome::Succeeded(output),
        Err(err) => {
            let error = format!("{err:#}");
            let retryable = !is_permanent(&err);
            tracing::warn!(%error, retryable, "step failed");
            ctx.log(spec, step.as_str(), &format!("{} failed: {error}", step.as_str()));
            StepOutcome::Failed { error, retryable }
        }
    }
}

async fn run_inner(ctx: &AgentContext, step: Step, spec: &DemoSpec) -> anyhow::Result<StepOutput> {
    // The worker checked every field of `spec` (crate::validate): `name` is one folder name.
    let dir = ctx.config.demo_dir.join(&spec.name);
    let mut output = StepOutput::default();
    match step {
        Step::Checkout => {
            ensure_free_disk(ctx).await?;
            ctx.log(spec, step.as_str(), &format!("checking out {}", spec.sha));
            let token = git_token(ctx).await?;
            let policy =
                git::Policy { local: ctx.config.git_local_root.is_some(), timeout: ctx.config.checkout_timeout };
            git::checkout(&dir, &spec.clone_url, &spec.sha, token.as_ref(), policy).await?;
        }
        Step::Build => {
            let plan = allowed(demo_config::plan(&dir, &ctx.config)?, spec)?;
            ensure_free_disk(ctx).await?;
            if plan.legacy_run {
                ctx.log(
                    spec,
                    step.as_str(),
                    "legacy ./run mode: ./run serve builds and starts the container at launch",
                );
                return Ok(output);
            }
            output.image = Some(build(ctx, spec, &plan, step).await?);
        }
        Step::Launch => {
            // Beside the running generation, if any: it keeps serving until this one is healthy.
            let plan = allowed(demo_config::plan(&dir, &ctx.config)?, spec)?;
            let (container, port) = if plan.legacy_run {
                legacy::launch(ctx, spec, &dir).await?
            } else {
                let secrets = demo_secrets(ctx, spec)?;
                match launch(ctx, spec, &plan, &secrets).await {
                    // Its image was removed since the build (someone pruned the host's
                    // images): build it again rather than fail every try the same way.
                    Err(docker::DockerError::NoImage(generation)) => {
                        ctx.log(
                            spec,
                            step.as_str(),
                            &format!("no image of generation {generation} on this host any more: building it again"),
                        );
                        tracing::warn!("the image built for this generation is gone; building it again");
                        ensure_free_disk(ctx).await?;
                        build(ctx, spec, &plan, step).await?;
                        launch(ctx, spec, &plan, &secrets).await?
                    }
                    launched => launched?,
                }
            };
            ctx.log(
                spec,
                step.as_str(),
                &format!("container {container} answers on {}:{port}", ctx.config.host_address),
            );
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
        Step::Retire => {
            // Requests the edge sent to an older generation before the route moved finish first.
            tokio::time::sleep(ctx.config.retire_drain).await;
            // A compose demo that keeps its data keeps its data services; when its plan
            // cannot be read, the data stays too (the teardown removes it).
            let keep_data =
                demo_config::plan(&dir, &ctx.config).map_or(true, |p| p.compose.is_some_and(|c| c.keep_data));
            docker::retire_older(&ctx.docker, &ctx.host_id, spec, keep_data).await?
        }
        Step::Stop => {
            docker::remove_demo(&ctx.docker, &ctx.host_id, spec).await?;
            match tokio::fs::remove_dir_all(&dir).await {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err.into()),
                _ => {}
            }
        }
        Step::Sleep => {
            docker::sleep(&ctx.docker, &ctx.host_id, spec).await?;
            ctx.log(spec, step.as_str(), "no requests for a while: the demo sleeps until the next visit");
        }
        Step::Wake => {
            // Its output from now on: what it printed before it slept was sent then.
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let others = docker::wake(&ctx.docker, &ctx.host_id, spec).await?;
            ctx.log(spec, step.as_str(), "a visit woke the demo");
            let since = i32::try_from(now.as_secs()).unwrap_or(0);
            ctx.follow_container(spec, since);
            for (container, service) in others {
                ctx.follow_service(spec, container, &service, since);
            }
        }
        Step::Authorize | Step::Route | Step::Unroute => anyhow::bail!("{} is a controller step", step.as_str()),
    }
    Ok(output)
}

/// Build the demo's image (a compose demo's: its services' images), its output lines
/// logged as `step`'s; the image's tag (a compose demo's: the routed service's).
async fn build(ctx: &AgentContext, spec: &DemoSpec, plan: &Plan, step: Step) -> Result<String, docker::DockerError> {
    // The build's steps run on the demo's own network, fenced like the demo itself
    // (the host's firewall policy matches its bridge), not on Docker's default one.
    let network = docker::ensure_network(&ctx.docker, &ctx.config, &ctx.host_id, spec).await?;
    let log = |line: &str| ctx.log(spec, step.as_str(), line);
    match &plan.compose {
        Some(compose) => services::build(ctx, spec, compose, &network, log).await,
        None => {
            let source = docker::BuildSource::of_plan(plan);
            docker::build(&ctx.docker, &ctx.config.build, spec, &source, None, &network, log).await
        }
    }
}

/// Run the demo's container (a compose demo's: its services') from the images built for
/// its generation; the routed container and the port it answers on.
async fn launch(
    ctx: &AgentContext,
    spec: &DemoSpec,
    plan: &Plan,
    secrets: &[Secret],
) -> Result<(String, u16), docker::DockerError> {
    match &plan.compose {
        Some(compose) => services::launch(ctx, spec, plan, compose, secrets).await,
        None => docker::launch(&ctx.docker, &ctx.config, &ctx.host_id, spec, plan, secrets).await,
    }
}

/// `plan`, unless it is the legacy `./run`, which runs on this host and so only where an
/// admin enabled it for the repository.
fn allowed(plan: demo_config::Plan, spec: &DemoSpec) -> Result<demo_config::Plan, PlanError> {
    if plan.legacy_run && !spec.legacy_run {
        return Err(PlanError::Refused(format!(
            "the repository has only a legacy ./run, which runs on the agent's host; an admin must enable it \
             for {}/{} first (repository setting legacy_run)",
            spec.owner, spec.repo
        )));
    }
    Ok(plan)
}

/// The repository's variables a launch carries, opened with this agent's transport key, as
/// `NAME=value` for the container. Errors name no value.
fn demo_secrets(ctx: &AgentContext, spec: &DemoSpec) -> Result<Vec<Secret>, PlanError> {
    let sealed = match &spec.env {
        None => return Ok(Vec::new()),
        Some(DemoEnv::Unavailable(why)) => return Err(PlanError::Refused(why.clone())),
        Some(DemoEnv::Sealed(sealed)) => sealed,
    };
    let Some(path) = &ctx.config.secrets_transport_key_file else {
        return Err(PlanError::Refused(
            "the repository has secrets, and this agent has no DEMOFLEET_SECRETS_TRANSPORT_KEY_FILE to open them"
                .into(),
        ));
    };
    let key = sealed::Key::from_file(path).map_err(|err| PlanError::Refused(err.to_string()))?;
    let vars = sealed::open_env(&key, &sealed::transport_aad(spec.id, spec.generation), sealed).map_err(|_| {
        PlanError::Refused(
            "the repository's secrets do not open with this agent's DEMOFLEET_SECRETS_TRANSPORT_KEY_FILE \
             (not the controller's key)"
                .into(),
        )
    })?;
    Ok(vars.into_iter().map(|(name, value)| Secret::new(format!("{name}={value}"))).collect())
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
    matches!(
        err.downcast_ref::<PlanError>(),
        Some(PlanError::NothingToBuild | PlanError::Invalid(_) | PlanError::Refused(_))
    ) || matches!(
        err.downcast_ref::<docker::DockerError>(),
        Some(docker::DockerError::Gone(_) | docker::DockerError::Refused(_))
    )
}

/// Refuse to check out or build while the demo folder's or Docker's file system has less
/// free space than `DEMOFLEET_BUILD_MIN_FREE_DISK_MB`: a full disk stops every demo of the
/// host, not only the one being built.
async fn ensure_free_disk(ctx: &AgentContext) -> anyhow::Result<()> {
    let minimum = ctx.config.build.min_free_disk_mb;
    let mut paths = vec![ctx.config.demo_dir.clone()];
    match ctx.docker.info().await {
        Ok(info) => paths.extend(info.docker_root_dir.map(PathBuf::from)),
        Err(err) => tracing::debug!(error = %err, "asking Docker for its root folder failed"),
    }
    for path in paths {
        // Docker's folder may be on another machine (DOCKER_HOST) or unreadable: then only ours counts.
        let Ok(disk) = crate::heartbeat::disk(&path) else { continue };
        let free_mb = disk.free_bytes / (1024 * 1024);
        anyhow::ensure!(
            free_mb >= minimum,
            "only {free_mb} MiB free on {}; checkouts and builds need {minimum} MiB \
             (DEMOFLEET_BUILD_MIN_FREE_DISK_MB)",
            path.display()
        );
    }
    Ok(())
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
    let logs = docker::log_tail(&ctx.docker, &docker::container_name(spec), 20).await;
    anyhow::bail!(
        "no 2xx/3xx answer on {url} within {:?} (last: {last}); container output:\n{logs}",
        ctx.config.health_timeout
    )
}
