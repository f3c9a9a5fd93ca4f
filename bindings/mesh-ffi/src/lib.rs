//! `mesh-ffi`: the mesh client SDK for Kotlin, Swift and Python, through
//! uniffi (proc-macro style).
//!
//! The binding owns its FFI types: plain records of strings and numbers
//! ([`UserInfo`], [`RoomInfo`], [`MessageInfo`], …), one [`MeshEvent`] enum
//! for everything the listener hears, and one error, [`MeshError`], that
//! carries the contract's `code` and message. Nothing uniffi-specific
//! reaches `mesh-core`.
//!
//! Async functions run on a tokio runtime owned by this library
//! ([`runtime`]): each call is spawned there and the foreign side awaits the
//! join handle, so a Python `asyncio` loop or Kotlin coroutines drive the
//! futures without knowing about tokio.
//!
//! ```python
//! api = mesh.MeshApi("http://127.0.0.1:8000")
//! auth = await api.register("alice", "correct horse battery", None)
//! client = await mesh.connect("http://127.0.0.1:8000", auth.token, "laptop", listener)
//! room = await client.create_room("general", None, False)
//! await client.send_message(room.id, "hi")
//! ```

use std::future::Future;
use std::sync::{Arc, OnceLock};

use mesh_core::client::P2pSessionGrant;
use mesh_core::client::{
    Client, ClientError, Event, HistoryPage, HistoryQuery, HttpApi, TlsConfig,
};
use mesh_core::protocol::RtcKind;
use mesh_core::protocol::http::{AuthResponse, CreateRoomRequest, LoginRequest, RegisterRequest};
use mesh_core::protocol::{
    Member, Message, PeerId, Presence, Role, Room, RoomId, RtcSignal, SessionId, SessionKind, User,
    UserId, Visibility,
};

uniffi::setup_scaffolding!();

/// P2P file and folder transfer: desktop targets only (phones do not run
/// agents).
#[cfg(not(any(target_os = "android", target_os = "ios")))]
mod agent;
#[cfg(not(any(target_os = "android", target_os = "ios")))]
pub use agent::{
    AgentConfig, MeshAgent, TransferListener, TransferProgress, TransferReport, start_agent,
};

/// The library's tokio runtime: the native client's socket task, its event
/// pump and every async call run here.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mesh-ffi")
            .enable_all()
            .build()
            // Without a runtime no call can work; failing to make one (no
            // threads left) is not something a caller can handle.
            .expect("mesh-ffi: cannot start the tokio runtime")
    })
}

/// Runs `fut` on [`runtime`] and waits for it from whatever executor the
/// foreign language polls with.
async fn on_runtime<T, F>(fut: F) -> Result<T, MeshError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, MeshError>> + Send + 'static,
{
    runtime().spawn(fut).await.map_err(|e| MeshError::Client {
        code: "internal".into(),
        reason: format!("the call's task failed: {e}"),
    })?
}

// ----- the error -----

/// Everything a mesh call can fail with, flat: `code` is the contract's
/// error code (`unauthorized`, `forbidden`, `not_found`, …) for refusals by
/// the server, or a client-side code (`not_connected`, `disconnected`,
/// `closed`, `protocol`, `invalid_argument`, `transport`, `internal`).
///
/// The text field is `reason`, not `message`: a `message` field clashes
/// with `Throwable.message` in the generated Kotlin.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum MeshError {
    /// The server refused the request; `code` is the contract's.
    #[error("{code}: {reason}")]
    Server {
        code: String,
        reason: String,
        /// With `rate_limited`: how long to wait.
        retry_after_ms: Option<u64>,
    },
    /// The call failed on this side (no connection, bad argument, …).
    #[error("{code}: {reason}")]
    Client { code: String, reason: String },
    /// A P2P session failed: the other agent refused it (`code` is the
    /// `P2P_ERROR` code's name: `kind_not_accepted`, `already_exists`,
    /// `hash_mismatch`, …) or could not be reached (`unreachable`,
    /// `timeout`, `wrong_certificate`), or a local file failed (`io`).
    #[error("{code}: {reason}")]
    P2p { code: String, reason: String },
}

