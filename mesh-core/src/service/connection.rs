//! One client connection: the frames it sends, checked, limited and acted on.
//!
//! A server feeds each text frame to [`PeerConnection::handle_text`] and
//! obeys the [`Flow`] it returns. Dropping the `PeerConnection` tells the
//! engine the peer is gone, so a connection task that ends for any reason
//! (close, error, panic, cancellation) leaves nothing behind.

use std::collections::HashMap;
use std::time::Duration;

use super::Service;
use super::limits::{ConnectionLimiter, Verdict};
use crate::auth::{Identity, Scope};
use crate::cluster::ClusterEvent;
use crate::engine::PeerInfo;
use crate::error::Error;
use crate::protocol::RtcKind;
use crate::protocol::{
    ClientRequest, ErrorPayload, Hello, IncomingFrame, OutgoingFrame, PeerId, RoomId, ServerEvent,
    Timestamp, User, parse_client_frame,
};
use crate::storage::{AppendOutcome, HistoryPage, MAX_PAGE, NewMessage};
use crate::transport::CloseCode;
use crate::validate;

/// What the server should do after a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Close the connection with this code and reason.
    Close(CloseCode, String),
}

/// A connection's state in the service. See the [module docs](self).
#[derive(Debug)]
pub struct PeerConnection {
    service: Service,
    peer: PeerId,
    identity: Identity,
    user: User,
    limiter: ConnectionLimiter,
    live: bool,
}

impl PeerConnection {
    pub(super) fn new(service: Service, peer: PeerId, identity: Identity, user: User) -> Self {
        let limiter = ConnectionLimiter::new(service.inner.config.frame_rate, Timestamp::now());
        Self {
            service,
            peer,
            identity,
            user,
            limiter,
            live: false,
        }
    }

    /// This connection's peer id (announced in `system.welcome`).
    pub fn peer_id(&self) -> PeerId {
        self.peer
    }

    /// The user on this connection.
    pub fn user(&self) -> &User {
        &self.user
    }

    /// The client answered a WebSocket ping, or sent anything: it is alive.
    pub fn heard(&self) {
        if self.live {
            let peer = self.peer;
            self.service
                .with_engine(|engine, now| engine.heard_from(now, peer));
        }
    }

    fn reply(&self, id: Option<String>, event: ServerEvent) {
        let peer = self.peer;
        let frame = OutgoingFrame::reply(id, event);
        self.service
            .with_hub(|hub, now| hub.send_direct(now, peer, &frame));
    }

    fn reply_error(&self, id: Option<String>, payload: ErrorPayload) {
        self.reply(id, ServerEvent::Error(payload));
    }

    /// Handles one text frame from the client.
    pub async fn handle_text(&mut self, text: &str) -> Flow {
        match parse_client_frame(text) {
            Ok(frame) => self.handle(frame).await,
            Err((id, payload)) => {
                if let Some(flow) = self.admit(&id) {
                    return flow;
                }
                self.reply_error(id, payload);
                Flow::Continue
            }
        }
    }

    /// Handles one frame, already typed: what an in-process client sends
    /// (see [`crate::transport::in_process`]). The same rate limit and rules
    /// apply as to a frame read off a socket.
    pub async fn handle(&mut self, frame: IncomingFrame) -> Flow {
        if let Some(flow) = self.admit(&frame.id) {
            return flow;
        }
        self.handle_frame(frame).await
    }

    /// Counts a frame against the rate limit: `Some` answer when it is
    /// refused (an error reply, or closing), `None` to go on.
    fn admit(&mut self, id: &Option<String>) -> Option<Flow> {
        match self.limiter.check(Timestamp::now()) {
            Verdict::Allow => {
                self.heard();
                None
            }
            Verdict::Refuse { retry_after } => {
                let ms = retry_after.as_millis().max(1) as u64;
                let refusal = Error::RateLimited { retry_after_ms: ms }.to_payload();
                self.reply_error(id.clone(), refusal);
                Some(Flow::Continue)
            }
            Verdict::Close => Some(Flow::Close(CloseCode::Policy, "rate limit exceeded".into())),
        }
    }

    async fn handle_frame(&mut self, IncomingFrame { id, event }: IncomingFrame) -> Flow {
        if !self.live && !matches!(event, ClientRequest::Hello(_)) {
            self.reply_error(
                id,
                ErrorPayload::new(crate::ErrorCode::InvalidRequest, "send system.hello first"),
            );
            return Flow::Continue;
        }
        let ack = acked(&event).then(|| event.type_name());
        let result = self.dispatch(event, &id).await;
        match result {
            Ok(()) => {
                if let (Some(request), Some(_)) = (ack, &id) {
                    let request = request.to_owned();
                    self.reply(id, ServerEvent::Ack { request });
                }
            }
            Err(e) => {
                if e.code() == crate::ErrorCode::Internal {
                    tracing::error!(peer = %self.peer, error = %e, "request failed");
                } else if e.code() == crate::ErrorCode::Unavailable {
                    tracing::warn!(peer = %self.peer, error = %e, "storage unavailable");
                }
                self.reply_error(id, e.to_payload());
            }
        }
        Flow::Continue
    }

