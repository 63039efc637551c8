//! The route table following the database: every committed change to a route is announced
//! on the channel [`CHANNEL`] by triggers (migration 28): a demo's id when its own route
//! changes, `*` when a host's address or a repository's settings change (many routes at
//! once). Each replica listens and updates what was announced, so no replica reads every
//! route each tick. The whole table is read when listening begins (and again after the
//! connection was lost: what was announced meanwhile is gone) and every [`FULL_RELOAD`], in
//! case a change came from a session that bypassed the triggers.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::RouteTable;

/// The channel the triggers announce route changes on.
pub const CHANNEL: &str = "demofleet_routes";

/// How often the whole table is read whatever was announced.
pub const FULL_RELOAD: Duration = Duration::from_secs(60);

/// More demos than this announced at once are read as the whole table.
const MOST_ONE_BY_ONE: usize = 500;

/// How long to wait before listening again after the connection failed.
const RETRY: Duration = Duration::from_secs(1);

/// What arrived on the channel since the last update.
#[derive(Debug, Default, PartialEq, Eq)]
struct Announced {
    all: bool,
    demos: HashSet<Uuid>,
}

impl Announced {
    fn note(&mut self, payload: &str) {
        match payload.parse::<Uuid>() {
            Ok(id) if !self.all => {
                self.demos.insert(id);
                if self.demos.len() > MOST_ONE_BY_ONE {
                    self.everything();
                }
            }
            Ok(_) => {}
            // `*`, or anything this version does not know: read everything.
            Err(_) => self.everything(),
        }
    }

    fn everything(&mut self) {
        self.all = true;
        self.demos.clear();
    }
}

/// Keep `routes` in step with the database until `stop`.
pub async fn run(routes: RouteTable, db: PgPool, database_url: String, stop: CancellationToken) {
    loop {
        let listener = tokio::select! {
            listener = listen(&database_url) => listener,
            () = stop.cancelled() => return,
        };
        match listener {
            Ok(listener) => {
                if follow(&routes, &db, listener, &stop).await {
                    return;
                }
            }
            Err(err) => tracing::warn!(error = %err, "listening for route changes failed; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = stop.cancelled() => return,
        }
    }
}

async fn listen(database_url: &str) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect(database_url).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Follow the announcements on `listener` until its connection is lost (false) or `stop`
/// (true).
async fn follow(routes: &RouteTable, db: &PgPool, mut listener: PgListener, stop: &CancellationToken) -> bool {
    // Listening already: a change committed from here on is announced, so reading the whole
    // table now misses nothing.
    let mut pending = Announced { all: true, ..Default::default() };
    let mut full = tokio::time::interval(FULL_RELOAD);
    full.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    full.reset();
    loop {
        if pending != Announced::default() {
            let update = std::mem::take(&mut pending);
            if let Err(err) = apply(routes, db, &update).await {
                tracing::warn!(error = %err, "updating the route table failed; reading it whole next");
                pending.everything();
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => {}
                    () = stop.cancelled() => return true,
                }
                continue;
            }
        }
        tokio::select! {
            received = listener.try_recv() => match received {
                Ok(Some(notification)) => {
                    pending.note(notification.payload());
                    while let Some(notification) = listener.next_buffered() {
                        pending.note(notification.payload());
                    }
                }
                Ok(None) => {
                    tracing::warn!("the connection announcing route changes was lost; listening again");
                    return false;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "receiving route changes failed; listening again");
                    return false;
                }
            },
            _ = full.tick() => pending.everything(),
            () = stop.cancelled() => return true,
        }
    }
}

async fn apply(routes: &RouteTable, db: &PgPool, update: &Announced) -> sqlx::Result<()> {
    if update.all {
        return routes.reload(db).await;
    }
    for id in &update.demos {
        routes.reload_demo(db, *id).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demos_are_noted_one_by_one_until_everything_is_asked_or_too_many_are() {
        let mut announced = Announced::default();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        announced.note(&a.to_string());
        announced.note(&b.to_string());
        announced.note(&a.to_string());
        assert_eq!(announced, Announced { all: false, demos: HashSet::from([a, b]) });

        announced.note("*");
        assert_eq!(announced, Announced { all: true, demos: HashSet::new() });
        announced.note(&a.to_string());
        assert_eq!(announced, Announced { all: true, demos: HashSet::new() }, "everything covers a demo");

        let mut many = Announced::default();
        for n in 0..=MOST_ONE_BY_ONE as u128 {
            many.note(&Uuid::from_u128(n).to_string());
        }
        assert_eq!(many, Announced { all: true, demos: HashSet::new() });
    }
}
