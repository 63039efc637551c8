//! Agent settings: every one a flag and a `DEMOFLEET_*` variable, with defaults that work
//! on one machine.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use demofleet_common::duration::parse_duration;
use demofleet_common::messaging::Messaging;

#[derive(Debug, Clone, Parser)]
#[command(name = "demofleet-agent", version, about = "demofleet agent: runs the demos of one Docker host")]
pub struct Config {
    /// This host's id in the fleet; its queue is `demofleet.host.<id>`. Default: the hostname.
    #[arg(long, env = "DEMOFLEET_HOST_ID")]
    pub host_id: Option<String>,

    #[command(flatten)]
    pub messaging: Messaging,

    /// The controller's broker user: a step or cleanup message is taken only when RabbitMQ
    /// says that user sent it (its `user_id`), so another host, which may also publish on the
    /// tasks exchange, cannot give this one work. Default: this agent's own user, for a fleet
    /// whose agents share the controller's (one machine); enrolment gives each host its own
    /// user and this setting.
    #[arg(long, env = "DEMOFLEET_CONTROLLER_AMQP_USER")]
    pub controller_amqp_user: Option<String>,

    /// The Docker Engine of this host: a Unix socket path (`unix://` optional). Default:
    /// Docker's own (`DOCKER_HOST`, else `/var/run/docker.sock`).
    #[arg(long, env = "DEMOFLEET_DOCKER_HOST")]
    pub docker_host: Option<String>,

    /// Where clones live, one folder per demo.
    #[arg(long, env = "DEMOFLEET_DEMO_DIR", default_value = "/srv/demos")]
    pub demo_dir: PathBuf,

    /// The address the edge reaches this host's demos on; demo ports are published there.
    #[arg(long, env = "DEMOFLEET_HOST_ADDRESS", default_value = "127.0.0.1")]
    pub host_address: String,

    /// Publish demo ports on this address instead of the host address: `0.0.0.0` behind
    /// NAT, where the host address is not one of the machine's own.
    #[arg(long, env = "DEMOFLEET_PUBLISH_ADDRESS")]
    pub publish_address: Option<String>,

    /// How many demos this host may run.
    #[arg(long, env = "DEMOFLEET_CAPACITY", default_value_t = 10)]
    pub capacity: u32,

    /// Steps run at the same time.
    #[arg(long, env = "DEMOFLEET_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,

    /// A file holding a token that may read the demos' repositories (a GitHub App
    /// installation token or a fine-grained read-only token), read at each checkout so it
    /// can be rotated in place. It reaches git through the environment of the fetch only:
    /// never the clone's `.git/config`, the command line or the logs.
    #[arg(long, env = "DEMOFLEET_GIT_TOKEN_FILE")]
    pub git_token_file: Option<std::path::PathBuf>,

    /// A folder whose repositories may be fetched through `file://` clone URLs (a mirror on
    /// this machine; the tests' fixtures). Unset: only `https://` and `http://` URLs.
    #[arg(long, env = "DEMOFLEET_GIT_LOCAL_ROOT")]
    pub git_local_root: Option<PathBuf>,

    /// How long fetching and checking out a commit may take.
    #[arg(long, env = "DEMOFLEET_CHECKOUT_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub checkout_timeout: Duration,

    /// A file holding the key shared with the controller (its
    /// `DEMOFLEET_SECRETS_TRANSPORT_KEY_FILE`): 32 random bytes, raw or as 64 hex digits. A
    /// launch's repository secrets arrive sealed with it; read at each launch. Unset: a demo
    /// whose repository has secrets is refused at launch.
    #[arg(long, env = "DEMOFLEET_SECRETS_TRANSPORT_KEY_FILE")]
    pub secrets_transport_key_file: Option<PathBuf>,

    #[command(flatten)]
    pub build: BuildLimits,

    /// On SIGTERM, how long steps in flight may take to finish; those still running then
    /// are given back to the queue and run again by the next agent of this host (steps are
    /// idempotent). Keep it below the service manager's stop timeout.
    #[arg(long, env = "DEMOFLEET_SHUTDOWN_GRACE", default_value = "10m", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// How often to send a heartbeat.
    #[arg(long, env = "DEMOFLEET_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// How long the older generations of a demo keep running after the route moved to the
    /// new one, so that requests already sent to them finish, before they are removed.
    #[arg(long, env = "DEMOFLEET_RETIRE_DRAIN", default_value = "2s", value_parser = parse_duration)]
    pub retire_drain: Duration,

    /// How long a new demo may take to answer its health check.
    #[arg(long, env = "DEMOFLEET_HEALTH_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub health_timeout: Duration,

    /// Memory limit of each demo container, in MiB.
    #[arg(long, env = "DEMOFLEET_DEMO_MEMORY_MB", default_value_t = 512)]
    pub demo_memory_mb: u32,

    /// CPU limit of each demo container, in cores.
    #[arg(long, env = "DEMOFLEET_DEMO_CPUS", default_value_t = 1.0)]
    pub demo_cpus: f64,

