//! Per-repository settings; a repository without a row has the defaults.

use sqlx::PgExecutor;

/// What `converted_to_draft` does to the repository's demos: `keep` (default) or `stop`.
pub async fn draft_policy(db: impl PgExecutor<'_>, owner: &str, repo: &str) -> sqlx::Result<String> {
    let policy: Option<String> =
        sqlx::query_scalar("select draft_policy from repo_settings where owner = $1 and repo = $2")
            .bind(owner)
            .bind(repo)
            .fetch_optional(db)
            .await?;
    Ok(policy.unwrap_or_else(|| "keep".into()))
}
