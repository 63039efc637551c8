//! The Docker side of a demo: build its image from the clone, run it as a labelled,
//! limited container, find its published port, and remove exactly what belongs to it.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, Ipam, IpamConfig, NetworkCreateRequest, NetworkingConfig,
    PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListImagesOptionsBuilder,
    ListVolumesOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;

use demofleet_common::labels;
use demofleet_common::secret::Secret;
use demofleet_common::wire::{DemoSpec, InventoryItem};

use crate::config::{BuildLimits, Config};
use crate::demo_config::Plan;
use crate::{confine, subnets};

/// Port a demo listens on when its Dockerfile exposes none.
pub const DEFAULT_PORT: u16 = 8080;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("docker build failed: {0}")]
    Build(String),
    #[error("the container has no published port for {0}")]
    NoPort(String),
    #[error("docker: {0}")]
    Api(#[from] bollard::errors::Error),
    #[error("packing the build context: {0}")]
    Context(#[from] std::io::Error),
    #[error("no free /28 left in DEMOFLEET_DEMO_SUBNETS {0}")]
    PoolFull(String),
    #[error("container {0} is gone; the demo must be deployed again")]
    Gone(String),
    /// Something the host's limits do not allow; trying again cannot help.
    #[error("{0}")]
    Refused(String),
    #[error("no image of generation {0} of this demo: it must be built again")]
    NoImage(i64),
    /// A service of a compose demo that did not come up, or its seed that failed.
    #[error("{0}")]
    Service(String),
}

/// The image repository of a demo's generations, `demofleet/<name>`.
fn image_repository(name: &str) -> String {
    format!("demofleet/{name}")
}

/// A new image tag for a build of one generation, `demofleet/<name>:g<generation>-<token>`,
/// and `…-<token>.<service>` for a service of a compose demo. The token is random, so no
/// Dockerfile can name another demo's image (`FROM`, `COPY --from=`): the tag is known only
/// to this agent, which finds it through the Docker API, out of demos' reach.
pub fn new_image_tag(spec: &DemoSpec, service: Option<&str>) -> String {
    let tag = format!("{}:g{}-{}", image_repository(&spec.name), spec.generation, uuid::Uuid::new_v4().simple());
    match service {
        Some(service) => format!("{tag}.{service}"),
        None => tag,
    }
}

/// The compose service an image tag of the demo is for (`None`: a single-container demo's).
fn service_of_tag<'t>(name: &str, tag: &'t str) -> Option<&'t str> {
    let rest = tag.strip_prefix(&image_repository(name))?.strip_prefix(":g")?;
    rest.split_once('.').map(|(_, service)| service)
}

/// The container name of one generation of a demo.
pub fn container_name(spec: &DemoSpec) -> String {
    format!("demofleet-{}-g{}", spec.name, spec.generation)
}

/// The demo's own network, shared by its generations: `demofleet-<name>`, or
/// `demofleet-<name>-closed` when its repository closes outbound traffic (a generation
/// after the setting changed joins the other one; the old one goes with its last container).
fn network_name(spec: &DemoSpec) -> String {
    network_names(spec)[usize::from(spec.closed_outbound)].clone()
}

/// Both networks a demo may have: open, closed.
fn network_names(spec: &DemoSpec) -> [String; 2] {
    [format!("demofleet-{}", spec.name), format!("demofleet-{}-closed", spec.name)]
}

/// The first letters of every demo network's bridge interface. The host's firewall policy
/// (dist/firewall/demofleet-firewall) matches them: what comes from such a bridge is a
/// demo's traffic, and what goes into one from outside must come from the edge.
pub const DEMO_BRIDGE_PREFIX: &str = "dfd";

/// The same for demos whose outbound traffic is closed: the policy also drops what they
/// send beyond their host's link.
pub const CLOSED_BRIDGE_PREFIX: &str = "dfc";

/// The bridge interface of the demo network `network`: the prefix (closed or not) and a
/// hash of the name, within Linux's 15 characters.
pub fn demo_bridge(network: &str, closed_outbound: bool) -> String {
    use sha2::Digest;
    let prefix = if closed_outbound { CLOSED_BRIDGE_PREFIX } else { DEMO_BRIDGE_PREFIX };
    let digest = hex::encode(sha2::Sha256::digest(network.as_bytes()));
    format!("{prefix}{}", &digest[..15 - prefix.len()])
}

/// The generation an image tag of the demo names (see [`new_image_tag`]; tags of agents
/// before the token, `…:g<generation>`, too).
fn generation_of_tag(name: &str, tag: &str) -> Option<i64> {
    let rest = tag.strip_prefix(&image_repository(name))?.strip_prefix(":g")?;
    rest.split_once('-').map_or(rest, |(generation, _)| generation).parse().ok()
}

