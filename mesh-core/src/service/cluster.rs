//! The service's link to the other nodes of a deployment: publishes what
//! happens here, applies what happens there, and repairs what the bus
//! loses from the store. See the [cluster docs](crate::cluster).

use std::sync::{Arc, Weak};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Inner, Service, lock};
use crate::cluster::directory::{Change, RemotePeer};
use crate::cluster::{Bus, BusError, BusMessage, ClusterConfig, ClusterEvent, Envelope, NodeId};
use crate::error::{Error, Result};
use crate::protocol::{
    MessageId, P2pInfo, P2pSession, PeerId, RoomId, RtcKind, RtcSignal, SessionId, Timestamp,
};
use crate::relay::RelayUsage;
use crate::storage::{HistoryPage, MAX_PAGE};

/// Events waiting to be published; past it new ones are dropped (and
/// logged): the bus is at most once anyway.
const OUTBOX: usize = 16_384;

/// The most pages of history one gap fill reads; a longer gap is left to
/// clients, which fill holes from history themselves.
const FILL_PAGES: usize = 10;

/// Another node's relay report: its name and what it relayed per user.
pub type RelayReport = (String, Vec<RelayUsage>);

/// Relay reports waiting for the relay; past it they are dropped (the next
/// second brings new ones).
const RELAY_REPORTS: usize = 256;

/// What other nodes say about ACME HTTP-01 challenges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcmeNotice {
    /// Serve `key_authorization` for `token` (`None`: withdrawn, the order
    /// is over).
    Answer {
        token: String,
        key_authorization: Option<String>,
    },
    /// `node` serves the answer for `token` now.
    Held { token: String, node: NodeId },
}

/// ACME answers waiting for the HTTP side.
const ACME_ANSWERS: usize = 64;

#[derive(Debug)]
pub(super) struct ClusterLink {
    config: ClusterConfig,
    /// Every subscription's publications end here, for the receive loop.
    inbox: mpsc::Sender<BusMessage>,
    /// The rooms this node listens to (live here), with the task that
    /// forwards their subscription to `inbox`; aborting it unsubscribes.
    rooms: std::sync::Mutex<std::collections::HashMap<RoomId, tokio::task::AbortHandle>>,
    /// When this node joined (see [`Service::cluster_leader`]).
    joined: std::time::Instant,
    bus: Arc<dyn Bus>,
    outbox: mpsc::Sender<(String, Bytes)>,
}

impl Service {
    /// Joins the cluster on `bus` as `config.node_id`: subscribes to the
    /// deployment's subjects, then publishes this node's events and applies
    /// the others' until the service is dropped. Returns once subscribed.
    /// The store must be the one the other nodes use.
    pub async fn join_cluster(&self, bus: Arc<dyn Bus>, config: ClusterConfig) -> Result<()> {
        let nodes = bus
            .subscribe(config.nodes_subject())
            .await
            .map_err(bus_error)?;
        let (inbox_tx, inbox) = mpsc::channel(INBOX);
        tokio::spawn(forward(nodes, inbox_tx.clone()));
        let (outbox, queue) = mpsc::channel(OUTBOX);
        let node = config.node_id.clone();
        let link = ClusterLink {
            inbox: inbox_tx,
            rooms: Default::default(),
            config,
            joined: std::time::Instant::now(),
            bus: bus.clone(),
            outbox,
        };
        self.inner
            .cluster
            .set(link)
            .map_err(|_| Error::InvalidRequest("the service is in a cluster already".into()))?;
        self.with_engine(|engine, _| engine.join_cluster());
        tokio::spawn(publish_loop(bus, queue));
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(receive_loop(weak.clone(), inbox));
        tokio::spawn(tick_loop(weak));
        // Rooms live here already (connections made before joining).
        let live = self.with_engine(|engine, _| engine.room_heads());
        self.room_interest(live.into_iter().map(|(room, _)| (room, true)).collect());
        self.publish_heartbeat();
        tracing::info!(%node, "joined the cluster");
        Ok(())
    }

