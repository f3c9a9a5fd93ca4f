//! The state machine against a scripted server and a virtual clock: no
//! sockets, no sleeps. The server's frames are built from the shared wire
//! types exactly as the reference server encodes them.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::protocol::ErrorCode;
use crate::protocol::{
    ErrorPayload, Message, MessageId, OutgoingFrame, P2pInfo, P2pSession, PeerId, Presence, RoomId,
    ServerEvent, SessionId, SessionKind, SessionState, Timestamp, User, UserId,
};

fn at(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(1_800_000_000_000 + ms)
}

fn user(name: &str) -> User {
    User {
        id: UserId::new(),
        username: name.into(),
        display_name: name.into(),
        created_at: at(0),
    }
}

fn message(room: RoomId, seq: u64, sender: &User, client_id: Option<&str>) -> Message {
    Message {
        id: MessageId::new(),
        room_id: room,
        seq,
        sender: sender.clone(),
        content: format!("m{seq}"),
        created_at: at(0),
        client_id: client_id.map(str::to_owned),
    }
}

/// One client, its virtual clock, and what it has written and emitted.
struct Harness {
    state: ClientState,
    now: Timestamp,
    me: User,
    peer: PeerId,
}

impl Harness {
    fn new() -> Self {
        Self::with_config(ClientConfig {
            backoff: BackoffConfig {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(2),
            },
            ..ClientConfig::default()
        })
    }

    fn with_config(config: ClientConfig) -> Self {
        Self {
            state: ClientState::new(config, at(0), 42),
            now: at(0),
            me: user("alice"),
            peer: PeerId::new(),
        }
    }

    fn advance_to(&mut self, t: Timestamp) {
        self.now = t;
        self.state.handle_timeout(t);
    }

    /// Frames the client wrote, as JSON.
    fn sent(&mut self) -> Vec<Value> {
        std::iter::from_fn(|| self.state.poll_transmit())
            .map(|t| serde_json::from_str(&t).expect("client frames are JSON"))
            .collect()
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.state.poll_event()).collect()
    }

    fn completions(&mut self) -> Vec<Completion> {
        std::iter::from_fn(|| self.state.poll_completion()).collect()
    }

    fn receive(&mut self, id: Option<&str>, event: ServerEvent) {
        let text = OutgoingFrame::reply(id.map(str::to_owned), event).to_json();
        self.state.frame_received(&text, self.now);
    }

    /// Opens a socket and answers the hello; returns the hello frame.
    fn connect(&mut self, heartbeat_ms: u64) -> Value {
        assert!(self.state.poll_connect(self.now), "a connect is due");
        self.state.connected(self.now);
        let mut sent = self.sent();
        assert_eq!(sent.len(), 1, "only the hello before the welcome: {sent:?}");
        let hello = sent.remove(0);
        assert_eq!(hello["type"], "system.hello");
        let welcome = ServerEvent::Welcome {
            peer_id: self.peer,
            user: self.me.clone(),
            server_time: self.now,
            heartbeat_ms,
            p2p: None,
        };
        self.receive(hello["id"].as_str(), welcome);
        hello
    }

    /// Reconnects once the backoff allows; returns the hello frame.
    fn reconnect(&mut self, heartbeat_ms: u64) -> Value {
        let ConnectionStatus::Disconnected { retry_at } = self.state.status() else {
            panic!("not disconnected: {:?}", self.state.status())
        };
        self.advance_to(retry_at);
        self.connect(heartbeat_ms)
    }

    fn messages(events: &[Event]) -> Vec<(RoomId, u64)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some((m.room_id, m.seq)),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn backoff_grows_with_jitter_and_caps_between_attempts() {
    let mut h = Harness::new();
    let mut waits = Vec::new();
    for attempt in 0..10u32 {
        assert!(h.state.poll_connect(h.now), "attempt {attempt} is due");
        h.state.connect_failed(
            h.now,
            ClientError::transport(std::io::Error::other("refused")),
        );
        let ConnectionStatus::Disconnected { retry_at } = h.state.status() else {
            panic!("disconnected after a failure")
        };
        let wait = retry_at.since(h.now);
        let ceiling = (Duration::from_millis(100) * 2u32.pow(attempt)).min(Duration::from_secs(2));
        assert!(
            wait >= ceiling / 2 && wait <= ceiling,
            "attempt {attempt}: {wait:?} not in [{:?}, {ceiling:?}]",
            ceiling / 2
        );
        // Not a moment early.
        h.now = retry_at.saturating_add(Duration::ZERO);
        let early = Timestamp::from_unix_millis(retry_at.unix_millis() - 1);
        assert!(!h.state.poll_connect(early));
        assert_eq!(h.state.poll_timeout(), Some(retry_at));
        waits.push(wait);
    }
    assert!(waits[0] < waits[5], "grows: {waits:?}");
    assert!(
        waits[6..].iter().all(|w| *w <= Duration::from_secs(2)),
        "caps"
    );
    assert!(
        waits[6..].windows(2).any(|w| w[0] != w[1]),
        "jitter: {waits:?}"
    );

    // A welcome resets the backoff: the next loss waits the short delay again.
    h.connect(15_000);
    h.state.disconnected(h.now, "gone");
    let ConnectionStatus::Disconnected { retry_at } = h.state.status() else {
        panic!("disconnected")
    };
    assert!(retry_at.since(h.now) <= Duration::from_millis(100));
}

