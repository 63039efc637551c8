//! Controller settings: every one a flag and a `DEMOFLEET_*` variable, with defaults that
//! work on one machine. The webhook secret has no default: no secret, no start.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use demofleet_common::duration::parse_duration;
use demofleet_common::messaging::Messaging;
use demofleet_common::secret::Secret;

/// The database `scripts/up` makes on one machine.
pub const DEFAULT_DATABASE_URL: &str = "postgres://demofleet:demofleet@127.0.0.1:5432/demofleet";

/// The state of record, for the subcommands that need nothing else.
#[derive(Debug, Clone, clap::Args)]
pub struct Database {
    /// PostgreSQL URL of the state of record.
    #[arg(long, env = "DEMOFLEET_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "demofleet-controller", version, about = "demofleet controller")]
pub struct Config {
    /// PostgreSQL URL of the state of record.
    #[arg(long, env = "DEMOFLEET_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Connections to PostgreSQL kept in the pool.
    #[arg(long, env = "DEMOFLEET_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,

    #[command(flatten)]
    pub messaging: Messaging,

    /// GitHub's web site, for the dashboard's links to pull requests and commits.
    #[arg(long, env = "DEMOFLEET_GITHUB_WEB_URL", default_value = "https://github.com")]
    pub github_web_url: String,

    #[command(flatten)]
    pub enrolment: EnrolmentSettings,

    /// Secret shared with GitHub for webhook signatures. Required, here or as a file.
    #[arg(long, env = "DEMOFLEET_WEBHOOK_SECRET", hide_env_values = true, default_value = "")]
    pub webhook_secret: Secret,

    /// A file holding the webhook secret (a trailing newline is dropped), instead of
    /// `DEMOFLEET_WEBHOOK_SECRET`; read at start.
    #[arg(long, env = "DEMOFLEET_WEBHOOK_SECRET_FILE", conflicts_with = "webhook_secret")]
    pub webhook_secret_file: Option<std::path::PathBuf>,

    /// Demos answer on `<name>.<base domain>`.
    #[arg(long, env = "DEMOFLEET_BASE_DOMAIN", default_value = "localhost")]
    pub base_domain: String,

    /// Scheme of demo URLs shown to people.
    #[arg(long, env = "DEMOFLEET_PUBLIC_SCHEME", default_value = "http")]
    pub public_scheme: String,

    /// Port of demo URLs shown to people; unset means the scheme's default, except with
    /// base domain `localhost`, where it is the edge proxy's port.
    #[arg(long, env = "DEMOFLEET_PUBLIC_PORT")]
    pub public_port: Option<u16>,

    /// The controller's own URL as browsers reach it: sign-in redirects come back to
    /// `<it>/auth/callback`. Default: `http://` + the bound DEMOFLEET_LISTEN address.
    #[arg(long, env = "DEMOFLEET_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// The OpenID provider people sign in with (found by discovery from this issuer URL).
    #[arg(long, env = "DEMOFLEET_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,

    /// This controller's client id at the provider.
    #[arg(long, env = "DEMOFLEET_OIDC_CLIENT_ID", default_value = "demofleet")]
    pub oidc_client_id: String,

    /// This controller's client secret at the provider (or DEMOFLEET_OIDC_CLIENT_SECRET_FILE).
    #[arg(long, env = "DEMOFLEET_OIDC_CLIENT_SECRET", hide_env_values = true)]
    pub oidc_client_secret: Option<Secret>,

    /// A file holding the client secret.
    #[arg(long, env = "DEMOFLEET_OIDC_CLIENT_SECRET_FILE")]
    pub oidc_client_secret_file: Option<std::path::PathBuf>,

    /// The ID-token claim that lists a person's groups.
    #[arg(long, env = "DEMOFLEET_OIDC_GROUPS_CLAIM", default_value = "groups")]
    pub oidc_groups_claim: String,

    /// Emails allowed in (comma-separated). Anyone on none of the three lists is refused.
    #[arg(long, env = "DEMOFLEET_ALLOW_EMAILS", value_delimiter = ',')]
    pub allow_emails: Vec<String>,

