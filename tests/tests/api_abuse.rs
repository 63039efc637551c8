//! The API listener (webhook, API, dashboard) under abuse (issue 23, point 7): what a client
//! can hold open there is bounded as at the edge. Headers sent a byte a second are cut at the
//! header timeout; a body trickled in is answered 408 at the body timeout, however often a
//! byte arrives; a delivery whose headers cannot be GitHub's (no signature, too long, no
//! length) is refused before its body is sent; bodies held in memory together wait for room;
//! connections past the bound wait until slots free. Through all of it, what was accepted
//! stays recorded and a real delivery is still taken.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use demofleet_tests::fixtures::{self, sign};
use demofleet_tests::stack::{Stack, StackOptions};

const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const BODY_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_BODY: usize = 64 * 1024;
const MAX_CONNECTIONS: usize = 8;
/// Longer than any of the listener's timeouts: an answer that takes this long is a hang.
const HANG: Duration = Duration::from_secs(30);

async fn abused_stack() -> Stack {
    let flags = [
        ("--http-max-connections", MAX_CONNECTIONS.to_string()),
        ("--http-header-timeout", format!("{}s", HEADER_TIMEOUT.as_secs())),
        ("--http-body-timeout", format!("{}s", BODY_TIMEOUT.as_secs())),
        ("--webhook-max-bytes", MAX_BODY.to_string()),
        // Room for two of the largest bodies at once.
        ("--webhook-buffer-bytes", (2 * MAX_BODY).to_string()),
    ];
    let options = StackOptions {
        agents: 0,
        controller_args: flags.into_iter().flat_map(|(flag, value)| [flag.to_string(), value]).collect(),
        ..Default::default()
    };
    Stack::start(options).await
}

/// The head of a webhook request declaring a body of `length` bytes, signed (in form) or not.
fn webhook_head(length: usize, signed: bool) -> String {
    let signature = if signed { format!("x-hub-signature-256: sha256={}\r\n", "0".repeat(64)) } else { String::new() };
    format!(
        "POST /webhook/github HTTP/1.1\r\nhost: demofleet\r\ncontent-type: application/json\r\n\
         x-github-event: ping\r\nx-github-delivery: {}\r\n{signature}content-length: {length}\r\n\r\n",
        Uuid::new_v4()
    )
}

