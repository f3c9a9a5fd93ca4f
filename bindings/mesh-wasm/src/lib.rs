//! `mesh-wasm`: the mesh client SDK for JavaScript, through wasm-bindgen.
//!
//! A JavaScript `WebSocket` (the browser's, or the `ws` package set as
//! `globalThis.WebSocket` in Node) drives the sans-IO
//! [`ClientState`] of `mesh-core`: resume, dedupe, the offline send queue,
//! heartbeats and reconnect backoff are the same code the native client
//! runs. The REST half goes through the global `fetch`. Timers are the
//! global `setTimeout`.
//!
//! Objects cross as the contract's JSON shapes (`snake_case` fields, ids as
//! strings, times as RFC 3339 strings), typed in the generated `.d.ts`.
//! Errors are JS `Error`s with a `code` property: the contract's code for
//! refusals by the server (`unauthorized`, `forbidden`, …), or a client-side
//! one (`not_connected`, `disconnected`, `closed`, `protocol`,
//! `invalid_argument`, `transport`).
//!
//! ```js
//! const api = new MeshApi('http://127.0.0.1:8000');
//! const auth = await api.register('alice', 'correct horse battery');
//! const client = await connect(server, auth.token, (event) => console.log(event));
//! const room = await client.createRoom('general', undefined, false);
//! await client.sendMessage(room.id, 'hi');
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};

use js_sys::{Function, JSON, Promise, Reflect};
use mesh_core::client::P2pSessionGrant;
use mesh_core::client::{
    ClientConfig, ClientError, ClientState, Completion, Event, HistoryPage, HistoryQuery, Reply,
    RequestId,
};
use mesh_core::protocol::RtcKind;
use mesh_core::protocol::http::{CreateRoomRequest, LoginRequest, RegisterRequest, RoleRequest};
use mesh_core::protocol::{
    PeerId, Presence, Role, RoomId, RtcSignal, SessionId, SessionKind, Timestamp, UserId,
    Visibility,
};
use serde::Serialize;
use serde_json::json;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, future_to_promise};
use web_sys::{CloseEvent, MessageEvent, Request, RequestInit, Response, WebSocket};

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &Function, ms: f64) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(id: &JsValue);
    #[wasm_bindgen(js_name = fetch)]
    fn fetch_request(req: &Request) -> Promise;
}

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &str = r#"
/** A person with an account. */
export interface User { id: string; username: string; display_name: string; created_at: string }
/** A chat room. */
export interface Room {
  id: string; name: string; topic: string | null; visibility: "public" | "private";
  created_by: string; created_at: string; member_count: number;
}
/** A member of a room. */
export interface Member {
  user: User; role: "member" | "admin" | "owner"; joined_at: string;
  presence: "online" | "away" | "busy" | "offline";
}
/** A chat message; `seq` grows by one per room. */
export interface Message {
  id: string; room_id: string; seq: number; sender: User; content: string;
  created_at: string; client_id: string | null;
}
/** The answer to register and login. */
export interface AuthResponse { user: User; token: string; expires_at: string; device_id: string }
/** One page of history, ascending `seq`. */
export interface HistoryPage { messages: Message[]; has_more: boolean }
/** An authorised P2P session; the initiator presents `session_token` to the target. */
export interface P2pGrant {
  session: {
    id: string; room_id: string; kind: "file" | "folder" | "terminal";
    initiator_peer_id: string; target_peer_id: string; initiator_user_id: string;
    target_user_id: string; state: string; created_at: string; expires_at: string;
  };
  session_token: string;
}
/** ICE servers for a call, to pass to `new RTCPeerConnection({ iceServers })`. */
export interface IceServers {
  ice_servers: { urls: string[]; username?: string; credential?: string }[];
  expires_at: string;
}
/** An error with the contract's code (or a client-side one). */
export interface MeshError extends Error { code: string }
/** What the `onEvent` callback hears. */
export type MeshEvent =
  | { type: "connected"; peer_id: string; user: User; resumed: boolean }
  | { type: "disconnected"; reason: string }
  | { type: "closed"; error: { code: string; message: string } | null }
  | { type: "message"; message: Message }
  | { type: "send_failed"; client_id: string; room_id: string; code: string; message: string }
  | { type: "room_joined"; room_id: string; user: User }
  | { type: "room_left"; room_id: string; user_id: string }
  | { type: "room_updated"; room: Room }
  | { type: "room_deleted"; room_id: string }
  | { type: "member_updated"; room_id: string; user_id: string; role: string }
  | { type: "typing"; room_id: string; user_id: string; typing: boolean }
  | { type: "presence"; user_id: string; status: string; message: string | null }
  | ({ type: "p2p_session_created" } & P2pGrant)
  | { type: "p2p_session_closed"; session_id: string; reason: string }
  | { type: "rtc"; kind: "offer" | "answer" | "ice" | "hangup"; room_id: string;
      from_peer_id: string; from_user_id: string; body: Record<string, unknown> }
  | { type: "server_error"; code: string; message: string }
  | { type: "other"; description: string };
"#;

// ----- errors and values -----

/// A JS `Error` whose `code` property is `code`.
fn js_error(code: &str, message: &str) -> JsValue {
    let e = js_sys::Error::new(message);
    let _ = Reflect::set(&e, &"code".into(), &code.into());
    e.into()
}

