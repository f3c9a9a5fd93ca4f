//! [`SledStore`]: the embedded on-disk backend (sled 0.34), with group commit.
//!
//! # Layout
//!
//! Everything lives in sled's default tree, split into keyspaces by a one-byte
//! prefix. Keeping one tree means every multi-record change is a single
//! [`sled::Batch`], which sled applies atomically (readers never see half of
//! it, and recovery replays all of it or none). Ids are their 16 big-endian
//! UUID bytes and numbers are big-endian, so keys are fixed-width and a range
//! scan yields them in order. Values are JSON (`serde_json`): simple to debug
//! with any sled dump; anything that fails to decode is reported as
//! [`StoreError::Corrupt`], never a panic.
//!
//! | prefix | key after the prefix              | value                 |
//! |--------|-----------------------------------|-----------------------|
//! | `u`    | user id                           | [`UserRecord`]        |
//! | `n`    | username (UTF-8)                  | user id               |
//! | `d`    | device id                         | [`DeviceRecord`]      |
//! | `e`    | user id ++ device id              | (empty): devices_of   |
//! | `r`    | room id                           | [`Room`]              |
//! | `p`    | created_at ++ room id             | (empty): public rooms |
//! | `m`    | room id ++ user id                | [`Membership`]        |
//! | `j`    | user id ++ room id                | (empty): rooms_of     |
//! | `s`    | room id ++ seq (u64)              | [`Message`]           |
//! | `i`    | room id ++ sender id ++ client_id | seq (u64)             |
//! | `x`    | session id                        | [`P2pSession`]        |
//! | `y`    | user id ++ session id             | (empty): sessions_of  |
//! | `z`    | room id ++ session id             | (empty): room cascade |
//!
//! Timestamps in keys are milliseconds with the sign bit flipped, so
//! big-endian byte order is time order. The idempotency index is keyed room
//! first (not sender first) so that [`Store::delete_room`] clears it with one
//! prefix scan; lookups always know all three parts anyway.
//!
//! A room's `member_count` is not stored: [`Store::room`] counts the keys
//! under `m ++ room`. A stored counter would be O(1) to read but would turn
//! every join and leave into a read-modify-write of the room record and could
//! drift from the memberships it counts; counting keys is always right and
//! costs one short key-only scan per room read.
//!
//! A room's `seq` is not stored either: the next one is the last key under
//! `s ++ room` plus one, read under the write lock. It therefore advances
//! only when a message is actually written, and can have no gaps.
//!
//! # Writes and durability
//!
//! Writes are serialised by one `std::sync::Mutex` (held for the few
//! microseconds of reads and the batch apply, never across an `.await`), so
//! check-then-write sequences (username taken? next seq? duplicate
//! client_id?) are race-free. Reads take no lock.
//!
//! Every write method ([`Store::create_user`], [`Store::put_device`],
//! [`Store::create_room`], [`Store::update_room`], [`Store::delete_room`],
//! the membership methods, [`Store::append_message`], [`Store::put_session`],
//! [`Store::delete_session`]) returns only after a `Db::flush` that started
//! after its batch was applied has succeeded: everything it wrote, and
//! everything it read to decide its answer (e.g. the earlier message of an
//! [`AppendOutcome::Duplicate`], or the user that made a username taken), is
//! on disk. This holds also when the method writes nothing (`false`,
//! `Duplicate`), since the state it answered from may be another writer's
//! not-yet-flushed batch. Read methods do not wait: they may see data whose
//! writer has not been acknowledged yet.
//!
//! Flushes are shared (group commit): a dedicated `std::thread` (the
//! *flusher*) sleeps until a writer registers, takes every registered writer,
//! calls `Db::flush` once, and completes each of them through a
//! `futures_channel::oneshot`. Writers that register while a flush runs wait
//! for the next one. No async runtime is involved, so the store works under
//! any executor. sled's own periodic flush is turned off
//! (`flush_every_ms(None)`): the flusher is the only thing that makes data
//! durable, which keeps the guarantee above easy to reason about and to test.
//! Dropping the store stops the flusher after it has served every registered
//! writer, then closes the database.
//!
//! If a caller drops a write future while it waits for the flush, the write
//! has still happened and will reach disk with the next flush; only the
//! acknowledgement is lost.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use async_trait::async_trait;
use futures_channel::oneshot;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::{Batch, Db, IVec};