    /// Tells the other nodes this one is leaving (its users are gone from
    /// it at once rather than after the node time-out). For a graceful
    /// shutdown; waits for the publication to be handed to the bus.
    pub async fn leave_cluster(&self) {
        let Some(link) = self.inner.cluster.get() else {
            return;
        };
        let event = ClusterEvent::NodeLeft;
        if let Some((subject, payload)) = link.encode(event)
            && let Err(e) = link.bus.publish(subject, payload).await
        {
            tracing::warn!("could not tell the cluster this node leaves: {e}");
        }
    }

    /// The bus's health: `None` outside a cluster.
    pub async fn bus_health(&self) -> Option<std::result::Result<(), BusError>> {
        let link = self.inner.cluster.get()?;
        Some(link.bus.ping().await)
    }

    /// The other nodes this one hears from: `None` outside a cluster.
    pub fn cluster_peers(&self) -> Option<Vec<NodeId>> {
        self.inner.cluster.get()?;
        Some(lock(&self.inner.directory).node_ids())
    }

    /// How many nodes this one knows of, itself included: `None` outside
    /// a cluster.
    pub fn cluster_nodes(&self) -> Option<usize> {
        self.inner.cluster.get()?;
        Some(lock(&self.inner.directory).nodes() + 1)
    }

    /// Tells the other nodes what this node's relay did for each user
    /// ([`Relay::take_usage`], every second). Nothing outside a cluster or
    /// when `users` is empty.
    ///
    /// [`Relay::take_usage`]: crate::relay::server::Relay::take_usage
    pub fn publish_relay_usage(&self, users: Vec<RelayUsage>) {
        if !users.is_empty() {
            self.publish(ClusterEvent::RelayUsage { users });
        }
    }

    /// The other nodes' relay reports, by node name, for this node's relay
    /// ([`Relay::remote_usage`]). One receiver: a second call replaces the
    /// first. `None` outside a cluster.
    ///
    /// [`Relay::remote_usage`]: crate::relay::server::Relay::remote_usage
    pub fn relay_usage_reports(&self) -> Option<mpsc::Receiver<RelayReport>> {
        self.inner.cluster.get()?;
        let (tx, rx) = mpsc::channel(RELAY_REPORTS);
        *lock(&self.inner.relay_reports) = Some(tx);
        Some(rx)
    }

    /// Tells the other nodes an ACME HTTP-01 answer to serve (`None`: the
    /// order is over and its certificate is in the shared cache). Nothing
    /// outside a cluster.
    pub fn publish_acme_challenge(&self, token: String, key_authorization: Option<String>) {
        self.publish(ClusterEvent::AcmeChallenge {
            token,
            key_authorization,
        });
    }

    /// Tells the other nodes this one serves the answer for `token` now.
    pub fn publish_acme_held(&self, token: String) {
        self.publish(ClusterEvent::AcmeChallengeHeld { token });
    }

    fn acme_notice(&self, notice: AcmeNotice) {
        let to = lock(&self.inner.acme_challenges);
        if let Some(tx) = to.as_ref()
            && tx.try_send(notice).is_err()
        {
            tracing::warn!("an ACME notice from another node was dropped");
        }
    }

    /// The other nodes' ACME HTTP-01 answers (for this node to serve too)
    /// and their acknowledgements of this node's. One receiver: a second
    /// call replaces the first. `None` outside a cluster.
    pub fn acme_challenges(&self) -> Option<mpsc::Receiver<AcmeNotice>> {
        self.inner.cluster.get()?;
        let (tx, rx) = mpsc::channel(ACME_ANSWERS);
        *lock(&self.inner.acme_challenges) = Some(tx);
        Some(rx)
    }