    /// Does what `event` asks. Answers that are events of their own (a
    /// joined room, a sent message) go out from here or the engine.
    async fn dispatch(&mut self, event: ClientRequest, id: &Option<String>) -> Result<(), Error> {
        match event {
            ClientRequest::Hello(hello) => self.hello(hello, id.clone()).await,
            ClientRequest::Ping(_) => {
                let peer = self.peer;
                self.service
                    .with_engine(|engine, now| engine.ping(now, peer, id.clone()));
                Ok(())
            }
            ClientRequest::RoomJoin { room_id } => self.join(room_id, id.clone()).await,
            ClientRequest::RoomLeave { room_id } => {
                let reply = Some((self.peer, id.clone()));
                self.service
                    .leave_room(&self.identity, room_id, reply)
                    .await
            }
            ClientRequest::MessageSend {
                room_id,
                content,
                client_id,
            } => {
                self.send_message(room_id, content, client_id, id.clone())
                    .await
            }
            ClientRequest::Typing { room_id, typing } => {
                let peer = self.peer;
                self.service
                    .with_engine(|engine, now| engine.typing(now, peer, room_id, typing))?;
                self.service.publish(ClusterEvent::Typing {
                    room_id,
                    user_id: self.user().id,
                    typing,
                });
                Ok(())
            }
            ClientRequest::PresenceUpdate { status, message } => {
                match validate::presence_message(message.as_deref()) {
                    Ok(message) => {
                        let peer = self.peer;
                        let rid = id.clone();
                        self.service.with_engine(|engine, now| {
                            engine.set_presence(now, peer, status, message, rid)
                        });
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            ClientRequest::RtcOffer(signal) => self.rtc(RtcKind::Offer, signal),
            ClientRequest::RtcAnswer(signal) => self.rtc(RtcKind::Answer, signal),
            ClientRequest::RtcIce(signal) => self.rtc(RtcKind::Ice, signal),
            ClientRequest::RtcHangup(signal) => self.rtc(RtcKind::Hangup, signal),
            ClientRequest::P2pRequest {
                room_id,
                target_peer_id,
                kind,
            } => self
                .service
                .create_session(
                    &self.identity,
                    room_id,
                    target_peer_id,
                    kind,
                    Some(self.peer),
                    id.clone(),
                )
                .await
                .map(|_| ()),
            ClientRequest::P2pClose { session_id } => {
                self.service.close_session(&self.identity, session_id)
            }
            ClientRequest::P2pAnnounce { p2p } => {
                let peer = self.peer;
                self.service
                    .with_engine(move |engine, _now| engine.announce_p2p(peer, p2p))
            }
        }
    }

    fn rtc(&self, kind: RtcKind, signal: crate::protocol::RtcSignal) -> Result<(), Error> {
        let peer = self.peer;
        let target = signal.target_peer_id;
        let here = super::lock(&self.service.inner.hub)
            .engine
            .peer(target)
            .is_some();
        if !here && self.service.in_cluster() {
            return self.service.rtc_elsewhere(peer, kind, signal);
        }
        self.service
            .with_engine(|engine, now| engine.relay_rtc(now, peer, kind, signal))
    }

    async fn hello(&mut self, hello: Hello, id: Option<String>) -> Result<(), Error> {
        if self.live {
            return Err(Error::InvalidRequest(
                "system.hello was already received".into(),
            ));
        }
        if let Some(name) = hello.device_name.as_deref() {
            validate::device_name(Some(name))?;
        }
        let store = &self.service.inner.store;
        let rooms: Vec<RoomId> = store.room_ids_of(self.user.id).await?;
        // Resuming only makes sense for rooms the user is in.
        let since: HashMap<RoomId, u64> = hello
            .since
            .unwrap_or_default()
            .into_iter()
            .filter(|(room, _)| rooms.contains(room))
            .collect();
        let info = PeerInfo {
            peer_id: self.peer,
            user: self.user.clone(),
            device_id: self.identity.device_id,
            p2p: hello.p2p.map(validate::p2p_info).transpose()?,
        };
        let catch_up: Vec<(RoomId, u64)> = since.iter().map(|(r, s)| (*r, *s)).collect();
        let heads_from = self.service.in_cluster().then(|| rooms.clone());
        self.service
            .with_engine(|engine, now| engine.connect(now, info, rooms, since, id));
        self.live = true;
        if let Some(rooms) = heads_from {
            self.service.observe_heads(&rooms).await;
        }
        for (room, after) in catch_up {
            self.backfill(room, after).await?;
        }
        Ok(())
    }

    /// Sends the messages after `after` in `room`, page by page, at the pace
    /// the connection drains them.
    async fn backfill(&self, room: RoomId, mut after: u64) -> Result<(), Error> {
        let store = self.service.inner.store.clone();
        loop {
            let page = store
                .messages(room, HistoryPage::After(after), MAX_PAGE)
                .await?;
            if let Some(last) = page.messages.last() {
                after = last.seq;
            }
            let done = !page.has_more;
            let peer = self.peer;
            self.service
                .with_engine(|engine, now| engine.backfill(now, peer, room, page.messages, done));
            if done {
                return Ok(());
            }
            self.wait_for_room(MAX_PAGE * 2).await;
        }
    }

    /// Waits until the connection's queue has room for `frames` more, so a
    /// long backlog is paced instead of overflowing it.
    async fn wait_for_room(&self, frames: usize) {
        let peer = self.peer;
        loop {
            let free = {
                let hub = super::lock(&self.service.inner.hub);
                match hub.conns.get(&peer) {
                    Some(entry) => entry.conn.capacity(),
                    None => return,
                }
            };
            if free >= frames {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn join(&self, room: RoomId, id: Option<String>) -> Result<(), Error> {
        let members = self.service.join(&self.identity, room).await?;
        let peer = self.peer;
        self.service
            .with_engine(|engine, now| engine.join_room(now, peer, room, members, id));
        self.service.publish(ClusterEvent::MemberJoined {
            room_id: room,
            user: self.user().clone(),
        });
        if self.service.in_cluster() {
            self.service.observe_heads(&[room]).await;
        }
        Ok(())
    }

    async fn send_message(
        &self,
        room: RoomId,
        content: String,
        client_id: Option<String>,
        id: Option<String>,
    ) -> Result<(), Error> {
        Service::require(&self.identity, Scope::MessagesWrite)?;
        // Membership before the content: a non-member gets 403 whatever it
        // sends, whether or not the room exists.
        let peer = self.peer;
        let subscribed = super::lock(&self.service.inner.hub)
            .engine
            .is_subscribed(peer, room);
        if !subscribed {
            return Err(Error::Forbidden(
                "join the room before sending to it".into(),
            ));
        }
        validate::content(&content)?;
        if let Some(c) = client_id.as_deref() {
            validate::client_id(c)?;
        }
        let message = NewMessage {
            id: crate::protocol::MessageId::new(),
            room_id: room,
            sender: self.user.clone(),
            content,
            created_at: Timestamp::now(),
            client_id,
        };
        // Stored and announced in a task of its own, so that a connection
        // dropped mid-append cannot leave a stored message unannounced.
        let service = self.service.clone();
        let task = tokio::spawn(async move {
            // Until the engine has it, a gap fill must not deliver it
            // without its request id (see `Service::fill_room`).
            let _local = service.appending(message.id);
            let outcome = service.inner.store.append_message(message).await?;
            match outcome {
                AppendOutcome::Created(message) => {
                    let event = ClusterEvent::MessageCreated {
                        message: message.clone(),
                    };
                    service.with_engine(|engine, now| {
                        engine.message_created(now, message, Some((peer, id)))
                    });
                    service.publish(event);
                }
                AppendOutcome::Duplicate(message) => {
                    let frame = OutgoingFrame::reply(id, ServerEvent::MessageCreated { message });
                    service.with_hub(|hub, now| hub.send_direct(now, peer, &frame));
                }
            }
            Ok::<(), Error>(())
        });
        task.await
            .map_err(|e| Error::Internal(crate::Failure::caused_by("append task failed", e)))?
    }
}

impl Drop for PeerConnection {
    fn drop(&mut self) {
        self.service.drop_connection(self.peer);
    }
}

/// Whether a request's success is answered by `system.ack`: those that
/// have no event of their own, so that every request with an `id` gets
/// exactly one answer.
fn acked(event: &ClientRequest) -> bool {
    match event {
        ClientRequest::Typing { .. }
        | ClientRequest::RtcOffer(_)
        | ClientRequest::RtcAnswer(_)
        | ClientRequest::RtcIce(_)
        | ClientRequest::RtcHangup(_)
        | ClientRequest::P2pClose { .. }
        | ClientRequest::P2pAnnounce { .. } => true,
        // Answered by `system.welcome`, `system.pong`, `room.joined`,
        // `room.left`, `message.created`, `presence.update` and
        // `p2p.session.created`.
        ClientRequest::Hello(_)
        | ClientRequest::Ping(_)
        | ClientRequest::RoomJoin { .. }
        | ClientRequest::RoomLeave { .. }
        | ClientRequest::MessageSend { .. }
        | ClientRequest::PresenceUpdate { .. }
        | ClientRequest::P2pRequest { .. } => false,
    }
}
