//! Routes for the fleet: Traefik's dynamic configuration (HTTP provider and file), valid
//! against Traefik's own schemas and following demos as they start and stop; and the
//! edge proxy's forwarding headers, its 502 page, and reads asked again where a moving route
//! went.

use std::time::Duration;

use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::services::test_data_dir;
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(120);

fn validator(version: &str) -> jsonschema::Validator {
    let path = test_data_dir().join(format!("traefik/traefik-{version}-file-provider.json"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

fn assert_valid(dynamic: &Value) {
    for version in ["v2", "v3"] {
        let errors: Vec<String> = validator(version).iter_errors(dynamic).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{version}: {errors:?}\n{dynamic:#}");
    }
}

/// A busybox httpd demo whose CGI script prints the request's environment.
fn cgi_site(base_image: &str) -> Vec<(&'static str, String)> {
    let mut files = fixtures::static_site(base_image, "routed");
    files[0].1 = format!(
        "FROM {base_image}\nCOPY index.html /www/index.html\nCOPY env.cgi /www/cgi-bin/env\n\
         RUN chmod 755 /www/cgi-bin/env\nEXPOSE 8080\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
    );
    files.push(("env.cgi", "#!/bin/sh\necho 'Content-Type: text/plain'\necho\nenv\n".into()));
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_configuration_and_the_edge_follow_the_demos() {
    let file = std::env::temp_dir().join(format!("demofleet-traefik-{}.json", Uuid::new_v4()));
    let options = StackOptions {
        controller_args: vec![
            "--traefik-file".into(),
            file.to_str().unwrap().into(),
            "--traefik-cert-resolver".into(),
            "le".into(),
            "--traefik-entrypoints".into(),
            "websecure".into(),
        ],
        ..Default::default()
    };
    let stack = Stack::start(options).await;
    let repo_name = format!("route-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let files = cgi_site(&stack.services.base_image);
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    let sha = repo.commit("demo", &files);
    let name = format!("{repo_name}-fixture-owner-pr-2");

    let empty = stack.get_json("/traefik/dynamic").await;
    assert_valid(&empty);
    assert_eq!(empty["http"]["routers"].as_object().unwrap().len(), 0);

    stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    stack.wait_for_state(&name, "running", DEADLINE).await;
    let dynamic = stack.get_json("/traefik/dynamic").await;
    assert_valid(&dynamic);
    let router = &dynamic["http"]["routers"][&name];
    assert_eq!(router["rule"], format!("Host(`{name}.localhost`)"));
    assert_eq!(router["entryPoints"], serde_json::json!(["websecure"]));
    assert_eq!(router["tls"]["certResolver"], "le");
    let server = dynamic["http"]["services"][&name]["loadBalancer"]["servers"][0]["url"].as_str().unwrap().to_string();
    assert!(server.starts_with("http://127.0.0.1:"), "{server}");
    // The service URL is where the demo really answers.
    let direct = demofleet_tests::http_client()
        .build()
        .unwrap()
        .get(format!("{server}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(direct.contains("routed"));
    // The file provider's copy is the same configuration.
    let written = wait::until("the Traefik file to list the demo", DEADLINE, || async {
        let text = tokio::fs::read(&file).await.ok()?;
        let written: Value = serde_json::from_slice(&text).ok()?;
        written["http"]["routers"].get(&name).is_some().then_some(written)
    })
    .await;
    assert_eq!(written, dynamic);

    // The edge passes the request on with forwarding headers.
    let host = format!("{name}.localhost");
    let (status, env) = stack.edge_get(&host, "/cgi-bin/env").await;
    assert_eq!(status, 200, "{env}");
    assert!(env.contains("HTTP_X_FORWARDED_FOR=127.0.0.1"), "{env}");
    assert!(env.contains("HTTP_X_FORWARDED_PROTO=http"), "{env}");
    assert!(env.contains(&format!("HTTP_X_FORWARDED_HOST={host}")), "{env}");

    // A routed demo that does not answer gets the 502 page.
    let demo = stack.demo(&name).await.unwrap();
    let container = format!("demofleet-{name}-g{}", demo["generation"]);
    let stopped = std::process::Command::new("docker").args(["stop", "-t", "1", &container]).output().unwrap();
    assert!(stopped.status.success());
    let (status, page) = stack.edge_get(&host, "/").await;
    assert_eq!(status, 502);
    assert!(page.contains("Demo not answering"), "{page}");

    // Closing removes the router from both providers.
    stack.deliver("pull_request", &fixtures::pull_request("pull_request.closed.json", &repo, &sha)).await;
    stack.wait_for_state(&name, "stopped", DEADLINE).await;
    let dynamic = stack.get_json("/traefik/dynamic").await;
    assert!(dynamic["http"]["routers"].get(&name).is_none(), "{dynamic}");
    wait::until("the Traefik file to drop the demo", DEADLINE, || async {
        let written: Value = serde_json::from_slice(&tokio::fs::read(&file).await.ok()?).ok()?;
        written["http"]["routers"].get(&name).is_none().then_some(())
    })
    .await;
    let _ = tokio::fs::remove_file(&file).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_pass_through_the_edge() {
    let stack = Stack::start(StackOptions { agents: 0, ..Default::default() }).await;
    // A WebSocket echo server stands in for a demo that speaks WebSocket.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    // Routed like a running demo on a host at 127.0.0.1.
    let name = "ws-fixture-owner-pr-1";
    sqlx::query("insert into hosts (id, address, capacity) values ('ws-host', '127.0.0.1', 1)")
        .execute(&stack.db)
        .await
        .unwrap();
    sqlx::query(
        "insert into demos (id, owner, repo, pr, name, desired, state, sha, clone_url, github_user, host_id, host_port, routed)
         values ($1, 'fixture-owner', 'ws', 1, $2, 'running', 'running', 'x', 'x', 'x', 'ws-host', $3, true)",
    )
    .bind(Uuid::new_v4())
    .bind(name)
    .bind(i32::from(port))
    .execute(&stack.db)
    .await
    .unwrap();
    wait::until("the edge to route the demo", DEADLINE, || async { stack.controller_state().routes.target(name) })
        .await;

    let mut request = format!("ws://{}/socket", stack.edge_addr).into_client_request().unwrap();
    request.headers_mut().insert("host", format!("{name}.localhost").parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.expect("upgrade through the edge");
    assert_eq!(response.status(), 101);
    for text in ["ping through the edge", "and again"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();
    stack.stop().await;
}

/// An update moves a demo's route while requests are on their way to the old generation,
/// which is being removed. A request that only reads and that the old address dropped is
/// asked again at the new one; one that may change something is not sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_dropped_by_the_old_generation_is_asked_again_where_the_route_moved() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let stack = Stack::start(StackOptions { agents: 0, ..Default::default() }).await;
    // The new generation answers every request.
    let new = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let new_port = new.local_addr().unwrap().port();
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = answered.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = new.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if stream.read(&mut buf).await.unwrap_or(0) > 0 {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let answer = "HTTP/1.1 200 OK\r\ncontent-length: 14\r\nconnection: close\r\n\r\nnew generation";
                    let _ = stream.write_all(answer.as_bytes()).await;
                }
            });
        }
    });

    let name = "move-fixture-owner-pr-1";
    let id = Uuid::new_v4();
    sqlx::query("insert into hosts (id, address, capacity) values ('move-host', '127.0.0.1', 1)")
        .execute(&stack.db)
        .await
        .unwrap();
    sqlx::query(
        "insert into demos (id, owner, repo, pr, name, desired, state, sha, clone_url, github_user, host_id, routed)
         values ($1, 'fixture-owner', 'move', 1, $2, 'running', 'running', 'x', 'x', 'x', 'move-host', true)",
    )
    .bind(id)
    .bind(name)
    .execute(&stack.db)
    .await
    .unwrap();
    let state = stack.controller_state().clone();
    let route_to = |port: u16| {
        let (db, state) = (stack.db.clone(), state.clone());
        async move {
            sqlx::query("update demos set host_port = $2 where id = $1")
                .bind(id)
                .bind(i32::from(port))
                .execute(&db)
                .await
                .unwrap();
            state.routes.reload_demo(&db, id).await.unwrap();
        }
    };

    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        // The old generation takes the request, sees the route move, and goes away unanswering.
        let old = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        route_to(old.local_addr().unwrap().port()).await;
        let moved = route_to(new_port);
        let old_side = tokio::spawn(async move {
            let (mut stream, _) = old.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await.unwrap();
            moved.await;
        });
        let before = answered.load(Ordering::SeqCst);
        let response = demofleet_tests::http_client()
            .build()
            .unwrap()
            .request(method.clone(), format!("http://{}/", stack.edge_addr))
            .header("host", format!("{name}.localhost"))
            .send()
            .await
            .unwrap();
        old_side.await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        if method == reqwest::Method::GET {
            assert_eq!((status.as_u16(), body.as_str()), (200, "new generation"), "{method}");
            assert_eq!(answered.load(Ordering::SeqCst), before + 1);
        } else {
            assert_eq!(status.as_u16(), 502, "{method}: {body}");
            assert_eq!(answered.load(Ordering::SeqCst), before, "a POST was sent twice");
        }
    }
    stack.stop().await;
}

/// The edge's route table follows what is committed to the record as PostgreSQL announces it,
/// long before it reads the whole table again (once a minute): a demo written routed, its port
/// changed, its host's address changed, its repository gated, then the demo unrouted. Each
/// step is made directly in the database, as another replica's transaction would make it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_follows_route_changes_as_they_commit() {
    let stack = Stack::start(StackOptions { agents: 0, ..Default::default() }).await;
    let (a_port, b_port) = (serve_text("127.0.0.1", "a").await, serve_text("127.0.0.2", "b").await);
    let name = "follow-edge-pr-1";
    sqlx::query("insert into hosts (id, address, capacity) values ('follow-host', '127.0.0.1', 2)")
        .execute(&stack.db)
        .await
        .unwrap();
    sqlx::query(
        "insert into demos (id, owner, repo, pr, name, desired, state, sha, clone_url, github_user,
                            host_id, serving_host, host_port, routed)
         values ($1, 'follow', 'edge', 1, $2, 'running', 'running', 'x', 'x', 'x',
                 'follow-host', 'follow-host', $3, true)",
    )
    .bind(Uuid::new_v4())
    .bind(name)
    .bind(i32::from(a_port))
    .execute(&stack.db)
    .await
    .unwrap();
    // The gate answers with a redirect to sign in: seen, not followed.
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let edge = Edge { client, addr: stack.edge_addr, name };
    edge.until("the new demo to answer", |status, body| status == 200 && body == "a").await;

    sqlx::query("update demos set host_port = $1 where name = $2")
        .bind(i32::from(b_port))
        .bind(name)
        .execute(&stack.db)
        .await
        .unwrap();
    edge.until("the edge to stop reaching the old port", |status, body| !(status == 200 && body == "a")).await;

    sqlx::query("update hosts set address = '127.0.0.2' where id = 'follow-host'").execute(&stack.db).await.unwrap();
    edge.until("the demo to answer from its host's new address", |status, body| status == 200 && body == "b").await;

    sqlx::query("insert into repo_settings (owner, repo, gated) values ('follow', 'edge', true)")
        .execute(&stack.db)
        .await
        .unwrap();
    edge.until("the gate to stand before the demo", |status, _| (300..400).contains(&status)).await;

    sqlx::query("update demos set routed = false where name = $1").bind(name).execute(&stack.db).await.unwrap();
    edge.until("the unrouted demo to be unknown", |status, _| status == 404).await;
    stack.stop().await;
}

/// Requests for one demo through the edge.
struct Edge {
    client: reqwest::Client,
    addr: std::net::SocketAddr,
    name: &'static str,
}

impl Edge {
    /// Wait until a GET of `/` answers as `expected` says, well within the minute after
    /// which the table is read whole anyway.
    async fn until(&self, what: &str, expected: impl Fn(u16, &str) -> bool) {
        let expected = &expected;
        let request = move || async move {
            let response = self
                .client
                .get(format!("http://{}/", self.addr))
                .header("host", format!("{}.localhost", self.name))
                .send()
                .await
                .ok()?;
            let status = response.status().as_u16();
            let body = response.text().await.ok()?;
            expected(status, &body).then_some(())
        };
        wait::until(what, Duration::from_secs(10), request).await;
    }
}

/// An HTTP server on `address` (a loopback address) and a free port answering every request
/// with `body`, one request a connection.
async fn serve_text(address: &str, body: &'static str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind((address, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut seen, mut buf) = (Vec::new(), [0u8; 1024]);
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let reply =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    port
}