use super::{
    AppendOutcome, DeviceRecord, Membership, NewMessage, Page, PageQuery, RoomUpdate, Store,
    StoreError, UserRecord, apply_update, clamp_limit, device_order, member_order, room_order,
    session_order,
};
use crate::protocol::{
    DeviceId, Message, P2pSession, Role, Room, RoomId, SessionId, Timestamp, UserId, Visibility,
};

/// The error of [`SledStore`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SledStoreError {
    /// sled failed (I/O, or its own corruption detection).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// Starting the flusher thread failed.
    #[error("starting the flusher thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// A record could not be encoded.
    #[error("encoding a record: {0}")]
    Encode(#[source] serde_json::Error),
    /// A stored record or key could not be decoded.
    #[error("corrupt record under key {key}: {reason}")]
    Corrupt {
        /// The key, escaped for printing.
        key: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The flusher thread went away before confirming a write.
    #[error("the flusher thread stopped before the write was flushed")]
    FlusherGone,
}

impl From<SledStoreError> for StoreError {
    fn from(e: SledStoreError) -> Self {
        match e {
            SledStoreError::Corrupt { .. } => StoreError::Corrupt(e.to_string()),
            other => StoreError::backend(other),
        }
    }
}

/// How long [`SledStore::open`] waits for a lock left by a store of the
/// same process that was just dropped.
pub const OPEN_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

type Result<T, E = SledStoreError> = std::result::Result<T, E>;

/// A [`Store`] on disk, in a sled database. See the [module docs](self).
#[derive(Debug)]
pub struct SledStore {
    db: Db,
    /// Serialises writers; see the module docs.
    write_lock: Mutex<()>,
    flusher: Flusher,
}

impl SledStore {
    /// Opens (or creates) the store in the directory `path`.
    ///
    /// sled holds an exclusive lock on its files, and after a [`SledStore`]
    /// is dropped sled's background I/O threads may keep them open (and so
    /// locked) for a moment. Opening the same path again right away, as a
    /// restart in the same process does, would then fail spuriously; so
    /// while the lock is taken, this retries for up to [`OPEN_LOCK_WAIT`]
    /// before giving up. (sled's own test builds block on the lock for the
    /// same reason.) Another process holding the store still gets an error.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let config = sled::Config::new().path(path);
        let started = std::time::Instant::now();
        loop {
            match Self::with_config(config.clone()) {
                Err(SledStoreError::Sled(sled::Error::Io(e)))
                    if e.to_string().contains("could not acquire lock")
                        && started.elapsed() < OPEN_LOCK_WAIT =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                other => return other,
            }
        }
    }

    /// A store in a temporary directory, removed when the store is dropped.
    /// For tests.
    pub fn temporary() -> Result<Self> {
        Self::with_config(sled::Config::new().temporary(true))
    }

    fn with_config(config: sled::Config) -> Result<Self> {
        // The flusher makes writes durable; sled's timer would only blur
        // which write is on disk when (see the module docs).
        let db = config.flush_every_ms(None).open()?;
        let flusher = Flusher::start(db.clone())?;
        Ok(Self {
            db,
            write_lock: Mutex::new(()),
            flusher,
        })
    }

    /// How many flushes the flusher has run (for tests of group commit).
    #[cfg(test)]
    fn flush_count(&self) -> u64 {
        self.flusher.shared.lock().flushes
    }

    fn lock_writes(&self) -> MutexGuard<'_, ()> {
        // The guarded state is sled's, which a panicking writer cannot leave
        // half-applied (batches are atomic): poisoning carries no meaning.
        self.write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until a flush that starts after this call has completed.
    async fn durable(&self) -> Result<()> {
        let done = self.flusher.request();
        match done.await {
            Ok(result) => result.map_err(SledStoreError::from),
            Err(oneshot::Canceled) => Err(SledStoreError::FlusherGone),
        }
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        self.db.get(key)?.map(|v| decode(key, &v)).transpose()
    }

    /// Values under a prefix, decoded.
    fn values<T: DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>> {
        self.db
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// The 16-byte ids that end the keys under a prefix (index keyspaces).
    fn ids_under(&self, prefix: &[u8]) -> Result<Vec<[u8; 16]>> {
        self.db
            .scan_prefix(prefix)
            .keys()
            .map(|k| {
                let k = k?;
                id_at(&k, prefix.len())
            })
            .collect()
    }

    fn room_out(&self, mut room: Room) -> Result<Room> {
        let prefix = key2(b'm', room.id.as_bytes(), &[]);
        let mut count = 0u64;
        for k in self.db.scan_prefix(&prefix).keys() {
            k?;
            count += 1;
        }
        room.member_count = count;
        Ok(room)
    }

    fn last_seq_sync(&self, room: RoomId) -> Result<u64> {
        let prefix = key2(b's', room.as_bytes(), &[]);
        match self.db.scan_prefix(&prefix).keys().next_back() {
            None => Ok(0),
            Some(k) => seq_at(&k?, prefix.len()),
        }
    }

    /// Removes a session's record and index entries (if any) into `batch`.
    fn unindex_session(&self, batch: &mut Batch, id: SessionId) -> Result<bool> {
        let key = key2(b'x', id.as_bytes(), &[]);
        let Some(old) = self.get::<P2pSession>(&key)? else {
            return Ok(false);
        };
        batch.remove(key);
        batch.remove(key2(b'y', old.initiator_user_id.as_bytes(), id.as_bytes()));
        batch.remove(key2(b'y', old.target_user_id.as_bytes(), id.as_bytes()));
        batch.remove(key2(b'z', old.room_id.as_bytes(), id.as_bytes()));
        Ok(true)
    }

    /// Removes a room record and its public-index entry into `batch`.
    fn unindex_room(&self, batch: &mut Batch, old: &Room) {
        batch.remove(key2(b'r', old.id.as_bytes(), &[]));
        batch.remove(public_key(old));
    }

    /// Writes a room record and its public-index entry into `batch`.
    fn index_room(batch: &mut Batch, room: &Room) -> Result<()> {
        let stored = Room {
            member_count: 0,
            ..room.clone()
        };
        batch.insert(key2(b'r', room.id.as_bytes(), &[]), encode(&stored)?);
        if room.visibility == Visibility::Public {
            batch.insert(public_key(room), &[][..]);
        }
        Ok(())
    }

    fn put_membership(batch: &mut Batch, m: &Membership) -> Result<()> {
        batch.insert(
            key2(b'm', m.room_id.as_bytes(), m.user_id.as_bytes()),
            encode(m)?,
        );
        batch.insert(
            key2(b'j', m.user_id.as_bytes(), m.room_id.as_bytes()),
            &[][..],
        );
        Ok(())
    }

    fn sorted_rooms(&self, ids: Vec<[u8; 16]>) -> Result<Vec<Room>> {
        let mut rooms = Vec::with_capacity(ids.len());
        for id in ids {
            // A concurrent delete_room may have removed it since the index
            // scan; skip it then.
            if let Some(room) = self.get::<Room>(&key2(b'r', &id, &[]))? {
                rooms.push(self.room_out(room)?);
            }
        }
        rooms.sort_by_key(room_order);
        Ok(rooms)
    }

    fn page(
        &self,
        iter: impl Iterator<Item = sled::Result<(IVec, IVec)>>,
        limit: usize,
    ) -> Result<(Vec<Message>, bool)> {
        let mut messages = Vec::with_capacity(limit + 1);
        for kv in iter.take(limit + 1) {
            let (k, v) = kv?;
            messages.push(decode::<Message>(&k, &v)?);
        }
        let has_more = messages.len() > limit;
        messages.truncate(limit);
        Ok((messages, has_more))
    }
}

#[async_trait]
impl Store for SledStore {
    type Error = SledStoreError;

    async fn create_user(&self, record: UserRecord) -> Result<bool> {
        let created = {
            let _w = self.lock_writes();
            let id_key = key2(b'u', record.user.id.as_bytes(), &[]);
            let name_key = key2(b'n', record.user.username.as_bytes(), &[]);
            if self.db.contains_key(&id_key)? || self.db.contains_key(&name_key)? {
                false
            } else {
                let mut batch = Batch::default();
                batch.insert(name_key, &record.user.id.as_bytes()[..]);
                batch.insert(id_key, encode(&record)?);
                self.db.apply_batch(batch)?;
                true
            }
        };
        self.durable().await?;
        Ok(created)
    }

    async fn user(&self, id: UserId) -> Result<Option<UserRecord>> {
        self.get(&key2(b'u', id.as_bytes(), &[]))
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        let name_key = key2(b'n', username.as_bytes(), &[]);
        let Some(id) = self.db.get(&name_key)? else {
            return Ok(None);
        };
        let id = id_at(&id, 0).map_err(|_| corrupt(&name_key, "user id is not 16 bytes"))?;
        self.get(&key2(b'u', &id, &[]))
    }

    async fn put_device(&self, device: DeviceRecord) -> Result<()> {
        {
            let _w = self.lock_writes();
            let key = key2(b'd', device.id.as_bytes(), &[]);
            let mut batch = Batch::default();
            if let Some(old) = self.get::<DeviceRecord>(&key)? {
                batch.remove(key2(b'e', old.user_id.as_bytes(), device.id.as_bytes()));
            }
            batch.insert(
                key2(b'e', device.user_id.as_bytes(), device.id.as_bytes()),
                &[][..],
            );
            batch.insert(key, encode(&device)?);
            self.db.apply_batch(batch)?;
        }
        self.durable().await
    }

    async fn device(&self, id: DeviceId) -> Result<Option<DeviceRecord>> {
        self.get(&key2(b'd', id.as_bytes(), &[]))
    }

    async fn devices_of(&self, user: UserId) -> Result<Vec<DeviceRecord>> {
        let mut devices = Vec::new();
        for id in self.ids_under(&key2(b'e', user.as_bytes(), &[]))? {
            if let Some(d) = self.get::<DeviceRecord>(&key2(b'd', &id, &[]))? {
                devices.push(d);
            }
        }
        devices.sort_by_key(device_order);
        Ok(devices)
    }

    async fn create_room(&self, room: Room, owner: Membership) -> Result<()> {
        {
            let _w = self.lock_writes();
            let mut batch = Batch::default();
            if let Some(old) = self.get::<Room>(&key2(b'r', room.id.as_bytes(), &[]))? {
                self.unindex_room(&mut batch, &old);
            }
            Self::index_room(&mut batch, &room)?;
            let owner = Membership {
                room_id: room.id,
                ..owner
            };
            Self::put_membership(&mut batch, &owner)?;
            self.db.apply_batch(batch)?;
        }
        self.durable().await
    }

    async fn room(&self, id: RoomId) -> Result<Option<Room>> {
        match self.get::<Room>(&key2(b'r', id.as_bytes(), &[]))? {
            Some(room) => Ok(Some(self.room_out(room)?)),
            None => Ok(None),
        }
    }

    async fn update_room(&self, id: RoomId, update: RoomUpdate) -> Result<Option<Room>> {
        let updated = {
            let _w = self.lock_writes();
            match self.get::<Room>(&key2(b'r', id.as_bytes(), &[]))? {
                None => None,
                Some(old) => {
                    let mut room = old.clone();
                    apply_update(&mut room, update);
                    let mut batch = Batch::default();
                    self.unindex_room(&mut batch, &old);
                    Self::index_room(&mut batch, &room)?;
                    self.db.apply_batch(batch)?;
                    Some(self.room_out(room)?)
                }
            }
        };
        self.durable().await?;
        Ok(updated)
    }

    async fn delete_room(&self, id: RoomId) -> Result<bool> {
        let deleted = {
            let _w = self.lock_writes();
            match self.get::<Room>(&key2(b'r', id.as_bytes(), &[]))? {
                None => false,
                Some(old) => {
                    let room = id.as_bytes();
                    let mut batch = Batch::default();
                    self.unindex_room(&mut batch, &old);
                    for user in self.ids_under(&key2(b'm', room, &[]))? {
                        batch.remove(key2(b'm', room, &user));
                        batch.remove(key2(b'j', &user, room));
                    }
                    for session in self.ids_under(&key2(b'z', room, &[]))? {
                        self.unindex_session(&mut batch, SessionId::from_bytes(session))?;
                        // In case the session record is gone but the index
                        // entry is not.
                        batch.remove(key2(b'z', room, &session));
                    }
                    for prefix in [b's', b'i'] {
                        for k in self.db.scan_prefix(key2(prefix, room, &[])).keys() {
                            batch.remove(k?);
                        }
                    }
                    self.db.apply_batch(batch)?;
                    true
                }
            }
        };
        self.durable().await?;
        Ok(deleted)
    }

    async fn public_rooms(&self) -> Result<Vec<Room>> {
        // The `p` keys are already in (created_at, id) order; `sorted_rooms`
        // sorts anyway, which costs nothing on sorted input.
        let prefix = [b'p'];
        let mut ids = Vec::new();
        for k in self.db.scan_prefix(prefix).keys() {
            ids.push(id_at(&k?, 1 + 8)?);
        }
        let mut rooms = self.sorted_rooms(ids)?;
        // Skip a room whose visibility changed between the scan and the read.
        rooms.retain(|r| r.visibility == Visibility::Public);
        Ok(rooms)
    }

    async fn rooms_of(&self, user: UserId) -> Result<Vec<Room>> {
        let ids = self.ids_under(&key2(b'j', user.as_bytes(), &[]))?;
        self.sorted_rooms(ids)
    }

    /// The user's index alone: no room records read or decoded, no member
    /// counts. The index and the rooms change in the same batches.
    async fn room_ids_of(&self, user: UserId) -> Result<Vec<RoomId>> {
        Ok(self
            .ids_under(&key2(b'j', user.as_bytes(), &[]))?
            .into_iter()
            .map(RoomId::from_bytes)
            .collect())
    }

    async fn add_member(&self, membership: Membership) -> Result<bool> {
        let added = {
            let _w = self.lock_writes();
            let key = key2(
                b'm',
                membership.room_id.as_bytes(),
                membership.user_id.as_bytes(),
            );
            if self.db.contains_key(&key)? {
                false
            } else {
                let mut batch = Batch::default();
                Self::put_membership(&mut batch, &membership)?;
                self.db.apply_batch(batch)?;
                true
            }
        };
        self.durable().await?;
        Ok(added)
    }

    async fn remove_member(&self, room: RoomId, user: UserId) -> Result<bool> {
        let removed = {
            let _w = self.lock_writes();
            let key = key2(b'm', room.as_bytes(), user.as_bytes());
            if self.db.contains_key(&key)? {
                let mut batch = Batch::default();
                batch.remove(key);
                batch.remove(key2(b'j', user.as_bytes(), room.as_bytes()));
                self.db.apply_batch(batch)?;
                true
            } else {
                false
            }
        };
        self.durable().await?;
        Ok(removed)
    }

    async fn set_role(&self, room: RoomId, user: UserId, role: Role) -> Result<bool> {
        let set = {
            let _w = self.lock_writes();
            let key = key2(b'm', room.as_bytes(), user.as_bytes());
            match self.get::<Membership>(&key)? {
                Some(mut m) => {
                    m.role = role;
                    self.db.insert(key, encode(&m)?)?;
                    true
                }
                None => false,
            }
        };
        self.durable().await?;
        Ok(set)
    }

    async fn member(&self, room: RoomId, user: UserId) -> Result<Option<Membership>> {
        self.get(&key2(b'm', room.as_bytes(), user.as_bytes()))
    }

    async fn members(&self, room: RoomId) -> Result<Vec<Membership>> {
        let mut members: Vec<Membership> = self.values(&key2(b'm', room.as_bytes(), &[]))?;
        members.sort_by_key(member_order);
        Ok(members)
    }

    async fn append_message(&self, message: NewMessage) -> Result<AppendOutcome> {
        let outcome = {
            let _w = self.lock_writes();
            let room = message.room_id;
            let idem_key = message.client_id.as_ref().map(|c| {
                key2(
                    b'i',
                    room.as_bytes(),
                    &[&message.sender.id.as_bytes()[..], c.as_bytes()].concat(),
                )
            });
            let earlier = match &idem_key {
                Some(k) => match self.db.get(k)? {
                    Some(seq) => {
                        let seq = seq_at(&seq, 0).map_err(|_| corrupt(k, "seq is not 8 bytes"))?;
                        let msg_key = message_key(room, seq);
                        Some(
                            self.get::<Message>(&msg_key)?
                                .ok_or_else(|| corrupt(k, "names a message that is not stored"))?,
                        )
                    }
                    None => None,
                },
                None => None,
            };
            match earlier {
                Some(m) => AppendOutcome::Duplicate(m),
                None => {
                    let seq = self.last_seq_sync(room)? + 1;
                    let stored = Message {
                        id: message.id,
                        room_id: room,
                        seq,
                        sender: message.sender,
                        content: message.content,
                        created_at: message.created_at,
                        client_id: message.client_id,
                    };
                    let mut batch = Batch::default();
                    batch.insert(message_key(room, seq), encode(&stored)?);
                    if let Some(k) = idem_key {
                        batch.insert(k, &seq.to_be_bytes()[..]);
                    }
                    self.db.apply_batch(batch)?;
                    AppendOutcome::Created(stored)
                }
            }
        };
        self.durable().await?;
        Ok(outcome)
    }

    async fn messages(&self, room: RoomId, query: PageQuery, limit: usize) -> Result<Page> {
        let limit = clamp_limit(limit);
        let (messages, has_more) = match query {
            PageQuery::Latest => {
                let prefix = key2(b's', room.as_bytes(), &[]);
                let (mut m, more) = self.page(self.db.scan_prefix(prefix).rev(), limit)?;
                m.reverse();
                (m, more)
            }
            PageQuery::Before(seq) => {
                let range = message_key(room, 0)..message_key(room, seq);
                let (mut m, more) = self.page(self.db.range(range).rev(), limit)?;
                m.reverse();
                (m, more)
            }
            PageQuery::After(seq) => match seq.checked_add(1) {
                None => (Vec::new(), false),
                Some(first) => {
                    let range = message_key(room, first)..=message_key(room, u64::MAX);
                    self.page(self.db.range(range), limit)?
                }
            },
        };
        Ok(Page { messages, has_more })
    }

    async fn last_seq(&self, room: RoomId) -> Result<u64> {
        self.last_seq_sync(room)
    }

    async fn put_session(&self, session: P2pSession) -> Result<()> {
        {
            let _w = self.lock_writes();
            let id = session.id.as_bytes();
            let mut batch = Batch::default();
            self.unindex_session(&mut batch, session.id)?;
            batch.insert(
                key2(b'y', session.initiator_user_id.as_bytes(), id),
                &[][..],
            );
            batch.insert(key2(b'y', session.target_user_id.as_bytes(), id), &[][..]);
            batch.insert(key2(b'z', session.room_id.as_bytes(), id), &[][..]);
            batch.insert(key2(b'x', id, &[]), encode(&session)?);
            self.db.apply_batch(batch)?;
        }
        self.durable().await
    }

    async fn session(&self, id: SessionId) -> Result<Option<P2pSession>> {
        self.get(&key2(b'x', id.as_bytes(), &[]))
    }

    async fn sessions_of(&self, user: UserId) -> Result<Vec<P2pSession>> {
        let mut sessions = Vec::new();
        for id in self.ids_under(&key2(b'y', user.as_bytes(), &[]))? {
            if let Some(s) = self.get::<P2pSession>(&key2(b'x', &id, &[]))? {
                sessions.push(s);
            }
        }
        sessions.sort_by_key(session_order);
        Ok(sessions)
    }

    async fn delete_session(&self, id: SessionId) -> Result<bool> {
        let deleted = {
            let _w = self.lock_writes();
            let mut batch = Batch::default();
            let found = self.unindex_session(&mut batch, id)?;
            if found {
                self.db.apply_batch(batch)?;
            }
            found
        };
        self.durable().await?;
        Ok(deleted)
    }
}

// ---- keys and records ----

/// `prefix ++ a ++ b`.
fn key2(prefix: u8, a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + a.len() + b.len());
    key.push(prefix);
    key.extend_from_slice(a);
    key.extend_from_slice(b);
    key
}