/// The demo's image tags of this host's engine, with their generations.
async fn image_tags(docker: &Docker, name: &str) -> Result<Vec<(String, i64)>, DockerError> {
    let filters = HashMap::from([("reference", vec![image_repository(name)])]);
    let options = ListImagesOptionsBuilder::default().all(false).filters(&filters).build();
    let images = docker.list_images(Some(options)).await?;
    let tags = images.into_iter().flat_map(|image| image.repo_tags);
    Ok(tags.filter_map(|tag| generation_of_tag(name, &tag).map(|g| (tag, g))).collect())
}

/// The tag of the image built for `spec`'s generation (of a compose demo's `service`).
pub(crate) async fn built_image(
    docker: &Docker,
    spec: &DemoSpec,
    service: Option<&str>,
) -> Result<String, DockerError> {
    let tags = image_tags(docker, &spec.name).await?;
    let mut ours = tags
        .into_iter()
        .filter(|(tag, g)| *g == spec.generation && service_of_tag(&spec.name, tag) == service)
        .map(|(tag, _)| tag);
    ours.next().ok_or(DockerError::NoImage(spec.generation))
}

/// What one image is built from: a context folder inside the clone and a Dockerfile in it.
pub struct BuildSource<'a> {
    pub context: &'a Path,
    pub dockerfile: &'a str,
    pub args: &'a HashMap<String, String>,
    pub target: Option<&'a str>,
}

impl<'a> BuildSource<'a> {
    /// A single-container demo's image.
    pub fn of_plan(plan: &'a Plan) -> Self {
        BuildSource { context: &plan.context, dockerfile: &plan.dockerfile, args: &plan.build_args, target: None }
    }
}

/// Build the demo's image (of a compose demo's `service`) from `source`, within the host's
/// build limits, its steps on the demo's `network`; build output lines go to `log`.
///
/// The image carries no labels of ours: with Docker's classic builder each build label is
/// one more step that commits a layer (3 s of a 5.5 s build of the fixture demo). Images
/// are found by their tag instead ([`new_image_tag`]).
pub async fn build(
    docker: &Docker,
    limits: &BuildLimits,
    spec: &DemoSpec,
    source: &BuildSource<'_>,
    service: Option<&str>,
    network: &str,
    log: impl Fn(&str),
) -> Result<String, DockerError> {
    let context_dir = source.context.to_path_buf();
    let max_bytes = limits.context_mb.saturating_mul(1024 * 1024);
    let context = tokio::task::spawn_blocking(move || pack_context(&context_dir, max_bytes))
        .await
        .map_err(|e| DockerError::Build(format!("packing task failed: {e}")))?
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::FileTooLarge => DockerError::Refused(format!(
                "the build context is over {} MiB (DEMOFLEET_BUILD_CONTEXT_MB); leave out what the image does not need (.dockerignore does not shrink what is sent)",
                limits.context_mb
            )),
            _ => DockerError::Context(err),
        })?;
    let tag = new_image_tag(spec, service);
    // i32 bytes is the API client's limit; the setting is bounded below it.
    let memory = i32::try_from(u64::from(limits.memory_mb) * 1024 * 1024).unwrap_or(i32::MAX);
    let period = 100_000;
    let options = BuildImageOptionsBuilder::default()
        .dockerfile(source.dockerfile)
        .buildargs(source.args)
        .target(source.target.unwrap_or_default())
        .t(&tag)
        .rm(true)
        .forcerm(true)
        .memory(memory)
        .memswap(memory)
        .cpuperiod(period)
        .cpuquota((limits.cpus * f64::from(period)) as i32)
        .networkmode(network)
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    let mut tail: Vec<String> = Vec::new();
    let mut lines = Lines::default();
    // Docker sends the build's output in chunks, several lines or part of one each.
    let mut kept = |line: &str| {
        let line = line.trim_end();
        if line.is_empty() {
            return;
        }
        log(line);
        tail.push(line.to_string());
        if tail.len() > 10 {
            tail.remove(0);
        }
    };
    // Ok(Some(message)): Docker said the build failed; Err: the stream broke.
    let built = tokio::time::timeout(limits.timeout, async {
        while let Some(item) = stream.next().await {
            let info = item?;
            if let Some(chunk) = info.stream.as_deref() {
                lines.push(chunk, &mut kept);
            }
            if let Some(detail) = info.error_detail {
                return Ok(Some(detail.message.unwrap_or_default()));
            }
        }
        Ok::<_, bollard::errors::Error>(None)
    })
    .await;
    lines.finish(&mut kept);
    // Dropping the stream on timeout closes the request, and Docker stops the build.
    drop(stream);
    match built {
        Ok(Ok(None)) => {}
        Ok(Ok(Some(message))) => return Err(DockerError::Build(message)),
        Ok(Err(err)) => return Err(DockerError::Build(format!("{err}; last output: {}", tail.join(" | ")))),
        Err(_) => {
            return Err(DockerError::Refused(format!(
                "the build took longer than {:?} (DEMOFLEET_BUILD_TIMEOUT) and was stopped",
                limits.timeout
            )))
        }
    }
    // Succeeded only with its image: a build whose stream ended without it must not pass
    // for one, or the launch after it finds nothing to run.
    match docker.inspect_image(&tag).await {
        Ok(_) => {}
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
            return Err(DockerError::Build(format!(
                "the build ended without its image {tag}; last output: {}",
                tail.join(" | ")
            )))
        }
        Err(err) => return Err(err.into()),
    }
    // A build run again (a redelivered step) leaves one image per generation and service.
    let again = |t: &str, g: i64| g == spec.generation && t != tag && service_of_tag(&spec.name, t) == service;
    for (other, _) in image_tags(docker, &spec.name).await?.into_iter().filter(|(t, g)| again(t, *g)) {
        tracing::info!(image = %other, kept = %tag, "an earlier build's image of the same generation removed");
        remove_tag(docker, &other).await?;
    }
    Ok(tag)
}

