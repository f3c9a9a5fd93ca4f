//! The client SDK (`mesh_core::client`) against the real server over real
//! sockets: two clients chat through the event stream, page history, ask
//! for P2P sessions, get typed errors, and ride out a server restart on the
//! same port without losing or duplicating a message.
//!
//! Tests wait for events; time-outs only guard against hangs.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use mesh_core::ErrorCode;
use mesh_core::client::{
    BackoffConfig, Client, ClientError, Event, EventStream, HistoryQuery, HttpApi,
};
use mesh_core::protocol::http::{CreateRoomRequest, LoginRequest, RegisterRequest};
use mesh_core::protocol::{Presence, RoomId, SessionKind, Visibility};
use tokio::sync::oneshot;

/// How long any single wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(15);

/// A server on a given listener and data folder, stoppable and restartable.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start(dir: &Path, addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let config = mesh_server_bin::Config::new(dir);
        let task = tokio::spawn(mesh_server_bin::run(listener, config, stopped));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        guard(&mut self.task)
            .await
            .expect("server task")
            .expect("server result");
    }
}

async fn guard<F: Future + Unpin>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("finished in time (hang guard)")
}

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Registers a user; returns the token.
async fn register(server: &str, username: &str) -> String {
    HttpApi::new(server)
        .expect("api")
        .register(&RegisterRequest {
            username: username.into(),
            password: "correct horse battery".into(),
            ..RegisterRequest::default()
        })
        .await
        .expect("register")
        .token
}

async fn connect(server: &str, token: &str) -> (Client, EventStream) {
    let client = Client::builder()
        .server(server)
        .token(token)
        .device_name("test")
        // Short delays: the restart test waits through a few of them.
        .backoff(BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(300),
        })
        .connect()
        .await
        .expect("connect");
    let events = client.events().expect("first call takes the stream");
    (client, events)
}

/// The next event matching `pred`; others are dropped.
async fn wait_for<T>(events: &mut EventStream, mut pred: impl FnMut(&Event) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.next().await.expect("event stream open");
            if let Some(out) = pred(&event) {
                return out;
            }
        }
    })
    .await
    .expect("event in time (hang guard)")
}

/// Collects the `seq`s of `room`'s messages until `last` arrives.
async fn seqs_until(events: &mut EventStream, room: RoomId, last: u64, seqs: &mut Vec<u64>) {
    wait_for(events, |e| match e {
        Event::Message(m) if m.room_id == room => {
            seqs.push(m.seq);
            (m.seq == last).then_some(())
        }
        _ => None,
    })
    .await
}