fn message_key(room: RoomId, seq: u64) -> Vec<u8> {
    key2(b's', room.as_bytes(), &seq.to_be_bytes())
}

/// A timestamp as 8 bytes whose big-endian order is time order.
fn time_key(t: Timestamp) -> [u8; 8] {
    ((t.unix_millis() as u64) ^ (1 << 63)).to_be_bytes()
}

fn public_key(room: &Room) -> Vec<u8> {
    key2(b'p', &time_key(room.created_at), room.id.as_bytes())
}

fn corrupt(key: &[u8], reason: impl Into<String>) -> SledStoreError {
    SledStoreError::Corrupt {
        key: key.escape_ascii().to_string(),
        reason: reason.into(),
    }
}

/// The 16-byte id at `offset` that ends `key`.
fn id_at(key: &[u8], offset: usize) -> Result<[u8; 16]> {
    key.get(offset..)
        .and_then(|rest| <[u8; 16]>::try_from(rest).ok())
        .ok_or_else(|| corrupt(key, "expected a 16-byte id"))
}

/// The big-endian u64 at `offset` that ends `key`.
fn seq_at(key: &[u8], offset: usize) -> Result<u64> {
    key.get(offset..)
        .and_then(|rest| <[u8; 8]>::try_from(rest).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(key, "expected a big-endian u64"))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(SledStoreError::Encode)
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(key, e.to_string()))
}

