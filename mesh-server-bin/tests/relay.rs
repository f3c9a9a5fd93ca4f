//! The relay and address discovery over real sockets: a server on
//! `127.0.0.1:0` with a UDP port, real `p2p.session.created` grants, agents
//! played by plain UDP sockets and WebSockets speaking the relay frames.
//!
//! Tests wait for events (a datagram, a message), never sleep to
//! synchronise; every wait has a deadline only as a safety net. The idle
//! test waits for time to pass, which is what it tests.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::relay::{Grant, ask, is_bound, recv, recv_within, refusal, udp_client};
use common::{WAIT, WsClient, http_client};
use futures_util::{SinkExt, StreamExt};
use mesh_core::auth::KeyRing;
use mesh_core::auth::tokens::issue_session_token;
use mesh_core::protocol::{
    P2pSession, PeerId, RelayParty, RoomId, SessionId, SessionKind, SessionState, Timestamp, UserId,
};
use mesh_core::relay::RefuseCode;
use mesh_core::relay::stun;
use serde_json::{Value, json};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A server with a UDP port.
struct Server {
    addr: SocketAddr,
    udp: SocketAddr,
    dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
    service: mesh_core::service::Service,
}

impl Server {
    async fn start(tweak: impl FnOnce(&mut mesh_server_bin::Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = mesh_server_bin::Config::new(dir.path());
        tweak(&mut config);
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let listeners = mesh_server_bin::Listeners::bind(any, Some(any))
            .await
            .expect("bind");
        let addr = listeners.tcp.local_addr().expect("addr");
        let udp = listeners
            .udp
            .as_ref()
            .expect("udp")
            .local_addr()
            .expect("udp addr");
        config.p2p.udp_port = listeners.udp_port();
        let service = mesh_server_bin::open_service(&config)
            .await
            .expect("service");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(mesh_server_bin::serve(
            listeners,
            service.clone(),
            config,
            stopped,
        ));
        Self {
            addr,
            udp,
            dir,
            _stop: stop,
            service,
        }
    }

    fn remote(&self) -> Remote {
        Remote {
            addr: self.addr,
            udp: self.udp,
        }
    }

    async fn token(&self, username: &str) -> String {
        self.remote().register(username).await
    }

    async fn ws(&self, token: &str) -> (WsClient, Value) {
        self.remote().ws(token).await
    }

    /// Alice asks for a session with bob: both `p2p.session.created`
    /// payloads, alice's first.
    async fn session(&self) -> (Value, Value) {
        let (to_alice, to_bob, _) = self.remote().session("alice", "bob").await;
        (to_alice, to_bob)
    }
}

/// A server reached over the network only: this process's own, or the NAT
/// lab's (`lab_*` tests).
#[derive(Clone, Copy)]
struct Remote {
    /// HTTP and WebSockets.
    addr: SocketAddr,
    /// STUN and the relay.
    udp: SocketAddr,
}

/// The connections that keep a session's parties (and so the session) up.
struct Parties {
    initiator: WsClient,
    target: WsClient,
    room: Value,
}

impl Parties {
    /// One more session between the same two connections.
    async fn another(&mut self) -> (Value, Value) {
        Remote::another_session(&mut self.initiator, &mut self.target, &self.room).await
    }
}

impl Remote {
    /// Registers `username` over HTTP; its access token.
    async fn register(&self, username: &str) -> String {
        let r = http_client()
            .post(format!("http://{}/api/auth/register", self.addr))
            .json(&json!({"username": username, "password": "correct horse battery"}))
            .send()
            .await
            .expect("register");
        let status = r.status().as_u16();
        let body: Value = r.json().await.expect("json");
        assert_eq!(status, 201, "register {username}: {body}");
        body["token"].as_str().expect("token").to_owned()
    }

    async fn ws(&self, token: &str) -> (WsClient, Value) {
        let mut client = WsClient::connect(self.addr, token).await;
        client.send("system.hello", json!({}), Some("hello")).await;
        let welcome = client.expect("system.welcome").await;
        client.peer_id = welcome["payload"]["peer_id"]
            .as_str()
            .expect("peer id")
            .to_owned();
        (client, welcome)
    }

