//! [`PgStore`]: the [`Store`] on PostgreSQL, the system of record when
//! several mesh-server nodes serve one deployment.
//!
//! - **Schema**: SQL files embedded in the binary (`postgres/*.sql`),
//!   applied at [`PgStore::connect`] in one transaction under an advisory
//!   lock, so nodes starting together apply each version once; the
//!   versions applied are in the `mesh_schema` table. A database newer than
//!   this build is refused ([`PgStoreError::NewerSchema`]).
//! - **seq**: each room's last `seq` is a row of `room_seqs`; an append
//!   increments it and inserts the message in one statement, so concurrent
//!   writers on any number of nodes queue on that row's lock: no gap, no
//!   duplicate, and a failed append gives its number back.
//! - **Idempotency**: a unique index on `(sender, room, client_id)`; a retry
//!   that races the original loses on the index and reads the original.
//! - **Durability**: every write is one committed statement or
//!   transaction; with PostgreSQL's defaults (`fsync`,
//!   `synchronous_commit = on`) it is on disk when the future resolves.
//! - **Failures**: a database that cannot be reached (connection refused or
//!   lost, shutting down, out of disk or connections) is
//!   [`StoreError::Unavailable`]: nothing acknowledged, retry later. The
//!   pool replaces broken connections, so the store recovers by itself when
//!   PostgreSQL is back.

use std::time::Duration;

/// The PostgreSQL client [`PgStore::from_config`] takes a configuration of.
pub use tokio_postgres;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;

use super::{
    AppendOutcome, DeviceRecord, HistoryPage, Membership, NewMessage, Page, RoomUpdate, Store,
    StoreError, UserRecord, clamp_limit,
};
use crate::protocol::{
    DeviceId, Message, P2pSession, PeerId, Role, Room, RoomId, SessionId, SessionKind,
    SessionState, Timestamp, User, UserId, Visibility,
};

/// The schema's versions, in order: `(version, SQL)`. Never edit one that
/// has shipped; add the next.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("postgres/0001_initial.sql"))];

/// The advisory lock migrations run under ("mesh" in ASCII).
const MIGRATION_LOCK: i64 = 0x6d65_7368;

/// Settings of a [`PgStore`] beyond its URL.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// The most connections this node opens (default 16).
    pub max_connections: usize,
    /// How long a call waits for a connection, a new one included, before
    /// failing as [`StoreError::Unavailable`] (default 5 s).
    pub connect_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The error of [`PgStore`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgStoreError {
    /// The URL could not be parsed.
    #[error("invalid PostgreSQL URL: {0}")]
    Url(#[source] tokio_postgres::Error),
    /// The database answered with an error, or could not be reached.
    #[error("PostgreSQL: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// No connection could be had in time.
    #[error("PostgreSQL connection pool: {0}")]
    Pool(#[from] PoolError),
    /// The connection pool could not be set up.
    #[error("PostgreSQL connection pool: {0}")]
    PoolBuild(#[from] deadpool_postgres::BuildError),
    /// A row holds what mesh never writes.
    #[error("corrupt record in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
    /// The database was migrated by a newer mesh-server.
    #[error(
        "the database's schema is version {found}, newer than this mesh-server knows \
         ({known}): run the newer mesh-server, or restore a backup taken before the upgrade"
    )]
    NewerSchema { found: i32, known: i32 },
}

impl PgStoreError {
    /// Whether this is the database being out of reach (or out of room)
    /// rather than a bug or bad data: worth retrying later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            PgStoreError::Db(e) => db_unavailable(e),
            PgStoreError::Pool(PoolError::Backend(e)) => db_unavailable(e),
            PgStoreError::Pool(
                PoolError::Timeout(_) | PoolError::Closed | PoolError::PostCreateHook(_),
            ) => true,
            _ => false,
        }
    }
}

fn db_unavailable(e: &tokio_postgres::Error) -> bool {
    let Some(db) = e.as_db_error() else {
        // No answer from the server: I/O, a closed connection, a timeout.
        return true;
    };
    let code = db.code().code();
    // 08: connection exception; 53: insufficient resources (disk full, too
    // many connections); 57P01-57P03: shutting down, cannot connect now.
    code.starts_with("08") || code.starts_with("53") || code.starts_with("57P0")
}