#[tokio::test]
async fn two_clients_chat_page_history_and_open_p2p_sessions() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), local()).await;
    let url = server.url();
    let a_token = register(&url, "alice").await;
    let b_token = register(&url, "bob").await;

    let (alice, mut a_events) = connect(&url, &a_token).await;
    let (bob, mut b_events) = connect(&url, &b_token).await;
    let (alice_peer, alice_user) = alice.me().expect("welcomed");
    let (bob_peer, bob_user) = bob.me().expect("welcomed");
    assert_eq!(alice_user.username, "alice");

    let room = alice
        .create_room(&CreateRoomRequest {
            name: "general".into(),
            ..CreateRoomRequest::default()
        })
        .await
        .expect("create room")
        .id;
    let members = bob.join_room(room).await.expect("join");
    assert_eq!(members.len(), 2);
    // (Alice may first hear of her own membership, from creating the room.)
    let joined = wait_for(&mut a_events, |e| match e {
        Event::RoomJoined {
            user,
            peer_id,
            members,
            ..
        } if user.id == bob_user.id => Some((*peer_id, members.is_none())),
        _ => None,
    })
    .await;
    assert_eq!(
        joined,
        (bob_peer, true),
        "others' joins carry no member list"
    );

    // Messages both ways; each side sees every message once, its own too.
    let mut expected = Vec::new();
    for i in 0..6u64 {
        let (sender, name) = if i % 2 == 0 {
            (&alice, "a")
        } else {
            (&bob, "b")
        };
        let m = sender
            .send_message(room, format!("{name}{i}"))
            .await
            .expect("send");
        assert_eq!(m.seq, i + 1);
        assert!(m.client_id.is_some(), "the SDK always sends a client_id");
        expected.push(m.seq);
    }
    let (mut a_seqs, mut b_seqs) = (Vec::new(), Vec::new());
    seqs_until(&mut a_events, room, 6, &mut a_seqs).await;
    seqs_until(&mut b_events, room, 6, &mut b_seqs).await;
    assert_eq!(a_seqs, expected);
    assert_eq!(b_seqs, expected);

    // Typing and presence reach the other side as typed events.
    alice.set_typing(room, true);
    let typing = wait_for(&mut b_events, |e| match e {
        Event::Typing {
            room_id,
            user_id,
            typing,
        } if *room_id == room => Some((*user_id, *typing)),
        _ => None,
    })
    .await;
    assert_eq!(typing, (alice_user.id, true));
    bob.set_presence(Presence::Busy, Some("in a call".into()))
        .await
        .expect("presence");
    let status = wait_for(&mut a_events, |e| match e {
        Event::Presence {
            user_id, status, ..
        } if *user_id == bob_user.id => Some(*status),
        _ => None,
    })
    .await;
    assert_eq!(status, Presence::Busy);

    // History pages over HTTP.
    let latest = alice
        .history(room, HistoryQuery::latest(4))
        .await
        .expect("latest");
    let seqs = |page: &mesh_core::protocol::http::MessagesResponse| -> Vec<u64> {
        page.messages.iter().map(|m| m.seq).collect()
    };
    assert_eq!(seqs(&latest), vec![3, 4, 5, 6]);
    assert!(latest.has_more);
    let older = alice
        .history(room, HistoryQuery::before(3, 100))
        .await
        .expect("older");
    assert_eq!(seqs(&older), vec![1, 2]);
    assert!(!older.has_more);
    let newer = bob
        .history(room, HistoryQuery::after(4, 100))
        .await
        .expect("newer");
    assert_eq!(seqs(&newer), vec![5, 6]);

    // P2P sessions: over the WebSocket (both peers hear it) and over HTTP.
    let grant = alice
        .request_p2p_session(room, bob_peer, SessionKind::File)
        .await
        .expect("p2p over ws");
    assert_eq!(grant.session.initiator_peer_id, alice_peer);
    assert_eq!(grant.session.target_peer_id, bob_peer);
    assert_eq!(grant.session_token.split('.').count(), 3);
    let heard = wait_for(&mut b_events, |e| match e {
        Event::P2pSessionCreated(g) => Some(g.session.id),
        _ => None,
    })
    .await;
    assert_eq!(heard, grant.session.id);
    let over_http = alice
        .create_p2p_session(room, bob_peer, SessionKind::Terminal)
        .await
        .expect("p2p over http");
    assert_eq!(over_http.session.kind, SessionKind::Terminal);
    let sessions = bob.http().p2p_sessions().await.expect("sessions");
    assert_eq!(sessions.len(), 2);
    bob.http()
        .close_p2p_session(over_http.session.id)
        .await
        .expect("close session");
    let closed = wait_for(&mut a_events, |e| match e {
        Event::P2pSessionClosed { session_id, .. } => Some(*session_id),
        _ => None,
    })
    .await;
    assert_eq!(closed, over_http.session.id);

    // Leaving is heard by both.
    bob.leave_room(room).await.expect("leave");
    let left = wait_for(&mut a_events, |e| match e {
        Event::RoomLeft { user_id, .. } => Some(*user_id),
        _ => None,
    })
    .await;
    assert_eq!(left, bob_user.id);

    alice.close().await;
    wait_for(&mut a_events, |e| {
        matches!(e, Event::Closed { error: None }).then_some(())
    })
    .await;
    let err = alice
        .send_message(room, "after close")
        .await
        .expect_err("closed");
    assert!(matches!(err, ClientError::Closed), "{err:?}");
    bob.close().await;
    server.stop().await;
}

