//! Demos: desired state, generation and where they run.

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::{FromRow, PgExecutor, Postgres};
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
    pub host_id: Option<String>,
    pub host_port: Option<i32>,
    pub routed: bool,
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub event_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub deployed_at: Option<OffsetDateTime>,
    pub approved_sha: Option<String>,
    pub approved_by: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// What a deploy event says about a demo.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub owner: String,
    pub repo: String,
    pub pr: i64,
    pub name: String,
    pub sha: String,
    pub clone_url: String,
    pub github_user: String,
}

/// Bind `$1`-`$9`: a new demo id, then `req`'s owner, repo, PR, name, head commit, clone
/// URL and author, and the event's time.
fn bind_request<'q, O>(
    query: QueryAs<'q, Postgres, O, PgArguments>,
    req: &'q DeployRequest,
    event_at: Option<OffsetDateTime>,
) -> QueryAs<'q, Postgres, O, PgArguments> {
    query
        .bind(Uuid::new_v4())
        .bind(&req.owner)
        .bind(&req.repo)
        .bind(req.pr)
        .bind(&req.name)
        .bind(&req.sha)
        .bind(&req.clone_url)
        .bind(&req.github_user)
        .bind(event_at)
}

/// A delivery to record together with the demo it changes.
#[derive(Debug, Clone, Copy)]
pub struct NewDelivery<'a> {
    pub id: &'a str,
    pub event: &'a str,
    pub action: Option<&'a str>,
}

/// What [`upsert_for_deploy`] did.
#[derive(Debug)]
pub enum Upserted {
    /// The demo, created or at its new generation.
    Demo(Box<Demo>),
    /// The demo has already applied a newer event (found under the row lock, so
    /// concurrent first events of one pull request order correctly).
    Stale,
    /// The delivery was recorded before: nothing changed.
    Duplicate,
}

/// Create the demo or ask an existing one for a new generation running `sha`, recording
/// `delivery` (if any) in the same round trip.
pub async fn upsert_for_deploy(
    db: impl PgExecutor<'_>,
    req: &DeployRequest,
    event_at: Option<OffsetDateTime>,
    delivery: Option<NewDelivery<'_>>,
) -> sqlx::Result<Upserted> {
    let query = sqlx::query_as(
        "with delivery as (
             insert into webhook_deliveries (delivery_id, event, action, outcome)
             select $10, $11, $12, 'received' where $10 is not null
             on conflict (delivery_id) do nothing
             returning delivery_id
         ), demo as (
             insert into demos (id, owner, repo, pr, name, desired, state, generation, sha, clone_url, github_user,
                                event_at, deployed_at)
             select $1, $2, $3, $4, $5, 'running', 'pending', 1, $6, $7, $8, $9, now()
             where $10 is null or exists (select 1 from delivery)
             on conflict (owner, repo, pr) do update set
                 desired = 'running', generation = demos.generation + 1, sha = excluded.sha, deployed_at = now(),
                 clone_url = excluded.clone_url, github_user = excluded.github_user,
                 event_at = greatest(demos.event_at, excluded.event_at), error = null, updated_at = now()
             where demos.event_at is null or excluded.event_at is null or excluded.event_at >= demos.event_at
             returning *
         )
         select ($10 is null or exists (select 1 from delivery)), (select to_jsonb(demo) from demo)",
    );
    let (fresh, demo): (bool, Option<serde_json::Value>) = bind_request(query, req, event_at)
        .bind(delivery.map(|d| d.id))
        .bind(delivery.map(|d| d.event))
        .bind(delivery.and_then(|d| d.action))
        .fetch_one(db)
        .await?;
    Ok(match (fresh, demo) {
        (false, _) => Upserted::Duplicate,
        (true, None) => Upserted::Stale,
        (true, Some(row)) => {
            Upserted::Demo(Box::new(serde_json::from_value(row).map_err(|e| sqlx::Error::Decode(e.into()))?))
        }
    })
}

/// Remember a pull request that closed before it had a demo. False when a demo appeared
/// meanwhile.
pub async fn insert_stopped(
    db: impl PgExecutor<'_>,
    req: &DeployRequest,
    event_at: Option<OffsetDateTime>,
) -> sqlx::Result<bool> {
    let query = sqlx::query_as(
        "insert into demos (id, owner, repo, pr, name, desired, state, generation, sha, clone_url, github_user, event_at)
         values ($1, $2, $3, $4, $5, 'stopped', 'stopped', 1, $6, $7, $8, $9)
         on conflict (owner, repo, pr) do nothing
         returning true",
    );
    let inserted: Option<(bool,)> = bind_request(query, req, event_at).fetch_optional(db).await?;
    Ok(inserted.is_some())
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

/// Ask a demo to stop, as a new generation.
pub async fn mark_for_teardown(
    db: impl PgExecutor<'_>,
    id: Uuid,
    event_at: Option<OffsetDateTime>,
) -> sqlx::Result<Demo> {
    sqlx::query_as(
        "update demos set desired = 'stopped', generation = generation + 1, error = null,
                          event_at = greatest(event_at, $2), updated_at = now()
         where id = $1
         returning *",
    )
    .bind(id)
    .bind(event_at)
    .fetch_one(db)
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

pub async fn get_for_update_opt(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Demo>> {
    sqlx::query_as("select * from demos where id = $1 for update").bind(id).fetch_optional(db).await
}

pub async fn get_for_update(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Demo> {
    sqlx::query_as("select * from demos where id = $1 for update").bind(id).fetch_one(db).await
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

pub async fn set_host(db: impl PgExecutor<'_>, id: Uuid, host_id: Option<&str>) -> sqlx::Result<()> {
    sqlx::query(
        "update demos set host_id = $2, host_port = case when $2 is null then null else host_port end,
                                  updated_at = now() where id = $1",
    )
    .bind(id)
    .bind(host_id)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn set_host_port(db: impl PgExecutor<'_>, id: Uuid, port: u16) -> sqlx::Result<()> {
    sqlx::query("update demos set host_port = $2, updated_at = now() where id = $1")
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

/// One routed demo: the edge sends `<name>.<domain>` to `address:port`.
#[derive(Debug, Clone, FromRow)]
pub struct Route {
    pub name: String,
    pub address: String,
    pub host_port: i32,
}

pub async fn routes(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<Route>> {
    sqlx::query_as(
        "select d.name, h.address, d.host_port from demos d join hosts h on h.id = d.host_id
         where d.routed and d.host_port is not null",
    )
    .fetch_all(db)
    .await
}