/// The code and text of a client error, as the contract spells codes.
fn error_parts(e: &ClientError) -> (&'static str, String) {
    match e {
        ClientError::Server { message, .. } => (e.code_str(), message.clone()),
        other => (other.code_str(), other.to_string()),
    }
}

/// A JS `Error` with the `code`, and `retry_after_ms` when the server gave
/// one (with `rate_limited`).
fn client_error(e: &ClientError) -> JsValue {
    let (code, message) = error_parts(e);
    let error = js_error(code, &message);
    if let ClientError::Server {
        retry_after_ms: Some(ms),
        ..
    } = e
    {
        let _ = Reflect::set(&error, &"retry_after_ms".into(), &(*ms as f64).into());
    }
    error
}

/// A role the owner can give: `admin` or `member` (ownership is not
/// handed over this way).
fn parse_role(name: &str) -> Result<Role, JsValue> {
    match parse_wire::<Role>("role (admin, member)", name)? {
        Role::Owner => Err(invalid("the role must be admin or member, not owner")),
        role => Ok(role),
    }
}

/// A request body as the contract's JSON.
fn body_json<T: Serialize>(body: &T) -> Result<String, JsValue> {
    serde_json::to_string(body).map_err(|e| invalid(&e.to_string()))
}

/// A contract enum from its wire name (`"file"`, `"away"`, …).
fn parse_wire<T: serde::de::DeserializeOwned>(what: &str, name: &str) -> Result<T, JsValue> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|_| invalid(&format!("not a {what}: {name:?}")))
}

fn invalid(message: &str) -> JsValue {
    js_error("invalid_argument", message)
}

fn transport(message: &str) -> ClientError {
    ClientError::transport(std::io::Error::other(message.to_owned()))
}

/// A serde value as a plain JS object (through JSON: the contract's shape).
fn to_js<T: Serialize>(v: &T) -> JsValue {
    serde_json::to_string(v)
        .ok()
        .and_then(|s| JSON::parse(&s).ok())
        .unwrap_or(JsValue::UNDEFINED)
}

fn parse_id<T: std::str::FromStr>(what: &str, id: &str) -> Result<T, JsValue> {
    id.parse()
        .map_err(|_| invalid(&format!("not a {what} id: {id:?}")))
}

fn grant_json(g: &P2pSessionGrant) -> serde_json::Value {
    json!({ "session": g.session, "session_token": g.session_token })
}

fn parse_room(id: &str) -> Result<RoomId, JsValue> {
    id.parse()
        .map_err(|_| invalid(&format!("not a room id: {id:?}")))
}

fn now() -> Timestamp {
    Timestamp::from_unix_millis(js_sys::Date::now() as i64)
}

/// A promise and its `resolve` and `reject` functions.
fn promise_pair() -> (Promise, Function, Function) {
    let mut slot = None;
    let promise = Promise::new(&mut |resolve, reject| slot = Some((resolve, reject)));
    // The executor runs synchronously inside `new Promise`.
    let (resolve, reject) = slot.expect("the Promise executor ran");
    (promise, resolve, reject)
}

// ----- HTTP -----

/// The REST half of the contract over the global `fetch`.
#[derive(Clone, Debug)]
struct Http {
    base: String,
    token: Option<String>,
}

impl Http {
    fn new(server: &str) -> Result<Self, JsValue> {
        let base = server.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(invalid(&format!(
                "the server address must start with http:// or https://: {server:?}"
            )));
        }
        Ok(Self {
            base: base.to_owned(),
            token: None,
        })
    }

    /// `GET /api/rooms/{id}/messages` with `query`.
    async fn messages(&self, room: RoomId, query: HistoryQuery) -> Result<JsValue, JsValue> {
        let query = query.to_query();
        let path = if query.is_empty() {
            format!("/api/rooms/{room}/messages")
        } else {
            format!("/api/rooms/{room}/messages?{query}")
        };
        self.call("GET", &path, None).await
    }

    fn ws_url(&self) -> String {
        let rest = self
            .base
            .strip_prefix("https://")
            .map(|r| format!("wss://{r}"))
            .or_else(|| {
                self.base
                    .strip_prefix("http://")
                    .map(|r| format!("ws://{r}"))
            })
            .unwrap_or_else(|| self.base.clone());
        let token = self.token.as_deref().unwrap_or_default();
        // A browser WebSocket cannot set headers: the token rides in the query.
        format!("{rest}/ws?token={}", js_sys::encode_uri_component(token))
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<JsValue, JsValue> {
        let init = RequestInit::new();
        init.set_method(method);
        let headers = web_sys::Headers::new()?;
        if let Some(token) = &self.token {
            headers.set("Authorization", &format!("Bearer {token}"))?;
        }
        if let Some(body) = &body {
            headers.set("Content-Type", "application/json")?;
            init.set_body(&JsValue::from_str(body));
        }
        init.set_headers(&headers);
        let req = Request::new_with_str_and_init(&format!("{}{path}", self.base), &init)?;
        let resp: Response = JsFuture::from(fetch_request(&req))
            .await
            .map_err(|e| js_error("transport", &format!("fetch {path}: {e:?}")))?
            .dyn_into()?;
        let text = JsFuture::from(resp.text()?)
            .await?
            .as_string()
            .unwrap_or_default();
        if resp.ok() {
            if text.is_empty() {
                return Ok(JsValue::UNDEFINED);
            }
            return JSON::parse(&text)
                .map_err(|_| js_error("protocol", &format!("bad answer to {path}")));
        }
        let retry_after_ms = resp
            .headers()
            .get("Retry-After")
            .ok()
            .flatten()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|secs| secs.saturating_mul(1000));
        Err(client_error(&ClientError::from_http(
            resp.status(),
            &text,
            retry_after_ms,
        )))
    }
}

