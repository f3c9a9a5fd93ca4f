//! Fan-out, per-room ordering and catch-up with `since`.

use std::collections::HashMap;
use std::time::Duration;

use super::harness::{Harness, Link, message, user};
use crate::engine::EngineConfig;
use crate::protocol::{DeviceId, PeerId, RoomId, ServerEvent};
use crate::transport::CloseCode;

#[test]
fn fan_out_to_1000_peers_is_one_send_plus_the_origins_reply() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let peers: Vec<PeerId> = (0..1000)
        .map(|i| h.connect(&user(&format!("u{i}")), &[room]))
        .collect();
    h.clear();
    let sender = user("u0");
    h.engine.message_created(
        h.now,
        message(room, 1, &sender),
        Some((peers[0], Some("m1".into()))),
    );
    h.drain();
    assert_eq!(h.sends.len(), 2, "one broadcast, one reply");
    let (to, frame) = &h.sends[1];
    assert_eq!(to.len(), 999);
    assert!(!to.contains(&peers[0]));
    assert_eq!(frame.id, None);
    let (to, frame) = &h.sends[0];
    assert_eq!(to, &vec![peers[0]]);
    assert_eq!(frame.id.as_deref(), Some("m1"));
    for p in &peers {
        assert_eq!(h.seqs(*p), vec![1], "exactly once each");
    }
}

#[test]
fn origin_outside_the_room_still_gets_its_answer() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let alice = user("alice");
    let a = h.connect(&alice, &[]);
    let b = h.connect(&user("bob"), &[room]);
    h.clear();
    h.engine
        .message_created(h.now, message(room, 1, &alice), Some((a, Some("x".into()))));
    h.drain();
    let to_a = h.take(a);
    assert_eq!(to_a.len(), 1);
    assert_eq!(to_a[0].id.as_deref(), Some("x"));
    assert_eq!(h.seqs(b), vec![1]);
    // Also the sender's other devices get the message, without the id.
}

#[test]
fn senders_other_devices_get_the_broadcast() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let alice = user("alice");
    let laptop = h.connect(&alice, &[room]);
    let phone = h.connect(&alice, &[room]);
    h.clear();
    h.engine.message_created(
        h.now,
        message(room, 7, &alice),
        Some((laptop, Some("r".into()))),
    );
    h.drain();
    let to_phone = h.take(phone);
    assert_eq!(to_phone.len(), 1);
    assert_eq!(to_phone[0].id, None);
    assert_eq!(h.take(laptop).len(), 1);
}

#[test]
fn seq_3_before_2_is_delivered_as_2_then_3() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let alice = user("alice");
    let a = h.connect(&alice, &[room]);
    let b = h.connect(&user("bob"), &[room]);
    h.clear();
    h.engine
        .message_created(h.now, message(room, 1, &alice), None);
    h.engine.message_created(
        h.now,
        message(room, 3, &alice),
        Some((a, Some("r3".into()))),
    );
    h.drain();
    assert_eq!(h.seqs(b), vec![1]);
    assert_eq!(h.seqs(a), vec![1], "the origin's answer waits in order too");
    h.advance(Duration::from_millis(500));
    h.engine
        .message_created(h.now, message(room, 2, &alice), None);
    h.drain();
    assert_eq!(h.seqs(b), vec![2, 3]);
    let to_a = h.take(a);
    assert_eq!(to_a.len(), 2);
    assert_eq!(to_a[1].id.as_deref(), Some("r3"));
    assert!(
        h.engine
            .poll_timeout()
            .is_some_and(|t| t > h.now.saturating_add(Duration::from_secs(2))),
        "no reorder timer left armed"
    );
}