    /// Whether this node is the one that does the deployment's single
    /// jobs (ordering a shared certificate): the node with the smallest id
    /// among those it hears from. `None` outside a cluster, and during the
    /// first two heartbeat intervals after joining, while the others are
    /// not all heard from yet.
    pub fn cluster_leader(&self) -> Option<bool> {
        let link = self.inner.cluster.get()?;
        if link.joined.elapsed() < 2 * link.config.heartbeat {
            return None;
        }
        let others = lock(&self.inner.directory).node_ids();
        Some(others.iter().all(|other| link.config.node_id < *other))
    }

    /// Listens to the rooms that became live here, and stops listening to
    /// those that are not any more (see [`Output::RoomInterest`]). A
    /// subscription takes effect a moment after the room became live: what
    /// was published in between is a message the sweep brings from the
    /// store, or typing lost as a network would lose it.
    ///
    /// [`Output::RoomInterest`]: crate::engine::Output::RoomInterest
    pub(super) fn room_interest(&self, changes: Vec<(RoomId, bool)>) {
        let Some(link) = self.inner.cluster.get() else {
            return;
        };
        if changes.is_empty() {
            return;
        }
        let mut rooms = lock(&link.rooms);
        for (room, live) in changes {
            if live {
                if rooms.contains_key(&room) {
                    continue;
                }
                let subject = link.config.room_subject(room);
                let task = tokio::spawn(listen(link.bus.clone(), subject, link.inbox.clone()));
                rooms.insert(room, task.abort_handle());
            } else if let Some(task) = rooms.remove(&room) {
                task.abort();
            }
        }
    }

    /// Hands `event` to the bus, if the service is in a cluster.
    pub(super) fn publish(&self, event: ClusterEvent) {
        let Some(link) = self.inner.cluster.get() else {
            return;
        };
        let Some(item) = link.encode(event) else {
            return;
        };
        if link.outbox.try_send(item).is_err() {
            tracing::warn!("cluster outbox full: an event for the other nodes was dropped");
        }
    }

    fn publish_heartbeat(&self) {
        let users = self.with_engine(|engine, _| engine.local_presence());
        self.publish(ClusterEvent::Heartbeat { users });
    }

    /// Applies one event from another node.
    async fn apply(&self, envelope: Envelope) {
        let Envelope { node, event } = envelope;
        match event {
            ClusterEvent::MessageCreated { message } => {
                let (room, seq) = (message.room_id, message.seq);
                let head = self.with_engine(|engine, now| {
                    let head = engine.room_head(room);
                    engine.message_created(now, message, None);
                    head
                });
                if let Some(head) = head
                    && seq > head.saturating_add(1)
                {
                    // A gap in the live stream: what the bus lost is in the store.
                    self.fill_room(room, head).await;
                }
            }
            ClusterEvent::Typing {
                room_id,
                user_id,
                typing,
            } => {
                self.with_engine(|engine, now| engine.remote_typing(now, room_id, user_id, typing))
            }
            ClusterEvent::MemberJoined { room_id, user } => {
                self.with_engine(|engine, now| engine.member_added(now, room_id, &user));
            }
            ClusterEvent::MemberLeft { room_id, user_id } => {
                self.with_engine(|engine, now| engine.leave_room(now, room_id, user_id, None));
            }
            ClusterEvent::RoomUpdated { room } => {
                self.with_engine(|engine, now| engine.room_updated(now, &room));
            }
            ClusterEvent::RoomDeleted { room_id } => {
                self.with_engine(|engine, now| engine.room_deleted(now, room_id));
            }
            ClusterEvent::RoleChanged {
                room_id,
                user_id,
                role,
            } => self.with_engine(|engine, now| engine.role_changed(now, room_id, user_id, role)),
            ClusterEvent::Rtc { kind, signal } => {
                self.with_engine(|engine, _| engine.remote_rtc(kind, signal));
            }
            ClusterEvent::SessionOpened {
                session,
                session_token,
                initiator,
                target_relay,
            } => {
                self.with_engine(|engine, now| {
                    engine.remote_session_opened(
                        now,
                        session,
                        session_token,
                        initiator,
                        target_relay,
                    )
                });
            }
            ClusterEvent::SessionClosed { session_id, reason } => {
                self.with_engine(|engine, now| {
                    engine.remote_session_closed(now, session_id, &reason);
                });
            }
            ClusterEvent::RelayUsage { users } => {
                let reports = lock(&self.inner.relay_reports);
                if let Some(tx) = reports.as_ref()
                    && tx.try_send((node.to_string(), users)).is_err()
                {
                    tracing::debug!(%node, "a relay report was dropped (the relay is behind)");
                }
            }
            ClusterEvent::AcmeChallenge {
                token,
                key_authorization,
            } => self.acme_notice(AcmeNotice::Answer {
                token,
                key_authorization,
            }),
            ClusterEvent::AcmeChallengeHeld { token } => {
                self.acme_notice(AcmeNotice::Held { token, node });
            }
            ClusterEvent::DeviceRevoked { device_id } => {
                self.with_engine(|engine, now| engine.revoke_device(now, device_id));
            }
            ClusterEvent::Presence { presence } => {
                let changes = lock(&self.inner.directory).update(&node, Timestamp::now(), presence);
                self.apply_changes(changes);
            }
            ClusterEvent::Heartbeat { users } => {
                let changes = lock(&self.inner.directory).heartbeat(&node, Timestamp::now(), users);
                self.apply_changes(changes);
            }
            ClusterEvent::NodeLeft => {
                let changes = lock(&self.inner.directory).remove(&node);
                self.apply_changes(changes);
            }
        }
    }

