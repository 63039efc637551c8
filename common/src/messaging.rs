//! The broker settings the controller and the agents share, and the one place both (and the
//! simulated agents) connect to RabbitMQ and NATS: in plain text on loopback, else over TLS
//! (see [`crate::tls`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::tcp::AMQPUriTcpExt;
use lapin::uri::{AMQPScheme, AMQPUri};

use crate::tls::{list_transport, Broker, TlsError, TlsSettings, Transport};

/// Where RabbitMQ and NATS are, how they are reached, and the NATS subject prefix of this
/// fleet.
#[derive(Debug, Clone, clap::Args)]
pub struct Messaging {
    /// RabbitMQ URL with vhost, for task chains (each agent host uses its own broker user);
    /// for a cluster, the URLs of its nodes separated by commas, tried in turn when
    /// connecting and reconnecting.
    #[arg(long, env = "DEMOFLEET_AMQP_URL", default_value = "amqp://demofleet:demofleet@127.0.0.1:5672/demofleet")]
    pub amqp_url: String,

    /// Declare the task queues as quorum queues (replicated over a RabbitMQ cluster's
    /// nodes) instead of classic ones. The controller and every agent must agree; a vhost
    /// whose queues exist as the other kind must be emptied first.
    #[arg(long, env = "DEMOFLEET_AMQP_QUORUM_QUEUES")]
    pub amqp_quorum_queues: bool,

    /// NATS URL, for heartbeats and live logs; for a cluster, its servers' URLs separated
    /// by commas (the client reconnects to another when one goes).
    #[arg(long, env = "DEMOFLEET_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// First token of every NATS subject; lets several fleets share one NATS server. The
    /// controller and its agents must agree.
    #[arg(long, env = "DEMOFLEET_NATS_PREFIX", default_value = "demofleet")]
    pub nats_prefix: String,

    #[command(flatten)]
    pub tls: TlsSettings,
}

impl Messaging {
    /// The RabbitMQ node URLs, in the order given.
    pub fn amqp_urls(&self) -> Vec<&str> {
        split_urls(&self.amqp_url)
    }

    /// The broker user this process signs in as: the first node URL's (the nodes of a
    /// cluster share their users), `guest` when it names none, as for the client. RabbitMQ
    /// refuses a message whose `user_id` is not its publisher's, so the `user_id` of a
    /// message received says who sent it.
    pub fn amqp_user(&self) -> String {
        self.amqp_urls()
            .first()
            .and_then(|url| url.parse::<AMQPUri>().ok())
            .map_or_else(|| "guest".to_string(), |uri| uri.authority.userinfo.username)
    }

    /// The NATS server URLs, in the order given.
    pub fn nats_urls(&self) -> Vec<&str> {
        split_urls(&self.nats_url)
    }

    /// How task queues are declared.
    pub fn queue_type(&self) -> QueueType {
        if self.amqp_quorum_queues {
            QueueType::Quorum
        } else {
            QueueType::Classic
        }
    }

    /// Check the URLs against the TLS rule and read the TLS files once, so that a start with
    /// wrong settings stops with a message saying what to change.
    pub fn validate(&self) -> Result<(), TlsError> {
        let amqp = list_transport(Broker::Amqp, &self.amqp_urls(), self.tls.allow_plaintext)?;
        let nats = list_transport(Broker::Nats, &self.nats_urls(), self.tls.allow_plaintext)?;
        nats_credentials(&self.nats_urls())?;
        if amqp == Transport::Tls || nats == Transport::Tls || self.tls.tls_ca_file.is_some() {
            self.tls.client_config()?;
        }
        Ok(())
    }

    /// Connect to RabbitMQ: the first node of the list that answers, starting at the one
    /// after the last tried (`turn`), so reconnects go round the cluster.
    pub async fn connect_amqp(&self, turn: &AtomicUsize) -> lapin::Result<lapin::Connection> {
        let urls = self.amqp_urls();
        let tls = match list_transport(Broker::Amqp, &urls, self.tls.allow_plaintext).map_err(refused)? {
            Transport::Tls => Some(self.tls.client_config().map_err(refused)?),
            Transport::Plain => None,
        };
        connect_amqp_within(&urls, turn, AMQP_CONNECT_TIMEOUT, tls).await
    }

