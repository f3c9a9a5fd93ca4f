//! [`MemoryStore`]: every record in plain maps, for tests and embedding.
//!
//! It keeps the same data model as [`SledStore`](super::sled::SledStore)
//! (one map per keyspace, memberships keyed by `(room, user)`, idempotency
//! keys by `(sender, room, client_id)`) so the two answer every query alike;
//! the [conformance suite](super::conformance) checks that they do.
//! Nothing survives a drop: "durable when it returns" is trivially true of
//! a store that has no disk.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::{
    AppendOutcome, DeviceRecord, HistoryPage, Membership, NewMessage, Page, RoomUpdate, Store,
    StoreError, UserRecord, apply_update, clamp_limit, device_order, member_order, room_order,
    session_order,
};
use crate::protocol::{
    DeviceId, Message, P2pSession, Role, Room, RoomId, SessionId, UserId, Visibility,
};

/// The error of [`MemoryStore`]: it cannot fail, so this has no values.
#[derive(Debug, thiserror::Error)]
#[error("the memory store cannot fail")]
pub struct MemoryStoreError(Infallible);

impl From<MemoryStoreError> for StoreError {
    fn from(e: MemoryStoreError) -> Self {
        match e.0 {}
    }
}

/// A [`Store`] in memory. Cheap to create; each instance is independent.
#[derive(Debug, Default)]
pub struct MemoryStore {
    // A std `Mutex`, not an async one, as mini-redis `db.rs` argues: the
    // critical sections are short map operations that never `.await`, so a
    // blocking lock is cheaper than an async one and cannot be held across a
    // suspension point. One lock over all maps keeps multi-map updates
    // (room + owner membership, message + idempotency key, the cascade of
    // `delete_room`) atomic without any ordering rules between locks.
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    users: HashMap<UserId, UserRecord>,
    usernames: HashMap<String, UserId>,
    devices: HashMap<DeviceId, DeviceRecord>,
    /// Rooms as stored; `member_count` is filled in on the way out.
    rooms: HashMap<RoomId, Room>,
    /// Keyed `(room, user)` so one room's members are a contiguous range.
    members: BTreeMap<(RoomId, UserId), Membership>,
    /// Each room's messages; `messages[i].seq == i + 1` (seq has no gaps).
    messages: HashMap<RoomId, Vec<Message>>,
    /// `(sender, room, client_id)` to the `seq` it was stored under.
    idempotency: HashMap<(UserId, RoomId, String), u64>,
    sessions: HashMap<SessionId, P2pSession>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while the lock was held (only possible through a bug in
        // this file) leaves the maps as they were at the panic; carry on
        // rather than poisoning every later call.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    fn room_members(&self, room: RoomId) -> impl Iterator<Item = &Membership> {
        self.members
            .range((room, UserId::from_bytes([0; 16]))..=(room, UserId::from_bytes([0xff; 16])))
            .map(|(_, m)| m)
    }

    fn room_out(&self, room: &Room) -> Room {
        let mut room = room.clone();
        room.member_count = self.room_members(room.id).count() as u64;
        room
    }
}

#[async_trait]
impl Store for MemoryStore {
    type Error = MemoryStoreError;

    async fn create_user(&self, record: UserRecord) -> Result<bool, MemoryStoreError> {
        let mut inner = self.lock();
        if inner.users.contains_key(&record.user.id)
            || inner.usernames.contains_key(&record.user.username)
        {
            return Ok(false);
        }
        inner
            .usernames
            .insert(record.user.username.clone(), record.user.id);
        inner.users.insert(record.user.id, record);
        Ok(true)
    }

