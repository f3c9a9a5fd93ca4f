//! Room subscriptions following membership changes.

use std::time::Duration;

use super::harness::{Harness, user};
use crate::protocol::{
    Member, Presence, Role, Room, RoomId, ServerEvent, SessionId, SessionKind, Timestamp,
    Visibility,
};

#[test]
fn join_subscribes_every_connection_of_the_user() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let (alice, bob) = (user("alice"), user("bob"));
    let laptop = h.connect(&alice, &[]);
    let phone = h.connect(&alice, &[]);
    let b = h.connect(&bob, &[room]);
    h.clear();
    let members = vec![Member {
        user: alice.clone(),
        role: Role::Member,
        joined_at: h.now,
        presence: Presence::Online,
    }];
    h.engine
        .join_room(h.now, laptop, room, members.clone(), Some("j".into()));
    h.drain();
    assert!(h.engine.is_subscribed(laptop, room));
    assert!(h.engine.is_subscribed(phone, room));
    let to_laptop = h.take(laptop);
    assert_eq!(to_laptop.len(), 1);
    assert_eq!(to_laptop[0].id.as_deref(), Some("j"));
    assert_eq!(
        to_laptop[0].event,
        ServerEvent::RoomJoined {
            room_id: room,
            user: alice.clone(),
            peer_id: laptop,
            members: Some(members),
        }
    );
    let without = ServerEvent::RoomJoined {
        room_id: room,
        user: alice,
        peer_id: laptop,
        members: None,
    };
    assert_eq!(h.events(b), vec![without.clone()]);
    assert_eq!(h.events(phone), vec![without]);
}

#[test]
fn an_invited_user_is_subscribed_and_announced() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let (alice, bob) = (user("alice"), user("bob"));
    let a = h.connect(&alice, &[]);
    let b = h.connect(&bob, &[room]);
    h.clear();
    h.engine.member_added(h.now, room, &alice);
    h.drain();
    assert!(h.engine.is_subscribed(a, room));
    let joined = ServerEvent::RoomJoined {
        room_id: room,
        user: alice,
        peer_id: a,
        members: None,
    };
    assert_eq!(h.events(b), vec![joined.clone()]);
    assert_eq!(h.events(a), vec![joined]);
}

#[test]
fn leaving_tells_the_room_and_all_the_users_connections_then_unsubscribes() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let (alice, bob) = (user("alice"), user("bob"));
    let laptop = h.connect(&alice, &[room]);
    let phone = h.connect(&alice, &[room]);
    let b = h.connect(&bob, &[room]);
    assert!(h.engine.typing(h.now, laptop, room, true).is_ok());
    h.drain();
    h.clear();
    h.engine
        .leave_room(h.now, room, alice.id, Some((laptop, Some("l".into()))));
    h.drain();
    let left = ServerEvent::RoomLeft {
        room_id: room,
        user_id: alice.id,
    };
    let to_laptop = h.take(laptop);
    assert_eq!(to_laptop.len(), 1);
    assert_eq!(to_laptop[0].id.as_deref(), Some("l"));
    assert_eq!(to_laptop[0].event, left);
    assert_eq!(h.events(phone), vec![left.clone()]);
    let to_bob = h.events(b);
    assert_eq!(to_bob[0], left);
    assert_eq!(
        to_bob[1],
        ServerEvent::Typing {
            room_id: room,
            user_id: alice.id,
            typing: false,
        },
        "typing cleared"
    );
    assert!(!h.engine.is_subscribed(laptop, room));
    assert!(!h.engine.is_subscribed(phone, room));
    assert!(h.engine.is_subscribed(b, room));
    h.advance(Duration::from_secs(10));
    assert!(h.events(b).is_empty());
}

#[test]
fn room_changes_reach_its_subscribers() {
    let mut h = Harness::new();
    let room_id = RoomId::new();
    let (alice, bob) = (user("alice"), user("bob"));
    let a = h.connect(&alice, &[room_id]);
    let outside = h.connect(&bob, &[]);
    h.clear();
    let room = Room {
        id: room_id,
        name: "general".into(),
        topic: Some("t".into()),
        visibility: Visibility::Private,
        created_by: alice.id,
        created_at: Timestamp::EPOCH,
        member_count: 1,
    };
    h.engine.room_updated(h.now, &room);
    h.engine.role_changed(h.now, room_id, alice.id, Role::Admin);
    h.drain();
    assert_eq!(
        h.events(a),
        vec![
            ServerEvent::RoomUpdated { room },
            ServerEvent::MemberUpdated {
                room_id,
                user_id: alice.id,
                role: Role::Admin,
            }
        ]
    );
    assert!(h.events(outside).is_empty());
}

#[test]
fn deleting_a_room_tells_it_then_unsubscribes_everyone_and_ends_its_sessions() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let a = h.connect(&user("alice"), &[room]);
    let b = h.connect(&user("bob"), &[room]);
    let prepared = h
        .engine
        .prepare_session(h.now, SessionId::new(), a, room, b, SessionKind::File);
    let Ok(session) = prepared else {
        panic!("{prepared:?}")
    };
    h.engine
        .open_session(h.now, session.clone(), "t".into(), None);
    assert!(h.engine.typing(h.now, a, room, true).is_ok());
    h.drain();
    h.clear();
    h.engine.room_deleted(h.now, room);
    h.drain();
    let events = h.events(b);
    assert_eq!(events[0], ServerEvent::RoomDeleted { room_id: room });
    assert!(events.contains(&ServerEvent::P2pSessionClosed {
        session_id: session.id,
        reason: "room_deleted".into(),
    }));
    assert_eq!(h.ended, vec![session.id]);
    assert!(!h.engine.is_subscribed(a, room) && !h.engine.is_subscribed(b, room));
    h.advance(Duration::from_secs(10));
    assert!(h.events(b).is_empty(), "typing timer went with the room");
}

#[test]
fn rooms_nobody_listens_to_are_forgotten() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let alice = user("alice");
    let a = h.connect(&alice, &[room]);
    let b = h.connect(&user("bob"), &[room]);
    assert!(h.engine.typing(h.now, b, room, true).is_ok());
    h.engine
        .message_created(h.now, super::harness::message(room, 1, &alice), None);
    h.engine.message_created(
        h.now,
        super::harness::message(RoomId::new(), 1, &alice),
        None,
    );
    h.engine.disconnect(h.now, a);
    h.engine.leave_room(
        h.now,
        room,
        h.engine.peer(b).map_or(alice.id, |p| p.user.id),
        None,
    );
    h.drain();
    assert!(h.engine.rooms.is_empty(), "{:?}", h.engine.rooms);
    assert_eq!(h.engine.timers.len(), 1, "only bob's heartbeat");
}