impl MeshError {
    fn invalid(reason: impl Into<String>) -> Self {
        MeshError::Client {
            code: "invalid_argument".into(),
            reason: reason.into(),
        }
    }
}

impl From<ClientError> for MeshError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Server {
                code,
                message,
                retry_after_ms,
            } => MeshError::Server {
                code: code.as_str().into(),
                reason: message,
                retry_after_ms,
            },
            other => MeshError::Client {
                code: other.code_str().into(),
                reason: other.to_string(),
            },
        }
    }
}

/// A contract enum from its wire name (`"file"`, `"away"`, …).
fn parse_wire<T: serde::de::DeserializeOwned>(what: &str, name: &str) -> Result<T, MeshError> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|_| MeshError::invalid(format!("not a {what}: {name:?}")))
}

fn parse_id<T: std::str::FromStr>(what: &str, id: &str) -> Result<T, MeshError> {
    id.parse()
        .map_err(|_| MeshError::invalid(format!("not a {what} id: {id:?}")))
}

fn parse_room(id: &str) -> Result<RoomId, MeshError> {
    id.parse()
        .map_err(|_| MeshError::invalid(format!("not a room id: {id:?}")))
}

// ----- records -----

/// A user. Times are Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct UserInfo {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub created_at_ms: i64,
}

impl From<User> for UserInfo {
    fn from(u: User) -> Self {
        Self {
            id: u.id.to_string(),
            username: u.username,
            display_name: u.display_name,
            created_at_ms: u.created_at.unix_millis(),
        }
    }
}

/// The answer to register and login.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct AuthInfo {
    pub user: UserInfo,
    /// The bearer token [`connect`] takes.
    pub token: String,
    pub expires_at_ms: i64,
}

impl From<AuthResponse> for AuthInfo {
    fn from(auth: AuthResponse) -> Self {
        Self {
            user: auth.user.into(),
            token: auth.token,
            expires_at_ms: auth.expires_at.unix_millis(),
        }
    }
}

/// A chat room.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct RoomInfo {
    pub id: String,
    pub name: String,
    pub topic: Option<String>,
    pub private: bool,
    pub created_by: String,
    pub member_count: u64,
}

impl From<Room> for RoomInfo {
    fn from(r: Room) -> Self {
        Self {
            id: r.id.to_string(),
            name: r.name,
            topic: r.topic,
            private: r.visibility == Visibility::Private,
            created_by: r.created_by.to_string(),
            member_count: r.member_count,
        }
    }
}

/// A room member: `role` is `member`, `admin` or `owner`; `presence` is
/// `online`, `away`, `busy` or `offline`.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct MemberInfo {
    pub user: UserInfo,
    pub role: String,
    pub presence: String,
}

fn wire_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

impl From<Member> for MemberInfo {
    fn from(m: Member) -> Self {
        Self {
            user: m.user.into(),
            role: wire_name(&m.role),
            presence: wire_name(&m.presence),
        }
    }
}

/// A chat message; `seq` grows by one per room.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct MessageInfo {
    pub id: String,
    pub room_id: String,
    pub seq: u64,
    pub sender: UserInfo,
    pub content: String,
    pub created_at_ms: i64,
    pub client_id: Option<String>,
}

impl From<Message> for MessageInfo {
    fn from(m: Message) -> Self {
        Self {
            id: m.id.to_string(),
            room_id: m.room_id.to_string(),
            seq: m.seq,
            sender: m.sender.into(),
            content: m.content,
            created_at_ms: m.created_at.unix_millis(),
            client_id: m.client_id,
        }
    }
}

/// One page of history, ascending `seq`.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct HistoryPageInfo {
    pub messages: Vec<MessageInfo>,
    /// Whether there are more messages past this page in the direction asked.
    pub has_more: bool,
}