    async fn user(&self, id: UserId) -> Result<Option<UserRecord>, MemoryStoreError> {
        Ok(self.lock().users.get(&id).cloned())
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, MemoryStoreError> {
        let inner = self.lock();
        Ok(inner
            .usernames
            .get(username)
            .and_then(|id| inner.users.get(id))
            .cloned())
    }

    async fn put_device(&self, device: DeviceRecord) -> Result<(), MemoryStoreError> {
        self.lock().devices.insert(device.id, device);
        Ok(())
    }

    async fn device(&self, id: DeviceId) -> Result<Option<DeviceRecord>, MemoryStoreError> {
        Ok(self.lock().devices.get(&id).cloned())
    }

    async fn devices_of(&self, user: UserId) -> Result<Vec<DeviceRecord>, MemoryStoreError> {
        let mut devices: Vec<_> = self
            .lock()
            .devices
            .values()
            .filter(|d| d.user_id == user)
            .cloned()
            .collect();
        devices.sort_by_key(device_order);
        Ok(devices)
    }

    async fn create_room(&self, room: Room, owner: Membership) -> Result<(), MemoryStoreError> {
        let mut inner = self.lock();
        let owner = Membership {
            room_id: room.id,
            ..owner
        };
        inner.members.insert((room.id, owner.user_id), owner);
        inner.rooms.insert(room.id, room);
        Ok(())
    }

    async fn room(&self, id: RoomId) -> Result<Option<Room>, MemoryStoreError> {
        let inner = self.lock();
        Ok(inner.rooms.get(&id).map(|r| inner.room_out(r)))
    }

    async fn update_room(
        &self,
        id: RoomId,
        update: RoomUpdate,
    ) -> Result<Option<Room>, MemoryStoreError> {
        let mut inner = self.lock();
        let Some(room) = inner.rooms.get_mut(&id) else {
            return Ok(None);
        };
        apply_update(room, update);
        let room = room.clone();
        Ok(Some(inner.room_out(&room)))
    }

    async fn delete_room(&self, id: RoomId) -> Result<bool, MemoryStoreError> {
        let mut inner = self.lock();
        if inner.rooms.remove(&id).is_none() {
            return Ok(false);
        }
        let users: Vec<UserId> = inner.room_members(id).map(|m| m.user_id).collect();
        for user in users {
            inner.members.remove(&(id, user));
        }
        inner.messages.remove(&id);
        inner.idempotency.retain(|(_, room, _), _| *room != id);
        inner.sessions.retain(|_, s| s.room_id != id);
        Ok(true)
    }

    async fn public_rooms(&self) -> Result<Vec<Room>, MemoryStoreError> {
        let inner = self.lock();
        let mut rooms: Vec<_> = inner
            .rooms
            .values()
            .filter(|r| r.visibility == Visibility::Public)
            .map(|r| inner.room_out(r))
            .collect();
        rooms.sort_by_key(room_order);
        Ok(rooms)
    }

    async fn rooms_of(&self, user: UserId) -> Result<Vec<Room>, MemoryStoreError> {
        let inner = self.lock();
        let mut rooms: Vec<_> = inner
            .members
            .keys()
            .filter(|(_, u)| *u == user)
            .filter_map(|(room, _)| inner.rooms.get(room))
            .map(|r| inner.room_out(r))
            .collect();
        rooms.sort_by_key(room_order);
        Ok(rooms)
    }

    async fn room_ids_of(&self, user: UserId) -> Result<Vec<RoomId>, MemoryStoreError> {
        let inner = self.lock();
        Ok(inner
            .members
            .keys()
            .filter(|(room, u)| *u == user && inner.rooms.contains_key(room))
            .map(|(room, _)| *room)
            .collect())
    }

    async fn add_member(&self, membership: Membership) -> Result<bool, MemoryStoreError> {
        let mut inner = self.lock();
        let key = (membership.room_id, membership.user_id);
        if inner.members.contains_key(&key) {
            return Ok(false);
        }
        inner.members.insert(key, membership);
        Ok(true)
    }

    async fn remove_member(&self, room: RoomId, user: UserId) -> Result<bool, MemoryStoreError> {
        Ok(self.lock().members.remove(&(room, user)).is_some())
    }

    async fn set_role(
        &self,
        room: RoomId,
        user: UserId,
        role: Role,
    ) -> Result<bool, MemoryStoreError> {
        match self.lock().members.get_mut(&(room, user)) {
            Some(m) => {
                m.role = role;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn member(
        &self,
        room: RoomId,
        user: UserId,
    ) -> Result<Option<Membership>, MemoryStoreError> {
        Ok(self.lock().members.get(&(room, user)).cloned())
    }

    async fn members(&self, room: RoomId) -> Result<Vec<Membership>, MemoryStoreError> {
        let mut members: Vec<_> = self.lock().room_members(room).cloned().collect();
        members.sort_by_key(member_order);
        Ok(members)
    }

    async fn append_message(&self, message: NewMessage) -> Result<AppendOutcome, MemoryStoreError> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let log = inner.messages.entry(message.room_id).or_default();
        if let Some(client_id) = &message.client_id {
            let key = (message.sender.id, message.room_id, client_id.clone());
            if let Some(&seq) = inner.idempotency.get(&key) {
                // `seq` came from this very log, which only grows until the
                // room (and with it this key) is deleted.
                if let Some(earlier) = seq
                    .checked_sub(1)
                    .and_then(|i| log.get(i as usize))
                    .cloned()
                {
                    return Ok(AppendOutcome::Duplicate(earlier));
                }
            }
        }
        let seq = log.len() as u64 + 1;
        let stored = Message {
            id: message.id,
            room_id: message.room_id,
            seq,
            sender: message.sender,
            content: message.content,
            created_at: message.created_at,
            client_id: message.client_id,
        };
        if let Some(client_id) = &stored.client_id {
            inner
                .idempotency
                .insert((stored.sender.id, stored.room_id, client_id.clone()), seq);
        }
        log.push(stored.clone());
        Ok(AppendOutcome::Created(stored))
    }

    async fn messages(
        &self,
        room: RoomId,
        query: HistoryPage,
        limit: usize,
    ) -> Result<Page, MemoryStoreError> {
        let limit = clamp_limit(limit);
        let inner = self.lock();
        let Some(log) = inner.messages.get(&room) else {
            return Ok(Page::default());
        };
        let n = log.len();
        // Indices into `log` (seq - 1); seqs are contiguous from 1.
        let (lo, hi, has_more) = match query {
            HistoryPage::Latest => {
                let lo = n.saturating_sub(limit);
                (lo, n, lo > 0)
            }
            HistoryPage::Before(seq) => {
                let hi = usize::try_from(seq.saturating_sub(1)).map_or(n, |s| s.min(n));
                let lo = hi.saturating_sub(limit);
                (lo, hi, lo > 0)
            }
            HistoryPage::After(seq) => {
                let lo = usize::try_from(seq).map_or(n, |s| s.min(n));
                let hi = lo.saturating_add(limit).min(n);
                (lo, hi, hi < n)
            }
        };
        Ok(Page {
            messages: log[lo..hi].to_vec(),
            has_more,
        })
    }

    async fn last_seq(&self, room: RoomId) -> Result<u64, MemoryStoreError> {
        Ok(self
            .lock()
            .messages
            .get(&room)
            .map_or(0, |log| log.len() as u64))
    }

    async fn put_session(&self, session: P2pSession) -> Result<(), MemoryStoreError> {
        self.lock().sessions.insert(session.id, session);
        Ok(())
    }

    async fn session(&self, id: SessionId) -> Result<Option<P2pSession>, MemoryStoreError> {
        Ok(self.lock().sessions.get(&id).cloned())
    }

    async fn sessions_of(&self, user: UserId) -> Result<Vec<P2pSession>, MemoryStoreError> {
        let mut sessions: Vec<_> = self
            .lock()
            .sessions
            .values()
            .filter(|s| s.initiator_user_id == user || s.target_user_id == user)
            .cloned()
            .collect();
        sessions.sort_by_key(session_order);
        Ok(sessions)
    }

    async fn delete_session(&self, id: SessionId) -> Result<bool, MemoryStoreError> {
        Ok(self.lock().sessions.remove(&id).is_some())
    }
}
