//! Lean clients: HTTP calls through reqwest, WebSockets straight on
//! tokio-tungstenite, each from one of several loopback source addresses so
//! that many connections never run out of ephemeral ports. A [`Target`]
//! with a TLS configuration speaks `https://` and `wss://` (rustls on ring)
//! through the same code.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _, TryStreamExt as _};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// A WebSocket, plain or over TLS: one type, so that every figure's client
/// code is the same for both.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The name TLS clients ask for (SNI, certificate check): the bench's
/// leaf certificate is for `localhost` and 127.0.0.1.
pub(crate) const TLS_NAME: &str = "localhost";

/// Where a client connects: a server's address, and a TLS configuration
/// when the server speaks HTTPS.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Self {
        Self { addr, tls: None }
    }
}

impl Target {
    /// `ws://ADDR` or `wss://localhost:PORT`, and the connector to match.
    fn ws_base(&self) -> (String, Connector) {
        match &self.tls {
            Some(tls) => (
                format!("wss://{TLS_NAME}:{}", self.addr.port()),
                Connector::Rustls(tls.clone()),
            ),
            None => (format!("ws://{}", self.addr), Connector::Plain),
        }
    }
}

/// The password of every bench account.
pub(crate) const PASSWORD: &str = "bench password 1";

/// How long any single step of a client may take.
pub(crate) const STEP: Duration = Duration::from_secs(30);

/// Source addresses 127.0.0.10 .. 127.0.0.(10 + SOURCES - 1), in turn.
const SOURCES: usize = 50;
static NEXT_SOURCE: AtomicUsize = AtomicUsize::new(0);

fn next_source() -> Ipv4Addr {
    let i = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % SOURCES;
    Ipv4Addr::new(127, 0, 0, 10 + i as u8)
}

/// Client-side socket buffers: small, since the load tool holds up to ten
/// thousand connections.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(1024 * 1024)
}

