//! Compose mode: a repository's compose file (Compose Specification) read as a demo of
//! several services. The file is parsed with `docker-compose-types`; what the agent then
//! creates, it creates itself through the Docker API ([`crate::services`]), from the plan
//! made here and nothing else, so a key this module does not read has no effect. Keys that
//! would matter are refused, naming the key: a demo never runs privileged, never gets
//! capabilities, devices, the host's process or network namespace, or a host path.
//!
//! Every service is on the demo's one network, reachable by its service name. Only the
//! routed service is published (on the host's address, as a single-container demo); the
//! host side of `ports` is not used.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use docker_compose_types as dc;

use crate::demo_config::{existing, is_relative_inside, is_variable_name, read_small, PlanError};

/// Compose files picked up at the repository root when it has no `.demofleet.toml`, in
/// this order (Docker Compose's own order of preference).
pub const ROOT_FILES: [&str; 4] = ["compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml"];

/// The longest service or volume name: it becomes part of container, volume and tag names.
const MAX_NAME: usize = 40;

/// What the agent runs for a compose demo, after checks.
#[derive(Debug, Clone, PartialEq)]
pub struct ComposePlan {
    /// Every service, dependencies before what depends on them.
    pub services: Vec<Service>,
    /// The named volumes the file declares.
    pub volumes: Vec<String>,
    /// The service the demo's hostname routes to.
    pub routed: String,
    pub seed: Option<Seed>,
    /// Named volumes belong to the demo and outlive a push (default); `reset = "on_push"`:
    /// each generation starts from empty ones.
    pub keep_data: bool,
}

impl ComposePlan {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// A service whose containers are kept from one generation to the next, so that its
    /// data service keeps serving through an update: one that mounts a named volume, is
    /// not the routed one, and whose data is kept.
    pub fn is_kept(&self, service: &Service) -> bool {
        self.keep_data && service.name != self.routed && !service.mounts.is_empty()
    }
}

/// A command run once in a service's image, environment and volumes, after the service's
/// dependencies are met and before it starts (a migration, a fixture load).
#[derive(Debug, Clone, PartialEq)]
pub struct Seed {
    pub service: String,
    /// Run with `/bin/sh -c`.
    pub command: String,
    /// Run at every launch; else only when the demo's data is new.
    pub always: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    /// Built from the repository; `None`: `image` as it is.
    pub build: Option<Build>,
    pub image: Option<String>,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    /// `NAME=value`, from `env_file` then `environment`.
    pub env: Vec<String>,
    pub health: Option<Health>,
    pub depends_on: Vec<(String, Condition)>,
    pub mounts: Vec<Mount>,
    /// The first port of `ports`, else of `expose`.
    pub port: Option<u16>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Build {
    /// Inside the clone.
    pub context: PathBuf,
    /// Relative to the context.
    pub dockerfile: String,
    pub args: HashMap<String, String>,
    pub target: Option<String>,
}

/// A healthcheck as Docker takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// `["CMD", …]`, `["CMD-SHELL", …]` or `["NONE"]`.
    pub test: Vec<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub start_period: Option<Duration>,
    pub retries: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Started,
    Healthy,
    CompletedSuccessfully,
}

/// A named volume of the demo mounted into a service.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub volume: String,
    pub target: String,
    pub read_only: bool,
}

/// What `.demofleet.toml` says about a compose demo.
#[derive(Debug, Default)]
pub struct Settings<'a> {
    pub routed: Option<&'a str>,
    pub seed: Option<Seed>,
    pub keep_data: bool,
}

/// Parse a compose file; the error says where it is wrong.
pub fn parse(text: &str) -> Result<dc::Compose, String> {
    serde_norway::from_str(text).map_err(|e| e.to_string())
}