    /// Connect to NATS, to any server of the list; the client moves to another when its
    /// server goes. Credentials may be in the URLs (`nats://user:password@host`, or a token
    /// as the user); the same for every server.
    pub async fn connect_nats(&self) -> anyhow::Result<async_nats::Client> {
        let urls = self.nats_urls();
        let transport = list_transport(Broker::Nats, &urls, self.tls.allow_plaintext)?;
        let mut options = match nats_credentials(&urls)? {
            NatsAuth::None => async_nats::ConnectOptions::new(),
            NatsAuth::Token(token) => async_nats::ConnectOptions::with_token(token),
            NatsAuth::User(user, password) => async_nats::ConnectOptions::with_user_and_password(user, password),
        };
        // A server that asks for TLS gets it with these roots even on a plain URL; with TLS
        // URLs, every server (those the cluster announces too) must speak it.
        if transport == Transport::Tls || self.tls.tls_ca_file.is_some() {
            options = options.tls_client_config((*self.tls.client_config()?).clone());
        }
        let options = options.require_tls(transport == Transport::Tls);
        let servers = urls.iter().map(|url| without_credentials(url)).collect::<Result<Vec<_>, _>>()?;
        Ok(options.connect(servers).await?)
    }
}

/// How long one RabbitMQ node may take to accept a connection before the next is tried: a
/// node cut off by the network (no refusal, no answer) must not hold up the others.
const AMQP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect_amqp_within(
    urls: &[&str],
    turn: &AtomicUsize,
    timeout: Duration,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> lapin::Result<lapin::Connection> {
    let mut failure = None;
    for _ in 0..urls.len() {
        let index = turn.fetch_add(1, Ordering::Relaxed) % urls.len();
        let err = match tokio::time::timeout(timeout, connect_amqp_node(urls[index], tls.clone())).await {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(err)) => err,
            Err(_) => std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {timeout:?}")).into(),
        };
        tracing::warn!(node = index, error = %err, "RabbitMQ node unreachable; trying the next");
        failure = Some(err);
    }
    Err(failure.expect("at least one URL"))
}

/// One RabbitMQ node; over TLS with `tls` (lapin's own TLS set-up would also trust the
/// system's roots beside the configured CA, so the handshake is done here).
async fn connect_amqp_node(
    url: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> lapin::Result<lapin::Connection> {
    let uri: AMQPUri = url.parse().map_err(|e: String| refused(e))?;
    let properties = lapin::ConnectionProperties::default();
    let Some(tls) = tls.filter(|_| uri.scheme == AMQPScheme::AMQPS) else {
        return lapin::Connection::connect_uri(uri, properties).await;
    };
    let connector = lapin::tcp::RustlsConnector::from(tls);
    let runtime = lapin::runtime::default_runtime()?;
    lapin::Connection::connector(
        uri,
        runtime,
        async move |uri: AMQPUri, runtime| {
            let tcp = AMQPUri { scheme: AMQPScheme::AMQP, ..uri.clone() };
            let stream = tcp.connect_async(&runtime).await?;
            Ok(stream.into_rustls(&connector, &uri.authority.host).await?)
        },
        properties,
    )
    .await
}

/// A setting refused before any connection, as a connection error.
fn refused(err: impl std::fmt::Display) -> lapin::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, err.to_string()).into()
}

/// Credentials NATS servers take from a client.
#[derive(Debug, PartialEq, Eq)]
enum NatsAuth {
    None,
    Token(String),
    User(String, String),
}

/// The user and password in the NATS URLs, if they carry a user (not a token).
pub fn nats_user(urls: &[&str]) -> Result<Option<(String, String)>, TlsError> {
    Ok(match nats_credentials(urls)? {
        NatsAuth::User(user, password) => Some((user, password)),
        NatsAuth::None | NatsAuth::Token(_) => None,
    })
}