/// A tar of `dir` without `.git`, as the build context; over `max_bytes` it fails with
/// [`std::io::ErrorKind::FileTooLarge`].
fn pack_context(dir: &Path, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    let mut archive = tar::Builder::new(Capped { bytes: Vec::new(), max_bytes });
    archive.follow_symlinks(false);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == ".git" {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            archive.append_dir_all(&name, &path)?;
        } else {
            archive.append_path_with_name(&path, &name)?;
        }
    }
    Ok(archive.into_inner()?.bytes)
}

/// A buffer that refuses to grow past `max_bytes`.
struct Capped {
    bytes: Vec<u8>,
    max_bytes: u64,
}

impl std::io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if (self.bytes.len() + data.len()) as u64 > self.max_bytes {
            return Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, "build context over its limit"));
        }
        self.bytes.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Run the demo's image as its container, or find it already running. Returns the
/// container id and the port it is published on at the host's address.
pub async fn launch(
    docker: &Docker,
    config: &Config,
    host_id: &str,
    spec: &DemoSpec,
    plan: &Plan,
    secrets: &[Secret],
) -> Result<(String, u16), DockerError> {
    let name = container_name(spec);
    if docker.inspect_container(&name, None).await.is_err() {
        let image = built_image(docker, spec, None).await?;
        let image_config = docker.inspect_image(&image).await?.config.unwrap_or_default();
        let port = match plan.port {
            Some(port) => port,
            None => exposed_port(&image_config),
        };
        let network = ensure_network(docker, config, host_id, spec).await?;
        let mut env = demo_env(spec, port);
        env.extend(plan.env.iter().cloned());
        // The repository's secrets (set by an admin) win over what its files say.
        env.extend(secrets.iter().map(|s| s.expose().to_string()));
        env.extend(config.demo_opts());
        let body = ContainerCreateBody {
            image: Some(image),
            labels: Some(labels::demo_labels(spec, host_id, port)),
            env: Some(env),
            ..published(config, port)
        };
        let image_user = image_config.user.unwrap_or_default();
        create_confined(
            docker,
            config,
            plan,
            Placement { name: &name, network: &network, aliases: Vec::new() },
            &image_user,
            body,
        )
        .await?;
    }
    start_published(docker, &name).await
}

/// Start the container `name` (running already: fine) and find the port it is published on.
pub(crate) async fn start_published(docker: &Docker, name: &str) -> Result<(String, u16), DockerError> {
    docker.start_container(name, None).await.or_else(already_started)?;
    let inspected = docker.inspect_container(name, None).await?;
    let host_port = host_port_of(&inspected).ok_or_else(|| DockerError::NoPort(name.to_string()))?;
    Ok((inspected.id.unwrap_or_else(|| name.to_string()), host_port))
}

/// A container body that publishes `port` on the host's publish address, on a port Docker picks.
pub(crate) fn published(config: &Config, port: u16) -> ContainerCreateBody {
    let port_key = format!("{port}/tcp");
    let bindings = HashMap::from([(
        port_key.clone(),
        Some(vec![PortBinding { host_ip: Some(config.publish_address().to_string()), host_port: Some(String::new()) }]),
    )]);
    ContainerCreateBody {
        exposed_ports: Some(vec![port_key]),
        host_config: Some(HostConfig { port_bindings: Some(bindings), ..Default::default() }),
        ..Default::default()
    }
}

/// Where a new container goes: its name, the demo network it joins, and the names it is
/// known by there (a compose service's).
pub(crate) struct Placement<'a> {
    pub name: &'a str,
    pub network: &'a str,
    pub aliases: Vec<String>,
}

