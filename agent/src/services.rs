//! Running a compose demo ([`crate::compose`]) on Docker: its images built, its named
//! volumes, its services started in dependency order, its seed.
//!
//! Names, all labelled with the demo's id and this host's (so teardown finds exactly them):
//! - the routed service: `demofleet-<name>-g<generation>`, as a single-container demo, so
//!   health, idle sleep, logs and the route work as they do for one;
//! - another service: `demofleet-<name>-g<generation>--<service>`;
//! - a kept data service (it mounts a named volume and the demo keeps its data):
//!   `demofleet-<name>--<service>`, which outlives generations: an update starts the new
//!   generation's other services beside the old ones and keeps this one, made again only
//!   when what it runs changes (the files its image is built from, or the image it names;
//!   its command, environment, volumes);
//! - volumes: `demofleet-<name>--<volume>` kept, or `demofleet-<name>-g<generation>--<volume>`
//!   with `reset = "on_push"`; beside them `….seeded` once the seed has run on that data;
//! - a network per generation, `demofleet-<name>-g<generation>`, where its services (and the
//!   kept ones, which join each) find each other by service name: two generations running
//!   side by side during an update never reach each other's services.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, HealthConfig, HealthStatusEnum, HostConfig, Mount, MountType, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::CreateImageOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;
use sha2::Digest;

use demofleet_common::labels;
use demofleet_common::secret::Secret;
use demofleet_common::wire::DemoSpec;

use crate::compose::{ComposePlan, Condition, Service};
use crate::demo_config::Plan;
use crate::docker::{self, BuildSource, DockerError, Placement};
use crate::AgentContext;

/// The log step of the seed's output.
pub const SEED_STEP: &str = "seed";

/// Build every service that has `build`, and make sure every other's image is here
/// (pulling it if not). Returns the routed service's image.
pub async fn build(
    ctx: &AgentContext,
    spec: &DemoSpec,
    compose: &ComposePlan,
    network: &str,
    log: impl Fn(&str),
) -> Result<String, DockerError> {
    let mut routed = String::new();
    for service in &compose.services {
        let image = match (&service.build, &service.image) {
            (Some(build), _) => {
                log(&format!("building service {}", service.name));
                let source = BuildSource {
                    context: &build.context,
                    dockerfile: &build.dockerfile,
                    args: &build.args,
                    target: build.target.as_deref(),
                };
                docker::build(&ctx.docker, &ctx.config.build, spec, &source, Some(&service.name), network, &log).await?
            }
            (None, Some(image)) => {
                let pull = ensure_image(&ctx.docker, image, &log);
                tokio::time::timeout(ctx.config.build.timeout, pull).await.map_err(|_| {
                    DockerError::Refused(format!(
                        "pulling the image {image} took longer than {:?} (DEMOFLEET_BUILD_TIMEOUT) and was stopped",
                        ctx.config.build.timeout
                    ))
                })??;
                image.clone()
            }
            (None, None) => unreachable!("compose::plan refuses a service with neither build nor image"),
        };
        if service.name == compose.routed {
            routed = image;
        }
    }
    Ok(routed)
}

/// Pull `image` unless the engine has it.
async fn ensure_image(docker: &Docker, image: &str, log: impl Fn(&str)) -> Result<(), DockerError> {
    if docker.inspect_image(image).await.is_ok() {
        return Ok(());
    }
    // Without a tag the API would pull every tag of the repository.
    let last = image.rsplit('/').next().unwrap_or(image);
    let reference = if last.contains([':', '@']) { image.to_string() } else { format!("{image}:latest") };
    log(&format!("pulling {reference}"));
    let options = CreateImageOptionsBuilder::default().from_image(&reference).build();
    let mut stream = docker.create_image(Some(options), None, None);
    while let Some(item) = stream.next().await {
        item.map_err(|e| DockerError::Service(format!("pulling the image {reference}: {e}")))?;
    }
    Ok(())
}

