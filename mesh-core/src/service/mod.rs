//! The service: storage, auth and the engine, tied together.
//!
//! [`Service`] is what a server (or an app that embeds mesh) drives. It
//! validates input, checks permissions, persists through the [`Store`],
//! and tells the sans-IO [`Engine`] what happened; the engine's output is
//! delivered to [`Connection`]s by the hub. Every method returns the
//! contract's [`Error`], which a server maps to HTTP in one place.
//!
//! The engine lives behind a std `Mutex`: its critical sections are short
//! and never await, so an async mutex would only add cost (the same choice
//! mini-redis makes for its `Db`). Storage is awaited outside the lock.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mesh_core::Error> {
//! use mesh_core::service::Service;
//! use mesh_core::storage::memory::MemoryStore;
//!
//! // Inside a tokio runtime: the service runs its timers (heartbeats,
//! // typing, session expiry) there from the start.
//! let service = Service::builder().store(MemoryStore::new()).build()?;
//! # Ok(()) }
//! ```
//!
//! [`Store`]: crate::storage::Store
//! [`Connection`]: crate::transport::Connection

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::auth::tokens::{self, MAX_CAPABILITY_TTL};
use crate::auth::{Authenticator, Identity, JwtAuthenticator, KeyRing, Scope};
use crate::cluster::ClusterEvent;
use crate::engine::{Engine, EngineConfig};
use crate::error::{Error, Result};
use crate::protocol::http::{
    AuthResponse, CapabilityRequest, CapabilityResponse, CreateRoomRequest, Device, InviteRequest,
    LoginRequest, RegisterRequest, UpdateRoomRequest,
};
use crate::protocol::http::{HistoryQuery, Peer};
use crate::protocol::{
    DeviceId, Member, P2pSession, PeerId, Role, Room, RoomId, SessionId, SessionKind, Timestamp,
    User, UserId, Visibility,
};
use crate::storage::memory::MemoryStore;
use crate::storage::{
    DeviceRecord, DynStore, IntoDynStore, MAX_PAGE, Membership, Page, RoomUpdate, UserRecord,
};
use crate::validate;

mod cluster;
pub use cluster::{AcmeNotice, RelayReport};
mod connection;
mod hashing;
mod hub;
pub mod limits;
mod users;

pub use connection::{Flow, PeerConnection};
use hashing::HashPool;
use hub::Hub;
use limits::{FrameRate, LoginLimiter, LoginRate};

/// Settings of a [`Service`].
#[derive(Clone, Debug, Default)]
pub struct ServiceConfig {
    pub engine: EngineConfig,
    /// The per-connection frame rate limit.
    pub frame_rate: FrameRate,
    /// The login attempt limits.
    pub login_rate: LoginRate,
}

/// Builds a [`Service`]: an in-memory store and a fresh key ring unless told
/// otherwise.
#[derive(Debug, Default)]
pub struct ServiceBuilder {
    store: Option<Arc<DynStore>>,
    auth: Option<Arc<dyn Authenticator>>,
    config: ServiceConfig,
}

impl ServiceBuilder {
    /// Uses `store` for persistence.
    pub fn store(mut self, store: impl IntoDynStore) -> Self {
        self.store = Some(store.into_dyn());
        self
    }

    /// Uses an already erased store.
    pub fn dyn_store(mut self, store: Arc<DynStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Uses `auth` to check passwords and tokens.
    pub fn authenticator(mut self, auth: impl Authenticator) -> Self {
        self.auth = Some(Arc::new(auth));
        self
    }

    /// Uses the default authenticator with these keys.
    pub fn keys(mut self, keys: KeyRing) -> Self {
        self.auth = Some(Arc::new(JwtAuthenticator::new(Arc::new(keys))));
        self
    }

    pub fn config(mut self, config: ServiceConfig) -> Self {
        self.config = config;
        self
    }

    /// The service, its timers running on the current tokio runtime.
    /// Fails outside a runtime.
    pub fn build(self) -> Result<Service> {
        let store = match self.store {
            Some(s) => s,
            None => MemoryStore::new().into_dyn(),
        };
        let auth = match self.auth {
            Some(a) => a,
            None => Arc::new(JwtAuthenticator::new(Arc::new(KeyRing::generate()?))),
        };
        // The timers (heartbeats, typing, session expiry) run on the
        // runtime the service is built in, from the start: an embedder
        // cannot forget them.
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            Error::Internal(crate::Failure::caused_by(
                "Service::build must be called inside a tokio runtime: the service runs its timers there",
                e,
            ))
        })?;
        let engine = Engine::new(self.config.engine.clone());
        let timers = Arc::new(tokio::sync::Notify::new());
        let inner = Arc::new(Inner {
            store,
            auth,
            hub: Mutex::new(Hub::new(engine)),
            logins: Mutex::new(LoginLimiter::new(self.config.login_rate)),
            hashing: HashPool::per_core(),
            timers: timers.clone(),
            next_timer: AtomicI64::new(i64::MAX),
            users: users::UserCache::new(users::UserCache::CAPACITY),
            config: self.config,
            cluster: std::sync::OnceLock::new(),
            directory: Mutex::new(Default::default()),
            appending: Mutex::new(Default::default()),
            relay_reports: Mutex::new(None),
            acme_challenges: Mutex::new(None),
        });
        runtime.spawn(run_timers(Arc::downgrade(&inner), timers));
        Ok(Service { inner })
    }
}

