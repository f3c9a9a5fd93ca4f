//! The engine is a pure function of its inputs: the same script yields the
//! same outputs, in the same order, every time.

use std::collections::HashMap;
use std::time::Duration;

use uuid::Uuid;

use super::harness::message;
use crate::engine::{Engine, EngineConfig, Output, PeerInfo};
use crate::protocol::{DeviceId, MessageId, PeerId, Presence, RoomId, Timestamp, User, UserId};

fn fixed_user(n: u128) -> User {
    User {
        id: UserId::from(Uuid::from_u128(n)),
        username: format!("user{n}"),
        display_name: format!("User {n}"),
        created_at: Timestamp::EPOCH,
    }
}

fn script() -> Vec<Output> {
    let mut engine = Engine::new(EngineConfig::default());
    let mut now = Timestamp::from_unix_millis(1_000_000);
    let room = RoomId::from(Uuid::from_u128(7));
    let mut outputs = Vec::new();
    let peers: Vec<PeerId> = (1..=20u128)
        .map(|n| {
            let peer = PeerId::from(Uuid::from_u128(1000 + n));
            engine.connect(
                now,
                PeerInfo {
                    peer_id: peer,
                    user: fixed_user(n % 7),
                    device_id: DeviceId::from(Uuid::from_u128(2000 + n)),
                    p2p: None,
                },
                vec![room],
                HashMap::new(),
                None,
            );
            peer
        })
        .collect();
    let sender = fixed_user(1);
    for seq in [1, 3, 2, 5] {
        let mut m = message(room, seq, &sender);
        m.id = MessageId::from(Uuid::from_u128(3000 + u128::from(seq)));
        engine.message_created(now, m, Some((peers[1], None)));
    }
    let _ = engine.typing(now, peers[3], room, true);
    engine.set_presence(now, peers[4], Presence::Busy, None, None);
    for p in &peers[..10] {
        engine.heard_from(now.saturating_add(Duration::from_secs(30)), *p);
    }
    for _ in 0..100 {
        let Some(at) = engine.poll_timeout() else {
            break;
        };
        now = at;
        engine.handle_timeout(now);
    }
    while let Some(o) = engine.poll_output() {
        outputs.push(o);
    }
    outputs
}

#[test]
fn the_same_inputs_give_the_same_outputs() {
    let first = script();
    assert!(
        first.len() > 50,
        "the script does something: {}",
        first.len()
    );
    for _ in 0..5 {
        assert_eq!(script(), first);
    }
}