/// The credentials in the NATS URLs: the same in every URL that has any.
fn nats_credentials(urls: &[&str]) -> Result<NatsAuth, TlsError> {
    let mut found: Option<NatsAuth> = None;
    for url in urls {
        let parsed = parse_nats(url)?;
        if parsed.username().is_empty() {
            continue;
        }
        let auth = match parsed.password() {
            Some(password) => NatsAuth::User(percent_decode(parsed.username()), percent_decode(password)),
            None => NatsAuth::Token(percent_decode(parsed.username())),
        };
        match &found {
            Some(earlier) if *earlier != auth => return Err(TlsError::Credentials { setting: Broker::Nats.setting() }),
            _ => found = Some(auth),
        }
    }
    Ok(found.unwrap_or(NatsAuth::None))
}

/// The server address without its credentials, which go in the options instead (and so
/// never into the client's logs of server addresses).
fn without_credentials(url: &str) -> anyhow::Result<async_nats::ServerAddr> {
    let mut parsed = parse_nats(url)?;
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    Ok(parsed.as_str().parse::<async_nats::ServerAddr>()?)
}

fn parse_nats(url: &str) -> Result<url::Url, TlsError> {
    let with_scheme = if url.contains("://") { url.to_string() } else { format!("nats://{url}") };
    url::Url::parse(&with_scheme).map_err(|e| TlsError::Url { setting: Broker::Nats.setting(), reason: e.to_string() })
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// Classic or quorum queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    Classic,
    Quorum,
}

fn split_urls(list: &str) -> Vec<&str> {
    let urls: Vec<&str> = list.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
    if urls.is_empty() {
        vec![list]
    } else {
        urls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node that accepts the connection but never answers is given up on in time, and
    /// the next one is tried.
    #[tokio::test]
    async fn a_silent_node_does_not_hold_up_the_others() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let refusing = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let urls = [format!("amqp://u:p@{}/v", silent.local_addr().unwrap()), format!("amqp://u:p@{refusing}/v")];
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        let turn = AtomicUsize::new(0);
        let started = std::time::Instant::now();
        let result = connect_amqp_within(&urls, &turn, Duration::from_millis(300), None).await;
        assert!(result.is_err());
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert_eq!(turn.load(Ordering::Relaxed), 2, "both nodes tried");
    }

    #[test]
    fn nats_credentials_come_from_the_urls_and_leave_them() {
        assert_eq!(nats_credentials(&["nats://a:4222", "tls://b:4222"]).unwrap(), NatsAuth::None);
        let user = NatsAuth::User("host-1".into(), "p@ss:w/rd".into());
        let urls = ["tls://host-1:p%40ss%3Aw%2Frd@a:4222", "tls://b:4222", "tls://host-1:p%40ss%3Aw%2Frd@c:4222"];
        assert_eq!(nats_credentials(&urls).unwrap(), user);
        assert_eq!(nats_credentials(&["s3cr3t@127.0.0.1:4222"]).unwrap(), NatsAuth::Token("s3cr3t".into()));
        let differ = ["nats://u:one@a:4222", "nats://u:two@b:4222"];
        assert!(matches!(nats_credentials(&differ), Err(TlsError::Credentials { .. })));
        let server = without_credentials("tls://host-1:secret@broker.internal:4222").unwrap();
        assert_eq!((server.host(), server.port(), server.username()), ("broker.internal", 4222, None));
        assert!(server.tls_required());
    }

    #[test]
    fn the_broker_user_is_the_first_urls() {
        use clap::Parser;
        #[derive(Parser)]
        struct Settings {
            #[command(flatten)]
            messaging: Messaging,
        }
        let user = |url: &str| Settings::parse_from(["x", "--amqp-url", url]).messaging.amqp_user();
        assert_eq!(user("amqp://agent-h1:secret@10.0.0.1:5672/fleet"), "agent-h1");
        assert_eq!(user("amqps://agent%2Dh1:s@a:5671/v,amqps://agent-h1:s@b:5671/v"), "agent-h1");
        assert_eq!(user("amqp://10.0.0.1/fleet"), "guest", "the client's default");
    }

    #[test]
    fn lists_of_urls_are_split_on_commas() {
        assert_eq!(split_urls("amqp://a/v"), ["amqp://a/v"]);
        assert_eq!(split_urls("amqp://a/v, amqp://b/v,amqp://c/v"), ["amqp://a/v", "amqp://b/v", "amqp://c/v"]);
        assert_eq!(split_urls(" nats://a ,"), ["nats://a"]);
    }
}
