//! Storage: the [`Store`] trait and its backends.
//!
//! A backend keeps users, devices, rooms, memberships, messages and P2P
//! sessions. Every write is durable when its future resolves: the service
//! acknowledges a message to its sender only after
//! [`Store::append_message`] returns, so a crash loses nothing acknowledged.
//!
//! Backends:
//! - [`memory::MemoryStore`]: in memory, for tests and embedding.
//! - [`sled::SledStore`] (feature `sled`): the embedded on-disk default, with
//!   group commit.
//! - [`postgres::PgStore`] (feature `postgres`): PostgreSQL, the system of
//!   record for deployments of several nodes.
//!
//! Every backend passes the same suite, [`conformance`] (feature
//! `conformance`): one macro call proves a new backend.
//!
//! Each backend has its own error type ([`Store::Error`]) that converts into
//! [`StoreError`]; callers hold the erased form, [`DynStore`], built with
//! [`IntoDynStore::into_dyn`].

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::protocol::{
    DeviceId, Message, MessageId, P2pSession, Role, Room, RoomId, SessionId, Timestamp, User,
    UserId, Visibility,
};

#[cfg(feature = "conformance")]
pub mod conformance;
mod erase;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sled")]
pub mod sled;

pub use erase::EraseStoreError;

/// The most messages one page may hold.
pub const MAX_PAGE: usize = 100;

/// The error every backend's error converts into.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Stored data could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The backend failed (I/O, database error, ...).
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// The backend cannot write now, typically because its disk is full:
    /// nothing was acknowledged, reads still work, and retrying later may
    /// succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Wraps any backend error.
    pub fn backend<E: std::error::Error + Send + Sync + 'static>(e: E) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

/// A user with the password hash kept beside it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserRecord {
    pub user: User,
    /// A PHC string (argon2id), or empty for users of an external auth.
    pub password_hash: String,
}

/// One login of a user. Access tokens name it; revoking it invalidates them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceRecord {
    pub id: DeviceId,
    pub user_id: UserId,
    pub name: String,
    pub created_at: Timestamp,
    pub revoked: bool,
}

/// A user's place in a room.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Membership {
    pub room_id: RoomId,
    pub user_id: UserId,
    pub role: Role,
    pub joined_at: Timestamp,
}

/// Changes to a room; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomUpdate {
    pub name: Option<String>,
    /// `Some(None)` clears the topic.
    pub topic: Option<Option<String>>,
    pub visibility: Option<Visibility>,
}

/// A message about to be appended; the store assigns its `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    pub id: MessageId,
    pub room_id: RoomId,
    pub sender: User,
    pub content: String,
    pub created_at: Timestamp,
    pub client_id: Option<String>,
}

/// What [`Store::append_message`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The message was stored with the next `seq`.
    Created(Message),
    /// The same `(sender, room, client_id)` was stored before: this is it,
    /// and nothing new was written.
    Duplicate(Message),
}

impl AppendOutcome {
    /// The message, new or earlier.
    pub fn message(&self) -> &Message {
        match self {
            AppendOutcome::Created(m) | AppendOutcome::Duplicate(m) => m,
        }
    }

    pub fn into_message(self) -> Message {
        match self {
            AppendOutcome::Created(m) | AppendOutcome::Duplicate(m) => m,
        }
    }
}

/// Which page of a room's history to read: the wire's own query type, so
/// that one type carries a page request from the app to the store.
pub use crate::protocol::http::HistoryPage;

/// A page of history, in ascending `seq`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Page {
    pub messages: Vec<Message>,
    pub has_more: bool,
}

