//! The [`Bus`] between nodes: publish/subscribe on NATS-style subjects,
//! at most once. [`LocalBus`] is the in-process one.
//!
//! Subjects are dot-separated tokens; a subscription's pattern may use `*`
//! (exactly one token) and a final `>` (one or more tokens), as in NATS.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

/// A publication as a subscriber receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusMessage {
    pub subject: String,
    pub payload: Bytes,
}

/// What a bus can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The bus cannot be reached now.
    #[error("the bus is unreachable: {0}")]
    Unreachable(crate::Failure),
    /// The bus refused the request.
    #[error("the bus refused: {0}")]
    Refused(String),
}

/// How many publications a subscription holds for a slow reader before it
/// drops (the bus is at most once; the store fills what is dropped).
pub const SUBSCRIPTION_CAPACITY: usize = 8192;

/// Publish/subscribe between the nodes of a deployment. At most once, no
/// order across subjects; see the [cluster docs](super) for how mesh lives
/// with that.
#[async_trait]
pub trait Bus: fmt::Debug + Send + Sync + 'static {
    /// Publishes `payload` on `subject`. Returning is no promise of delivery.
    async fn publish(&self, subject: String, payload: Bytes) -> Result<(), BusError>;
    /// Every later publication matching `pattern`, until the receiver is
    /// dropped.
    async fn subscribe(&self, pattern: String) -> Result<mpsc::Receiver<BusMessage>, BusError>;
    /// Whether the bus is reachable now (for `/health`).
    async fn ping(&self) -> Result<(), BusError>;
}

/// Whether `subject` matches the NATS-style `pattern`.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

/// Decides whether the in-process bus drops a publication (fault
/// injection): `true` drops it.
pub type DropRule = Arc<dyn Fn(&str, &[u8]) -> bool + Send + Sync>;

/// The bus inside one process: every node built on clones of one
/// `LocalBus` hears the others. For tests and embedding; with
/// [`LocalBus::drop_when`], a test makes it lose publications.
#[derive(Clone, Default)]
pub struct LocalBus {
    inner: Arc<Mutex<LocalInner>>,
}

#[derive(Default)]
struct LocalInner {
    subscriptions: Vec<(String, mpsc::Sender<BusMessage>)>,
    drop_rule: Option<DropRule>,
    dropped: u64,
}

impl fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("LocalBus")
            .field("subscriptions", &inner.subscriptions.len())
            .field("dropped", &inner.dropped)
            .finish()
    }
}

impl LocalBus {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LocalInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on, publications for which `rule(subject, payload)` is true
    /// are lost; `None` stops losing them.
    pub fn drop_when(&self, rule: Option<DropRule>) {
        self.lock().drop_rule = rule;
    }

    /// The patterns of the subscriptions still open (their receivers not
    /// dropped), in the order they were made.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut inner = self.lock();
        inner.subscriptions.retain(|(_, tx)| !tx.is_closed());
        inner.subscriptions.iter().map(|(p, _)| p.clone()).collect()
    }

    /// How many publications were lost so far (by the rule or to a full
    /// subscription).
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, subject: String, payload: Bytes) -> Result<(), BusError> {
        let mut inner = self.lock();
        if inner
            .drop_rule
            .as_ref()
            .is_some_and(|rule| rule(&subject, &payload))
        {
            inner.dropped += 1;
            return Ok(());
        }
        inner.subscriptions.retain(|(_, tx)| !tx.is_closed());
        let mut dropped = 0;
        for (pattern, tx) in &inner.subscriptions {
            if subject_matches(pattern, &subject) {
                let message = BusMessage {
                    subject: subject.clone(),
                    payload: payload.clone(),
                };
                if tx.try_send(message).is_err() {
                    dropped += 1;
                }
            }
        }
        inner.dropped += dropped;
        Ok(())
    }

    async fn subscribe(&self, pattern: String) -> Result<mpsc::Receiver<BusMessage>, BusError> {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_CAPACITY);
        self.lock().subscriptions.push((pattern, tx));
        Ok(rx)
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_as_in_nats() {
        assert!(subject_matches("mesh.>", "mesh.room.1"));
        assert!(subject_matches("mesh.>", "mesh.nodes"));
        assert!(!subject_matches("mesh.>", "mesh"));
        assert!(!subject_matches("mesh.>", "other.nodes"));
        assert!(subject_matches("mesh.room.*", "mesh.room.1"));
        assert!(!subject_matches("mesh.room.*", "mesh.room.1.x"));
        assert!(subject_matches("mesh.nodes", "mesh.nodes"));
        assert!(!subject_matches("mesh.nodes", "mesh.nodes.x"));
        assert!(!subject_matches("mesh.nodes.x", "mesh.nodes"));
    }

    #[tokio::test]
    async fn the_local_bus_delivers_to_matching_subscriptions_and_drops_on_request() {
        let bus = LocalBus::new();
        let mut all = bus.subscribe("a.>".into()).await.expect("subscribe");
        let mut rooms = bus.subscribe("a.room.*".into()).await.expect("subscribe");
        bus.publish("a.nodes".into(), Bytes::from_static(b"1"))
            .await
            .expect("publish");
        bus.publish("a.room.r".into(), Bytes::from_static(b"2"))
            .await
            .expect("publish");
        assert_eq!(
            all.recv().await.map(|m| m.payload),
            Some(Bytes::from_static(b"1"))
        );
        assert_eq!(
            all.recv().await.map(|m| m.payload),
            Some(Bytes::from_static(b"2"))
        );
        assert_eq!(
            rooms.recv().await.map(|m| m.subject),
            Some("a.room.r".into())
        );

        bus.drop_when(Some(Arc::new(|subject, _| subject == "a.nodes")));
        bus.publish("a.nodes".into(), Bytes::from_static(b"3"))
            .await
            .expect("publish");
        bus.publish("a.room.r".into(), Bytes::from_static(b"4"))
            .await
            .expect("publish");
        assert_eq!(
            all.recv().await.map(|m| m.payload),
            Some(Bytes::from_static(b"4"))
        );
        assert_eq!(bus.dropped(), 1);
    }
}
