//! Proof that nothing was sent to the controller's or the agents' queues: those queues have
//! live consumers (a message is taken as soon as it lands) and the management API counts
//! them seconds late, so their depth says nothing. A queue of the test's own, bound to the
//! task exchange under the same routing keys, gets a copy of every message sent to them
//! and keeps it; RabbitMQ counts its messages exactly when asked. The dead-letter queue,
//! which nothing consumes, is counted as it is.

use demofleet_common::topology;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::stack::Stack;

/// Copies of what is sent to a stack's queues, from the moment it was made.
pub struct Spy {
    channel: Channel,
    queue: String,
    connection: Connection,
}

impl Spy {
    /// Start copying what is sent to the controller's queue and every agent's queue of
    /// `stack`.
    pub async fn start(stack: &Stack) -> Spy {
        let connection = Connection::connect(&stack.vhost.amqp_url, ConnectionProperties::default())
            .await
            .expect("RabbitMQ for the spy");
        let channel = connection.create_channel().await.unwrap();
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel
            .exchange_declare(topology::EXCHANGE.into(), ExchangeKind::Direct, durable, FieldTable::default())
            .await
            .unwrap();
        let own = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        let queue = channel.queue_declare("".into(), own, FieldTable::default()).await.unwrap().name().to_string();
        let mut keys = vec![topology::CONTROLLER_QUEUE.to_string()];
        keys.extend(stack.agents.iter().map(|a| topology::host_queue(&a.host_id)));
        for key in &keys {
            let options = QueueBindOptions::default();
            channel
                .queue_bind(
                    queue.as_str().into(),
                    topology::EXCHANGE.into(),
                    key.as_str().into(),
                    options,
                    Default::default(),
                )
                .await
                .unwrap();
        }
        Spy { channel, queue, connection }
    }

    /// How many messages were sent to the queues since the spy started, and how many the
    /// dead-letter queue holds.
    pub async fn copies(&self) -> u32 {
        let sent = crate::services::queue_messages(&self.channel, &self.queue).await.expect("the spy's queue");
        // Asking for a queue that does not exist closes the channel: a channel of its own.
        let channel = self.connection.create_channel().await.unwrap();
        let dead = crate::services::queue_messages(&channel, topology::DEAD_QUEUE).await.unwrap_or(0);
        let _ = channel.close(0, "counted".into()).await;
        sent + dead
    }
}