    /// Email domains allowed in (comma-separated).
    #[arg(long, env = "DEMOFLEET_ALLOW_DOMAINS", value_delimiter = ',')]
    pub allow_domains: Vec<String>,

    /// Groups (from the groups claim) allowed in (comma-separated).
    #[arg(long, env = "DEMOFLEET_ALLOW_GROUPS", value_delimiter = ',')]
    pub allow_groups: Vec<String>,

    /// Take an email the provider does not state verified (no `email_verified` claim) as
    /// verified. Only for a provider that checks addresses itself and does not say so, such
    /// as the local test provider `scripts/up` starts; one that says `false` is never taken.
    #[arg(long, env = "DEMOFLEET_TRUST_UNSTATED_EMAILS")]
    pub trust_unstated_emails: bool,

    /// How long a sign-in lasts.
    #[arg(long, env = "DEMOFLEET_SESSION_TTL", default_value = "12h", value_parser = parse_duration)]
    pub session_ttl: Duration,

    /// Where Traefik's forwardAuth middleware reaches the SSO gate. Default:
    /// `http://` + the bound DEMOFLEET_LISTEN address + `/auth/forward`.
    #[arg(long, env = "DEMOFLEET_FORWARD_AUTH_URL")]
    pub forward_auth_url: Option<String>,

    /// GitHub REST API base URL (GitHub Enterprise, or the fake in tests).
    #[arg(long, env = "DEMOFLEET_GITHUB_API_URL", default_value = "https://api.github.com")]
    pub github_api_url: String,

    /// A token for the GitHub API (personal access token). Ignored when App credentials are set.
    #[arg(long, env = "DEMOFLEET_GITHUB_TOKEN", hide_env_values = true)]
    pub github_token: Option<Secret>,

    /// GitHub App id (or client id); with the key file, demofleet acts as this App.
    #[arg(long, env = "DEMOFLEET_GITHUB_APP_ID")]
    pub github_app_id: Option<String>,

    /// PEM file with the GitHub App's private key.
    #[arg(long, env = "DEMOFLEET_GITHUB_APP_KEY_FILE")]
    pub github_app_key_file: Option<std::path::PathBuf>,

    /// How long one GitHub call keeps retrying transient failures and rate limits.
    #[arg(long, env = "DEMOFLEET_GITHUB_PATIENCE", default_value = "30s", value_parser = parse_duration)]
    pub github_patience: Duration,

    /// Without GitHub credentials no author can be checked: these logins may start demos
    /// (`*` for everyone); anyone else waits for approval.
    #[arg(long, env = "DEMOFLEET_TRUSTED_AUTHORS", value_delimiter = ',')]
    pub trusted_authors: Vec<String>,

    /// How long an author's permission, once asked of GitHub, is trusted without asking again.
    #[arg(long, env = "DEMOFLEET_PERMISSION_CACHE", default_value = "5m", value_parser = parse_duration)]
    pub permission_cache: Duration,

    /// Clone URL template; `{owner}` and `{repo}` name the PR's head repository.
    #[arg(long, env = "DEMOFLEET_GIT_URL", default_value = "https://github.com/{owner}/{repo}.git")]
    pub git_url: String,

    /// Address of the HTTP API, webhook and dashboard.
    #[arg(long, env = "DEMOFLEET_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,

    /// Connections the API listener (webhook, API, dashboard) holds open at once; more wait
    /// in the kernel's backlog until one closes.
    #[arg(long, env = "DEMOFLEET_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub http_max_connections: usize,

    /// How long the API listener waits for a request's headers, from the moment a
    /// connection waits for a request (an idle kept-alive connection is closed after this).
    #[arg(long, env = "DEMOFLEET_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// How long the API listener waits for a request's body, once its headers are in;
    /// a body not complete by then is answered 408.
    #[arg(long, env = "DEMOFLEET_HTTP_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub http_body_timeout: Duration,