    /// `initiator` (registered now) asks for a session with `target`: both
    /// `p2p.session.created` payloads, the initiator's first, and the
    /// connections that keep the session up.
    async fn session(&self, initiator: &str, target: &str) -> (Value, Value, Parties) {
        let (a, b) = (self.register(initiator).await, self.register(target).await);
        let (mut wa, welcome) = self.ws(&a).await;
        assert_eq!(
            welcome["payload"]["p2p"]["udp_port"],
            json!(self.udp.port()),
            "{welcome}"
        );
        let (mut wb, _) = self.ws(&b).await;
        let (status, room) = {
            let r = http_client()
                .post(format!("http://{}/api/rooms", self.addr))
                .bearer_auth(&a)
                .json(&json!({"name": "general", "visibility": "public"}))
                .send()
                .await
                .expect("create room");
            (r.status().as_u16(), r.json::<Value>().await.expect("json"))
        };
        assert_eq!(status, 201, "{room}");
        let room = room["room"]["id"].clone();
        let joined = wb.request("room.join", json!({"room_id": room}), "j").await;
        assert_eq!(joined["type"], "room.joined", "{joined}");
        let (to_a, to_b) = Self::another_session(&mut wa, &mut wb, &room).await;
        let parties = Parties {
            initiator: wa,
            target: wb,
            room,
        };
        (to_a, to_b, parties)
    }

    /// One more session between two connections in `room`.
    async fn another_session(wa: &mut WsClient, wb: &mut WsClient, room: &Value) -> (Value, Value) {
        let created = wa
            .request(
                "p2p.session.request",
                json!({"room_id": room, "target_peer_id": wb.peer_id, "kind": "file"}),
                "s",
            )
            .await;
        assert_eq!(created["type"], "p2p.session.created", "{created}");
        let to_b = wb.expect("p2p.session.created").await;
        (created["payload"].clone(), to_b["payload"].clone())
    }
}

type RelayWs = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn relay_ws(addr: SocketAddr) -> RelayWs {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/p2p/relay"))
        .await
        .expect("relay ws connect");
    ws
}

/// The next binary message, skipping pings.
async fn ws_next(ws: &mut RelayWs) -> Message {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("ok");
        if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
            return m;
        }
    }
}

async fn ws_binary(ws: &mut RelayWs) -> Vec<u8> {
    match ws_next(ws).await {
        Message::Binary(b) => b.to_vec(),
        other => panic!("not binary: {other:?}"),
    }
}

#[tokio::test]
async fn stun_binding_is_answered_with_the_senders_address() {
    let s = Server::start(|_| {}).await;
    let client = udp_client(s.udp).await;
    let tx = [7u8; 12];
    let answer = ask(&client, &stun::binding_request(tx)).await;
    assert_eq!(
        stun::parse_response(&answer),
        Some((tx, client.local_addr().expect("addr")))
    );
}

#[tokio::test]
async fn two_parties_relay_over_udp_byte_exact_both_ways() {
    let s = Server::start(|_| {}).await;
    let (to_alice, to_bob) = s.session().await;
    let (ga, gb) = (Grant::of(&to_alice), Grant::of(&to_bob));
    assert_eq!(
        (ga.party, gb.party),
        (RelayParty::Initiator, RelayParty::Target)
    );
    assert_ne!(ga.key, gb.key);
    let (a, b) = (udp_client(s.udp).await, udp_client(s.udp).await);
    assert!(is_bound(&ask(&a, &ga.bind()).await, ga.sid));
    assert!(is_bound(&ask(&b, &gb.bind()).await, gb.sid));
    // QUIC-looking payloads of every size up to a full IPv4 UDP datagram; the
    // server forwards each frame unchanged, header included.
    for (i, len) in [1usize, 2, 100, 1200, 1452, 9000, 65_507 - 17]
        .into_iter()
        .enumerate()
    {
        let payload: Vec<u8> = (0..len).map(|j| (j * 31 + i) as u8 | 0xc0).collect();
        let frame = ga.data(&payload);
        a.send(&frame).await.expect("send");
        assert_eq!(recv(&b).await, frame, "a → b, {len} bytes");
        let frame = gb.data(&payload[..len / 2 + 1]);
        b.send(&frame).await.expect("send");
        assert_eq!(recv(&a).await, frame, "b → a");
    }
}