fn field(v: &JsValue, name: &str) -> JsValue {
    Reflect::get(v, &name.into()).unwrap_or(JsValue::UNDEFINED)
}

/// Register and log in, without a connection.
#[wasm_bindgen]
#[derive(Debug)]
pub struct MeshApi {
    http: Http,
}

#[wasm_bindgen]
impl MeshApi {
    /// `server` is the base URL, e.g. `http://127.0.0.1:8000`.
    #[wasm_bindgen(constructor)]
    pub fn new(server: &str) -> Result<MeshApi, JsValue> {
        Ok(Self {
            http: Http::new(server)?,
        })
    }

    /// `POST /api/auth/register`: makes the account and logs it in.
    #[wasm_bindgen(unchecked_return_type = "Promise<AuthResponse>")]
    pub fn register(
        &self,
        username: String,
        password: String,
        display_name: Option<String>,
    ) -> Promise {
        let http = self.http.clone();
        let body = body_json(&RegisterRequest {
            username,
            password,
            display_name,
            device_name: None,
        });
        future_to_promise(async move { http.call("POST", "/api/auth/register", Some(body?)).await })
    }

    /// `POST /api/auth/login`.
    #[wasm_bindgen(unchecked_return_type = "Promise<AuthResponse>")]
    pub fn login(&self, username: String, password: String) -> Promise {
        let http = self.http.clone();
        let body = body_json(&LoginRequest {
            username,
            password,
            device_name: None,
        });
        future_to_promise(async move { http.call("POST", "/api/auth/login", Some(body?)).await })
    }
}

// ----- the connected client -----

#[derive(Debug)]
struct Socket {
    id: u64,
    ws: WebSocket,
    open: bool,
}

/// Everything the socket handlers, the timer and the app's calls share.
#[derive(Debug)]
struct Driver {
    state: ClientState,
    ws_url: String,
    socket: Option<Socket>,
    next_socket: u64,
    timer: Option<JsValue>,
    tick: Option<Function>,
    on_event: Function,
    requests: HashMap<RequestId, (Function, Function)>,
    sends: HashMap<String, (Function, Function)>,
    /// `connect()`'s promise, until the first welcome (or failure).
    welcome: Option<(Function, Function)>,
}

type Shared = Rc<RefCell<Driver>>;

/// Runs `f` on the driver if the client still exists, then drives it.
fn with_driver(weak: &Weak<RefCell<Driver>>, f: impl FnOnce(&mut Driver)) {
    if let Some(shared) = weak.upgrade() {
        f(&mut shared.borrow_mut());
        drive(&shared);
    }
}

fn open_socket(weak: &Weak<RefCell<Driver>>, d: &mut Driver) {
    let id = d.next_socket;
    d.next_socket += 1;
    let ws = match WebSocket::new(&d.ws_url) {
        Ok(ws) => ws,
        Err(e) => {
            d.state
                .connect_failed(now(), transport(&format!("WebSocket: {e:?}")));
            return;
        }
    };
    let current = move |d: &Driver| d.socket.as_ref().is_some_and(|s| s.id == id);

    let w = weak.clone();
    let onopen = Closure::<dyn FnMut(web_sys::Event)>::new(move |_: web_sys::Event| {
        with_driver(&w, |d| {
            if current(d) {
                if let Some(s) = d.socket.as_mut() {
                    s.open = true;
                }
                d.state.connected(now());
            }
        })
    });
    let w = weak.clone();
    let onmessage = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
        if let Some(text) = e.data().as_string() {
            with_driver(&w, |d| {
                if current(d) {
                    d.state.frame_received(&text, now());
                }
            })
        }
    });
    let w = weak.clone();
    let onclose = Closure::<dyn FnMut(CloseEvent)>::new(move |e: CloseEvent| {
        with_driver(&w, |d| {
            if !current(d) {
                return;
            }
            let was_open = d.socket.take().is_some_and(|s| s.open);
            if was_open {
                let reason = format!("closed ({}) {}", e.code(), e.reason());
                d.state.disconnected(now(), reason);
            } else {
                let error = transport(&format!("the WebSocket did not open ({})", e.code()));
                d.state.connect_failed(now(), error);
            }
        })
    });
    // The closures belong to the JS functions from here on (freed with them).
    ws.set_onopen(Some(onopen.into_js_value().unchecked_ref()));
    ws.set_onmessage(Some(onmessage.into_js_value().unchecked_ref()));
    ws.set_onclose(Some(onclose.into_js_value().unchecked_ref()));
    d.socket = Some(Socket {
        id,
        ws,
        open: false,
    });
}