    /// Variables passed into every demo, `NAME=VALUE` (besides this process's own
    /// `DEMO_OPT_*` variables, which are passed as they are).
    #[arg(long = "demo-opt", env = "DEMOFLEET_DEMO_OPTS", value_delimiter = ',')]
    pub demo_opt: Vec<String>,

    /// Process limit of each demo container.
    #[arg(long, env = "DEMOFLEET_DEMO_PIDS", default_value_t = 256)]
    pub demo_pids: u32,

    /// The user demo containers run as when their image names none or root (`uid:gid`);
    /// an image's own non-root user is kept. On an engine that remaps user namespaces
    /// (`userns-remap`), root in the image is kept instead: it is no one on the host.
    #[arg(long, env = "DEMOFLEET_DEMO_USER", default_value = "65534:65534", value_parser = parse_user)]
    pub demo_user: String,

    /// Size at which a demo container's log file is rotated (Docker's `max-size`: `10m`, `512k`).
    #[arg(long, env = "DEMOFLEET_DEMO_LOG_MAX_SIZE", default_value = "10m")]
    pub demo_log_max_size: String,

    /// Log files kept per demo container (Docker's `max-file`).
    #[arg(long, env = "DEMOFLEET_DEMO_LOG_FILES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub demo_log_files: u32,

    /// IPv4 pool for demo networks, cut into /28s (e.g. 10.213.0.0/16: 4,096 demos);
    /// unset: Docker's default address pools (about 30 networks per host).
    #[arg(long, env = "DEMOFLEET_DEMO_SUBNETS")]
    pub demo_subnets: Option<crate::subnets::Cidr>,
}

/// What one image build may use.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildLimits {
    /// How long one image build may take before it is stopped and fails.
    #[arg(long = "build-timeout", env = "DEMOFLEET_BUILD_TIMEOUT", default_value = "20m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Memory of each build step's container, in MiB (at most 2047: the Docker API
    /// client's limit).
    #[arg(long = "build-memory-mb", env = "DEMOFLEET_BUILD_MEMORY_MB", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(16..=2047))]
    pub memory_mb: u32,

    /// CPUs of each build step's container.
    #[arg(long = "build-cpus", env = "DEMOFLEET_BUILD_CPUS", default_value_t = 1.0)]
    pub cpus: f64,

    /// The largest build context sent to Docker, in MiB (the clone without `.git`).
    #[arg(long = "build-context-mb", env = "DEMOFLEET_BUILD_CONTEXT_MB", default_value_t = 256)]
    pub context_mb: u64,

    /// Free space, in MiB, that the demo folder's and Docker's file systems must have
    /// before a checkout or a build starts; with less, the step fails (and is retried).
    #[arg(long = "build-min-free-disk-mb", env = "DEMOFLEET_BUILD_MIN_FREE_DISK_MB", default_value_t = 1024)]
    pub min_free_disk_mb: u64,
}

/// `uid` or `uid:gid`, numeric: an image need not have a user of that name.
fn parse_user(raw: &str) -> Result<String, String> {
    let numeric = |part: &str| !part.is_empty() && part.len() <= 10 && part.bytes().all(|b| b.is_ascii_digit());
    let ok = match raw.split_once(':') {
        Some((uid, gid)) => numeric(uid) && numeric(gid),
        None => numeric(raw),
    };
    if ok {
        Ok(raw.to_string())
    } else {
        Err(format!("{raw:?} is not a numeric uid or uid:gid"))
    }
}

impl Config {
    /// The broker user whose messages are the controller's.
    pub fn controller_amqp_user(&self) -> String {
        self.controller_amqp_user.clone().unwrap_or_else(|| self.messaging.amqp_user())
    }

    /// Where Docker publishes demo ports.
    pub fn publish_address(&self) -> &str {
        self.publish_address.as_deref().unwrap_or(&self.host_address)
    }

    /// What every demo gets in its environment from the host: `--demo-opt` values and this
    /// process's `DEMO_OPT_*` variables.
    pub fn demo_opts(&self) -> Vec<String> {
        let inherited = std::env::vars().filter(|(k, _)| k.starts_with("DEMO_OPT_")).map(|(k, v)| format!("{k}={v}"));
        self.demo_opt.iter().cloned().chain(inherited).collect()
    }

    /// The host id: the configured one, else this machine's hostname.
    /// A client of this host's Docker Engine.
    pub fn docker(&self) -> Result<bollard::Docker, bollard::errors::Error> {
        match &self.docker_host {
            None => bollard::Docker::connect_with_local_defaults(),
            Some(host) => {
                let path = host.strip_prefix("unix://").unwrap_or(host);
                bollard::Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
            }
        }
    }

    pub fn host_id(&self) -> anyhow::Result<String> {
        let id = match &self.host_id {
            Some(id) => id.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .or_else(|_| std::fs::read_to_string("/etc/hostname"))?
                .trim()
                .to_string(),
        };
        let valid = !id.is_empty()
            && id.len() <= 100
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        anyhow::ensure!(valid, "host id {id:?} must be 1-100 of A-Z a-z 0-9 - _ .");
        Ok(id)
    }
}