impl From<PgStoreError> for StoreError {
    fn from(e: PgStoreError) -> Self {
        if e.is_unavailable() {
            return StoreError::Unavailable(Box::new(e));
        }
        match e {
            PgStoreError::Corrupt { .. } => StoreError::Corrupt(e.to_string()),
            other => StoreError::backend(other),
        }
    }
}

type Result<T, E = PgStoreError> = std::result::Result<T, E>;

/// A [`Store`] on PostgreSQL. See the [module docs](self). Cheap to clone:
/// clones share one connection pool.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PgStore")
            .field("connections", &status.size)
            .field("max_connections", &status.max_size)
            .finish()
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`,
    /// or any form [`tokio_postgres::Config`] parses) and brings the schema
    /// up to date.
    pub async fn connect(url: &str, options: PgOptions) -> Result<Self> {
        let config: tokio_postgres::Config = url.parse().map_err(PgStoreError::Url)?;
        Self::from_config(config, options).await
    }

    /// As [`PgStore::connect`], from a parsed configuration.
    pub async fn from_config(
        mut config: tokio_postgres::Config,
        options: PgOptions,
    ) -> Result<Self> {
        if config.get_application_name().is_none() {
            config.application_name("mesh-server");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // A connection PostgreSQL closed is noticed and replaced.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// The schema version the database is at (after [`PgStore::connect`],
    /// the newest this build knows).
    pub async fn schema_version(&self) -> Result<i32> {
        let conn = self.pool.get().await?;
        let row = conn
            .query_one("SELECT coalesce(max(version), 0) FROM mesh_schema", &[])
            .await?;
        Ok(row.get(0))
    }

    async fn migrate(&self) -> Result<()> {
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS mesh_schema (
                 version    integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
        let found: i32 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM mesh_schema", &[])
            .await?
            .get(0);
        let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
        if found > known {
            return Err(PgStoreError::NewerSchema { found, known });
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
            tx.batch_execute(sql).await?;
            tx.execute("INSERT INTO mesh_schema (version) VALUES ($1)", &[version])
                .await?;
            tracing::info!(version, "PostgreSQL schema migrated");
        }
        tx.commit().await?;
        Ok(())
    }

    async fn conn(&self) -> Result<deadpool_postgres::Object> {
        Ok(self.pool.get().await?)
    }

    /// Runs `sql` with `params` and returns the rows.
    async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        let conn = self.conn().await?;
        let statement = conn.prepare_cached(sql).await?;
        Ok(conn.query(&statement, params).await?)
    }

    /// Runs `sql` and returns the number of rows it changed.
    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64> {
        let conn = self.conn().await?;
        let statement = conn.prepare_cached(sql).await?;
        Ok(conn.execute(&statement, params).await?)
    }

    async fn find_message(
        &self,
        sender: UserId,
        room: RoomId,
        client_id: &str,
    ) -> Result<Option<Message>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE sender_id = $1 AND room_id = $2 AND client_id = $3"
        );
        let rows = self
            .rows(&sql, &[sender.as_uuid(), room.as_uuid(), &client_id])
            .await?;
        rows.first().map(message_from).transpose()
    }
}

// ---- rows ----

const ROOM_COLUMNS: &str = "r.id, r.name, r.topic, r.visibility, r.created_by, r.created_at_ms,
     (SELECT count(*) FROM members m WHERE m.room_id = r.id)";
const MESSAGE_COLUMNS: &str = "room_id, seq, id, sender_id, sender_username, sender_display_name,
     sender_created_at_ms, content, created_at_ms, client_id";
const SESSION_COLUMNS: &str = "id, room_id, kind, initiator_peer_id, target_peer_id,
     initiator_user_id, target_user_id, state, created_at_ms, expires_at_ms";

fn corrupt(table: &'static str, reason: impl Into<String>) -> PgStoreError {
    PgStoreError::Corrupt {
        table,
        reason: reason.into(),
    }
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(ms)
}

fn user_from(row: &Row) -> Result<UserRecord> {
    Ok(UserRecord {
        user: User {
            id: UserId::from(row.try_get::<_, Uuid>(0)?),
            username: row.try_get(1)?,
            display_name: row.try_get(2)?,
            created_at: ts(row.try_get(3)?),
        },
        password_hash: row.try_get(4)?,
    })
}

fn device_from(row: &Row) -> Result<DeviceRecord> {
    Ok(DeviceRecord {
        id: DeviceId::from(row.try_get::<_, Uuid>(0)?),
        user_id: UserId::from(row.try_get::<_, Uuid>(1)?),
        name: row.try_get(2)?,
        created_at: ts(row.try_get(3)?),
        revoked: row.try_get(4)?,
    })
}

fn room_from(row: &Row) -> Result<Room> {
    let visibility: &str = row.try_get(3)?;
    let count: i64 = row.try_get(6)?;
    Ok(Room {
        id: RoomId::from(row.try_get::<_, Uuid>(0)?),
        name: row.try_get(1)?,
        topic: row.try_get(2)?,
        visibility: parse_visibility(visibility)?,
        created_by: UserId::from(row.try_get::<_, Uuid>(4)?),
        created_at: ts(row.try_get(5)?),
        member_count: u64::try_from(count).unwrap_or(0),
    })
}

fn membership_from(row: &Row) -> Result<Membership> {
    let role: &str = row.try_get(2)?;
    Ok(Membership {
        room_id: RoomId::from(row.try_get::<_, Uuid>(0)?),
        user_id: UserId::from(row.try_get::<_, Uuid>(1)?),
        role: parse_role(role)?,
        joined_at: ts(row.try_get(3)?),
    })
}

fn message_from(row: &Row) -> Result<Message> {
    let seq: i64 = row.try_get(1)?;
    let content: Vec<u8> = row.try_get(7)?;
    Ok(Message {
        room_id: RoomId::from(row.try_get::<_, Uuid>(0)?),
        seq: u64::try_from(seq).map_err(|_| corrupt("messages", format!("seq {seq}")))?,
        id: crate::protocol::MessageId::from(row.try_get::<_, Uuid>(2)?),
        sender: User {
            id: UserId::from(row.try_get::<_, Uuid>(3)?),
            username: row.try_get(4)?,
            display_name: row.try_get(5)?,
            created_at: ts(row.try_get(6)?),
        },
        content: String::from_utf8(content)
            .map_err(|_| corrupt("messages", format!("content of seq {seq} is not UTF-8")))?,
        created_at: ts(row.try_get(8)?),
        client_id: row.try_get(9)?,
    })
}

fn session_from(row: &Row) -> Result<P2pSession> {
    let kind: &str = row.try_get(2)?;
    let state: &str = row.try_get(7)?;
    Ok(P2pSession {
        id: SessionId::from(row.try_get::<_, Uuid>(0)?),
        room_id: RoomId::from(row.try_get::<_, Uuid>(1)?),
        kind: match kind {
            "file" => SessionKind::File,
            "folder" => SessionKind::Folder,
            "terminal" => SessionKind::Terminal,
            other => return Err(corrupt("p2p_sessions", format!("kind {other:?}"))),
        },
        initiator_peer_id: PeerId::from(row.try_get::<_, Uuid>(3)?),
        target_peer_id: PeerId::from(row.try_get::<_, Uuid>(4)?),
        initiator_user_id: UserId::from(row.try_get::<_, Uuid>(5)?),
        target_user_id: UserId::from(row.try_get::<_, Uuid>(6)?),
        state: match state {
            "pending" => SessionState::Pending,
            "closed" => SessionState::Closed,
            other => return Err(corrupt("p2p_sessions", format!("state {other:?}"))),
        },
        created_at: ts(row.try_get(8)?),
        expires_at: ts(row.try_get(9)?),
    })
}

fn visibility_str(v: Visibility) -> &'static str {
    match v {
        Visibility::Public => "public",
        Visibility::Private => "private",
    }
}

fn parse_visibility(s: &str) -> Result<Visibility> {
    match s {
        "public" => Ok(Visibility::Public),
        "private" => Ok(Visibility::Private),
        other => Err(corrupt("rooms", format!("visibility {other:?}"))),
    }
}

fn role_str(r: Role) -> &'static str {
    match r {
        Role::Member => "member",
        Role::Admin => "admin",
        Role::Owner => "owner",
    }
}

fn parse_role(s: &str) -> Result<Role> {
    match s {
        "member" => Ok(Role::Member),
        "admin" => Ok(Role::Admin),
        "owner" => Ok(Role::Owner),
        other => Err(corrupt("members", format!("role {other:?}"))),
    }
}

fn session_state_str(s: SessionState) -> &'static str {
    match s {
        SessionState::Pending => "pending",
        SessionState::Closed => "closed",
    }
}

/// A `seq` from the wire as PostgreSQL's `bigint`: the ones past its range
/// mean "beyond every message".
fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// The append: take the room's next seq and insert the message, in one
/// statement, unless `(sender, room, client_id)` is there already (then no
/// row comes back). A retry racing its original passes the `NOT EXISTS`
/// and fails on the unique index: the statement is undone, seq included.
const APPEND: &str = "
WITH earlier AS (
    SELECT 1 FROM messages
    WHERE $7::text IS NOT NULL AND sender_id = $3 AND room_id = $1 AND client_id = $7
), next AS (
    INSERT INTO room_seqs (room_id, last_seq)
    SELECT $1, 1 WHERE NOT EXISTS (SELECT 1 FROM earlier)
    ON CONFLICT (room_id) DO UPDATE SET last_seq = room_seqs.last_seq + 1
    RETURNING last_seq
)
INSERT INTO messages (room_id, seq, id, sender_id, sender_username, sender_display_name,
                      sender_created_at_ms, content, created_at_ms, client_id)
SELECT $1, next.last_seq, $2, $3, $4, $5, $6, $8, $9, $7 FROM next
RETURNING seq";

#[async_trait]
impl Store for PgStore {
    type Error = PgStoreError;

    async fn create_user(&self, record: UserRecord) -> Result<bool> {
        let u = &record.user;
        let n = self
            .execute(
                "INSERT INTO users (id, username, display_name, created_at_ms, password_hash)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[
                    u.id.as_uuid(),
                    &u.username,
                    &u.display_name,
                    &u.created_at.unix_millis(),
                    &record.password_hash,
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn user(&self, id: UserId) -> Result<Option<UserRecord>> {
        let rows = self
            .rows(
                "SELECT id, username, display_name, created_at_ms, password_hash
                 FROM users WHERE id = $1",
                &[id.as_uuid()],
            )
            .await?;
        rows.first().map(user_from).transpose()
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        let rows = self
            .rows(
                "SELECT id, username, display_name, created_at_ms, password_hash
                 FROM users WHERE username = $1",
                &[&username],
            )
            .await?;
        rows.first().map(user_from).transpose()
    }

    async fn put_device(&self, d: DeviceRecord) -> Result<()> {
        self.execute(
            "INSERT INTO devices (id, user_id, name, created_at_ms, revoked)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET user_id = EXCLUDED.user_id, name = EXCLUDED.name,
                 created_at_ms = EXCLUDED.created_at_ms, revoked = EXCLUDED.revoked",
            &[
                d.id.as_uuid(),
                d.user_id.as_uuid(),
                &d.name,
                &d.created_at.unix_millis(),
                &d.revoked,
            ],
        )
        .await?;
        Ok(())
    }

    async fn device(&self, id: DeviceId) -> Result<Option<DeviceRecord>> {
        let rows = self
            .rows(
                "SELECT id, user_id, name, created_at_ms, revoked FROM devices WHERE id = $1",
                &[id.as_uuid()],
            )
            .await?;
        rows.first().map(device_from).transpose()
    }

    async fn devices_of(&self, user: UserId) -> Result<Vec<DeviceRecord>> {
        let rows = self
            .rows(
                "SELECT id, user_id, name, created_at_ms, revoked FROM devices
                 WHERE user_id = $1 ORDER BY created_at_ms, id",
                &[user.as_uuid()],
            )
            .await?;
        rows.iter().map(device_from).collect()
    }

    async fn create_room(&self, room: Room, owner: Membership) -> Result<()> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        tx.execute(
            "INSERT INTO rooms (id, name, topic, visibility, created_by, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, topic = EXCLUDED.topic,
                 visibility = EXCLUDED.visibility, created_by = EXCLUDED.created_by,
                 created_at_ms = EXCLUDED.created_at_ms",
            &[
                room.id.as_uuid(),
                &room.name,
                &room.topic,
                &visibility_str(room.visibility),
                room.created_by.as_uuid(),
                &room.created_at.unix_millis(),
            ],
        )
        .await?;
        tx.execute(
            "INSERT INTO members (room_id, user_id, role, joined_at_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (room_id, user_id) DO UPDATE SET role = EXCLUDED.role,
                 joined_at_ms = EXCLUDED.joined_at_ms",
            &[
                room.id.as_uuid(),
                owner.user_id.as_uuid(),
                &role_str(owner.role),
                &owner.joined_at.unix_millis(),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn room(&self, id: RoomId) -> Result<Option<Room>> {
        let sql = format!("SELECT {ROOM_COLUMNS} FROM rooms r WHERE r.id = $1");
        let rows = self.rows(&sql, &[id.as_uuid()]).await?;
        rows.first().map(room_from).transpose()
    }

    async fn update_room(&self, id: RoomId, update: RoomUpdate) -> Result<Option<Room>> {
        let (set_topic, topic) = match update.topic {
            Some(topic) => (true, topic),
            None => (false, None),
        };
        let sql = format!(
            "WITH updated AS (
                 UPDATE rooms SET name = coalesce($2, name),
                     topic = CASE WHEN $3 THEN $4 ELSE topic END,
                     visibility = coalesce($5, visibility)
                 WHERE id = $1 RETURNING *
             )
             SELECT {ROOM_COLUMNS} FROM updated r"
        );
        let rows = self
            .rows(
                &sql,
                &[
                    id.as_uuid(),
                    &update.name,
                    &set_topic,
                    &topic,
                    &update.visibility.map(visibility_str),
                ],
            )
            .await?;
        rows.first().map(room_from).transpose()
    }

    async fn delete_room(&self, id: RoomId) -> Result<bool> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let room = id.as_uuid();
        if tx
            .execute("DELETE FROM rooms WHERE id = $1", &[room])
            .await?
            == 0
        {
            return Ok(false);
        }
        for table in ["members", "messages", "room_seqs", "p2p_sessions"] {
            tx.execute(&format!("DELETE FROM {table} WHERE room_id = $1"), &[room])
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn public_rooms(&self) -> Result<Vec<Room>> {
        let sql = format!(
            "SELECT {ROOM_COLUMNS} FROM rooms r WHERE r.visibility = 'public'
             ORDER BY r.created_at_ms, r.id"
        );
        let rows = self.rows(&sql, &[]).await?;
        rows.iter().map(room_from).collect()
    }

    async fn rooms_of(&self, user: UserId) -> Result<Vec<Room>> {
        let sql = format!(
            "SELECT {ROOM_COLUMNS} FROM members me JOIN rooms r ON r.id = me.room_id
             WHERE me.user_id = $1 ORDER BY r.created_at_ms, r.id"
        );
        let rows = self.rows(&sql, &[user.as_uuid()]).await?;
        rows.iter().map(room_from).collect()
    }

    async fn room_ids_of(&self, user: UserId) -> Result<Vec<RoomId>> {
        let rows = self
            .rows(
                "SELECT m.room_id FROM members m JOIN rooms r ON r.id = m.room_id
                 WHERE m.user_id = $1",
                &[user.as_uuid()],
            )
            .await?;
        rows.iter()
            .map(|row| Ok(RoomId::from(row.try_get::<_, Uuid>(0)?)))
            .collect()
    }

    async fn add_member(&self, m: Membership) -> Result<bool> {
        let n = self
            .execute(
                "INSERT INTO members (room_id, user_id, role, joined_at_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
                &[
                    m.room_id.as_uuid(),
                    m.user_id.as_uuid(),
                    &role_str(m.role),
                    &m.joined_at.unix_millis(),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn remove_member(&self, room: RoomId, user: UserId) -> Result<bool> {
        let n = self
            .execute(
                "DELETE FROM members WHERE room_id = $1 AND user_id = $2",
                &[room.as_uuid(), user.as_uuid()],
            )
            .await?;
        Ok(n == 1)
    }

    async fn set_role(&self, room: RoomId, user: UserId, role: Role) -> Result<bool> {
        let n = self
            .execute(
                "UPDATE members SET role = $3 WHERE room_id = $1 AND user_id = $2",
                &[room.as_uuid(), user.as_uuid(), &role_str(role)],
            )
            .await?;
        Ok(n == 1)
    }

    async fn member(&self, room: RoomId, user: UserId) -> Result<Option<Membership>> {
        let rows = self
            .rows(
                "SELECT room_id, user_id, role, joined_at_ms FROM members
                 WHERE room_id = $1 AND user_id = $2",
                &[room.as_uuid(), user.as_uuid()],
            )
            .await?;
        rows.first().map(membership_from).transpose()
    }

    async fn members(&self, room: RoomId) -> Result<Vec<Membership>> {
        let rows = self
            .rows(
                "SELECT room_id, user_id, role, joined_at_ms FROM members
                 WHERE room_id = $1 ORDER BY joined_at_ms, user_id",
                &[room.as_uuid()],
            )
            .await?;
        rows.iter().map(membership_from).collect()
    }

    async fn append_message(&self, m: NewMessage) -> Result<AppendOutcome> {
        let content = m.content.as_bytes();
        // Twice at most: a duplicate seen but gone before it could be read
        // (its room deleted in between) appends afresh.
        for _ in 0..2 {
            let inserted = self
                .rows(
                    APPEND,
                    &[
                        m.room_id.as_uuid(),
                        m.id.as_uuid(),
                        m.sender.id.as_uuid(),
                        &m.sender.username,
                        &m.sender.display_name,
                        &m.sender.created_at.unix_millis(),
                        &m.client_id,
                        &content,
                        &m.created_at.unix_millis(),
                    ],
                )
                .await;
            // No row: `(sender, room, client_id)` is there already; a unique
            // violation: it got there while this statement ran.
            match inserted {
                Ok(rows) => {
                    if let Some(row) = rows.first() {
                        let seq: i64 = row.try_get(0)?;
                        return Ok(AppendOutcome::Created(Message {
                            id: m.id,
                            room_id: m.room_id,
                            seq: u64::try_from(seq)
                                .map_err(|_| corrupt("room_seqs", format!("seq {seq}")))?,
                            sender: m.sender,
                            content: m.content,
                            created_at: m.created_at,
                            client_id: m.client_id,
                        }));
                    }
                }
                Err(PgStoreError::Db(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
                Err(e) => return Err(e),
            }
            if let Some(client_id) = &m.client_id
                && let Some(earlier) = self.find_message(m.sender.id, m.room_id, client_id).await?
            {
                return Ok(AppendOutcome::Duplicate(earlier));
            }
        }
        Err(corrupt(
            "messages",
            "an append neither stored the message nor found an earlier one",
        ))
    }

    async fn messages(&self, room: RoomId, query: HistoryPage, limit: usize) -> Result<Page> {
        let limit = clamp_limit(limit);
        // One more than asked, to learn whether there is more.
        let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
        let (newest_first, bound) = match query {
            HistoryPage::Latest => (true, i64::MAX),
            HistoryPage::Before(seq) => (true, seq_param(seq)),
            HistoryPage::After(seq) => (false, seq_param(seq)),
        };
        let sql = if newest_first {
            format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE room_id = $1 AND seq < $2
                 ORDER BY seq DESC LIMIT $3"
            )
        } else {
            format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE room_id = $1 AND seq > $2
                 ORDER BY seq ASC LIMIT $3"
            )
        };
        let rows = self.rows(&sql, &[room.as_uuid(), &bound, &fetch]).await?;
        let has_more = rows.len() > limit;
        let mut messages = rows
            .iter()
            .take(limit)
            .map(message_from)
            .collect::<Result<Vec<_>>>()?;
        if newest_first {
            messages.reverse();
        }
        Ok(Page { messages, has_more })
    }

    async fn last_seq(&self, room: RoomId) -> Result<u64> {
        let rows = self
            .rows(
                "SELECT last_seq FROM room_seqs WHERE room_id = $1",
                &[room.as_uuid()],
            )
            .await?;
        match rows.first() {
            None => Ok(0),
            Some(row) => {
                let seq: i64 = row.try_get(0)?;
                u64::try_from(seq).map_err(|_| corrupt("room_seqs", format!("seq {seq}")))
            }
        }
    }

    async fn last_seqs(&self, rooms: &[RoomId]) -> Result<Vec<u64>> {
        let ids: Vec<Uuid> = rooms.iter().map(|r| *r.as_uuid()).collect();
        let rows = self
            .rows(
                "SELECT room_id, last_seq FROM room_seqs WHERE room_id = ANY($1)",
                &[&ids],
            )
            .await?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let seq: i64 = row.try_get(1)?;
            let seq = u64::try_from(seq).map_err(|_| corrupt("room_seqs", format!("seq {seq}")))?;
            found.insert(row.try_get::<_, Uuid>(0)?, seq);
        }
        Ok(ids
            .iter()
            .map(|id| found.get(id).copied().unwrap_or(0))
            .collect())
    }

    async fn put_session(&self, s: P2pSession) -> Result<()> {
        self.execute(
            "INSERT INTO p2p_sessions (id, room_id, kind, initiator_peer_id, target_peer_id,
                 initiator_user_id, target_user_id, state, created_at_ms, expires_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (id) DO UPDATE SET room_id = EXCLUDED.room_id, kind = EXCLUDED.kind,
                 initiator_peer_id = EXCLUDED.initiator_peer_id,
                 target_peer_id = EXCLUDED.target_peer_id,
                 initiator_user_id = EXCLUDED.initiator_user_id,
                 target_user_id = EXCLUDED.target_user_id, state = EXCLUDED.state,
                 created_at_ms = EXCLUDED.created_at_ms, expires_at_ms = EXCLUDED.expires_at_ms",
            &[
                s.id.as_uuid(),
                s.room_id.as_uuid(),
                &s.kind.as_str(),
                s.initiator_peer_id.as_uuid(),
                s.target_peer_id.as_uuid(),
                s.initiator_user_id.as_uuid(),
                s.target_user_id.as_uuid(),
                &session_state_str(s.state),
                &s.created_at.unix_millis(),
                &s.expires_at.unix_millis(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn session(&self, id: SessionId) -> Result<Option<P2pSession>> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM p2p_sessions WHERE id = $1");
        let rows = self.rows(&sql, &[id.as_uuid()]).await?;
        rows.first().map(session_from).transpose()
    }

    async fn sessions_of(&self, user: UserId) -> Result<Vec<P2pSession>> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM p2p_sessions
             WHERE initiator_user_id = $1 OR target_user_id = $1
             ORDER BY created_at_ms, id"
        );
        let rows = self.rows(&sql, &[user.as_uuid()]).await?;
        rows.iter().map(session_from).collect()
    }

    async fn ping(&self) -> Result<()> {
        let conn = self.conn().await?;
        conn.simple_query("SELECT 1").await?;
        Ok(())
    }

    async fn delete_session(&self, id: SessionId) -> Result<bool> {
        let n = self
            .execute("DELETE FROM p2p_sessions WHERE id = $1", &[id.as_uuid()])
            .await?;
        Ok(n == 1)
    }
}
