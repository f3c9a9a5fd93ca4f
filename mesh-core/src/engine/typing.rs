//! Typing indicators: relayed to the *other* users in the room and switched
//! off by the engine when not renewed.
//!
//! Clients are unreliable at sending `typing: false` (tabs close, phones
//! sleep), so a `true` only lives for [`EngineConfig::typing_ttl`] unless
//! renewed, and the engine emits the `false` itself. A message from the user
//! in the room, or their last connection going away, ends it too. The
//! sender's own devices never get the relay: they know they are typing.
//!
//! [`EngineConfig::typing_ttl`]: super::EngineConfig::typing_ttl

use crate::error::Error;
use crate::protocol::{PeerId, RoomId, ServerEvent, Timestamp, UserId};

use super::Engine;
use super::state::Timer;

impl Engine {
    pub(super) fn do_typing(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        room: RoomId,
        typing: bool,
    ) -> Result<(), Error> {
        let Some(p) = self.peers.get(&peer) else {
            return Err(Error::NotFound("peer is not connected".into()));
        };
        if !p.rooms.contains(&room) {
            return Err(Error::Forbidden(
                "you can only type in rooms you are a member of".into(),
            ));
        }
        let user = p.info.user.id;
        self.touch(now, peer);
        self.set_typing(now, room, user, typing);
        Ok(())
    }

    /// Turns `user`'s indicator in `room` on (until
    /// [`EngineConfig::typing_ttl`](super::EngineConfig::typing_ttl) passes
    /// without renewal) or off, telling the room's other users.
    pub(super) fn set_typing(&mut self, now: Timestamp, room: RoomId, user: UserId, typing: bool) {
        if !typing {
            self.end_typing(room, user);
            return;
        }
        let expires = now.saturating_add(self.config.typing_ttl);
        let old = self
            .rooms
            .get_mut(&room)
            .and_then(|r| r.typing.insert(user, expires));
        self.reschedule(Timer::Typing(room, user), old, Some(expires));
        self.relay_typing(room, user, true);
    }

    /// Sends `chat.typing` to the room's connections of users other than
    /// `user`.
    pub(super) fn relay_typing(&mut self, room: RoomId, user: UserId, typing: bool) {
        let Some(r) = self.rooms.get(&room) else {
            return;
        };
        let to: Vec<PeerId> = r
            .subscribers
            .iter()
            .copied()
            .filter(|p| self.user_of(*p).is_some_and(|u| u != user))
            .collect();
        self.broadcast(
            to,
            ServerEvent::Typing {
                room_id: room,
                user_id: user,
                typing,
            },
        );
    }

    /// Ends `user`'s indicator in `room`, telling the others only if it was on.
    pub(super) fn end_typing(&mut self, room: RoomId, user: UserId) {
        let old = self
            .rooms
            .get_mut(&room)
            .and_then(|r| r.typing.remove(&user));
        if let Some(old) = old {
            self.reschedule(Timer::Typing(room, user), Some(old), None);
            self.relay_typing(room, user, false);
        }
    }

    /// Ends every indicator of `user` (their last connection is going).
    pub(super) fn end_all_typing(&mut self, user: UserId) {
        let rooms: Vec<RoomId> = self
            .users
            .get(&user)
            .into_iter()
            .flat_map(|u| u.peers.iter())
            .filter_map(|p| self.peers.get(p))
            .flat_map(|p| p.rooms.iter().copied())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for room in rooms {
            self.end_typing(room, user);
        }
    }

    pub(super) fn typing_expired(
        &mut self,
        _now: Timestamp,
        room: RoomId,
        user: UserId,
        at: Timestamp,
    ) {
        let due = self
            .rooms
            .get(&room)
            .and_then(|r| r.typing.get(&user))
            .is_some_and(|expires| *expires == at);
        if due {
            if let Some(r) = self.rooms.get_mut(&room) {
                r.typing.remove(&user);
            }
            self.relay_typing(room, user, false);
            self.forget_if_idle(room);
        }
    }
}