#[tokio::test]
async fn one_party_over_the_websocket_and_the_other_over_udp() {
    let s = Server::start(|_| {}).await;
    let (to_alice, to_bob) = s.session().await;
    let (ga, gb) = (Grant::of(&to_alice), Grant::of(&to_bob));
    let mut a = relay_ws(s.addr).await;
    a.send(Message::Binary(ga.bind().into()))
        .await
        .expect("send");
    assert!(is_bound(&ws_binary(&mut a).await, ga.sid));
    let b = udp_client(s.udp).await;
    assert!(is_bound(&ask(&b, &gb.bind()).await, gb.sid));
    for n in 0..20u8 {
        let frame = ga.data(&vec![0xc0 | n; 1000 + usize::from(n)]);
        a.send(Message::Binary(frame.clone().into()))
            .await
            .expect("send");
        assert_eq!(recv(&b).await, frame, "ws → udp");
        let frame = gb.data(&[n; 1200]);
        b.send(&frame).await.expect("send");
        assert_eq!(ws_binary(&mut a).await, frame, "udp → ws");
    }
    // Alice falls back to UDP too: re-binding moves her.
    let a2 = udp_client(s.udp).await;
    assert!(is_bound(&ask(&a2, &ga.bind()).await, ga.sid));
    let frame = gb.data(b"\xc1 after the move");
    b.send(&frame).await.expect("send");
    assert_eq!(recv(&a2).await, frame);
}

#[tokio::test]
async fn the_relay_websocket_closes_on_text_and_oversized_messages() {
    let s = Server::start(|_| {}).await;
    let mut ws = relay_ws(s.addr).await;
    ws.send(Message::Text("hello".into())).await.expect("send");
    match ws_next(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1003),
        other => panic!("{other:?}"),
    }
    let mut ws = relay_ws(s.addr).await;
    let _ = ws.send(Message::Binary(vec![0x24; 70_000].into())).await;
    match ws_next(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1009),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn bad_binds_are_refused_with_their_code() {
    let s = Server::start(|_| {}).await;
    let (to_alice, to_bob) = s.session().await;
    let (ga, gb) = (Grant::of(&to_alice), Grant::of(&to_bob));
    let c = udp_client(s.udp).await;

    // Bob's key, claiming to be the initiator.
    let wrong_key = Grant {
        party: RelayParty::Initiator,
        key: gb.key,
        token: gb.token.clone(),
        sid: gb.sid,
    };
    assert_eq!(
        refusal(&ask(&c, &wrong_key.bind()).await),
        Some(RefuseCode::NotAParty)
    );

    // A token for another session (a session of the same server) with
    // this session's key.
    let keys = KeyRing::load_or_generate(&s.dir.path().join("keys")).expect("the server's keys");
    let (other, other_token) = signed_session(&keys);
    let wrong_session = Grant {
        token: other_token,
        ..Grant::of(&to_alice)
    };
    assert_eq!(
        refusal(&ask(&c, &wrong_session.bind()).await),
        Some(RefuseCode::WrongSession)
    );

    // This session's token, expired: signed by the server's own keys with
    // the session's id and an `exp` in the past.
    let now = Timestamp::now();
    let mut expired = other.clone();
    expired.id = ga.sid;
    expired.expires_at = Timestamp::from_unix_millis(now.unix_millis() - 60_000);
    let expired_token = issue_session_token(&keys, &expired, now)
        .expect("token")
        .token;
    let expired = Grant {
        token: expired_token,
        ..Grant::of(&to_alice)
    };
    assert_eq!(
        refusal(&ask(&c, &expired.bind()).await),
        Some(RefuseCode::TokenExpired)
    );

    // A forged token.
    let forged = Grant {
        token: "eyJhbGciOiJFZERTQSJ9.e30.c2ln".into(),
        ..Grant::of(&to_alice)
    };
    assert_eq!(
        refusal(&ask(&c, &forged.bind()).await),
        Some(RefuseCode::InvalidToken)
    );

    // None of that opened anything: DATA is refused.
    assert_eq!(
        refusal(&ask(&c, &ga.data(&[0xc0; 64])).await),
        Some(RefuseCode::NotBound)
    );
}