#[test]
fn a_missing_seq_is_skipped_after_the_window_and_delivered_late_if_it_comes() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let alice = user("alice");
    let b = h.connect(&user("bob"), &[room]);
    h.clear();
    for seq in [10, 12] {
        h.engine
            .message_created(h.now, message(room, seq, &alice), None);
    }
    h.advance(Duration::from_millis(300));
    h.engine
        .message_created(h.now, message(room, 14, &alice), None);
    h.engine
        .message_created(h.now, message(room, 13, &alice), None);
    h.drain();
    assert_eq!(h.seqs(b), vec![10]);
    h.advance(Duration::from_millis(1_699));
    assert_eq!(h.seqs(b), Vec::<u64>::new(), "window not over");
    h.advance(Duration::from_millis(1));
    // 12's window ended; 13 and 14 follow on without a gap.
    assert_eq!(h.seqs(b), vec![12, 13, 14]);
    h.engine
        .message_created(h.now, message(room, 11, &alice), None);
    h.drain();
    assert_eq!(h.seqs(b), vec![11], "late: out at once");
    h.engine
        .message_created(h.now, message(room, 15, &alice), None);
    h.drain();
    assert_eq!(h.seqs(b), vec![15]);
}

#[test]
fn a_second_copy_of_a_seq_is_dropped_but_its_origin_still_gets_its_answer() {
    // Copies come from the store filling a gap and from other nodes: each
    // seq reaches the room once.
    let mut h = Harness::new();
    let room = RoomId::new();
    let alice = user("alice");
    let a = h.connect(&alice, &[room]);
    let b = h.connect(&user("bob"), &[room]);
    h.clear();
    for seq in [1, 2, 2, 1, 3] {
        h.engine
            .message_created(h.now, message(room, seq, &alice), None);
    }
    h.drain();
    assert_eq!(h.seqs(b), vec![1, 2, 3]);
    h.clear();
    // 5 comes before 4, twice: once filled from the store, once as the
    // sender's own (with its request id).
    h.engine
        .message_created(h.now, message(room, 5, &alice), None);
    h.engine.message_created(
        h.now,
        message(room, 5, &alice),
        Some((a, Some("r5".into()))),
    );
    h.engine
        .message_created(h.now, message(room, 4, &alice), None);
    h.drain();
    assert_eq!(h.seqs(b), vec![4, 5]);
    let to_a = h.take(a);
    assert_eq!(to_a.len(), 2, "alice gets 4, and 5 once: as her answer");
    assert_eq!(to_a[1].id.as_deref(), Some("r5"));
    // Delivered already, then the sender's own copy comes: it answers the
    // request only.
    h.engine
        .message_created(h.now, message(room, 6, &alice), None);
    h.engine.message_created(
        h.now,
        message(room, 6, &alice),
        Some((a, Some("r6".into()))),
    );
    h.drain();
    assert_eq!(h.seqs(b), vec![6]);
    let to_a = h.take(a);
    assert_eq!(to_a.len(), 2);
    assert_eq!(to_a[1].id.as_deref(), Some("r6"));
}

#[test]
fn a_later_message_released_by_timeout_takes_earlier_held_ones_along() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let alice = user("alice");
    let b = h.connect(&user("bob"), &[room]);
    h.clear();
    h.engine
        .message_created(h.now, message(room, 1, &alice), None);
    h.engine
        .message_created(h.now, message(room, 5, &alice), None);
    h.advance(Duration::from_secs(1));
    h.engine
        .message_created(h.now, message(room, 4, &alice), None);
    h.advance(Duration::from_secs(1));
    // 5 is due; 4 is not yet, but must not come after 5.
    assert_eq!(h.seqs(b), vec![1, 4, 5]);
    h.advance(Duration::from_secs(5));
    assert!(h.seqs(b).is_empty());
}

#[test]
fn since_backfill_then_held_live_messages_in_order_without_duplicates() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let (alice, bob) = (user("alice"), user("bob"));
    let b = h.connect(&bob, &[room]);
    let a = h.connect_with(&alice, DeviceId::new(), &[room], HashMap::from([(room, 5)]));
    h.clear();
    // 6 and 7 are in the store; 8 and 9 are stored while Alice's history
    // query runs, so they arrive live and also in the backfill (8) or not (9).
    for seq in [8, 9] {
        h.engine
            .message_created(h.now, message(room, seq, &bob), Some((b, None)));
    }
    h.drain();
    assert_eq!(h.seqs(b), vec![8, 9]);
    assert!(h.seqs(a).is_empty(), "held while catching up");
    let page: Vec<_> = [6, 7, 8].iter().map(|s| message(room, *s, &bob)).collect();
    h.engine.backfill(h.now, a, room, page, false);
    h.drain();
    assert_eq!(h.seqs(a), vec![6, 7, 8]);
    h.engine
        .message_created(h.now, message(room, 10, &bob), None);
    h.engine
        .backfill(h.now, a, room, vec![message(room, 8, &bob)], true);
    h.drain();
    assert_eq!(h.seqs(a), vec![9, 10], "the held ones, newer than 8, once");
    h.engine
        .message_created(h.now, message(room, 11, &bob), None);
    h.drain();
    assert_eq!(h.seqs(a), vec![11], "live now");
    assert_eq!(h.seqs(b), vec![10, 11]);
}

