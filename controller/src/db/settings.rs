//! Per-repository settings; a repository without a row has the defaults.

use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgExecutor};

/// A repository's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, FromRow)]
#[serde(deny_unknown_fields)]
pub struct RepoSettings {
    /// What `converted_to_draft` does: `keep` the demo running (default) or `stop` it.
    #[serde(default = "keep")]
    pub draft_policy: String,
    /// Stop a demo this many seconds after its last push; none: never.
    #[serde(default)]
    pub ttl_seconds: Option<i32>,
    /// At most this many of the repository's demos run at once; more wait as `pending`.
    #[serde(default)]
    pub max_demos: Option<i32>,
    /// Put a demo to sleep after this many seconds without a request; 0: never; none: the
    /// controller's default (`DEMOFLEET_IDLE_SLEEP`).
    #[serde(default)]
    pub idle_sleep_seconds: Option<i32>,
    /// Only people signed in (and on the allow-list) may open the demos' preview URLs.
    #[serde(default)]
    pub gated: bool,
    /// A repository with only a legacy `./run` may run it (on the agent's host, as the
    /// agent's user): an admin's choice for repositories whose authors are trusted.
    #[serde(default)]
    pub legacy_run: bool,
    /// The repository's previews may not open connections beyond their host (the host's
    /// firewall closes their network's outbound traffic); default: open.
    #[serde(default)]
    pub closed_outbound: bool,
    /// Previews of forks (head repository other than this one) get the repository's secrets
    /// too; default: they get none.
    #[serde(default)]
    pub secrets_for_forks: bool,
}

fn keep() -> String {
    "keep".into()
}

impl Default for RepoSettings {
    fn default() -> Self {
        RepoSettings {
            draft_policy: keep(),
            ttl_seconds: None,
            max_demos: None,
            idle_sleep_seconds: None,
            gated: false,
            legacy_run: false,
            closed_outbound: false,
            secrets_for_forks: false,
        }
    }
}

impl RepoSettings {
    /// What is wrong with these settings, if anything.
    pub fn problem(&self) -> Option<String> {
        if !matches!(self.draft_policy.as_str(), "keep" | "stop") {
            return Some(format!("draft_policy must be \"keep\" or \"stop\", not {:?}", self.draft_policy));
        }
        if self.ttl_seconds.is_some_and(|t| t <= 0) {
            return Some("ttl_seconds must be positive".into());
        }
        if self.max_demos.is_some_and(|m| m < 0) {
            return Some("max_demos must not be negative".into());
        }
        if self.idle_sleep_seconds.is_some_and(|s| s < 0) {
            return Some("idle_sleep_seconds must not be negative (0: never sleep)".into());
        }
        None
    }
}

pub async fn get(db: impl PgExecutor<'_>, owner: &str, repo: &str) -> sqlx::Result<RepoSettings> {
    let found: Option<RepoSettings> = sqlx::query_as(
        "select draft_policy, ttl_seconds, max_demos, idle_sleep_seconds, gated, legacy_run, closed_outbound,
                secrets_for_forks
             from repo_settings
             where owner = $1 and repo = $2",
    )
    .bind(owner)
    .bind(repo)
    .fetch_optional(db)
    .await?;
    Ok(found.unwrap_or_default())
}

/// Store a repository's settings; its demos take its `legacy_run` and `closed_outbound` at once.
pub async fn put(db: impl PgExecutor<'_>, owner: &str, repo: &str, settings: &RepoSettings) -> sqlx::Result<()> {
    sqlx::query(
        "with stored as (
             insert into repo_settings (owner, repo, draft_policy, ttl_seconds, max_demos, idle_sleep_seconds, gated,
                                        legacy_run, closed_outbound, secrets_for_forks)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             on conflict (owner, repo) do update set draft_policy = excluded.draft_policy,
                 ttl_seconds = excluded.ttl_seconds, max_demos = excluded.max_demos,
                 idle_sleep_seconds = excluded.idle_sleep_seconds, gated = excluded.gated,
                 legacy_run = excluded.legacy_run, closed_outbound = excluded.closed_outbound,
                 secrets_for_forks = excluded.secrets_for_forks
             returning owner, repo, legacy_run, closed_outbound
         )
         update demos d set legacy_run = stored.legacy_run, closed_outbound = stored.closed_outbound from stored
         where d.owner = stored.owner and d.repo = stored.repo
           and (d.legacy_run, d.closed_outbound) <> (stored.legacy_run, stored.closed_outbound)",
    )
    .bind(owner)
    .bind(repo)
    .bind(&settings.draft_policy)
    .bind(settings.ttl_seconds)
    .bind(settings.max_demos)
    .bind(settings.idle_sleep_seconds)
    .bind(settings.gated)
    .bind(settings.legacy_run)
    .bind(settings.closed_outbound)
    .bind(settings.secrets_for_forks)
    .execute(db)
    .await?;
    Ok(())
}

/// Demos that should run but outlived their repository's TTL since their last push.
pub async fn expired(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<uuid::Uuid>> {
    sqlx::query_scalar(
        "select d.id from demos d join repo_settings s on s.owner = d.owner and s.repo = d.repo
         where d.desired = 'running' and s.ttl_seconds is not null
           and coalesce(d.deployed_at, d.created_at) < now() - make_interval(secs => s.ttl_seconds)
         order by d.id limit 100",
    )
    .fetch_all(db)
    .await
}

/// True when the repository already runs (or has placed) as many demos as it may.
pub async fn repo_is_full(db: impl PgExecutor<'_>, owner: &str, repo: &str, except: uuid::Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "select coalesce(s.max_demos <= (select count(*) from demos d
                                          where d.owner = s.owner and d.repo = s.repo and d.desired = 'running'
                                            and d.host_id is not null and d.id <> $3), false)
         from (select $1::text as owner, $2::text as repo) r
         left join repo_settings s on s.owner = r.owner and s.repo = r.repo",
    )
    .bind(owner)
    .bind(repo)
    .bind(except)
    .fetch_one(db)
    .await
}
