//! Demos: desired state, generation and where they run.

use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgExecutor};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, FromRow, Serialize, Deserialize)]
pub struct Demo {
    pub id: Uuid,
    pub owner: String,
    pub repo: String,
    pub pr: i64,
    pub name: String,
    pub desired: String,
    pub state: String,
    pub generation: i64,
    pub sha: String,
    pub clone_url: String,
    pub github_user: String,
    /// Who brought the head commit (the sender of the push); none: the author.
    pub pushed_by: Option<String>,
    pub host_id: Option<String>,
    pub host_port: Option<i32>,
    /// The host of the container on `host_port`: `host_id` but while the demo moves.
    pub serving_host: Option<String>,
    pub routed: bool,
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub event_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub deployed_at: Option<OffsetDateTime>,
    pub approved_sha: Option<String>,
    pub approved_by: Option<String>,
    /// False for a demo started by hand without telling GitHub.
    pub notify: bool,
    /// Its repository lets a legacy `./run` run (repository setting `legacy_run`).
    pub legacy_run: bool,
    /// Its repository closes its previews' outbound traffic (repository setting `closed_outbound`).
    pub closed_outbound: bool,
    /// The last request the edge proxy passed to it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_request_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// What an event says about a pull request's demo.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployRequest {
    pub owner: String,
    pub repo: String,
    pub pr: i64,
    pub name: String,
    pub sha: String,
    pub clone_url: String,
    pub github_user: String,
    /// Who brought the head commit: the event's sender; none: not known (the author counts).
    #[serde(default)]
    pub pushed_by: Option<String>,
    /// The pull request's title, when the event carried it (for the dashboard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

impl DeployRequest {
    /// What `demo` runs now, asked for again.
    pub fn of(demo: &Demo) -> DeployRequest {
        DeployRequest {
            owner: demo.owner.clone(),
            repo: demo.repo.clone(),
            pr: demo.pr,
            name: demo.name.clone(),
            sha: demo.sha.clone(),
            clone_url: demo.clone_url.clone(),
            github_user: demo.github_user.clone(),
            pushed_by: demo.pushed_by.clone(),
            title: None,
        }
    }
}

impl Demo {
    /// Whose trust starts the head commit without an approval: who pushed it, else the author.
    pub fn vouched_by(&self) -> &str {
        self.pushed_by.as_deref().unwrap_or(&self.github_user)
    }
}

/// The demo of `owner/repo#pr`, locked, if there is one.
pub async fn find_for_update(db: impl PgExecutor<'_>, owner: &str, repo: &str, pr: i64) -> sqlx::Result<Option<Demo>> {
    sqlx::query_as("select * from demos where owner = $1 and repo = $2 and pr = $3 for update")
        .bind(owner)
        .bind(repo)
        .bind(pr)
        .fetch_optional(db)
        .await
}

pub async fn set_approval(db: impl PgExecutor<'_>, id: Uuid, sha: &str, actor: &str) -> sqlx::Result<()> {
    sqlx::query("update demos set approved_sha = $2, approved_by = $3, updated_at = now() where id = $1")
        .bind(id)
        .bind(sha)
        .bind(actor)
        .execute(db)
        .await?;
    Ok(())
}

/// Demos whose newest generation has not begun, though it was recorded more than `grace`
/// ago: each with that generation, oldest first (the tick begins them).
pub async fn not_begun(
    db: impl PgExecutor<'_>,
    grace: std::time::Duration,
    limit: i64,
) -> sqlx::Result<Vec<(Uuid, i64)>> {
    sqlx::query_as(
        "select d.id, d.generation from demos d
         where d.state = 'pending' and d.desired = 'running' and d.updated_at < now() - make_interval(secs => $1)
           and not exists (select 1 from chains c where c.demo_id = d.id and c.generation = d.generation)
         order by d.updated_at limit $2",
    )
    .bind(grace.as_secs_f64())
    .bind(limit)
    .fetch_all(db)
    .await
}

pub async fn get_for_update_opt(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Demo>> {
    sqlx::query_as("select * from demos where id = $1 for update").bind(id).fetch_optional(db).await
}

pub async fn get_for_update(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Demo> {
    sqlx::query_as("select * from demos where id = $1 for update").bind(id).fetch_one(db).await
}

/// The demo of chain `chain_id`, locked; none if there is no such chain (or demo). One round
/// trip: a chain's demo never changes, so it is looked up with the lock.
pub async fn get_for_update_of_chain(db: impl PgExecutor<'_>, chain_id: Uuid) -> sqlx::Result<Option<Demo>> {
    sqlx::query_as("select * from demos where id = (select demo_id from chains where id = $1) for update")
        .bind(chain_id)
        .fetch_optional(db)
        .await
}

pub async fn set_state(db: impl PgExecutor<'_>, id: Uuid, state: &str, error: Option<&str>) -> sqlx::Result<()> {
    sqlx::query("update demos set state = $2, error = $3, updated_at = now() where id = $1")
        .bind(id)
        .bind(state)
        .bind(error)
        .execute(db)
        .await?;
    Ok(())
}

/// Place the demo's newest generation on `host_id`, or nowhere (`None`: it stopped). A
/// container serving it elsewhere keeps serving until the new one answers.
pub async fn set_host(db: impl PgExecutor<'_>, id: Uuid, host_id: Option<&str>) -> sqlx::Result<()> {
    sqlx::query(
        "update demos set host_id = $2, host_port = case when $2 is null then null else host_port end,
                          serving_host = case when $2 is null then null else serving_host end,
                          updated_at = now() where id = $1",
    )
    .bind(id)
    .bind(host_id)
    .execute(db)
    .await?;
    Ok(())
}

/// The container on the demo's host answers on `port`: requests go there from now on.
pub async fn set_host_port(db: impl PgExecutor<'_>, id: Uuid, port: u16) -> sqlx::Result<()> {
    sqlx::query("update demos set host_port = $2, serving_host = host_id, updated_at = now() where id = $1")
        .bind(id)
        .bind(i32::from(port))
        .execute(db)
        .await?;
    Ok(())
}

pub async fn set_routed(db: impl PgExecutor<'_>, id: Uuid, routed: bool) -> sqlx::Result<()> {
    sqlx::query("update demos set routed = $2, updated_at = now() where id = $1")
        .bind(id)
        .bind(routed)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Demo>> {
    sqlx::query_as("select * from demos where id = $1").bind(id).fetch_optional(db).await
}

pub async fn list(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<Demo>> {
    sqlx::query_as("select * from demos order by created_at desc, id").fetch_all(db).await
}

/// A demo the edge and Traefik know of: routed to `address:port` on its host, or asleep
/// (or waking up) there.
#[derive(Debug, Clone, FromRow)]
pub struct Route {
    pub id: Uuid,
    pub name: String,
    pub address: String,
    pub host_port: Option<i32>,
    /// Requests go to its container; false: it sleeps or is waking up.
    pub routed: bool,
    /// Idle sleep applies to it, so its traffic must pass the edge proxy, which notes
    /// requests and wakes it.
    pub sleeps: bool,
    /// Only signed-in people may see it (the repository's `gated` setting).
    pub gated: bool,
}

/// [`Route`]s, with `$1` the controller's default idle time; a `where` clause follows.
const ROUTES: &str = "select d.id, d.name, h.address, d.host_port, d.routed and d.host_port is not null as routed,
        coalesce(s.idle_sleep_seconds, $1) > 0 as sleeps, coalesce(s.gated, false) as gated
    from demos d join hosts h on h.id = coalesce(d.serving_host, d.host_id)
    left join repo_settings s on s.owner = d.owner and s.repo = d.repo";

/// The demos the edge and Traefik know of.
const LISTED: &str = "((d.routed and d.host_port is not null) or (d.desired = 'running' and d.state = 'sleeping'))";

/// Every routed or sleeping demo; `idle_sleep_seconds` is the controller's default.
pub async fn routes(db: impl PgExecutor<'_>, idle_sleep_seconds: i32) -> sqlx::Result<Vec<Route>> {
    sqlx::query_as(&format!("{ROUTES} where {LISTED}")).bind(idle_sleep_seconds).fetch_all(db).await
}

/// Demo `id`'s route, if it is routed or sleeping.
pub async fn route(db: impl PgExecutor<'_>, id: Uuid, idle_sleep_seconds: i32) -> sqlx::Result<Option<Route>> {
    sqlx::query_as(&format!("{ROUTES} where d.id = $2 and {LISTED}"))
        .bind(idle_sleep_seconds)
        .bind(id)
        .fetch_optional(db)
        .await
}

pub async fn name(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("select name from demos where id = $1").bind(id).fetch_optional(db).await
}

/// Note the requests the edge passed: `(name, when)`, the newest time kept.
pub async fn record_requests(db: impl PgExecutor<'_>, visits: &[(String, OffsetDateTime)]) -> sqlx::Result<()> {
    let (names, times): (Vec<&str>, Vec<OffsetDateTime>) = visits.iter().map(|(n, t)| (n.as_str(), *t)).unzip();
    sqlx::query(
        "update demos d set last_request_at = greatest(d.last_request_at, v.at)
         from unnest($1::text[], $2::timestamptz[]) as v (name, at) where d.name = v.name",
    )
    .bind(&names)
    .bind(&times)
    .execute(db)
    .await?;
    Ok(())
}

/// Running, routed demos that had no request for their idle time (`idle_sleep_seconds`: the
/// controller's default, overridden by the repository's setting; 0: never).
///
/// Asked every tick. Without a default idle time (the default) only the demos of
/// repositories that set one are read, by their repository, rather than every demo the
/// fleet ever had (demos are never deleted); and when no repository sets one, none: the
/// uncorrelated `exists` is decided once, before the join is begun, whatever plan the
/// join gets.
pub async fn idle(db: impl PgExecutor<'_>, idle_sleep_seconds: i32) -> sqlx::Result<Vec<Uuid>> {
    let (demos, any_sleeps) = if idle_sleep_seconds > 0 {
        ("demos d left join repo_settings s on s.owner = d.owner and s.repo = d.repo", "true")
    } else {
        (
            "repo_settings s join demos d on d.owner = s.owner and d.repo = s.repo",
            "exists (select 1 from repo_settings where idle_sleep_seconds > 0)",
        )
    };
    sqlx::query_scalar(&format!(
        "select d.id from {demos}
         where {any_sleeps} and d.desired = 'running' and d.state = 'running' and d.routed
           and coalesce(s.idle_sleep_seconds, $1) > 0
           and greatest(d.last_request_at, d.updated_at)
               < now() - make_interval(secs => coalesce(s.idle_sleep_seconds, $1))
         order by d.id limit 100"
    ))
    .bind(idle_sleep_seconds)
    .fetch_all(db)
    .await
}

/// Note a request now, without touching `updated_at`.
pub async fn touch(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<()> {
    sqlx::query("update demos set last_request_at = now() where id = $1").bind(id).execute(db).await?;
    Ok(())
}

/// Which demos the overview lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter<'a> {
    /// Those that should run (desired `running`), in any state.
    Active,
    All,
    State(&'a str),
}

/// One page of demos, newest first, matching `search` (in owner, repository or name) and
/// `filter`; and how many match in all.
pub async fn page(
    db: impl PgExecutor<'_>,
    search: &str,
    filter: Filter<'_>,
    limit: i64,
    offset: i64,
) -> sqlx::Result<(Vec<Demo>, i64)> {
    let (mode, state) = match filter {
        Filter::Active => ("active", ""),
        Filter::All => ("all", ""),
        Filter::State(state) => ("state", state),
    };
    let pattern = format!("%{}%", search.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
    #[derive(FromRow)]
    struct Row {
        #[sqlx(flatten)]
        demo: Demo,
        total: i64,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "select d.*, count(*) over () as total from demos d
         where ($1 = '' or d.owner || '/' || d.repo ilike $2 or d.name ilike $2)
           and case $3 when 'active' then d.desired = 'running' when 'state' then d.state = $4 else true end
         order by d.created_at desc, d.id limit $5 offset $6",
    )
    .bind(search)
    .bind(&pattern)
    .bind(mode)
    .bind(state)
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await?;
    let total = rows.first().map_or(0, |row| row.total);
    Ok((rows.into_iter().map(|row| row.demo).collect(), total))
}

/// The titles of `demos`' pull requests that events carried, by demo id.
pub async fn titles(db: impl PgExecutor<'_>, demos: &[Demo]) -> sqlx::Result<std::collections::HashMap<Uuid, String>> {
    let ids: Vec<Uuid> = demos.iter().map(|d| d.id).collect();
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "select d.id, t.title from demos d
         join pull_request_titles t on t.owner = d.owner and t.repo = d.repo and t.pr = d.pr
         where d.id = any($1)",
    )
    .bind(&ids)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}
