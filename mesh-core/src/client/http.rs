//! [`HttpApi`]: the REST half of the contract over reqwest.
//!
//! Bodies are the shared types of [`crate::protocol::http`], so the client
//! and the server cannot drift apart. Errors come back as
//! [`ClientError::Server`] with the contract's code, parsed from the
//! `{"error": {"code", "message"}}` body.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{ClientError, HistoryQuery, TlsConfig};
use crate::protocol::http::{
    AuthResponse, CreateRoomRequest, IceServersResponse, LoginRequest, MemberResponse,
    MembersResponse, MessagesResponse, P2pSessionRequest, P2pSessionResponse, P2pSessionsResponse,
    Peer, PeersResponse, RegisterRequest, RoleRequest, RoomResponse, RoomsResponse, UserResponse,
};
use crate::protocol::{Member, P2pSession, Role, Room, RoomId, SessionId, User, UserId};

/// A handle on a server's HTTP API, with or without a token. Cheap to
/// clone (the connection pool is shared).
///
/// ```no_run
/// # async fn demo() -> Result<(), mesh_core::client::ClientError> {
/// use mesh_core::client::HttpApi;
/// use mesh_core::protocol::http::{CreateRoomRequest, RegisterRequest};
///
/// let api = HttpApi::new("http://127.0.0.1:8000")?;
/// let auth = api
///     .register(&RegisterRequest {
///         username: "alice".into(),
///         password: "correct horse battery".into(),
///         ..Default::default()
///     })
///     .await?;
/// let api = api.with_token(auth.token);
/// let room = api
///     .create_room(&CreateRoomRequest { name: "general".into(), ..Default::default() })
///     .await?;
/// println!("created {}", room.id);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct HttpApi {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    tls: TlsConfig,
}

impl HttpApi {
    /// The API of the server at `server` (`http://host:port` or
    /// `https://host`, no path); `https://` servers are checked against the
    /// platform's roots ([`TlsConfig::default_for`]).
    pub fn new(server: &str) -> Result<Self, ClientError> {
        Self::with_tls(server, TlsConfig::default_for(server)?)
    }

