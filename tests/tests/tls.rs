//! Encryption between hosts (issue 18, point 3): a fleet whose RabbitMQ node and NATS server
//! speak TLS only (no plain-text listener), with certificates from a CA of the test's own
//! (`openssl`, tests/src/pki.rs). The controller reaches them on 127.0.0.1, two agents on test
//! hosts of their own at their hosts' gateways, each with a client certificate of its own.
//!
//! - every client is connected over TLS, showing its certificate, the agents from their hosts;
//! - a demo is deployed and answers through the edge;
//! - a plain-text AMQP client and a plain-text NATS client are refused by the brokers, and the
//!   RabbitMQ node has no plain-text AMQP listener at all;
//! - a client that does not trust the fleet's CA (another CA, or the system's roots) refuses
//!   the brokers by its own check, as it does a broker reached by a name its certificate lacks;
//! - a client without a certificate is refused by the brokers (mutual TLS);
//! - an agent given a plain `amqp://` URL to its gateway refuses to start, saying how to enable
//!   TLS.
//!
//! This binary holds one test: it points the harness's broker variables at its own node.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use demofleet_common::messaging::Messaging;
use demofleet_common::tls::TlsSettings;
use demofleet_tests::cluster::RABBITMQ_USER;
use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::fleet::{Brokers, Fleet, TlsBrokers};
use demofleet_tests::pki::{CertFiles, TestPki, Usage};
use demofleet_tests::stack::StackOptions;
use demofleet_tests::wait;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_over_tls_runs_demos_and_plain_text_is_refused() {
    let fleet = Fleet::start_tls(env!("CARGO_BIN_EXE_fleet-agent"), &[3, 3], StackOptions::default()).await;
    let Brokers::Tls(tls) = &fleet.brokers else { panic!("a fleet with TLS brokers") };
    let vhost = fleet.stack.vhost.name.clone();

    // The controller and both agents are connected over TLS with certificates of the fleet's
    // CA: to RabbitMQ (the agents from their hosts' addresses) and to NATS.
    let mut expected: Vec<(String, String)> = vec![(RABBITMQ_USER.to_string(), "CN=controller".to_string())];
    for host in &fleet.hosts {
        expected.push((format!("{vhost}-{}", host.host_id), format!("CN={}", host.host_id)));
    }
    expected.sort();
    let connections = wait::until_seen("every RabbitMQ client over TLS", Duration::from_secs(30), || async {
        let listed = tls.rabbit.management_get(&format!("/vhosts/{vhost}/connections")).await.ok_or("no list")?;
        let mut seen: Vec<(String, String)> = Vec::new();
        for connection in listed.as_array().ok_or("not a list")? {
            if connection["ssl"] != true {
                return Err(format!("a connection without TLS: {connection}"));
            }
            let user = connection["user"].as_str().unwrap_or("?").to_string();
            seen.push((user, connection["peer_cert_subject"].as_str().unwrap_or("?").to_string()));
        }
        seen.sort();
        if seen == expected {
            Ok(listed)
        } else {
            Err(format!("{seen:?}, wanted {expected:?}"))
        }
    })
    .await;
    for host in &fleet.hosts {
        let user = format!("{vhost}-{}", host.host_id);
        let from = connections.as_array().unwrap().iter().find(|c| c["user"] == user.as_str()).unwrap();
        assert_eq!(from["peer_host"], host.address(), "{} connects from its own host: {from}", host.host_id);
    }
    let clients = wait::until_seen("three NATS clients over TLS", Duration::from_secs(30), || async {
        let connz = tls.nats.monitor("/connz").await.ok_or("no /connz")?;
        let clients = connz["connections"].as_array().cloned().unwrap_or_default();
        let over_tls = clients.iter().filter(|c| c["tls_version"].as_str().is_some_and(|v| !v.is_empty())).count();
        if clients.len() == 3 && over_tls == 3 {
            Ok(clients)
        } else {
            Err(format!("{clients:?}"))
        }
    })
    .await;
    for host in &fleet.hosts {
        assert!(
            clients.iter().any(|c| c["ip"] == host.address()),
            "{} on NATS from its host: {clients:?}",
            host.host_id
        );
    }

    // A demo goes through its chain on an agent host and answers through the edge.
    let repo_name = format!("tls-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&fleet.stack.repos_dir(), "fixture-owner", &repo_name);
    let marker = format!("{repo_name} over TLS");
    let files = fixtures::static_site(&fleet.stack.services.base_image, &marker);
    let sha = repo.commit("a demo", &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    let (_, response) =
        fleet.stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    assert_eq!(response.status(), 202);
    let name = format!("{repo_name}-fixture-owner-pr-2");
    let demo = fleet.stack.wait_for_state(&name, "running", Duration::from_secs(120)).await;
    assert!(fleet.hosts.iter().any(|h| demo["host"] == h.host_id.as_str()), "on an agent host: {demo}");
    let (status, body) = fleet.stack.edge_get(&format!("{name}.localhost"), "/").await;
    assert_eq!((status, body.contains(&marker)), (200, true), "{body}\n{}", fleet.logs());

    plain_text_is_refused(tls, &vhost).await;
    untrusted_brokers_are_refused(tls, &vhost).await;
    an_agent_refuses_plain_text_to_its_gateway(&fleet, &vhost);
    fleet.stop().await;
}

/// The brokers take no plain text: the RabbitMQ node has no plain AMQP listener, its TLS one
/// drops an AMQP handshake in the clear, and NATS answers a plain CONNECT with an error.
async fn plain_text_is_refused(tls: &TlsBrokers, vhost: &str) {
    let overview = tls.rabbit.management_get("/overview").await.expect("the management API");
    let protocols: Vec<&str> =
        overview["listeners"].as_array().unwrap().iter().filter_map(|l| l["protocol"].as_str()).collect();
    assert!(protocols.contains(&"amqp/ssl") && !protocols.contains(&"amqp"), "listeners: {protocols:?}");

    let port = tls.rabbit.nodes[0].amqp_port;
    let plain = format!("amqp://{RABBITMQ_USER}:demofleet@127.0.0.1:{port}/{vhost}");
    let attempt = lapin::Connection::connect(&plain, lapin::ConnectionProperties::default());
    let refused = tokio::time::timeout(Duration::from_secs(30), attempt).await.expect("an answer within 30 s");
    let err = refused.expect_err("a plain-text AMQP client is refused");
    println!("plain-text AMQP client: {err}");

    let nats_port = tls.nats.url().rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let answer = tokio::task::spawn_blocking(move || plain_nats_connect(nats_port)).await.unwrap();
    println!("plain-text NATS client: {answer:?}");
    let (info, closed, rest) = answer;
    assert!(info.contains("\"tls_required\":true"), "{info}");
    assert!(closed, "the server closes the connection");
    assert!(!rest.contains("PONG"), "the server answered a plain-text client: {rest}");
    let log = tls.nats.log();
    assert!(log.contains("first record does not look like a TLS handshake"), "{log}");
}

/// A NATS client in plain text: the server's INFO line, whether the server closed the
/// connection after a plain CONNECT and PING, and what it sent before.
fn plain_nats_connect(port: u16) -> (String, bool, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut info = String::new();
    reader.read_line(&mut info).unwrap();
    let _ = stream.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"tls_required\":false}\r\nPING\r\n");
    let mut rest = Vec::new();
    let closed = reader.read_to_end(&mut rest).is_ok();
    (info, closed, String::from_utf8_lossy(&rest).into_owned())
}

/// Clients refuse brokers they cannot check, and brokers refuse clients without a certificate.
async fn untrusted_brokers_are_refused(tls: &TlsBrokers, vhost: &str) {
    let own = tls.pki.issue("checker", &[], Usage::Client);
    let port = tls.rabbit.nodes[0].amqp_port;
    let client = |host: &str, settings: TlsSettings| Messaging {
        amqp_url: format!("amqps://{RABBITMQ_USER}:demofleet@{host}:{port}/{vhost}"),
        amqp_quorum_queues: false,
        nats_url: tls.nats.url_at(host),
        nats_prefix: "unused".into(),
        tls: settings,
    };
    let settings = |ca: Option<PathBuf>, own: Option<&CertFiles>| TlsSettings {
        tls_ca_file: ca,
        tls_cert_file: own.map(|c| c.cert.clone()),
        tls_key_file: own.map(|c| c.key.clone()),
        allow_plaintext: false,
    };
    let other = TestPki::new("another CA");
    let unknown: &[&str] = &["UnknownIssuer"];
    let misnamed: &[&str] = &["NotValidForName", "not valid for name"];
    let cases = [
        ("a client trusting another CA", "127.0.0.1", Some(other.ca.clone()), unknown),
        ("a client trusting the system's roots", "127.0.0.1", None, unknown),
        (
            "a client reaching the brokers by a name not in their certificate",
            "localhost",
            Some(tls.pki.ca.clone()),
            misnamed,
        ),
    ];
    for (who, host, ca, reasons) in cases {
        let messaging = client(host, settings(ca, Some(&own)));
        let amqp = messaging.connect_amqp(&std::sync::atomic::AtomicUsize::new(0)).await;
        let err = format!("{:?}", amqp.err().unwrap_or_else(|| panic!("{who} connected to RabbitMQ")));
        assert!(reasons.iter().any(|r| err.contains(r)), "{who}, RabbitMQ: {err}");
        let nats = messaging.connect_nats().await;
        let err = format!("{:?}", nats.err().unwrap_or_else(|| panic!("{who} connected to NATS")));
        assert!(reasons.iter().any(|r| err.contains(r)), "{who}, NATS: {err}");
        println!("{who}: refused by its own check ({})", reasons[0]);
    }

    // Trusting the CA but showing no certificate: the brokers refuse (with TLS 1.3 the client
    // sees the broker's alert, or the connection closed after it).
    let anonymous = client("127.0.0.1", settings(Some(tls.pki.ca.clone()), None));
    let amqp = anonymous.connect_amqp(&std::sync::atomic::AtomicUsize::new(0)).await;
    let err = amqp.expect_err("RabbitMQ refuses a client without a certificate");
    let nats = anonymous.connect_nats().await;
    let nats_err = nats.expect_err("NATS refuses a client without a certificate");
    println!("a client without a certificate: refused by the brokers ({err}; {nats_err})");

    // The same settings with the certificate are taken: the refusals above are the checks'.
    let trusted = client("127.0.0.1", settings(Some(tls.pki.ca.clone()), Some(&own)));
    let connection = trusted.connect_amqp(&std::sync::atomic::AtomicUsize::new(0)).await.expect("a trusted client");
    connection.close(200, "checked".into()).await.unwrap();
    trusted.connect_nats().await.expect("a trusted NATS client");
}

/// `fleet-agent` with a plain `amqp://` URL to its host's gateway exits before connecting,
/// saying how to enable TLS.
fn an_agent_refuses_plain_text_to_its_gateway(fleet: &Fleet, vhost: &str) {
    let host = &fleet.hosts[0];
    let gateway = &host.machine.gateway;
    let output = Command::new(env!("CARGO_BIN_EXE_fleet-agent"))
        .env_clear()
        .args(["--host-id", "plain-text"])
        .args(["--amqp-url", &format!("amqp://u:secret@{gateway}:5672/{vhost}")])
        .args(["--nats-url", &format!("nats://{gateway}:4222")])
        .output()
        .expect("fleet-agent runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the agent started: {stderr}");
    assert!(stderr.contains("amqps://") && stderr.contains("DEMOFLEET_ALLOW_PLAINTEXT"), "{stderr}");
    assert!(!stderr.contains("secret"), "no password in the message: {stderr}");
}
