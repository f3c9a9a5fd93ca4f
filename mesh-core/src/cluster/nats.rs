//! [`NatsBus`]: the [`Bus`] on core NATS (async-nats): plain
//! publish/subscribe, no JetStream, so any nats-server (2.9 included)
//! will do.
//!
//! The client reconnects by itself, forever, and subscriptions carry over;
//! what is published while NATS is away may be lost, which the store
//! sweep repairs (see the [cluster docs](super)).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::bus::{Bus, BusError, BusMessage, SUBSCRIPTION_CAPACITY};
use crate::Failure;

/// A [`Bus`] on a NATS server (or cluster).
#[derive(Clone, Debug)]
pub struct NatsBus {
    client: async_nats::Client,
}

impl NatsBus {
    /// Connects to `url` (`nats://host:4222`, or several, comma-separated),
    /// naming the connection `name` (shown by the server's monitoring).
    /// Fails if the server cannot be reached within 5 s; after that, the
    /// client reconnects by itself whenever the connection drops.
    pub async fn connect(url: &str, name: &str) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("NATS: connected"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS: disconnected; reconnecting")
                    }
                    other => tracing::info!("NATS: {other}"),
                }
            })
            .connect(url)
            .await
            .map_err(|e| BusError::Unreachable(Failure::caused_by("connecting to NATS", e)))?;
        Ok(Self { client })
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, subject: String, payload: Bytes) -> Result<(), BusError> {
        self.client
            .publish(subject, payload)
            .await
            .map_err(|e| BusError::Unreachable(Failure::caused_by("publishing on NATS", e)))
    }

    async fn subscribe(&self, pattern: String) -> Result<mpsc::Receiver<BusMessage>, BusError> {
        let mut subscriber = self
            .client
            .subscribe(pattern)
            .await
            .map_err(|e| BusError::Refused(format!("subscribing on NATS: {e}")))?;
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_CAPACITY);
        // Until the receiver is dropped: then the subscriber goes too,
        // which unsubscribes at once (not at the next publication).
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = subscriber.next() => message,
                    () = tx.closed() => break,
                };
                let Some(message) = message else { break };
                let message = BusMessage {
                    subject: message.subject.to_string(),
                    payload: message.payload,
                };
                if tx.send(message).await.is_err() {
                    break;
                }
            }
        });
        Ok(rx)
    }

    async fn ping(&self) -> Result<(), BusError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(BusError::Unreachable(Failure::new(format!(
                "NATS connection is {state}"
            )))),
        }
    }
}