    /// Like [`new`](Self::new), trusting what `tls` trusts (a private CA, say).
    pub fn with_tls(server: &str, tls: TlsConfig) -> Result<Self, ClientError> {
        let base = server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::InvalidArgument(format!(
                "server must be an http:// or https:// URL, not {server:?}"
            )));
        }
        Ok(Self {
            http: tls.http_client()?,
            base,
            token: None,
            tls,
        })
    }

    /// What this API trusts; the WebSocket of a [`Client`](super::Client)
    /// built from it trusts the same.
    pub fn tls(&self) -> &TlsConfig {
        &self.tls
    }

    /// The same API, authenticated with `token`.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// `GET /health`: whether the server answers (and, over `https://`,
    /// whether its certificate is trusted).
    pub async fn health(&self) -> Result<(), ClientError> {
        let resp = self
            .send(reqwest::Method::GET, "/health", None::<&()>)
            .await?;
        Self::check(resp).await.map(drop)
    }

    /// The server's base URL.
    pub fn server(&self) -> &str {
        &self.base
    }

    /// The token calls carry, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `POST /api/auth/register`.
    pub async fn register(&self, req: &RegisterRequest) -> Result<AuthResponse, ClientError> {
        self.call(reqwest::Method::POST, "/api/auth/register", Some(req))
            .await
    }

    /// `POST /api/auth/login`. A wrong name or password is
    /// [`ErrorCode::Unauthorized`](crate::ErrorCode::Unauthorized).
    pub async fn login(&self, req: &LoginRequest) -> Result<AuthResponse, ClientError> {
        self.call(reqwest::Method::POST, "/api/auth/login", Some(req))
            .await
    }

    /// `GET /api/auth/me`.
    pub async fn me(&self) -> Result<User, ClientError> {
        let r: UserResponse = self.get("/api/auth/me").await?;
        Ok(r.user)
    }

    /// `POST /api/rooms`; the caller becomes its owner.
    pub async fn create_room(&self, req: &CreateRoomRequest) -> Result<Room, ClientError> {
        let r: RoomResponse = self
            .call(reqwest::Method::POST, "/api/rooms", Some(req))
            .await?;
        Ok(r.room)
    }

    /// `GET /api/rooms`: public rooms and the private rooms the caller is in.
    pub async fn rooms(&self) -> Result<Vec<Room>, ClientError> {
        let r: RoomsResponse = self.get("/api/rooms").await?;
        Ok(r.rooms)
    }

    /// `GET /api/rooms/{id}`.
    pub async fn room(&self, room: RoomId) -> Result<Room, ClientError> {
        let r: RoomResponse = self.get(&format!("/api/rooms/{room}")).await?;
        Ok(r.room)
    }

    /// `GET /api/rooms/{id}/members`.
    pub async fn members(&self, room: RoomId) -> Result<Vec<Member>, ClientError> {
        let r: MembersResponse = self.get(&format!("/api/rooms/{room}/members")).await?;
        Ok(r.members)
    }

    /// `GET /api/rooms/{id}/messages`: one page of history, ascending `seq`.
    pub async fn messages(
        &self,
        room: RoomId,
        query: HistoryQuery,
    ) -> Result<MessagesResponse, ClientError> {
        let q = query.to_query();
        let path = if q.is_empty() {
            format!("/api/rooms/{room}/messages")
        } else {
            format!("/api/rooms/{room}/messages?{q}")
        };
        self.get(&path).await
    }

    /// Joins a public room, or one the caller was invited to
    /// (`POST /api/rooms/{id}/join`).
    pub async fn join_room(&self, room: RoomId) -> Result<Room, ClientError> {
        let r: RoomResponse = self
            .call(
                reqwest::Method::POST,
                &format!("/api/rooms/{room}/join"),
                None::<&()>,
            )
            .await?;
        Ok(r.room)
    }

    /// Makes `user` an `admin` or a plain `member` of `room`
    /// (`PATCH /api/rooms/{id}/members/{user_id}`; the owner only). The
    /// room hears `room.member.updated`.
    pub async fn set_role(
        &self,
        room: RoomId,
        user: UserId,
        role: Role,
    ) -> Result<Member, ClientError> {
        let r: MemberResponse = self
            .call(
                reqwest::Method::PATCH,
                &format!("/api/rooms/{room}/members/{user}"),
                Some(&RoleRequest { role }),
            )
            .await?;
        Ok(r.member)
    }

    /// The connections online in `room` (`GET /api/rooms/{id}/peers`), with
    /// what agents announced for direct connections: how an agent finds
    /// the peer to open a P2P session with. Members only.
    pub async fn peers(&self, room: RoomId) -> Result<Vec<Peer>, ClientError> {
        let r: PeersResponse = self.get(&format!("/api/rooms/{room}/peers")).await?;
        Ok(r.peers)
    }

    /// The server's public signing keys as a JWK Set (`GET /api/auth/keys`),
    /// for [`TokenVerifier::from_jwks`](crate::auth::TokenVerifier::from_jwks).
    pub async fn keys(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/api/auth/keys").await
    }

    /// `GET /api/rtc/ice-servers` (extension): STUN and TURN servers for
    /// calls, with TURN credentials minted for the caller (valid until
    /// `expires_at`).
    pub async fn ice_servers(&self) -> Result<IceServersResponse, ClientError> {
        self.get("/api/rtc/ice-servers").await
    }

    /// `POST /api/p2p/session`.
    pub async fn create_p2p_session(
        &self,
        req: &P2pSessionRequest,
    ) -> Result<P2pSessionResponse, ClientError> {
        self.call(reqwest::Method::POST, "/api/p2p/session", Some(req))
            .await
    }

    /// `GET /api/p2p/sessions`: the caller's live sessions.
    pub async fn p2p_sessions(&self) -> Result<Vec<P2pSession>, ClientError> {
        let r: P2pSessionsResponse = self.get("/api/p2p/sessions").await?;
        Ok(r.sessions)
    }

    /// `DELETE /api/p2p/session/{id}`.
    pub async fn close_p2p_session(&self, session: SessionId) -> Result<(), ClientError> {
        let resp = self
            .send(
                reqwest::Method::DELETE,
                &format!("/api/p2p/session/{session}"),
                None::<&()>,
            )
            .await?;
        Self::check(resp).await.map(drop)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(reqwest::Method::GET, path, None::<&()>).await
    }

    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let resp = self.send(method, path, body).await?;
        let resp = Self::check(resp).await?;
        resp.json::<T>()
            .await
            .map_err(|e| ClientError::Protocol(format!("bad answer to {path}: {e}")))
    }

    async fn send<B: Serialize + ?Sized>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        req.send()
            .await
            .map_err(|e| self.tls.explain(ClientError::transport(e)))
    }

    /// Turns a non-2xx answer into the contract error it carries.
    async fn check(resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after_ms = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|secs| secs.saturating_mul(1000));
        let text = resp.text().await.map_err(ClientError::transport)?;
        Err(ClientError::from_http(
            status.as_u16(),
            &text,
            retry_after_ms,
        ))
    }
}