#[tokio::test]
async fn a_third_party_holding_the_token_cannot_bind_inject_or_listen() {
    let s = Server::start(|_| {}).await;
    let (to_alice, to_bob) = s.session().await;
    let (ga, gb) = (Grant::of(&to_alice), Grant::of(&to_bob));
    let (a, b, eve) = (
        udp_client(s.udp).await,
        udp_client(s.udp).await,
        udp_client(s.udp).await,
    );
    assert!(is_bound(&ask(&a, &ga.bind()).await, ga.sid));
    assert!(is_bound(&ask(&b, &gb.bind()).await, gb.sid));
    // Eve has the token (it leaked), guesses keys.
    for party in [RelayParty::Initiator, RelayParty::Target] {
        let guess = Grant {
            party,
            key: [0x5a; 32],
            token: ga.token.clone(),
            sid: ga.sid,
        };
        assert_eq!(
            refusal(&ask(&eve, &guess.bind()).await),
            Some(RefuseCode::NotAParty)
        );
    }
    // She cannot inject.
    let injected = ga.data(b"\xc0 from eve, posing as alice");
    assert_eq!(
        refusal(&ask(&eve, &injected).await),
        Some(RefuseCode::NotBound)
    );
    // Alice and bob still talk, and eve hears nothing of it.
    let frame = ga.data(b"\xc0 private");
    a.send(&frame).await.expect("send");
    assert_eq!(recv(&b).await, frame, "bob got alice's datagram, not eve's");
    let frame = gb.data(b"\xc0 reply");
    b.send(&frame).await.expect("send");
    assert_eq!(recv(&a).await, frame);
    assert_eq!(
        recv_within(&eve, Duration::from_millis(300)).await,
        None,
        "eve hears nothing"
    );
}

#[tokio::test]
async fn a_server_that_does_not_relay_says_so_and_still_answers_stun() {
    let s = Server::start(|c| c.p2p.relay = false).await;
    let (to_alice, _) = s.session().await;
    assert!(to_alice.get("relay").is_none(), "no grant: {to_alice}");
    let token = s.token("carol").await;
    let (_, welcome) = s.ws(&token).await;
    assert_eq!(welcome["payload"]["p2p"]["relay"], json!(false));
    assert_eq!(welcome["payload"]["p2p"]["udp_port"], json!(s.udp.port()));
    let sid: SessionId = serde_json::from_value(to_alice["session"]["id"].clone()).expect("sid");
    let bind = Grant {
        sid,
        party: RelayParty::Initiator,
        key: [1; 32],
        token: to_alice["session_token"].as_str().expect("token").into(),
    };
    let c = udp_client(s.udp).await;
    assert_eq!(
        refusal(&ask(&c, &bind.bind()).await),
        Some(RefuseCode::Disabled)
    );
    let mut ws = relay_ws(s.addr).await;
    ws.send(Message::Binary(bind.bind().into()))
        .await
        .expect("send");
    assert_eq!(
        refusal(&ws_binary(&mut ws).await),
        Some(RefuseCode::Disabled)
    );
    let answer = ask(&c, &stun::binding_request([3; 12])).await;
    assert!(stun::parse_response(&answer).is_some());
}

