//! Micro-benchmarks of mesh's hot paths:
//!
//! - `frame/decode`: `parse_client_frame` of a `chat.message.send` (100-byte content)
//! - `frame/encode`: `OutgoingFrame::to_json` of the `chat.message.created` it becomes
//! - `engine/fanout_1000`: `Engine::message_created` + draining `poll_output`
//!   with 1,000 subscribed peers, and the hub's part of a delivery (encode
//!   once, one shared `Bytes` per recipient)
//! - `auth/verify_token`: `JwtAuthenticator::authenticate` of an access token,
//!   the signature checked every time (token cache off); `auth/verify_token_cached`:
//!   the same token again with the default cache (what a reconnect costs)
//! - `store/append_*`: `append_message` on `MemoryStore` and on `SledStore`
//!   (the latter includes the flush that makes it durable)
//!
//! `cargo bench -p mesh-benches` runs them; `cargo bench -p mesh-benches --
//! --quick` is a shorter run.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use mesh_core::auth::{Authenticator as _, JwtAuthenticator, KeyRing};
use mesh_core::engine::{Engine, EngineConfig, Output, PeerInfo};
use mesh_core::protocol::{
    DeviceId, Message, MessageId, OutgoingFrame, PeerId, RoomId, ServerEvent, Timestamp, User,
    UserId, parse_client_frame,
};
use mesh_core::storage::memory::MemoryStore;
use mesh_core::storage::sled::SledStore;
use mesh_core::storage::{NewMessage, Store};

const CONTENT: &str = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqr";

fn user(name: &str) -> User {
    User {
        id: UserId::new(),
        username: name.to_owned(),
        display_name: name.to_owned(),
        created_at: Timestamp::now(),
    }
}

fn message(room: RoomId, seq: u64, sender: &User) -> Message {
    Message {
        id: MessageId::new(),
        room_id: room,
        seq,
        sender: sender.clone(),
        content: CONTENT.to_owned(),
        created_at: Timestamp::now(),
        client_id: None,
    }
}

fn frames(c: &mut Criterion) {
    assert_eq!(CONTENT.len(), 100);
    let room = RoomId::new();
    let text = serde_json::json!({
        "type": "chat.message.send",
        "id": "42",
        "payload": {"room_id": room, "content": CONTENT, "client_id": "c-42"},
    })
    .to_string();
    let mut g = c.benchmark_group("frame");
    g.bench_function("decode", |b| {
        b.iter(|| parse_client_frame(black_box(&text)).is_ok())
    });
    let frame = OutgoingFrame::reply(
        Some("42".into()),
        ServerEvent::MessageCreated {
            message: message(room, 1, &user("alice")),
        },
    );
    g.bench_function("encode", |b| b.iter(|| black_box(&frame).to_json()));
    g.finish();
}

fn fanout(c: &mut Criterion) {
    const PEERS: usize = 1000;
    let now = Timestamp::now();
    let mut engine = Engine::new(EngineConfig::default());
    let room = RoomId::new();
    let users: Vec<User> = (0..100).map(|i| user(&format!("u{i}"))).collect();
    for i in 0..PEERS {
        let info = PeerInfo {
            peer_id: PeerId::new(),
            user: users[i % users.len()].clone(),
            device_id: DeviceId::new(),
            p2p: None,
        };
        engine.connect(now, info, vec![room], HashMap::new(), None);
    }
    while engine.poll_output().is_some() {}
    let sender = users[0].clone();
    let mut seq = 0u64;
    let mut g = c.benchmark_group("engine");
    g.throughput(criterion::Throughput::Elements(PEERS as u64));
    g.bench_function("fanout_1000", |b| {
        b.iter(|| {
            seq += 1;
            engine.message_created(now, message(room, seq, &sender), None);
            let mut recipients = 0;
            while let Some(out) = engine.poll_output() {
                if let Output::Send { to, .. } = out {
                    recipients += to.len();
                }
            }
            recipients
        })
    });
    // What the hub adds: encode once, one shared buffer per recipient.
    g.bench_function("fanout_1000_encoded", |b| {
        b.iter(|| {
            seq += 1;
            engine.message_created(now, message(room, seq, &sender), None);
            let mut queued: Vec<Bytes> = Vec::with_capacity(PEERS);
            while let Some(out) = engine.poll_output() {
                if let Output::Send { to, frame } = out {
                    let text = Bytes::from(frame.to_json());
                    queued.extend(to.iter().map(|_| text.clone()));
                }
            }
            queued.len()
        })
    });
    g.finish();
}

fn tokens(c: &mut Criterion) {
    let keys = Arc::new(KeyRing::generate().expect("keys"));
    let uncached = JwtAuthenticator::new(keys.clone()).with_token_cache(0);
    let cached = JwtAuthenticator::new(keys);
    let token = cached
        .issue_access_token(UserId::new(), DeviceId::new(), Timestamp::now())
        .expect("token")
        .token;
    for (name, auth) in [
        ("auth/verify_token", &uncached),
        ("auth/verify_token_cached", &cached),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                auth.authenticate(black_box(&token), Timestamp::now())
                    .is_ok()
            })
        });
    }
}

fn stores(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let room = RoomId::new();
    let sender = user("writer");
    let new = || NewMessage {
        id: MessageId::new(),
        room_id: room,
        sender: sender.clone(),
        content: CONTENT.to_owned(),
        created_at: Timestamp::now(),
        client_id: None,
    };
    let mut g = c.benchmark_group("store");
    let memory = MemoryStore::new();
    g.bench_function("append_memory", |b| {
        b.iter(|| rt.block_on(memory.append_message(new())).is_ok())
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let sled = SledStore::open(dir.path().join("db")).expect("sled store");
    g.sample_size(20);
    g.bench_function("append_sled_durable", |b| {
        b.iter(|| rt.block_on(sled.append_message(new())).is_ok())
    });
    g.finish();
}

criterion_group!(benches, frames, fanout, tokens, stores);
criterion_main!(benches);