/// Fires the engine's timers (heartbeats, typing, session expiry) as they
/// fall due, for as long as the service lives: it holds the service only
/// while firing, and ends once every clone is dropped (`Inner`'s drop
/// wakes it).
async fn run_timers(service: std::sync::Weak<Inner>, wake: Arc<tokio::sync::Notify>) {
    loop {
        let notified = wake.notified();
        let next = {
            let Some(inner) = service.upgrade() else {
                return;
            };
            let next = lock(&inner.hub).engine.poll_timeout();
            inner.next_timer.store(
                next.map_or(i64::MAX, Timestamp::unix_millis),
                Ordering::Relaxed,
            );
            next
        };
        match next {
            Some(deadline) => {
                let wait = deadline.since(Timestamp::now());
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = notified => continue,
                }
            }
            None => {
                notified.await;
                continue;
            }
        }
        let Some(inner) = service.upgrade() else {
            return;
        };
        Service { inner }.with_engine(|engine, now| engine.handle_timeout(now));
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Ends `run_timers` if it waits for a deadline that never comes.
        self.timers.notify_one();
    }
}

/// The mesh service. Cheap to clone: clones share state.
#[derive(Clone, Debug)]
pub struct Service {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<DynStore>,
    auth: Arc<dyn Authenticator>,
    hub: Mutex<Hub>,
    logins: Mutex<LoginLimiter>,
    /// Password hashing: one low-priority thread per core.
    hashing: HashPool,
    /// Wakes the timer task (`run_timers`) when an earlier deadline appears.
    timers: Arc<tokio::sync::Notify>,
    /// The deadline `run_timers` sleeps until, in Unix ms.
    next_timer: AtomicI64,
    /// User records read from the store (they never change).
    users: users::UserCache,
    config: ServiceConfig,
    /// The link to the other nodes, once [`Service::join_cluster`] ran.
    cluster: std::sync::OnceLock<cluster::ClusterLink>,
    /// Presence on the other nodes.
    directory: Mutex<crate::cluster::directory::Directory>,
    /// Messages being stored and announced by this node (see
    /// `cluster::Service::appending`).
    appending: Mutex<std::collections::HashSet<crate::protocol::MessageId>>,
    /// Where the other nodes' relay reports go (see
    /// `cluster::Service::relay_usage_reports`).
    relay_reports: Mutex<Option<tokio::sync::mpsc::Sender<cluster::RelayReport>>>,
    /// Where the other nodes' ACME challenge answers go (see
    /// `cluster::Service::acme_challenges`).
    acme_challenges: Mutex<Option<tokio::sync::mpsc::Sender<cluster::AcmeNotice>>>,
}

/// Locks a mutex even if a panicking thread poisoned it: the engine's state
/// is updated in single steps, so it stays consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A password hash to check against when the user does not exist, so a
/// login for an unknown name costs as long as one with a wrong password.
fn dummy_hash(auth: &dyn Authenticator) -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        auth.hash_password("mesh-dummy-password")
            .unwrap_or_default()
    })
}

impl Service {
    pub fn builder() -> ServiceBuilder {
        ServiceBuilder::default()
    }

    /// The store behind the service.
    pub fn store(&self) -> &Arc<DynStore> {
        &self.inner.store
    }

