//! WebRTC relay and P2P sessions.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::harness::{Harness, user};
use crate::engine::{EngineConfig, PeerInfo};
use crate::error::Error;
use crate::protocol::RelayParty;
use crate::protocol::RtcKind;
use crate::protocol::UserId;
use crate::protocol::{
    DeviceId, P2pInfo, P2pSession, PeerId, RoomId, RtcSignal, ServerEvent, SessionId, SessionKind,
    SessionState,
};
use crate::relay::grant::RelaySecret;

fn offer(target: PeerId, room: RoomId) -> RtcSignal {
    let mut body = Map::new();
    body.insert("sdp".into(), json!("v=0"));
    RtcSignal {
        target_peer_id: target,
        room_id: room,
        from_peer_id: None,
        from_user_id: None,
        body,
    }
}

#[test]
fn signals_reach_only_their_target_with_the_sender_filled_in() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let a = h.connect(&alice, &[room]);
    let b = h.connect(&bob, &[room]);
    let c = h.connect(&carol, &[room]);
    h.clear();
    for kind in [
        RtcKind::Offer,
        RtcKind::Answer,
        RtcKind::Ice,
        RtcKind::Hangup,
    ] {
        assert!(h.engine.relay_rtc(h.now, a, kind, offer(b, room)).is_ok());
    }
    h.drain();
    let got = h.events(b);
    assert_eq!(got.len(), 4);
    let ServerEvent::RtcOffer(signal) = &got[0] else {
        panic!("not an offer: {got:?}")
    };
    assert_eq!(signal.from_peer_id, Some(a));
    assert_eq!(signal.from_user_id, Some(alice.id));
    assert_eq!(signal.body.get("sdp"), Some(&Value::from("v=0")));
    assert!(matches!(got[1], ServerEvent::RtcAnswer(_)));
    assert!(matches!(got[2], ServerEvent::RtcIce(_)));
    assert!(matches!(got[3], ServerEvent::RtcHangup(_)));
    assert!(h.events(a).is_empty());
    assert!(h.events(c).is_empty());
}

#[test]
fn signals_are_refused_without_a_shared_room_or_to_unknown_peers() {
    let mut h = Harness::new();
    let (r1, r2) = (RoomId::new(), RoomId::new());
    let a = h.connect(&user("alice"), &[r1]);
    let d = h.connect(&user("dave"), &[r2]);
    h.clear();
    let result = h.engine.relay_rtc(h.now, a, RtcKind::Offer, offer(d, r1));
    assert!(matches!(result, Err(Error::Forbidden(_))), "{result:?}");
    let result = h.engine.relay_rtc(h.now, a, RtcKind::Offer, offer(d, r2));
    assert!(matches!(result, Err(Error::Forbidden(_))), "{result:?}");
    let result = h
        .engine
        .relay_rtc(h.now, a, RtcKind::Offer, offer(PeerId::new(), r1));
    assert!(matches!(result, Err(Error::NotFound(_))), "{result:?}");
    // Outside the room, whether the target is connected is not told.
    let result = h
        .engine
        .relay_rtc(h.now, a, RtcKind::Offer, offer(PeerId::new(), r2));
    assert!(matches!(result, Err(Error::Forbidden(_))), "{result:?}");
    h.drain();
    assert!(h.sends.is_empty());
}

/// Alice (with P2P details) and Bob (without) in one room.
fn pair(h: &mut Harness) -> (RoomId, PeerId, PeerId) {
    let room = RoomId::new();
    let a = PeerId::new();
    h.engine.connect(
        h.now,
        PeerInfo {
            peer_id: a,
            user: user("alice"),
            device_id: DeviceId::new(),
            p2p: Some(P2pInfo {
                cert_fingerprint: Some("ab".into()),
                addrs: vec!["10.0.0.1:7000".into()],
            }),
        },
        vec![room],
        Default::default(),
        None,
    );
    let b = h.connect(&user("bob"), &[room]);
    h.drain();
    h.clear();
    (room, a, b)
}

fn open(h: &mut Harness, room: RoomId, a: PeerId, b: PeerId) -> P2pSession {
    let session = h
        .engine
        .prepare_session(h.now, SessionId::new(), a, room, b, SessionKind::File);
    let Ok(session) = session else {
        panic!("prepare: {session:?}")
    };
    h.engine
        .open_session(h.now, session.clone(), "tok".into(), Some("q1".into()));
    h.drain();
    session
}