#[test]
fn reconnect_says_hello_with_the_last_seq_of_every_room() {
    let mut h = Harness::new();
    let (r1, r2) = (RoomId::new(), RoomId::new());
    let bob = user("bob");
    let first = h.connect(15_000);
    assert!(
        first["payload"].get("since").is_none(),
        "nothing to resume yet"
    );
    for seq in 1..=3 {
        h.receive(
            None,
            ServerEvent::MessageCreated {
                message: message(r1, seq, &bob, None),
            },
        );
    }
    for seq in 1..=5 {
        h.receive(
            None,
            ServerEvent::MessageCreated {
                message: message(r2, seq, &bob, None),
            },
        );
    }
    h.state.disconnected(h.now, "network down");
    let events = h.events();
    assert!(matches!(events.last(), Some(Event::Disconnected { .. })));
    let hello = h.reconnect(15_000);
    assert_eq!(
        hello["payload"]["since"],
        json!({r1.to_string(): 3, r2.to_string(): 5})
    );
    let Some(Event::Connected { resumed, .. }) = h.events().into_iter().next() else {
        panic!("connected")
    };
    assert!(resumed);
}

#[test]
fn configured_and_observed_cursors_go_into_since() {
    let (r1, r2) = (RoomId::new(), RoomId::new());
    let mut h = Harness::with_config(ClientConfig {
        since: HashMap::from([(r1, 7)]),
        ..ClientConfig::default()
    });
    let hello = h.connect(15_000);
    assert_eq!(hello["payload"]["since"], json!({r1.to_string(): 7}));
    // A replay at or below a configured cursor is not new.
    h.receive(
        None,
        ServerEvent::MessageCreated {
            message: message(r1, 7, &h.me.clone(), None),
        },
    );
    // Observing a seq (a history page, a new room) moves `since` but does not
    // hide messages still in flight below it.
    h.state.observe_seq(r2, 10);
    h.receive(
        None,
        ServerEvent::MessageCreated {
            message: message(r2, 9, &h.me.clone(), None),
        },
    );
    let events = h.events();
    assert_eq!(Harness::messages(&events), vec![(r2, 9)]);
    assert_eq!(h.state.cursors(), HashMap::from([(r1, 7), (r2, 10)]));
}

#[test]
fn replayed_seqs_are_delivered_once() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let bob = user("bob");
    h.connect(15_000);
    for seq in [1, 2, 3, 2, 3, 4, 1, 5] {
        h.receive(
            None,
            ServerEvent::MessageCreated {
                message: message(room, seq, &bob, None),
            },
        );
    }
    let events = h.events();
    let seqs: Vec<u64> = Harness::messages(&events)
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
}