    /// Address of the built-in edge proxy.
    #[arg(long, env = "DEMOFLEET_EDGE_LISTEN", default_value = "127.0.0.1:8080")]
    pub edge_listen: SocketAddr,

    /// Connections the edge proxy holds open at once; more wait in the kernel's backlog
    /// until one closes.
    #[arg(long, env = "DEMOFLEET_EDGE_MAX_CONNECTIONS", default_value_t = 16_384)]
    pub edge_max_connections: usize,

    /// How long the edge proxy waits for a request's headers, from the moment a connection
    /// waits for a request (so an idle kept-alive connection is closed after this too).
    #[arg(long, env = "DEMOFLEET_EDGE_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub edge_header_timeout: Duration,

    /// Largest webhook body accepted, in bytes (GitHub caps payloads at 25 MB).
    #[arg(long, env = "DEMOFLEET_WEBHOOK_MAX_BYTES", default_value_t = 25 * 1024 * 1024)]
    pub webhook_max_bytes: usize,

    /// Bytes of webhook bodies held in memory at once, all deliveries together: a delivery
    /// whose declared length does not fit waits for room (at most DEMOFLEET_HTTP_BODY_TIMEOUT,
    /// then 503) before a byte of it is read.
    #[arg(long, env = "DEMOFLEET_WEBHOOK_BUFFER_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub webhook_buffer_bytes: usize,

    /// Bytes of log kept per demo generation (the newest lines; older ones are dropped).
    #[arg(long, env = "DEMOFLEET_LOG_KEEP_BYTES", default_value_t = 5 * 1024 * 1024)]
    pub log_keep_bytes: i64,

    /// Generations of a demo whose logs are kept (the newest ones).
    #[arg(long, env = "DEMOFLEET_LOG_KEEP_GENERATIONS", default_value_t = 3)]
    pub log_keep_generations: i64,

    /// A host whose last heartbeat is older than this is not given new demos.
    #[arg(long, env = "DEMOFLEET_HOST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub host_timeout: Duration,

    /// A host whose demo file system has less free space than this (MiB) is given no new
    /// demos; the ones it runs stay.
    #[arg(long, env = "DEMOFLEET_MIN_FREE_DISK_MB", default_value_t = 2048)]
    pub min_free_disk_mb: u64,

    /// How long a difference between a host's inventory and the state of record (an
    /// orphaned or a missing container) must last before it is acted on.
    #[arg(long, env = "DEMOFLEET_RECONCILE_GRACE", default_value = "60s", value_parser = parse_duration)]
    pub reconcile_grace: Duration,

    /// Webhook deliveries and finished chains older than this are removed (a batch per tick,
    /// on the replica holding the fleet lease); every demo's newest chain is kept. `0`: keep
    /// everything.
    #[arg(long, env = "DEMOFLEET_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub retention: Duration,

    /// At most this many chains, and as many deliveries, are removed per tick.
    #[arg(long, env = "DEMOFLEET_RETENTION_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..))]
    pub retention_batch: i64,

    /// How often waiting work (demos with no host yet) and the route table are looked at again.
    #[arg(long, env = "DEMOFLEET_TICK", default_value = "2s", value_parser = parse_duration)]
    pub tick: Duration,

    /// Put a demo to sleep after this long without a request through the edge proxy (its
    /// container stops; the next request starts it again); 0: never. A repository's
    /// `idle_sleep_seconds` setting overrides it.
    #[arg(long, env = "DEMOFLEET_IDLE_SLEEP", default_value = "0s", value_parser = parse_duration)]
    pub idle_sleep: Duration,

    /// Where Traefik reaches the edge proxy, for demos that sleep when idle: their traffic
    /// passes the edge, which sees it and wakes them. Default: `http://` + DEMOFLEET_EDGE_LISTEN.
    #[arg(long, env = "DEMOFLEET_EDGE_URL")]
    pub edge_url: Option<String>,