/// The services that publish a port: a root compose file is picked up without
/// `.demofleet.toml` when exactly one does.
pub fn publishing(compose: &dc::Compose) -> Vec<String> {
    let services = compose.services.0.iter();
    services.filter(|(_, s)| s.as_ref().is_some_and(|s| !s.ports.is_empty())).map(|(name, _)| name.clone()).collect()
}

/// Keys of a service read here; any other is refused.
const SUPPORTED: [&str; 15] = [
    "build",
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "depends_on",
    "healthcheck",
    "volumes",
    "expose",
    "ports",
    "working_dir",
    "user",
    // Every service restarts unless stopped and is on the demo's own network, whatever
    // these say.
    "restart",
    "networks",
];

/// Why a key that would weaken the fence around a demo is refused.
fn refusal(key: &str) -> Option<&'static str> {
    Some(match key {
        "privileged" => "demos never run privileged",
        "cap_add" => "demos run with no capabilities",
        "devices" => "demos get no host devices",
        "pid" => "demos never share another process namespace (the host's included)",
        "network_mode" => "every service is on the demo's own network; a host network is never given",
        "ipc" | "userns_mode" | "cgroup_parent" | "uts" => "demos never share a namespace of the host",
        "security_opt" | "sysctls" => "demos keep the agent's confinement",
        "volumes_from" => "demos mount only their own named volumes",
        "container_name" | "labels" => "the agent names and labels every container of a demo itself",
        _ => return None,
    })
}

/// Check the parsed `compose` file (`file_name` in messages), read from the folder `base`
/// of the clone `root`, under `settings`.
pub fn plan(
    root: &Path,
    base: &Path,
    file_name: &str,
    compose: dc::Compose,
    settings: Settings,
) -> Result<ComposePlan, PlanError> {
    let invalid = |message: String| PlanError::Invalid(format!("{file_name}: {message}"));
    let refused = |message: String| PlanError::Refused(format!("{file_name}: {message}"));
    if compose.includes.is_some() {
        return Err(invalid("`include` is not supported: put every service in one file".into()));
    }
    if compose.secrets.is_some() || compose.service.is_some() {
        let key = if compose.secrets.is_some() { "secrets" } else { "service" };
        return Err(invalid(format!(
            "top-level `{key}` is not supported (secrets are the repository's, set by an admin)"
        )));
    }
    let mut volumes = Vec::new();
    for (name, volume) in &compose.volumes.0 {
        check_name("volume", name).map_err(invalid)?;
        if let dc::MapOrEmpty::Map(volume) = volume {
            if volume.driver.as_deref().is_some_and(|d| d != "local") || !volume.driver_opts.is_empty() {
                return Err(refused(format!(
                    "volume {name:?}: `driver`/`driver_opts` are refused: a demo's volumes are plain local volumes \
                     (driver options can mount a host path)"
                )));
            }
            if volume.external.is_some() || volume.name.is_some() {
                return Err(refused(format!(
                    "volume {name:?}: `external`/`name` are refused: a demo's volumes are its own, named by the agent"
                )));
            }
        }
        volumes.push(name.clone());
    }
    let mut services = Vec::new();
    for (name, service) in &compose.services.0 {
        check_name("service", name).map_err(invalid)?;
        let service = service.as_ref().ok_or_else(|| invalid(format!("service {name:?} is empty")))?;
        let in_service = |message: String| format!("service {name:?}: {message}");
        check_keys(service).map_err(|(key, why)| match why {
            Some(why) => refused(in_service(format!("`{key}` is refused: {why}"))),
            None => invalid(in_service(format!("`{key}` is not supported in a demo"))),
        })?;
        services.push(read_service(root, base, name, service, &volumes).map_err(|e| match e {
            PlanError::Invalid(m) => invalid(in_service(m)),
            PlanError::Refused(m) => refused(in_service(m)),
            other => other,
        })?);
    }
    if services.is_empty() {
        return Err(invalid("it has no services".into()));
    }
    let services = start_order(services).map_err(invalid)?;
    let routed = match settings.routed {
        Some(routed) => routed.to_string(),
        None => match publishing(&compose).as_slice() {
            [only] => only.clone(),
            _ => {
                return Err(invalid(
                    "name the service the demo's address routes to with `service` in .demofleet.toml \
                     (the file has no single service with `ports`)"
                        .into(),
                ))
            }
        },
    };
    if !services.iter().any(|s| s.name == routed) {
        return Err(invalid(format!("the routed service {routed:?} is not one of its services")));
    }
    if let Some(seed) = &settings.seed {
        if !services.iter().any(|s| s.name == seed.service) {
            return Err(invalid(format!("the seed's service {:?} is not one of its services", seed.service)));
        }
    }
    Ok(ComposePlan { services, volumes, routed, seed: settings.seed, keep_data: settings.keep_data })
}

