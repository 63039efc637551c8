//! API tokens for scripts: only a SHA-256 of each is kept, so a copy of the table opens
//! nothing. Made and revoked in the dashboard and by `demofleet-controller tokens`.

use sqlx::{FromRow, PgExecutor};
use time::OffsetDateTime;
use uuid::Uuid;

/// One token, without its secret (which is never kept).
#[derive(Debug, Clone, FromRow)]
pub struct Token {
    pub id: Uuid,
    pub name: String,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

/// The longest token name.
pub const MAX_NAME: usize = 100;

/// `name` trimmed, or why it cannot name a token.
pub fn check_name(name: &str) -> Result<&str, String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(format!("a token needs a name of 1 to {MAX_NAME} printable characters"));
    }
    Ok(name)
}

/// Keep a new token's hash under `name`.
pub async fn insert(db: impl PgExecutor<'_>, name: &str, hash: &[u8], created_by: &str) -> sqlx::Result<Uuid> {
    let id = Uuid::new_v4();
    sqlx::query("insert into api_tokens (id, name, token_hash, created_by) values ($1, $2, $3, $4)")
        .bind(id)
        .bind(name)
        .bind(hash)
        .bind(created_by)
        .execute(db)
        .await?;
    Ok(id)
}

/// Every token, newest first.
pub async fn list(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<Token>> {
    sqlx::query_as(
        "select id, name, created_by, created_at, last_used_at, revoked_at from api_tokens
         order by created_at desc, id",
    )
    .fetch_all(db)
    .await
}

/// The live token whose hash is `hash`, if any; its last use is left as it was.
pub async fn live_by_hash(db: impl PgExecutor<'_>, hash: &[u8]) -> sqlx::Result<Option<Token>> {
    sqlx::query_as(
        "select id, name, created_by, created_at, last_used_at, revoked_at from api_tokens
         where token_hash = $1 and revoked_at is null",
    )
    .bind(hash)
    .fetch_optional(db)
    .await
}

/// Revoke the live token `id`; false when there is none.
pub async fn revoke(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<bool> {
    let revoked = sqlx::query("update api_tokens set revoked_at = now() where id = $1 and revoked_at is null")
        .bind(id)
        .execute(db)
        .await?;
    Ok(revoked.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_short_printable_text() {
        assert_eq!(super::check_name("  scripts "), Ok("scripts"));
        assert!(super::check_name("").is_err());
        assert!(super::check_name("   ").is_err());
        assert!(super::check_name("a\nb").is_err());
        assert!(super::check_name(&"x".repeat(101)).is_err());
        assert!(super::check_name(&"é".repeat(100)).is_ok(), "characters, not bytes");
    }
}
