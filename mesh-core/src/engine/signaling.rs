//! WebRTC signaling relay and P2P session orchestration.
//!
//! Both only connect peers whose users share a room, checked on the
//! *connections'* subscriptions: the engine's view is what the service
//! last told it, and the subscription is what a removed member loses first.
//! Sessions are prepared without side effects so the service can sign the
//! session token (an async, fallible step) before anything is announced; a
//! peer that vanished in between makes the session close right after it
//! opens, so both sides still see a well-formed start and end.

use crate::error::Error;
use crate::protocol::{
    P2pInfo, P2pSession, PeerId, RelayGrant, RelayParty, RoomId, RtcSignal, ServerEvent, SessionId,
    SessionKind, SessionState, Timestamp, UserId,
};

use super::state::Timer;
use super::{Engine, Output};
use crate::protocol::RtcKind;

impl Engine {
    pub(super) fn do_relay_rtc(
        &mut self,
        now: Timestamp,
        from: PeerId,
        kind: RtcKind,
        mut signal: RtcSignal,
    ) -> Result<(), Error> {
        let Some(sender) = self.user_of(from) else {
            return Err(Error::NotFound("sending peer is not connected".into()));
        };
        self.touch(now, from);
        let not_shared =
            || Error::Forbidden("signaling is only allowed between peers in the same room".into());
        // The sender's own room first: an outsider learns nothing about
        // which peers are connected.
        if !self.is_subscribed(from, signal.room_id) {
            return Err(not_shared());
        }
        let target = signal.target_peer_id;
        if !self.peers.contains_key(&target) {
            return Err(Error::NotFound("target peer is not connected".into()));
        }
        if !self.is_subscribed(target, signal.room_id) {
            return Err(not_shared());
        }
        signal.from_peer_id = Some(from);
        signal.from_user_id = Some(sender);
        self.broadcast(vec![target], kind.event(signal));
        Ok(())
    }

    pub(super) fn do_prepare_session(
        &self,
        now: Timestamp,
        id: SessionId,
        initiator: PeerId,
        room: RoomId,
        target: PeerId,
        kind: SessionKind,
    ) -> Result<P2pSession, Error> {
        let initiator_user = self.check_initiator(initiator, room, target)?;
        let Some(target_user) = self.user_of(target) else {
            return Err(Error::NotFound("target peer is not connected".into()));
        };
        if !self.is_subscribed(target, room) {
            return Err(not_shared());
        }
        Ok(self.new_session(
            now,
            id,
            (initiator, initiator_user),
            room,
            (target, target_user),
            kind,
        ))
    }

    /// The initiator's side of a session request: its user, if the peer is
    /// connected here and in the room. The initiator's room is checked
    /// before anything about the target: an outsider learns nothing about
    /// which peers are connected.
    pub(super) fn check_initiator(
        &self,
        initiator: PeerId,
        room: RoomId,
        target: PeerId,
    ) -> Result<UserId, Error> {
        if initiator == target {
            return Err(Error::InvalidRequest(
                "a P2P session needs two different peers".into(),
            ));
        }
        let Some(initiator_user) = self.user_of(initiator) else {
            return Err(Error::NotFound("initiating peer is not connected".into()));
        };
        if !self.is_subscribed(initiator, room) {
            return Err(not_shared());
        }
        Ok(initiator_user)
    }

    pub(super) fn new_session(
        &self,
        now: Timestamp,
        id: SessionId,
        (initiator, initiator_user): (PeerId, UserId),
        room: RoomId,
        (target, target_user): (PeerId, UserId),
        kind: SessionKind,
    ) -> P2pSession {
        P2pSession {
            id,
            room_id: room,
            kind,
            initiator_peer_id: initiator,
            target_peer_id: target,
            initiator_user_id: initiator_user,
            target_user_id: target_user,
            state: SessionState::Pending,
            created_at: now,
            expires_at: now.saturating_add(self.config.session_ttl),
        }
    }

    /// `party`'s relay grant for session `id`, from this node's relay
    /// (`None` without one). For a party connected to another node
    /// (`elsewhere`), only if this relay's address is known: that agent
    /// must be told where to bind.
    pub(super) fn relay_grant(
        &self,
        id: SessionId,
        party: RelayParty,
        elsewhere: bool,
    ) -> Option<RelayGrant> {
        if elsewhere && self.config.relay_addr.is_none() {
            return None;
        }
        let mut grant = self.config.relay_secret.as_ref()?.grant(id, party);
        grant.addr = self.config.relay_addr.clone();
        Some(grant)
    }