/// Service and volume names become parts of container, volume and image tag names.
fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = name.len() <= MAX_NAME
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} name {name:?} must be letters, digits, _ . - (at most {MAX_NAME}), starting with a letter or digit"
        ))
    }
}

/// The first key of `service` that is set and not read here, with the reason it is
/// refused when it would weaken the demo's fence.
fn check_keys(service: &dc::Service) -> Result<(), (String, Option<&'static str>)> {
    let written = serde_json::to_value(service).unwrap_or_default();
    let keys = written.as_object().map(|o| o.keys().cloned().collect::<BTreeSet<_>>()).unwrap_or_default();
    // The fence's keys first, so a file with several names the one that matters.
    if let Some(key) = keys.iter().find(|k| refusal(k).is_some()) {
        return Err((key.clone(), refusal(key)));
    }
    match keys.into_iter().find(|k| !SUPPORTED.contains(&k.as_str()) && !k.starts_with("x-")) {
        Some(key) => Err((key, None)),
        None => Ok(()),
    }
}

fn read_service(
    root: &Path,
    base: &Path,
    name: &str,
    service: &dc::Service,
    volumes: &[String],
) -> Result<Service, PlanError> {
    let invalid = |m: String| PlanError::Invalid(m);
    let build = service.build_.as_ref().map(|b| read_build(root, base, b)).transpose()?;
    if let Some(image) = service.image.as_deref().filter(|_| build.is_none()) {
        crate::dockerfile::check(&format!("FROM {image}")).map_err(|_| {
            PlanError::Refused(format!("`image` {image:?} is a demo image; services run only from base images"))
        })?;
    }
    if build.is_none() && service.image.is_none() {
        return Err(invalid("it has neither `build` nor `image`".into()));
    }
    let mut env = Vec::new();
    if let Some(files) = &service.env_file {
        let files = match files {
            dc::StringOrList::Simple(one) => vec![one.clone()],
            dc::StringOrList::List(many) => many.clone(),
        };
        for file in files {
            env.extend(read_env_file(root, base, &file)?);
        }
    }
    match &service.environment {
        dc::Environment::List(list) => env.extend(list.iter().filter(|v| v.contains('=')).cloned()),
        dc::Environment::KvPair(pairs) => {
            env.extend(pairs.iter().filter_map(|(k, v)| Some(format!("{k}={}", v.as_ref()?))));
        }
    }
    for var in &env {
        let key = var.split('=').next().unwrap_or_default();
        if !is_variable_name(key) {
            return Err(invalid(format!("{key:?} is not a variable name")));
        }
    }
    let depends_on = match &service.depends_on {
        dc::DependsOnOptions::Simple(names) => names.iter().map(|n| (n.clone(), Condition::Started)).collect(),
        dc::DependsOnOptions::Conditional(map) => map
            .iter()
            .map(|(n, c)| {
                let condition = match c.condition.as_str() {
                    "service_started" => Condition::Started,
                    "service_healthy" => Condition::Healthy,
                    "service_completed_successfully" => Condition::CompletedSuccessfully,
                    other => return Err(invalid(format!("`depends_on` {n:?}: unknown condition {other:?}"))),
                };
                Ok((n.clone(), condition))
            })
            .collect::<Result<_, _>>()?,
    };
    let mounts = service.volumes.iter().map(|v| read_mount(v, volumes)).collect::<Result<_, _>>()?;
    let ports: Vec<String> = match &service.ports {
        dc::Ports::Short(ports) => ports.clone(),
        dc::Ports::Long(ports) => ports.iter().map(|p| p.target.to_string()).collect(),
    };
    let port = ports
        .iter()
        .chain(&service.expose)
        .map(|p| container_port(p).ok_or_else(|| invalid(format!("port {p:?} is not a port"))))
        .next()
        .transpose()?;
    Ok(Service {
        name: name.to_string(),
        build,
        image: service.image.clone(),
        command: service.command.as_ref().map(words).transpose().map_err(invalid)?,
        entrypoint: service.entrypoint.as_ref().map(entrypoint_words).transpose().map_err(invalid)?,
        env,
        health: service.healthcheck.as_ref().map(read_health).transpose().map_err(invalid)?,
        depends_on,
        mounts,
        port,
        working_dir: service.working_dir.clone(),
        user: service.user.clone(),
    })
}

