//! Forwarding: hyper server in, hyper client out over the [`Pool`]'s connections, bodies
//! streamed both ways.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::pool::{Pool, Unanswered};
use super::{pages, RouteTable, Target};
use crate::auth::{gate, Auth};
use crate::listener::{self, Limits};
use crate::urls::DemoUrls;

/// Every response body the edge sends.
pub type EdgeBody = BoxBody<Bytes, hyper::Error>;

/// How long a demo may take to start answering a request.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// Headers that describe one connection and must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub struct Edge {
    routes: RouteTable,
    urls: Arc<DemoUrls>,
    auth: Arc<Auth>,
    pool: Arc<Pool>,
    /// Sleeping demos that a request asked for.
    wake: tokio::sync::mpsc::UnboundedSender<uuid::Uuid>,
    limits: Limits,
}

impl Edge {
    pub fn new(
        routes: RouteTable,
        urls: Arc<DemoUrls>,
        auth: Arc<Auth>,
        wake: tokio::sync::mpsc::UnboundedSender<uuid::Uuid>,
        limits: Limits,
    ) -> Edge {
        // A visitor's connection and the one to its demo: two descriptors each, and some
        // for everything else.
        listener::raise_open_files_limit(2 * limits.max_connections as u64 + 1024);
        Edge { routes, urls, auth, pool: Arc::default(), wake, limits }
    }

    /// Accept connections on `listener` until `stop`, within the edge's [`Limits`].
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        let limits = self.limits;
        listener::serve(listener, limits, stop, move |peer| {
            let edge = self.clone();
            service_fn(move |req| {
                let edge = edge.clone();
                async move { Ok::<_, Infallible>(edge.handle(req, peer).await) }
            })
        })
        .await
    }

    async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<EdgeBody> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let Some((name, visit)) =
            self.urls.name_from_host(&host).and_then(|name| Some((name, self.routes.visit(name)?)))
        else {
            return page(pages::not_found());
        };
        // Gated previews: only people signed in, and the gate's cookie stays here.
        if visit.gated {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            match self.auth.gate.check(&self.urls.scheme, &host, path, req.headers()).await {
                gate::Decision::Pass { .. } => {}
                gate::Decision::Redirect { location, set_cookie } => {
                    return page(pages::redirect(&location, set_cookie.as_deref()));
                }
                gate::Decision::Refuse { status, message } => return page(pages::refused(status, &message)),
            }
            gate::strip_cookie(req.headers_mut());
        }
        let upstream = match visit.target {
            Target::Up(upstream) => upstream,
            Target::Asleep(demo) => {
                let _ = self.wake.send(demo);
                return page(pages::waking_up());
            }
        };
        // Sent as origin-form (`/path?query`), whatever form the visitor used.
        if req.uri().scheme().is_some() {
            let path = req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(path);
        }
        // A protocol upgrade (WebSocket) keeps its Upgrade and Connection headers and, once
        // the demo agrees, becomes a byte pipe between the two connections.
        let upgrade = upgrade_protocol(req.headers());
        let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        if let Some(protocol) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        if !headers.contains_key(header::HOST) {
            if let Ok(value) = HeaderValue::from_str(&host) {
                headers.insert(header::HOST, value);
            }
        }
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prior) => format!("{prior}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), value);
        }
        headers.insert(HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static("http"));
        // The Host header as the visitor sent it (it is there now, from the visitor or above).
        if let Some(value) = headers.get(header::HOST).cloned() {
            headers.insert(HeaderName::from_static("x-forwarded-host"), value);
        }
        // A request without a body that only reads can be sent again, unchanged.
        let replay = (upgrade.is_none() && is_safe(req.method()) && req.body().is_end_stream())
            .then(|| (req.method().clone(), req.uri().clone(), req.headers().clone()));
        let upgrading = upgrade.is_some();
        let sending = self.pool.send(&upstream, req.map(Either::Left), upgrading);
        let mut sent = tokio::time::timeout(UPSTREAM_TIMEOUT, sending).await;
        // Sent and not answered. A request that can be sent again is, on a new connection:
        // when it went over a kept one (the demo may have closed it as the request left), or
        // when the route moved while it was on its way (an update switched to the new
        // generation and the old one is being removed), to the new address.
        if let (Ok(Err(unanswered)), Some((method, uri, headers))) = (&sent, replay) {
            let moved = match self.routes.target(name) {
                Some(Target::Up(now)) if now != upstream => Some(now),
                _ => None,
            };
            if moved.is_some() || unanswered.reused {
                let to = moved.unwrap_or_else(|| upstream.clone());
                tracing::debug!(from = %upstream, %to, error = %unanswered.error, "asking the demo again");
                let mut again = Request::new(Either::Right(Empty::new()));
                (*again.method_mut(), *again.uri_mut(), *again.headers_mut()) = (method, uri, headers);
                let resent = tokio::time::timeout(UPSTREAM_TIMEOUT, self.pool.send_new(&to, again, false)).await;
                sent = resent.map(|answer| answer.map_err(|error| Unanswered { error, reused: false }));
            }
        }
        match sent {
            Ok(Ok(mut response)) => {
                if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client_side) = client_side {
                        let demo_side = hyper::upgrade::on(&mut response);
                        tokio::spawn(pipe(client_side, demo_side));
                        return response.map(|body| body.boxed());
                    }
                }
                strip_hop_by_hop(response.headers_mut());
                response.map(|body| body.boxed())
            }
            Ok(Err(unanswered)) => {
                tracing::debug!(%upstream, error = %unanswered.error, "demo did not answer");
                page(pages::bad_gateway())
            }
            Err(_) => page(pages::bad_gateway()),
        }
    }
}

/// One of the edge's own pages, as the edge sends it.
fn page(page: Response<Bytes>) -> Response<EdgeBody> {
    page.map(|html| Full::new(html).map_err(|never| match never {}).boxed())
}

/// Methods that only read (RFC 9110 §9.2.1): asking again changes nothing.
fn is_safe(method: &http::Method) -> bool {
    matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS)
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` with `Upgrade: …`).
fn upgrade_protocol(headers: &http::HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned()).flatten()
}

/// Copy bytes both ways between an upgraded client connection and the demo's, until
/// either side closes.
async fn pipe(client: hyper::upgrade::OnUpgrade, demo: hyper::upgrade::OnUpgrade) {
    let (client, demo) = match tokio::try_join!(client, demo) {
        Ok(both) => both,
        Err(err) => {
            tracing::debug!(error = %err, "upgrade did not complete");
            return;
        }
    };
    let (mut client, mut demo) = (TokioIo::new(client), TokioIo::new(demo));
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut demo).await {
        tracing::debug!(error = %err, "upgraded connection ended");
    }
}

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
}