#[tokio::test]
async fn garbage_and_a_flood_leave_the_server_serving() {
    let s = Server::start(|_| {}).await;
    let flood = udp_client(s.udp).await;
    let (to_alice, _) = s.session().await;
    flood_with_garbage(&flood, 20_000, &Grant::of(&to_alice)).await;
    let mapped = assert_still_serving(s.remote(), &flood).await;
    assert_eq!(mapped, flood.local_addr().expect("addr"));
    let fresh = udp_client(s.udp).await;
    assert!(stun::parse_response(&ask(&fresh, &stun::binding_request([9; 12])).await).is_some());
}

/// After a flood from `from`: STUN still answers it (asked again past the
/// refusals of the flood's frames still queued for it, and past a moment
/// over its rate) and HTTP still answers. The address STUN saw.
async fn assert_still_serving(remote: Remote, from: &UdpSocket) -> SocketAddr {
    let tx = [9u8; 12];
    let mapped = loop {
        let answer = ask(from, &stun::binding_request(tx)).await;
        if let Some((got, mapped)) = stun::parse_response(&answer) {
            assert_eq!(got, tx);
            break mapped;
        }
    };
    let health = http_client()
        .get(format!("http://{}/health", remote.addr))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status().as_u16(), 200);
    mapped
}

#[tokio::test]
async fn an_idle_relay_session_times_out() {
    let idle = Duration::from_millis(300);
    let s = Server::start(|c| c.p2p.limits.idle_timeout = idle).await;
    let (to_alice, to_bob) = s.session().await;
    let (ga, gb) = (Grant::of(&to_alice), Grant::of(&to_bob));
    let (a, b) = (udp_client(s.udp).await, udp_client(s.udp).await);
    assert!(is_bound(&ask(&a, &ga.bind()).await, ga.sid));
    assert!(is_bound(&ask(&b, &gb.bind()).await, gb.sid));
    let frame = ga.data(b"\xc0 hi");
    a.send(&frame).await.expect("send");
    assert_eq!(recv(&b).await, frame);
    // Silence for a few idle time-outs, then the session is gone: DATA is
    // refused `not_bound` (binding again would be the agents' move).
    let deadline = Instant::now() + WAIT;
    loop {
        assert_eq!(recv_within(&a, idle * 3).await, None);
        a.send(&frame).await.expect("send");
        match recv_within(&a, Duration::from_secs(1)).await {
            Some(answer) if refusal(&answer) == Some(RefuseCode::NotBound) => break,
            _ => {
                // Forwarded (the session was still there): drain bob.
                let _ = recv_within(&b, Duration::from_millis(100)).await;
            }
        }
        assert!(Instant::now() < deadline, "the session never timed out");
    }
}

/// Sends `n` datagrams of garbage to the server: random bytes, relay frame
/// types with random bodies, STUN-looking messages, and `BIND`s of made-up
/// sessions carrying `grant`'s real token and key. A full socket buffer
/// drops some, as the network would. Returns how many left.
async fn flood_with_garbage(to: &UdpSocket, n: u32, grant: &Grant) -> u32 {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let cookie = 0x2112_a442_u32.to_be_bytes();
    let mut sent = 0;
    for i in 0..n {
        let r = next();
        let len = (r % 1500) as usize;
        let mut d: Vec<u8> = (0..len).map(|j| (r >> (j % 57)) as u8).collect();
        match i % 5 {
            // Relay frame types with random bodies.
            0 if !d.is_empty() => d[0] = 0x21 + (r % 5) as u8,
            // STUN-looking messages.
            1 if d.len() >= 20 => {
                d[0] &= 0x3f;
                d[4..8].copy_from_slice(&cookie);
            }
            // A made-up session with a real token and key.
            2 => {
                d = Grant {
                    sid: SessionId::new(),
                    ..Grant::clone(grant)
                }
                .bind()
            }
            _ => {}
        }
        if to.try_send(&d).is_ok() {
            sent += 1;
        }
        if i % 1000 == 0 {
            tokio::task::yield_now().await;
        }
    }
    sent
}