/// Create a demo container from `body`: on its demo network, within the limits of `plan`,
/// restarted unless stopped (unless `body` says otherwise), and confined ([`confine`]):
/// as `image_user` (the image's `USER`, or a compose service's `user`) unless that is root.
pub(crate) async fn create_confined(
    docker: &Docker,
    config: &Config,
    plan: &Plan,
    placement: Placement<'_>,
    image_user: &str,
    mut body: ContainerCreateBody,
) -> Result<(), DockerError> {
    let mut host_config = body.host_config.take().unwrap_or_default();
    host_config.network_mode = Some(placement.network.to_string());
    host_config.memory = Some(i64::from(plan.memory_mb) * 1024 * 1024);
    host_config.nano_cpus = Some((plan.cpus * 1e9) as i64);
    host_config.pids_limit = Some(i64::from(plan.pids));
    host_config
        .restart_policy
        .get_or_insert(RestartPolicy { name: Some(RestartPolicyNameEnum::UNLESS_STOPPED), maximum_retry_count: None });
    let remapped = confine::engine_remaps_users(docker).await;
    let user = confine::choose(image_user, remapped, config);
    confine::apply(&mut host_config, config, &user);
    body.user = Some(user.spec.clone());
    body.host_config = Some(host_config);
    if !placement.aliases.is_empty() {
        let endpoint = EndpointSettings { aliases: Some(placement.aliases), ..Default::default() };
        body.networking_config = Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(placement.network.to_string(), endpoint)])),
        });
    }
    let name = placement.name;
    let options = CreateContainerOptionsBuilder::default().name(name).build();
    docker.create_container(Some(options.clone()), body.clone()).await?;
    // A user the image names is root if its /etc/passwd says uid 0: then ours instead.
    if user.named && confine::uid_in_image(docker, name, &user.spec).await.is_none_or(|uid| uid == 0) {
        remove_container(docker, name).await?;
        body.user = Some(confine::fallback(config).spec);
        docker.create_container(Some(options), body).await?;
    }
    Ok(())
}

/// Stop the demo's containers and keep them, with their images and volumes: an idle demo
/// goes to sleep, every service of a compose demo with it. Stopped or gone already:
/// nothing to do.
pub async fn sleep(docker: &Docker, host_id: &str, spec: &DemoSpec) -> Result<(), DockerError> {
    let options = StopContainerOptionsBuilder::default().t(10).build();
    // The routed one first: the others serve it.
    let routed = container_name(spec);
    let others = demo_set(docker, host_id, spec).await?.into_iter().map(|(n, _)| n).filter(|n| *n != routed);
    let names: Vec<String> = std::iter::once(routed.clone()).chain(others).collect();
    for name in names {
        match docker.stop_container(&name, Some(options.clone())).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 304 | 404, .. }) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Start a sleeping demo's containers again, the routed one last. Its port may differ from
/// before. Returns the other containers it started, with their compose services.
pub async fn wake(docker: &Docker, host_id: &str, spec: &DemoSpec) -> Result<Vec<(String, String)>, DockerError> {
    let name = container_name(spec);
    let others: Vec<(String, String)> = demo_set(docker, host_id, spec)
        .await?
        .into_iter()
        .filter(|(n, _)| *n != name)
        .map(|(n, service)| (n, service.unwrap_or_default()))
        .collect();
    for (other, _) in &others {
        docker.start_container(other, None).await.or_else(already_started)?;
    }
    match docker.start_container(&name, None).await.or_else(already_started) {
        Ok(()) => Ok(others),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Err(DockerError::Gone(name)),
        Err(err) => Err(err.into()),
    }
}

/// The labels that filter what is the demo's on this host.
fn of_demo(demo: impl std::fmt::Display, host_id: &str) -> Vec<String> {
    vec![format!("{}={demo}", labels::ID), format!("{}={host_id}", labels::HOST)]
}

/// The containers that serve `spec`'s generation on this host (its own, and a compose
/// demo's kept ones): their names, and their compose services.
async fn demo_set(
    docker: &Docker,
    host_id: &str,
    spec: &DemoSpec,
) -> Result<Vec<(String, Option<String>)>, DockerError> {
    let generation = spec.generation.to_string();
    Ok(containers_of(docker, of_demo(spec.id, host_id))
        .await?
        .into_iter()
        .filter_map(|c| {
            let labels = c.labels.unwrap_or_default();
            let serves = labels.get(labels::GENERATION) == Some(&generation) || labels::is_kept(&labels);
            let name = c.names?.first()?.trim_start_matches('/').to_string();
            serves.then(|| (name, labels.get(labels::SERVICE).cloned()))
        })
        .collect())
}

/// The demo's own bridge network, `demofleet-<name>`: demos do not share a network.
/// With a pool (`DEMOFLEET_DEMO_SUBNETS`) its subnet is the pool's first free /28.
pub(crate) async fn ensure_network(
    docker: &Docker,
    config: &Config,
    host_id: &str,
    spec: &DemoSpec,
) -> Result<String, DockerError> {
    create_network(docker, config, host_id, spec, false).await
}

/// A compose demo generation's own network, `demofleet-<name>-g<generation>` (or
/// `demofleet-<name>-closed-g<generation>`): its services find each other there by their
/// service names, apart from another generation's services of the same names. It goes
/// with its generation; the demo's kept services join each generation's.
pub(crate) async fn ensure_generation_network(
    docker: &Docker,
    config: &Config,
    host_id: &str,
    spec: &DemoSpec,
) -> Result<String, DockerError> {
    create_network(docker, config, host_id, spec, true).await
}

