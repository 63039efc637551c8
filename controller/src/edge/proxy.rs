//! Forwarding: hyper server in, hyper-util client out, bodies streamed both ways.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{pages, RouteTable};
use crate::state::DemoUrls;

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
    client: Client<HttpConnector, Incoming>,
}

impl Edge {
    pub fn new(routes: RouteTable, urls: Arc<DemoUrls>) -> Edge {
        let client = Client::builder(TokioExecutor::new()).build_http();
        Edge { routes, urls, client }
    }

    /// Accept connections on `listener` until `stop`.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        let connections = TaskTracker::new();
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(err) => {
                        tracing::warn!(error = %err, "edge accept failed");
                        continue;
                    }
                },
            };
            let edge = self.clone();
            let stop = stop.clone();
            connections.spawn(async move {
                let service = service_fn(move |req| {
                    let edge = edge.clone();
                    async move { Ok::<_, Infallible>(edge.handle(req, peer).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = stop.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
        connections.close();
        connections.wait().await;
    }

    async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<EdgeBody> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let Some(upstream) = self.urls.name_from_host(&host).and_then(|name| self.routes.get(name)) else {
            return pages::not_found();
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let Ok(uri) = format!("http://{upstream}{path}").parse::<Uri>() else {
            return pages::bad_gateway();
        };
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prior) => format!("{prior}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        for (name, value) in
            [("x-forwarded-for", forwarded_for.as_str()), ("x-forwarded-proto", "http"), ("x-forwarded-host", &host)]
        {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        match tokio::time::timeout(UPSTREAM_TIMEOUT, self.client.request(req)).await {
            Ok(Ok(mut response)) => {
                strip_hop_by_hop(response.headers_mut());
                response.map(|body| body.boxed())
            }
            Ok(Err(err)) => {
                tracing::debug!(%upstream, error = %err, "demo did not answer");
                pages::bad_gateway()
            }
            Err(_) => pages::bad_gateway(),
        }
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
