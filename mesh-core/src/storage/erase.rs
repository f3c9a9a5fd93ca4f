//! [`EraseStoreError`]: a store whose errors are [`StoreError`].
//!
//! Callers (the service, the server) hold one store type, [`DynStore`](super::DynStore),
//! whatever the backend. This adapter forwards every [`Store`] method to the
//! wrapped backend and converts its error with `Into<StoreError>`, as
//! matrix-rust-sdk's `EraseStateStoreError` does.

use async_trait::async_trait;

use super::{
    AppendOutcome, DeviceRecord, HistoryPage, Membership, NewMessage, Page, RoomUpdate, Store,
    StoreError, UserRecord,
};
use crate::protocol::{DeviceId, P2pSession, Role, Room, RoomId, SessionId, UserId};

/// Wraps a store so its errors become [`StoreError`].
///
/// Usually built through [`IntoDynStore::into_dyn`](super::IntoDynStore::into_dyn).
#[derive(Debug)]
pub struct EraseStoreError<S: Store>(pub S);

#[async_trait]
impl<S: Store> Store for EraseStoreError<S> {
    type Error = StoreError;

    async fn last_seqs(&self, rooms: &[RoomId]) -> Result<Vec<u64>, StoreError> {
        self.0.last_seqs(rooms).await.map_err(Into::into)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.0.ping().await.map_err(Into::into)
    }

    async fn create_user(&self, record: UserRecord) -> Result<bool, StoreError> {
        self.0.create_user(record).await.map_err(Into::into)
    }

    async fn user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        self.0.user(id).await.map_err(Into::into)
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        self.0.user_by_name(username).await.map_err(Into::into)
    }

    async fn put_device(&self, device: DeviceRecord) -> Result<(), StoreError> {
        self.0.put_device(device).await.map_err(Into::into)
    }

    async fn device(&self, id: DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.0.device(id).await.map_err(Into::into)
    }

    async fn devices_of(&self, user: UserId) -> Result<Vec<DeviceRecord>, StoreError> {
        self.0.devices_of(user).await.map_err(Into::into)
    }

    async fn create_room(&self, room: Room, owner: Membership) -> Result<(), StoreError> {
        self.0.create_room(room, owner).await.map_err(Into::into)
    }

    async fn room(&self, id: RoomId) -> Result<Option<Room>, StoreError> {
        self.0.room(id).await.map_err(Into::into)
    }

    async fn update_room(
        &self,
        id: RoomId,
        update: RoomUpdate,
    ) -> Result<Option<Room>, StoreError> {
        self.0.update_room(id, update).await.map_err(Into::into)
    }

    async fn delete_room(&self, id: RoomId) -> Result<bool, StoreError> {
        self.0.delete_room(id).await.map_err(Into::into)
    }

    async fn public_rooms(&self) -> Result<Vec<Room>, StoreError> {
        self.0.public_rooms().await.map_err(Into::into)
    }

    async fn rooms_of(&self, user: UserId) -> Result<Vec<Room>, StoreError> {
        self.0.rooms_of(user).await.map_err(Into::into)
    }

    async fn room_ids_of(&self, user: UserId) -> Result<Vec<RoomId>, StoreError> {
        self.0.room_ids_of(user).await.map_err(Into::into)
    }

    async fn add_member(&self, membership: Membership) -> Result<bool, StoreError> {
        self.0.add_member(membership).await.map_err(Into::into)
    }

    async fn remove_member(&self, room: RoomId, user: UserId) -> Result<bool, StoreError> {
        self.0.remove_member(room, user).await.map_err(Into::into)
    }

    async fn set_role(&self, room: RoomId, user: UserId, role: Role) -> Result<bool, StoreError> {
        self.0.set_role(room, user, role).await.map_err(Into::into)
    }

    async fn member(&self, room: RoomId, user: UserId) -> Result<Option<Membership>, StoreError> {
        self.0.member(room, user).await.map_err(Into::into)
    }

    async fn members(&self, room: RoomId) -> Result<Vec<Membership>, StoreError> {
        self.0.members(room).await.map_err(Into::into)
    }

    async fn append_message(&self, message: NewMessage) -> Result<AppendOutcome, StoreError> {
        self.0.append_message(message).await.map_err(Into::into)
    }

    async fn messages(
        &self,
        room: RoomId,
        query: HistoryPage,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.0
            .messages(room, query, limit)
            .await
            .map_err(Into::into)
    }

    async fn last_seq(&self, room: RoomId) -> Result<u64, StoreError> {
        self.0.last_seq(room).await.map_err(Into::into)
    }

    async fn put_session(&self, session: P2pSession) -> Result<(), StoreError> {
        self.0.put_session(session).await.map_err(Into::into)
    }

    async fn session(&self, id: SessionId) -> Result<Option<P2pSession>, StoreError> {
        self.0.session(id).await.map_err(Into::into)
    }

    async fn sessions_of(&self, user: UserId) -> Result<Vec<P2pSession>, StoreError> {
        self.0.sessions_of(user).await.map_err(Into::into)
    }

    async fn delete_session(&self, id: SessionId) -> Result<bool, StoreError> {
        self.0.delete_session(id).await.map_err(Into::into)
    }
}
