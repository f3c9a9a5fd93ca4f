//! Test helpers: a server on `127.0.0.1:0` and real HTTP and WebSocket
//! clients. Tests wait for events, never sleep; every wait has a time-out
//! only as a safety net against a hang.

#![allow(dead_code, unreachable_pub)]

pub mod agent;
pub mod process;
pub mod relay;
pub mod services;
pub mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A plain reqwest client. reqwest is built with rustls but no provider of
/// its own (the workspace's one provider is ring), so ring is made the
/// process default first.
pub fn http_client() -> reqwest::Client {
    install_ring();
    reqwest::Client::new()
}

/// Makes ring the process's default rustls provider, for reqwest clients a
/// test builds itself.
pub fn install_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server whose service the test holds: users (and their tokens) are made
/// on the service directly, so no HTTP connection or login attempt of the
/// test's counts against the limits under test.
pub struct ServiceServer {
    pub addr: SocketAddr,
    pub service: mesh_core::service::Service,
    _stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl ServiceServer {
    /// Serves `config` (whose data folder is in `dir`) on 127.0.0.1:0.
    pub async fn start(config: mesh_server_bin::Config, dir: tempfile::TempDir) -> Self {
        let service = mesh_server_bin::open_service(&config)
            .await
            .expect("service");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(mesh_server_bin::serve(
            listener,
            service.clone(),
            config,
            stopped,
        ));
        Self {
            addr,
            service,
            _stop: stop,
            _dir: dir,
        }
    }

    /// Registers `username` on the service; its token.
    pub async fn token(&self, username: &str) -> String {
        let req = mesh_core::protocol::http::RegisterRequest {
            username: username.into(),
            password: "correct horse battery".into(),
            ..Default::default()
        };
        self.service.register(req).await.expect("register").token
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = mesh_server_bin::Config::new(dir.path());
        Self::start_with(config, Some(dir)).await
    }

    pub async fn start_with(
        config: mesh_server_bin::Config,
        dir: Option<tempfile::TempDir>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(mesh_server_bin::run(listener, config, stopped));
        Self {
            addr,
            http: http_client(),
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    /// A handle on a server running elsewhere (a child process): requests
    /// only; [`TestServer::stop`] does nothing.
    pub fn attach(addr: SocketAddr) -> Self {
        Self {
            addr,
            http: http_client(),
            stop: None,
            task: None,
            _dir: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("server stops in time")
                .expect("server task")
                .expect("server result");
        }
    }

    /// Sends a request; returns status and JSON body (Null if empty).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    /// Registers a user; returns (user JSON, token).
    pub async fn register(&self, username: &str) -> (Value, String) {
        let (status, body) = self
            .post(
                "/api/auth/register",
                None,
                json!({"username": username, "password": "correct horse battery"}),
            )
            .await;
        assert_eq!(status, 201, "register {username}: {body}");
        let token = body["token"].as_str().expect("token").to_owned();
        (body["user"].clone(), token)
    }

    /// Creates a room; returns its id.
    pub async fn create_room(&self, token: &str, name: &str, visibility: &str) -> String {
        let (status, body) = self
            .post(
                "/api/rooms",
                Some(token),
                json!({"name": name, "visibility": visibility}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["room"]["id"].as_str().expect("room id").to_owned()
    }

    /// Opens a WebSocket and completes hello/welcome.
    pub async fn ws(&self, token: &str) -> WsClient {
        self.ws_with_hello(token, json!({})).await
    }

    pub async fn ws_with_hello(&self, token: &str, hello: Value) -> WsClient {
        let mut client = WsClient::connect(self.addr, token).await;
        client.send("system.hello", hello, Some("hello")).await;
        let welcome = client.expect("system.welcome").await;
        assert_eq!(welcome["id"], "hello");
        client.peer_id = welcome["payload"]["peer_id"]
            .as_str()
            .expect("peer id")
            .to_owned();
        client
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub struct WsClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub peer_id: String,
    /// Frames received while waiting for another.
    pub seen: Vec<Value>,
}

impl WsClient {
    pub async fn connect(addr: SocketAddr, token: &str) -> Self {
        let url = format!("ws://{addr}/ws?token={token}");
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        Self {
            ws,
            peer_id: String::new(),
            seen: Vec::new(),
        }
    }

    pub async fn send(&mut self, kind: &str, payload: Value, id: Option<&str>) {
        let mut frame = json!({"type": kind, "payload": payload});
        if let Some(id) = id {
            frame["id"] = json!(id);
        }
        self.send_raw(&frame.to_string()).await;
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("ws send");
    }

    /// The next JSON frame, skipping pings.
    pub async fn next(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("stream open")
                .expect("frame ok");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).expect("json frame"),
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// The next JSON frame (set-aside ones first), or `None` once the
    /// connection is closed or broken.
    pub async fn try_next(&mut self) -> Option<Value> {
        if !self.seen.is_empty() {
            return Some(self.seen.remove(0));
        }
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame or the end in time");
            match msg {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).ok(),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Waits for a frame of type `kind`; other frames are kept in `seen`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        self.expect_where(kind, |_| true).await
    }

    /// Waits for a frame of type `kind` matching `pred`.
    pub async fn expect_where(&mut self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.seen.iter().position(|f| f["type"] == kind && pred(f)) {
            return self.seen.remove(i);
        }
        loop {
            let frame = self.next().await;
            if frame["type"] == kind && pred(&frame) {
                return frame;
            }
            self.seen.push(frame);
        }
    }

    /// Every `chat.message.created` of `room` (those set aside by earlier
    /// waits first), until one with `seq` at least `until` has come; in the
    /// order they came.
    pub async fn messages_until(&mut self, room: &str, until: u64) -> Vec<Value> {
        let is_message = |f: &Value| {
            f["type"] == "chat.message.created" && f["payload"]["message"]["room_id"] == room
        };
        let mut got: Vec<Value> = Vec::new();
        let mut rest = Vec::new();
        for frame in std::mem::take(&mut self.seen) {
            if is_message(&frame) {
                got.push(frame["payload"]["message"].clone());
            } else {
                rest.push(frame);
            }
        }
        self.seen = rest;
        while !got.iter().any(|m| m["seq"].as_u64() >= Some(until)) {
            let frame = self.next().await;
            if is_message(&frame) {
                got.push(frame["payload"]["message"].clone());
            } else {
                self.seen.push(frame);
            }
        }
        got
    }

    /// Waits for the answer to request `id`.
    pub async fn reply(&mut self, id: &str) -> Value {
        if let Some(i) = self.seen.iter().position(|f| f["id"] == id) {
            return self.seen.remove(i);
        }
        loop {
            let frame = self.next().await;
            if frame["id"] == id {
                return frame;
            }
            self.seen.push(frame);
        }
    }

    /// Sends a request and waits for its answer.
    pub async fn request(&mut self, kind: &str, payload: Value, id: &str) -> Value {
        self.send(kind, payload, Some(id)).await;
        self.reply(id).await
    }

    /// Waits for the server to close the connection; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close in time");
            match msg {
                Some(Ok(Message::Close(frame))) => {
                    // Keep polling so our half of the closing handshake goes out.
                    let _ = tokio::time::timeout(WAIT, async {
                        while let Some(Ok(_)) = self.ws.next().await {}
                    })
                    .await;
                    return frame.map(|f| u16::from(f.code));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}
