//! Message fan-out: per-room `seq` order, and catch-up for peers that
//! reconnected with `since`.
//!
//! **Order.** The service stores messages concurrently, so `seq` 3 can reach
//! the engine before `seq` 2. Clients treat a gap as a hole to fill from
//! history, so delivering out of order would cost every client a needless
//! fetch. A message ahead of a gap therefore waits in the room's reorder
//! buffer until the gap fills or [`EngineConfig::reorder_window`] passes;
//! then it leaves and the gap is skipped (the message behind it may never
//! come, e.g. if storing it failed). A late message (`seq` at or below the
//! last delivered) goes out at once: holding it would not restore order.
//! The first message the engine sees for a room is the baseline.
//!
//! **One frame per room.** A delivery is one [`Output::Send`] to every live
//! subscriber but the origin, plus one reply carrying the request id to the
//! origin, so the driver encodes the frame once whatever the room's size.
//!
//! **Catch-up.** A peer that said `since` is subscribed at once (so nothing
//! stored after its history query is missed) but must see history before
//! live traffic. Live messages for such a room are held per peer, keyed by
//! `seq`, while the service pages history in through
//! [`Engine::backfill`]; on `done` the held messages newer than the last
//! backfilled one follow. Keying by `seq` plus the `last` watermark gives no
//! duplicates and no gaps. The hold is bounded by
//! [`EngineConfig::max_backlog`]: past it the peer is closed with 1013 and
//! resumes with `since`, so the server never buffers without bound.
//!
//! [`EngineConfig::reorder_window`]: super::EngineConfig::reorder_window
//! [`EngineConfig::max_backlog`]: super::EngineConfig::max_backlog
//! [`Output::Send`]: super::Output::Send

use crate::protocol::{Message, OutgoingFrame, PeerId, RoomId, ServerEvent, Timestamp};
use crate::transport::CloseCode;

use super::Engine;
use super::state::{Held, Pending, Timer};

/// The most skipped seqs a room remembers; older ones, if they ever come,
/// are dropped (clients fill such holes from history).
const MAX_SKIPPED: usize = 1024;

/// How many seqs below the first one a room sees may still arrive and be
/// delivered (late, once).
const BASELINE_SLACK: u64 = 64;

/// The seqs just below a baseline, which may still come.
pub(super) fn baseline_slack(baseline: u64) -> std::collections::BTreeSet<u64> {
    (baseline.saturating_sub(BASELINE_SLACK).max(1)..baseline).collect()
}

impl Engine {
    pub(super) fn do_message_created(
        &mut self,
        now: Timestamp,
        message: Message,
        origin: Option<(PeerId, Option<String>)>,
    ) {
        let room = message.room_id;
        self.end_typing(room, message.sender.id);
        let seq = message.seq;
        let order = &mut self.rooms.entry(room).or_default().order;
        match order.last {
            Some(last) if seq > last.saturating_add(1) => {
                let deadline = now.saturating_add(self.config.reorder_window);
                match order.pending.get_mut(&seq) {
                    // A second copy of a held message: one is enough, but
                    // the origin's request must keep its answer.
                    Some(held) => {
                        if held.origin.is_none() {
                            held.origin = origin;
                        }
                    }
                    None => {
                        order.pending.insert(
                            seq,
                            Pending {
                                message,
                                origin,
                                deadline,
                            },
                        );
                        self.arm_reorder(room);
                    }
                }
            }
            Some(last) if seq <= last => {
                if order.skipped.remove(&seq) {
                    self.deliver(now, message, origin);
                } else if let Some((peer, request_id)) = origin {
                    // Delivered already (filled in from the store or another
                    // node first): the room has it; its sender still gets
                    // the one answer to its request.
                    if self.peers.contains_key(&peer) {
                        self.reply(peer, request_id, ServerEvent::MessageCreated { message });
                    }
                }
            }
            Some(_) => {
                order.last = Some(seq);
                self.deliver(now, message, origin);
                self.release_consecutive(now, room);
            }
            None => {
                // The baseline. Messages just before it may still be on
                // their way (stored concurrently, or from another node):
                // they count as skipped, to be delivered once if they come.
                order.last = Some(seq);
                order.skipped = baseline_slack(seq);
                self.deliver(now, message, origin);
                self.release_consecutive(now, room);
            }
        }
        self.forget_if_idle(room);
    }

    /// Delivers the buffered messages that now follow on without a gap.
    fn release_consecutive(&mut self, now: Timestamp, room: RoomId) {
        loop {
            let Some(r) = self.rooms.get_mut(&room) else {
                return;
            };
            let order = &mut r.order;
            let Some(last) = order.last else { break };
            let Some(pending) = order.pending.remove(&last.saturating_add(1)) else {
                break;
            };
            order.last = Some(pending.message.seq);
            self.deliver(now, pending.message, pending.origin);
        }
        self.arm_reorder(room);
    }

