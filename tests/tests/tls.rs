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
//!   TLS;
//! - the CA is rotated as docs/operations.md says with every process left running (both CAs
//!   trusted, new certificates over the old files, the old CA dropped): the connections,
//!   started again, come back with the new CA's certificates, a demo deploys, and the old CA's
//!   certificates are refused.

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
use serde_json::Value;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_over_tls_runs_demos_and_plain_text_is_refused() {
    let mut fleet = Fleet::start_tls(env!("CARGO_BIN_EXE_fleet-agent"), &[3, 3], StackOptions::default()).await;
    let vhost = fleet.stack.vhost.name.clone();

    // The controller and both agents are connected over TLS with certificates of the fleet's
    // CA: to RabbitMQ (the agents from their hosts' addresses) and to NATS.
    let connections = clients_over_tls(&fleet, "demofleet test CA").await;
    for host in &fleet.hosts {
        let user = format!("{vhost}-{}", host.host_id);
        let from = connections.iter().find(|c| c["user"] == user.as_str()).unwrap();
        assert_eq!(from["peer_host"], host.address(), "{} connects from its own host: {from}", host.host_id);
    }

    // A demo goes through its chain on an agent host and answers through the edge.
    deploy(&fleet, "tls").await;

    let tls = tls_brokers(&fleet);
    plain_text_is_refused(tls, &vhost).await;
    untrusted_brokers_are_refused(tls, &vhost).await;
    an_agent_refuses_plain_text_to_its_gateway(&fleet, &vhost);
    the_ca_rotates_with_every_process_running(&mut fleet).await;
    fleet.stop().await;
}

fn tls_brokers(fleet: &Fleet) -> &TlsBrokers {
    let Brokers::Tls(tls) = &fleet.brokers else { panic!("a fleet with TLS brokers") };
    tls
}

