//! Connections, heartbeats and presence aggregated over devices.

use std::time::Duration;

use super::harness::{Harness, user};
use crate::protocol::{Presence, RoomId, ServerEvent, UserId};
use crate::transport::CloseCode;

fn presence_updates(events: &[ServerEvent]) -> Vec<(UserId, Presence)> {
    events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::PresenceUpdate {
                user_id, status, ..
            } => Some((*user_id, *status)),
            _ => None,
        })
        .collect()
}

#[test]
fn welcome_answers_hello_with_request_id_and_heartbeat() {
    let mut h = Harness::new();
    let alice = user("alice");
    let peer = crate::protocol::PeerId::new();
    h.engine.connect(
        h.now,
        crate::engine::PeerInfo {
            peer_id: peer,
            user: alice.clone(),
            device_id: crate::protocol::DeviceId::new(),
            p2p: None,
        },
        vec![],
        Default::default(),
        Some("r1".into()),
    );
    h.drain();
    let frames = h.take(peer);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].id.as_deref(), Some("r1"));
    assert_eq!(
        frames[0].event,
        ServerEvent::Welcome {
            peer_id: peer,
            user: alice,
            server_time: h.now,
            heartbeat_ms: 15_000,
            p2p: None,
        }
    );
}

#[test]
fn presence_is_aggregated_over_two_devices() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let (alice, bob) = (user("alice"), user("bob"));
    let b = h.connect(&bob, &[room]);
    let laptop = h.connect(&alice, &[room]);
    assert_eq!(
        presence_updates(&h.events(b)),
        vec![(alice.id, Presence::Online)]
    );
    assert_eq!(h.engine.presence_of(alice.id), Presence::Online);

    let phone = h.connect(&alice, &[room]);
    assert!(h.events(b).is_empty(), "second device is not news");
    assert!(h.events(laptop).is_empty());

    h.engine.disconnect(h.now, phone);
    h.drain();
    assert!(h.events(b).is_empty(), "still online on the laptop");
    assert_eq!(h.engine.presence_of(alice.id), Presence::Online);

    h.engine.disconnect(h.now, laptop);
    h.drain();
    assert_eq!(
        presence_updates(&h.events(b)),
        vec![(alice.id, Presence::Offline)]
    );
    assert_eq!(h.engine.presence_of(alice.id), Presence::Offline);
}

#[test]
fn a_first_connection_is_not_told_its_own_presence() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let alice = user("alice");
    let first = h.connect(&alice, &[room]);
    // The first connection has nobody to tell, not even itself.
    assert!(h.sends.iter().all(|(to, _)| to == &vec![first]));
    assert!(h.events(first).is_empty());
}

#[test]
fn silent_peer_times_out_while_chatty_peer_stays() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let (alice, bob) = (user("alice"), user("bob"));
    let silent = h.connect(&alice, &[room]);
    let chatty = h.connect(&bob, &[room]);
    h.clear();
    for _ in 0..4 {
        h.advance(Duration::from_secs(10));
        h.engine.heard_from(h.now, chatty);
    }
    // 40 s in: nobody timed out yet.
    assert!(h.closed.is_empty());
    h.advance(Duration::from_millis(4_999));
    assert!(h.closed.is_empty(), "44.999 s is not 45 s");
    h.advance(Duration::from_millis(1));
    assert_eq!(
        h.closed,
        vec![(silent, CloseCode::Policy, "heartbeat timeout".to_owned())]
    );
    assert!(h.engine.peer(silent).is_none());
    assert!(h.engine.peer(chatty).is_some());
    assert_eq!(
        presence_updates(&h.events(chatty)),
        vec![(alice.id, Presence::Offline)]
    );
    assert!(h.take(silent).is_empty(), "a closed peer is sent nothing");
    // The chatty one keeps living as long as it talks.
    for _ in 0..10 {
        h.advance(Duration::from_secs(30));
        h.engine.ping(h.now, chatty, None);
    }
    assert_eq!(h.closed.len(), 1);
    assert_eq!(h.engine.presence_of(bob.id), Presence::Online);
}