/// A new session of nobody's and its token, signed with `keys`.
fn signed_session(keys: &KeyRing) -> (P2pSession, String) {
    let now = Timestamp::now();
    let session = P2pSession {
        id: SessionId::new(),
        room_id: RoomId::new(),
        kind: SessionKind::File,
        initiator_peer_id: PeerId::new(),
        target_peer_id: PeerId::new(),
        initiator_user_id: UserId::new(),
        target_user_id: UserId::new(),
        state: SessionState::Pending,
        created_at: now,
        expires_at: now.saturating_add(Duration::from_secs(180)),
    };
    let token = issue_session_token(keys, &session, now)
        .expect("token")
        .token;
    (session, token)
}

/// A session token and both relay keys for a session of `s`, made with the
/// server's own signing keys and relay secret (as `p2p.session.created`
/// would hand them out).
fn grants_from_the_server(s: &Server) -> (Grant, Grant) {
    let keys = KeyRing::load_or_generate(&s.dir.path().join("keys")).expect("the server's keys");
    let secret = s
        .service
        .config()
        .engine
        .relay_secret
        .clone()
        .expect("the server relays");
    let (session, token) = signed_session(&keys);
    let grant = |party| Grant {
        sid: session.id,
        party,
        key: secret.key(session.id, party),
        token: token.clone(),
    };
    (grant(RelayParty::Initiator), grant(RelayParty::Target))
}