fn read_build(root: &Path, base: &Path, build: &dc::BuildStep) -> Result<Build, PlanError> {
    let invalid = |m: String| PlanError::Invalid(m);
    let (context, dockerfile, args, target) = match build {
        dc::BuildStep::Simple(context) => (context.clone(), None, HashMap::new(), None),
        dc::BuildStep::Advanced(build) => {
            if build.dockerfile_inline.is_some() || build.network.is_some() {
                let key = if build.network.is_some() { "network" } else { "dockerfile_inline" };
                return Err(invalid(format!("`build.{key}` is not supported in a demo")));
            }
            let args = match &build.args {
                None => HashMap::new(),
                Some(dc::BuildArgs::Simple(one)) => pairs([one.clone()]),
                Some(dc::BuildArgs::List(list)) => pairs(list.iter().cloned()),
                Some(dc::BuildArgs::KvPair(map)) => map.clone().into_iter().collect(),
            };
            (build.context.clone(), build.dockerfile.clone(), args, build.target.clone())
        }
    };
    if !is_relative_inside(context.trim_start_matches("./")) && context != "." {
        return Err(invalid(format!("`build` context {context:?} must be a folder inside the repository")));
    }
    let context_dir = existing(root, base, &context)?
        .filter(|c| c.is_dir())
        .ok_or_else(|| invalid(format!("`build` context {context:?} is not a folder of the repository")))?;
    let dockerfile = dockerfile.unwrap_or_else(|| "Dockerfile".into());
    if !is_relative_inside(&dockerfile) {
        return Err(invalid(format!("`build.dockerfile` {dockerfile:?} must be a path inside the build context")));
    }
    let path = existing(root, &context_dir, &dockerfile)?
        .filter(|p| p.is_file())
        .ok_or_else(|| invalid(format!("`build.dockerfile` {dockerfile:?} does not exist in {context:?}")))?;
    crate::dockerfile::check(&read_small(&path, &dockerfile)?)
        .map_err(|e| PlanError::Refused(format!("{dockerfile}: {e}")))?;
    for key in args.keys() {
        if !is_variable_name(key) {
            return Err(invalid(format!("build argument {key:?} is not a variable name")));
        }
    }
    Ok(Build { context: context_dir, dockerfile, args, target })
}

