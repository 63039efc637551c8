//! Queries on the state of record, one module per table group. Functions take any
//! executor so callers decide the transaction.

pub mod audit;
pub mod chains;
pub mod demos;
pub mod enrolments;
pub mod events;
pub mod hosts;
pub mod logs;
pub mod outbox;
pub mod secrets;
pub mod settings;
pub mod tokens;

/// A Postgres transaction.
pub type Tx<'a> = sqlx::Transaction<'a, sqlx::Postgres>;
