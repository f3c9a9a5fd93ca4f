//! A full scan of a sled database: every record decodes, every index entry
//! points at a record, and each room's messages are numbered 1..N with no
//! gap. Run on a copy before a database that was not closed cleanly is
//! opened, and by [`check`](super::check) (`mesh-server check`).
//!
//! It reads every key once, in key order, and keeps only the ids of users
//! and rooms in memory, so it costs one pass over the database.

use std::collections::{HashMap, HashSet};
use std::fmt;

use sled::Db;

use super::{GEN_KEY, SCHEMA_KEY};
use crate::protocol::{Message, P2pSession, Room};
use crate::storage::{DeviceRecord, Membership, UserRecord};

/// Problems listed in full; past this many only the count grows.
const MAX_LISTED: usize = 20;

/// What a scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Contents {
    /// The generation stored in the database (0 if none).
    pub generation: u64,
    /// The schema version stored in the database (`None`: written by a
    /// mesh from before schema versions).
    pub schema: Option<u64>,
    pub users: u64,
    pub devices: u64,
    pub rooms: u64,
    pub memberships: u64,
    pub messages: u64,
    pub sessions: u64,
    /// What is wrong, at most 20 entries (see `problem_count`).
    pub problems: Vec<String>,
    /// How many problems there are in all.
    pub problem_count: u64,
}

impl Contents {
    fn problem(&mut self, p: impl fmt::Display) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED {
            self.problems.push(p.to_string());
        }
    }
}

fn u64_of(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

fn id_of(bytes: &[u8]) -> Option<[u8; 16]> {
    <[u8; 16]>::try_from(bytes).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Scans every key of `db`. A read error of sled ends the scan and is
/// reported as a problem: the database cannot be read in full.
pub(super) fn scan(db: &Db) -> Contents {
    let mut c = Contents::default();
    let mut users: HashSet<[u8; 16]> = HashSet::new();
    let mut rooms: HashSet<[u8; 16]> = HashSet::new();
    // Per room: the highest seq seen (keys come in seq order).
    let mut last_seq: HashMap<[u8; 16], u64> = HashMap::new();
    let mut names: Vec<(Vec<u8>, [u8; 16])> = Vec::new();
    let mut idem: Vec<(Vec<u8>, [u8; 16], u64)> = Vec::new();
    let mut room_refs: Vec<(Vec<u8>, [u8; 16])> = Vec::new();
    for kv in db.iter() {
        let (k, v) = match kv {
            Ok(kv) => kv,
            Err(e) => {
                c.problem(format!("the database cannot be read in full: {e}"));
                return c;
            }
        };
        let Some((&prefix, rest)) = k.split_first() else {
            c.problem("an empty key");
            continue;
        };
        let bad = |what: &str| format!("{what} under key {}", hex(&k));
        match prefix {
            b'#' => match (&k[..], u64_of(&v)) {
                (GEN_KEY, Some(g)) => c.generation = g,
                (SCHEMA_KEY, Some(s)) => c.schema = Some(s),
                _ => c.problem(bad("an unknown or broken meta record")),
            },
            b'u' => match serde_json::from_slice::<UserRecord>(&v) {
                Ok(u) if id_of(rest) == Some(*u.user.id.as_bytes()) => {
                    users.insert(*u.user.id.as_bytes());
                    c.users += 1;
                }
                Ok(_) => c.problem(bad("a user stored under another id")),
                Err(e) => c.problem(bad(&format!("a user that does not decode ({e})"))),
            },
            b'n' => match id_of(&v) {
                Some(id) => names.push((k.to_vec(), id)),
                None => c.problem(bad("a username index entry without a user id")),
            },
            b'd' => match serde_json::from_slice::<DeviceRecord>(&v) {
                Ok(_) => c.devices += 1,
                Err(e) => c.problem(bad(&format!("a device that does not decode ({e})"))),
            },
            b'r' => match serde_json::from_slice::<Room>(&v) {
                Ok(r) if id_of(rest) == Some(*r.id.as_bytes()) => {
                    rooms.insert(*r.id.as_bytes());
                    c.rooms += 1;
                }
                Ok(_) => c.problem(bad("a room stored under another id")),
                Err(e) => c.problem(bad(&format!("a room that does not decode ({e})"))),
            },
            b'm' => match serde_json::from_slice::<Membership>(&v) {
                Ok(m) => {
                    c.memberships += 1;
                    room_refs.push((k.to_vec(), *m.room_id.as_bytes()));
                }
                Err(e) => c.problem(bad(&format!("a membership that does not decode ({e})"))),
            },
            b's' => match serde_json::from_slice::<Message>(&v) {
                Ok(m) => {
                    c.messages += 1;
                    let room = *m.room_id.as_bytes();
                    let key_ok = rest.len() == 24
                        && rest[..16] == room
                        && u64_of(&rest[16..]) == Some(m.seq);
                    if !key_ok {
                        c.problem(bad("a message stored under another room or seq"));
                        continue;
                    }
                    let expected = last_seq.get(&room).copied().unwrap_or(0) + 1;
                    if m.seq != expected {
                        c.problem(format!(
                            "room {}: message seq {} follows {} (a gap: messages are missing)",
                            m.room_id,
                            m.seq,
                            expected - 1
                        ));
                    }
                    last_seq.insert(room, m.seq);
                    room_refs.push((k.to_vec(), room));
                }
                Err(e) => c.problem(bad(&format!("a message that does not decode ({e})"))),
            },
            b'i' => match (rest.get(..16).and_then(id_of), u64_of(&v)) {
                (Some(room), Some(seq)) => idem.push((k.to_vec(), room, seq)),
                _ => c.problem(bad("a broken idempotency entry")),
            },
            b'x' => match serde_json::from_slice::<P2pSession>(&v) {
                Ok(_) => c.sessions += 1,
                Err(e) => c.problem(bad(&format!("a P2P session that does not decode ({e})"))),
            },
            b'e' | b'j' | b'y' | b'z' | b'p' => {
                // Index keys: two ids (or a time and an id), empty value.
                let expected = if prefix == b'p' { 24 } else { 32 };
                if rest.len() != expected || !v.is_empty() {
                    c.problem(bad("a broken index entry"));
                }
            }
            _ => c.problem(bad("a record of an unknown kind")),
        }
    }
    for (k, id) in names {
        if !users.contains(&id) {
            c.problem(format!(
                "username index entry {} names a user that is not stored",
                hex(&k)
            ));
        }
    }
    for (k, room) in room_refs {
        if !rooms.contains(&room) {
            c.problem(format!("{} belongs to a room that is not stored", hex(&k)));
        }
    }
    for (k, room, seq) in idem {
        if seq == 0 || seq > last_seq.get(&room).copied().unwrap_or(0) {
            c.problem(format!(
                "idempotency entry {} names message {seq}, which is not stored",
                hex(&k)
            ));
        }
    }
    c
}