/// `NAME=value` items as a map; an item with no value is left out (it would come from the
/// shell Docker Compose runs in, which a demo has none of).
fn pairs(items: impl IntoIterator<Item = String>) -> HashMap<String, String> {
    items.into_iter().filter_map(|i| i.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect()
}

/// An `env_file` of the repository: `NAME=value` lines; blank lines and `#` comments skipped,
/// one pair of quotes around a value taken off.
fn read_env_file(root: &Path, base: &Path, file: &str) -> Result<Vec<String>, PlanError> {
    if !is_relative_inside(file.trim_start_matches("./")) {
        return Err(PlanError::Invalid(format!("`env_file` {file:?} must be a file inside the repository")));
    }
    let path = existing(root, base, file)?
        .filter(|p| p.is_file())
        .ok_or_else(|| PlanError::Invalid(format!("`env_file` {file:?} does not exist")))?;
    let text = read_small(&path, file)?;
    let lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
    Ok(lines
        .filter_map(|line| {
            let (key, value) = line.strip_prefix("export ").unwrap_or(line).split_once('=')?;
            let value = value.trim();
            let unquoted = ['"', '\'']
                .iter()
                .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
                .unwrap_or(value);
            Some(format!("{}={unquoted}", key.trim()))
        })
        .collect())
}

/// A service's `volumes` entry: a named volume the file declares, never a host path.
fn read_mount(volume: &dc::Volumes, declared: &[String]) -> Result<Mount, PlanError> {
    let (source, target, read_only, kind) = match volume {
        dc::Volumes::Simple(short) => {
            let parts: Vec<&str> = short.split(':').collect();
            match parts.as_slice() {
                [source, target] => (source.to_string(), target.to_string(), false, "volume"),
                [source, target, mode] => {
                    (source.to_string(), target.to_string(), mode.split(',').any(|m| m == "ro"), "volume")
                }
                _ => {
                    return Err(PlanError::Invalid(format!(
                        "`volumes` entry {short:?} has no volume name: name one the file declares (`data:/path`)"
                    )))
                }
            }
        }
        dc::Volumes::Advanced(long) => {
            if long.volume.as_ref().is_some_and(|v| v.subpath.is_some()) {
                return Err(PlanError::Invalid("`volumes` entry with `subpath` is not supported".into()));
            }
            let kind = match long._type.as_str() {
                "volume" => "volume",
                "bind" => "bind",
                other => return Err(PlanError::Invalid(format!("`volumes` entry of type {other:?} is not supported"))),
            };
            (long.source.clone().unwrap_or_default(), long.target.clone(), long.read_only, kind)
        }
    };
    let host_path = kind == "bind" || source.starts_with(['/', '.', '~']) || source.contains('/');
    if host_path {
        return Err(PlanError::Refused(format!(
            "`volumes` entry {source:?} -> {target:?} is a host bind mount, which is refused: demos get no host \
             paths, only named volumes the file declares"
        )));
    }
    if !declared.contains(&source) {
        return Err(PlanError::Invalid(format!(
            "`volumes` entry {source:?} is not declared in the file's top-level `volumes`"
        )));
    }
    Ok(Mount { volume: source, target, read_only })
}

/// The container's side of a `ports` or `expose` item (`8080`, `80:8080`,
/// `127.0.0.1:80:8080/tcp`, `3000-3005`: the first).
fn container_port(item: &str) -> Option<u16> {
    let without_protocol = item.split('/').next()?;
    let container = without_protocol.rsplit(':').next()?;
    let first = container.split('-').next()?;
    first.parse().ok().filter(|p| *p > 0)
}

/// A `command`: a list as it is; a string split as a shell would split its words (Docker
/// Compose's rule; no shell runs it).
fn words(command: &dc::Command) -> Result<Vec<String>, String> {
    match command {
        dc::Command::Args(args) => Ok(args.clone()),
        dc::Command::Simple(line) => shlex::split(line).ok_or_else(|| format!("`command` {line:?} has an open quote")),
    }
}

fn entrypoint_words(entrypoint: &dc::Entrypoint) -> Result<Vec<String>, String> {
    match entrypoint {
        dc::Entrypoint::List(args) => Ok(args.clone()),
        dc::Entrypoint::Simple(line) => {
            shlex::split(line).ok_or_else(|| format!("`entrypoint` {line:?} has an open quote"))
        }
    }
}

fn read_health(health: &dc::Healthcheck) -> Result<Health, String> {
    let test = if health.disable {
        vec!["NONE".to_string()]
    } else {
        match &health.test {
            None => return Err("`healthcheck` has no `test`".into()),
            Some(dc::HealthcheckTest::Single(line)) => vec!["CMD-SHELL".to_string(), line.clone()],
            Some(dc::HealthcheckTest::Multiple(list)) => {
                if !matches!(list.first().map(String::as_str), Some("CMD" | "CMD-SHELL" | "NONE")) {
                    return Err("`healthcheck.test` must start with CMD, CMD-SHELL or NONE".into());
                }
                list.clone()
            }
        }
    };
    let duration = |key: &str, raw: &Option<String>| {
        raw.as_deref()
            .map(|r| compose_duration(r).ok_or_else(|| format!("`healthcheck.{key}` {r:?} is not a duration")))
    };
    Ok(Health {
        test,
        interval: duration("interval", &health.interval).transpose()?,
        timeout: duration("timeout", &health.timeout).transpose()?,
        start_period: duration("start_period", &health.start_period).transpose()?,
        retries: (health.retries > 0).then_some(health.retries),
    })
}

/// A Compose duration: `1m30s`, `500ms`, `10s`, `1h` (units us, ms, s, m, h, in sequence).
fn compose_duration(raw: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = raw.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "us" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * seconds;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).ok()
}

