//! Connections to demos, kept open between requests.
//!
//! HTTP/1 carries one request at a time, so a connection goes back to the pool once the
//! demo's answer has been read to its end, and the next request to the same address takes
//! it. An upgraded connection (WebSocket) never goes back. At most [`MAX_IDLE`] idle
//! connections are kept per address, none longer than [`IDLE_TIMEOUT`]; one the demo closed
//! is dropped when it is next looked at.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What the edge sends a demo: the visitor's body, or nothing when it asks again.
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Idle connections kept per demo address.
const MAX_IDLE: usize = 32;
/// How long an idle connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Sender = SendRequest<UpstreamBody>;

#[derive(Default)]
pub struct Pool {
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    /// Demo address (`address:port`) → its idle connections, the newest last.
    by_address: HashMap<Arc<str>, Vec<(Instant, Sender)>>,
    /// Addresses held before the next sweep of closed and expired connections.
    sweep_at: usize,
}

/// A request the demo did not answer.
pub struct Unanswered {
    pub error: BoxError,
    /// Whether it went over a kept connection, which the demo may have closed as it was sent.
    pub reused: bool,
}

impl Pool {
    /// Send `req` to the demo at `upstream` (`address:port`) over an idle connection to it,
    /// else a new one. Unless `upgrade`, the connection goes back to the pool once the
    /// answer's body has been read.
    pub async fn send(
        self: &Arc<Self>,
        upstream: &Arc<str>,
        mut req: Request<UpstreamBody>,
        upgrade: bool,
    ) -> Result<Response<Returning>, Unanswered> {
        while let Some(mut sender) = self.take(upstream) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(self.returning(upstream, sender, response, upgrade)),
                Err(mut err) => match err.take_message() {
                    // Not sent: the demo had closed the connection.
                    Some(unsent) => req = unsent,
                    None => return Err(Unanswered { error: err.into_error().into(), reused: true }),
                },
            }
        }
        self.send_new(upstream, req, upgrade).await.map_err(|error| Unanswered { error, reused: false })
    }

    /// Send `req` to the demo at `upstream` over a new connection.
    pub async fn send_new(
        self: &Arc<Self>,
        upstream: &Arc<str>,
        req: Request<UpstreamBody>,
        upgrade: bool,
    ) -> Result<Response<Returning>, BoxError> {
        let stream = TcpStream::connect(&**upstream).await?;
        // Small requests and answers go out at once, not after Nagle's delay.
        stream.set_nodelay(true)?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!(error = %err, "connection to a demo ended");
            }
        });
        let response = sender.send_request(req).await?;
        Ok(self.returning(upstream, sender, response, upgrade))
    }

    fn returning(
        self: &Arc<Self>,
        upstream: &Arc<str>,
        sender: Sender,
        response: Response<Incoming>,
        upgrade: bool,
    ) -> Response<Returning> {
        let back = (!upgrade).then(|| (self.clone(), upstream.clone(), sender));
        response.map(|body| Returning::new(body, back))
    }

    /// An idle connection to `upstream` that may still be open.
    fn take(&self, upstream: &str) -> Option<Sender> {
        let mut idle = self.idle.lock().expect("pool lock");
        let senders = idle.by_address.get_mut(upstream)?;
        while let Some((since, sender)) = senders.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    fn give_back(&self, upstream: Arc<str>, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.by_address.len() > idle.sweep_at {
            // Demos come and go: forget the addresses whose connections all closed or expired.
            idle.by_address.retain(|_, senders| {
                senders.retain(|(since, sender)| !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT);
                !senders.is_empty()
            });
            idle.sweep_at = 2 * idle.by_address.len().max(64);
        }
        let senders = idle.by_address.entry(upstream).or_default();
        if senders.len() < MAX_IDLE {
            senders.push((Instant::now(), sender));
        }
    }
}

/// A demo's answer body that gives its connection back to the pool once read to its end.
pub struct Returning {
    body: Incoming,
    back: Option<(Arc<Pool>, Arc<str>, Sender)>,
}

impl Returning {
    fn new(body: Incoming, back: Option<(Arc<Pool>, Arc<str>, Sender)>) -> Returning {
        let mut returning = Returning { body, back };
        // An empty body may never be read.
        if returning.body.is_end_stream() {
            returning.give_back();
        }
        returning
    }

    fn give_back(&mut self) {
        if let Some((pool, upstream, sender)) = self.back.take() {
            pool.give_back(upstream, sender);
        }
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            self.give_back();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