    /// Traefik entry points the demo routers listen on.
    #[arg(long, env = "DEMOFLEET_TRAEFIK_ENTRYPOINTS", default_value = "web", value_delimiter = ',')]
    pub traefik_entrypoints: Vec<String>,

    /// Traefik certificate resolver for demo routers; unset: routers without TLS.
    #[arg(long, env = "DEMOFLEET_TRAEFIK_CERT_RESOLVER")]
    pub traefik_cert_resolver: Option<String>,

    /// The token Traefik's HTTP provider must give to read `GET /traefik/dynamic` (the demos'
    /// host addresses and ports): `Authorization: Bearer <token>` or `?token=<token>` in the
    /// provider's endpoint. Unset: only clients on loopback are answered.
    #[arg(long, env = "DEMOFLEET_TRAEFIK_TOKEN", hide_env_values = true)]
    pub traefik_token: Option<Secret>,

    /// A file holding the Traefik token (a trailing newline is dropped), instead of
    /// `DEMOFLEET_TRAEFIK_TOKEN`; read at start.
    #[arg(long, env = "DEMOFLEET_TRAEFIK_TOKEN_FILE", conflicts_with = "traefik_token")]
    pub traefik_token_file: Option<std::path::PathBuf>,

    /// Also write Traefik's dynamic configuration to this file (file provider), atomically
    /// and only when it changes.
    #[arg(long, env = "DEMOFLEET_TRAEFIK_FILE")]
    pub traefik_file: Option<std::path::PathBuf>,

    /// A step sent to a host (or to the controller's own queue) and not answered for this long
    /// counts as a failed attempt and is retried as any failure is: its message or its result
    /// was lost. Longer than a host's longest step (the agent's build timeout) and the time a
    /// step may wait for a busy host.
    #[arg(long, env = "DEMOFLEET_STEP_DEADLINE", default_value = "30m", value_parser = parse_duration)]
    pub step_deadline: Duration,

    /// Delays before each retry of a failed step; a step gets one attempt more than there
    /// are delays, then goes to the dead-letter queue.
    #[arg(long, env = "DEMOFLEET_RETRY_DELAYS", default_value = "2s,4s,8s,16s", value_delimiter = ',', value_parser = parse_duration)]
    pub retry_delays: Vec<Duration>,

    /// A file holding the key repository secrets are stored with in PostgreSQL: 32 random
    /// bytes, raw or as 64 hex digits (`openssl rand -hex 32`); read at start. Unset: setting
    /// a secret is refused.
    #[arg(long, env = "DEMOFLEET_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<std::path::PathBuf>,

    /// A file holding the key shared with the agents (the same file on each), with which
    /// secrets travel sealed in launch steps' messages; as `DEMOFLEET_SECRETS_KEY_FILE`, and
    /// needed with it.
    #[arg(long, env = "DEMOFLEET_SECRETS_TRANSPORT_KEY_FILE")]
    pub secrets_transport_key_file: Option<std::path::PathBuf>,

    /// Apply the database migrations and exit (as the `migrate` subcommand does).
    #[arg(long)]
    pub migrate_only: bool,
}

/// The settings enrolment needs (the controller's, and the `hosts` subcommands').
#[derive(Debug, Clone, clap::Args)]
pub struct EnrolmentSettings {
    /// RabbitMQ's management API, with an administrator's credentials in the URL
    /// (`http://user:password@host:15672`): enrolling a host makes its broker user there,
    /// revoking deletes it. Unset: broker users are the operator's to make (ansible does).
    #[arg(long, env = "DEMOFLEET_AMQP_MANAGEMENT_URL", hide_env_values = true)]
    pub amqp_management_url: Option<Secret>,

    /// The RabbitMQ URL(s) agents connect to, without credentials (the host's own are put
    /// in); default: DEMOFLEET_AMQP_URL's addresses and vhost.
    #[arg(long, env = "DEMOFLEET_AGENTS_AMQP_URL")]
    pub agents_amqp_url: Option<String>,

