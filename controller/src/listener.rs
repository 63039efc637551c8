//! The controller's two listeners (the API's and the edge's) and what a client may hold
//! open on them: at most a number of connections at once, each given a deadline to send a
//! request's headers (which also ends idle keep-alive connections, as the wait for the next
//! request's headers). Nothing here knows what is served.
//!
//! - [`serve`]: accept and serve HTTP/1 connections within [`Limits`] until told to stop.
//! - [`Deadline`]: a request body that must be complete by a deadline.
//! - [`BoundedListener`]: accepts a connection only while it has a free slot; the slot goes
//!   with the socket ([`SlotStream`]), so an upgraded connection (a WebSocket) keeps it
//!   until it closes. At the bound, new connections wait in the kernel's backlog until a
//!   slot frees; a failed accept (out of file descriptors) is retried after a pause
//!   instead of at once.
//! - [`http1`]: a hyper HTTP/1 server builder with the header deadline set.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a failed accept waits before the next, at first and at most.
const ACCEPT_PAUSE: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// What a listener allows each client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// From the moment a connection waits for a request until its headers are complete.
    pub header_timeout: Duration,
}

/// A TCP listener that holds at most [`Limits::max_connections`] connections open.
pub struct BoundedListener {
    listener: TcpListener,
    slots: Arc<Semaphore>,
}

impl BoundedListener {
    pub fn new(listener: TcpListener, max_connections: usize) -> BoundedListener {
        BoundedListener { listener, slots: Arc::new(Semaphore::new(max_connections.max(1))) }
    }

    /// The next connection, once one of the slots is free.
    pub async fn accept(&self) -> (SlotStream, SocketAddr) {
        let slot = self.slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        let mut pause = ACCEPT_PAUSE.0;
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => return (SlotStream { stream, _slot: slot }, peer),
                Err(err) => {
                    // Out of file descriptors or memory: the connection stays in the backlog
                    // and accepting again at once would only spin.
                    tracing::warn!(error = %err, "accept failed; pausing {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(ACCEPT_PAUSE.1);
                }
            }
        }
    }

    /// Connections open now.
    pub fn open(&self, limits: &Limits) -> usize {
        limits.max_connections.max(1) - self.slots.available_permits()
    }
}

/// An accepted connection holding its slot until it is dropped.
pub struct SlotStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl SlotStream {
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.stream.set_nodelay(on)
    }
}

impl AsyncRead for SlotStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for SlotStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serve HTTP/1 on `listener` within `limits` until `stop`: each connection gets the service
/// `service(peer)` makes. On stop, new connections are no longer accepted and open ones end
/// once the request in hand is answered; this returns when all have ended.
pub async fn serve<S, B>(
    listener: TcpListener,
    limits: Limits,
    stop: CancellationToken,
    service: impl Fn(SocketAddr) -> S,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let listener = BoundedListener::new(listener, limits.max_connections);
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        // Small requests and answers go out at once, not after Nagle's delay.
        let _ = stream.set_nodelay(true);
        let service = service(peer);
        let stop = stop.clone();
        connections.spawn(async move {
            let conn = http1(&limits).serve_connection(TokioIo::new(stream), service).with_upgrades();
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

/// A hyper HTTP/1 server whose connections are closed when a request's headers (or the
/// next request on a kept-alive connection) take longer than `limits.header_timeout`.
pub fn http1(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    builder
}

/// A request body that must be complete within a time set when its headers were read; past
/// it, reading fails with [`BodyTimeout`]. The deadline is the whole body's, not each read's,
/// so a body trickling a byte at a time cannot hold its connection for longer.
pub struct Deadline<B> {
    body: B,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl<B> Deadline<B> {
    pub fn new(body: B, timeout: Duration) -> Deadline<B> {
        Deadline { body, deadline: Box::pin(tokio::time::sleep(timeout)), timeout }
    }
}

impl<B> Body for Deadline<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.get_mut();
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))));
        }
        Pin::new(&mut this.body).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body was not complete in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

impl BodyTimeout {
    /// True when `err`, or an error it was caused by, is a [`BodyTimeout`].
    pub fn caused(err: &(dyn std::error::Error + 'static)) -> bool {
        std::iter::successors(Some(err), |e| e.source()).any(|e| e.is::<BodyTimeout>())
    }
}

/// Raise this process's soft limit of open files to its hard limit (as Go programs do at
/// start), so that a bound of connections set above the usual 1,024 can be reached; warn
/// when `needed` descriptors still do not fit.
pub fn raise_open_files_limit(needed: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
        limit.rlim_cur
    };
    if soft < needed {
        tracing::warn!(
            open_files = soft,
            needed,
            "the limit of open files is below what the edge's connection bound needs; \
             raise it (LimitNOFILE, ulimit -n) or lower DEMOFLEET_EDGE_MAX_CONNECTIONS"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::{BoundedListener, Limits};

    #[tokio::test]
    async fn a_connection_past_the_bound_waits_for_a_slot() {
        let limits = Limits { max_connections: 2, header_timeout: Duration::from_secs(5) };
        let listener = BoundedListener::new(TcpListener::bind("127.0.0.1:0").await.unwrap(), limits.max_connections);
        let address = listener.listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(address).await.unwrap());
        }
        let (first, _) = listener.accept().await;
        let (_second, _) = listener.accept().await;
        assert_eq!(listener.open(&limits), 2);
        let third = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(third.is_err(), "a third connection was accepted past a bound of two");

        drop(first);
        let (mut third, _) =
            tokio::time::timeout(Duration::from_secs(5), listener.accept()).await.expect("a slot freed");
        // The connection accepted is a live one: the third client's bytes arrive.
        clients[2].write_all(b"hello").await.unwrap();
        let mut read = [0u8; 5];
        third.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"hello");
    }
}
