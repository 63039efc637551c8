//! The application state every handler and background task shares.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::Notify;

use crate::broker::Broker;
use crate::config::Config;
use crate::edge::RouteTable;
use crate::github::GitHub;
use crate::scheduler::authorize::PermissionCache;
use crate::scheduler::RouteChange;

#[derive(Clone)]
pub struct AppState {
    /// Settings, validated.
    pub config: Arc<Config>,
    /// The state of record.
    pub db: PgPool,
    /// RabbitMQ, reconnecting on demand.
    pub broker: Arc<Broker>,
    /// NATS, for heartbeats and live logs.
    pub nats: async_nats::Client,
    /// Where the edge proxy sends each demo hostname.
    pub routes: RouteTable,
    /// Sign-in and the preview gate.
    pub auth: Arc<crate::auth::Auth>,
    /// Woken after a commit that put messages in the outbox.
    pub outbox: Arc<Notify>,
    /// How demo hostnames and URLs are spelled.
    pub urls: Arc<DemoUrls>,
    /// The GitHub API, when credentials are configured.
    pub github: Option<Arc<GitHub>>,
    /// Recent answers about authors' permissions.
    pub permissions: Arc<PermissionCache>,
    /// Records webhook events in batches.
    pub intake: crate::intake::Intake,
    /// How long placement and heartbeat handling take, for `/metrics`.
    pub timings: Arc<crate::timings::Timings>,
    /// Cancelled when the controller shuts down; endless responses (live logs) end with it.
    pub stopping: tokio_util::sync::CancellationToken,
}

impl AppState {
    /// Run `work` in a transaction of its own, commit, then apply the effects it returns.
    pub async fn transact<T, E: From<sqlx::Error>>(
        &self,
        work: impl for<'t> AsyncFnOnce(&mut crate::db::Tx<'t>) -> Result<(T, crate::scheduler::Effects), E>,
    ) -> Result<T, E> {
        let mut tx = self.db.begin().await?;
        let (value, effects) = work(&mut tx).await?;
        tx.commit().await?;
        self.apply(effects).await;
        Ok(value)
    }

    /// Apply what a committed transaction asked for.
    pub async fn apply(&self, effects: crate::scheduler::Effects) {
        // Routes first: a step queued by the same change (retiring the old container, say)
        // must find the edge already pointing at the new one.
        let reloaded = match effects.routes_changed {
            RouteChange::None => Ok(()),
            RouteChange::Demo(id) => self.routes.reload_demo(&self.db, id).await,
            RouteChange::Many => self.routes.reload(&self.db).await,
        };
        if let Err(err) = reloaded {
            tracing::warn!(error = %err, "route table reload failed; the next tick retries");
        }
        if effects.published {
            self.outbox.notify_one();
        }
    }
}

/// Demo hostnames `<name>.<base domain>` and the URLs people use to reach them.
#[derive(Debug, Clone)]
pub struct DemoUrls {
    pub base_domain: String,
    pub scheme: String,
    /// Shown in URLs when it is not the scheme's default.
    pub port: Option<u16>,
}

impl DemoUrls {
    pub fn hostname(&self, name: &str) -> String {
        format!("{name}.{}", self.base_domain)
    }

    pub fn url(&self, hostname: &str) -> String {
        let default_port = if self.scheme == "https" { 443 } else { 80 };
        match self.port {
            Some(port) if port != default_port => format!("{}://{hostname}:{port}", self.scheme),
            _ => format!("{}://{hostname}", self.scheme),
        }
    }

    /// The demo name a request's `Host` header asks for, if it is under the base domain
    /// or `localhost`.
    pub fn name_from_host<'h>(&self, host: &'h str) -> Option<&'h str> {
        let host =
            host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h);
        let host = host.strip_suffix('.').unwrap_or(host);
        [self.base_domain.as_str(), "localhost"]
            .iter()
            .find_map(|domain| host.strip_suffix(domain)?.strip_suffix('.'))
            .filter(|name| !name.is_empty() && !name.contains('.'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_hosts() {
        let urls = DemoUrls { base_domain: "demos.example.com".into(), scheme: "https".into(), port: Some(443) };
        assert_eq!(urls.url(&urls.hostname("a-b-pr-1")), "https://a-b-pr-1.demos.example.com");
        assert_eq!(urls.name_from_host("a-b-pr-1.demos.example.com"), Some("a-b-pr-1"));
        assert_eq!(urls.name_from_host("a-b-pr-1.localhost:8080"), Some("a-b-pr-1"));
        assert_eq!(urls.name_from_host("x.y.localhost"), None);
        assert_eq!(urls.name_from_host("localhost"), None);
        assert_eq!(urls.name_from_host("a-b-pr-1.example.org"), None);
        let local = DemoUrls { base_domain: "localhost".into(), scheme: "http".into(), port: Some(8080) };
        assert_eq!(local.url("n.localhost"), "http://n.localhost:8080");
    }
}