#[tokio::test]
async fn the_relay_websocket_works_over_https() {
    use mesh_server_bin::tls::{CertStore, ServerTls, files};
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::sync::Arc;

    common::install_ring();
    let ca = common::tls::TestCa::new("relay test CA");
    let pems = tempfile::tempdir().expect("temp dir");
    let leaf = ca.leaf(&["localhost"]);
    let (cert, key) = (pems.path().join("cert.pem"), pems.path().join("key.pem"));
    std::fs::write(&cert, &leaf.cert_pem).expect("cert");
    std::fs::write(&key, &leaf.key_pem).expect("key");
    let certs = CertStore::new();
    tokio::spawn(files::watch(files::Config::new(&cert, &key), certs.clone()).expect("loads"));
    let s = Server::start(|c| c.tls = Some(ServerTls::new(certs).expect("tls"))).await;
    let (ga, gb) = grants_from_the_server(&s);

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).expect("CA"))
        .expect("root");
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(s.addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let url = format!("wss://localhost:{}/api/p2p/relay", s.addr.port());
    let (mut a, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("relay wss");
    a.send(Message::Binary(ga.bind().into()))
        .await
        .expect("send");
    let bound = tokio::time::timeout(WAIT, a.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("ok");
    assert!(is_bound(&bound.into_data(), ga.sid));
    let b = udp_client(s.udp).await;
    assert!(is_bound(&ask(&b, &gb.bind()).await, gb.sid));
    let frame = gb.data(b"\xc0 over udp, out over wss");
    b.send(&frame).await.expect("send");
    let got = loop {
        let m = tokio::time::timeout(WAIT, a.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("ok");
        if let Message::Binary(data) = m {
            break data;
        }
    };
    assert_eq!(got.to_vec(), frame);
    let frame = ga.data(b"\xc0 over wss, out over udp");
    a.send(Message::Binary(frame.clone().into()))
        .await
        .expect("send");
    assert_eq!(recv(&b).await, frame);
}

// ------------------------------------------------------------------------
// The NAT lab's relay probe: `mesh-cli/tests/nat-lab/run.sh` runs these two
// inside a home namespace (behind its NAT router) against the lab's real
// mesh-server, started with a short `--p2p-session-ttl-secs`. Ignored in
// the ordinary run: they need that server (`MESH_LAB_SERVER`, its
// `ip:port`) and a file to pass a grant between them (`MESH_LAB_GRANT`).

fn lab_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (run by the NAT lab)"))
}

fn lab_remote() -> Remote {
    let addr: SocketAddr = lab_env("MESH_LAB_SERVER").parse().expect("ip:port");
    // The lab's server has its UDP port on the TCP port's number.
    Remote { addr, udp: addr }
}

/// Users of this probe run: unique on the lab's long-lived server.
fn lab_user(tag: &str) -> String {
    format!("probe{}{tag}", std::process::id())
}

#[tokio::test]
#[ignore = "run by the NAT lab against its server (MESH_LAB_SERVER, MESH_LAB_GRANT)"]
async fn lab_prepare_a_grant_that_will_expire() {
    let remote = lab_remote();
    let (to_initiator, _, _parties) = remote.session(&lab_user("x"), &lab_user("y")).await;
    assert!(
        to_initiator["relay"].is_object(),
        "no relay grant: {to_initiator}"
    );
    std::fs::write(lab_env("MESH_LAB_GRANT"), to_initiator.to_string()).expect("write grant");
    println!(
        "grant for session {} expires at {}",
        to_initiator["session"]["id"], to_initiator["session"]["expires_at"]
    );
}

#[tokio::test]
#[ignore = "run by the NAT lab against its server (MESH_LAB_SERVER, MESH_LAB_GRANT)"]
async fn lab_the_relay_refuses_foreign_and_expired_tokens() {
    let remote = lab_remote();
    let c = udp_client(remote.udp).await;

    // The grant prepared earlier in the lab, now past its expiry.
    let prepared: Value =
        serde_json::from_str(&std::fs::read_to_string(lab_env("MESH_LAB_GRANT")).expect("grant"))
            .expect("json");
    let expires: Timestamp =
        serde_json::from_value(prepared["session"]["expires_at"].clone()).expect("expires_at");
    assert!(
        Timestamp::now() > expires,
        "the lab checks the expired grant before it expired ({expires:?})"
    );
    assert_eq!(
        refusal(&ask(&c, &Grant::of(&prepared).bind()).await),
        Some(RefuseCode::TokenExpired),
        "an expired token"
    );

    // Two live sessions between the same two users.
    let (one_a, one_b, mut parties) = remote.session(&lab_user("a"), &lab_user("b")).await;
    let (two_a, _) = parties.another().await;
    let (one, two) = (Grant::of(&one_a), Grant::of(&two_a));
    let refused = [
        (
            "a token for another session (session two's id and key)",
            Grant {
                token: one.token.clone(),
                ..Grant::of(&two_a)
            },
            RefuseCode::WrongSession,
        ),
        (
            "a key for another session (session one's, claiming two)",
            Grant {
                sid: two.sid,
                ..Grant::of(&one_a)
            },
            RefuseCode::NotAParty,
        ),
        (
            "a third party holding session one's token, guessing the key",
            Grant {
                key: [0x5a; 32],
                ..Grant::of(&one_a)
            },
            RefuseCode::NotAParty,
        ),
    ];
    for (what, grant, code) in refused {
        assert_eq!(refusal(&ask(&c, &grant.bind()).await), Some(code), "{what}");
    }
    // Nothing above opened anything; the real parties still can.
    assert_eq!(
        refusal(&ask(&c, &one.data(&[0xc0; 32])).await),
        Some(RefuseCode::NotBound)
    );
    let (a, b) = (udp_client(remote.udp).await, udp_client(remote.udp).await);
    let one_b = Grant::of(&one_b);
    assert!(is_bound(&ask(&a, &one.bind()).await, one.sid));
    assert!(is_bound(&ask(&b, &one_b.bind()).await, one.sid));
    let frame = one.data(b"\xc0 through the lab's relay");
    a.send(&frame).await.expect("send");
    assert_eq!(recv(&b).await, frame);
    println!("refused: expired, foreign session, foreign key, third party; the parties relay");

    // A flood from behind the NAT: garbage, STUN-looking bytes, and BINDs
    // of made-up sessions with session one's token (each costs the relay
    // at most an HMAC). The server goes on answering.
    let flood = udp_client(remote.udp).await;
    let sent = flood_with_garbage(&flood, 30_000, &one).await;
    assert_still_serving(remote, &flood).await;
    // The parties' session still relays.
    a.send(&frame).await.expect("send");
    assert_eq!(recv(&b).await, frame);
    println!("flood: {sent} datagrams sent; STUN, HTTP and the relayed session still answer");
}
