//! Presence on the other nodes (sans-IO): who is online where, as their
//! deltas and heartbeats tell, and which nodes have gone quiet.
//!
//! Every change comes back as a [`Change`]: a user whose presence across
//! the other nodes is now different, with the rooms to tell (those the user
//! was in before and is in now).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::NodeId;
use crate::engine::NodePresence;
use crate::protocol::{P2pInfo, PeerId, Presence, RoomId, Timestamp, UserId};

/// A user's presence across the other nodes changed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Change {
    pub(crate) user: UserId,
    /// `None`: online on no other node.
    pub(crate) presence: Option<(Presence, Option<String>)>,
    pub(crate) rooms: Vec<RoomId>,
}

/// A peer connected to another node (see [`Directory::peer`]).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RemotePeer {
    pub(crate) user: UserId,
    pub(crate) in_room: bool,
    pub(crate) p2p: P2pInfo,
}

#[derive(Debug, Default)]
struct NodeEntry {
    heard: Option<Timestamp>,
    users: BTreeMap<UserId, NodePresence>,
}

/// See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct Directory {
    nodes: BTreeMap<NodeId, NodeEntry>,
}

impl Directory {
    /// A user's presence on `node` changed.
    pub(crate) fn update(
        &mut self,
        node: &NodeId,
        now: Timestamp,
        presence: NodePresence,
    ) -> Vec<Change> {
        let user = presence.user_id;
        let before = self.snapshot(&[user]);
        let entry = self.nodes.entry(node.clone()).or_default();
        entry.heard = Some(now);
        if presence.status == Presence::Offline && presence.rooms.is_empty() {
            entry.users.remove(&user);
        } else {
            entry.users.insert(user, presence);
        }
        self.changes(before)
    }

    /// All of `node`'s presence: whoever it no longer lists is gone from it.
    pub(crate) fn heartbeat(
        &mut self,
        node: &NodeId,
        now: Timestamp,
        users: Vec<NodePresence>,
    ) -> Vec<Change> {
        let mut touched: BTreeSet<UserId> = users.iter().map(|p| p.user_id).collect();
        if let Some(entry) = self.nodes.get(node) {
            touched.extend(entry.users.keys().copied());
        }
        let touched: Vec<UserId> = touched.into_iter().collect();
        let before = self.snapshot(&touched);
        let entry = self.nodes.entry(node.clone()).or_default();
        entry.heard = Some(now);
        entry.users = users.into_iter().map(|p| (p.user_id, p)).collect();
        self.changes(before)
    }

    /// `node` is gone (it said so, or went quiet).
    pub(crate) fn remove(&mut self, node: &NodeId) -> Vec<Change> {
        let Some(entry) = self.nodes.get(node) else {
            return Vec::new();
        };
        let touched: Vec<UserId> = entry.users.keys().copied().collect();
        let before = self.snapshot(&touched);
        self.nodes.remove(node);
        self.changes(before)
    }

