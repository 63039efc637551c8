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
            if usable(since, &sender) {
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
                senders.retain(|(since, sender)| usable(*since, sender));
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

/// Whether an idle connection, kept since `since`, may still serve a request.
fn usable(since: Instant, sender: &Sender) -> bool {
    !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT
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
        // The server stops reading at the end it was told of (a Content-Length), so the end
        // is the last frame as often as it is the `None` after it.
        if matches!(frame, Poll::Ready(None)) || self.body.is_end_stream() {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    /// A demo on loopback answering `hello` (with a Content-Length), or an empty body at
    /// `/empty`, counting the connections it accepted.
    async fn demo() -> (Arc<str>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: Arc<str> = listener.local_addr().unwrap().to_string().into();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let answer = service_fn(|req: Request<Incoming>| async move {
                        let body = if req.uri().path() == "/empty" { Bytes::new() } else { Bytes::from("hello") };
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(body)))
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), answer).await;
                });
            }
        });
        (address, accepted)
    }

    fn get(address: &str, path: &str) -> Request<UpstreamBody> {
        Request::get(path).header("host", address).body(Either::Right(Empty::new())).unwrap()
    }

    /// Read an answer as the edge's server does: frames until the body says it has ended,
    /// not on to the `None` after the end. The bytes read.
    async fn read_as_the_server_does(response: Response<Returning>) -> usize {
        let mut body = response.into_body();
        let mut read = 0;
        while !body.is_end_stream() {
            match body.frame().await {
                Some(frame) => read += frame.unwrap().into_data().map_or(0, |data| data.len()),
                None => break,
            }
        }
        read
    }

    #[tokio::test]
    async fn a_connection_read_to_its_end_is_used_again() {
        let (address, accepted) = demo().await;
        let pool = Arc::new(Pool::default());
        for path in ["/", "/empty", "/", "/empty", "/"] {
            let response = pool.send(&address, get(&address, path), false).await.ok().expect("an answer");
            assert_eq!(read_as_the_server_does(response).await, if path == "/" { 5 } else { 0 });
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "five requests in turn took more than one connection");
    }

    #[tokio::test]
    async fn a_connection_whose_answer_is_left_unread_or_upgraded_is_not_used_again() {
        let (address, accepted) = demo().await;
        let pool = Arc::new(Pool::default());
        let unread = pool.send(&address, get(&address, "/"), false).await.ok().expect("an answer");
        let upgraded = pool.send(&address, get(&address, "/empty"), true).await.ok().expect("an answer");
        let read = pool.send(&address, get(&address, "/"), false).await.ok().expect("an answer");
        read_as_the_server_does(read).await;
        drop((unread, upgraded));
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        // Only the one read to its end is there for the next request.
        let again = pool.send(&address, get(&address, "/"), false).await.ok().expect("an answer");
        read_as_the_server_does(again).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }
}
