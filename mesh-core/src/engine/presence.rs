//! Connections, heartbeats and presence aggregated over a user's devices.
//!
//! A user is online while any of their connections is; going offline is
//! announced only when the last one disconnects or stops answering, so a
//! phone dropping off while the laptop stays does not make the user flicker.
//! The chosen status (`presence.update`) belongs to the user, not to a
//! device, and is forgotten when the user is fully offline: the next login
//! starts `online` again, as a client author would expect.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::protocol::{PeerId, Presence, RoomId, ServerEvent, Timestamp};
use crate::transport::CloseCode;

use super::state::{CatchUp, PeerState, Timer, UserState};
use super::{Engine, Output, PeerInfo};

impl Engine {
    pub(super) fn do_connect(
        &mut self,
        now: Timestamp,
        info: PeerInfo,
        rooms: Vec<RoomId>,
        since: HashMap<RoomId, u64>,
        request_id: Option<String>,
    ) {
        let peer = info.peer_id;
        if self.peers.contains_key(&peer) {
            // A peer id names one connection; a second hello on it is a
            // driver bug. Start over rather than keep half of each.
            self.do_disconnect(now, peer);
        }
        let user = info.user.clone();
        let deadline = now.saturating_add(self.config.heartbeat_timeout);
        let rooms: BTreeSet<RoomId> = rooms.into_iter().collect();
        // `since` for a room the user is not in would hold messages that
        // never come: ignore it.
        let catching_up: BTreeMap<RoomId, CatchUp> = since
            .into_iter()
            .filter(|(room, _)| rooms.contains(room))
            .map(|(room, last)| {
                (
                    room,
                    CatchUp {
                        last,
                        ..CatchUp::default()
                    },
                )
            })
            .collect();
        for room in &rooms {
            let r = self.rooms.entry(*room).or_default();
            if r.subscribers.is_empty() {
                self.outputs.push_back(Output::RoomInterest {
                    room_id: *room,
                    live: true,
                });
            }
            r.subscribers.insert(peer);
            if catching_up.contains_key(room) {
                r.catching_up.insert(peer);
            }
        }
        self.devices.entry(info.device_id).or_default().insert(peer);
        self.peers.insert(
            peer,
            PeerState {
                info,
                rooms,
                heartbeat_deadline: deadline,
                catching_up,
                backlog: 0,
                sessions: BTreeSet::new(),
            },
        );
        self.reschedule(Timer::Heartbeat(peer), None, Some(deadline));

        let heartbeat_ms =
            u64::try_from(self.config.heartbeat_interval.as_millis()).unwrap_or(u64::MAX);
        self.reply(
            peer,
            request_id,
            ServerEvent::Welcome {
                peer_id: peer,
                user: user.clone(),
                server_time: now,
                heartbeat_ms,
                p2p: self.config.p2p_server.clone(),
            },
        );

        let state = self.users.entry(user.id).or_insert_with(|| UserState {
            user: user.clone(),
            peers: BTreeSet::new(),
            chosen: Presence::Online,
            message: None,
        });
        // Keep the freshest profile (display name changes ride on a login).
        state.user = user.clone();
        let first = state.peers.is_empty();
        state.peers.insert(peer);
        if first {
            let (status, message) = (state.chosen, state.message.clone());
            let mut audience = self.audience_of(user.id);
            audience.remove(&peer);
            self.broadcast(
                audience.into_iter().collect(),
                ServerEvent::PresenceUpdate {
                    user_id: user.id,
                    status,
                    message,
                },
            );
        }
        // Other nodes learn of every connection (signals and sessions are
        // addressed to peers), not only the first.
        self.presence_changed(user.id);
    }

    pub(super) fn do_disconnect(&mut self, now: Timestamp, peer: PeerId) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let user = state.info.user.id;
        let device = state.info.device_id;
        let deadline = state.heartbeat_deadline;
        let sessions = std::mem::take(&mut state.sessions);

        for session in sessions {
            self.end_session(now, session, "peer_disconnected");
        }

        let last = self
            .users
            .get(&user)
            .is_none_or(|u| u.peers.len() <= 1 && u.peers.contains(&peer));
        if last {
            // Stop the typing indicators and tell the rooms the user is gone
            // while the peer still counts as subscribed, so the audience is
            // the one that saw the user online.
            self.end_all_typing(user);
            let invisible = self
                .users
                .get(&user)
                .is_some_and(|u| u.chosen == Presence::Offline);
            // Still online on another node: nothing changes for others.
            if !invisible && !self.online_elsewhere(user) {
                let mut audience = self.audience_of(user);
                audience.remove(&peer);
                self.broadcast(
                    audience.into_iter().collect(),
                    ServerEvent::PresenceUpdate {
                        user_id: user,
                        status: Presence::Offline,
                        message: None,
                    },
                );
            }
        }

        self.reschedule(Timer::Heartbeat(peer), Some(deadline), None);
        let rooms: Vec<RoomId> = self
            .peers
            .get(&peer)
            .map(|p| p.rooms.iter().copied().collect())
            .unwrap_or_default();
        for room in rooms {
            self.unsubscribe(peer, room);
        }
        self.peers.remove(&peer);
        if let Some(set) = self.devices.get_mut(&device) {
            set.remove(&peer);
            if set.is_empty() {
                self.devices.remove(&device);
            }
        }
        if let Some(u) = self.users.get_mut(&user) {
            u.peers.remove(&peer);
            if u.peers.is_empty() {
                self.users.remove(&user);
            }
        }
        self.presence_changed(user);
    }

    /// The peer is alive: push its heartbeat deadline out.
    pub(super) fn touch(&mut self, now: Timestamp, peer: PeerId) {
        let timeout = self.config.heartbeat_timeout;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let old = p.heartbeat_deadline;
        let new = now.saturating_add(timeout).max(old);
        p.heartbeat_deadline = new;
        self.reschedule(Timer::Heartbeat(peer), Some(old), Some(new));
    }

    /// Closes a connection and forgets it.
    pub(super) fn close_peer(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        code: CloseCode,
        reason: &str,
    ) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        self.outputs.push_back(super::Output::Close {
            peer,
            code,
            reason: reason.to_owned(),
        });
        self.do_disconnect(now, peer);
    }

    pub(super) fn heartbeat_expired(&mut self, now: Timestamp, peer: PeerId, at: Timestamp) {
        if self
            .peers
            .get(&peer)
            .is_some_and(|p| p.heartbeat_deadline == at)
        {
            self.close_peer(now, peer, CloseCode::Policy, "heartbeat timeout");
        }
    }

    pub(super) fn do_set_presence(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        status: Presence,
        message: Option<String>,
        request_id: Option<String>,
    ) {
        let Some(user) = self.user_of(peer) else {
            return;
        };
        self.touch(now, peer);
        // Invisible hides the status message too: an "offline" user with a
        // fresh status line would not be offline.
        let message = if status == Presence::Offline {
            None
        } else {
            message
        };
        if let Some(u) = self.users.get_mut(&user) {
            u.chosen = status;
            u.message = message.clone();
        }
        let mut audience = self.audience_of(user);
        audience.remove(&peer);
        let event = ServerEvent::PresenceUpdate {
            user_id: user,
            status,
            message,
        };
        self.broadcast(audience.into_iter().collect(), event.clone());
        self.reply(peer, request_id, event);
        self.presence_changed(user);
    }
}