    /// The NATS URL(s) agents connect to, without credentials; default: DEMOFLEET_NATS_URL's.
    #[arg(long, env = "DEMOFLEET_AGENTS_NATS_URL")]
    pub agents_nats_url: Option<String>,

    /// The NATS authorization file the controller writes (an `authorization` block with its
    /// own user and every enrolled host's, for the NATS configuration to `include`); unset:
    /// NATS users are the operator's to make.
    #[arg(long, env = "DEMOFLEET_NATS_AUTH_FILE")]
    pub nats_auth_file: Option<std::path::PathBuf>,

    /// NATS's pid file: after writing the authorization file, the controller sends that
    /// process SIGHUP so it reloads it.
    #[arg(long, env = "DEMOFLEET_NATS_PID_FILE")]
    pub nats_pid_file: Option<std::path::PathBuf>,

    /// Broker and NATS users of hosts are `<prefix><host id>`; broker users are shared by
    /// every vhost of a RabbitMQ node, so fleets sharing one need prefixes of their own.
    #[arg(long, env = "DEMOFLEET_AGENT_USER_PREFIX", default_value = "agent-")]
    pub agent_user_prefix: String,
}

/// The secret in the file at `path`, without its trailing newline.
fn read_secret_file(path: &std::path::Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::SecretFile { path: path.display().to_string(), error: e.to_string() })?;
    Ok(Secret::new(text.trim_end_matches(['\n', '\r'])))
}

/// Why a configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "DEMOFLEET_WEBHOOK_SECRET (or the file DEMOFLEET_WEBHOOK_SECRET_FILE) is empty or unset: the controller \
         never accepts unsigned webhooks"
    )]
    EmptySecret,
    #[error("reading the secret file {path}: {error}")]
    SecretFile { path: String, error: String },
    #[error("DEMOFLEET_GIT_URL must contain {{owner}} and {{repo}}, got {0:?}")]
    GitUrl(String),
    #[error("DEMOFLEET_BASE_DOMAIN {0:?} is not a domain name")]
    BaseDomain(String),
    #[error("DEMOFLEET_GITHUB_APP_ID and DEMOFLEET_GITHUB_APP_KEY_FILE go together")]
    HalfAnApp,
    #[error("DEMOFLEET_TRAEFIK_TOKEN (or its file) is empty: unset it to answer only loopback clients")]
    EmptyTraefikToken,
    #[error(transparent)]
    Tls(#[from] demofleet_common::tls::TlsError),
}

impl Config {
    /// `DEMOFLEET_MIN_FREE_DISK_MB` in bytes: a host with less free gets no new demos.
    pub fn min_free_disk_bytes(&self) -> i64 {
        i64::try_from(self.min_free_disk_mb.saturating_mul(1 << 20)).unwrap_or(i64::MAX)
    }

    /// `DEMOFLEET_IDLE_SLEEP` in whole seconds, as repositories' settings spell it (0: never).
    pub fn idle_sleep_seconds(&self) -> i32 {
        i32::try_from(self.idle_sleep.as_secs()).unwrap_or(i32::MAX)
    }

    /// The controller's URL as browsers reach it, without a trailing `/`.
    pub fn public_url(&self) -> String {
        let url = self.public_url.clone().unwrap_or_else(|| format!("http://{}", self.listen));
        url.trim_end_matches('/').to_string()
    }

    /// Where Traefik's forwardAuth middleware reaches the SSO gate.
    pub fn forward_auth_url(&self) -> String {
        self.forward_auth_url.clone().unwrap_or_else(|| format!("http://{}/auth/forward", self.listen))
    }

    /// Where Traefik sends the traffic of demos that sleep when idle.
    pub fn edge_url(&self) -> String {
        self.edge_url.clone().unwrap_or_else(|| format!("http://{}", self.edge_listen))
    }

