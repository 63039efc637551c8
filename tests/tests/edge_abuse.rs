//! The edge proxy under abuse (issue 22, point 4), against a controller running as a
//! process of its own (so its memory and its open files are its own): a client that sends
//! its headers a byte a second is cut after the header timeout; 10,000 idle keep-alive
//! connections hold bounded memory while normal requests still answer; 1,000 WebSockets
//! pass at once; a 1 GiB upload streams through in constant memory. The demos are servers
//! in this test, routed like running demos.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;

const DEADLINE: Duration = Duration::from_secs(120);
/// The demo that counts the bytes of each request's body.
const COUNTER: &str = "counter-abuse-pr-1";
/// The demo that echoes WebSocket messages.
const ECHO: &str = "echo-abuse-pr-2";

/// A stack whose controller runs as a process with these edge flags, and the two demos.
struct Abuse {
    stack: Stack,
    pid: u32,
    /// WebSocket connections the echo demo holds now, and at most at once.
    sockets: Arc<(AtomicUsize, AtomicUsize)>,
}

impl Abuse {
    async fn start(edge_flags: &[&str]) -> Abuse {
        let options = StackOptions {
            agents: 0,
            controller_args: edge_flags.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        };
        let mut stack = Stack::start(options).await;
        stack.run_controller_as_process(env!("CARGO_BIN_EXE_fleet-controller")).await;
        let pid = stack.controller_pid().expect("the controller runs as a process");
        let sockets = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let counter_port = serve_counter().await;
        let echo_port = serve_echo(sockets.clone()).await;
        // No agent heartbeats for this host: it is seen an hour ahead, so that the tick never
        // finds it silent (the stack's host timeout is 5 s) and moves the demos off it while a
        // test still sends to them.
        sqlx::query(
            "insert into hosts (id, address, capacity, last_seen)
             values ('abuse-host', '127.0.0.1', 2, now() + interval '1 hour')",
        )
        .execute(&stack.db)
        .await
        .unwrap();
        for (pr, name, port) in [(1, COUNTER, counter_port), (2, ECHO, echo_port)] {
            sqlx::query(
                "insert into demos (id, owner, repo, pr, name, desired, state, sha, clone_url, github_user,
                                    host_id, serving_host, host_port, routed)
                 values ($1, 'abuse', 'edge', $2, $3, 'running', 'running', 'x', 'x', 'x',
                         'abuse-host', 'abuse-host', $4, true)",
            )
            .bind(Uuid::new_v4())
            .bind(pr as i64)
            .bind(name)
            .bind(i32::from(port))
            .execute(&stack.db)
            .await
            .unwrap();
        }
        let abuse = Abuse { stack, pid, sockets };
        wait::until("the edge to route the counting demo", DEADLINE, || async {
            (abuse.get(COUNTER).await.ok()?.0 == 200).then_some(())
        })
        .await;
        abuse
    }

    /// A GET of `/` on demo `name` through the edge, on a connection of its own.
    async fn get(&self, name: &str) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect(self.stack.edge_addr).await?;
        request_on(&mut stream, name).await
    }

    /// The controller's resident memory, in KiB.
    fn rss_kib(&self) -> u64 {
        status_field(self.pid, "VmRSS")
    }

    /// Connections to the edge's port that the edge has not closed yet (any TCP state but
    /// listening, on its side: a client that closed first leaves one in CLOSE_WAIT).
    fn edge_connections(&self) -> usize {
        let port = format!(":{:04X}", self.stack.edge_addr.port());
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        table
            .lines()
            .skip(1)
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 3 && fields[1].ends_with(&port) && fields[3] != "0A"
            })
            .count()
    }
}

/// One GET of `/` for demo `name` on `stream`, kept alive: status and body.
async fn request_on(stream: &mut TcpStream, name: &str) -> std::io::Result<(u16, String)> {
    let request = format!("GET / HTTP/1.1\r\nHost: {name}.localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
        let length: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().ok()))
            .flatten()
            .unwrap_or(0);
        if body.len() >= length {
            let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            return Ok((status, body[..length].to_string()));
        }
    }
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