/// A TCP connection from the next loopback source address.
pub(crate) async fn tcp(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(next_source(), 0)))?;
    let stream = tokio::time::timeout(STEP, socket.connect(addr))
        .await
        .context("connect timed out")?
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens a WebSocket to `ws://addr/ws` or `wss://…/ws` (with `?token=`
/// when given): TCP, the TLS handshake for a TLS target, the upgrade.
pub(crate) async fn ws(target: impl Into<Target>, token: Option<&str>) -> anyhow::Result<Ws> {
    let target = target.into();
    let stream = tcp(target.addr).await?;
    let (base, connector) = target.ws_base();
    let url = match token {
        Some(t) => format!("{base}/ws?token={t}"),
        None => format!("{base}/ws"),
    };
    let (ws, _) = tokio::time::timeout(
        STEP,
        tokio_tungstenite::client_async_tls_with_config(
            url,
            stream,
            Some(client_config()),
            Some(connector),
        ),
    )
    .await
    .context("upgrade timed out")?
    .context("WebSocket upgrade")?;
    Ok(ws)
}

/// For a WebSocket over TLS, whether its handshake resumed an earlier
/// session; None for plain TCP.
pub(crate) fn resumed(ws: &Ws) -> Option<bool> {
    match ws.get_ref() {
        MaybeTlsStream::Rustls(tls) => {
            Some(tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
        }
        _ => None,
    }
}

/// Sends one request frame.
pub(crate) async fn send(ws: &mut Ws, kind: &str, id: &str, payload: Value) -> anyhow::Result<()> {
    let frame = json!({"type": kind, "id": id, "payload": payload}).to_string();
    ws.send(Message::Text(frame.into())).await?;
    Ok(())
}

/// Sends one frame as it is.
pub(crate) async fn send_raw(ws: &mut Ws, text: &str) -> anyhow::Result<()> {
    ws.send(Message::Text(text.into())).await?;
    Ok(())
}

/// The answer to request `id`, as text.
pub(crate) async fn reply_text(ws: &mut Ws, id: &str) -> anyhow::Result<String> {
    Ok(reply(ws, id).await?.to_string())
}

/// Waits for the answer to request `id`; other frames are dropped. An
/// `error` answer is an error.
pub(crate) async fn reply(ws: &mut Ws, id: &str) -> anyhow::Result<Value> {
    let wait = async {
        while let Some(msg) = ws.try_next().await? {
            let Message::Text(text) = msg else { continue };
            if !text.contains(id) {
                continue;
            }
            let frame: Value = serde_json::from_str(text.as_str())?;
            if frame["id"] == id {
                if frame["type"] == "error" {
                    bail!("request {id} failed: {}", frame["payload"]);
                }
                return Ok(frame);
            }
        }
        bail!("connection closed while waiting for {id}")
    };
    tokio::time::timeout(STEP, wait)
        .await
        .with_context(|| format!("no answer to {id} in time"))?
}

/// Connects with `token` and completes `system.hello` / `system.welcome`.
pub(crate) async fn ws_hello(target: impl Into<Target>, token: &str) -> anyhow::Result<Ws> {
    let mut ws = ws(target, Some(token)).await?;
    send(&mut ws, "system.hello", "hello", json!({})).await?;
    reply(&mut ws, "hello").await?;
    Ok(ws)
}

/// Closes a WebSocket: our close frame, then whatever the server still
/// sends until it closes too (bounded).
pub(crate) async fn close(mut ws: Ws) {
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Reads and drops frames until the connection ends (keeps an idle client
/// answering pings).
pub(crate) async fn drain(mut ws: Ws) {
    while let Some(Ok(_)) = ws.next().await {}
}

/// An account made for a run.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    pub(crate) username: String,
    pub(crate) token: String,
}

/// The HTTP API of a server.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// The API at `http://ADDR`.
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(STEP)
                .build()
                .unwrap_or_default(),
            base: format!("http://{addr}"),
        }
    }

    /// The API of `target`: `https://localhost:PORT` (resolved to the
    /// target's address) for a TLS target, else as [`Api::new`].
    pub(crate) fn at(target: &Target) -> anyhow::Result<Self> {
        let Some(tls) = &target.tls else {
            return Ok(Self::new(target.addr));
        };
        let http = reqwest::Client::builder()
            .timeout(STEP)
            .tls_backend_preconfigured(rustls::ClientConfig::clone(tls))
            .resolve(TLS_NAME, target.addr)
            .build()
            .context("building the HTTPS client")?;
        Ok(Self {
            http,
            base: format!("https://{TLS_NAME}:{}", target.addr.port()),
        })
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> anyhow::Result<Value> {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| format!("POST {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("POST {path}: {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub(crate) async fn register(&self, username: &str) -> anyhow::Result<Account> {
        let body = self
            .post(
                "/api/auth/register",
                None,
                json!({"username": username, "password": PASSWORD}),
            )
            .await?;
        Ok(Account {
            username: username.to_owned(),
            token: body["token"].as_str().context("token")?.to_owned(),
        })
    }

    /// Logs in; `Ok(false)` for a refused login (any non-2xx).
    pub(crate) async fn login(&self, username: &str) -> anyhow::Result<bool> {
        let resp = self
            .http
            .post(format!("{}/api/auth/login", self.base))
            .json(&json!({"username": username, "password": PASSWORD}))
            .send()
            .await?;
        let ok = resp.status().is_success();
        let _ = resp.bytes().await?;
        Ok(ok)
    }

    pub(crate) async fn health(&self) -> anyhow::Result<()> {
        let resp = self
            .http
            .get(format!("{}/health", self.base))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("/health: {}", resp.status());
        }
        let _ = resp.bytes().await?;
        Ok(())
    }

    pub(crate) async fn create_room(&self, token: &str, name: &str) -> anyhow::Result<String> {
        let body = self
            .post("/api/rooms", Some(token), json!({"name": name}))
            .await?;
        Ok(body["room"]["id"].as_str().context("room id")?.to_owned())
    }

    pub(crate) async fn join_room(&self, token: &str, room: &str) -> anyhow::Result<()> {
        self.post(&format!("/api/rooms/{room}/join"), Some(token), json!({}))
            .await?;
        Ok(())
    }

    /// Registers `n` accounts `{prefix}{i}` (a few at a time: each costs an
    /// argon2id hash on the server).
    pub(crate) async fn register_many(
        &self,
        prefix: &str,
        n: usize,
    ) -> anyhow::Result<Vec<Account>> {
        let mut accounts: Vec<(usize, Account)> = futures_util::stream::iter(0..n)
            .map(|i| async move {
                let account = self.register(&format!("{prefix}{i}")).await?;
                Ok::<_, anyhow::Error>((i, account))
            })
            .buffer_unordered(4)
            .try_collect()
            .await?;
        accounts.sort_by_key(|(i, _)| *i);
        Ok(accounts.into_iter().map(|(_, a)| a).collect())
    }

    /// A public room created by the first account and joined by the rest.
    pub(crate) async fn room_with(
        &self,
        name: &str,
        members: &[Account],
    ) -> anyhow::Result<String> {
        let owner = members.first().context("a room needs an owner")?;
        let room = self.create_room(&owner.token, name).await?;
        futures_util::stream::iter(members.iter().skip(1))
            .map(|m| self.join_room(&m.token, &room))
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(room)
    }
}