#[test]
fn a_message_queued_offline_goes_out_after_reconnect_under_one_client_id() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let me = h.me.clone();
    h.connect(15_000);
    h.events();

    // Sent, then the connection drops before the answer: the server may or
    // may not have stored it.
    let first = h.state.send_message(room, "first", h.now);
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["type"], "chat.message.send");
    assert_eq!(sent[0]["payload"]["client_id"], json!(first));
    h.state.disconnected(h.now, "cable pulled");

    // Queued while offline: nothing goes out.
    let second = h.state.send_message(room, "second", h.now);
    assert_ne!(first, second);
    assert!(h.sent().is_empty());
    assert_eq!(
        h.state.queued().collect::<Vec<_>>(),
        vec![&first[..], &second[..]]
    );
    assert!(h.completions().is_empty(), "nothing resolved while offline");

    // Reconnect: hello, then both retries under their original client_id.
    let ConnectionStatus::Disconnected { retry_at } = h.state.status() else {
        panic!()
    };
    h.advance_to(retry_at);
    assert!(h.state.poll_connect(h.now));
    h.state.connected(h.now);
    let hello = h.sent().remove(0);
    h.receive(
        hello["id"].as_str(),
        ServerEvent::Welcome {
            peer_id: h.peer,
            user: me.clone(),
            server_time: h.now,
            heartbeat_ms: 15_000,
            p2p: None,
        },
    );
    let retries = h.sent();
    let ids: Vec<&Value> = retries.iter().map(|f| &f["payload"]["client_id"]).collect();
    assert_eq!(ids, vec![&json!(first), &json!(second)]);
    assert_ne!(
        retries[0]["id"], sent[0]["id"],
        "a fresh request id per attempt"
    );

    // The first had been stored: `since` replays it, then the retry is
    // answered with the same message (the server's duplicate answer).
    let stored = message(room, 1, &me, Some(&first));
    h.receive(
        None,
        ServerEvent::MessageCreated {
            message: stored.clone(),
        },
    );
    h.receive(
        retries[0]["id"].as_str(),
        ServerEvent::MessageCreated {
            message: stored.clone(),
        },
    );
    let created = message(room, 2, &me, Some(&second));
    h.receive(
        retries[1]["id"].as_str(),
        ServerEvent::MessageCreated {
            message: created.clone(),
        },
    );

    let completions = h.completions();
    let resolved: Vec<(String, u64)> = completions
        .iter()
        .map(|c| match c {
            Completion::Send {
                client_id,
                result: Ok(m),
            } => (client_id.clone(), m.seq),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(resolved, vec![(first, 1), (second, 2)], "each exactly once");
    let events = h.events();
    assert_eq!(Harness::messages(&events), vec![(room, 1), (room, 2)]);
    assert_eq!(h.state.queued().count(), 0);
    assert!(h.sent().is_empty(), "nothing sent twice");
}

#[test]
fn a_refused_send_fails_once_and_a_rate_limited_one_is_retried() {
    let mut h = Harness::new();
    let room = RoomId::new();
    h.connect(15_000);
    h.events();
    let refused = h.state.send_message(room, "x", h.now);
    let limited = h.state.send_message(room, "y", h.now);
    let sent = h.sent();
    h.receive(
        sent[0]["id"].as_str(),
        ServerEvent::error(ErrorCode::Forbidden, "join the room first"),
    );
    let mut slow = ErrorPayload::new(ErrorCode::RateLimited, "slow down");
    slow.retry_after_ms = Some(500);
    h.receive(sent[1]["id"].as_str(), ServerEvent::Error(slow));

    let completions = h.completions();
    assert_eq!(completions.len(), 1);
    assert!(
        matches!(&completions[0], Completion::Send { client_id, result: Err(e) }
        if *client_id == refused && e.code() == Some(ErrorCode::Forbidden))
    );
    assert!(
        matches!(&h.events()[..], [Event::SendFailed { client_id, .. }] if *client_id == refused)
    );

    // Held back until the server's retry-after, then re-sent as it was.
    assert_eq!(
        h.state.poll_timeout(),
        Some(h.now.saturating_add(Duration::from_millis(500)))
    );
    h.advance_to(h.now.saturating_add(Duration::from_millis(499)));
    assert!(h.sent().is_empty());
    h.advance_to(h.now.saturating_add(Duration::from_millis(1)));
    let retry = h.sent();
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0]["payload"]["client_id"], json!(limited));
}

