//! WebSocket text frames from a server, as the client SDK decodes them
//! (`client::ClientState::frame_received`).
//!
//! The input is a sequence of frames, one per line, fed to a client that
//! has connected, sent its hello (request id `h1`), asked to join a room and
//! queued a message. Beyond "no panic": each line that decodes as an
//! `OutgoingFrame` encodes back to the same frame, and every frame the
//! client sends in answer is one the server's own decoder accepts.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mesh_core::client::{ClientConfig, ClientState};
use mesh_core::protocol::parse_client_frame;
use mesh_core::protocol::{OutgoingFrame, RoomId, Timestamp};

/// The room the client joins and writes to; the corpus uses this id.
const ROOM: &str = "5a1f2d3c-0000-4000-8000-00000000f00d";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut now = Timestamp::from_unix_millis(1_790_000_000_000);
    let mut client = ClientState::new(ClientConfig::default(), now, 7);
    let room: RoomId = ROOM.parse().expect("room id");
    assert!(client.poll_connect(now));
    client.connected(now);
    client.join_room(room);
    client.send_message(room, "hello", now);
    drain(&mut client);

    for line in text.split('\n') {
        if let Ok(frame) = serde_json::from_str::<OutgoingFrame>(line) {
            let again: OutgoingFrame =
                serde_json::from_str(&frame.to_json()).expect("a decoded frame re-decodes");
            assert_eq!(again, frame, "{line}");
        }
        client.frame_received(line, now);
        drain(&mut client);
        now = now.saturating_add(Duration::from_millis(700));
        client.handle_timeout(now);
        drain(&mut client);
    }
    client.close();
    drain(&mut client);
});

/// Takes everything the client has to say; what it sends must be a frame
/// the server accepts.
fn drain(client: &mut ClientState) {
    while let Some(out) = client.poll_transmit() {
        if let Err((_, e)) = parse_client_frame(&out) {
            panic!("the client sent a frame the server refuses: {e:?}\n{out}");
        }
    }
    while client.poll_event().is_some() {}
    while client.poll_completion().is_some() {}
    let _ = client.poll_close();
    let _ = client.poll_timeout();
    let _ = client.cursors();
}