/// One ICE server for a call (WebRTC's `RTCIceServer`): STUN URLs, or TURN
/// URLs with a time-limited `username`/`credential`.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct IceServerInfo {
    pub urls: Vec<String>,
    pub username: Option<String>,
    pub credential: Option<String>,
}

/// The ICE servers for calls and when their TURN credentials expire.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct IceServersInfo {
    pub ice_servers: Vec<IceServerInfo>,
    pub expires_at_ms: i64,
}

impl From<mesh_core::protocol::http::IceServersResponse> for IceServersInfo {
    fn from(r: mesh_core::protocol::http::IceServersResponse) -> Self {
        Self {
            ice_servers: r
                .ice_servers
                .into_iter()
                .map(|s| IceServerInfo {
                    urls: s.urls,
                    username: s.username,
                    credential: s.credential,
                })
                .collect(),
            expires_at_ms: r.expires_at.unix_millis(),
        }
    }
}

/// An authorised P2P session: the initiator presents `session_token` to
/// the target when it connects directly (see `docs/p2p.md`).
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct P2pSessionInfo {
    pub session_id: String,
    pub room_id: String,
    /// `file`, `folder` or `terminal`.
    pub kind: String,
    pub initiator_peer_id: String,
    pub target_peer_id: String,
    pub session_token: String,
    pub expires_at_ms: i64,
}

impl From<P2pSessionGrant> for P2pSessionInfo {
    fn from(g: P2pSessionGrant) -> Self {
        Self {
            session_id: g.session.id.to_string(),
            room_id: g.session.room_id.to_string(),
            kind: g.session.kind.as_str().into(),
            initiator_peer_id: g.session.initiator_peer_id.to_string(),
            target_peer_id: g.session.target_peer_id.to_string(),
            session_token: g.session_token,
            expires_at_ms: g.session.expires_at.unix_millis(),
        }
    }
}

/// What the [`MeshListener`] hears.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum MeshEvent {
    /// The connection is up (`resumed`: again, after a loss).
    Connected {
        peer_id: String,
        user: UserInfo,
        resumed: bool,
    },
    /// The connection was lost; the client reconnects by itself.
    Disconnected {
        reason: String,
    },
    /// The client stopped for good (`error` is `None` after `shutdown()`).
    Closed {
        error: Option<String>,
    },
    /// A new message, once per `(room, seq)`, this client's own included.
    Message {
        message: MessageInfo,
    },
    /// A queued send failed for good.
    SendFailed {
        client_id: String,
        room_id: String,
        code: String,
        reason: String,
    },
    RoomJoined {
        room_id: String,
        user: UserInfo,
    },
    RoomLeft {
        room_id: String,
        user_id: String,
    },
    RoomUpdated {
        room: RoomInfo,
    },
    RoomDeleted {
        room_id: String,
    },
    /// A member's role changed (`member`, `admin` or `owner`).
    MemberUpdated {
        room_id: String,
        user_id: String,
        role: String,
    },
    Typing {
        room_id: String,
        user_id: String,
        typing: bool,
    },
    Presence {
        user_id: String,
        status: String,
        status_message: Option<String>,
    },
    /// A WebRTC signal from another peer (see [`MeshClient::send_rtc`]):
    /// `kind` is `offer`, `answer`, `ice` or `hangup`; `body_json` is the
    /// signal's own fields (`sdp`, `candidate`, …) as a JSON object.
    Rtc {
        kind: String,
        room_id: String,
        from_peer_id: String,
        from_user_id: String,
        body_json: String,
    },
    /// A P2P session this peer is a party to was authorised.
    P2pSessionCreated {
        session: P2pSessionInfo,
    },
    P2pSessionClosed {
        session_id: String,
        reason: String,
    },
    /// A server `error` that answers no request of this client.
    ServerError {
        code: String,
        reason: String,
    },
    /// An event this binding does not model yet, described in text.
    Other {
        description: String,
    },
}