/// Feeds the state machine's outputs to the socket, the timer and the app.
/// JS callbacks run after the driver's borrow ends, so they may call the
/// client again.
fn drive(shared: &Shared) {
    let weak = Rc::downgrade(shared);
    let mut calls: Vec<(Function, JsValue)> = Vec::new();
    let mut closed_early = false;
    {
        let mut d = shared.borrow_mut();
        let d = &mut *d;
        let t = now();
        if d.state.poll_close()
            && let Some(s) = d.socket.take()
        {
            let _ = s.ws.close();
        }
        if d.state.poll_connect(t) {
            open_socket(&weak, d);
        }
        while let Some(frame) = d.state.poll_transmit() {
            if let Some(s) = &d.socket {
                let _ = s.ws.send_with_str(&frame);
            }
        }
        while let Some(c) = d.state.poll_completion() {
            let (resolvers, result) = match c {
                Completion::Request { id, result } => (
                    d.requests.remove(&id),
                    result.map(|reply| match reply {
                        Reply::Joined { members, .. } => to_js(&members),
                        Reply::P2pSession(grant) => to_js(&grant_json(&grant)),
                        _ => JsValue::UNDEFINED,
                    }),
                ),
                Completion::Send { client_id, result } => {
                    (d.sends.remove(&client_id), result.map(|m| to_js(&m)))
                }
                _ => (None, Ok(JsValue::UNDEFINED)),
            };
            if let Some((resolve, reject)) = resolvers {
                match result {
                    Ok(v) => calls.push((resolve, v)),
                    Err(e) => calls.push((reject, client_error(&e))),
                }
            }
        }
        while let Some(event) = d.state.poll_event() {
            match &event {
                Event::Connected { .. } => {
                    if let Some((resolve, _)) = d.welcome.take() {
                        calls.push((resolve, JsValue::UNDEFINED));
                    }
                }
                Event::Closed { error } => {
                    if let Some((_, reject)) = d.welcome.take() {
                        let e = error.clone().unwrap_or(ClientError::Closed);
                        calls.push((reject, client_error(&e)));
                    }
                }
                Event::Disconnected { reason, .. } => {
                    // The first connection failed: `connect()` fails rather
                    // than retrying in the background.
                    if let Some((_, reject)) = d.welcome.take() {
                        calls.push((reject, js_error("transport", reason)));
                        closed_early = true;
                    }
                }
                _ => {}
            }
            calls.push((d.on_event.clone(), event_to_js(event)));
        }
        if let Some(timer) = d.timer.take() {
            clear_timeout(&timer);
        }
        if let (Some(at), Some(tick)) = (d.state.poll_timeout(), &d.tick) {
            let ms = (at.unix_millis() - t.unix_millis()).max(0) as f64;
            d.timer = Some(set_timeout(tick, ms));
        }
    }
    for (f, v) in calls {
        // An exception in the app's callback is the app's: keep going.
        let _ = f.call1(&JsValue::NULL, &v);
    }
    if closed_early {
        shared.borrow_mut().state.close();
        drive(shared);
    }
}

fn event_to_js(event: Event) -> JsValue {
    let v = match event {
        Event::Connected {
            peer_id,
            user,
            resumed,
            ..
        } => json!({ "type": "connected", "peer_id": peer_id, "user": user, "resumed": resumed }),
        Event::Disconnected { reason, .. } => json!({ "type": "disconnected", "reason": reason }),
        Event::Closed { error } => {
            let error = error.map(|e| {
                let (code, message) = error_parts(&e);
                json!({ "code": code, "message": message })
            });
            json!({ "type": "closed", "error": error })
        }
        Event::Message(m) => json!({ "type": "message", "message": m }),
        Event::SendFailed {
            client_id,
            room_id,
            error,
        } => {
            let (code, message) = error_parts(&error);
            json!({ "type": "send_failed", "client_id": client_id, "room_id": room_id,
                    "code": code, "message": message })
        }
        Event::RoomJoined { room_id, user, .. } => {
            json!({ "type": "room_joined", "room_id": room_id, "user": user })
        }
        Event::RoomLeft { room_id, user_id } => {
            json!({ "type": "room_left", "room_id": room_id, "user_id": user_id })
        }
        Event::RoomUpdated(room) => json!({ "type": "room_updated", "room": room }),
        Event::RoomDeleted { room_id } => json!({ "type": "room_deleted", "room_id": room_id }),
        Event::MemberUpdated {
            room_id,
            user_id,
            role,
        } => {
            json!({ "type": "member_updated", "room_id": room_id, "user_id": user_id, "role": role })
        }
        Event::Typing {
            room_id,
            user_id,
            typing,
        } => json!({ "type": "typing", "room_id": room_id, "user_id": user_id, "typing": typing }),
        Event::Presence {
            user_id,
            status,
            message,
        } => {
            json!({ "type": "presence", "user_id": user_id, "status": status, "message": message })
        }
        Event::Rtc { kind, signal } => {
            json!({ "type": "rtc", "kind": kind.as_str(), "room_id": signal.room_id,
                    "from_peer_id": signal.from_peer_id, "from_user_id": signal.from_user_id,
                    "body": signal.body })
        }
        Event::P2pSessionCreated(grant) => {
            let mut v = grant_json(&grant);
            v["type"] = json!("p2p_session_created");
            v
        }
        Event::P2pSessionClosed { session_id, reason } => {
            json!({ "type": "p2p_session_closed", "session_id": session_id, "reason": reason })
        }
        Event::ServerError(e) => {
            let (code, message) = error_parts(&e);
            json!({ "type": "server_error", "code": code, "message": message })
        }
        other => json!({ "type": "other", "description": format!("{other:?}") }),
    };
    to_js(&v)
}

