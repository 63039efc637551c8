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
        let urls = self.amqp_urls();
        let mut failure = None;
        for _ in 0..urls.len() {
            let index = turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % urls.len();
            match lapin::Connection::connect(urls[index], lapin::ConnectionProperties::default()).await {
                Ok(connection) => return Ok(connection),
                Err(err) => {
                    tracing::warn!(node = index, error = %err, "RabbitMQ node unreachable; trying the next");
                    failure = Some(err);
                }
            }
        }
        Err(failure.expect("at least one URL"))
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

    #[test]
    fn lists_of_urls_are_split_on_commas() {
        assert_eq!(split_urls("amqp://a/v"), ["amqp://a/v"]);
        assert_eq!(split_urls("amqp://a/v, amqp://b/v,amqp://c/v"), ["amqp://a/v", "amqp://b/v", "amqp://c/v"]);
        assert_eq!(split_urls(" nats://a ,"), ["nats://a"]);
    }
}