/// Start the demo's services, dependencies first, beside the running generation's; run the
/// seed when its data is new. Returns the routed container's id and published port.
pub async fn launch(
    ctx: &AgentContext,
    spec: &DemoSpec,
    plan: &Plan,
    compose: &ComposePlan,
    secrets: &[Secret],
) -> Result<(String, u16), DockerError> {
    let network = docker::ensure_generation_network(&ctx.docker, &ctx.config, &ctx.host_id, spec).await?;
    for volume in &compose.volumes {
        ensure_volume(&ctx.docker, &ctx.host_id, spec, compose, &volume_name(spec, compose, volume)).await?;
    }
    let launch = Launch { ctx, spec, plan, compose, secrets, network };
    for service in &compose.services {
        launch.wait_for_dependencies(service).await?;
        if let Some(seed) = compose.seed.as_ref().filter(|s| s.service == service.name) {
            let marker = seed_marker(spec, compose);
            if seed.always || !volume_exists(&ctx.docker, &marker).await? {
                launch.seed(service, &seed.command).await?;
                ensure_volume(&ctx.docker, &ctx.host_id, spec, compose, &marker).await?;
            }
        }
        launch.start(service).await?;
    }
    docker::start_published(&ctx.docker, &docker::container_name(spec)).await
}

/// What the names of the demo's data begin with: the demo's, or its generation's when each
/// starts empty.
fn data_prefix(spec: &DemoSpec, compose: &ComposePlan) -> String {
    if compose.keep_data {
        format!("demofleet-{}", spec.name)
    } else {
        format!("demofleet-{}-g{}", spec.name, spec.generation)
    }
}

/// A demo volume's name.
fn volume_name(spec: &DemoSpec, compose: &ComposePlan, volume: &str) -> String {
    format!("{}--{volume}", data_prefix(spec, compose))
}

/// The volume that says the seed has run on the demo's data.
fn seed_marker(spec: &DemoSpec, compose: &ComposePlan) -> String {
    format!("{}.seeded", data_prefix(spec, compose))
}

/// A service's container name (see the module's documentation).
pub fn container_name(spec: &DemoSpec, compose: &ComposePlan, service: &Service) -> String {
    if service.name == compose.routed {
        docker::container_name(spec)
    } else if compose.is_kept(service) {
        format!("demofleet-{}--{}", spec.name, service.name)
    } else {
        format!("demofleet-{}-g{}--{}", spec.name, spec.generation, service.name)
    }
}

async fn volume_exists(docker: &Docker, name: &str) -> Result<bool, DockerError> {
    match docker.inspect_volume(name).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

async fn ensure_volume(
    docker: &Docker,
    host_id: &str,
    spec: &DemoSpec,
    compose: &ComposePlan,
    name: &str,
) -> Result<(), DockerError> {
    if volume_exists(docker, name).await? {
        return Ok(());
    }
    let mut labels = labels::owned_by(spec, host_id);
    if compose.keep_data {
        labels::mark_kept(&mut labels);
    }
    let request = bollard::models::VolumeCreateRequest {
        name: Some(name.to_string()),
        driver: Some("local".into()),
        labels: Some(labels),
        ..Default::default()
    };
    docker.create_volume(request).await?;
    Ok(())
}

/// One launch of a compose demo's services.
struct Launch<'a> {
    ctx: &'a AgentContext,
    spec: &'a DemoSpec,
    plan: &'a Plan,
    compose: &'a ComposePlan,
    secrets: &'a [Secret],
    network: String,
}