    /// Read the secrets given as files into their settings.
    pub fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.webhook_secret_file {
            self.webhook_secret = read_secret_file(path)?;
        }
        if let Some(path) = &self.traefik_token_file {
            self.traefik_token = Some(read_secret_file(path)?);
        }
        Ok(())
    }

    /// Checks that clap cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.webhook_secret.expose().trim().is_empty() {
            return Err(ConfigError::EmptySecret);
        }
        if !(self.git_url.contains("{owner}") && self.git_url.contains("{repo}")) {
            return Err(ConfigError::GitUrl(self.git_url.clone()));
        }
        let domain_ok = !self.base_domain.is_empty()
            && self.base_domain.split('.').all(|l| !l.is_empty() && demofleet_common::names::is_valid_name(l));
        if !domain_ok {
            return Err(ConfigError::BaseDomain(self.base_domain.clone()));
        }
        if self.github_app_id.is_some() != self.github_app_key_file.is_some() {
            return Err(ConfigError::HalfAnApp);
        }
        if self.traefik_token.as_ref().is_some_and(|token| token.expose().trim().is_empty()) {
            return Err(ConfigError::EmptyTraefikToken);
        }
        self.messaging.validate()?;
        Ok(())
    }

    /// The clone URL of `owner/repo`.
    pub fn clone_url(&self, owner: &str, repo: &str) -> String {
        self.git_url.replace("{owner}", owner).replace("{repo}", repo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("demofleet-controller").chain(args.iter().copied()))
    }

    #[test]
    fn refuses_to_start_without_a_secret() {
        if std::env::var_os("DEMOFLEET_WEBHOOK_SECRET").is_none() {
            let config = parse(&[]).unwrap();
            assert!(matches!(config.validate(), Err(ConfigError::EmptySecret)));
        }
        let config = parse(&["--webhook-secret", "  "]).unwrap();
        assert!(matches!(config.validate(), Err(ConfigError::EmptySecret)));
    }

    #[test]
    fn the_webhook_secret_can_come_from_a_file() {
        let file = std::env::temp_dir().join(format!("demofleet-webhook-secret-{}", std::process::id()));
        std::fs::write(&file, "from a file\n").unwrap();
        let mut config = parse(&["--webhook-secret-file", file.to_str().unwrap()]).unwrap();
        config.read_secret_files().unwrap();
        config.validate().unwrap();
        assert_eq!(config.webhook_secret.expose(), "from a file");
        std::fs::remove_file(&file).unwrap();
        assert!(parse(&["--webhook-secret", "x", "--webhook-secret-file", "/f"]).is_err(), "one or the other");
        let mut missing = parse(&["--webhook-secret-file", "/nonexistent/secret"]).unwrap();
        assert!(matches!(missing.read_secret_files(), Err(ConfigError::SecretFile { .. })));
    }

    #[test]
    fn defaults_work_on_one_machine() {
        let config = parse(&["--webhook-secret", "s3cr3t", "--github-token", "ghp_t0ken"]).unwrap();
        config.validate().unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cr3t") && !printed.contains("ghp_t0ken"), "{printed}");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(config.edge_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.base_domain, "localhost");
        assert_eq!(config.clone_url("o", "r"), "https://github.com/o/r.git");
        let secs: Vec<u64> = config.retry_delays.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16]);
    }

    #[test]
    fn plain_text_to_another_host_needs_the_operators_word() {
        let remote = ["--webhook-secret", "s", "--amqp-url", "amqp://u:p@10.1.2.3/v"];
        let config = parse(&remote).unwrap();
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("DEMOFLEET_ALLOW_PLAINTEXT"), "{err}");
        let trusted = parse(&[&remote[..], &["--allow-plaintext"]].concat()).unwrap();
        trusted.validate().unwrap();
        let tls = ["--webhook-secret", "s", "--amqp-url", "amqps://u:p@10.1.2.3/v", "--tls-ca-file", "/nonexistent"];
        let err = parse(&tls).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("/nonexistent"), "the CA file is read at start: {err}");
        assert!(parse(&[&tls[..], &["--tls-cert-file", "/c"]].concat()).is_err(), "a certificate needs its key");
    }
}