    /// Removes the nodes not heard from for `timeout`.
    pub(crate) fn expire(&mut self, now: Timestamp, timeout: Duration) -> Vec<Change> {
        let quiet: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, e)| e.heard.is_some_and(|heard| now.since(heard) >= timeout))
            .map(|(node, _)| node.clone())
            .collect();
        let mut changes = Vec::new();
        for node in quiet {
            tracing::warn!(%node, "node not heard from for {timeout:?}: its users are gone");
            changes.extend(self.remove(&node));
        }
        changes
    }

    /// `peer`, if another node has it connected: its user, whether that
    /// user is in `room` there, and what the peer announced for P2P.
    pub(crate) fn peer(&self, peer: PeerId, room: RoomId) -> Option<RemotePeer> {
        self.nodes
            .values()
            .flat_map(|e| e.users.values())
            .find(|p| p.peers.contains(&peer))
            .map(|p| RemotePeer {
                user: p.user_id,
                in_room: p.rooms.contains(&room),
                p2p: p.p2p.get(&peer).cloned().unwrap_or_default(),
            })
    }

    /// Whether another node has `peer` connected.
    pub(crate) fn has_peer(&self, peer: PeerId) -> bool {
        self.nodes
            .values()
            .flat_map(|e| e.users.values())
            .any(|p| p.peers.contains(&peer))
    }

    /// The nodes currently known.
    pub(crate) fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Their names.
    pub(crate) fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().cloned().collect()
    }

    /// The user's presence across the other nodes: the first non-offline
    /// one (by node id, so every node agrees), and the rooms of all.
    fn aggregate(&self, user: UserId) -> (Option<(Presence, Option<String>)>, BTreeSet<RoomId>) {
        let mut presence = None;
        let mut rooms = BTreeSet::new();
        for entry in self.nodes.values() {
            if let Some(p) = entry.users.get(&user) {
                rooms.extend(p.rooms.iter().copied());
                if presence.is_none() && p.status != Presence::Offline {
                    presence = Some((p.status, p.message.clone()));
                }
            }
        }
        (presence, rooms)
    }

    /// Each user's presence across the other nodes now, for [`Self::changes`].
    fn snapshot(&self, users: &[UserId]) -> Vec<Change> {
        users
            .iter()
            .map(|user| {
                let (presence, rooms) = self.aggregate(*user);
                Change {
                    user: *user,
                    presence,
                    rooms: rooms.into_iter().collect(),
                }
            })
            .collect()
    }

    /// Those of `before` whose presence is different now, with the rooms of
    /// before and now.
    fn changes(&self, before: Vec<Change>) -> Vec<Change> {
        before
            .into_iter()
            .filter_map(|old| {
                let (presence, now_rooms) = self.aggregate(old.user);
                if presence == old.presence {
                    return None;
                }
                let mut rooms: BTreeSet<RoomId> = old.rooms.into_iter().collect();
                rooms.extend(now_rooms);
                Some(Change {
                    user: old.user,
                    presence,
                    rooms: rooms.into_iter().collect(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_unix_millis(s * 1000)
    }

    fn online(user: UserId, room: RoomId) -> NodePresence {
        NodePresence {
            user_id: user,
            status: Presence::Online,
            message: None,
            rooms: vec![room],
            peers: Vec::new(),
            p2p: BTreeMap::new(),
        }
    }

    #[test]
    fn peers_are_found_with_their_user_room_and_p2p_details() {
        let a = NodeId::new("a").expect("id");
        let (user, room, peer) = (UserId::new(), RoomId::new(), PeerId::new());
        let info = P2pInfo {
            cert_fingerprint: Some("ab".repeat(32)),
            addrs: vec!["192.0.2.1:4000".into()],
        };
        let mut d = Directory::default();
        assert!(d.peer(peer, room).is_none());
        let mut p = online(user, room);
        p.peers = vec![peer];
        p.p2p.insert(peer, info.clone());
        d.update(&a, at(0), p);
        let found = d.peer(peer, room).expect("found");
        assert_eq!((found.user, found.in_room, found.p2p), (user, true, info));
        assert!(!d.peer(peer, RoomId::new()).expect("found").in_room);
        assert!(d.has_peer(peer));
        d.remove(&a);
        assert!(!d.has_peer(peer));
    }

    #[test]
    fn a_user_on_two_nodes_is_online_until_both_are_gone() {
        let (a, b) = (NodeId::new("a").expect("id"), NodeId::new("b").expect("id"));
        let (user, room) = (UserId::new(), RoomId::new());
        let mut d = Directory::default();
        let c = d.update(&a, at(0), online(user, room));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].presence, Some((Presence::Online, None)));
        assert!(d.update(&b, at(0), online(user, room)).is_empty());
        // Gone from a: still online on b.
        let gone = NodePresence {
            status: Presence::Offline,
            rooms: Vec::new(),
            ..online(user, room)
        };
        assert!(d.update(&a, at(1), gone.clone()).is_empty());
        // b goes quiet: offline, told to the room.
        assert!(d.expire(at(10), Duration::from_secs(15)).is_empty());
        let c = d.expire(at(16), Duration::from_secs(15));
        assert_eq!(
            c,
            vec![Change {
                user,
                presence: None,
                rooms: vec![room]
            }]
        );
        // Node a, quiet as long, is gone too.
        assert_eq!(d.nodes(), 0);
    }

    #[test]
    fn a_heartbeat_replaces_what_a_node_said_and_a_leaving_node_takes_its_users() {
        let a = NodeId::new("a").expect("id");
        let (u1, u2, room) = (UserId::new(), UserId::new(), RoomId::new());
        let mut d = Directory::default();
        let c = d.heartbeat(&a, at(0), vec![online(u1, room), online(u2, room)]);
        assert_eq!(c.len(), 2);
        let c = d.heartbeat(&a, at(5), vec![online(u2, room)]);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].user, c[0].presence.clone()), (u1, None));
        let c = d.remove(&a);
        assert_eq!((c[0].user, c[0].presence.clone()), (u2, None));
        assert_eq!(d.nodes(), 0);
    }
}