    fn apply_changes(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        self.with_engine(|engine, now| {
            for change in changes {
                engine.remote_presence(now, change.user, change.presence, &change.rooms);
            }
        });
        self.end_sessions_with_gone_peers();
    }

    /// Ends the sessions whose party on another node is no longer
    /// connected anywhere (it left, or its node died or left): that node
    /// may never say so.
    fn end_sessions_with_gone_peers(&self) {
        let sessions = self.with_engine(|engine, _| engine.sessions_elsewhere());
        if sessions.is_empty() {
            return;
        }
        let gone: Vec<SessionId> = {
            let directory = lock(&self.inner.directory);
            sessions
                .into_iter()
                .filter(|(_, peer)| !directory.has_peer(*peer))
                .map(|(id, _)| id)
                .collect()
        };
        if gone.is_empty() {
            return;
        }
        self.with_engine(|engine, now| {
            for id in gone {
                engine.remote_session_closed(now, id, "peer_disconnected");
            }
        });
    }

    /// `target`, if it is a peer connected to another node: `NotFound`
    /// unless this node or another has it, `Forbidden` unless its user is
    /// in `room` there. `None` outside a cluster or when it is connected
    /// here.
    pub(super) fn target_elsewhere(
        &self,
        target: PeerId,
        room: RoomId,
    ) -> Result<Option<RemotePeer>> {
        if !self.in_cluster() || lock(&self.inner.hub).engine.peer(target).is_some() {
            return Ok(None);
        }
        match lock(&self.inner.directory).peer(target, room) {
            None => Err(Error::NotFound("target peer is not connected".into())),
            Some(there) if !there.in_room => Err(Error::Forbidden(
                "both peers must be members of the room".into(),
            )),
            Some(there) => Ok(Some(there)),
        }
    }

    /// Tells the target's node of a session opened here. If the target
    /// left in between (its node told this one before the session was
    /// recorded), the session ends now rather than at its expiry.
    pub(super) fn session_opened_elsewhere(
        &self,
        session: &P2pSession,
        token: &str,
        initiator: P2pInfo,
    ) {
        let target_relay = self.with_engine(|engine, _| engine.relay_grant_elsewhere(session.id));
        self.publish(ClusterEvent::SessionOpened {
            session: session.clone(),
            session_token: token.to_owned(),
            initiator,
            target_relay,
        });
        self.end_sessions_with_gone_peers();
    }