    /// Points the room's reorder timer at its earliest held deadline.
    fn arm_reorder(&mut self, room: RoomId) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let order = &mut r.order;
        // The buffer only holds what arrived within one window, so this
        // scan is short.
        let next = order.pending.values().map(|p| p.deadline).min();
        let old = std::mem::replace(&mut order.timer, next);
        self.reschedule(Timer::Reorder(room), old, next);
    }

    /// The reorder window ran out for some held message: it and every held
    /// message before it leave now, skipping the gaps.
    pub(super) fn reorder_due(&mut self, now: Timestamp, room: RoomId, at: Timestamp) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        if r.order.timer != Some(at) {
            return;
        }
        r.order.timer = None;
        let Some(upto) = r
            .order
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(seq, _)| *seq)
            .max()
        else {
            self.arm_reorder(room);
            return;
        };
        let rest = r.order.pending.split_off(&upto.saturating_add(1));
        let due = std::mem::replace(&mut r.order.pending, rest);
        // The seqs jumped over may still come (a slow store, another node):
        // remembered, so that they are delivered then, and only once.
        if let Some(last) = r.order.last {
            let skipped = (last.saturating_add(1)..upto).filter(|seq| !due.contains_key(seq));
            r.order.skipped.extend(skipped.take(MAX_SKIPPED));
            while r.order.skipped.len() > MAX_SKIPPED {
                r.order.skipped.pop_first();
            }
        }
        r.order.last = Some(r.order.last.map_or(upto, |last| last.max(upto)));
        for (_, pending) in due {
            self.deliver(now, pending.message, pending.origin);
        }
        self.release_consecutive(now, room);
        self.forget_if_idle(room);
    }

    /// Sends one message to the room now: one frame for the live
    /// subscribers, the reply to the origin, and a hold for each peer still
    /// catching up.
    fn deliver(
        &mut self,
        now: Timestamp,
        message: Message,
        origin: Option<(PeerId, Option<String>)>,
    ) {
        let room = message.room_id;
        let origin_peer = origin.as_ref().map(|(peer, _)| *peer);
        let (live, catching_up): (Vec<PeerId>, Vec<PeerId>) = match self.rooms.get(&room) {
            Some(r) => (
                r.subscribers
                    .iter()
                    .copied()
                    .filter(|p| Some(*p) != origin_peer && !r.catching_up.contains(p))
                    .collect(),
                r.catching_up
                    .iter()
                    .copied()
                    .filter(|p| Some(*p) != origin_peer)
                    .collect(),
            ),
            None => (Vec::new(), Vec::new()),
        };

        let mut overflowed = Vec::new();
        for peer in catching_up {
            if self.hold(peer, &message, None) {
                overflowed.push(peer);
            }
        }
        if let Some((peer, request_id)) = origin
            && self.peers.contains_key(&peer)
        {
            let held = self
                .peers
                .get(&peer)
                .is_some_and(|p| p.catching_up.contains_key(&room));
            if held {
                // The answer waits with the rest so the origin, too, sees
                // history before live traffic.
                if self.hold(peer, &message, request_id) {
                    overflowed.push(peer);
                }
            } else {
                self.reply(
                    peer,
                    request_id,
                    ServerEvent::MessageCreated {
                        message: message.clone(),
                    },
                );
            }
        }
        self.broadcast(live, ServerEvent::MessageCreated { message });
        for peer in overflowed {
            self.close_peer(
                now,
                peer,
                CloseCode::TryAgainLater,
                "too far behind: reconnect with since",
            );
        }
    }

    /// Holds a live message for a catching-up peer. True if that pushed the
    /// peer past `max_backlog`.
    fn hold(&mut self, peer: PeerId, message: &Message, request_id: Option<String>) -> bool {
        let max = self.config.max_backlog;
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        let Some(cu) = p.catching_up.get_mut(&message.room_id) else {
            return false;
        };
        let held = Held {
            message: message.clone(),
            request_id,
        };
        if cu.queue.insert(message.seq, held).is_none() {
            p.backlog += 1;
        }
        p.backlog > max
    }

    pub(super) fn do_backfill(
        &mut self,
        _now: Timestamp,
        peer: PeerId,
        room: RoomId,
        mut messages: Vec<Message>,
        done: bool,
    ) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if !p.rooms.contains(&room) {
            // Left (or was removed) while history was being fetched.
            return;
        }
        messages.sort_by_key(|m| m.seq);
        let mut frames = Vec::with_capacity(messages.len());
        match p.catching_up.get_mut(&room) {
            Some(cu) => {
                for message in messages {
                    if message.seq <= cu.last {
                        continue; // already delivered: an overlapping page
                    }
                    cu.last = message.seq;
                    // If this very message is held as the peer's own send,
                    // deliver the held copy so the request id is answered.
                    let request_id = match cu.queue.remove(&message.seq) {
                        Some(held) => {
                            p.backlog = p.backlog.saturating_sub(1);
                            held.request_id
                        }
                        None => None,
                    };
                    frames.push(OutgoingFrame::reply(
                        request_id,
                        ServerEvent::MessageCreated { message },
                    ));
                }
            }
            // Not catching up (never was, or already done): history the
            // service chose to send, passed through in order.
            None => frames.extend(
                messages
                    .into_iter()
                    .map(|message| OutgoingFrame::event(ServerEvent::MessageCreated { message })),
            ),
        }
        if done && let Some(cu) = p.catching_up.remove(&room) {
            p.backlog = p.backlog.saturating_sub(cu.queue.len());
            for (seq, held) in cu.queue {
                // Older than what the peer has: skip, unless it answers one
                // of the peer's own requests, which must get its one answer.
                if seq <= cu.last && held.request_id.is_none() {
                    continue;
                }
                frames.push(OutgoingFrame::reply(
                    held.request_id,
                    ServerEvent::MessageCreated {
                        message: held.message,
                    },
                ));
            }
            if let Some(r) = self.rooms.get_mut(&room) {
                r.catching_up.remove(&peer);
            }
        }
        for frame in frames {
            self.send(vec![peer], frame);
        }
    }
}
