//! The hub: the engine plus the live connections its output goes to.
//!
//! This is the one place where the engine's fan-out leaves for sockets.
//! What other nodes must hear of goes out through the service's cluster
//! link (`service::cluster`), not from here.

use std::collections::HashMap;

use crate::engine::{Engine, NodePresence, Output};
use crate::protocol::{DeviceId, OutgoingFrame, PeerId, RoomId, SessionId, Timestamp, UserId};
use crate::transport::{CloseCode, DynConnection, EncodedFrame, SendError};

/// What [`Hub::dispatch`] leaves for the caller, to do outside the lock.
#[derive(Debug, Default)]
pub(crate) struct Dispatched {
    /// P2P sessions that ended: to remove from the store.
    pub(crate) ended: Vec<SessionId>,
    /// Presence changes of this node's users: for the other nodes.
    pub(crate) presence: Vec<NodePresence>,
    /// Sessions with a party on another node that ended here, and why:
    /// for that node.
    pub(crate) ended_elsewhere: Vec<(SessionId, String)>,
    /// Rooms that became live here or stopped being (see
    /// [`Output::RoomInterest`]), in order.
    pub(crate) interest: Vec<(RoomId, bool)>,
}

/// A live connection and whose it is.
#[derive(Debug)]
pub(crate) struct ConnEntry {
    pub(crate) conn: DynConnection,
    pub(crate) user: UserId,
    pub(crate) device: DeviceId,
}

#[derive(Debug)]
pub(crate) struct Hub {
    pub(crate) engine: Engine,
    pub(crate) conns: HashMap<PeerId, ConnEntry>,
}

impl Hub {
    pub(crate) fn new(engine: Engine) -> Self {
        Self {
            engine,
            conns: HashMap::new(),
        }
    }

    /// Sends one frame to one connection, outside the engine (replies that
    /// involve no shared state: errors, pongs to bad input, duplicates).
    pub(crate) fn send_direct(&mut self, now: Timestamp, peer: PeerId, frame: &OutgoingFrame) {
        let text = EncodedFrame::from(frame.to_json());
        let overflowed = self.deliver(peer, text);
        if overflowed {
            self.engine.disconnect(now, peer);
        }
    }

    /// Delivers a frame; `true` if the connection's queue overflowed and it
    /// was told to close.
    fn deliver(&self, peer: PeerId, text: EncodedFrame) -> bool {
        let Some(entry) = self.conns.get(&peer) else {
            return false;
        };
        match entry.conn.send(text) {
            Ok(()) | Err(SendError::Closed) => false,
            Err(SendError::Full) => {
                entry.conn.close(
                    CloseCode::TryAgainLater,
                    "too far behind; reconnect with since",
                );
                true
            }
        }
    }

    /// Drains the engine's output: frames to connections, closes, and the
    /// P2P sessions that ended (returned, for the caller to remove from the
    /// store outside the lock). A slow consumer whose queue overflows is
    /// closed with 1013 and disconnected from the engine at once.
    pub(crate) fn dispatch(&mut self, now: Timestamp) -> Dispatched {
        let mut out = Dispatched::default();
        loop {
            let mut overflowed = Vec::new();
            while let Some(output) = self.engine.poll_output() {
                match output {
                    Output::Send { to, frame } => {
                        // Encoded once, shared by every recipient.
                        let text = EncodedFrame::from(frame.to_json());
                        for peer in to {
                            if self.deliver(peer, text.clone()) {
                                overflowed.push(peer);
                            }
                        }
                    }
                    Output::Close { peer, code, reason } => {
                        if let Some(entry) = self.conns.get(&peer) {
                            entry.conn.close(code, &reason);
                        }
                    }
                    Output::SessionEnded { session_id } => out.ended.push(session_id),
                    Output::Presence(presence) => out.presence.push(presence),
                    Output::RemoteSessionEnded { session_id, reason } => {
                        out.ended_elsewhere.push((session_id, reason));
                    }
                    Output::RoomInterest { room_id, live } => out.interest.push((room_id, live)),
                }
            }
            if overflowed.is_empty() {
                return out;
            }
            for peer in overflowed {
                self.engine.disconnect(now, peer);
            }
        }
    }

    /// The connected peers of a user, on one device if given.
    pub(crate) fn peers_of(&self, user: UserId, device: Option<DeviceId>) -> Vec<PeerId> {
        let mut peers: Vec<PeerId> = self
            .conns
            .iter()
            .filter(|(_, e)| e.user == user && device.is_none_or(|d| e.device == d))
            .map(|(p, _)| *p)
            .collect();
        peers.sort();
        peers
    }
}
