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
    let mut scan = Scan::default();
    for kv in db.iter() {
        match kv {
            Ok((k, v)) => scan.record(&k, &v),
            Err(e) => {
                scan.c
                    .problem(format!("the database cannot be read in full: {e}"));
                return scan.c;
            }
        }
    }
    scan.cross_check()
}

/// What a scan has seen so far: the counts, and what the records refer to,
/// checked once every key was read.
#[derive(Default)]
struct Scan {
    c: Contents,
    users: HashSet<[u8; 16]>,
    rooms: HashSet<[u8; 16]>,
    /// Per room: the highest seq seen (keys come in seq order).
    last_seq: HashMap<[u8; 16], u64>,
    names: Vec<(Vec<u8>, [u8; 16])>,
    idem: Vec<(Vec<u8>, [u8; 16], u64)>,
    room_refs: Vec<(Vec<u8>, [u8; 16])>,
}

impl Scan {
    /// Checks one record on its own, and notes what it refers to.
    fn record(&mut self, k: &[u8], v: &[u8]) {
        let c = &mut self.c;
        let Some((&prefix, rest)) = k.split_first() else {
            c.problem("an empty key");
            return;
        };
        let bad = |what: &str| format!("{what} under key {}", hex(k));
        match prefix {
            b'#' => match (k, u64_of(v)) {
                (GEN_KEY, Some(g)) => c.generation = g,
                (SCHEMA_KEY, Some(s)) => c.schema = Some(s),
                _ => c.problem(bad("an unknown or broken meta record")),
            },
            b'u' => match serde_json::from_slice::<UserRecord>(v) {
                Ok(u) if id_of(rest) == Some(*u.user.id.as_bytes()) => {
                    self.users.insert(*u.user.id.as_bytes());
                    c.users += 1;
                }
                Ok(_) => c.problem(bad("a user stored under another id")),
                Err(e) => c.problem(bad(&format!("a user that does not decode ({e})"))),
            },
            b'n' => match id_of(v) {
                Some(id) => self.names.push((k.to_vec(), id)),
                None => c.problem(bad("a username index entry without a user id")),
            },
            b'd' => match serde_json::from_slice::<DeviceRecord>(v) {
                Ok(_) => c.devices += 1,
                Err(e) => c.problem(bad(&format!("a device that does not decode ({e})"))),
            },
            b'r' => match serde_json::from_slice::<Room>(v) {
                Ok(r) if id_of(rest) == Some(*r.id.as_bytes()) => {
                    self.rooms.insert(*r.id.as_bytes());
                    c.rooms += 1;
                }
                Ok(_) => c.problem(bad("a room stored under another id")),
                Err(e) => c.problem(bad(&format!("a room that does not decode ({e})"))),
            },
            b'm' => match serde_json::from_slice::<Membership>(v) {
                Ok(m) => {
                    c.memberships += 1;
                    self.room_refs.push((k.to_vec(), *m.room_id.as_bytes()));
                }
                Err(e) => c.problem(bad(&format!("a membership that does not decode ({e})"))),
            },
            b's' => match serde_json::from_slice::<Message>(v) {
                Ok(m) => self.message(k, rest, &m),
                Err(e) => c.problem(bad(&format!("a message that does not decode ({e})"))),
            },
            b'i' => match (rest.get(..16).and_then(id_of), u64_of(v)) {
                (Some(room), Some(seq)) => self.idem.push((k.to_vec(), room, seq)),
                _ => c.problem(bad("a broken idempotency entry")),
            },
            b'x' => match serde_json::from_slice::<P2pSession>(v) {
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

    /// A message: under its own room and seq, and right after the one before.
    fn message(&mut self, k: &[u8], rest: &[u8], m: &Message) {
        let c = &mut self.c;
        c.messages += 1;
        let room = *m.room_id.as_bytes();
        let key_ok = rest.len() == 24 && rest[..16] == room && u64_of(&rest[16..]) == Some(m.seq);
        if !key_ok {
            c.problem(format!(
                "a message stored under another room or seq under key {}",
                hex(k)
            ));
            return;
        }
        let expected = self.last_seq.get(&room).copied().unwrap_or(0) + 1;
        if m.seq != expected {
            c.problem(format!(
                "room {}: message seq {} follows {} (a gap: messages are missing)",
                m.room_id,
                m.seq,
                expected - 1
            ));
        }
        self.last_seq.insert(room, m.seq);
        self.room_refs.push((k.to_vec(), room));
    }

    /// What records refer to must be stored: the users of the username
    /// index, the rooms of memberships and messages, the messages of the
    /// idempotency entries.
    fn cross_check(mut self) -> Contents {
        let c = &mut self.c;
        for (k, id) in self.names {
            if !self.users.contains(&id) {
                c.problem(format!(
                    "username index entry {} names a user that is not stored",
                    hex(&k)
                ));
            }
        }
        for (k, room) in self.room_refs {
            if !self.rooms.contains(&room) {
                c.problem(format!("{} belongs to a room that is not stored", hex(&k)));
            }
        }
        for (k, room, seq) in self.idem {
            if seq == 0 || seq > self.last_seq.get(&room).copied().unwrap_or(0) {
                c.problem(format!(
                    "idempotency entry {} names message {seq}, which is not stored",
                    hex(&k)
                ));
            }
        }
        self.c
    }
}