    /// Forgets the nodes that went quiet, and their users.
    fn expire_nodes(&self, config: &ClusterConfig) {
        let changes = lock(&self.inner.directory).expire(Timestamp::now(), config.node_timeout);
        self.apply_changes(changes);
    }

    /// Marks a message this node is storing and announcing, until the
    /// guard drops. Only a node in a cluster fills gaps, so only there is
    /// the mark kept.
    pub(super) fn appending(&self, id: MessageId) -> Option<Appending> {
        if !self.in_cluster() {
            return None;
        }
        lock(&self.inner.appending).insert(id);
        Some(Appending {
            service: self.clone(),
            id,
        })
    }

    /// An `rtc.*` signal from `from` to a peer not connected here: sent to
    /// the node that has it. `NotFound` unless some node reports the
    /// target connected; `Forbidden` unless both are in the room.
    pub(super) fn rtc_elsewhere(
        &self,
        from: PeerId,
        kind: RtcKind,
        signal: RtcSignal,
    ) -> Result<()> {
        let target = signal.target_peer_id;
        let room = signal.room_id;
        let signal = self.with_engine(|engine, now| engine.rtc_to_elsewhere(now, from, signal))?;
        match lock(&self.inner.directory)
            .peer(target, room)
            .map(|p| p.in_room)
        {
            None => return Err(Error::NotFound("target peer is not connected".into())),
            Some(false) => {
                return Err(Error::Forbidden(
                    "signaling is only allowed between peers in the same room".into(),
                ));
            }
            Some(true) => {}
        }
        self.publish(ClusterEvent::Rtc { kind, signal });
        Ok(())
    }

    /// Whether the service is in a cluster.
    pub(super) fn in_cluster(&self) -> bool {
        self.inner.cluster.get().is_some()
    }

    /// Gives the rooms that have no delivered message here yet the
    /// store's newest `seq` as their baseline. A node learns of a room's
    /// messages from the bus and from its own sends, in any order; without
    /// a baseline the first to come would be taken for the start. Called
    /// after a connection subscribed.
    pub(super) async fn observe_heads(&self, rooms: &[RoomId]) {
        if rooms.is_empty() {
            return;
        }
        match self.inner.store.last_seqs(rooms).await {
            Ok(lasts) => self.with_engine(|engine, _| {
                for (room, last) in rooms.iter().zip(lasts) {
                    engine.observe_room_head(*room, last);
                }
            }),
            Err(e) => tracing::debug!("room heads unknown (the sweep retries): {e}"),
        }
    }

    /// Compares the newest `seq` delivered in each room with connections
    /// here against the store's, and fills what the bus lost.
    async fn sweep(&self) {
        let heads = self.with_engine(|engine, _| engine.room_heads());
        if heads.is_empty() {
            return;
        }
        let rooms: Vec<RoomId> = heads.iter().map(|(room, _)| *room).collect();
        let lasts = match self.inner.store.last_seqs(&rooms).await {
            Ok(lasts) => lasts,
            Err(e) => {
                tracing::debug!("store sweep skipped: {e}");
                return;
            }
        };
        for ((room, head), last) in heads.into_iter().zip(lasts) {
            match head {
                Some(head) if last > head => self.fill_room(room, head).await,
                Some(_) => {}
                None => self.with_engine(|engine, _| engine.observe_room_head(room, last)),
            }
        }
    }

    /// Delivers the room's messages after `after` from the store (the
    /// engine drops what it delivered already).
    async fn fill_room(&self, room: RoomId, mut after: u64) {
        for _ in 0..FILL_PAGES {
            let page = match self
                .inner
                .store
                .messages(room, HistoryPage::After(after), MAX_PAGE)
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::debug!(%room, "gap fill skipped: {e}");
                    return;
                }
            };
            let mut messages = page.messages;
            // A message this node is still announcing stops the fill: its
            // sender must get it with its request id, from the local path,
            // and what follows it waits in the room's order until then.
            let appending = lock(&self.inner.appending);
            let stop = messages.iter().position(|m| appending.contains(&m.id));
            drop(appending);
            let cut = stop.is_some();
            if let Some(at) = stop {
                messages.truncate(at);
            }
            let Some(last) = messages.last().map(|m| m.seq) else {
                return;
            };
            let filled = messages.len();
            self.with_engine(|engine, now| {
                for message in messages {
                    engine.message_created(now, message, None);
                }
            });
            tracing::debug!(%room, after, filled, "filled from the store");
            after = last;
            if cut || !page.has_more {
                return;
            }
        }
    }
}