fn error_parts(e: ClientError) -> (String, String) {
    match MeshError::from(e) {
        MeshError::Server { code, reason, .. }
        | MeshError::Client { code, reason }
        | MeshError::P2p { code, reason } => (code, reason),
    }
}

impl From<Event> for MeshEvent {
    fn from(e: Event) -> Self {
        match e {
            Event::Connected {
                peer_id,
                user,
                resumed,
                ..
            } => MeshEvent::Connected {
                peer_id: peer_id.to_string(),
                user: user.into(),
                resumed,
            },
            Event::Disconnected { reason, .. } => MeshEvent::Disconnected { reason },
            Event::Closed { error } => MeshEvent::Closed {
                error: error.map(|e| e.to_string()),
            },
            Event::Message(m) => MeshEvent::Message { message: m.into() },
            Event::SendFailed {
                client_id,
                room_id,
                error,
            } => {
                let (code, reason) = error_parts(error);
                MeshEvent::SendFailed {
                    client_id,
                    room_id: room_id.to_string(),
                    code,
                    reason,
                }
            }
            Event::RoomJoined { room_id, user, .. } => MeshEvent::RoomJoined {
                room_id: room_id.to_string(),
                user: user.into(),
            },
            Event::RoomLeft { room_id, user_id } => MeshEvent::RoomLeft {
                room_id: room_id.to_string(),
                user_id: user_id.to_string(),
            },
            Event::RoomUpdated(room) => MeshEvent::RoomUpdated { room: room.into() },
            Event::RoomDeleted { room_id } => MeshEvent::RoomDeleted {
                room_id: room_id.to_string(),
            },
            Event::MemberUpdated {
                room_id,
                user_id,
                role,
            } => MeshEvent::MemberUpdated {
                room_id: room_id.to_string(),
                user_id: user_id.to_string(),
                role: wire_name(&role),
            },
            Event::Rtc { kind, signal } => MeshEvent::Rtc {
                kind: kind.as_str().into(),
                room_id: signal.room_id.to_string(),
                from_peer_id: signal
                    .from_peer_id
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                from_user_id: signal
                    .from_user_id
                    .map(|u| u.to_string())
                    .unwrap_or_default(),
                body_json: serde_json::Value::Object(signal.body).to_string(),
            },
            Event::Typing {
                room_id,
                user_id,
                typing,
            } => MeshEvent::Typing {
                room_id: room_id.to_string(),
                user_id: user_id.to_string(),
                typing,
            },
            Event::Presence {
                user_id,
                status,
                message,
            } => MeshEvent::Presence {
                user_id: user_id.to_string(),
                status: wire_name(&status),
                status_message: message,
            },
            Event::P2pSessionCreated(grant) => MeshEvent::P2pSessionCreated {
                session: (*grant).into(),
            },
            Event::P2pSessionClosed { session_id, reason } => MeshEvent::P2pSessionClosed {
                session_id: session_id.to_string(),
                reason,
            },
            Event::ServerError(e) => {
                let (code, reason) = error_parts(e);
                MeshEvent::ServerError { code, reason }
            }
            other => MeshEvent::Other {
                description: format!("{other:?}"),
            },
        }
    }
}

// ----- the listener -----

/// Implemented by the app: hears every [`MeshEvent`] of a client, in order,
/// on a thread of the library's runtime (hand work to your own thread or
/// event loop; do not block for long).
#[uniffi::export(with_foreign)]
pub trait MeshListener: Send + Sync {
    fn on_event(&self, event: MeshEvent);
}

// ----- the HTTP API (no connection) -----

/// The REST half of the contract without a connection: register and log
/// in, to get the token [`connect`] takes.
#[derive(Debug, uniffi::Object)]
pub struct MeshApi {
    http: HttpApi,
}