/// Connects to `server` with `token`; `onEvent` hears every event. Resolves
/// once the server welcomed the connection (reconnects, with resume, are
/// automatic after that); rejects with `unauthorized` for a refused token.
#[wasm_bindgen(unchecked_return_type = "Promise<MeshClient>")]
pub fn connect(
    server: String,
    token: String,
    #[wasm_bindgen(unchecked_param_type = "(event: MeshEvent) => void")] on_event: Function,
    device_name: Option<String>,
) -> Promise {
    future_to_promise(async move {
        let mut http = Http::new(&server)?;
        http.token = Some(token);
        // A browser cannot see the WebSocket upgrade's 401: ask over HTTP
        // first so a refused token fails here instead of retrying forever.
        http.call("GET", "/api/auth/me", None).await?;
        let config = ClientConfig {
            device_name,
            ..ClientConfig::default()
        };
        let seed = (js_sys::Math::random() * 9_007_199_254_740_992.0) as u64;
        let (welcomed, resolve, reject) = promise_pair();
        let shared: Shared = Rc::new(RefCell::new(Driver {
            state: ClientState::new(config, now(), seed),
            ws_url: http.ws_url(),
            socket: None,
            next_socket: 0,
            timer: None,
            tick: None,
            on_event,
            requests: HashMap::new(),
            sends: HashMap::new(),
            welcome: Some((resolve, reject)),
        }));
        let weak = Rc::downgrade(&shared);
        let tick = Closure::<dyn FnMut()>::new(move || {
            with_driver(&weak, |d| {
                d.timer = None;
                d.state.handle_timeout(now());
            })
        });
        shared.borrow_mut().tick = Some(tick.into_js_value().unchecked_into());
        drive(&shared);
        JsFuture::from(welcomed).await?;
        Ok(MeshClient { shared, http }.into())
    })
}

/// A connected client (see [`connect`]).
#[wasm_bindgen]
#[derive(Debug)]
pub struct MeshClient {
    shared: Shared,
    http: Http,
}

impl MeshClient {
    /// Makes a request of the state machine and answers it when it completes.
    fn request(&self, f: impl FnOnce(&mut ClientState) -> RequestId) -> Promise {
        let (promise, resolve, reject) = promise_pair();
        {
            let mut d = self.shared.borrow_mut();
            let id = f(&mut d.state);
            d.requests.insert(id, (resolve, reject));
        }
        drive(&self.shared);
        promise
    }
}

#[wasm_bindgen]
impl MeshClient {
    /// The user this client is logged in as.
    #[wasm_bindgen(unchecked_return_type = "User | undefined")]
    pub fn me(&self) -> JsValue {
        let d = self.shared.borrow();
        d.state
            .me()
            .map_or(JsValue::UNDEFINED, |(_, user)| to_js(user))
    }

    /// This connection's peer id (what another user's
    /// `requestP2pSession` targets).
    #[wasm_bindgen(js_name = peerId)]
    pub fn peer_id(&self) -> Option<String> {
        let d = self.shared.borrow();
        d.state.me().map(|(peer, _)| peer.to_string())
    }

    /// Asks for a P2P session with `targetPeerId` in a room both are in;
    /// `kind` is `file`, `folder` or `terminal`. Both peers also hear
    /// `p2p_session_created`.
    #[wasm_bindgen(js_name = requestP2pSession, unchecked_return_type = "Promise<P2pGrant>")]
    pub fn request_p2p_session(
        &self,
        room_id: &str,
        target_peer_id: &str,
        kind: &str,
    ) -> Result<Promise, JsValue> {
        let room = parse_room(room_id)?;
        let target: PeerId = parse_id("peer", target_peer_id)?;
        let kind: SessionKind = parse_wire("session kind", kind)?;
        Ok(self.request(|s| s.request_p2p_session(room, target, kind)))
    }

    /// Closes a P2P session; both parties hear `p2p_session_closed`.
    #[wasm_bindgen(js_name = closeP2pSession)]
    pub fn close_p2p_session(&self, session_id: &str) -> Result<(), JsValue> {
        let session: SessionId = parse_id("session", session_id)?;
        self.shared.borrow_mut().state.close_p2p_session(session);
        drive(&self.shared);
        Ok(())
    }

    /// Sends a message; resolves with it as stored (with its `seq`). Queued
    /// while offline; retries never duplicate it.
    #[wasm_bindgen(js_name = sendMessage, unchecked_return_type = "Promise<Message>")]
    pub fn send_message(&self, room_id: &str, content: String) -> Result<Promise, JsValue> {
        let room = parse_room(room_id)?;
        let (promise, resolve, reject) = promise_pair();
        {
            let mut d = self.shared.borrow_mut();
            let client_id = d.state.send_message(room, content, now());
            d.sends.insert(client_id, (resolve, reject));
        }
        drive(&self.shared);
        Ok(promise)
    }