#[tokio::test]
async fn errors_arrive_typed() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), local()).await;
    let url = server.url();
    let a_token = register(&url, "alice").await;
    let c_token = register(&url, "carol").await;
    let api = HttpApi::new(&url).expect("api");

    // Wrong password: unauthorized, and the same for an unknown user.
    for (user, password) in [("alice", "wrong password"), ("nobody", "whatever123")] {
        let err = api
            .login(&LoginRequest {
                username: user.into(),
                password: password.into(),
                device_name: None,
            })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
    }
    // Taken username: conflict.
    let err = api
        .register(&RegisterRequest {
            username: "ALICE".into(),
            password: "correct horse battery".into(),
            ..RegisterRequest::default()
        })
        .await
        .expect_err("taken");
    assert_eq!(err.code(), Some(ErrorCode::Conflict));

    // A bad token is refused before the upgrade: connect fails, typed.
    let err = Client::builder()
        .server(&url)
        .token("not.a.token")
        .connect()
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");

    // A private room of carol's: alice may not read, join or post to it.
    let carol = HttpApi::new(&url).expect("api").with_token(c_token);
    let private = carol
        .create_room(&CreateRoomRequest {
            name: "secret".into(),
            visibility: Some(Visibility::Private),
            ..CreateRoomRequest::default()
        })
        .await
        .expect("room")
        .id;
    let (alice, mut a_events) = connect(&url, &a_token).await;
    let err = alice
        .history(private, HistoryQuery::default())
        .await
        .expect_err("not a member");
    assert!(
        matches!(err.code(), Some(ErrorCode::Forbidden | ErrorCode::NotFound)),
        "{err}"
    );
    let err = alice.join_room(private).await.expect_err("private");
    assert!(
        matches!(err.code(), Some(ErrorCode::Forbidden | ErrorCode::NotFound)),
        "{err}"
    );
    let err = alice
        .send_message(private, "let me in")
        .await
        .expect_err("forbidden");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    let failed = wait_for(&mut a_events, |e| match e {
        Event::SendFailed { room_id, error, .. } => Some((*room_id, error.code())),
        _ => None,
    })
    .await;
    assert_eq!(failed, (private, Some(ErrorCode::Forbidden)));
    // Membership is checked before the content: a room the caller is not
    // in is forbidden whatever is sent to it.
    let err = alice
        .send_message(RoomId::new(), "")
        .await
        .expect_err("not a member");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");

    // The connection stays usable after all of that.
    let mine = alice
        .create_room(&CreateRoomRequest {
            name: "mine".into(),
            ..CreateRoomRequest::default()
        })
        .await
        .expect("room");
    let err = alice.send_message(mine.id, "").await.expect_err("empty");
    assert_eq!(err.code(), Some(ErrorCode::InvalidRequest), "{err}");
    let m = alice
        .send_message(mine.id, "still here")
        .await
        .expect("send");
    assert_eq!(m.seq, 1);
    alice.close().await;
    server.stop().await;
}

#[tokio::test]
async fn a_restart_on_the_same_port_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), local()).await;
    let addr = server.addr;
    let url = server.url();
    let a_token = register(&url, "alice").await;
    let b_token = register(&url, "bob").await;
    let (alice, mut a_events) = connect(&url, &a_token).await;
    let (bob, mut b_events) = connect(&url, &b_token).await;
    let room = alice
        .create_room(&CreateRoomRequest {
            name: "durable".into(),
            ..CreateRoomRequest::default()
        })
        .await
        .expect("room")
        .id;
    bob.join_room(room).await.expect("join");
    for i in 0..4 {
        let sender = if i % 2 == 0 { &alice } else { &bob };
        sender
            .send_message(room, format!("before {i}"))
            .await
            .expect("send");
    }
    let (mut a_seqs, mut b_seqs) = (Vec::new(), Vec::new());
    seqs_until(&mut a_events, room, 4, &mut a_seqs).await;
    seqs_until(&mut b_events, room, 4, &mut b_seqs).await;

    // The server goes away; both clients notice.
    server.stop().await;
    for events in [&mut a_events, &mut b_events] {
        wait_for(events, |e| {
            matches!(e, Event::Disconnected { .. }).then_some(())
        })
        .await;
    }

    // Offline, alice queues a message; its future resolves after the restart.
    let pending = {
        let alice = alice.clone();
        tokio::spawn(async move { alice.send_message(room, "written offline").await })
    };
    // (The queue is filled synchronously by the spawned call; wait for it.)
    let queued_id = guard(Box::pin(async {
        loop {
            if let Some(id) = alice_queue(&alice) {
                return id;
            }
            tokio::task::yield_now().await;
        }
    }))
    .await;

    // Same data, same port.
    let server = Server::start(dir.path(), addr).await;
    for events in [&mut a_events, &mut b_events] {
        let resumed = wait_for(events, |e| match e {
            Event::Connected { resumed, .. } => Some(*resumed),
            _ => None,
        })
        .await;
        assert!(resumed);
    }
    let sent = guard(pending).await.expect("task").expect("stored");
    assert_eq!(sent.client_id.as_deref(), Some(queued_id.as_str()));
    assert_eq!(sent.seq, 5);

    // Bob, back as well, writes; then a last message as a sync point.
    let m = bob.send_message(room, "after restart").await.expect("send");
    assert_eq!(m.seq, 6);
    let m = alice.send_message(room, "last").await.expect("send");
    assert_eq!(m.seq, 7);
    seqs_until(&mut a_events, room, 7, &mut a_seqs).await;
    seqs_until(&mut b_events, room, 7, &mut b_seqs).await;
    let all: Vec<u64> = (1..=7).collect();
    assert_eq!(a_seqs, all, "alice saw each message once");
    assert_eq!(b_seqs, all, "bob saw each message once");

    let page = bob
        .history(room, HistoryQuery::latest(100))
        .await
        .expect("history");
    let stored: Vec<(u64, &str)> = page
        .messages
        .iter()
        .map(|m| (m.seq, m.content.as_str()))
        .collect();
    assert_eq!(stored.len(), 7, "{stored:?}");
    assert_eq!(
        stored
            .iter()
            .filter(|(_, c)| *c == "written offline")
            .count(),
        1,
        "stored once: {stored:?}"
    );
    alice.close().await;
    bob.close().await;
    server.stop().await;
}