#[uniffi::export]
impl MeshApi {
    /// `server` is the base URL, e.g. `http://127.0.0.1:8000` or
    /// `https://chat.example`. `https://` servers are checked against the
    /// platform's roots, or, with `ca_cert_pem`, only against that CA
    /// (PEM text: a private CA).
    #[uniffi::constructor(default(ca_cert_pem = None))]
    pub fn new(server: String, ca_cert_pem: Option<String>) -> Result<Arc<Self>, MeshError> {
        Ok(Arc::new(Self {
            http: HttpApi::with_tls(&server, tls_for(&server, ca_cert_pem.as_deref())?)?,
        }))
    }

    /// `POST /api/auth/register`: makes the account and logs it in.
    pub async fn register(
        &self,
        username: String,
        password: String,
        display_name: Option<String>,
    ) -> Result<AuthInfo, MeshError> {
        let http = self.http.clone();
        on_runtime(async move {
            let req = RegisterRequest {
                username,
                password,
                display_name,
                device_name: None,
            };
            let auth = http.register(&req).await?;
            Ok(auth.into())
        })
        .await
    }

    /// `POST /api/auth/login`.
    pub async fn login(&self, username: String, password: String) -> Result<AuthInfo, MeshError> {
        let http = self.http.clone();
        on_runtime(async move {
            let req = LoginRequest {
                username,
                password,
                device_name: None,
            };
            let auth = http.login(&req).await?;
            Ok(auth.into())
        })
        .await
    }
}

// ----- the connected client -----

/// What a client trusts over `https://`/`wss://`: the platform's roots, or
/// only the CA in `ca_cert_pem`.
pub(crate) fn tls_for(server: &str, ca_cert_pem: Option<&str>) -> Result<TlsConfig, MeshError> {
    Ok(match ca_cert_pem {
        Some(pem) => TlsConfig::with_ca_pem(pem.as_bytes())?,
        None => TlsConfig::default_for(server)?,
    })
}

/// Connects to `server` with `token` and hands every event to `listener`.
/// Returns once the server welcomed the connection; reconnects (with
/// resume) happen by themselves after that. `ca_cert_pem` as with
/// [`MeshApi::new`].
#[uniffi::export(default(ca_cert_pem = None))]
pub async fn connect(
    server: String,
    token: String,
    device_name: Option<String>,
    listener: Arc<dyn MeshListener>,
    ca_cert_pem: Option<String>,
) -> Result<Arc<MeshClient>, MeshError> {
    on_runtime(async move {
        let tls = tls_for(&server, ca_cert_pem.as_deref())?;
        let mut builder = Client::builder().server(server).token(token).tls(tls);
        if let Some(name) = device_name {
            builder = builder.device_name(name);
        }
        let client = builder.connect().await?;
        if let Some(mut events) = client.events() {
            tokio::spawn(async move {
                while let Some(event) = events.next().await {
                    listener.on_event(event.into());
                }
            });
        }
        Ok(Arc::new(MeshClient { client }))
    })
    .await
}

/// A connected client (see [`connect`]).
#[derive(Debug, uniffi::Object)]
pub struct MeshClient {
    client: Client,
}

#[uniffi::export]
impl MeshClient {
    /// The user this client is logged in as.
    pub fn me(&self) -> Option<UserInfo> {
        self.client.me().map(|(_, user)| user.into())
    }

    /// This connection's peer id (what another user's
    /// [`request_p2p_session`](Self::request_p2p_session) targets).
    pub fn peer_id(&self) -> Option<String> {
        self.client.me().map(|(peer, _)| peer.to_string())
    }