/// The demo's network, or (`of_generation`) its generation's, made unless it exists.
async fn create_network(
    docker: &Docker,
    config: &Config,
    host_id: &str,
    spec: &DemoSpec,
    of_generation: bool,
) -> Result<String, DockerError> {
    let mut labels = labels::owned_by(spec, host_id);
    let name = if of_generation {
        format!("{}-g{}", network_name(spec), spec.generation)
    } else {
        // The demo's network outlives its generations; only theirs carry one.
        labels.remove(labels::GENERATION);
        network_name(spec)
    };
    if docker.inspect_network(&name, None).await.is_ok() {
        return Ok(name);
    }
    // Two launches may pick the same block at once: the loser tries the next.
    let mut taken = Vec::new();
    for _ in 0..8 {
        let subnet = match &config.demo_subnets {
            Some(pool) => {
                taken.extend(subnets_in_use(docker).await?);
                Some(subnets::first_free(pool, &taken).ok_or(DockerError::PoolFull(pool.to_string()))?)
            }
            None => None,
        };
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            options: Some(HashMap::from([(
                "com.docker.network.bridge.name".to_string(),
                demo_bridge(&name, spec.closed_outbound),
            )])),
            labels: Some(labels.clone()),
            ipam: subnet.map(|s| Ipam {
                config: Some(vec![IpamConfig { subnet: Some(s.to_string()), ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        match docker.create_network(request).await {
            // 409: created meanwhile by another step of the same demo.
            Ok(_) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => return Ok(name),
            Err(bollard::errors::Error::DockerResponseServerError { message, .. })
                if subnet.is_some() && message.contains("overlap") =>
            {
                taken.extend(subnet);
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(DockerError::PoolFull(config.demo_subnets.map(|p| p.to_string()).unwrap_or_default()))
}

/// The IPv4 subnets of every network Docker has.
async fn subnets_in_use(docker: &Docker) -> Result<Vec<subnets::Cidr>, DockerError> {
    let networks = docker.list_networks(None::<bollard::query_parameters::ListNetworksOptions>).await?;
    Ok(networks
        .iter()
        .filter_map(|n| n.ipam.as_ref()?.config.as_ref())
        .flatten()
        .filter_map(|c| c.subnet.as_deref()?.parse().ok())
        .collect())
}

/// Docker answers 304 when the container already runs: that is success for us.
pub(crate) fn already_started(err: bollard::errors::Error) -> Result<(), bollard::errors::Error> {
    match err {
        bollard::errors::Error::DockerResponseServerError { status_code: 304, .. } => Ok(()),
        other => Err(other),
    }
}

/// The first TCP port the image exposes, else [`DEFAULT_PORT`].
pub(crate) fn exposed_port(image: &bollard::models::ImageConfig) -> u16 {
    let exposed = image.exposed_ports.clone().unwrap_or_default();
    let mut ports: Vec<u16> = exposed
        .iter()
        .filter_map(|p| p.strip_suffix("/tcp").or(Some(p.as_str())).filter(|_| !p.ends_with("/udp")))
        .filter_map(|p| p.parse().ok())
        .collect();
    ports.sort_unstable();
    ports.first().copied().unwrap_or(DEFAULT_PORT)
}

/// Environment every demo gets.
pub(crate) fn demo_env(spec: &DemoSpec, port: u16) -> Vec<String> {
    vec![
        format!("PORT={port}"),
        format!("DEMO_URL={}", spec.url),
        format!("DEMO_HOSTNAME={}", spec.hostname),
        format!("DEMO_PR={}", spec.pr),
        format!("DEMO_SHA={}", spec.sha),
    ]
}

/// The published port of one generation's container, if it exists.
pub async fn published_port(docker: &Docker, spec: &DemoSpec) -> Result<u16, DockerError> {
    let name = container_name(spec);
    let inspected = docker.inspect_container(&name, None).await?;
    host_port_of(&inspected).ok_or(DockerError::NoPort(name))
}

pub(crate) fn host_port_of(inspected: &bollard::models::ContainerInspectResponse) -> Option<u16> {
    let ports = inspected.network_settings.as_ref()?.ports.as_ref()?;
    ports.values().flatten().flatten().find_map(|b| b.host_port.as_deref()?.parse().ok())
}

/// Follow a demo container's output, line by line, from `since` (Unix seconds; 0: from its
/// creation) until the container stops.
pub async fn follow_logs(docker: &Docker, container: &str, since: i32, mut on_line: impl FnMut(&str)) {
    let options = LogsOptionsBuilder::default().stdout(true).stderr(true).follow(true).since(since).build();
    let mut stream = docker.logs(container, Some(options));
    let mut lines = Lines::default();
    while let Some(Ok(chunk)) = stream.next().await {
        lines.push(&chunk.to_string(), &mut on_line);
    }
    lines.finish(&mut on_line);
}

/// The longest line output is cut into; a longer one (a demo printing without newlines)
/// comes as several, so what waits for a newline stays bounded.
const MAX_LINE: usize = 16 * 1024;

/// Output that comes in chunks, cut into lines: a chunk may hold several lines, or end
/// inside one.
#[derive(Default)]
struct Lines {
    pending: String,
}

impl Lines {
    /// Take `chunk`, and give `on_line` each line it completes, without its line ending.
    fn push(&mut self, chunk: &str, on_line: &mut impl FnMut(&str)) {
        self.pending.push_str(chunk);
        let mut start = 0;
        loop {
            let rest = &self.pending[start..];
            if let Some(end) = rest.find('\n').filter(|end| *end <= MAX_LINE) {
                on_line(rest[..end].trim_end_matches('\r'));
                start += end + 1;
            } else if rest.len() > MAX_LINE {
                let cut = (0..=MAX_LINE).rev().find(|i| rest.is_char_boundary(*i)).unwrap_or(0);
                on_line(&rest[..cut]);
                start += cut;
            } else {
                break;
            }
        }
        self.pending.drain(..start);
    }

    /// The output ended: its last line, if no line ending followed it.
    fn finish(self, on_line: &mut impl FnMut(&str)) {
        if !self.pending.is_empty() {
            on_line(self.pending.trim_end_matches('\r'));
        }
    }
}

/// The last `lines` lines of a container's output, for error messages.
pub async fn log_tail(docker: &Docker, container: &str, lines: usize) -> String {
    let options = LogsOptionsBuilder::default().stdout(true).stderr(true).tail(&lines.to_string()).build();
    let mut stream = docker.logs(container, Some(options));
    let mut out = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        out.push_str(&chunk.to_string());
    }
    out.trim_end().to_string()
}

/// Containers carrying every label of `label_filters` (`key=value`), running or not.
pub(crate) async fn containers_of(
    docker: &Docker,
    label_filters: Vec<String>,
) -> Result<Vec<bollard::models::ContainerSummary>, DockerError> {
    let filters = HashMap::from([("label", label_filters)]);
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    Ok(docker.list_containers(Some(options)).await?)
}

pub(crate) async fn remove_container(docker: &Docker, id: &str) -> Result<(), DockerError> {
    let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Remove every container, image, network and volume of the demo on this host. Other
/// demos' and foreign ones are untouched.
pub async fn remove_demo(docker: &Docker, host_id: &str, spec: &DemoSpec) -> Result<(), DockerError> {
    remove_generations(docker, host_id, spec, None, false).await
}

/// Remove the containers, images and volumes of the demo's generations other than the
/// current one: after an update has switched the route to the new one. With `keep_data`
/// (a compose demo that keeps its data), kept data services and volumes stay.
pub async fn retire_older(docker: &Docker, host_id: &str, spec: &DemoSpec, keep_data: bool) -> Result<(), DockerError> {
    remove_generations(docker, host_id, spec, Some(spec.generation), keep_data).await
}

/// Remove the demo's containers, then its images, of the step's generation and older ones,
/// except those of generation `keep`. A newer generation's are left alone: a step of an
/// older chain may still run after a newer chain built its image (a pull request closed and
/// opened again). Only containers labelled with this host's id are this agent's (see
/// [`inventory`]). With `keep` and `keep_data`, what is labelled kept stays too.
async fn remove_generations(
    docker: &Docker,
    host_id: &str,
    spec: &DemoSpec,
    keep: Option<i64>,
    keep_data: bool,
) -> Result<(), DockerError> {
    let filter = of_demo(spec.id, host_id);
    let spared = |generation: i64| Some(generation) == keep || generation > spec.generation;
    let kept = |labels: Option<&HashMap<String, String>>| {
        let generation = labels.and_then(|l| l.get(labels::GENERATION)).and_then(|g| g.parse::<i64>().ok());
        let kept_data = labels.is_some_and(labels::is_kept);
        generation.is_some_and(spared) || (keep.is_some() && keep_data && kept_data)
    };
    for container in containers_of(docker, filter.clone()).await? {
        if !kept(container.labels.as_ref()) {
            remove_container(docker, container.id.as_deref().unwrap_or_default()).await?;
        }
    }
    for volume in volumes_of(docker, filter.clone()).await? {
        if !kept(Some(&volume.labels)) {
            remove_volume(docker, &volume.name).await?;
        }
    }
    // By tag, not by image id: generations built from the same commit share one image, and
    // a newer generation's build may tag it between the listing and the removal. Removing
    // a tag the image shares only untags it.
    for (tag, _) in image_tags(docker, &spec.name).await?.into_iter().filter(|(_, g)| !spared(*g)) {
        tracing::info!(image = %tag, generation = spec.generation, ?keep, "a demo's image removed");
        remove_tag(docker, &tag).await?;
    }
    // Everything goes: both networks; a retire: the network the demo no longer uses, if any.
    let current = network_name(spec);
    for network in network_names(spec).into_iter().filter(|n| keep.is_none() || *n != current) {
        match docker.remove_network(&network).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
            // Still joined by a newer generation's container: the network goes with that one.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 403 | 409, message }) => {
                tracing::debug!(%network, %message, "network in use; kept");
            }
            Err(err) => return Err(err.into()),
        }
    }
    // A compose demo's generation networks: those of the generations that go, once the kept
    // services that joined them have left.
    for network in generation_networks(docker, filter).await? {
        if !kept(network.labels.as_ref()) {
            remove_generation_network(docker, &network).await?;
        }
    }
    Ok(())
}

/// The names of the demo's generation networks on this host.
pub(crate) async fn generation_networks_of(
    docker: &Docker,
    host_id: &str,
    spec: &DemoSpec,
) -> Result<Vec<String>, DockerError> {
    Ok(generation_networks(docker, of_demo(spec.id, host_id)).await?.into_iter().filter_map(|n| n.name).collect())
}

/// The demo's generation networks (labelled with a generation) of this host.
async fn generation_networks(
    docker: &Docker,
    label_filters: Vec<String>,
) -> Result<Vec<bollard::models::Network>, DockerError> {
    let filters = HashMap::from([("label".to_string(), label_filters)]);
    let options = bollard::query_parameters::ListNetworksOptions { filters: Some(filters) };
    let networks = docker.list_networks(Some(options)).await?;
    Ok(networks.into_iter().filter(|n| n.labels.as_ref().is_some_and(|l| l.contains_key(labels::GENERATION))).collect())
}

/// Remove a generation network, disconnecting the containers still on it first (kept
/// services, which stay on the newer generations' networks).
async fn remove_generation_network(docker: &Docker, network: &bollard::models::Network) -> Result<(), DockerError> {
    let name = network.name.clone().unwrap_or_default();
    let joined = match docker.inspect_network(&name, None).await {
        Ok(inspected) => inspected.containers.unwrap_or_default(),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => return Ok(()),
        Err(err) => return Err(err.into()),
    };
    for container in joined.into_keys() {
        let request = bollard::models::NetworkDisconnectRequest { container, force: Some(true) };
        match docker.disconnect_network(&name, request).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(err) => return Err(err.into()),
        }
    }
    match docker.remove_network(&name).await {
        Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// The volumes carrying every label of `label_filters` (`key=value`).
pub(crate) async fn volumes_of(
    docker: &Docker,
    label_filters: Vec<String>,
) -> Result<Vec<bollard::models::Volume>, DockerError> {
    let filters = HashMap::from([("label", label_filters)]);
    let options = ListVolumesOptionsBuilder::default().filters(&filters).build();
    Ok(docker.list_volumes(Some(options)).await?.volumes.unwrap_or_default())
}

/// Remove a volume; one still in use (by a container of a newer generation) is kept.
async fn remove_volume(docker: &Docker, name: &str) -> Result<(), DockerError> {
    match docker.remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>).await {
        Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, message }) => {
            tracing::debug!(volume = %name, %message, "volume in use; kept");
            Ok(())
        }
        Err(err) => Err(err.into()),
    }
}

/// Remove one image tag; the image goes with its last tag.
async fn remove_tag(docker: &Docker, tag: &str) -> Result<(), DockerError> {
    match docker.remove_image(tag, Some(RemoveImageOptionsBuilder::default().build()), None).await {
        Ok(_) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
        // Used by a container demofleet did not make (someone ran one from the demo's
        // image by hand): the image is kept for it, and the teardown goes on.
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, message }) => {
            tracing::warn!(image = %tag, %message, "image used by a container that is not a demo's; kept");
            Ok(())
        }
        Err(err) => Err(err.into()),
    }
}

/// Every demo container of this host, from Docker's labels: those labelled with its host id.
/// An engine may also run another fleet's demos (a second fleet tried out on the same
/// machine, under other host ids); those are that fleet's agent's, never this one's.
/// A compose demo's kept container serves the demo's newest generation on this host, and
/// is listed as that generation's.
pub async fn inventory(docker: &Docker, host_id: &str) -> Result<Vec<InventoryItem>, DockerError> {
    let mut items: Vec<(InventoryItem, bool)> = demo_containers(docker, host_id)
        .await?
        .into_iter()
        .filter_map(|c| {
            let labels = c.labels?;
            let item = InventoryItem {
                demo_id: labels.get(labels::ID)?.parse().ok()?,
                generation: labels.get(labels::GENERATION)?.parse().ok()?,
                container_id: c.id?,
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
            };
            Some((item, labels::is_kept(&labels)))
        })
        .collect();
    let mut newest: HashMap<uuid::Uuid, i64> = HashMap::new();
    for (item, _) in &items {
        let generation = newest.entry(item.demo_id).or_insert(item.generation);
        *generation = (*generation).max(item.generation);
    }
    for (item, kept) in &mut items {
        if *kept {
            item.generation = newest[&item.demo_id];
        }
    }
    Ok(items.into_iter().map(|(item, _)| item).collect())
}

/// Remove the containers `ids` that are demo containers of this host; any other id is
/// left alone. Returns how many were removed.
///
/// A demo left with no container here loses its volumes and generation networks too: it
/// has moved or gone.
pub async fn remove_orphans(docker: &Docker, host_id: &str, ids: &[String]) -> Result<usize, DockerError> {
    let mut removed = 0;
    let mut demos = Vec::new();
    for container in demo_containers(docker, host_id).await? {
        let Some(id) = container.id.filter(|id| ids.contains(id)) else { continue };
        remove_container(docker, &id).await?;
        removed += 1;
        demos.extend(container.labels.and_then(|mut l| l.remove(labels::ID)));
    }
    let left: Vec<String> =
        demo_containers(docker, host_id).await?.into_iter().filter_map(|c| c.labels?.remove(labels::ID)).collect();
    for demo in demos.iter().filter(|d| !left.contains(d)) {
        let filter = of_demo(demo, host_id);
        for volume in volumes_of(docker, filter.clone()).await? {
            remove_volume(docker, &volume.name).await?;
        }
        for network in generation_networks(docker, filter).await? {
            remove_generation_network(docker, &network).await?;
        }
    }
    Ok(removed)
}

/// The demo containers (`run.demo=true`) of `host_id` on this host's engine.
async fn demo_containers(
    docker: &Docker,
    host_id: &str,
) -> Result<Vec<bollard::models::ContainerSummary>, DockerError> {
    containers_of(docker, vec![format!("{}=true", labels::DEMO), format!("{}={host_id}", labels::HOST)]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_in_chunks_is_cut_into_lines() {
        let mut seen = Vec::new();
        let mut lines = Lines::default();
        let mut on_line = |line: &str| seen.push(line.to_string());
        // Several lines in one chunk, a line across two, an empty one, a Windows ending.
        for chunk in ["one\ntwo\nthr", "ee\n", "\nfour\r\n", "", "fi", "ve"] {
            lines.push(chunk, &mut on_line);
        }
        lines.finish(&mut on_line);
        assert_eq!(seen, ["one", "two", "three", "", "four", "five"]);

        // Output without newlines comes in lines of at most MAX_LINE bytes, cut between
        // characters.
        let mut seen = Vec::new();
        let mut lines = Lines::default();
        let long = "é".repeat(MAX_LINE);
        for _ in 0..3 {
            lines.push(&long, &mut |line: &str| seen.push(line.len()));
            assert!(lines.pending.len() <= MAX_LINE, "{} bytes wait", lines.pending.len());
        }
        lines.push("\n", &mut |line: &str| seen.push(line.len()));
        assert!(seen.iter().all(|n| *n <= MAX_LINE && *n > 0), "{seen:?}");
        assert_eq!(seen.iter().sum::<usize>(), 3 * long.len());
    }

    #[test]
    fn demo_bridges_are_named_for_the_firewall() {
        let bridge = demo_bridge("demofleet-site-o-pr-1", false);
        assert!(bridge.starts_with(DEMO_BRIDGE_PREFIX) && bridge.len() == 15, "{bridge}");
        assert_eq!(bridge, demo_bridge("demofleet-site-o-pr-1", false), "stable");
        assert_ne!(bridge, demo_bridge("demofleet-site-o-pr-2", false));
        let closed = demo_bridge("demofleet-site-o-pr-1-closed", true);
        assert!(closed.starts_with(CLOSED_BRIDGE_PREFIX) && closed.len() == 15, "{closed}");
    }

    #[test]
    fn image_tags_name_their_generation() {
        assert_eq!(generation_of_tag("site-o-pr-1", "demofleet/site-o-pr-1:g12"), Some(12));
        assert_eq!(generation_of_tag("site-o-pr-1", "demofleet/site-o-pr-1:g12-0a1b2c"), Some(12));
        let spec = crate::legacy::tests::spec("alice");
        let (one, two) = (new_image_tag(&spec, None), new_image_tag(&spec, None));
        assert_ne!(one, two, "a random token per build");
        assert_eq!(generation_of_tag(&spec.name, &one), Some(spec.generation));
        assert_eq!(generation_of_tag("site-o-pr-1", "demofleet/site-o-pr-10:g1"), None, "another demo");
        assert_eq!(generation_of_tag("site-o-pr-1", "demofleet/site-o-pr-1:latest"), None);
        let web = new_image_tag(&spec, Some("web"));
        assert_eq!(generation_of_tag(&spec.name, &web), Some(spec.generation), "a compose service's");
        assert_eq!((service_of_tag(&spec.name, &web), service_of_tag(&spec.name, &one)), (Some("web"), None));
    }
}