    /// Records a session and announces it to its parties connected here.
    /// `elsewhere`: the party connected to another node, with what it
    /// announced (that node announces the session to it).
    /// `relayed_elsewhere`: the target's relay grant, when another node
    /// granted the session (it relays it). A party that should be here but
    /// vanished in between ends the session at once.
    pub(super) fn do_open_session(
        &mut self,
        now: Timestamp,
        session: P2pSession,
        session_token: String,
        request_id: Option<String>,
        elsewhere: Option<(PeerId, P2pInfo)>,
        relayed_elsewhere: Option<Option<RelayGrant>>,
    ) {
        let id = session.id;
        if self.sessions.contains_key(&id) {
            // Opening twice would announce twice and leak a timer.
            return;
        }
        let (initiator, target) = (session.initiator_peer_id, session.target_peer_id);
        let remote = elsewhere.as_ref().map(|(peer, _)| *peer);
        let info_of = |peer: PeerId| match &elsewhere {
            Some((there, info)) if *there == peer => info.clone(),
            _ => self
                .peers
                .get(&peer)
                .and_then(|p| p.info.p2p.clone())
                .unwrap_or_default(),
        };
        let event_for = |party: RelayParty| ServerEvent::P2pSessionCreated {
            session: session.clone(),
            session_token: session_token.clone(),
            initiator: info_of(initiator),
            target: info_of(target),
            relay: match (&relayed_elsewhere, party) {
                (Some(grant), RelayParty::Target) => grant.clone(),
                _ => self.relay_grant(id, party, false),
            },
        };
        let (to_initiator, to_target) = (
            event_for(RelayParty::Initiator),
            event_for(RelayParty::Target),
        );
        for peer in [initiator, target] {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.sessions.insert(id);
            }
        }
        if let Some(peer) = remote {
            self.elsewhere.insert(id, peer);
        }
        self.reschedule(Timer::Session(id), None, Some(session.expires_at));
        self.sessions.insert(id, session);
        if remote != Some(target) && self.peers.contains_key(&target) {
            self.broadcast(vec![target], to_target);
        }
        if remote != Some(initiator) && self.peers.contains_key(&initiator) {
            self.reply(initiator, request_id, to_initiator);
        }
        let gone = |peer: PeerId| remote != Some(peer) && !self.peers.contains_key(&peer);
        if gone(initiator) || gone(target) {
            self.end_session(now, id, "peer_disconnected");
        }
    }

    pub(super) fn do_close_session(
        &mut self,
        now: Timestamp,
        id: SessionId,
        by: UserId,
        reason: &str,
    ) -> Result<(), Error> {
        // A session the caller is not a party to is answered as if it did
        // not exist: outsiders learn nothing about who talks to whom.
        match self.sessions.get(&id) {
            Some(s) if s.initiator_user_id == by || s.target_user_id == by => {}
            _ => return Err(Error::NotFound("no such live P2P session".into())),
        }
        self.end_session(now, id, reason);
        Ok(())
    }

    pub(super) fn do_sessions_of(&self, user: UserId) -> Vec<P2pSession> {
        // Every live session has both peers connected (a disconnect ends
        // them), so the user's connections index all of theirs.
        let mut ids: Vec<SessionId> = self
            .users
            .get(&user)
            .into_iter()
            .flat_map(|u| u.peers.iter())
            .filter_map(|p| self.peers.get(p))
            .flat_map(|p| p.sessions.iter().copied())
            .collect();
        ids.sort();
        ids.dedup();
        let mut sessions: Vec<P2pSession> = ids
            .into_iter()
            .filter_map(|id| self.sessions.get(&id).cloned())
            .collect();
        sessions.sort_by_key(|s| (s.created_at, s.id));
        sessions
    }

    pub(super) fn session_expired(&mut self, now: Timestamp, id: SessionId, at: Timestamp) {
        if self.sessions.get(&id).is_some_and(|s| s.expires_at == at) {
            self.end_session(now, id, "expired");
        }
    }

    /// Ends a live session: `p2p.session.closed` to the parties still
    /// connected (a peer being disconnected is not), then [`Output::SessionEnded`] for the service.
    pub(super) fn end_session(&mut self, _now: Timestamp, id: SessionId, reason: &str) {
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        self.reschedule(Timer::Session(id), Some(session.expires_at), None);
        let mut to = Vec::with_capacity(2);
        for peer in [session.initiator_peer_id, session.target_peer_id] {
            // A peer that is disconnecting has already dropped its set:
            // its connection is gone, so it gets nothing.
            if let Some(p) = self.peers.get_mut(&peer)
                && p.sessions.remove(&id)
            {
                to.push(peer);
            }
        }
        self.broadcast(
            to,
            ServerEvent::P2pSessionClosed {
                session_id: id,
                reason: reason.to_owned(),
            },
        );
        self.outputs
            .push_back(Output::SessionEnded { session_id: id });
        if self.elsewhere.remove(&id).is_some() {
            self.outputs.push_back(Output::RemoteSessionEnded {
                session_id: id,
                reason: reason.to_owned(),
            });
        }
    }
}

fn not_shared() -> Error {
    Error::Forbidden("both peers must be members of the room".into())
}
