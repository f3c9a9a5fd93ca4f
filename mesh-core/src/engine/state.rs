//! The engine's private bookkeeping: who is connected, who is subscribed
//! where, and the timer set every deadline lives in.
//!
//! Lookups go through `HashMap`s, but every set the engine iterates to decide
//! *who gets a frame* is a `BTreeSet`, so the order of `Output`s (and of the
//! peers inside one `Output::Send`) is a pure function of the inputs. That is
//! what makes the multi-peer tests reproducible.
//!
//! Timers are kept *exactly* rather than lazily invalidated: each owner
//! remembers its current deadline, and moving a deadline removes the old
//! `(Timestamp, Timer)` entry before inserting the new one. A busy peer
//! refreshing its heartbeat on every frame therefore does not grow the set,
//! and [`Engine::poll_timeout`](super::Engine::poll_timeout) never reports a
//! stale deadline. Every operation is `O(log n)`; nothing scans all peers.

use std::collections::{BTreeMap, BTreeSet};

use crate::protocol::{
    Message, OutgoingFrame, PeerId, Presence, RoomId, ServerEvent, SessionId, Timestamp, User,
    UserId,
};

use super::{Engine, Output, PeerInfo};

/// What a deadline in the timer set is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Timer {
    /// The peer must have been heard from by then.
    Heartbeat(PeerId),
    /// The user's typing indicator in the room turns itself off.
    Typing(RoomId, UserId),
    /// The P2P session expires.
    Session(SessionId),
    /// The earliest message held in the room's reorder buffer is due.
    Reorder(RoomId),
}

/// A live message held for a peer that is still catching up with `since`,
/// with the request id to answer when the peer is the message's origin.
#[derive(Clone, Debug)]
pub(super) struct Held {
    pub(super) message: Message,
    pub(super) request_id: Option<String>,
}

/// A room a peer is catching up in.
#[derive(Debug, Default)]
pub(super) struct CatchUp {
    /// The newest `seq` the peer has (its `since`, then each backfilled one).
    pub(super) last: u64,
    /// Live messages that arrived meanwhile, by `seq` (which also dedupes).
    pub(super) queue: BTreeMap<u64, Held>,
}

/// One connection.
#[derive(Debug)]
pub(super) struct PeerState {
    pub(super) info: PeerInfo,
    pub(super) rooms: BTreeSet<RoomId>,
    /// When the peer counts as gone unless heard from again.
    pub(super) heartbeat_deadline: Timestamp,
    pub(super) catching_up: BTreeMap<RoomId, CatchUp>,
    /// Messages held over all `catching_up` rooms, against `max_backlog`.
    pub(super) backlog: usize,
    /// Live P2P sessions this peer is a party to.
    pub(super) sessions: BTreeSet<SessionId>,
}

/// A user with at least one connection.
#[derive(Debug)]
pub(super) struct UserState {
    pub(super) user: User,
    pub(super) peers: BTreeSet<PeerId>,
    /// The status the user chose; `Offline` means invisible.
    pub(super) chosen: Presence,
    pub(super) message: Option<String>,
}

impl UserState {
    /// The status others see.
    pub(super) fn visible(&self) -> Presence {
        if self.peers.is_empty() {
            Presence::Offline
        } else {
            self.chosen
        }
    }
}

/// A message waiting in a room's reorder buffer for an earlier `seq`.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) message: Message,
    pub(super) origin: Option<(PeerId, Option<String>)>,
    pub(super) deadline: Timestamp,
}

/// Per-room delivery order.
#[derive(Debug, Default)]
pub(super) struct Order {
    /// The newest `seq` delivered; `None` until the first message, which is
    /// the baseline (the engine cannot know what came before it).
    pub(super) last: Option<u64>,
    /// Seqs at or below `last` that were skipped (the reorder window ran
    /// out before they came): the only ones below `last` still to deliver.
    /// Anything else at or below `last` was delivered already, and a second
    /// copy (from another node, or from the store filling a gap) is dropped.
    pub(super) skipped: BTreeSet<u64>,
    pub(super) pending: BTreeMap<u64, Pending>,
    /// The deadline currently in the timer set for this room, if any.
    pub(super) timer: Option<Timestamp>,
}

