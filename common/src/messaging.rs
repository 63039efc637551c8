//! The broker settings the controller and the agents share.

/// Where RabbitMQ and NATS are, and the NATS subject prefix of this fleet.
#[derive(Debug, Clone, clap::Args)]
pub struct Messaging {
    /// RabbitMQ URL with vhost, for task chains (each agent host uses its own broker user).
    #[arg(long, env = "DEMOFLEET_AMQP_URL", default_value = "amqp://demofleet:demofleet@127.0.0.1:5672/demofleet")]
    pub amqp_url: String,

    /// NATS URL, for heartbeats and live logs.
    #[arg(long, env = "DEMOFLEET_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// First token of every NATS subject; lets several fleets share one NATS server. The
    /// controller and its agents must agree.
    #[arg(long, env = "DEMOFLEET_NATS_PREFIX", default_value = "demofleet")]
    pub nats_prefix: String,
}
