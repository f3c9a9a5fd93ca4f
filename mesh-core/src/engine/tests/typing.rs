//! Typing indicators.

use std::time::Duration;

use super::harness::{Harness, message, user};
use crate::error::Error;
use crate::protocol::{RoomId, ServerEvent};

#[test]
fn typing_expires_by_itself_and_is_not_echoed_to_the_sender() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let (alice, bob) = (user("alice"), user("bob"));
    let laptop = h.connect(&alice, &[room]);
    let phone = h.connect(&alice, &[room]);
    let b = h.connect(&bob, &[room]);
    h.clear();

    assert!(h.engine.typing(h.now, laptop, room, true).is_ok());
    h.drain();
    let on = ServerEvent::Typing {
        room_id: room,
        user_id: alice.id,
        typing: true,
    };
    assert_eq!(h.events(b), vec![on]);
    assert!(h.events(laptop).is_empty(), "not echoed to the sender");
    assert!(
        h.events(phone).is_empty(),
        "nor to the sender's other devices"
    );

    h.advance(Duration::from_millis(5_999));
    let early = h.events(b);
    assert!(early.is_empty(), "{early:?}");
    h.advance(Duration::from_millis(1));
    assert_eq!(
        h.events(b),
        vec![ServerEvent::Typing {
            room_id: room,
            user_id: alice.id,
            typing: false,
        }]
    );
    assert!(h.events(laptop).is_empty() && h.events(phone).is_empty());
    // (Stay under the 45 s heartbeat time-out: nobody pings here.)
    h.advance(Duration::from_secs(30));
    assert!(h.events(b).is_empty(), "ends once");
}

#[test]
fn renewal_pushes_the_expiry_out() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let a = h.connect(&user("alice"), &[room]);
    let b = h.connect(&user("bob"), &[room]);
    h.clear();
    assert!(h.engine.typing(h.now, a, room, true).is_ok());
    h.advance(Duration::from_secs(4));
    assert!(h.engine.typing(h.now, a, room, true).is_ok());
    h.drain();
    assert_eq!(h.events(b).len(), 2, "each renewal is relayed");
    h.advance(Duration::from_secs(5));
    assert!(h.events(b).is_empty(), "9 s: renewed at 4 s, due at 10 s");
    h.advance(Duration::from_secs(1));
    assert_eq!(h.events(b).len(), 1);
}

#[test]
fn explicit_stop_or_a_message_ends_typing_once() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let alice = user("alice");
    let a = h.connect(&alice, &[room]);
    let b = h.connect(&user("bob"), &[room]);
    h.clear();
    let off = ServerEvent::Typing {
        room_id: room,
        user_id: alice.id,
        typing: false,
    };

    assert!(h.engine.typing(h.now, a, room, true).is_ok());
    assert!(h.engine.typing(h.now, a, room, false).is_ok());
    assert!(h.engine.typing(h.now, a, room, false).is_ok());
    h.drain();
    let events = h.events(b);
    assert_eq!(events.len(), 2, "on, then one off: {events:?}");
    assert_eq!(events[1], off);

    assert!(h.engine.typing(h.now, a, room, true).is_ok());
    h.engine
        .message_created(h.now, message(room, 1, &alice), Some((a, None)));
    h.drain();
    let events = h.events(b);
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[1], off);
    assert!(matches!(events[2], ServerEvent::MessageCreated { .. }));
    h.advance(Duration::from_secs(10));
    assert!(h.events(b).is_empty(), "the timer went with it");
    assert!(h.engine.poll_timeout().is_some_and(|t| t > h.now));
}

#[test]
fn typing_outside_ones_rooms_is_forbidden() {
    let mut h = Harness::new();
    let a = h.connect(&user("alice"), &[RoomId::new()]);
    let result = h.engine.typing(h.now, a, RoomId::new(), true);
    assert!(matches!(result, Err(Error::Forbidden(_))), "{result:?}");
}

#[test]
fn last_connection_leaving_ends_typing() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let alice = user("alice");
    let a = h.connect(&alice, &[room]);
    let b = h.connect(&user("bob"), &[room]);
    assert!(h.engine.typing(h.now, a, room, true).is_ok());
    h.drain();
    h.clear();
    h.engine.disconnect(h.now, a);
    h.drain();
    let events = h.events(b);
    assert_eq!(
        events.first(),
        Some(&ServerEvent::Typing {
            room_id: room,
            user_id: alice.id,
            typing: false,
        })
    );
    h.advance(Duration::from_secs(10));
    assert!(h.events(b).is_empty());
}