    /// Joins a room (subscribing to it); resolves with its members.
    #[wasm_bindgen(js_name = joinRoom, unchecked_return_type = "Promise<Member[]>")]
    pub fn join_room(&self, room_id: &str) -> Result<Promise, JsValue> {
        let room = parse_room(room_id)?;
        let joined = self.request(|s| s.join_room(room));
        let http = self.http.clone();
        let weak = Rc::downgrade(&self.shared);
        Ok(future_to_promise(async move {
            let members = JsFuture::from(joined).await?;
            // As the native client does: the room's current `seq` becomes
            // its resume point, so a reconnect replays what is sent to it
            // while offline even before a message from it was seen. Best
            // effort.
            if let Ok(page) = http.messages(room, HistoryQuery::latest(1)).await
                && let Some(shared) = weak.upgrade()
            {
                let seq = newest_seq(&page).unwrap_or(0);
                shared.borrow_mut().state.observe_seq(room, seq);
            }
            Ok(members)
        }))
    }

    /// Leaves a room.
    #[wasm_bindgen(js_name = leaveRoom, unchecked_return_type = "Promise<void>")]
    pub fn leave_room(&self, room_id: &str) -> Result<Promise, JsValue> {
        let room = parse_room(room_id)?;
        Ok(self.request(|s| s.leave_room(room)))
    }

    /// Sends a WebRTC signal (`offer`, `answer`, `ice` or `hangup`) to
    /// `targetPeerId`, whose user shares the room; `body` is an object with
    /// the signal's own fields (`sdp`, `candidate`, …). The server relays it
    /// with `from_peer_id` and `from_user_id` added. Fire and forget.
    #[wasm_bindgen(js_name = sendRtc)]
    pub fn send_rtc(
        &self,
        kind: &str,
        room_id: &str,
        target_peer_id: &str,
        #[wasm_bindgen(unchecked_param_type = "Record<string, unknown>")] body: JsValue,
    ) -> Result<(), JsValue> {
        let kind: RtcKind = kind
            .parse()
            .map_err(|e: mesh_core::protocol::UnknownRtcKind| invalid(&e.to_string()))?;
        let room_id = parse_room(room_id)?;
        let target_peer_id: PeerId = parse_id("peer", target_peer_id)?;
        let body = JSON::stringify(&body)
            .ok()
            .and_then(|s| s.as_string())
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
        let Some(serde_json::Value::Object(body)) = body else {
            return Err(invalid("the rtc body must be a plain object"));
        };
        let signal = RtcSignal {
            target_peer_id,
            room_id,
            from_peer_id: None,
            from_user_id: None,
            body,
        };
        self.shared.borrow_mut().state.send_rtc(kind, signal);
        drive(&self.shared);
        Ok(())
    }

    /// Makes `userId` an `admin` or a plain `member` of the room (the
    /// owner only); everyone in it hears `member_updated`.
    #[wasm_bindgen(js_name = setRole, unchecked_return_type = "Promise<Member>")]
    pub fn set_role(&self, room_id: &str, user_id: &str, role: &str) -> Result<Promise, JsValue> {
        let room = parse_room(room_id)?;
        let user: UserId = parse_id("user", user_id)?;
        let role = parse_role(role)?;
        let body = body_json(&RoleRequest { role })?;
        let http = self.http.clone();
        Ok(future_to_promise(async move {
            let answer = http
                .call(
                    "PATCH",
                    &format!("/api/rooms/{room}/members/{user}"),
                    Some(body),
                )
                .await?;
            Ok(field(&answer, "member"))
        }))
    }

    /// Tells a room this user is (or stopped) typing. Fire and forget.
    #[wasm_bindgen(js_name = setTyping)]
    pub fn set_typing(&self, room_id: &str, typing: bool) -> Result<(), JsValue> {
        let room = parse_room(room_id)?;
        self.shared.borrow_mut().state.set_typing(room, typing);
        drive(&self.shared);
        Ok(())
    }

    /// Sets this user's presence: `online`, `away`, `busy` or `offline`.
    #[wasm_bindgen(js_name = setPresence, unchecked_return_type = "Promise<void>")]
    pub fn set_presence(&self, status: &str, message: Option<String>) -> Result<Promise, JsValue> {
        let presence: Presence = parse_wire("presence status", status)?;
        Ok(self.request(|s| s.set_presence(presence, message)))
    }

    /// Creates a room this user owns (and is subscribed to).
    #[wasm_bindgen(js_name = createRoom, unchecked_return_type = "Promise<Room>")]
    pub fn create_room(&self, name: String, topic: Option<String>, private: bool) -> Promise {
        let req = CreateRoomRequest {
            name,
            topic,
            visibility: Some(Visibility::private_if(private)),
        };
        let http = self.http.clone();
        let weak = Rc::downgrade(&self.shared);
        future_to_promise(async move {
            let body = serde_json::to_string(&req).map_err(|e| invalid(&e.to_string()))?;
            let answer = http.call("POST", "/api/rooms", Some(body)).await?;
            let room = field(&answer, "room");
            // Resume from 0: nothing sent to the new room is missed.
            if let (Some(id), Some(shared)) = (field(&room, "id").as_string(), weak.upgrade())
                && let Ok(id) = id.parse::<RoomId>()
            {
                shared.borrow_mut().state.observe_seq(id, 0);
            }
            Ok(room)
        })
    }

