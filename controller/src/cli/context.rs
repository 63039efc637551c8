//! What every subcommand shares: a connection to the state of record, and the name its
//! changes are audited under.

use crate::config::Database;

/// Who did it, for the audit trail: `cli:<the system user>`.
pub fn actor() -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| format!("uid {uid}"));
    format!("cli:{user}")
}

/// Connect to the state of record for a subcommand.
pub async fn connect(database: &Database) -> anyhow::Result<sqlx::PgPool> {
    crate::connect_db(&database.database_url, 2).await
}