#[test]
fn session_is_announced_to_both_and_expires_after_180_s() {
    let mut h = Harness::new();
    let (room, a, b) = pair(&mut h);
    let session = open(&mut h, room, a, b);
    assert_eq!(session.state, SessionState::Pending);
    assert_eq!(
        session.expires_at,
        h.now.saturating_add(Duration::from_secs(180))
    );

    let to_a = h.take(a);
    let to_b = h.take(b);
    assert_eq!(to_a.len(), 1);
    assert_eq!(to_b.len(), 1);
    assert_eq!(to_a[0].id.as_deref(), Some("q1"));
    assert_eq!(to_b[0].id, None);
    let ServerEvent::P2pSessionCreated {
        session: announced,
        session_token,
        initiator,
        target,
        relay,
    } = &to_b[0].event
    else {
        panic!("not created: {to_b:?}")
    };
    assert_eq!(announced, &session);
    assert_eq!(session_token, "tok");
    assert_eq!(relay, &None, "no relay grant without a relay secret");
    assert_eq!(initiator.addrs, vec!["10.0.0.1:7000".to_owned()]);
    assert_eq!(target, &P2pInfo::default());
    let alice = session.initiator_user_id;
    assert_eq!(h.engine.sessions_of(alice), vec![session.clone()]);
    assert_eq!(h.engine.sessions_of(session.target_user_id).len(), 1);

    // Keep both peers alive; only the session should end.
    for _ in 0..17 {
        h.advance(Duration::from_secs(10));
        h.engine.heard_from(h.now, a);
        h.engine.heard_from(h.now, b);
    }
    h.advance(Duration::from_millis(9_999));
    assert!(h.ended.is_empty(), "179.999 s");
    h.advance(Duration::from_millis(1));
    let closed = ServerEvent::P2pSessionClosed {
        session_id: session.id,
        reason: "expired".into(),
    };
    assert_eq!(h.events(a), vec![closed.clone()]);
    assert_eq!(h.events(b), vec![closed]);
    assert_eq!(h.ended, vec![session.id]);
    assert!(h.engine.sessions_of(alice).is_empty());
    assert!(h.closed.is_empty());
}

#[test]
fn session_closes_when_a_peer_disconnects() {
    let mut h = Harness::new();
    let (room, a, b) = pair(&mut h);
    let session = open(&mut h, room, a, b);
    h.clear();
    h.engine.disconnect(h.now, a);
    h.drain();
    assert!(h.events(b).contains(&ServerEvent::P2pSessionClosed {
        session_id: session.id,
        reason: "peer_disconnected".into(),
    }));
    assert!(h.take(a).is_empty());
    assert_eq!(h.ended, vec![session.id]);
    assert!(h.engine.sessions_of(session.target_user_id).is_empty());
    h.advance(Duration::from_secs(200));
    assert_eq!(h.ended.len(), 1, "no second end at expiry");
}