// ---- group commit ----

type FlushResult = std::result::Result<(), sled::Error>;

/// The group-commit flusher: one thread, one `Db::flush` per batch of
/// waiting writers. See the module docs.
#[derive(Debug)]
struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct Queue {
    /// Writers whose batch is applied and who wait for the next flush.
    waiters: Vec<oneshot::Sender<FlushResult>>,
    shutdown: bool,
    /// Flushes run so far.
    flushes: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing in the queue can be left inconsistent by a panic.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Flusher {
    fn start(db: Db) -> Result<Self> {
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("mesh-sled-flusher".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || flush_loop(&db, &shared)
            })
            .map_err(SledStoreError::Spawn)?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Registers a writer; the receiver completes after the next flush that
    /// starts after this call.
    fn request(&self) -> oneshot::Receiver<FlushResult> {
        let (tx, rx) = oneshot::channel();
        self.shared.lock().waiters.push(tx);
        self.shared.wake.notify_one();
        rx
    }
}

fn flush_loop(db: &Db, shared: &Shared) {
    loop {
        let batch = {
            let mut queue = shared.lock();
            while queue.waiters.is_empty() && !queue.shutdown {
                queue = shared
                    .wake
                    .wait(queue)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if queue.waiters.is_empty() {
                // Shut down, and nobody is left waiting.
                return;
            }
            std::mem::take(&mut queue.waiters)
        };
        // Everyone in `batch` applied their write before registering, so
        // this flush covers all of them. Writers arriving now queue up for
        // the next round.
        let result = db.flush().map(drop);
        shared.lock().flushes += 1;
        for waiter in batch {
            // A writer that stopped waiting (future dropped) is fine to miss.
            let _ = waiter.send(result.clone());
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            // A panic in the flusher has already failed its waiters (their
            // senders were dropped); there is nothing more to report here.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::User;

    fn user(name: &str) -> UserRecord {
        UserRecord {
            user: User {
                id: UserId::new(),
                username: name.into(),
                display_name: name.into(),
                created_at: Timestamp::from_unix_millis(1),
            },
            password_hash: String::new(),
        }
    }

    fn room(owner: UserId) -> (Room, Membership) {
        let room = Room {
            id: RoomId::new(),
            name: "general".into(),
            topic: None,
            visibility: Visibility::Public,
            created_by: owner,
            created_at: Timestamp::from_unix_millis(2),
            member_count: 0,
        };
        let owner = Membership {
            room_id: room.id,
            user_id: owner,
            role: Role::Owner,
            joined_at: Timestamp::from_unix_millis(2),
        };
        (room, owner)
    }

    fn message(room: RoomId, sender: &User, n: usize) -> NewMessage {
        NewMessage {
            id: crate::protocol::MessageId::new(),
            room_id: room,
            sender: sender.clone(),
            content: format!("message {n}"),
            created_at: Timestamp::from_unix_millis(3),
            client_id: Some(format!("c{n}")),
        }
    }

    /// The store needs no particular runtime; a current-thread one will do.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    const CRASH_ENV: &str = "MESH_SLED_CRASH_CHILD_DIR";

    /// Run in a child process by [`acknowledged_writes_survive_a_crash`]:
    /// writes, then aborts the process at once, without dropping (and so
    /// without any flush but the store's own).
    #[test]
    fn crash_child() {
        let Some(dir) = std::env::var_os(CRASH_ENV) else {
            return; // Not the child: nothing to do.
        };
        let store = SledStore::open(&dir).expect("open");
        block_on(async {
            let alice = user("alice");
            assert!(store.create_user(alice.clone()).await.expect("user"));
            let (room, owner) = room(alice.user.id);
            std::fs::write(
                std::path::Path::new(&dir).join("ids"),
                format!("{} {}", alice.user.id, room.id),
            )
            .expect("ids");
            store.create_room(room.clone(), owner).await.expect("room");
            for n in 0..20 {
                store
                    .append_message(message(room.id, &alice.user, n))
                    .await
                    .expect("append");
            }
        });
        // Every write above was acknowledged. Die without cleaning up.
        std::process::abort();
    }

    #[test]
    fn acknowledged_writes_survive_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "storage::sled::tests::crash_child",
                "--nocapture",
            ])
            .env(CRASH_ENV, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run child");
        assert!(!status.success(), "the child must have aborted");
        let ids = std::fs::read_to_string(dir.path().join("ids")).expect("ids");
        let (user_id, room_id) = ids.split_once(' ').expect("two ids");
        let user_id: UserId = user_id.parse().expect("user id");
        let room_id: RoomId = room_id.parse().expect("room id");

        let store = SledStore::open(dir.path()).expect("reopen");
        block_on(async {
            let alice = store.user(user_id).await.expect("read").expect("user kept");
            assert_eq!(alice.user.username, "alice");
            let room = store.room(room_id).await.expect("read").expect("room kept");
            assert_eq!(room.member_count, 1);
            assert_eq!(store.last_seq(room_id).await.expect("seq"), 20);
            let page = store
                .messages(room_id, PageQuery::Latest, 100)
                .await
                .expect("page");
            let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
            assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
        });
    }

    #[test]
    fn writes_survive_a_plain_drop_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let alice = user("alice");
        {
            let store = SledStore::open(dir.path()).expect("open");
            assert!(block_on(store.create_user(alice.clone())).expect("create"));
        }
        let store = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(
            block_on(store.user_by_name("alice")).expect("read"),
            Some(alice)
        );
    }

    #[test]
    fn concurrent_writers_share_flushes() {
        let store = SledStore::temporary().expect("open");
        let alice = user("alice");
        let (room, owner) = room(alice.user.id);
        block_on(store.create_room(room.clone(), owner)).expect("room");
        let before = store.flush_count();
        const N: usize = 64;
        // All appends are in flight at once: each applies its batch, then
        // they wait for flushes together.
        let appends: Vec<_> = (0..N)
            .map(|n| store.append_message(message(room.id, &alice.user, n)))
            .collect();
        let outcomes = block_on(futures_util::future::join_all(appends));
        for o in outcomes {
            assert!(matches!(o.expect("append"), AppendOutcome::Created(_)));
        }
        let flushes = store.flush_count() - before;
        assert!(
            (1..N as u64).contains(&flushes),
            "{flushes} flushes for {N} writes"
        );
        assert_eq!(block_on(store.last_seq(room.id)).expect("seq"), N as u64);
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let store = SledStore::temporary().expect("open");
        let id = UserId::new();
        store
            .db
            .insert(key2(b'u', id.as_bytes(), &[]), &b"not json"[..])
            .expect("insert");
        let err = block_on(store.user(id)).expect_err("corrupt");
        assert!(matches!(StoreError::from(err), StoreError::Corrupt(_)));
    }
}