    /// The STUN and TURN servers for calls (`GET /api/rtc/ice-servers`),
    /// with TURN credentials minted for this user; fetch them at call start.
    #[wasm_bindgen(js_name = iceServers, unchecked_return_type = "Promise<IceServers>")]
    pub fn ice_servers(&self) -> Promise {
        let http = self.http.clone();
        future_to_promise(async move { http.call("GET", "/api/rtc/ice-servers", None).await })
    }

    /// The rooms this user can see.
    #[wasm_bindgen(unchecked_return_type = "Promise<Room[]>")]
    pub fn rooms(&self) -> Promise {
        let http = self.http.clone();
        future_to_promise(async move {
            let answer = http.call("GET", "/api/rooms", None).await?;
            Ok(field(&answer, "rooms"))
        })
    }

    /// A room's members.
    #[wasm_bindgen(unchecked_return_type = "Promise<Member[]>")]
    pub fn members(&self, room_id: &str) -> Result<Promise, JsValue> {
        let room = parse_room(room_id)?;
        let http = self.http.clone();
        Ok(future_to_promise(async move {
            let answer = http
                .call("GET", &format!("/api/rooms/{room}/members"), None)
                .await?;
            Ok(field(&answer, "members"))
        }))
    }

    /// One page of a room's history: the newest (no `before`, no `after`),
    /// the one just older than `before`, or the one just newer than `after`;
    /// at most `limit` messages (server default 50).
    #[wasm_bindgen(unchecked_return_type = "Promise<HistoryPage>")]
    pub fn history(
        &self,
        room_id: &str,
        before: Option<f64>,
        after: Option<f64>,
        limit: Option<u32>,
    ) -> Result<Promise, JsValue> {
        let room = parse_room(room_id)?;
        let page = match (before, after) {
            (None, None) => HistoryPage::Latest,
            (Some(seq), None) => HistoryPage::Before(seq_arg("before", seq)?),
            (None, Some(seq)) => HistoryPage::After(seq_arg("after", seq)?),
            (Some(_), Some(_)) => return Err(invalid("give `before` or `after`, not both")),
        };
        let http = self.http.clone();
        let weak = Rc::downgrade(&self.shared);
        Ok(future_to_promise(async move {
            let answer = http.messages(room, HistoryQuery { page, limit }).await?;
            // Its newest `seq` becomes the room's resume point.
            if let Some(seq) = newest_seq(&answer)
                && let Some(shared) = weak.upgrade()
            {
                shared.borrow_mut().state.observe_seq(room, seq);
            }
            Ok(answer)
        }))
    }

    /// Closes the connection for good; `onEvent` hears `closed`.
    pub fn close(&self) {
        self.shared.borrow_mut().state.close();
        drive(&self.shared);
    }
}

/// A `seq` argument from JS: a whole number from 0 up.
fn seq_arg(what: &str, v: f64) -> Result<u64, JsValue> {
    if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= 9_007_199_254_740_991.0 {
        Ok(v as u64)
    } else {
        Err(invalid(&format!("`{what}` must be a message seq, not {v}")))
    }
}

/// The newest `seq` of a history page (`{"messages": [...]}`), if it has
/// messages and is that shape.
fn newest_seq(page: &JsValue) -> Option<u64> {
    let messages = field(page, "messages").dyn_into::<js_sys::Array>().ok()?;
    let seq = field(&messages.at(-1), "seq").as_f64()?;
    seq_arg("seq", seq).ok()
}

/// The pure parts, run in Node by `wasm-bindgen-test-runner`
/// (`cargo test -p mesh-wasm --target wasm32-unknown-unknown --lib`, as
/// `scripts/test.sh` does): errors, the JSON shapes events cross as, URLs,
/// and the sans-IO client state machine itself running as wasm.
#[cfg(all(test, target_arch = "wasm32"))]
mod tests {
    use super::*;
    use mesh_core::protocol::{Message, MessageId, User, UserId};
    use wasm_bindgen_test::wasm_bindgen_test;

    fn get(v: &JsValue, path: &str) -> JsValue {
        path.split('.').fold(v.clone(), |v, name| field(&v, name))
    }

    fn code_of(e: &JsValue) -> Option<String> {
        field(e, "code").as_string()
    }

    fn user() -> User {
        User {
            id: UserId::new(),
            username: "alice".into(),
            display_name: "Alice".into(),
            created_at: Timestamp::from_unix_millis(1_700_000_000_000),
        }
    }

    #[wasm_bindgen_test]
    fn errors_are_js_errors_with_the_contract_code() {
        let e = client_error(&ClientError::server(
            mesh_core::ErrorCode::Forbidden,
            "not a member",
        ));
        assert!(e.is_instance_of::<js_sys::Error>());
        assert_eq!(code_of(&e).as_deref(), Some("forbidden"));
        assert_eq!(
            field(&e, "message").as_string().as_deref(),
            Some("not a member")
        );
        let e = client_error(&ClientError::NotConnected);
        assert_eq!(code_of(&e).as_deref(), Some("not_connected"));
        let status = |s| ClientError::from_http(s, "", None).code_str();
        assert_eq!(status(429), "rate_limited");
        assert_eq!(status(404), "not_found");
        assert_eq!(status(502), "internal");
    }