/// The services in an order where each comes after what it depends on.
fn start_order(mut services: Vec<Service>) -> Result<Vec<Service>, String> {
    let names: BTreeSet<String> = services.iter().map(|s| s.name.clone()).collect();
    for service in &services {
        if let Some((missing, _)) = service.depends_on.iter().find(|(d, _)| !names.contains(d)) {
            return Err(format!("service {:?} depends on {missing:?}, which is not one of its services", service.name));
        }
    }
    let mut ordered: Vec<Service> = Vec::new();
    while !services.is_empty() {
        let ready = services
            .iter()
            .position(|s| s.depends_on.iter().all(|(d, _)| ordered.iter().any(|o| &o.name == d)))
            .ok_or_else(|| {
                let left: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
                format!("the services {left:?} depend on each other in a cycle")
            })?;
        ordered.push(services.remove(ready));
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(compose: &str, files: &[(&str, &str)], settings: Settings) -> Result<ComposePlan, PlanError> {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let root = dir.path().canonicalize().unwrap();
        let parsed = parse(compose).map_err(PlanError::Invalid)?;
        plan(&root, &root, "compose.yaml", parsed, settings)
    }

    const APP: &str = "
services:
  web:
    build: ./web
    ports: ['127.0.0.1:80:8080']
    environment:
      PGHOST: db
      EMPTY:
    env_file: web.env
    depends_on:
      db:
        condition: service_healthy
  db:
    image: demofleet/postgres:15
    command: postgres -c 'fsync=off'
    volumes: ['data:/var/lib/postgresql/data']
    healthcheck:
      test: pg_isready
      interval: 1s
      timeout: 1m30s
      retries: 30
volumes:
  data:
";

    #[test]
    fn a_two_service_app_is_read_in_start_order() {
        let files = [("web/Dockerfile", "FROM x"), ("web.env", "# comment\nA=\"1\"\nexport B=2\n")];
        let plan = plan_of(APP, &files, Settings { keep_data: true, ..Default::default() }).unwrap();
        let names: Vec<&str> = plan.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["db", "web"]);
        assert_eq!(plan.routed, "web", "the one service with ports");
        let (db, web) = (&plan.services[0], &plan.services[1]);
        assert_eq!(db.command.as_deref().unwrap(), ["postgres", "-c", "fsync=off"]);
        assert_eq!(
            db.mounts,
            [Mount { volume: "data".into(), target: "/var/lib/postgresql/data".into(), read_only: false }]
        );
        let health = db.health.as_ref().unwrap();
        assert_eq!(health.test, ["CMD-SHELL", "pg_isready"]);
        assert_eq!((health.interval, health.timeout), (Some(Duration::from_secs(1)), Some(Duration::from_secs(90))));
        assert!(plan.is_kept(db) && !plan.is_kept(web));
        assert_eq!(web.port, Some(8080));
        assert_eq!(web.env, ["A=1", "B=2", "PGHOST=db"], "env_file first, a name without a value left out");
        assert_eq!(web.depends_on, [("db".to_string(), Condition::Healthy)]);
        assert!(web.build.as_ref().unwrap().context.ends_with("web"));
    }

    #[test]
    fn keys_that_weaken_the_fence_are_refused_by_name() {
        for (service, expect) in [
            ("image: x\n    privileged: true", "`privileged` is refused"),
            ("image: x\n    cap_add: [SYS_ADMIN]", "`cap_add` is refused"),
            ("image: x\n    devices: ['/dev/kvm:/dev/kvm']", "`devices` is refused"),
            ("image: x\n    pid: host", "`pid` is refused"),
            ("image: x\n    network_mode: host", "`network_mode` is refused"),
            ("image: x\n    volumes: ['/var/run/docker.sock:/var/run/docker.sock']", "host bind mount"),
            ("image: x\n    volumes: ['./src:/src']", "host bind mount"),
            ("image: x\n    volumes: [{type: bind, source: data, target: /x}]", "host bind mount"),
            ("image: x\n    labels: {run.demo.id: other}", "`labels` is refused"),
            ("image: x\n    stop_signal: SIGINT", "`stop_signal` is not supported"),
            ("image: demofleet/site-o-pr-1:g3-abc", "is a demo image"),
            ("build: ../..", "must be a folder inside the repository"),
            ("image: x\n    wat: 1", "unknown attribute \"wat\""),
        ] {
            let compose = format!("services:\n  app:\n    {service}\nvolumes:\n  data:\n");
            let err = plan_of(&compose, &[], Settings::default()).unwrap_err().to_string();
            assert!(err.contains(expect), "{service}: {err}");
        }
        let driver =
            "services:\n  a:\n    image: x\nvolumes:\n  data:\n    driver_opts: {type: none, o: bind, device: /etc}\n";
        let err = plan_of(driver, &[], Settings::default()).unwrap_err().to_string();
        assert!(err.contains("driver_opts"), "{err}");
    }

    #[test]
    fn the_routed_service_and_the_order_must_make_sense() {
        let two = "services:\n  a:\n    image: x\n    ports: ['80']\n  b:\n    image: x\n    ports: ['81']\n";
        let err = plan_of(two, &[], Settings::default()).unwrap_err().to_string();
        assert!(err.contains("name the service"), "{err}");
        assert_eq!(plan_of(two, &[], Settings { routed: Some("b"), ..Default::default() }).unwrap().routed, "b");
        let err = plan_of(two, &[], Settings { routed: Some("c"), ..Default::default() }).unwrap_err().to_string();
        assert!(err.contains("\"c\" is not one of its services"), "{err}");
        let cycle = "services:\n  a:\n    image: x\n    ports: ['80']\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [a]\n";
        let err = plan_of(cycle, &[], Settings::default()).unwrap_err().to_string();
        assert!(err.contains("cycle"), "{err}");
    }

    #[test]
    fn durations_and_ports_read_as_compose_writes_them() {
        assert_eq!(compose_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(compose_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(compose_duration("5 parsecs"), None);
        assert_eq!(container_port("127.0.0.1:80:8080/tcp"), Some(8080));
        assert_eq!(container_port("3000-3005"), Some(3000));
        assert_eq!(container_port("web"), None);
    }
}