#[test]
fn replies_are_matched_to_their_requests() {
    let mut h = Harness::new();
    let (r1, r2) = (RoomId::new(), RoomId::new());
    let me = h.me.clone();

    // Offline: refused at once, not queued.
    let offline = h.state.join_room(r1);
    assert!(matches!(&h.completions()[..],
        [Completion::Request { id, result: Err(ClientError::NotConnected) }] if *id == offline));

    h.connect(15_000);
    let join1 = h.state.join_room(r1);
    let join2 = h.state.join_room(r2);
    let target = PeerId::new();
    let p2p = h.state.request_p2p_session(r1, target, SessionKind::File);
    let sent = h.sent();
    assert_eq!(sent.len(), 3);
    let wire: Vec<&str> = sent.iter().map(|f| f["id"].as_str().expect("id")).collect();
    assert_eq!(
        wire.iter().collect::<std::collections::HashSet<_>>().len(),
        3,
        "unique ids"
    );

    // Answers out of order; a broadcast in between belongs to no request.
    let session = P2pSession {
        id: SessionId::new(),
        room_id: r1,
        kind: SessionKind::File,
        initiator_peer_id: h.peer,
        target_peer_id: target,
        initiator_user_id: me.id,
        target_user_id: UserId::new(),
        state: SessionState::Pending,
        created_at: h.now,
        expires_at: h.now,
    };
    h.receive(
        Some(wire[2]),
        ServerEvent::P2pSessionCreated {
            session: session.clone(),
            session_token: "a.b.c".into(),
            initiator: P2pInfo::default(),
            target: P2pInfo::default(),
            relay: None,
        },
    );
    h.receive(
        None,
        ServerEvent::Typing {
            room_id: r1,
            user_id: UserId::new(),
            typing: true,
        },
    );
    h.receive(
        Some(wire[1]),
        ServerEvent::error(ErrorCode::NotFound, "no such room"),
    );
    h.receive(
        Some(wire[0]),
        ServerEvent::RoomJoined {
            room_id: r1,
            user: me.clone(),
            peer_id: h.peer,
            members: Some(vec![]),
        },
    );

    let completions = h.completions();
    let by_id: HashMap<RequestId, &Completion> = completions
        .iter()
        .map(|c| match c {
            Completion::Request { id, .. } => (*id, c),
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(
        matches!(by_id[&p2p], Completion::Request { result: Ok(Reply::P2pSession(g)), .. }
        if g.session == session && g.session_token == "a.b.c")
    );
    assert!(
        matches!(by_id[&join2], Completion::Request { result: Err(e), .. }
        if e.code() == Some(ErrorCode::NotFound))
    );
    assert!(
        matches!(by_id[&join1], Completion::Request { result: Ok(Reply::Joined { room_id, .. }), .. }
        if *room_id == r1)
    );

    let events = h.events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Typing { typing: true, .. }))
    );
    assert!(events.iter().any(|e| matches!(
        e,
        Event::RoomJoined {
            members: Some(_),
            ..
        }
    )));
    assert!(
        !events.iter().any(|e| matches!(e, Event::ServerError(_))),
        "{events:?}"
    );

    // In flight when the connection drops: failed, not left hanging.
    let lost = h.state.leave_room(r1);
    h.state.disconnected(h.now, "gone");
    assert!(matches!(&h.completions()[..],
        [Completion::Request { id, result: Err(ClientError::Disconnected) }] if *id == lost));
}

#[test]
fn pings_follow_heartbeat_ms_and_silence_gives_the_connection_up() {
    let mut h = Harness::new();
    h.connect(1_000);
    h.events();
    let t0 = h.now;
    let ms = |n: u64| t0.saturating_add(Duration::from_millis(n));
    assert_eq!(h.state.poll_timeout(), Some(ms(1_000)));
    h.advance_to(ms(999));
    assert!(h.sent().is_empty());

    // Every heartbeat a ping; a pong (or any frame) keeps the connection.
    for beat in 1..=3u64 {
        h.advance_to(ms(beat * 1_000));
        let sent = h.sent();
        assert_eq!(sent.len(), 1, "beat {beat}");
        assert_eq!(sent[0]["type"], "system.ping");
        h.receive(
            sent[0]["id"].as_str(),
            ServerEvent::Pong { server_time: h.now },
        );
        assert_eq!(h.state.poll_timeout(), Some(ms((beat + 1) * 1_000)));
    }
    assert!(h.events().is_empty(), "pongs are not app events");

    // Silence: pings still go out, and after three silent heartbeats the
    // state machine gives up and asks the driver to close.
    h.advance_to(ms(4_000));
    h.advance_to(ms(5_000));
    assert_eq!(h.sent().len(), 2);
    assert!(!h.state.poll_close());
    h.advance_to(ms(6_000));
    assert!(h.state.poll_close());
    assert!(matches!(
        h.state.status(),
        ConnectionStatus::Disconnected { .. }
    ));
    assert!(matches!(&h.events()[..], [Event::Disconnected { .. }]));
    // The driver reporting the close it was asked for changes nothing.
    h.state.disconnected(h.now, "closed");
    assert!(h.events().is_empty());
}

#[test]
fn a_slow_handshake_is_given_up() {
    let mut h = Harness::new();
    assert!(h.state.poll_connect(h.now));
    h.state.connected(h.now);
    h.sent();
    let deadline = h.state.poll_timeout().expect("a deadline");
    assert_eq!(deadline, h.now.saturating_add(Duration::from_secs(10)));
    h.advance_to(deadline);
    assert!(h.state.poll_close());
    assert!(matches!(
        h.state.status(),
        ConnectionStatus::Disconnected { .. }
    ));
}

