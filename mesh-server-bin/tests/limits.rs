//! Limits answer clearly and never crash the server: frame size (1009),
//! frame rate (`rate_limited`, then 1008), slow consumers (1013), HTTP body
//! size (413), login attempts (429 with `Retry-After`).

mod common;

use common::TestServer;
use futures_util::SinkExt;
use mesh_core::service::limits::FrameRate;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn oversized_frames_close_with_1009() {
    let s = TestServer::start().await;
    let (_, a) = s.register("alice").await;
    let mut ws = s.ws(&a).await;
    // 64 KiB is always accepted (as a frame; the content limit answers it).
    let room = s.create_room(&a, "r", "public").await;
    let just_fits = format!(
        r#"{{"type":"chat.message.send","id":"big","payload":{{"room_id":"{room}","content":"{}"}}}}"#,
        "x".repeat(60 * 1024)
    );
    ws.send_raw(&just_fits).await;
    let e = ws.reply("big").await;
    assert_eq!(e["payload"]["code"], "payload_too_large");
    // Past 64 KiB the connection is closed with 1009.
    let too_big = "y".repeat(70 * 1024);
    ws.ws
        .send(Message::Text(too_big.into()))
        .await
        .expect("send");
    assert_eq!(ws.closed().await, Some(1009));
}

#[tokio::test]
async fn floods_get_rate_limited_then_closed() {
    let s = TestServer::start().await;
    let (_, a) = s.register("alice").await;
    let mut ws = s.ws(&a).await;
    for i in 0..400 {
        let frame = json!({"type": "system.ping", "id": i.to_string()}).to_string();
        if ws.ws.send(Message::Text(frame.into())).await.is_err() {
            break;
        }
    }
    let limited = ws.expect("error").await;
    assert_eq!(limited["payload"]["code"], "rate_limited");
    assert!(
        limited["payload"]["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0)
    );
    assert_eq!(ws.closed().await, Some(1008));
}

#[tokio::test]
async fn a_slow_reader_is_closed_with_1013_instead_of_growing_memory() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = mesh_server_bin::Config::new(dir.path());
    config.ws.queue_bytes = 64 * 1024;
    config.service.frame_rate = FrameRate {
        burst: 100_000,
        per_second: 100_000.0,
        strikes_before_close: 10,
    };
    let s = TestServer::start_with(config, Some(dir)).await;
    let (_, a) = s.register("alice").await;
    let (bob, b) = s.register("bob").await;
    let room = s.create_room(&a, "firehose", "public").await;
    let mut wa = s.ws(&a).await;
    let mut wb = s.ws(&b).await;
    wb.request("room.join", json!({"room_id": room}), "j").await;
    // Bob stops reading. Alice sends ~12 MiB: more than the socket buffers
    // and bob's 64 KiB queue can hold.
    let content = "z".repeat(16 * 1024);
    let mut offline = None;
    for i in 0..800 {
        let ack = wa
            .request(
                "chat.message.send",
                json!({"room_id": room, "content": content}),
                &format!("m{i}"),
            )
            .await;
        assert_eq!(ack["type"], "chat.message.created");
        if let Some(p) = wa.seen.iter().find(|f| {
            f["type"] == "presence.update"
                && f["payload"]["user_id"] == bob["id"]
                && f["payload"]["status"] == "offline"
        }) {
            offline = Some(p.clone());
            break;
        }
    }
    assert!(offline.is_some(), "bob was never cut off");
    // Bob, reading again, finds the 1013 close after what was queued.
    assert_eq!(wb.closed().await, Some(1013));
}

#[tokio::test]
async fn http_bodies_past_64_kib_get_413() {
    let s = TestServer::start().await;
    let (_, a) = s.register("alice").await;
    let (status, body) = s
        .post(
            "/api/rooms",
            Some(&a),
            json!({"name": "x".repeat(70 * 1024)}),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    // And a body that is not JSON is a 400.
    let resp = s
        .http
        .post(s.url("/api/rooms"))
        .bearer_auth(&a)
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
}

#[tokio::test]
async fn login_attempts_are_limited_per_username() {
    let s = TestServer::start().await;
    s.register("alice").await;
    let mut last = None;
    for _ in 0..12 {
        let resp = s
            .http
            .post(s.url("/api/auth/login"))
            .json(&json!({"username": "alice", "password": "guess guess"}))
            .send()
            .await
            .expect("send");
        let status = resp.status().as_u16();
        if status == 429 {
            last = Some(resp);
            break;
        }
        assert_eq!(status, 401);
    }
    let resp = last.expect("rate limited within 12 attempts");
    let retry: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After header");
    assert!(retry >= 1);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited");
}
