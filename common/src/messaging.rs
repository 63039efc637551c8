//! The broker settings the controller and the agents share.

/// Where RabbitMQ and NATS are, and the NATS subject prefix of this fleet.
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
}

impl Messaging {
    /// The RabbitMQ node URLs, in the order given.
    pub fn amqp_urls(&self) -> Vec<&str> {
        split_urls(&self.amqp_url)
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

    /// Connect to RabbitMQ: the first node of the list that answers, starting at the one
    /// after the last tried (`turn`), so reconnects go round the cluster.
    pub async fn connect_amqp(&self, turn: &std::sync::atomic::AtomicUsize) -> lapin::Result<lapin::Connection> {
        connect_amqp_within(&self.amqp_urls(), turn, AMQP_CONNECT_TIMEOUT).await
    }

    /// Connect to NATS, to any server of the list; the client moves to another when its
    /// server goes.
    pub async fn connect_nats(&self) -> anyhow::Result<async_nats::Client> {
        let servers = self
            .nats_urls()
            .into_iter()
            .map(|url| url.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(async_nats::connect(servers).await?)
    }
}

/// How long one RabbitMQ node may take to accept a connection before the next is tried: a
/// node cut off by the network (no refusal, no answer) must not hold up the others.
const AMQP_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn connect_amqp_within(
    urls: &[&str],
    turn: &std::sync::atomic::AtomicUsize,
    timeout: std::time::Duration,
) -> lapin::Result<lapin::Connection> {
    let mut failure = None;
    for _ in 0..urls.len() {
        let index = turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % urls.len();
        let connecting = lapin::Connection::connect(urls[index], lapin::ConnectionProperties::default());
        let err = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(err)) => err,
            Err(_) => std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {timeout:?}")).into(),
        };
        tracing::warn!(node = index, error = %err, "RabbitMQ node unreachable; trying the next");
        failure = Some(err);
    }
    Err(failure.expect("at least one URL"))
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
        let turn = std::sync::atomic::AtomicUsize::new(0);
        let started = std::time::Instant::now();
        let result = connect_amqp_within(&urls, &turn, std::time::Duration::from_millis(300)).await;
        assert!(result.is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
        assert_eq!(turn.load(std::sync::atomic::Ordering::Relaxed), 2, "both nodes tried");
    }

    #[test]
    fn lists_of_urls_are_split_on_commas() {
        assert_eq!(split_urls("amqp://a/v"), ["amqp://a/v"]);
        assert_eq!(split_urls("amqp://a/v, amqp://b/v,amqp://c/v"), ["amqp://a/v", "amqp://b/v", "amqp://c/v"]);
        assert_eq!(split_urls(" nats://a ,"), ["nats://a"]);
    }
}