#[test]
fn a_refused_token_stops_reconnecting_and_fails_the_queue() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let queued = h.state.send_message(room, "never", h.now);
    assert!(h.state.poll_connect(h.now));
    h.state.connect_failed(
        h.now,
        ClientError::server(ErrorCode::Unauthorized, "expired"),
    );
    assert_eq!(h.state.status(), ConnectionStatus::Closed);
    assert_eq!(h.state.poll_timeout(), None);
    assert!(!h.state.poll_connect(at(1_000_000)));
    assert!(matches!(&h.completions()[..],
        [Completion::Send { client_id, result: Err(ClientError::Closed) }] if *client_id == queued));
    let events = h.events();
    assert!(
        matches!(events.last(), Some(Event::Closed { error: Some(e) })
        if e.code() == Some(ErrorCode::Unauthorized))
    );
}

#[test]
fn close_fails_what_is_pending_and_asks_the_driver_to_close() {
    let mut h = Harness::new();
    h.connect(15_000);
    let join = h.state.join_room(RoomId::new());
    h.state.close();
    assert!(h.state.poll_close());
    assert!(matches!(&h.completions()[..],
        [Completion::Request { id, result: Err(ClientError::Closed) }] if *id == join));
    // Late sends fail at once.
    let late = h.state.send_message(RoomId::new(), "late", h.now);
    assert!(matches!(&h.completions()[..],
        [Completion::Send { client_id, result: Err(ClientError::Closed) }] if *client_id == late));
}

#[test]
fn presence_is_set_again_after_a_reconnect() {
    let mut h = Harness::new();
    h.connect(15_000);
    let req = h
        .state
        .set_presence(Presence::Busy, Some("in a call".into()));
    let sent = h.sent();
    h.receive(
        sent[0]["id"].as_str(),
        ServerEvent::PresenceUpdate {
            user_id: h.me.id,
            status: Presence::Busy,
            message: Some("in a call".into()),
        },
    );
    assert!(matches!(&h.completions()[..],
        [Completion::Request { id, result: Ok(Reply::Presence { status: Presence::Busy }) }] if *id == req));
    h.state.disconnected(h.now, "gone");
    h.reconnect(15_000);
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["type"], "presence.update");
    assert_eq!(
        sent[0]["payload"],
        json!({"status": "busy", "message": "in a call"})
    );
}

#[test]
fn typing_and_rtc_are_dropped_offline_and_unreadable_frames_are_reported() {
    let mut h = Harness::new();
    let room = RoomId::new();
    h.state.set_typing(room, true);
    assert!(h.sent().is_empty());
    h.connect(15_000);
    h.events();
    h.state.set_typing(room, true);
    assert_eq!(
        h.sent()[0],
        json!({"type": "chat.typing", "payload": {"room_id": room, "typing": true}})
    );
    h.state.frame_received("not json", h.now);
    h.state.frame_received(
        r#"{"type":"error","payload":{"code":"rate_limited","message":"x"}}"#,
        h.now,
    );
    let events = h.events();
    assert!(matches!(
        &events[0],
        Event::ServerError(ClientError::Protocol(_))
    ));
    assert!(
        matches!(&events[1], Event::ServerError(e) if e.code() == Some(ErrorCode::RateLimited))
    );
}

#[test]
fn a_flushed_queue_is_paced_under_the_servers_rate_limit() {
    let mut h = Harness::with_config(ClientConfig {
        send_rate: SendRate {
            burst: 5,
            per_second: 10.0,
        },
        ..ClientConfig::default()
    });
    let room = RoomId::new();
    let ids: Vec<String> = (0..12)
        .map(|i| h.state.send_message(room, format!("m{i}"), h.now))
        .collect();
    h.connect(60_000);
    let client_ids = |frames: Vec<Value>| -> Vec<String> {
        frames
            .iter()
            .map(|f| f["payload"]["client_id"].as_str().expect("id").to_owned())
            .collect()
    };
    // The burst at once, in queue order; then one per 100 ms.
    let mut out = client_ids(h.sent());
    assert_eq!(out, ids[..5]);
    let t0 = h.now;
    for n in 1..=7u64 {
        let due = h.state.poll_timeout().expect("a pacing deadline");
        assert!(
            due.since(t0) <= Duration::from_millis(n * 100 + 1),
            "send {n} due at {:?}",
            due.since(t0)
        );
        h.advance_to(due);
        let got = client_ids(h.sent());
        assert_eq!(got.len(), 1, "one token, one send");
        out.extend(got);
    }
    assert_eq!(out, ids, "every message once, in order");
    assert!(h.sent().is_empty());
}