    /// Asks the server for a P2P session with `target_peer_id` in a room
    /// both are in; `kind` is `file`, `folder` or `terminal`. Both peers'
    /// listeners also hear `P2pSessionCreated`.
    pub async fn request_p2p_session(
        &self,
        room_id: String,
        target_peer_id: String,
        kind: String,
    ) -> Result<P2pSessionInfo, MeshError> {
        let room = parse_room(&room_id)?;
        let target: PeerId = parse_id("peer", &target_peer_id)?;
        let kind: SessionKind = parse_wire("session kind", &kind)?;
        let client = self.client.clone();
        on_runtime(async move {
            let grant = client.request_p2p_session(room, target, kind).await?;
            Ok(grant.into())
        })
        .await
    }

    /// Closes a P2P session; both parties hear `P2pSessionClosed`. Fire
    /// and forget.
    pub fn close_p2p_session(&self, session_id: String) -> Result<(), MeshError> {
        let session: SessionId = parse_id("session", &session_id)?;
        self.client.close_p2p_session(session);
        Ok(())
    }

    /// Sends a message and returns it as stored (with its `seq`). Sent
    /// later if offline; retries never duplicate it.
    pub async fn send_message(
        &self,
        room_id: String,
        content: String,
    ) -> Result<MessageInfo, MeshError> {
        let client = self.client.clone();
        let room = parse_room(&room_id)?;
        on_runtime(async move { Ok(client.send_message(room, content).await?.into()) }).await
    }

    /// Joins a room (subscribing to it) and returns its members.
    pub async fn join_room(&self, room_id: String) -> Result<Vec<MemberInfo>, MeshError> {
        let client = self.client.clone();
        let room = parse_room(&room_id)?;
        on_runtime(async move {
            let members = client.join_room(room).await?;
            Ok(members.into_iter().map(Into::into).collect())
        })
        .await
    }

    /// Leaves a room.
    pub async fn leave_room(&self, room_id: String) -> Result<(), MeshError> {
        let client = self.client.clone();
        let room = parse_room(&room_id)?;
        on_runtime(async move { Ok(client.leave_room(room).await?) }).await
    }

    /// Creates a room this user owns (and is subscribed to).
    pub async fn create_room(
        &self,
        name: String,
        topic: Option<String>,
        private: bool,
    ) -> Result<RoomInfo, MeshError> {
        let client = self.client.clone();
        on_runtime(async move {
            let req = CreateRoomRequest {
                name,
                topic,
                visibility: Some(Visibility::private_if(private)),
            };
            Ok(client.create_room(&req).await?.into())
        })
        .await
    }

    /// The STUN and TURN servers for calls (`GET /api/rtc/ice-servers`),
    /// TURN credentials minted for this user; fetch them at call start.
    pub async fn ice_servers(&self) -> Result<IceServersInfo, MeshError> {
        let client = self.client.clone();
        on_runtime(async move { Ok(client.http().ice_servers().await?.into()) }).await
    }

    /// The rooms this user can see.
    pub async fn rooms(&self) -> Result<Vec<RoomInfo>, MeshError> {
        let client = self.client.clone();
        on_runtime(async move { Ok(client.rooms().await?.into_iter().map(Into::into).collect()) })
            .await
    }

    /// A room's members.
    pub async fn members(&self, room_id: String) -> Result<Vec<MemberInfo>, MeshError> {
        let client = self.client.clone();
        let room = parse_room(&room_id)?;
        on_runtime(async move {
            let members = client.members(room).await?;
            Ok(members.into_iter().map(Into::into).collect())
        })
        .await
    }

