//! Bounds on what a client can hold open: at most a number of connections at once, each
//! given a deadline to send a request's headers (which also ends idle keep-alive
//! connections, as the wait for the next request's headers). Nothing here knows the edge:
//! any listener that serves hyper connections itself can use it.
//!
//! - [`BoundedListener`]: accepts a connection only while it has a free slot; the slot goes
//!   with the socket ([`SlotStream`]), so an upgraded connection (a WebSocket) keeps it
//!   until it closes. At the bound, new connections wait in the kernel's backlog until a
//!   slot frees; a failed accept (out of file descriptors) is retried after a pause
//!   instead of at once.
//! - [`http1`]: a hyper HTTP/1 server builder with the header deadline set.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioTimer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// A hyper HTTP/1 server whose connections are closed when a request's headers (or the
/// next request on a kept-alive connection) take longer than `limits.header_timeout`.
pub fn http1(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    builder
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