/// See [`Service::appending`].
pub(super) struct Appending {
    service: Service,
    id: MessageId,
}

impl Drop for Appending {
    fn drop(&mut self) {
        lock(&self.service.inner.appending).remove(&self.id);
    }
}

impl ClusterLink {
    fn encode(&self, event: ClusterEvent) -> Option<(String, Bytes)> {
        let subject = self.config.subject_of(&event);
        let envelope = Envelope {
            node: self.config.node_id.clone(),
            event,
        };
        match serde_json::to_vec(&envelope) {
            Ok(payload) => Some((subject, Bytes::from(payload))),
            Err(e) => {
                tracing::error!("could not encode a cluster event: {e}");
                None
            }
        }
    }
}

fn bus_error(e: BusError) -> Error {
    Error::Internal(crate::Failure::caused_by("joining the cluster", e))
}

/// Publications of all subscriptions waiting for the receive loop.
const INBOX: usize = 16_384;

/// Forwards one subscription's publications to the receive loop's inbox.
async fn forward(mut from: mpsc::Receiver<BusMessage>, to: mpsc::Sender<BusMessage>) {
    while let Some(message) = from.recv().await {
        if to.send(message).await.is_err() {
            return;
        }
    }
}

/// Subscribes to `subject` (retrying while the bus refuses) and forwards
/// what comes, until aborted (which drops the subscription).
async fn listen(bus: Arc<dyn Bus>, subject: String, to: mpsc::Sender<BusMessage>) {
    let mut wait = std::time::Duration::from_millis(100);
    loop {
        match bus.subscribe(subject.clone()).await {
            Ok(from) => return forward(from, to).await,
            Err(e) => {
                tracing::warn!(%subject, "subscribing failed, retrying: {e}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

async fn publish_loop(bus: Arc<dyn Bus>, mut queue: mpsc::Receiver<(String, Bytes)>) {
    while let Some((subject, payload)) = queue.recv().await {
        if let Err(e) = bus.publish(subject, payload).await {
            tracing::debug!("cluster publication lost: {e}");
        }
    }
}

async fn receive_loop(service: Weak<Inner>, mut inbox: mpsc::Receiver<BusMessage>) {
    while let Some(message) = inbox.recv().await {
        let Some(inner) = service.upgrade() else {
            return;
        };
        let service = Service { inner };
        let envelope: Envelope = match serde_json::from_slice(&message.payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::warn!(subject = %message.subject, "unreadable cluster event dropped: {e}");
                continue;
            }
        };
        let own = service
            .inner
            .cluster
            .get()
            .is_some_and(|link| link.config.node_id == envelope.node);
        if !own {
            service.apply(envelope).await;
        }
    }
}

/// Heartbeats, the sweep and node time-outs, for as long as the service
/// lives.
async fn tick_loop(service: Weak<Inner>) {
    let Some(config) = service
        .upgrade()
        .and_then(|inner| inner.cluster.get().map(|link| link.config.clone()))
    else {
        return;
    };
    let mut heartbeat = tokio::time::interval(config.heartbeat);
    let mut sweep = tokio::time::interval(config.sweep_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                let Some(inner) = service.upgrade() else { return };
                Service { inner }.publish_heartbeat();
            }
            _ = sweep.tick() => {
                let Some(inner) = service.upgrade() else { return };
                let service = Service { inner };
                service.expire_nodes(&config);
                service.sweep().await;
            }
        }
    }
}