    /// One page of a room's history: the newest (`before` and `after`
    /// both `None`), the one just older than `before`, or the one just
    /// newer than `after`; at most `limit` messages (server default 50).
    pub async fn history(
        &self,
        room_id: String,
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<HistoryPageInfo, MeshError> {
        let client = self.client.clone();
        let room = parse_room(&room_id)?;
        let page = match (before, after) {
            (None, None) => HistoryPage::Latest,
            (Some(seq), None) => HistoryPage::Before(seq),
            (None, Some(seq)) => HistoryPage::After(seq),
            (Some(_), Some(_)) => {
                return Err(MeshError::invalid("give `before` or `after`, not both"));
            }
        };
        on_runtime(async move {
            let r = client.history(room, HistoryQuery { page, limit }).await?;
            Ok(HistoryPageInfo {
                messages: r.messages.into_iter().map(Into::into).collect(),
                has_more: r.has_more,
            })
        })
        .await
    }

    /// Sends a WebRTC signal (`kind`: `offer`, `answer`, `ice` or
    /// `hangup`) to `target_peer_id`, whose user shares `room_id`;
    /// `body_json` is a JSON object with the signal's own fields (`sdp`,
    /// `candidate`, …). The server relays it with `from_peer_id` and
    /// `from_user_id` added. Fire and forget; dropped while offline.
    pub fn send_rtc(
        &self,
        kind: String,
        room_id: String,
        target_peer_id: String,
        body_json: String,
    ) -> Result<(), MeshError> {
        let kind: RtcKind = kind
            .parse()
            .map_err(|e: mesh_core::protocol::UnknownRtcKind| MeshError::invalid(e.to_string()))?;
        let room_id = parse_room(&room_id)?;
        let target_peer_id: PeerId = parse_id("peer", &target_peer_id)?;
        let body = match serde_json::from_str(&body_json) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => return Err(MeshError::invalid("body_json must be a JSON object")),
        };
        self.client.send_rtc(
            kind,
            RtcSignal {
                target_peer_id,
                room_id,
                from_peer_id: None,
                from_user_id: None,
                body,
            },
        );
        Ok(())
    }

    /// Makes `user_id` an `admin` or a plain `member` of `room_id` (the
    /// owner only); everyone in the room hears `MemberUpdated`.
    pub async fn set_role(
        &self,
        room_id: String,
        user_id: String,
        role: String,
    ) -> Result<MemberInfo, MeshError> {
        let room = parse_room(&room_id)?;
        let user: UserId = parse_id("user", &user_id)?;
        let role = match parse_wire::<Role>("role (admin, member)", &role)? {
            Role::Owner => {
                return Err(MeshError::invalid(
                    "the role must be admin or member, not owner",
                ));
            }
            role => role,
        };
        let client = self.client.clone();
        on_runtime(async move { Ok(client.set_role(room, user, role).await?.into()) }).await
    }

    /// Tells a room this user is (or stopped) typing. Fire and forget.
    pub fn set_typing(&self, room_id: String, typing: bool) -> Result<(), MeshError> {
        let room = parse_room(&room_id)?;
        self.client.set_typing(room, typing);
        Ok(())
    }

    /// Sets this user's presence: `online`, `away`, `busy` or `offline`.
    pub async fn set_presence(
        &self,
        status: String,
        status_message: Option<String>,
    ) -> Result<(), MeshError> {
        let presence: Presence = parse_wire("presence status", &status)?;
        let client = self.client.clone();
        on_runtime(async move { Ok(client.set_presence(presence, status_message).await?) }).await
    }

    /// Closes the connection for good; the listener hears `Closed`. (Not
    /// `close`: that name clashes with `AutoCloseable.close` in Kotlin.)
    pub async fn shutdown(&self) -> Result<(), MeshError> {
        let client = self.client.clone();
        on_runtime(async move {
            client.close().await;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::ErrorCode;

    #[test]
    fn server_errors_keep_the_contract_code() {
        let e = MeshError::from(ClientError::server(ErrorCode::Forbidden, "not a member"));
        match e {
            MeshError::Server { code, reason, .. } => {
                assert_eq!(code, "forbidden");
                assert_eq!(reason, "not a member");
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = MeshError::from(ClientError::NotConnected);
        assert!(matches!(e, MeshError::Client { ref code, .. } if code == "not_connected"));
    }

    #[test]
    fn bad_room_ids_are_invalid_arguments() {
        let e = parse_room("nope").err();
        assert!(
            matches!(e, Some(MeshError::Client { ref code, .. }) if code == "invalid_argument")
        );
    }
}