    #[wasm_bindgen_test]
    fn bad_arguments_are_refused_before_anything_is_sent() {
        let e = MeshApi::new("ftp://example.com").expect_err("not http");
        assert_eq!(code_of(&e).as_deref(), Some("invalid_argument"));
        let e = parse_room("general").expect_err("not a room id");
        assert_eq!(code_of(&e).as_deref(), Some("invalid_argument"));
        for bad in [-1.0, 1.5, f64::NAN, f64::INFINITY] {
            let e = seq_arg("before", bad).expect_err("not a seq");
            assert_eq!(code_of(&e).as_deref(), Some("invalid_argument"));
        }
        assert_eq!(seq_arg("before", 5.0).ok(), Some(5));
        let e = parse_role("owner").expect_err("not given this way");
        assert_eq!(code_of(&e).as_deref(), Some("invalid_argument"));
        assert_eq!(parse_role("admin").ok(), Some(Role::Admin));
    }

    #[wasm_bindgen_test]
    fn websocket_urls_follow_the_server_scheme_and_escape_the_token() {
        let mut http = Http::new("https://chat.example.com/").expect("url");
        http.token = Some("a+b/c=".into());
        assert_eq!(
            http.ws_url(),
            "wss://chat.example.com/ws?token=a%2Bb%2Fc%3D"
        );
        let http = Http::new("http://127.0.0.1:8000").expect("url");
        assert_eq!(http.ws_url(), "ws://127.0.0.1:8000/ws?token=");
    }

    #[wasm_bindgen_test]
    fn events_cross_in_the_contract_shape() {
        let alice = user();
        let room = RoomId::new();
        let message = Message {
            id: MessageId::new(),
            room_id: room,
            seq: 7,
            sender: alice.clone(),
            content: "<b>hi</b>".into(),
            created_at: Timestamp::from_unix_millis(1_700_000_000_000),
            client_id: Some("c1".into()),
        };
        let v = event_to_js(Event::Message(message));
        assert_eq!(get(&v, "type").as_string().as_deref(), Some("message"));
        assert_eq!(get(&v, "message.seq").as_f64(), Some(7.0));
        assert_eq!(
            get(&v, "message.room_id").as_string(),
            Some(room.to_string())
        );
        assert_eq!(
            get(&v, "message.sender.username").as_string().as_deref(),
            Some("alice")
        );
        // Times are RFC 3339 strings, as on the wire.
        let at = get(&v, "message.created_at").as_string().expect("a string");
        assert!(at.starts_with("2023-11-14T22:13:20"), "{at}");

        let from = PeerId::new();
        let mut body = serde_json::Map::new();
        body.insert("sdp".into(), json!("v=0"));
        let v = event_to_js(Event::Rtc {
            kind: RtcKind::Offer,
            signal: RtcSignal {
                target_peer_id: PeerId::new(),
                room_id: room,
                from_peer_id: Some(from),
                from_user_id: Some(alice.id),
                body,
            },
        });
        assert_eq!(get(&v, "type").as_string().as_deref(), Some("rtc"));
        assert_eq!(get(&v, "kind").as_string().as_deref(), Some("offer"));
        assert_eq!(get(&v, "from_peer_id").as_string(), Some(from.to_string()));
        assert_eq!(get(&v, "body.sdp").as_string().as_deref(), Some("v=0"));

        let v = event_to_js(Event::Closed {
            error: Some(ClientError::server(
                mesh_core::ErrorCode::Unauthorized,
                "token revoked",
            )),
        });
        assert_eq!(get(&v, "type").as_string().as_deref(), Some("closed"));
        assert_eq!(
            get(&v, "error.code").as_string().as_deref(),
            Some("unauthorized")
        );
        let v = event_to_js(Event::Closed { error: None });
        assert!(get(&v, "error").is_null());
    }

    /// The same state machine as the native client, compiled to wasm: a
    /// message sent offline waits in the queue, goes out after the hello
    /// once connected, and its echo resolves it exactly once.
    #[wasm_bindgen_test]
    fn the_client_state_machine_runs_as_wasm() {
        let t = now();
        let mut state = ClientState::new(ClientConfig::default(), t, 42);
        let room = RoomId::new();
        let client_id = state.send_message(room, "queued while offline", t);
        assert_eq!(state.queued().collect::<Vec<_>>(), vec![client_id.as_str()]);
        assert!(state.poll_transmit().is_none(), "nothing goes out offline");

        assert!(state.poll_connect(t), "it wants a connection");
        state.connected(t);
        let hello: serde_json::Value =
            serde_json::from_str(&state.poll_transmit().expect("a hello")).expect("json");
        assert_eq!(hello["type"], "system.hello");
        let peer = PeerId::new();
        let welcome = json!({"type": "system.welcome", "payload": {
            "peer_id": peer, "user": user(), "server_time": t, "heartbeat_ms": 30000,
        }});
        state.frame_received(&welcome.to_string(), t);
        let mut sent = Vec::new();
        while let Some(frame) = state.poll_transmit() {
            sent.push(serde_json::from_str::<serde_json::Value>(&frame).expect("json"));
        }
        let send = sent
            .iter()
            .find(|f| f["type"] == "chat.message.send")
            .expect("the queued message went out");
        assert_eq!(send["payload"]["client_id"], client_id.as_str());
        assert_eq!(send["payload"]["content"], "queued while offline");
        assert!(matches!(
            state.poll_event(),
            Some(Event::Connected { peer_id, .. }) if peer_id == peer
        ));
    }
}