/// The client_id of alice's one queued message, once it is queued.
fn alice_queue(alice: &Client) -> Option<String> {
    alice.queued().into_iter().next()
}

#[tokio::test]
async fn a_burst_of_sends_stays_under_the_default_rate_limit() {
    const N: u64 = 100;
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), local()).await;
    let url = server.url();
    let a_token = register(&url, "alice").await;
    let (alice, mut a_events) = connect(&url, &a_token).await;
    let room = alice
        .create_room(&CreateRoomRequest {
            name: "busy".into(),
            ..CreateRoomRequest::default()
        })
        .await
        .expect("room")
        .id;
    // Far past the server's burst of 60 frames: the SDK paces the sends, so
    // none is refused and the connection is never closed for flooding.
    let ids: Vec<String> = (0..N)
        .map(|i| alice.queue_message(room, format!("burst {i}")))
        .collect();
    let mut seqs = Vec::new();
    let mut client_ids = Vec::new();
    wait_for(&mut a_events, |e| match e {
        Event::Message(m) => {
            seqs.push(m.seq);
            client_ids.extend(m.client_id.clone());
            (m.seq == N).then_some(())
        }
        Event::SendFailed { error, .. } => panic!("a send failed: {error}"),
        Event::Disconnected { reason, .. } => panic!("disconnected: {reason}"),
        _ => None,
    })
    .await;
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>());
    assert_eq!(client_ids, ids, "stored in the order they were queued");
    assert!(alice.queued().is_empty());
    alice.close().await;
    server.stop().await;
}

#[tokio::test]
async fn http_api_joins_rooms_lists_online_peers_and_fetches_keys() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), local()).await;
    let url = server.url();
    let a_token = register(&url, "alice").await;
    let b_token = register(&url, "bob").await;
    let alice = HttpApi::new(&url).expect("api").with_token(&a_token);
    let bob = HttpApi::new(&url).expect("api").with_token(&b_token);
    let room = alice
        .create_room(&CreateRoomRequest {
            name: "general".into(),
            ..CreateRoomRequest::default()
        })
        .await
        .expect("create room")
        .id;
    assert!(
        matches!(
            bob.peers(room).await,
            Err(ClientError::Server {
                code: ErrorCode::Forbidden,
                ..
            })
        ),
        "peers are for members only"
    );
    assert_eq!(bob.join_room(room).await.expect("join").id, room);

    // Bob's agent comes online announcing its P2P details.
    let info = mesh_core::protocol::P2pInfo {
        cert_fingerprint: Some("ab".repeat(32)),
        addrs: vec!["127.0.0.1:4433".into()],
    };
    let agent = Client::builder()
        .server(&url)
        .token(&b_token)
        .device_name("agent")
        .p2p(info.clone())
        .connect()
        .await
        .expect("connect");
    let (agent_peer, _) = agent.me().expect("welcomed");
    let peers = alice.peers(room).await.expect("peers");
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].peer_id, agent_peer);
    assert_eq!(peers[0].user.username, "bob");
    assert_eq!(peers[0].p2p.as_ref(), Some(&info));

    let jwks = alice.keys().await.expect("keys");
    mesh_core::auth::TokenVerifier::from_jwks(&jwks).expect("a usable JWK Set");
    agent.close().await;
    server.stop().await;
}