/// A storage backend. See the [module docs](self).
///
/// Usernames reach the store already folded to lower case. Methods that look
/// a thing up answer `Ok(None)` (or `false`) for "not there"; errors are for
/// failures only.
#[async_trait]
pub trait Store: fmt::Debug + Send + Sync + 'static {
    /// This backend's error.
    type Error: std::error::Error + Send + Sync + Into<StoreError> + 'static;

    // ---- users ----

    /// Stores a new user. `false` (and nothing written) if the username or
    /// id is taken.
    async fn create_user(&self, record: UserRecord) -> Result<bool, Self::Error>;
    async fn user(&self, id: UserId) -> Result<Option<UserRecord>, Self::Error>;
    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, Self::Error>;

    // ---- devices ----

    /// Inserts or replaces a device (revoking writes it back with `revoked`).
    async fn put_device(&self, device: DeviceRecord) -> Result<(), Self::Error>;
    async fn device(&self, id: DeviceId) -> Result<Option<DeviceRecord>, Self::Error>;
    /// The user's devices (revoked ones too), oldest first, ties by id.
    async fn devices_of(&self, user: UserId) -> Result<Vec<DeviceRecord>, Self::Error>;

    // ---- rooms ----

    /// Stores a new room and its owner's membership, atomically. The room's
    /// `member_count` as given is ignored: the store counts memberships.
    /// The owner membership's `room_id` is taken from `room`. Room ids are
    /// fresh v4 UUIDs; calling this for an existing id is outside the
    /// contract (the built-in stores replace the room record and upsert the
    /// owner membership, keeping everything else).
    async fn create_room(&self, room: Room, owner: Membership) -> Result<(), Self::Error>;
    /// The room, with `member_count` filled in.
    async fn room(&self, id: RoomId) -> Result<Option<Room>, Self::Error>;
    /// Applies `update`; the room after it, or `None` if there is no such room.
    async fn update_room(
        &self,
        id: RoomId,
        update: RoomUpdate,
    ) -> Result<Option<Room>, Self::Error>;
    /// Deletes the room with its memberships, messages and sessions. `false`
    /// if there was no such room.
    async fn delete_room(&self, id: RoomId) -> Result<bool, Self::Error>;
    /// Every public room, oldest first (by `created_at`, ties by id).
    async fn public_rooms(&self) -> Result<Vec<Room>, Self::Error>;
    /// Every room the user is a member of, oldest first (as
    /// [`Store::public_rooms`]).
    async fn rooms_of(&self, user: UserId) -> Result<Vec<Room>, Self::Error>;
    /// The ids of the rooms the user is a member of, in no particular
    /// order: what [`Store::rooms_of`] returns, without building the rooms
    /// (a connection's `system.hello` needs only the ids). The default asks
    /// `rooms_of`; a backend with an index overrides it.
    async fn room_ids_of(&self, user: UserId) -> Result<Vec<RoomId>, Self::Error> {
        Ok(self
            .rooms_of(user)
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect())
    }

    // ---- memberships ----

    /// Adds a member. `false` (and nothing changed) if already a member.
    async fn add_member(&self, membership: Membership) -> Result<bool, Self::Error>;
    /// `false` if the user was not a member.
    async fn remove_member(&self, room: RoomId, user: UserId) -> Result<bool, Self::Error>;
    /// `false` if the user is not a member.
    async fn set_role(&self, room: RoomId, user: UserId, role: Role) -> Result<bool, Self::Error>;
    async fn member(&self, room: RoomId, user: UserId) -> Result<Option<Membership>, Self::Error>;
    /// Every member, in the order they joined (by `joined_at`, ties by
    /// user id).
    async fn members(&self, room: RoomId) -> Result<Vec<Membership>, Self::Error>;

    // ---- messages ----

    /// Appends a message with the room's next `seq` (1 for the first), or
    /// returns the earlier one with the same `(sender, room, client_id)`.
    /// Durable when it returns.
    async fn append_message(&self, message: NewMessage) -> Result<AppendOutcome, Self::Error>;
    /// A page of at most `limit` (clamped to 1..=[`MAX_PAGE`]) messages.
    async fn messages(
        &self,
        room: RoomId,
        query: HistoryPage,
        limit: usize,
    ) -> Result<Page, Self::Error>;
    /// The highest `seq` in the room, 0 if it has no messages.
    async fn last_seq(&self, room: RoomId) -> Result<u64, Self::Error>;
    /// [`Store::last_seq`] of each room, in the order given (a cluster
    /// node's sweep asks for all its live rooms at once). The default asks
    /// one by one; a database answers in one query.
    async fn last_seqs(&self, rooms: &[RoomId]) -> Result<Vec<u64>, Self::Error> {
        let mut lasts = Vec::with_capacity(rooms.len());
        for room in rooms {
            lasts.push(self.last_seq(*room).await?);
        }
        Ok(lasts)
    }

    // ---- P2P sessions ----

    /// Inserts or replaces a session. [`Store::delete_room`] deletes the
    /// sessions of its room.
    async fn put_session(&self, session: P2pSession) -> Result<(), Self::Error>;
    async fn session(&self, id: SessionId) -> Result<Option<P2pSession>, Self::Error>;
    /// Sessions the user is a party to (either side), oldest first
    /// (`created_at`, ties by id).
    async fn sessions_of(&self, user: UserId) -> Result<Vec<P2pSession>, Self::Error>;
    /// `false` if there was no such session.
    async fn delete_session(&self, id: SessionId) -> Result<bool, Self::Error>;

    // ---- health ----

    /// Whether the backend can serve now, for a health check: a database
    /// server answers, for example. The default (an embedded store) says yes.
    async fn ping(&self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Clamps a requested page size to `1..=MAX_PAGE`, as [`Store::messages`]
/// promises.
pub(crate) fn clamp_limit(limit: usize) -> usize {
    limit.clamp(1, MAX_PAGE)
}

/// The order of [`Store::public_rooms`] and [`Store::rooms_of`]: oldest
/// first, ties broken by id so every backend agrees.
pub(crate) fn room_order(room: &Room) -> (Timestamp, RoomId) {
    (room.created_at, room.id)
}

/// The order of [`Store::members`]: by `joined_at`, ties broken by user id.
pub(crate) fn member_order(m: &Membership) -> (Timestamp, UserId) {
    (m.joined_at, m.user_id)
}

/// The order of [`Store::devices_of`]: by `created_at`, then id.
pub(crate) fn device_order(d: &DeviceRecord) -> (Timestamp, DeviceId) {
    (d.created_at, d.id)
}

/// The order of [`Store::sessions_of`]: by `created_at`, then id.
pub(crate) fn session_order(s: &P2pSession) -> (Timestamp, SessionId) {
    (s.created_at, s.id)
}

/// Applies a [`RoomUpdate`] to a room in place.
pub(crate) fn apply_update(room: &mut Room, update: RoomUpdate) {
    if let Some(name) = update.name {
        room.name = name;
    }
    if let Some(topic) = update.topic {
        room.topic = topic;
    }
    if let Some(visibility) = update.visibility {
        room.visibility = visibility;
    }
}

/// A store with its errors erased to [`StoreError`]: what the service holds.
pub type DynStore = dyn Store<Error = StoreError>;

/// Turns any [`Store`] into an `Arc<DynStore>`.
pub trait IntoDynStore {
    /// Wraps the store in [`EraseStoreError`] and puts it behind an `Arc`.
    fn into_dyn(self) -> Arc<DynStore>;
}

impl<S: Store> IntoDynStore for S {
    fn into_dyn(self) -> Arc<DynStore> {
        Arc::new(EraseStoreError(self))
    }
}