impl Launch<'_> {
    fn docker(&self) -> &Docker {
        &self.ctx.docker
    }

    fn name_of(&self, service: &Service) -> String {
        container_name(self.spec, self.compose, service)
    }

    /// Wait until each service `service` depends on meets its condition, within the
    /// agent's health timeout.
    async fn wait_for_dependencies(&self, service: &Service) -> Result<(), DockerError> {
        for (dependency, condition) in &service.depends_on {
            let other = self.compose.service(dependency).expect("compose::plan checked dependencies");
            let name = self.name_of(other);
            let deadline = tokio::time::Instant::now() + self.ctx.config.health_timeout;
            // Most services are ready within a second or two: ask again soon, then less often.
            let mut pause = Duration::from_millis(20);
            loop {
                let state = self.docker().inspect_container(&name, None).await?.state.unwrap_or_default();
                let met = match condition_met(*condition, &state) {
                    Ok(met) => met,
                    Err(code) => {
                        let what = format!("service {dependency} exited with {code}");
                        return Err(self.failed(&name, &what).await);
                    }
                };
                if met {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    let what = format!(
                        "service {:?} waited {:?} for {dependency:?} to be {condition:?}",
                        service.name, self.ctx.config.health_timeout
                    );
                    return Err(self.failed(&name, &what).await);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
        }
        Ok(())
    }

    /// A failure, with the last lines of `container`'s output.
    async fn failed(&self, container: &str, what: &str) -> DockerError {
        let tail = docker::log_tail(self.docker(), container, 20).await;
        DockerError::Service(format!("{what}; {container} printed:\n{tail}"))
    }

    /// Create `service`'s container unless it is there (a kept one is made again when what it
    /// runs changed), start it, and relay its output to the live log.
    async fn start(&self, service: &Service) -> Result<(), DockerError> {
        let name = self.name_of(service);
        let routed = service.name == self.compose.routed;
        let (mut body, image_user, port) = self.body(service).await?;
        let kept = self.compose.is_kept(service);
        // A built image is known by what it is built from: two builds of the same files at
        // once can give two images, and the kept service must not be made again for that.
        let source = match &service.build {
            Some(build) if kept => Some(context_digest(build).await?),
            _ => None,
        };
        let digest = digest(&body, source);
        let labels = body.labels.get_or_insert_with(HashMap::new);
        labels.insert(labels::CONFIG.to_string(), digest.clone());
        if kept {
            labels::mark_kept(labels);
        }
        match self.docker().inspect_container(&name, None).await {
            Ok(existing) => {
                let same = existing.config.and_then(|c| c.labels).and_then(|l| l.get(labels::CONFIG).cloned());
                if !kept || same.as_deref() == Some(digest.as_str()) {
                    if kept {
                        self.join(&name, service, existing.network_settings.and_then(|n| n.networks)).await?;
                    }
                    return self.run(service, &name, routed).await;
                }
                self.ctx.log(
                    self.spec,
                    "launch",
                    &format!("service {} changed: made again, its volumes kept", service.name),
                );
                docker::remove_container(self.docker(), &name).await?;
            }
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(err) => return Err(err.into()),
        }
        if let Some(port) = port.filter(|_| routed) {
            let published = docker::published(&self.ctx.config, port);
            let host_config = body.host_config.get_or_insert_with(HostConfig::default);
            host_config.port_bindings = published.host_config.and_then(|h| h.port_bindings);
            body.exposed_ports = published.exposed_ports;
        }
        let placement = Placement { name: &name, network: &self.network, aliases: vec![service.name.clone()] };
        docker::create_confined(self.docker(), &self.ctx.config, self.plan, placement, &image_user, body).await?;
        if kept {
            // Made again: the older generations still serving find it on their networks too.
            for network in docker::generation_networks_of(self.docker(), &self.ctx.host_id, self.spec).await? {
                if network != self.network {
                    self.connect(&name, service, &network).await?;
                }
            }
        }
        self.run(service, &name, routed).await
    }

    /// Put the kept container `name` of `service` on this generation's network, under its
    /// service name, unless it is there (`networks`: those it is on).
    async fn join(
        &self,
        name: &str,
        service: &Service,
        networks: Option<HashMap<String, bollard::models::EndpointSettings>>,
    ) -> Result<(), DockerError> {
        if networks.is_some_and(|n| n.contains_key(&self.network)) {
            return Ok(());
        }
        self.connect(name, service, &self.network).await
    }

    /// Put the container `name` of `service` on `network`, under its service name.
    async fn connect(&self, name: &str, service: &Service, network: &str) -> Result<(), DockerError> {
        let endpoint =
            bollard::models::EndpointSettings { aliases: Some(vec![service.name.clone()]), ..Default::default() };
        let request =
            bollard::models::NetworkConnectRequest { container: name.to_string(), endpoint_config: Some(endpoint) };
        self.docker().connect_network(network, request).await?;
        Ok(())
    }

    /// Start the container `name` of `service` and relay its output, unless it runs (the
    /// routed one's output is relayed by the launch step itself).
    async fn run(&self, service: &Service, name: &str, routed: bool) -> Result<(), DockerError> {
        let info = self.docker().inspect_container(name, None).await?;
        if info.state.and_then(|s| s.running).unwrap_or(false) {
            return Ok(());
        }
        self.docker().start_container(name, None).await.or_else(docker::already_started)?;
        if !routed {
            self.ctx.follow_service(self.spec, name.to_string(), &service.name, 0);
        }
        Ok(())
    }

    /// What `service`'s container is created from, its image's user, and its port. The
    /// routed service's port: `.demofleet.toml`'s, else the service's `ports`/`expose`, else
    /// the image's first `EXPOSE`, else 8080.
    async fn body(&self, service: &Service) -> Result<(ContainerCreateBody, String, Option<u16>), DockerError> {
        let tag = match &service.build {
            Some(_) => docker::built_image(self.docker(), self.spec, Some(&service.name)).await?,
            None => service.image.clone().unwrap_or_default(),
        };
        let inspected = self.docker().inspect_image(&tag).await?;
        let image_config = inspected.config.unwrap_or_default();
        let image_user = service.user.clone().unwrap_or_else(|| image_config.user.clone().unwrap_or_default());
        let routed = service.name == self.compose.routed;
        let port = match routed {
            true => Some(self.plan.port.or(service.port).unwrap_or_else(|| docker::exposed_port(&image_config))),
            false => service.port,
        };
        let mut env = docker::demo_env(self.spec, port.unwrap_or(docker::DEFAULT_PORT));
        if port.is_none() && !routed {
            env.retain(|v| !v.starts_with("PORT="));
        }
        if self.compose.is_kept(service) {
            // The commit changes with every push; a kept service must not be made again for it.
            env.retain(|v| !v.starts_with("DEMO_SHA="));
        }
        env.extend(service.env.iter().cloned());
        env.extend(self.plan.env.iter().cloned());
        // The repository's secrets (set by an admin) win over what its files say.
        env.extend(self.secrets.iter().map(|s| s.expose().to_string()));
        env.extend(self.ctx.config.demo_opts());
        let mut labels = labels::demo_labels(self.spec, &self.ctx.host_id, port.unwrap_or(docker::DEFAULT_PORT));
        if !routed {
            labels = labels::unrouted(labels);
        }
        labels.insert(labels::SERVICE.to_string(), service.name.clone());
        let depended_once =
            self.compose.services.iter().any(|s| {
                s.depends_on.iter().any(|(d, c)| *d == service.name && *c == Condition::CompletedSuccessfully)
            });
        let mounts = service
            .mounts
            .iter()
            .map(|m| Mount {
                target: Some(m.target.clone()),
                source: Some(volume_name(self.spec, self.compose, &m.volume)),
                typ: Some(MountType::VOLUME),
                read_only: Some(m.read_only),
                ..Default::default()
            })
            .collect();
        let host_config = HostConfig {
            mounts: Some(mounts),
            // A one-shot service others wait for must not be restarted when it is done.
            restart_policy: depended_once.then(never_restart),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            // By id: a kept service's digest changes only when the image's content does.
            image: Some(inspected.id.unwrap_or(tag)),
            cmd: service.command.clone(),
            entrypoint: service.entrypoint.clone(),
            env: Some(env),
            working_dir: service.working_dir.clone(),
            healthcheck: service.health.as_ref().map(|h| HealthConfig {
                test: Some(h.test.clone()),
                interval: h.interval.map(nanos),
                timeout: h.timeout.map(nanos),
                start_period: h.start_period.map(nanos),
                retries: h.retries,
                ..Default::default()
            }),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        };
        Ok((body, image_user, port))
    }

    /// Run the seed `command` once in `service`'s image, environment and volumes, its
    /// output in the live log; it must exit 0.
    async fn seed(&self, service: &Service, command: &str) -> Result<(), DockerError> {
        let name = format!("demofleet-{}-g{}--seed", self.spec.name, self.spec.generation);
        // A seed that was cut short before (an agent restart) starts over.
        docker::remove_container(self.docker(), &name).await?;
        let (mut body, image_user, _) = self.body(service).await?;
        body.entrypoint = Some(vec!["/bin/sh".into(), "-c".into()]);
        body.cmd = Some(vec![command.to_string()]);
        body.healthcheck = None;
        body.labels = body.labels.map(labels::unrouted);
        if let Some(labels) = body.labels.as_mut() {
            labels.insert(labels::SERVICE.to_string(), SEED_STEP.to_string());
        }
        let host_config = body.host_config.get_or_insert_with(HostConfig::default);
        host_config.restart_policy = Some(never_restart());
        let placement = Placement { name: &name, network: &self.network, aliases: Vec::new() };
        docker::create_confined(self.docker(), &self.ctx.config, self.plan, placement, &image_user, body).await?;
        self.ctx.log(self.spec, SEED_STEP, &format!("seeding in service {}: {command}", service.name));
        self.docker().start_container(&name, None).await.or_else(docker::already_started)?;
        // Following ends when the container stops.
        docker::follow_logs(self.docker(), &name, 0, |line| self.ctx.log(self.spec, SEED_STEP, line)).await;
        let mut code = None;
        for _ in 0..100 {
            let state = self.docker().inspect_container(&name, None).await?.state.unwrap_or_default();
            if !state.running.unwrap_or(false) {
                code = state.exit_code;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        docker::remove_container(self.docker(), &name).await?;
        match code {
            Some(0) => {
                self.ctx.log(self.spec, SEED_STEP, "seed done");
                Ok(())
            }
            other => Err(DockerError::Service(format!(
                "the seed in service {} exited with {}; its output is in the demo's log",
                service.name,
                other.map_or("no code".to_string(), |c| c.to_string())
            ))),
        }
    }
}

/// Whether a container in `state` meets `condition`; `Err(code)`: it exited with `code`
/// where it had to complete successfully.
fn condition_met(condition: Condition, state: &bollard::models::ContainerState) -> Result<bool, i64> {
    let running = state.running.unwrap_or(false);
    Ok(match condition {
        Condition::Started => running,
        // A service without a healthcheck counts as healthy once it runs.
        Condition::Healthy => match state.health.as_ref().and_then(|h| h.status) {
            Some(HealthStatusEnum::HEALTHY) => true,
            Some(HealthStatusEnum::NONE | HealthStatusEnum::EMPTY) | None => running,
            _ => false,
        },
        Condition::CompletedSuccessfully => {
            let exited = !running && state.finished_at.as_deref().is_some_and(|f| !f.starts_with("0001"));
            match (exited, state.exit_code) {
                (true, Some(0)) => true,
                (true, Some(code)) => return Err(code),
                _ => false,
            }
        }
    })
}

/// A digest of what a container runs (labels aside; the image as `source` says, when given),
/// the same for the same settings whatever the order of its maps and environment.
fn digest(body: &ContainerCreateBody, source: Option<String>) -> String {
    fn canonical(value: &serde_json::Value, out: &mut String) {
        match value {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for key in keys {
                    out.push_str(&serde_json::Value::String(key.clone()).to_string());
                    out.push(':');
                    canonical(&map[key], out);
                    out.push(',');
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for item in items {
                    canonical(item, out);
                    out.push(',');
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut body = body.clone();
    // Labels name the generation and commit, which change with every push.
    body.labels = None;
    if source.is_some() {
        body.image = source;
    }
    if let Some(env) = body.env.as_mut() {
        env.sort();
    }
    let mut text = String::new();
    canonical(&serde_json::to_value(&body).unwrap_or_default(), &mut text);
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// A digest of a build's files: every path of its context (without `.git`), with its mode
/// and content or link target, and the Dockerfile, arguments and target it is built with.
async fn context_digest(build: &crate::compose::Build) -> Result<String, DockerError> {
    fn walk(dir: &std::path::Path, base: &std::path::Path, hash: &mut sha2::Sha256) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            if dir == base && entry.file_name() == ".git" {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path)?;
            let relative = path.strip_prefix(base).unwrap_or(&path);
            hash.update(format!("{}\0{:o}\0", relative.display(), meta.permissions().mode()).as_bytes());
            if meta.file_type().is_symlink() {
                hash.update(std::fs::read_link(&path)?.as_os_str().as_encoded_bytes());
            } else if meta.is_dir() {
                walk(&path, base, hash)?;
            } else {
                hash.update(std::fs::read(&path)?);
            }
            hash.update(b"\0");
        }
        Ok(())
    }
    let build = build.clone();
    let digest = tokio::task::spawn_blocking(move || {
        let mut hash = sha2::Sha256::new();
        let mut args: Vec<_> = build.args.iter().collect();
        args.sort();
        hash.update(format!("{}\0{args:?}\0{:?}\0", build.dockerfile, build.target).as_bytes());
        walk(&build.context, &build.context, &mut hash).map(|()| hex::encode(hash.finalize()))
    });
    let digest = digest.await.map_err(|e| DockerError::Service(format!("reading the build context: {e}")))?;
    Ok(format!("context:{}", digest?))
}

fn never_restart() -> RestartPolicy {
    RestartPolicy { name: Some(RestartPolicyNameEnum::NO), maximum_retry_count: None }
}

fn nanos(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_of(files: &[(&str, &str)]) -> (tempfile::TempDir, crate::compose::Build) {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let build = crate::compose::Build {
            context: dir.path().to_path_buf(),
            dockerfile: "Dockerfile".into(),
            args: HashMap::new(),
            target: None,
        };
        (dir, build)
    }

    #[test]
    fn dependency_conditions_read_the_container_state() {
        use bollard::models::{ContainerState, Health};
        let running = ContainerState { running: Some(true), ..Default::default() };
        let health = |status| ContainerState {
            health: Some(Health { status: Some(status), ..Default::default() }),
            ..running.clone()
        };
        let exited = |code| ContainerState {
            running: Some(false),
            exit_code: Some(code),
            finished_at: Some("2026-12-04T23:00:00Z".into()),
            ..Default::default()
        };
        assert_eq!(condition_met(Condition::Started, &running), Ok(true));
        assert_eq!(condition_met(Condition::Healthy, &running), Ok(true), "no healthcheck: running is enough");
        assert_eq!(condition_met(Condition::Healthy, &health(HealthStatusEnum::STARTING)), Ok(false));
        assert_eq!(condition_met(Condition::Healthy, &health(HealthStatusEnum::HEALTHY)), Ok(true));
        assert_eq!(condition_met(Condition::CompletedSuccessfully, &running), Ok(false));
        assert_eq!(condition_met(Condition::CompletedSuccessfully, &exited(0)), Ok(true));
        assert_eq!(condition_met(Condition::CompletedSuccessfully, &exited(3)), Err(3));
        let never_started = ContainerState { finished_at: Some("0001-01-01T00:00:00Z".into()), ..exited(0) };
        assert_eq!(condition_met(Condition::CompletedSuccessfully, &never_started), Ok(false));
    }

    #[tokio::test]
    async fn a_build_is_known_by_its_files_not_by_when_they_were_written() {
        let files = [("Dockerfile", "FROM x\nCOPY start.sh /\n"), ("start.sh", "exec db\n")];
        let (_one, first) = build_of(&files);
        let (_two, again) = build_of(&files);
        let digest = context_digest(&first).await.unwrap();
        assert_eq!(digest, context_digest(&again).await.unwrap(), "the same files, written anew");
        std::fs::create_dir(again.context.join(".git")).unwrap();
        std::fs::write(again.context.join(".git/HEAD"), "ref").unwrap();
        assert_eq!(digest, context_digest(&again).await.unwrap(), ".git is not part of it");
        std::fs::write(again.context.join("start.sh"), "exec db -c fsync=off\n").unwrap();
        assert_ne!(digest, context_digest(&again).await.unwrap(), "a changed file");
        let (_three, mut argued) = build_of(&files);
        argued.args.insert("VERSION".into(), "2".into());
        assert_ne!(digest, context_digest(&argued).await.unwrap(), "another build argument");
    }
}