#[test]
fn ping_answers_pong_with_server_time() {
    let mut h = Harness::new();
    let p = h.connect(&user("alice"), &[]);
    h.engine.ping(h.now, p, Some("p1".into()));
    h.drain();
    let frames = h.take(p);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].id.as_deref(), Some("p1"));
    assert_eq!(frames[0].event, ServerEvent::Pong { server_time: h.now });
}

#[test]
fn chosen_status_is_shared_by_devices_and_reset_when_fully_offline() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let (alice, bob) = (user("alice"), user("bob"));
    let b = h.connect(&bob, &[room]);
    let laptop = h.connect(&alice, &[room]);
    let phone = h.connect(&alice, &[room]);
    h.clear();

    h.engine.set_presence(
        h.now,
        laptop,
        Presence::Away,
        Some("lunch".into()),
        Some("s1".into()),
    );
    h.drain();
    let to_laptop = h.take(laptop);
    assert_eq!(to_laptop.len(), 1);
    assert_eq!(to_laptop[0].id.as_deref(), Some("s1"));
    let expected = ServerEvent::PresenceUpdate {
        user_id: alice.id,
        status: Presence::Away,
        message: Some("lunch".into()),
    };
    assert_eq!(to_laptop[0].event, expected);
    let to_phone = h.take(phone);
    assert_eq!(to_phone.len(), 1);
    assert_eq!(to_phone[0].id, None);
    assert_eq!(h.events(b), vec![expected]);

    h.engine.disconnect(h.now, laptop);
    h.drain();
    assert_eq!(
        h.engine.presence_of(alice.id),
        Presence::Away,
        "phone keeps it"
    );
    h.engine.disconnect(h.now, phone);
    h.drain();
    assert_eq!(h.engine.presence_of(alice.id), Presence::Offline);
    h.clear();
    h.connect(&alice, &[room]);
    assert_eq!(
        presence_updates(&h.events(b)),
        vec![(alice.id, Presence::Online)],
        "a new login starts online"
    );
}

#[test]
fn invisible_users_look_offline_and_leave_silently() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let (alice, bob) = (user("alice"), user("bob"));
    let b = h.connect(&bob, &[room]);
    let a = h.connect(&alice, &[room]);
    h.clear();
    h.engine
        .set_presence(h.now, a, Presence::Offline, Some("hidden".into()), None);
    h.drain();
    assert_eq!(
        h.events(b),
        vec![ServerEvent::PresenceUpdate {
            user_id: alice.id,
            status: Presence::Offline,
            message: None,
        }],
        "others see offline, without the status message"
    );
    assert_eq!(h.engine.presence_of(alice.id), Presence::Offline);
    assert!(h.engine.peer(a).is_some(), "still connected");
    h.engine.disconnect(h.now, a);
    h.drain();
    assert!(h.events(b).is_empty(), "already offline to others");
}

#[test]
fn presence_reaches_only_those_sharing_a_room() {
    let mut h = Harness::new();
    let (shared, other) = (RoomId::new(), RoomId::new());
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let b = h.connect(&bob, &[shared]);
    let c = h.connect(&carol, &[other]);
    h.connect(&alice, &[shared]);
    assert_eq!(presence_updates(&h.events(b)).len(), 1);
    assert!(h.events(c).is_empty());
}