    /// The authenticator behind the service.
    pub fn authenticator(&self) -> &Arc<dyn Authenticator> {
        &self.inner.auth
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    /// Runs `f` on the engine, then delivers its output. Never awaits with
    /// the lock held.
    fn with_engine<R>(&self, f: impl FnOnce(&mut Engine, Timestamp) -> R) -> R {
        self.with_hub(|hub, now| f(&mut hub.engine, now))
    }

    fn with_hub<R>(&self, f: impl FnOnce(&mut Hub, Timestamp) -> R) -> R {
        let now = Timestamp::now();
        let (result, dispatched, next) = {
            let mut hub = lock(&self.inner.hub);
            let result = f(&mut hub, now);
            let dispatched = hub.dispatch(now);
            (result, dispatched, hub.engine.poll_timeout())
        };
        if let Some(next) = next
            && next.unix_millis() < self.inner.next_timer.load(Ordering::Relaxed)
        {
            self.inner.timers.notify_one();
        }
        for presence in dispatched.presence {
            self.publish(ClusterEvent::Presence { presence });
        }
        for (session_id, reason) in dispatched.ended_elsewhere {
            self.publish(ClusterEvent::SessionClosed { session_id, reason });
        }
        self.room_interest(dispatched.interest);
        self.forget_sessions(dispatched.ended);
        result
    }

    /// Removes ended P2P sessions from the store, in the background.
    fn forget_sessions(&self, ended: Vec<SessionId>) {
        if ended.is_empty() {
            return;
        }
        let store = self.inner.store.clone();
        let remove = async move {
            for id in ended {
                if let Err(e) = store.delete_session(id).await {
                    tracing::warn!(session = %id, error = %e, "could not remove an ended P2P session");
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(remove);
            }
            Err(_) => tracing::warn!("no tokio runtime: ended P2P sessions stay in the store"),
        }
    }

    /// Runs CPU-heavy work (password hashing) off the async threads, on
    /// the [`HashPool`]: one job per core at a time, at a lower OS priority
    /// than the runtime's threads. The rest wait their turn.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Authenticator) -> T + Send + 'static,
    ) -> Result<T> {
        let auth = self.inner.auth.clone();
        self.inner.hashing.run(move || f(auth.as_ref())).await
    }

    fn check_login_rate(&self, username: Option<&str>, addr: Option<IpAddr>) -> Result<()> {
        lock(&self.inner.logins)
            .before_attempt(username, addr, Timestamp::now())
            .map_err(|wait| Error::RateLimited {
                retry_after_ms: wait.as_millis().max(1) as u64,
            })
    }

    // ---------------------------------------------------------------- accounts

    /// Creates an account and logs its first device in.
    ///
    /// A server that knows the client's address calls [`Self::register_from`]
    /// instead, so that the per-address sign-up limit applies.
    pub async fn register(&self, req: RegisterRequest) -> Result<AuthResponse> {
        self.register_as(req, None).await
    }

    /// [`Self::register`] for a client at `addr`: sign-ups are rate limited
    /// per address (the limit is [`ServiceConfig::login_rate`]).
    pub async fn register_from(&self, addr: IpAddr, req: RegisterRequest) -> Result<AuthResponse> {
        self.register_as(req, Some(addr)).await
    }

    async fn register_as(
        &self,
        req: RegisterRequest,
        addr: Option<IpAddr>,
    ) -> Result<AuthResponse> {
        let username = validate::username(&req.username)?;
        validate::password(&req.password)?;
        let display_name = validate::display_name(req.display_name.as_deref(), &username)?;
        let device_name = validate::device_name(req.device_name.as_deref())?;
        self.check_login_rate(None, addr)?;
        let store = &self.inner.store;
        if store.user_by_name(&username).await?.is_some() {
            return Err(Error::Conflict(format!("username {username:?} is taken")));
        }
        let password = req.password;
        let password_hash = self
            .blocking(move |auth| auth.hash_password(&password))
            .await??;
        let user = User {
            id: UserId::new(),
            username: username.clone(),
            display_name,
            created_at: Timestamp::now(),
        };
        let created = store
            .create_user(UserRecord {
                user: user.clone(),
                password_hash,
            })
            .await?;
        if !created {
            return Err(Error::Conflict(format!("username {username:?} is taken")));
        }
        tracing::info!(user = %user.id, %username, "registered");
        self.new_device(user, device_name).await
    }

    /// Checks a username and password and logs a new device in. Wrong name
    /// and wrong password get the same answer, in the same time.
    ///
    /// A server that knows the client's address calls [`Self::login_from`]
    /// instead, so that the per-address limit applies too.
    pub async fn login(&self, req: LoginRequest) -> Result<AuthResponse> {
        self.login_as(req, None).await
    }

    /// [`Self::login`] for a client at `addr`: attempts are rate limited per
    /// username and per address (the limit is [`ServiceConfig::login_rate`]).
    pub async fn login_from(&self, addr: IpAddr, req: LoginRequest) -> Result<AuthResponse> {
        self.login_as(req, Some(addr)).await
    }

    async fn login_as(&self, req: LoginRequest, addr: Option<IpAddr>) -> Result<AuthResponse> {
        let wrong = || Error::Unauthorized("wrong username or password".into());
        let username = req.username.to_ascii_lowercase();
        self.check_login_rate(Some(&username), addr)?;
        let device_name = validate::device_name(req.device_name.as_deref())?;
        let record = match validate::username(&username) {
            Ok(name) => self.inner.store.user_by_name(&name).await?,
            Err(_) => None,
        };
        let hash = record.as_ref().map(|r| r.password_hash.clone());
        let password = req.password;
        let ok = self
            .blocking(move |auth| {
                let hash = hash.unwrap_or_else(|| dummy_hash(auth).to_owned());
                auth.verify_password(&password, &hash)
            })
            .await??;
        match record {
            Some(record) if ok => self.new_device(record.user, device_name).await,
            _ => {
                lock(&self.inner.logins).failed(&username, Timestamp::now());
                Err(wrong())
            }
        }
    }

    async fn new_device(&self, user: User, name: String) -> Result<AuthResponse> {
        let now = Timestamp::now();
        let device = DeviceRecord {
            id: DeviceId::new(),
            user_id: user.id,
            name,
            created_at: now,
            revoked: false,
        };
        self.inner.store.put_device(device.clone()).await?;
        let issued = self
            .inner
            .auth
            .issue_access_token(user.id, device.id, now)?;
        Ok(AuthResponse {
            user,
            token: issued.token,
            expires_at: issued.expires_at,
            device_id: device.id,
        })
    }

    /// Turns a bearer token into an identity: signature, expiry, and that
    /// its device is not revoked.
    pub async fn authenticate(&self, token: &str) -> Result<Identity> {
        let identity = self.inner.auth.authenticate(token, Timestamp::now())?;
        // Devices are never deleted, only revoked. A token naming a device
        // the store does not know comes from an external authenticator.
        if let Some(device) = self.inner.store.device(identity.device_id).await?
            && (device.revoked || device.user_id != identity.user_id)
        {
            return Err(Error::Unauthorized("this device was signed out".into()));
        }
        Ok(identity)
    }

    /// The user behind an identity.
    pub async fn me(&self, identity: &Identity) -> Result<User> {
        self.user(identity.user_id).await
    }

    async fn user(&self, id: UserId) -> Result<User> {
        self.cached_user(id)
            .await?
            .ok_or_else(|| Error::Unauthorized("no such user".into()))
    }

    /// A user's public record, from the cache or the store.
    async fn cached_user(&self, id: UserId) -> Result<Option<User>> {
        if let Some(user) = self.inner.users.get(id) {
            return Ok(Some(user));
        }
        let user = self.inner.store.user(id).await?.map(|r| r.user);
        if let Some(u) = &user {
            self.inner.users.insert(u);
        }
        Ok(user)
    }

    fn require(identity: &Identity, scope: Scope) -> Result<()> {
        if identity.allows(scope) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "this capability token does not allow {}",
                serde_json::to_string(&scope).unwrap_or_default()
            )))
        }
    }

    /// Refuses capability tokens: what no scope covers (managing rooms and
    /// devices) needs the account's own access token.
    fn require_access_token(identity: &Identity, what: &str) -> Result<()> {
        if identity.scope.is_some() {
            return Err(Error::Forbidden(format!(
                "capability tokens cannot {what}; use an access token"
            )));
        }
        Ok(())
    }

    /// The server's public signing keys as a JWK Set.
    pub fn keys(&self) -> serde_json::Value {
        self.inner.auth.keys().jwks()
    }

    /// Issues a short-lived capability token scoped down from `identity`.
    pub fn capability(
        &self,
        identity: &Identity,
        req: CapabilityRequest,
    ) -> Result<CapabilityResponse> {
        if req.scope.is_empty() {
            return Err(Error::InvalidRequest(
                "scope must name at least one capability".into(),
            ));
        }
        let ttl = Duration::from_secs(req.ttl_secs.unwrap_or(300));
        if ttl.is_zero() || ttl > MAX_CAPABILITY_TTL {
            return Err(Error::InvalidRequest(format!(
                "ttl_secs must be 1 to {}",
                MAX_CAPABILITY_TTL.as_secs()
            )));
        }
        let issued = tokens::issue_capability(
            self.inner.auth.keys(),
            identity,
            req.scope,
            ttl,
            Timestamp::now(),
        )
        .map_err(|e| match e {
            crate::auth::AuthError::OutOfScope(s) => {
                Error::Forbidden(format!("cannot widen a capability: {s}"))
            }
            other => other.into(),
        })?;
        Ok(CapabilityResponse {
            capability_token: issued.token,
            expires_at: issued.expires_at,
        })
    }

    /// The caller's devices.
    pub async fn devices(&self, identity: &Identity) -> Result<Vec<Device>> {
        Self::require_access_token(identity, "list devices")?;
        let mut devices: Vec<Device> = self
            .inner
            .store
            .devices_of(identity.user_id)
            .await?
            .into_iter()
            .map(|d| Device {
                current: d.id == identity.device_id,
                id: d.id,
                name: d.name,
                created_at: d.created_at,
                revoked: d.revoked,
            })
            .collect();
        devices.sort_by_key(|d| d.created_at);
        Ok(devices)
    }

    /// Signs a device out: its tokens stop working and its connections close.
    pub async fn revoke_device(&self, identity: &Identity, device: DeviceId) -> Result<()> {
        Self::require_access_token(identity, "revoke devices")?;
        let store = &self.inner.store;
        let mut record = match store.device(device).await? {
            Some(d) if d.user_id == identity.user_id => d,
            _ => return Err(Error::NotFound("no such device".into())),
        };
        if !record.revoked {
            record.revoked = true;
            store.put_device(record).await?;
        }
        self.with_engine(|engine, now| engine.revoke_device(now, device));
        self.publish(ClusterEvent::DeviceRevoked { device_id: device });
        Ok(())
    }

    // ------------------------------------------------------------------ rooms

    async fn membership(&self, room: RoomId, user: UserId) -> Result<Option<Membership>> {
        Ok(self.inner.store.member(room, user).await?)
    }

    /// The room if the user may see it: public, or private and a member.
    async fn visible_room(&self, identity: &Identity, id: RoomId) -> Result<Room> {
        let not_found = || Error::NotFound("no such room".into());
        let room = self.inner.store.room(id).await?.ok_or_else(not_found)?;
        if room.visibility == Visibility::Private
            && self.membership(id, identity.user_id).await?.is_none()
        {
            return Err(not_found());
        }
        Ok(room)
    }

    /// The caller's membership: `NotFound` for a room the caller cannot see
    /// (none, or private and not a member), `Forbidden` for a public room it
    /// is not in. Every room handler calls this (or [`Self::visible_room`])
    /// before it looks at anything else, so a non-member learns nothing
    /// about a room from the answers.
    async fn require_member(&self, identity: &Identity, room: RoomId) -> Result<Membership> {
        self.visible_room(identity, room).await?;
        self.membership(room, identity.user_id)
            .await?
            .ok_or_else(|| Error::Forbidden("you are not a member of this room".into()))
    }

    /// Creates a room; the creator is its owner.
    pub async fn create_room(&self, identity: &Identity, req: CreateRoomRequest) -> Result<Room> {
        Self::require(identity, Scope::MessagesWrite)?;
        let name = validate::room_name(&req.name)?;
        let topic = validate::topic(req.topic.as_deref())?;
        let user = self.me(identity).await?;
        let now = Timestamp::now();
        let room = Room {
            id: RoomId::new(),
            name,
            topic,
            visibility: req.visibility.unwrap_or_default(),
            created_by: user.id,
            created_at: now,
            member_count: 1,
        };
        let owner = Membership {
            room_id: room.id,
            user_id: user.id,
            role: Role::Owner,
            joined_at: now,
        };
        self.inner.store.create_room(room.clone(), owner).await?;
        self.with_engine(|engine, now| engine.member_added(now, room.id, &user));
        self.publish(ClusterEvent::MemberJoined {
            room_id: room.id,
            user: user.clone(),
        });
        Ok(room)
    }

    /// Public rooms and the private rooms the caller belongs to, oldest first.
    pub async fn list_rooms(&self, identity: &Identity) -> Result<Vec<Room>> {
        Self::require(identity, Scope::RoomsRead)?;
        let store = &self.inner.store;
        let mut rooms: BTreeMap<RoomId, Room> = BTreeMap::new();
        for room in store.public_rooms().await? {
            rooms.insert(room.id, room);
        }
        for room in store.rooms_of(identity.user_id).await? {
            rooms.insert(room.id, room);
        }
        let mut rooms: Vec<Room> = rooms.into_values().collect();
        rooms.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(rooms)
    }

    /// One room; `NotFound` for a private room the caller is not in.
    pub async fn get_room(&self, identity: &Identity, id: RoomId) -> Result<Room> {
        Self::require(identity, Scope::RoomsRead)?;
        self.visible_room(identity, id).await
    }

    /// Members of a room, with their presence: members only, like the
    /// history and the peers (a public room's outsiders see its
    /// `member_count`, not who is in it or who is online).
    pub async fn members(&self, identity: &Identity, id: RoomId) -> Result<Vec<Member>> {
        Self::require(identity, Scope::RoomsRead)?;
        self.require_member(identity, id).await?;
        self.member_list(id).await
    }

    /// The peers (connections) online in a room, members only: how an
    /// agent finds whom to open a P2P session with.
    pub async fn peers(&self, identity: &Identity, id: RoomId) -> Result<Vec<Peer>> {
        Self::require(identity, Scope::RoomsRead)?;
        self.require_member(identity, id).await?;
        let hub = lock(&self.inner.hub);
        let mut peers: Vec<Peer> = hub
            .conns
            .keys()
            .filter(|peer| hub.engine.is_subscribed(**peer, id))
            .filter_map(|peer| hub.engine.peer(*peer))
            .map(|info| Peer {
                peer_id: info.peer_id,
                user: info.user.clone(),
                p2p: info.p2p.clone(),
            })
            .collect();
        peers.sort_by(|a, b| (&a.user.username, a.peer_id).cmp(&(&b.user.username, b.peer_id)));
        Ok(peers)
    }

    async fn member_list(&self, id: RoomId) -> Result<Vec<Member>> {
        let memberships = self.inner.store.members(id).await?;
        let mut members = Vec::with_capacity(memberships.len());
        for m in memberships {
            let Some(user) = self.cached_user(m.user_id).await? else {
                tracing::warn!(user = %m.user_id, room = %id, "membership of an unknown user");
                continue;
            };
            members.push((user, m.role, m.joined_at));
        }
        let hub = lock(&self.inner.hub);
        Ok(members
            .into_iter()
            .map(|(user, role, joined_at)| Member {
                presence: hub.engine.presence_of(user.id),
                user,
                role,
                joined_at,
            })
            .collect())
    }

    /// Whether `identity` may read `room`'s history (its token's scope, and
    /// membership): the check [`Self::messages`] makes first. A server calls
    /// it before telling a caller what is wrong with a history query, so
    /// that who may not read a room learns nothing from the answer.
    pub async fn require_reader(&self, identity: &Identity, room: RoomId) -> Result<()> {
        Self::require(identity, Scope::MessagesRead)?;
        self.require_member(identity, room).await.map(drop)
    }

    /// A page of history, members only. The query's `limit` defaults to 50
    /// and is capped at 100.
    pub async fn messages(
        &self,
        identity: &Identity,
        room: RoomId,
        query: HistoryQuery,
    ) -> Result<Page> {
        self.require_reader(identity, room).await?;
        let limit = match query.limit {
            None => 50,
            Some(0) => return Err(Error::InvalidRequest("limit must be at least 1".into())),
            Some(n) => (n as usize).min(MAX_PAGE),
        };
        Ok(self.inner.store.messages(room, query.page, limit).await?)
    }

    /// Joins a room: public rooms are open to all; private ones only to
    /// those already invited (who are members).
    pub(crate) async fn join(&self, identity: &Identity, id: RoomId) -> Result<Vec<Member>> {
        Self::require(identity, Scope::MessagesWrite)?;
        let room = self.inner.store.room(id).await?;
        let member = self.membership(id, identity.user_id).await?;
        match (&room, &member) {
            (None, _) => return Err(Error::NotFound("no such room".into())),
            (Some(r), None) if r.visibility == Visibility::Private => {
                return Err(Error::NotFound("no such room".into()));
            }
            (Some(_), None) => {
                self.inner
                    .store
                    .add_member(Membership {
                        room_id: id,
                        user_id: identity.user_id,
                        role: Role::Member,
                        joined_at: Timestamp::now(),
                    })
                    .await?;
            }
            (Some(_), Some(_)) => {}
        }
        self.member_list(id).await
    }

    /// `POST /api/rooms/{id}/join`: joins as [`Service::join`] and tells the
    /// room and the user's connections.
    pub async fn join_room(&self, identity: &Identity, id: RoomId) -> Result<Room> {
        self.join(identity, id).await?;
        let user = self.me(identity).await?;
        self.with_engine(|engine, now| engine.member_added(now, id, &user));
        self.publish(ClusterEvent::MemberJoined {
            room_id: id,
            user: user.clone(),
        });
        self.visible_room(identity, id).await
    }

    /// Leaves a room. The owner cannot leave (delete the room instead).
    pub async fn leave_room(
        &self,
        identity: &Identity,
        id: RoomId,
        reply: Option<(PeerId, Option<String>)>,
    ) -> Result<()> {
        Self::require(identity, Scope::MessagesWrite)?;
        let me = self.require_member(identity, id).await?;
        if me.role == Role::Owner {
            return Err(Error::Conflict(
                "the owner cannot leave the room; delete it instead".into(),
            ));
        }
        self.inner.store.remove_member(id, identity.user_id).await?;
        let user = identity.user_id;
        self.with_engine(|engine, now| engine.leave_room(now, id, user, reply));
        self.publish(ClusterEvent::MemberLeft {
            room_id: id,
            user_id: user,
        });
        Ok(())
    }

    /// Renames a room, sets its topic (owner or admin) or its visibility
    /// (owner).
    pub async fn update_room(
        &self,
        identity: &Identity,
        id: RoomId,
        req: UpdateRoomRequest,
    ) -> Result<Room> {
        Self::require_access_token(identity, "change rooms")?;
        let me = self.require_member(identity, id).await?;
        if me.role < Role::Admin {
            return Err(Error::Forbidden(
                "only the owner and admins can change the room".into(),
            ));
        }
        if req.visibility.is_some() && me.role != Role::Owner {
            return Err(Error::Forbidden(
                "only the owner can change the visibility".into(),
            ));
        }
        let update = RoomUpdate {
            name: req.name.as_deref().map(validate::room_name).transpose()?,
            topic: match req.topic {
                None => None,
                Some(t) => Some(validate::topic(t.as_deref())?),
            },
            visibility: req.visibility,
        };
        let room = self
            .inner
            .store
            .update_room(id, update)
            .await?
            .ok_or_else(|| Error::NotFound("no such room".into()))?;
        self.with_engine(|engine, now| engine.room_updated(now, &room));
        self.publish(ClusterEvent::RoomUpdated { room: room.clone() });
        Ok(room)
    }

    /// Deletes a room with its history (owner only).
    pub async fn delete_room(&self, identity: &Identity, id: RoomId) -> Result<()> {
        Self::require_access_token(identity, "delete rooms")?;
        let me = self.require_member(identity, id).await?;
        if me.role != Role::Owner {
            return Err(Error::Forbidden(
                "only the owner can delete the room".into(),
            ));
        }
        self.inner.store.delete_room(id).await?;
        self.with_engine(|engine, now| engine.room_deleted(now, id));
        self.publish(ClusterEvent::RoomDeleted { room_id: id });
        Ok(())
    }

    /// Adds a user to a room (owner or admin; the way into private rooms).
    pub async fn invite(
        &self,
        identity: &Identity,
        id: RoomId,
        req: InviteRequest,
    ) -> Result<Member> {
        Self::require_access_token(identity, "invite")?;
        let me = self.require_member(identity, id).await?;
        if me.role < Role::Admin {
            return Err(Error::Forbidden(
                "only the owner and admins can invite".into(),
            ));
        }
        let store = &self.inner.store;
        let record = match (req.user_id, req.username.as_deref()) {
            (Some(uid), None) => store.user(uid).await?,
            (None, Some(name)) => store.user_by_name(&name.to_ascii_lowercase()).await?,
            _ => {
                return Err(Error::InvalidRequest(
                    "give either `user_id` or `username`".into(),
                ));
            }
        };
        let user = record
            .ok_or_else(|| Error::NotFound("no such user".into()))?
            .user;
        let membership = Membership {
            room_id: id,
            user_id: user.id,
            role: Role::Member,
            joined_at: Timestamp::now(),
        };
        if !store.add_member(membership.clone()).await? {
            return Err(Error::Conflict(format!(
                "{} is already a member",
                user.username
            )));
        }
        self.with_engine(|engine, now| engine.member_added(now, id, &user));
        self.publish(ClusterEvent::MemberJoined {
            room_id: id,
            user: user.clone(),
        });
        let presence = lock(&self.inner.hub).engine.presence_of(user.id);
        Ok(Member {
            user,
            role: membership.role,
            joined_at: membership.joined_at,
            presence,
        })
    }

    /// Removes a member: the owner removes anyone else, admins remove plain
    /// members, anyone removes themselves (that is leaving).
    pub async fn remove_member(&self, identity: &Identity, id: RoomId, user: UserId) -> Result<()> {
        if user == identity.user_id {
            return self.leave_room(identity, id, None).await;
        }
        Self::require_access_token(identity, "remove members")?;
        let me = self.require_member(identity, id).await?;
        // The caller's own role first: a plain member learns nothing about
        // the target from the answer.
        if me.role < Role::Admin {
            return Err(Error::Forbidden(
                "only the owner and admins can remove members".into(),
            ));
        }
        let target = self
            .membership(id, user)
            .await?
            .ok_or_else(|| Error::NotFound("that user is not a member".into()))?;
        if target.role >= me.role {
            return Err(Error::Forbidden(
                "you can only remove members whose role is below yours".into(),
            ));
        }
        self.inner.store.remove_member(id, user).await?;
        self.with_engine(|engine, now| engine.leave_room(now, id, user, None));
        self.publish(ClusterEvent::MemberLeft {
            room_id: id,
            user_id: user,
        });
        Ok(())
    }

    /// Makes a member an admin or a plain member again (owner only).
    pub async fn set_role(
        &self,
        identity: &Identity,
        id: RoomId,
        user: UserId,
        role: Role,
    ) -> Result<Member> {
        Self::require_access_token(identity, "change roles")?;
        let me = self.require_member(identity, id).await?;
        if me.role != Role::Owner {
            return Err(Error::Forbidden("only the owner can change roles".into()));
        }
        if role == Role::Owner || user == identity.user_id {
            return Err(Error::InvalidRequest(
                "roles can be set to admin or member, for members other than the owner".into(),
            ));
        }
        let target = self
            .membership(id, user)
            .await?
            .ok_or_else(|| Error::NotFound("that user is not a member".into()))?;
        self.inner.store.set_role(id, user, role).await?;
        self.with_engine(|engine, now| engine.role_changed(now, id, user, role));
        self.publish(ClusterEvent::RoleChanged {
            room_id: id,
            user_id: user,
            role,
        });
        let record = self.user(user).await?;
        let presence = lock(&self.inner.hub).engine.presence_of(user);
        Ok(Member {
            user: record,
            role,
            joined_at: target.joined_at,
            presence,
        })
    }

    // -------------------------------------------------------------------- p2p

    /// Authorises a P2P session from one of the caller's connected peers to
    /// `target` in `room`, signs its token and tells both peers. Membership
    /// is checked before the caller's connections, so a non-member gets the
    /// room's 404 or 403, never an answer about peers.
    pub async fn create_session(
        &self,
        identity: &Identity,
        room: RoomId,
        target: PeerId,
        kind: SessionKind,
        initiator: Option<PeerId>,
        request_id: Option<String>,
    ) -> Result<(P2pSession, String)> {
        Self::require(identity, Scope::P2p)?;
        self.require_member(identity, room).await?;
        // A target connected to another node is looked up in what the
        // nodes tell each other; its node announces the session to it.
        let elsewhere = self.target_elsewhere(target, room)?;
        let now = Timestamp::now();
        let (session, initiator_info) = {
            let hub = lock(&self.inner.hub);
            let initiator = Self::initiator_peer(&hub, identity, initiator)?;
            let session = match &elsewhere {
                Some(there) => hub.engine.prepare_session_elsewhere(
                    now,
                    SessionId::new(),
                    initiator,
                    room,
                    (target, there.user),
                    kind,
                )?,
                None => hub.engine.prepare_session(
                    now,
                    SessionId::new(),
                    initiator,
                    room,
                    target,
                    kind,
                )?,
            };
            let info = hub.engine.peer(initiator).and_then(|p| p.p2p.clone());
            (session, info.unwrap_or_default())
        };
        let token =
            tokens::issue_session_token(self.inner.auth.keys(), &session, Timestamp::now())?.token;
        self.inner.store.put_session(session.clone()).await?;
        let (s, t) = (session.clone(), token.clone());
        match elsewhere {
            Some(there) => {
                self.with_engine(move |engine, now| {
                    engine.open_session_elsewhere(now, s, t, request_id, there.p2p);
                });
                self.session_opened_elsewhere(&session, &token, initiator_info);
            }
            None => self.with_engine(move |engine, now| engine.open_session(now, s, t, request_id)),
        }
        Ok((session, token))
    }

    /// The session's initiator: `asked` if it is one of the caller's
    /// peers connected here, else the caller's peer on the same device, else
    /// any of theirs.
    fn initiator_peer(hub: &Hub, identity: &Identity, asked: Option<PeerId>) -> Result<PeerId> {
        if let Some(peer) = asked {
            if hub
                .conns
                .get(&peer)
                .is_none_or(|c| c.user != identity.user_id)
            {
                return Err(Error::NotFound(
                    "initiator_peer_id is not one of your connected peers".into(),
                ));
            }
            return Ok(peer);
        }
        let on_device = hub.peers_of(identity.user_id, Some(identity.device_id));
        let any = hub.peers_of(identity.user_id, None);
        on_device.first().or(any.first()).copied().ok_or_else(|| {
            Error::Conflict(
                "you have no connected peer: open a WebSocket (or run `mesh agent`) first".into(),
            )
        })
    }

    /// The caller's live P2P sessions.
    pub fn sessions(&self, identity: &Identity) -> Result<Vec<P2pSession>> {
        Self::require(identity, Scope::P2p)?;
        Ok(lock(&self.inner.hub).engine.sessions_of(identity.user_id))
    }

    /// Ends a P2P session the caller is a party to.
    pub fn close_session(&self, identity: &Identity, id: SessionId) -> Result<()> {
        Self::require(identity, Scope::P2p)?;
        let user = identity.user_id;
        self.with_engine(|engine, now| engine.close_session(now, id, user, "closed"))
    }

    // ------------------------------------------------------------ connections

    /// Registers a new WebSocket (or other) connection for an authenticated
    /// identity. The returned [`PeerConnection`] handles its frames; the
    /// peer is live once the client says `system.hello`.
    pub async fn open_connection(
        &self,
        identity: Identity,
        conn: crate::transport::DynConnection,
    ) -> Result<PeerConnection> {
        Self::require(&identity, Scope::MessagesWrite)?;
        let user = self.me(&identity).await?;
        let peer = PeerId::new();
        lock(&self.inner.hub).conns.insert(
            peer,
            hub::ConnEntry {
                conn,
                user: user.id,
                device: identity.device_id,
            },
        );
        Ok(PeerConnection::new(self.clone(), peer, identity, user))
    }

    /// Forgets a connection: the engine counts the peer gone.
    fn drop_connection(&self, peer: PeerId) {
        self.with_hub(|hub, now| {
            hub.engine.disconnect(now, peer);
            hub.conns.remove(&peer);
        });
    }

    /// How many connections are registered (live or awaiting hello).
    pub fn connection_count(&self) -> usize {
        lock(&self.inner.hub).conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn building_outside_a_runtime_says_why_it_cannot() {
        let err = Service::builder().build().expect_err("no runtime here");
        assert!(err.to_string().contains("inside a tokio runtime"), "{err}");
    }

    #[tokio::test]
    async fn the_timer_task_ends_with_the_service() {
        let service = Service::builder().build().expect("service");
        let weak = Arc::downgrade(&service.inner);
        // Let the timer task start waiting (this runtime has one thread).
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        drop(service);
        // The task holds the service only while firing: nothing keeps it.
        assert!(weak.upgrade().is_none());
    }
}