/// Wait until the controller and every agent are connected to RabbitMQ and NATS over TLS,
/// each showing its own certificate, issued by `issuer`; RabbitMQ's list of the connections.
async fn clients_over_tls(fleet: &Fleet, issuer: &str) -> Vec<Value> {
    let tls = tls_brokers(fleet);
    let vhost = &fleet.stack.vhost.name;
    let mut expected: Vec<(String, String)> = vec![(RABBITMQ_USER.to_string(), "CN=controller".to_string())];
    for host in &fleet.hosts {
        expected.push((format!("{vhost}-{}", host.host_id), format!("CN={}", host.host_id)));
    }
    expected.sort();
    let issuer = format!("CN={issuer}");
    let connections = wait::until_seen("every RabbitMQ client over TLS", Duration::from_secs(30), || async {
        let listed = tls.rabbit.management_get(&format!("/vhosts/{vhost}/connections")).await.ok_or("no list")?;
        let listed = listed.as_array().ok_or("not a list")?.clone();
        let mut seen: Vec<(String, String)> = Vec::new();
        for connection in &listed {
            if connection["ssl"] != true || connection["peer_cert_issuer"] != issuer.as_str() {
                return Err(format!("a connection without TLS or a certificate of {issuer}: {connection}"));
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
        let from_host = clients.iter().any(|c| c["ip"] == host.address());
        assert!(from_host, "{} on NATS from its host: {clients:?}", host.host_id);
    }
    connections
}

/// A pull request of a new repository becomes a demo on an agent host, answering through the
/// edge.
async fn deploy(fleet: &Fleet, prefix: &str) {
    let repo_name = format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..8]);
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
}

/// The CA is rotated as docs/operations.md says, every process left running: (1) clients and
/// brokers trust the old and the new CA (the CA file replaced in place, the brokers told to
/// read theirs again); (2) the brokers and every client get certificates of the new CA, in
/// place; the connections, started again, come back with them, and a demo deploys; (3) the
/// old CA is dropped, and its certificates are refused, a broker's and a client's.
async fn the_ca_rotates_with_every_process_running(fleet: &mut Fleet) {
    let agents: Vec<Option<u32>> = fleet.hosts.iter().map(|h| h.agent_pid()).collect();
    let gateways: Vec<String> = fleet.hosts.iter().map(|h| h.machine.gateway.clone()).collect();
    let mut names: Vec<String> = fleet.hosts.iter().map(|h| h.host_id.clone()).collect();
    names.push("controller".into());
    let vhost = fleet.stack.vhost.name.clone();
    let Brokers::Tls(tls) = &mut fleet.brokers else { panic!("a fleet with TLS brokers") };
    let old_client = tls.pki.issue("old-client", &[], Usage::Client);
    let next = TestPki::new("demofleet test CA 2");
    let (old_ca, new_ca) = (std::fs::read(&tls.pki.ca).unwrap(), std::fs::read(&next.ca).unwrap());

    // 1. Both CAs trusted, everywhere (the clients' and the brokers' CA file is one here).
    std::fs::write(&tls.pki.ca, [old_ca.as_slice(), new_ca.as_slice()].concat()).unwrap();
    reload(tls);
    // 2. Certificates of the new CA for the brokers and every client, over the old files.
    let sans: Vec<String> =
        std::iter::once("127.0.0.1".to_string()).chain(gateways).map(|a| format!("IP:{a}")).collect();
    replace(&next.issue("broker", &sans, Usage::Server), &tls.server);
    for name in &names {
        replace(&next.issue(name, &[], Usage::Client), &tls.pki.files(name));
    }
    reload(tls);
    tls.rabbit.close_connections(&vhost).await;
    tls.nats.restart();
    clients_over_tls(fleet, "demofleet test CA 2").await;
    deploy(fleet, "rotated").await;
    // 3. The old CA dropped.
    let tls = tls_brokers(fleet);
    std::fs::write(&tls.pki.ca, &new_ca).unwrap();
    reload(tls);
    let old_only = tls.pki.files("old-ca-only").cert;
    std::fs::write(&old_only, &old_ca).unwrap();
    let client = |ca: PathBuf, own: &CertFiles| broker_client(tls, &vhost, "127.0.0.1", Some(ca), Some(own));
    let trusting_the_old_ca = client(old_only, &tls.pki.files(&names[0]));
    let err = connect_both(&trusting_the_old_ca).await.expect_err("a client trusting the old CA only");
    assert!(err.contains("UnknownIssuer"), "{err}");
    let err = connect_both(&client(tls.pki.ca.clone(), &old_client)).await.expect_err("a certificate of the old CA");
    println!("after the rotation, a client certificate of the old CA: refused ({err})");
    let agents_now: Vec<Option<u32>> = fleet.hosts.iter().map(|h| h.agent_pid()).collect();
    assert_eq!(agents_now, agents, "the agents kept running");
}

/// Tell both brokers to read their certificate files again.
fn reload(tls: &TlsBrokers) {
    tls.rabbit.ctl(0, &["eval", "ssl:clear_pem_cache()."]);
    tls.nats.reload();
}

/// Copy `new`'s certificate and key over `old`'s files.
fn replace(new: &CertFiles, old: &CertFiles) {
    std::fs::copy(&new.cert, &old.cert).unwrap();
    std::fs::copy(&new.key, &old.key).unwrap();
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
        let err = connect_both(&broker_client(tls, vhost, host, ca, Some(&own))).await.expect_err(who);
        assert!(reasons.iter().any(|r| err.contains(r)), "{who}: {err}");
        println!("{who}: refused by its own check ({})", reasons[0]);
    }

    // Trusting the CA but showing no certificate: the brokers refuse (with TLS 1.3 the client
    // sees the broker's alert, or the connection closed after it).
    let anonymous = broker_client(tls, vhost, "127.0.0.1", Some(tls.pki.ca.clone()), None);
    let err = connect_both(&anonymous).await.expect_err("a client without a certificate");
    println!("a client without a certificate: refused by the brokers ({err})");

    // The same settings with the certificate are taken: the refusals above are the checks'.
    let trusted = broker_client(tls, vhost, "127.0.0.1", Some(tls.pki.ca.clone()), Some(&own));
    connect_both(&trusted).await.expect("a trusted client");
}

/// Broker settings for a client at `host` of `tls`'s brokers, trusting `ca` (`None`: the
/// system's roots) and showing `own` certificate.
fn broker_client(tls: &TlsBrokers, vhost: &str, host: &str, ca: Option<PathBuf>, own: Option<&CertFiles>) -> Messaging {
    let port = tls.rabbit.nodes[0].amqp_port;
    Messaging {
        amqp_url: format!("amqps://{RABBITMQ_USER}:demofleet@{host}:{port}/{vhost}"),
        amqp_quorum_queues: false,
        nats_url: tls.nats.url_as(host, &tls.nats_user.0, &tls.nats_user.1),
        nats_prefix: "unused".into(),
        tls: TlsSettings {
            tls_ca_file: ca,
            tls_cert_file: own.map(|c| c.cert.clone()),
            tls_key_file: own.map(|c| c.key.clone()),
            allow_plaintext: false,
        },
    }
}

/// Connect to RabbitMQ and to NATS with `messaging`: `Ok` when both take the client, else
/// why each refused (both must).
async fn connect_both(messaging: &Messaging) -> Result<(), String> {
    let amqp = messaging.connect_amqp(&std::sync::atomic::AtomicUsize::new(0)).await;
    let nats = messaging.connect_nats().await;
    match (amqp, nats) {
        (Ok(connection), Ok(_)) => {
            connection.close(200, "checked".into()).await.unwrap();
            Ok(())
        }
        (Err(amqp), Err(nats)) => Err(format!("RabbitMQ: {amqp:?}; NATS: {nats:?}")),
        (amqp, nats) => panic!("one broker took the client, the other not: {:?}, {:?}", amqp.err(), nats.err()),
    }
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