#[test]
fn prepare_checks_peers_and_rooms_and_records_nothing() {
    let mut h = Harness::new();
    let (room, a, b) = pair(&mut h);
    let outsider = h.connect(&user("olga"), &[RoomId::new()]);
    h.clear();
    let prepare = |h: &Harness, init, target| {
        h.engine.prepare_session(
            h.now,
            SessionId::new(),
            init,
            room,
            target,
            SessionKind::Terminal,
        )
    };
    assert!(matches!(prepare(&h, a, a), Err(Error::InvalidRequest(_))));
    match prepare(&h, a, PeerId::new()) {
        Err(Error::NotFound(msg)) => assert_eq!(msg, "target peer is not connected"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(prepare(&h, a, outsider), Err(Error::Forbidden(_))));
    assert!(matches!(prepare(&h, outsider, a), Err(Error::Forbidden(_))));
    // Outside the room, whether the target is connected is not told.
    assert!(matches!(
        prepare(&h, outsider, PeerId::new()),
        Err(Error::Forbidden(_))
    ));
    let ok = prepare(&h, a, b);
    assert!(ok.is_ok());
    let alice = h.engine.peer(a).map(|p| p.user.id);
    assert!(alice.is_some_and(|u| h.engine.sessions_of(u).is_empty()));
    h.drain();
    assert!(h.sends.is_empty() && h.ended.is_empty());
}

#[test]
fn parties_close_sessions_others_cannot() {
    let mut h = Harness::new();
    let (room, a, b) = pair(&mut h);
    let session = open(&mut h, room, a, b);
    h.clear();
    let stranger = user("eve").id;
    let result = h.engine.close_session(h.now, session.id, stranger, "nope");
    assert!(matches!(result, Err(Error::NotFound(_))), "{result:?}");
    let result = h
        .engine
        .close_session(h.now, SessionId::new(), session.target_user_id, "x");
    assert!(matches!(result, Err(Error::NotFound(_))), "{result:?}");
    let result = h
        .engine
        .close_session(h.now, session.id, session.target_user_id, "done");
    assert!(result.is_ok());
    h.drain();
    let closed = ServerEvent::P2pSessionClosed {
        session_id: session.id,
        reason: "done".into(),
    };
    assert_eq!(h.events(a), vec![closed.clone()]);
    assert_eq!(h.events(b), vec![closed]);
    assert_eq!(h.ended, vec![session.id]);
    assert_eq!(
        h.engine.poll_timeout(),
        Some(h.now.saturating_add(Duration::from_secs(45)))
    );
}

#[test]
fn opening_for_a_peer_that_left_meanwhile_closes_at_once() {
    let mut h = Harness::new();
    let (room, a, b) = pair(&mut h);
    let prepared =
        h.engine
            .prepare_session(h.now, SessionId::new(), a, room, b, SessionKind::Folder);
    let Ok(session) = prepared else {
        panic!("{prepared:?}")
    };
    h.engine.disconnect(h.now, b);
    h.drain();
    h.clear();
    h.engine
        .open_session(h.now, session.clone(), "tok".into(), None);
    h.drain();
    let events = h.events(a);
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(matches!(events[0], ServerEvent::P2pSessionCreated { .. }));
    assert_eq!(
        events[1],
        ServerEvent::P2pSessionClosed {
            session_id: session.id,
            reason: "peer_disconnected".into(),
        }
    );
    assert_eq!(h.ended, vec![session.id]);
}

#[test]
fn rtc_kinds_read_and_print_as_the_event_types_name_them() {
    for kind in [
        RtcKind::Offer,
        RtcKind::Answer,
        RtcKind::Ice,
        RtcKind::Hangup,
    ] {
        assert_eq!(kind.as_str().parse::<RtcKind>().ok(), Some(kind));
    }
    assert_eq!(RtcKind::Ice.as_str(), "ice");
    assert!(matches!(
        "ring".parse::<RtcKind>().map_err(Error::from),
        Err(Error::InvalidRequest(_))
    ));
}

/// Two nodes' engines: alice's agent on `a`, bob's on `b`, both in `room`.
fn two_nodes() -> (Harness, Harness, RoomId, PeerId, (PeerId, UserId)) {
    // Both nodes relay; node a's relay has a public address.
    let relaying = |addr: Option<&str>| EngineConfig {
        relay_secret: Some(RelaySecret::generate().expect("random")),
        relay_addr: addr.map(str::to_owned),
        ..EngineConfig::default()
    };
    let (mut a, mut b) = (
        Harness::with_config(relaying(Some("192.0.2.1:3478"))),
        Harness::with_config(relaying(None)),
    );
    let (room, alice, _) = pair(&mut a);
    let bob_user = user("bob");
    let bob = b.connect(&bob_user, &[room]);
    b.clear();
    (a, b, room, alice, (bob, bob_user.id))
}

#[test]
fn a_session_across_nodes_is_announced_on_each_and_ends_on_both() {
    let (mut a, mut b, room, alice, (bob, bob_user)) = two_nodes();
    let bob_info = P2pInfo {
        cert_fingerprint: Some("cd".into()),
        addrs: vec!["10.0.0.2:7000".into()],
    };
    // The target is not here: the local prepare says so, the one for a
    // peer elsewhere builds the session.
    assert!(matches!(
        a.engine
            .prepare_session(a.now, SessionId::new(), alice, room, bob, SessionKind::File),
        Err(Error::NotFound(_))
    ));
    let session = a
        .engine
        .prepare_session_elsewhere(
            a.now,
            SessionId::new(),
            alice,
            room,
            (bob, bob_user),
            SessionKind::File,
        )
        .expect("prepared");
    assert_eq!(session.target_user_id, bob_user);
    a.engine.open_session_elsewhere(
        a.now,
        session.clone(),
        "tok".into(),
        Some("q1".into()),
        bob_info.clone(),
    );
    a.drain();
    let to_alice = a.take(alice);
    assert_eq!(to_alice.len(), 1);
    assert_eq!(to_alice[0].id.as_deref(), Some("q1"));
    let ServerEvent::P2pSessionCreated { target, relay, .. } = &to_alice[0].event else {
        panic!("not created: {to_alice:?}")
    };
    assert_eq!(
        target, &bob_info,
        "the target's details as its node told them"
    );
    // Node a relays the session: both grants name its relay.
    let relay = relay.as_ref().expect("alice's grant");
    assert_eq!(relay.addr.as_deref(), Some("192.0.2.1:3478"));
    let for_bob = a
        .engine
        .relay_grant_elsewhere(session.id)
        .expect("bob's grant");
    assert_eq!(
        (for_bob.party, for_bob.addr.as_deref()),
        (RelayParty::Target, Some("192.0.2.1:3478"))
    );
    assert!(a.ended.is_empty(), "the target elsewhere does not end it");

    // Bob's node: a node without the target ignores it; bob's announces it.
    let mut c = Harness::new();
    assert!(!c.engine.remote_session_opened(
        c.now,
        session.clone(),
        "tok".into(),
        P2pInfo::default(),
        None,
    ));
    let alice_info = a
        .engine
        .peer(alice)
        .and_then(|p| p.p2p.clone())
        .expect("announced");
    assert!(b.engine.remote_session_opened(
        b.now,
        session.clone(),
        "tok".into(),
        alice_info.clone(),
        Some(for_bob.clone()),
    ));
    b.drain();
    let to_bob = b.events(bob);
    let [
        ServerEvent::P2pSessionCreated {
            session: s,
            initiator,
            relay,
            ..
        },
    ] = &to_bob[..]
    else {
        panic!("not created: {to_bob:?}")
    };
    assert_eq!((s, initiator), (&session, &alice_info));
    assert_eq!(
        relay,
        &Some(for_bob),
        "node a's grant, not one of node b's relay"
    );
    // Without a public address, a node gives no grant for a party elsewhere.
    assert_eq!(b.engine.relay_grant_elsewhere(session.id), None);
    assert_eq!(b.engine.sessions_of(bob_user), vec![session.clone()]);

    // Bob leaves: his node ends it and says so for alice's node, which
    // tells alice and does not echo it back.
    b.engine.disconnect(b.now, bob);
    b.drain();
    assert_eq!(b.ended, vec![session.id]);
    assert_eq!(
        b.ended_elsewhere,
        vec![(session.id, "peer_disconnected".to_owned())]
    );
    let (id, reason) = b.ended_elsewhere[0].clone();
    a.engine.remote_session_closed(a.now, id, &reason);
    a.drain();
    assert_eq!(
        a.events(alice),
        vec![ServerEvent::P2pSessionClosed {
            session_id: session.id,
            reason: reason.clone()
        }]
    );
    assert_eq!(a.ended, vec![session.id]);
    assert!(a.ended_elsewhere.is_empty(), "no echo");
    // Told twice, or about a session it never had: nothing.
    a.engine.remote_session_closed(a.now, id, &reason);
    a.drain();
    assert!(a.take(alice).is_empty());
}

#[test]
fn a_session_across_nodes_expires_on_both_and_alice_closing_tells_bobs_node() {
    let (mut a, mut b, room, alice, (bob, bob_user)) = two_nodes();
    let open = |a: &mut Harness, b: &mut Harness| {
        let session = a
            .engine
            .prepare_session_elsewhere(
                a.now,
                SessionId::new(),
                alice,
                room,
                (bob, bob_user),
                SessionKind::Terminal,
            )
            .expect("prepared");
        a.engine.open_session_elsewhere(
            a.now,
            session.clone(),
            "tok".into(),
            None,
            P2pInfo::default(),
        );
        assert!(b.engine.remote_session_opened(
            b.now,
            session.clone(),
            "tok".into(),
            P2pInfo::default(),
            None,
        ));
        a.drain();
        b.drain();
        a.clear();
        b.clear();
        session
    };
    let first = open(&mut a, &mut b);
    let alice_user = first.initiator_user_id;
    a.engine
        .close_session(a.now, first.id, alice_user, "closed")
        .expect("a party closes");
    a.drain();
    assert_eq!(a.ended_elsewhere, vec![(first.id, "closed".to_owned())]);
    b.engine.remote_session_closed(b.now, first.id, "closed");
    b.drain();
    assert_eq!(
        b.events(bob),
        vec![ServerEvent::P2pSessionClosed {
            session_id: first.id,
            reason: "closed".into()
        }]
    );

    // Expiry: each node ends its copy by itself, and says so.
    let second = open(&mut a, &mut b);
    for (h, peer) in [(&mut a, alice), (&mut b, bob)] {
        for _ in 0..18 {
            h.advance(Duration::from_secs(10));
            h.engine.heard_from(h.now, peer);
        }
        h.drain();
        assert!(h.ended.contains(&second.id), "expired");
        assert!(
            h.ended_elsewhere
                .contains(&(second.id, "expired".to_owned()))
        );
        assert!(
            h.closed.iter().all(|(p, _, _)| *p != peer),
            "the party stayed"
        );
    }
}
