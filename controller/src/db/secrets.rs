//! A repository's environment variables for its previews, stored sealed (`repo_secrets`):
//! queries never see a value in clear; sealing and opening is [`crate::secrets`]'s.

use serde::Serialize;
use sqlx::{FromRow, PgExecutor};
use time::OffsetDateTime;

/// What may be shown of a variable: its name, never its value.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct SecretName {
    pub name: String,
    pub updated_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A variable as stored: its name and its sealed value.
#[derive(FromRow)]
pub struct Sealed {
    pub name: String,
    pub sealed: Vec<u8>,
}

pub async fn names(db: impl PgExecutor<'_>, owner: &str, repo: &str) -> sqlx::Result<Vec<SecretName>> {
    sqlx::query_as("select name, updated_by, updated_at from repo_secrets where owner = $1 and repo = $2 order by name")
        .bind(owner)
        .bind(repo)
        .fetch_all(db)
        .await
}

pub async fn sealed(db: impl PgExecutor<'_>, owner: &str, repo: &str) -> sqlx::Result<Vec<Sealed>> {
    sqlx::query_as("select name, sealed from repo_secrets where owner = $1 and repo = $2 order by name")
        .bind(owner)
        .bind(repo)
        .fetch_all(db)
        .await
}

/// Set (or replace) variable `name`.
pub async fn put(
    db: impl PgExecutor<'_>,
    owner: &str,
    repo: &str,
    name: &str,
    sealed: &[u8],
    by: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "insert into repo_secrets (owner, repo, name, sealed, updated_by) values ($1, $2, $3, $4, $5)
         on conflict (owner, repo, name) do update
             set sealed = excluded.sealed, updated_by = excluded.updated_by, updated_at = now()",
    )
    .bind(owner)
    .bind(repo)
    .bind(name)
    .bind(sealed)
    .bind(by)
    .execute(db)
    .await?;
    Ok(())
}

/// Remove variable `name`; false when there was none.
pub async fn delete(db: impl PgExecutor<'_>, owner: &str, repo: &str, name: &str) -> sqlx::Result<bool> {
    let done = sqlx::query("delete from repo_secrets where owner = $1 and repo = $2 and name = $3")
        .bind(owner)
        .bind(repo)
        .bind(name)
        .execute(db)
        .await?;
    Ok(done.rows_affected() > 0)
}