#[test]
fn revoking_a_device_closes_its_connections_only() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let alice = user("alice");
    let device = crate::protocol::DeviceId::new();
    let a1 = h.connect_with(&alice, device, &[room], Default::default());
    let a2 = h.connect_with(&alice, device, &[room], Default::default());
    let other = h.connect(&alice, &[room]);
    h.engine.revoke_device(h.now, device);
    h.drain();
    let mut closed = h.closed.clone();
    closed.sort_by_key(|(p, _, _)| *p);
    let mut expected = vec![
        (a1, CloseCode::Policy, "device revoked".to_owned()),
        (a2, CloseCode::Policy, "device revoked".to_owned()),
    ];
    expected.sort_by_key(|(p, _, _)| *p);
    assert_eq!(closed, expected);
    assert!(h.engine.peer(a1).is_none() && h.engine.peer(a2).is_none());
    assert!(h.engine.peer(other).is_some());
    assert_eq!(h.engine.presence_of(alice.id), Presence::Online);
}

#[test]
fn timers_stay_one_per_peer_however_chatty() {
    let mut h = Harness::new();
    // Rooms of ten: the point is the timer set, not presence fan-out.
    let rooms: Vec<RoomId> = (0..1_000).map(|_| RoomId::new()).collect();
    let peers: Vec<_> = (0..10_000)
        .map(|i| h.connect(&user(&format!("u{i}")), &[rooms[i % rooms.len()]]))
        .collect();
    for _ in 0..3 {
        h.advance(Duration::from_secs(1));
        for p in &peers {
            h.engine.heard_from(h.now, *p);
        }
    }
    assert_eq!(h.engine.timers.len(), peers.len());
    assert_eq!(
        h.engine.poll_timeout(),
        Some(h.now.saturating_add(Duration::from_secs(45)))
    );
}

#[test]
fn other_nodes_hear_of_every_connection_and_room_change() {
    // A lone node builds nothing for other nodes.
    let mut lone = Harness::new();
    lone.connect(&user("solo"), &[RoomId::new()]);
    assert!(lone.node_presence.is_empty());
    let mut h = Harness::new();
    h.engine.join_cluster();
    let alice = user("alice");
    let (room, other) = (RoomId::new(), RoomId::new());
    let last = |h: &mut Harness| h.node_presence.pop().expect("told");
    let first = h.connect(&alice, &[room]);
    let told = last(&mut h);
    assert_eq!(
        (told.peers.clone(), told.rooms.clone()),
        (vec![first], vec![room])
    );
    // A second connection: its peer is told too (signals are addressed to it).
    let second = h.connect(&alice, &[room]);
    let mut peers = vec![first, second];
    peers.sort();
    assert_eq!(last(&mut h).peers, peers);
    // Joining and leaving a room change what the other nodes know.
    h.engine.member_added(h.now, other, &alice);
    h.drain();
    assert_eq!(last(&mut h).rooms.len(), 2);
    h.engine.leave_room(h.now, other, alice.id, None);
    h.drain();
    assert_eq!(last(&mut h).rooms, vec![room]);
    // A connection going that is not the last.
    h.engine.disconnect(h.now, second);
    h.drain();
    let told = last(&mut h);
    assert_eq!((told.peers, told.status), (vec![first], Presence::Online));
    h.engine.disconnect(h.now, first);
    h.drain();
    assert_eq!(last(&mut h).status, Presence::Offline);
}

#[test]
fn a_room_is_live_from_its_first_subscriber_to_its_last() {
    let mut h = Harness::new();
    let (alice, bob) = (user("alice"), user("bob"));
    let room = RoomId::new();
    let a = h.connect(&alice, &[room]);
    assert_eq!(h.interest, vec![(room, true)]);
    let b = h.connect(&bob, &[room]);
    h.engine.leave_room(h.now, room, alice.id, None);
    h.drain();
    assert_eq!(
        h.interest.len(),
        1,
        "a second subscriber, one leaving: still live"
    );
    h.engine.disconnect(h.now, b);
    h.drain();
    assert_eq!(h.interest, vec![(room, true), (room, false)]);
    // Alice joins again: live again; a deleted room is not.
    h.engine.member_added(h.now, room, &alice);
    h.drain();
    h.engine.room_deleted(h.now, room);
    h.drain();
    assert_eq!(&h.interest[2..], &[(room, true), (room, false)]);
    let _ = a;
}
