//! RabbitMQ: one connection, opened again on demand after it drops.
//!
//! # Layout
//! - [`Broker`]: the connection, and channels on it.
//! - [`publisher`]: the outbox publisher (confirmed publishes, deleted only once confirmed).
//! - [`consumer`]: the consumer of the controller's queue, handing each message to [`crate::jobs`].

pub mod consumer;
pub mod publisher;

use std::sync::atomic::AtomicUsize;

use lapin::{Channel, Connection};
use tokio::sync::Mutex;

use demofleet_common::messaging::Messaging;

pub struct Broker {
    messaging: Messaging,
    /// Which node of a cluster to try next.
    turn: AtomicUsize,
    connection: Mutex<Option<Connection>>,
}

impl Broker {
    /// Connect now, so a wrong URL or credentials stop the start-up with a clear error.
    pub async fn connect(messaging: &Messaging) -> lapin::Result<Broker> {
        let turn = AtomicUsize::new(0);
        let connection = messaging.connect_amqp(&turn).await?;
        Ok(Broker { messaging: messaging.clone(), turn, connection: Mutex::new(Some(connection)) })
    }

    /// A new channel, reconnecting first if the connection dropped.
    pub async fn channel(&self) -> lapin::Result<Channel> {
        let mut guard = self.connection.lock().await;
        if let Some(conn) = guard.as_ref().filter(|c| c.status().connected()) {
            if let Ok(channel) = conn.create_channel().await {
                return Ok(channel);
            }
        }
        // A connection still up that refused a channel is closed, not left open beside the
        // new one by the channels that still hold it.
        if let Some(old) = guard.take().filter(|c| c.status().connected()) {
            let _ = old.close(lapin::protocol::constants::REPLY_SUCCESS, "replaced by a new connection".into()).await;
        }
        let conn = self.messaging.connect_amqp(&self.turn).await?;
        let channel = conn.create_channel().await?;
        *guard = Some(conn);
        Ok(channel)
    }

    pub async fn is_connected(&self) -> bool {
        self.connection.lock().await.as_ref().is_some_and(|c| c.status().connected())
    }
}