/// Read what the server sends until it closes or `HANG` passes: the status and the text.
async fn answer(stream: &mut TcpStream) -> (u16, String) {
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(HANG, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            }
            if answered(&bytes) {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within {HANG:?}: {}", String::from_utf8_lossy(&bytes));
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// True once `bytes` hold a whole answer with a body of its Content-Length.
fn answered(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
    let length = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    body.len() >= length
}

async fn connect(stack: &Stack) -> TcpStream {
    TcpStream::connect(stack.http_addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_listener_bounds_what_a_client_can_hold_and_loses_nothing() {
    let stack = abused_stack().await;
    let (first_delivery, first) = stack.deliver("ping", &fixtures::payload("ping.json")).await;
    assert_eq!(first.status(), 200);

    // Headers a byte a second: cut at the header timeout, long before they would be complete.
    let mut slow = connect(&stack).await;
    let head = webhook_head(2, true);
    let started = Instant::now();
    let mut cut = false;
    for byte in head.as_bytes() {
        if slow.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        let mut probe = [0u8; 512];
        if let Ok(read) = tokio::time::timeout(Duration::from_secs(1), slow.read(&mut probe)).await {
            // The server closes without an answer, or with 408 (hyper's answer to a header timeout).
            let text = String::from_utf8_lossy(&probe[..read.unwrap_or(0)]).into_owned();
            assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
            cut = true;
            break;
        }
    }
    assert!(cut, "a request whose headers took {:?} was served", started.elapsed());

    // A body trickled a byte every half second: 408 at the body timeout, not reset by each byte.
    let mut trickle = connect(&stack).await;
    trickle.write_all(webhook_head(1000, true).as_bytes()).await.unwrap();
    let trickling = tokio::spawn(async move {
        let mut trickle = trickle;
        let mut reply = Vec::new();
        for _ in 0..200 {
            if trickle.write_all(b" ").await.is_err() {
                break;
            }
            let mut chunk = [0u8; 4096];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), trickle.read(&mut chunk)).await {
                reply.extend_from_slice(&chunk[..n]);
                if n == 0 || answered(&reply) {
                    break;
                }
            }
        }
        String::from_utf8_lossy(&reply).into_owned()
    });
    let reply = tokio::time::timeout(HANG * 2, trickling).await.expect("the trickled body hung").unwrap();
    assert!(reply.starts_with("HTTP/1.1 408"), "a trickled body: {reply}");
    assert!(reply.contains("DEMOFLEET_HTTP_BODY_TIMEOUT"), "{reply}");

    // Refused from the headers alone, the body never sent.
    for (what, head, status, says) in [
        ("no signature", webhook_head(MAX_BODY, false), 401, "missing X-Hub-Signature-256"),
        ("too long", webhook_head(MAX_BODY + 1, true), 413, "DEMOFLEET_WEBHOOK_MAX_BYTES"),
        (
            "no length",
            webhook_head(0, true).replace("content-length: 0\r\n", "transfer-encoding: chunked\r\n"),
            411,
            "Content-Length",
        ),
    ] {
        let mut stream = connect(&stack).await;
        stream.write_all(head.as_bytes()).await.unwrap();
        let (got, text) = answer(&mut stream).await;
        assert_eq!(got, status, "{what}: {text}");
        assert!(text.contains(says), "{what}: {text}");
    }

    // Room for two of the largest bodies: two held open take it, a third waits until they are
    // cut, then is read and recorded.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(&stack).await;
        stream.write_all(webhook_head(MAX_BODY, true).as_bytes()).await.unwrap();
        holders.push(tokio::spawn(async move {
            let answer = answer(&mut stream).await;
            (answer, Instant::now())
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let payload = {
        let mut ping = fixtures::payload("ping.json");
        let around = serde_json::to_vec(&ping).unwrap().len();
        ping["zen"] = Value::String("x".repeat(MAX_BODY - around - 1024));
        serde_json::to_vec(&ping).unwrap()
    };
    assert!(payload.len() <= MAX_BODY && payload.len() > MAX_BODY / 2, "{}", payload.len());
    let third = Uuid::new_v4().to_string();
    let waiting = {
        let (secret, stack_url) = (stack.secret.clone(), stack.url("/webhook/github"));
        let (payload, third) = (payload.clone(), third.clone());
        tokio::spawn(async move {
            let response = reqwest::Client::new()
                .post(stack_url)
                .header("content-type", "application/json")
                .header("x-github-event", "ping")
                .header("x-github-delivery", &third)
                .header("x-hub-signature-256", sign(&secret, &payload))
                .body(payload)
                .timeout(HANG)
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), Instant::now())
        })
    };
    let mut cut_at = Vec::new();
    for holder in holders {
        let ((status, text), at) = holder.await.unwrap();
        assert_eq!(status, 408, "a body held open: {text}");
        cut_at.push(at);
    }
    let (status, answered_at) = waiting.await.unwrap();
    assert_eq!(status, 200, "the delivery that waited for room");
    assert!(
        cut_at.iter().all(|cut| answered_at >= *cut),
        "the third body was read while two of the largest filled the room"
    );

    // Past the bound, connections wait: with every slot held by a client that sends nothing,
    // a new request is not answered until the header timeout frees them.
    let mut idle = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        idle.push(connect(&stack).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fresh = reqwest::Client::builder().timeout(HANG).build().unwrap();
    let asked = Instant::now();
    let pending = tokio::spawn({
        let url = stack.url("/healthz");
        async move { (fresh.get(url).send().await.map(|r| r.status().as_u16()), Instant::now()) }
    });
    tokio::time::sleep(HEADER_TIMEOUT / 2).await;
    assert!(!pending.is_finished(), "a connection past the bound was served while every slot was held");
    let (status, at) = pending.await.unwrap();
    assert_eq!(status.expect("the waiting request was answered"), 200);
    assert!(at.duration_since(asked) < HANG);
    for mut stream in idle {
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(HANG, stream.read(&mut byte)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "an idle connection was kept past the header timeout");
    }

    // Nothing accepted was lost, nothing refused was kept, and a delivery is still taken.
    let (last_delivery, last) = stack.deliver("ping", &fixtures::payload("ping.json")).await;
    assert_eq!(last.status(), 200);
    let recorded: Vec<String> = sqlx::query_scalar("select delivery_id from webhook_deliveries order by delivery_id")
        .fetch_all(&stack.db)
        .await
        .unwrap();
    let mut expected = vec![first_delivery, third, last_delivery];
    expected.sort();
    assert_eq!(recorded, expected);
    stack.stop().await;
}