/// A room someone is subscribed to, or that has delivery state.
#[derive(Debug, Default)]
pub(super) struct RoomState {
    pub(super) subscribers: BTreeSet<PeerId>,
    /// The subset of `subscribers` still catching up here.
    pub(super) catching_up: BTreeSet<PeerId>,
    /// Users typing here, with the time their indicator expires.
    pub(super) typing: BTreeMap<UserId, Timestamp>,
    pub(super) order: Order,
}

impl Engine {
    /// Moves `timer` from `old` to `new` in the timer set.
    pub(super) fn reschedule(
        &mut self,
        timer: Timer,
        old: Option<Timestamp>,
        new: Option<Timestamp>,
    ) {
        if old == new {
            return;
        }
        if let Some(old) = old {
            self.timers.remove(&(old, timer));
        }
        if let Some(new) = new {
            self.timers.insert((new, timer));
        }
    }

    /// Queues `frame` for `to`, unless nobody is to get it.
    pub(super) fn send(&mut self, to: Vec<PeerId>, frame: OutgoingFrame) {
        if !to.is_empty() {
            self.outputs.push_back(Output::Send { to, frame });
        }
    }

    /// Queues a broadcast (no request id) of `event` to `to`.
    pub(super) fn broadcast(&mut self, to: Vec<PeerId>, event: ServerEvent) {
        self.send(to, OutgoingFrame::event(event));
    }

    /// Queues `event` to one peer, answering `request_id`.
    pub(super) fn reply(&mut self, peer: PeerId, request_id: Option<String>, event: ServerEvent) {
        self.send(vec![peer], OutgoingFrame::reply(request_id, event));
    }

    /// Every peer subscribed to a room any of `user`'s connections is in:
    /// who sees the user's presence. The user's own connections are included.
    pub(super) fn audience_of(&self, user: UserId) -> BTreeSet<PeerId> {
        let mut audience = BTreeSet::new();
        let Some(state) = self.users.get(&user) else {
            return audience;
        };
        audience.extend(state.peers.iter().copied());
        let mut rooms = BTreeSet::new();
        for peer in &state.peers {
            if let Some(p) = self.peers.get(peer) {
                rooms.extend(p.rooms.iter().copied());
            }
        }
        for room in rooms {
            if let Some(r) = self.rooms.get(&room) {
                audience.extend(r.subscribers.iter().copied());
            }
        }
        audience
    }

    /// The peers subscribed to `room`, in order.
    pub(super) fn subscribers(&self, room: RoomId) -> Vec<PeerId> {
        self.rooms
            .get(&room)
            .map(|r| r.subscribers.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The user a connected peer belongs to.
    pub(super) fn user_of(&self, peer: PeerId) -> Option<UserId> {
        self.peers.get(&peer).map(|p| p.info.user.id)
    }

    /// Subscribes `peer` to `room` (idempotent). The room's first
    /// subscriber makes it live here ([`Output::RoomInterest`]).
    pub(super) fn subscribe(&mut self, peer: PeerId, room: RoomId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.rooms.insert(room);
            let subscribers = &mut self.rooms.entry(room).or_default().subscribers;
            let first = subscribers.is_empty();
            if subscribers.insert(peer) && first {
                self.outputs.push_back(Output::RoomInterest {
                    room_id: room,
                    live: true,
                });
            }
        }
    }

    /// Unsubscribes `peer` from `room`, dropping any catch-up state there.
    pub(super) fn unsubscribe(&mut self, peer: PeerId, room: RoomId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.rooms.remove(&room);
            if let Some(cu) = p.catching_up.remove(&room) {
                p.backlog = p.backlog.saturating_sub(cu.queue.len());
            }
        }
        if let Some(r) = self.rooms.get_mut(&room) {
            r.catching_up.remove(&peer);
            if r.subscribers.remove(&peer) && r.subscribers.is_empty() {
                self.outputs.push_back(Output::RoomInterest {
                    room_id: room,
                    live: false,
                });
            }
        }
        self.forget_if_idle(room);
    }

    /// Drops a room nobody listens to and nothing waits in: it costs memory
    /// for no one. Its ordering baseline goes too; the next message after
    /// someone subscribes again becomes the new one.
    pub(super) fn forget_if_idle(&mut self, room: RoomId) {
        if self.rooms.get(&room).is_some_and(|r| {
            r.subscribers.is_empty() && r.typing.is_empty() && r.order.pending.is_empty()
        }) {
            self.rooms.remove(&room);
        }
    }
}