#[test]
fn a_catching_up_origin_gets_its_answer_with_the_backfill() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let alice = user("alice");
    let a = h.connect_with(&alice, DeviceId::new(), &[room], HashMap::from([(room, 0)]));
    h.engine
        .message_created(h.now, message(room, 2, &alice), Some((a, Some("s".into()))));
    h.drain();
    assert!(h.take(a).is_empty());
    let page = vec![message(room, 1, &alice), message(room, 2, &alice)];
    h.engine.backfill(h.now, a, room, page, true);
    h.drain();
    let frames = h.take(a);
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[1].id.as_deref(), Some("s"), "the one answer, once");
}

#[test]
fn backlog_overflow_closes_with_1013() {
    let mut h = Harness::with_config(EngineConfig {
        max_backlog: 3,
        ..EngineConfig::default()
    });
    let room = RoomId::new();
    let bob = user("bob");
    let b = h.connect(&bob, &[room]);
    let a = h.connect_with(
        &user("alice"),
        DeviceId::new(),
        &[room],
        HashMap::from([(room, 0)]),
    );
    h.clear();
    for seq in 1..=3 {
        h.engine
            .message_created(h.now, message(room, seq, &bob), None);
    }
    h.drain();
    assert!(h.closed.is_empty(), "3 held is the limit, not past it");
    h.engine
        .message_created(h.now, message(room, 4, &bob), None);
    h.drain();
    assert_eq!(h.closed.len(), 1);
    let (peer, code, _) = &h.closed[0];
    assert_eq!((*peer, code.code()), (a, 1013));
    assert_eq!(*code, CloseCode::TryAgainLater);
    assert!(h.engine.peer(a).is_none());
    assert!(!h.engine.is_subscribed(a, room));
    assert_eq!(h.seqs(b), vec![1, 2, 3, 4]);
    assert!(h.seqs(a).is_empty());
}

#[test]
fn rooms_without_since_are_live_at_once() {
    let mut h = Harness::new();
    let (r1, r2) = (RoomId::new(), RoomId::new());
    let bob = user("bob");
    let a = h.connect_with(
        &user("alice"),
        DeviceId::new(),
        &[r1, r2],
        HashMap::from([(r1, 3)]),
    );
    h.engine.message_created(h.now, message(r2, 1, &bob), None);
    h.engine.message_created(h.now, message(r1, 4, &bob), None);
    h.drain();
    assert_eq!(h.seqs(a), vec![1]);
    h.engine.backfill(h.now, a, r1, vec![], true);
    h.drain();
    assert_eq!(h.seqs(a), vec![4]);
}

#[test]
fn a_slow_lossy_link_sees_later_and_fewer_frames() {
    let mut h = Harness::new();
    let room = RoomId::new();
    let bob = user("bob");
    let a = h.connect(&user("alice"), &[room]);
    h.set_link(
        a,
        Link {
            latency: Duration::from_millis(80),
            drop_every: 2,
        },
    );
    for seq in 1..=4 {
        h.engine
            .message_created(h.now, message(room, seq, &bob), None);
    }
    h.drain();
    assert!(h.seqs(a).is_empty(), "still in flight");
    h.advance(Duration::from_millis(80));
    // Every second frame is lost: the client sees holes it fills from
    // history, which is why seq has no gaps.
    assert_eq!(h.seqs(a), vec![1, 3]);
    let _ = ServerEvent::RoomDeleted { room_id: room };
}