/// A demo answering every request with the number of bytes its body had, read as they come.
async fn serve_counter() -> u16 {
    let app = axum::Router::new().fallback(|body: axum::body::Body| async move {
        let mut stream = body.into_data_stream();
        let mut bytes = 0u64;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => bytes += chunk.len() as u64,
                Err(err) => return format!("error after {bytes} bytes: {err}"),
            }
        }
        bytes.to_string()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// A demo echoing WebSocket messages, counting the sockets it holds.
async fn serve_echo(sockets: Arc<(AtomicUsize, AtomicUsize)>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sockets = sockets.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                let now = sockets.0.fetch_add(1, Ordering::SeqCst) + 1;
                sockets.1.fetch_max(now, Ordering::SeqCst);
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                        break;
                    }
                }
                sockets.0.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_headers_a_byte_a_second_is_cut_after_the_header_timeout() {
    let abuse = Abuse::start(&["--edge-header-timeout", "2s"]).await;
    let header = format!("GET / HTTP/1.1\r\nHost: {COUNTER}.localhost\r\nX-Slow: the-end-never-comes\r\n\r\n");
    // The clock starts before the connection: the edge's timer may start as it accepts,
    // before `connect` returns here.
    let began = Instant::now();
    let mut slow = TcpStream::connect(abuse.stack.edge_addr).await.unwrap();
    let mut sent = 0;
    let mut reply = Vec::new();
    // A byte a second; the edge must close the connection long before the last one.
    let cut = tokio::time::timeout(Duration::from_secs(2 * header.len() as u64), async {
        while sent < header.len() {
            if slow.write_all(&header.as_bytes()[sent..=sent]).await.is_err() {
                return true;
            }
            sent += 1;
            let mut buf = [0u8; 1024];
            match tokio::time::timeout(Duration::from_secs(1), slow.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => reply.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        false
    })
    .await;
    assert_eq!(cut, Ok(true), "the edge still held the connection after all {} header bytes", header.len());
    assert!(reply.is_empty(), "the edge answered a request it never read: {}", String::from_utf8_lossy(&reply));
    let held = began.elapsed();
    assert!(held >= Duration::from_secs(2), "cut after {held:?}, before the 2 s header timeout");
    eprintln!("slow client cut after {held:?}, {sent} of {} header bytes sent", header.len());

    // A kept-alive connection left idle is closed after the same timeout; normal requests
    // go on answering.
    let mut idle = TcpStream::connect(abuse.stack.edge_addr).await.unwrap();
    assert_eq!(request_on(&mut idle, COUNTER).await.unwrap(), (200, "0".to_string()));
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(30), idle.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "an idle kept-alive connection was not closed: {closed:?}");
    assert_eq!(abuse.get(COUNTER).await.unwrap(), (200, "0".to_string()));
    abuse.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_keep_alive_connections_hold_bounded_memory() {
    const IDLE: usize = 10_000;
    /// Memory each idle connection may cost the edge: hyper's read buffer (8 KiB) and
    /// connection state, with room for the allocator's rounding.
    const PER_CONNECTION_KIB: u64 = 32;
    let abuse = Abuse::start(&["--edge-header-timeout", "600s"]).await;
    let edge = abuse.stack.edge_addr;
    // Warm: the edge's pool to the demo and its buffers exist before the baseline.
    for _ in 0..50 {
        assert_eq!(abuse.get(COUNTER).await.unwrap().0, 200);
    }
    let rss_before = abuse.rss_kib();

    let opened: Vec<TcpStream> = futures::stream::iter(0..IDLE)
        .map(|_| async move {
            let mut stream = TcpStream::connect(edge).await.expect("connecting to the edge");
            let answer = request_on(&mut stream, COUNTER).await.expect("a first request on each connection");
            assert_eq!(answer.0, 200);
            stream
        })
        .buffer_unordered(100)
        .collect()
        .await;
    assert_eq!(opened.len(), IDLE);
    wait::until_seen("the edge to hold every idle connection, and only those", DEADLINE, || async {
        let held = abuse.edge_connections();
        if held == IDLE {
            Ok(())
        } else {
            Err(format!("{held} connections"))
        }
    })
    .await;
    let rss = abuse.rss_kib();
    let per_connection = rss.saturating_sub(rss_before) as f64 / IDLE as f64;
    eprintln!("{IDLE} idle connections: edge RSS {rss_before} → {rss} KiB ({per_connection:.1} KiB each)");
    assert!(
        per_connection < PER_CONNECTION_KIB as f64,
        "each idle connection costs the edge {per_connection:.1} KiB (bound {PER_CONNECTION_KIB} KiB)"
    );

    // Normal requests still answer, on new connections and on idle ones.
    for _ in 0..20 {
        assert_eq!(abuse.get(COUNTER).await.unwrap(), (200, "0".to_string()));
    }
    let mut opened = opened;
    for stream in opened.iter_mut().step_by(IDLE / 50) {
        assert_eq!(request_on(stream, COUNTER).await.unwrap().0, 200, "an idle connection no longer answers");
    }
    drop(opened);
    wait::until_seen("the edge to close the connections its clients closed", DEADLINE, || async {
        let held = abuse.edge_connections();
        if held == 0 {
            Ok(())
        } else {
            Err(format!("{held} connections"))
        }
    })
    .await;
    abuse.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_websockets_pass_through_the_edge_at_once() {
    const SOCKETS: usize = 1_000;
    let abuse = Abuse::start(&[]).await;
    let edge = abuse.stack.edge_addr;
    let mut sockets: Vec<_> = futures::stream::iter(0..SOCKETS)
        .map(|i| async move {
            let mut request = format!("ws://{edge}/socket/{i}").into_client_request().unwrap();
            request.headers_mut().insert("host", format!("{ECHO}.localhost").parse().unwrap());
            let (ws, response) = tokio_tungstenite::connect_async(request).await.expect("upgrade through the edge");
            assert_eq!(response.status(), 101);
            ws
        })
        .buffer_unordered(100)
        .collect()
        .await;
    // Every socket open at the same time, end to end.
    wait::until_seen("the echo demo to hold every socket", DEADLINE, || async {
        let held = abuse.sockets.0.load(Ordering::SeqCst);
        if held == SOCKETS {
            Ok(())
        } else {
            Err(format!("{held} sockets"))
        }
    })
    .await;
    let exchanged = futures::future::join_all(sockets.iter_mut().enumerate().map(|(i, ws)| async move {
        let text = format!("message {i} through the edge");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echoed = ws.next().await.expect("an echo").expect("a message");
        (echoed.into_text().unwrap().as_str() == text) as usize
    }));
    let echoed: usize = tokio::time::timeout(DEADLINE, exchanged).await.expect("echoes in time").into_iter().sum();
    assert_eq!(echoed, SOCKETS, "echoes that came back right");
    assert_eq!(abuse.sockets.1.load(Ordering::SeqCst), SOCKETS, "most sockets the demo held at once");
    assert_eq!(abuse.get(COUNTER).await.unwrap(), (200, "0".to_string()), "a normal request beside them");
    for ws in &mut sockets {
        ws.close(None).await.unwrap();
    }
    drop(sockets);
    wait::until_seen("the echo demo to see every socket closed", DEADLINE, || async {
        let held = abuse.sockets.0.load(Ordering::SeqCst);
        if held == 0 {
            Ok(())
        } else {
            Err(format!("{held} sockets"))
        }
    })
    .await;
    abuse.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_upload_streams_through_in_constant_memory() {
    const SIZE: u64 = 1 << 30;
    const CHUNK: usize = 64 << 10;
    /// What the edge may hold of an upload at once, with room for its other work.
    const GROWTH_KIB: u64 = 32 << 10;
    let abuse = Abuse::start(&[]).await;
    let rss_before = abuse.rss_kib();
    // The edge's memory, sampled while the upload runs.
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampling = {
        let (peak, pid) = (peak.clone(), abuse.pid);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(status_field(pid, "VmRSS"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let stream = TcpStream::connect(abuse.stack.edge_addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let chunks = (SIZE / CHUNK as u64) as usize;
    let body = StreamBody::new(futures::stream::iter(
        std::iter::repeat_n(chunk, chunks).map(|c| Ok::<_, std::convert::Infallible>(Frame::data(c))),
    ));
    let request = hyper::Request::post("/upload")
        .header("host", format!("{COUNTER}.localhost"))
        .header("content-length", SIZE.to_string())
        .body(body)
        .unwrap();
    let began = Instant::now();
    let response = tokio::time::timeout(DEADLINE, async {
        let response = sender.send_request(request).await.expect("the upload's answer");
        let status = response.status().as_u16();
        (status, response.into_body().collect().await.expect("the answer's body").to_bytes())
    })
    .await
    .expect("the upload within the deadline");
    sampling.abort();
    let peak = peak.load(Ordering::Relaxed);
    eprintln!("1 GiB through the edge in {:?}: edge RSS {rss_before} KiB, peak {peak} KiB", began.elapsed());
    assert_eq!(response.0, 200);
    assert_eq!(String::from_utf8_lossy(&response.1), SIZE.to_string(), "bytes the demo received");
    assert!(
        peak.saturating_sub(rss_before) < GROWTH_KIB,
        "the edge grew by {} KiB while streaming 1 GiB (bound {GROWTH_KIB} KiB)",
        peak.saturating_sub(rss_before)
    );
    abuse.stack.stop().await;
}
