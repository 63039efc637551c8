//! Events, as the `demofleet_intake` function (migrations 3, 26 and 30) records them: each
//! delivery noted once, each demo's generation bumped by a newer event and its live chain
//! superseded, in one round trip for a whole batch. A deploy's chain is made when its
//! generation begins ([`crate::db::chains::begin_generation`]); a teardown's, here.

use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use time::OffsetDateTime;
use uuid::Uuid;

use super::demos::DeployRequest;

/// What an event asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Run the pull request's head commit, as a new generation.
    Deploy,
    /// Stop the demo, as a new generation.
    Teardown,
    /// Converted to draft: stop if the repository's draft policy says so.
    Draft,
    /// Only record the delivery, with the outcome given.
    Record,
}

/// One event to record, as the `demofleet_intake` function reads it (and stores it, for
/// deliveries that asked for work).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub kind: Kind,
    /// `X-GitHub-Delivery`, or none for events of our own (a TTL running out).
    pub delivery: Option<String>,
    pub event: Option<String>,
    pub action: Option<String>,
    /// For [`Kind::Record`]: the outcome and its detail.
    pub outcome: Option<String>,
    pub detail: Option<String>,
    #[serde(flatten)]
    pub pull_request: Option<DeployRequest>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub event_at: Option<OffsetDateTime>,
    /// Who asked, for the audit trail.
    pub actor: String,
}

impl Event {
    /// A delivery that starts no work.
    pub fn record(delivery: &str, event: &str, action: Option<&str>, outcome: &str, detail: Option<&str>) -> Event {
        Event {
            kind: Kind::Record,
            delivery: Some(delivery.into()),
            event: Some(event.into()),
            action: action.map(Into::into),
            outcome: Some(outcome.into()),
            detail: detail.map(Into::into),
            pull_request: None,
            event_at: None,
            actor: String::new(),
        }
    }

    /// An event about a pull request.
    pub fn pull_request(kind: Kind, request: DeployRequest, actor: &str, event_at: Option<OffsetDateTime>) -> Event {
        Event {
            kind,
            delivery: None,
            event: None,
            action: None,
            outcome: None,
            detail: None,
            pull_request: Some(request),
            event_at,
            actor: actor.into(),
        }
    }

    /// The same event, arriving as webhook delivery `id`.
    pub fn delivered(self, id: &str, event: &str, action: &str) -> Event {
        Event { delivery: Some(id.into()), event: Some(event.into()), action: Some(action.into()), ..self }
    }

    /// What an event holds in a batch: its pull request and its delivery id, each with
    /// whether other events holding it may share the batch. One delivery's redeliveries
    /// may not; nor may a pull request's teardowns and drafts, or its deploys lacking the
    /// event's time or sender (the intake's statement then could not tell their order, or
    /// who brought the head commit). Its other deploys may, and are applied in their order.
    pub fn keys(&self) -> [Option<(String, bool)>; 2] {
        let shared = self.kind == Kind::Deploy
            && self.event_at.is_some()
            && self.pull_request.as_ref().is_some_and(|r| r.pushed_by.is_some());
        [
            self.pull_request_key().map(|k| (k, shared)),
            self.delivery.as_ref().map(|d| (format!("delivery\0{d}"), false)),
        ]
    }

    /// The pull request an event is about, as a key that sorts batches.
    pub fn pull_request_key(&self) -> Option<String> {
        self.pull_request.as_ref().map(|r| format!("pr\0{}\0{}\0{}", r.owner, r.repo, r.pr))
    }
}

/// A demo an event changed.
#[derive(Debug, Clone, Deserialize)]
pub struct DemoRef {
    pub id: Uuid,
    pub name: String,
    pub generation: i64,
}

/// What became of an event.
#[derive(Debug, Clone, Deserialize)]
pub struct Recorded {
    /// `deploy_queued`, `teardown_queued`, `stale`, `ignored`, `duplicate`, or a
    /// [`Kind::Record`] event's own.
    pub outcome: String,
    pub detail: Option<String>,
    pub demo: Option<DemoRef>,
    /// The chain it created, waiting to be started: a teardown's (a deploy's is made when
    /// its generation begins).
    pub chain: Option<Uuid>,
}

/// Record `events` in order, in the caller's transaction (or as one of their own).
/// The outer error is the call's (nothing was recorded); an inner one, an answer that
/// did not read (its event was recorded).
pub async fn record(db: impl PgExecutor<'_>, events: &[Event]) -> sqlx::Result<Vec<sqlx::Result<Recorded>>> {
    let answers: sqlx::types::Json<Vec<serde_json::Value>> = sqlx::query_scalar(
        // With the events, in the same statement: the newest title each pull request's
        // events carry, written only when it changed. An unchanged title is left out before
        // the insert: `on conflict do update` locks the row it finds even when its `where`
        // then declines the update, and that lock is a write of its own.
        "with newest as (
                 select distinct on (e->>'owner', e->>'repo', (e->>'pr')::int8)
                        e->>'owner' as owner, e->>'repo' as repo, (e->>'pr')::int8 as pr, e->>'title' as title
                 from jsonb_array_elements($1) with ordinality as events(e, i)
                 where e->>'title' is not null and e->>'owner' is not null and e->>'pr' is not null
                 order by e->>'owner', e->>'repo', (e->>'pr')::int8, i desc
             ), titles as (
                 insert into pull_request_titles (owner, repo, pr, title)
                 select n.owner, n.repo, n.pr, n.title from newest n
                 where not exists (select 1 from pull_request_titles t
                                   where (t.owner, t.repo, t.pr, t.title) = (n.owner, n.repo, n.pr, n.title))
                 on conflict (owner, repo, pr) do update set title = excluded.title
                     where pull_request_titles.title is distinct from excluded.title
             )
             select demofleet_intake($1)",
    )
    .bind(sqlx::types::Json(events))
    .fetch_one(db)
    .await?;
    Ok(answers.0.into_iter().map(|a| serde_json::from_value(a).map_err(|e| sqlx::Error::Decode(e.into()))).collect())
}
