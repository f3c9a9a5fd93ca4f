//! Room subscriptions following membership changes the service has stored.
//!
//! The engine subscribes *connections*, but memberships belong to *users*:
//! joining or leaving on one device takes every device of the user along,
//! so a user never sees a room on the phone that the laptop already left.

use uuid::Uuid;

use crate::protocol::{Member, PeerId, RoomId, ServerEvent, Timestamp, User, UserId};

use super::Engine;
use super::state::Timer;

impl Engine {
    /// The connected peers of `user`, in order.
    fn peers_of(&self, user: UserId) -> Vec<PeerId> {
        self.users
            .get(&user)
            .map(|u| u.peers.iter().copied().collect())
            .unwrap_or_default()
    }

    pub(super) fn do_join_room(
        &mut self,
        _now: Timestamp,
        peer: PeerId,
        room: RoomId,
        members: Vec<Member>,
        request_id: Option<String>,
    ) {
        let Some(user) = self.peers.get(&peer).map(|p| p.info.user.clone()) else {
            return;
        };
        for p in self.peers_of(user.id) {
            self.subscribe(p, room);
        }
        self.presence_changed(user.id);
        let others: Vec<PeerId> = self
            .subscribers(room)
            .into_iter()
            .filter(|p| *p != peer)
            .collect();
        self.broadcast(
            others,
            ServerEvent::RoomJoined {
                room_id: room,
                user: user.clone(),
                peer_id: peer,
                members: None,
            },
        );
        self.reply(
            peer,
            request_id,
            ServerEvent::RoomJoined {
                room_id: room,
                user,
                peer_id: peer,
                members: Some(members),
            },
        );
    }

    pub(super) fn do_member_added(&mut self, _now: Timestamp, room: RoomId, user: &User) {
        let peers = self.peers_of(user.id);
        for p in &peers {
            self.subscribe(*p, room);
        }
        if !peers.is_empty() {
            self.presence_changed(user.id);
        }
        // `room.joined` names a connection; an invited user may have none,
        // and then the nil id says so.
        let peer_id = peers
            .first()
            .copied()
            .unwrap_or_else(|| PeerId::from(Uuid::nil()));
        let to = self.subscribers(room);
        self.broadcast(
            to,
            ServerEvent::RoomJoined {
                room_id: room,
                user: user.clone(),
                peer_id,
                members: None,
            },
        );
    }

    pub(super) fn do_leave_room(
        &mut self,
        _now: Timestamp,
        room: RoomId,
        user: UserId,
        reply: Option<(PeerId, Option<String>)>,
    ) {
        let event = ServerEvent::RoomLeft {
            room_id: room,
            user_id: user,
        };
        let asker = reply.as_ref().map(|(peer, _)| *peer);
        let to: Vec<PeerId> = self
            .subscribers(room)
            .into_iter()
            .filter(|p| Some(*p) != asker)
            .collect();
        self.broadcast(to, event.clone());
        if let Some((peer, request_id)) = reply
            && self.peers.contains_key(&peer)
        {
            self.reply(peer, request_id, event);
        }
        self.end_typing(room, user);
        let peers = self.peers_of(user);
        for p in &peers {
            self.unsubscribe(*p, room);
        }
        if !peers.is_empty() {
            self.presence_changed(user);
        }
    }

    pub(super) fn do_room_deleted(&mut self, now: Timestamp, room: RoomId) {
        let to = self.subscribers(room);
        self.broadcast(to.clone(), ServerEvent::RoomDeleted { room_id: room });
        // Sessions were authorised by the room; with it gone they end too.
        let sessions: Vec<_> = self
            .sessions
            .values()
            .filter(|s| s.room_id == room)
            .map(|s| s.id)
            .collect();
        for id in sessions {
            self.end_session(now, id, "room_deleted");
        }
        let mut users = std::collections::BTreeSet::new();
        for p in to {
            users.extend(self.user_of(p));
            self.unsubscribe(p, room);
        }
        for user in users {
            self.presence_changed(user);
        }
        // Everything else about the room goes: typing (nobody is left to
        // tell), held messages, the ordering baseline.
        if let Some(r) = self.rooms.remove(&room) {
            for (user, at) in r.typing {
                self.reschedule(Timer::Typing(room, user), Some(at), None);
            }
            self.reschedule(Timer::Reorder(room), r.order.timer, None);
        }
    }
}
