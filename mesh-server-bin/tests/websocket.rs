//! The WebSocket table of the contract, over real sockets: two users chat,
//! history, resume with `since`, presence, typing, signaling, P2P sessions,
//! and bad frames.

mod common;

use common::{TestServer, WsClient};
use reqwest::Method;
use serde_json::{Value, json};

/// Two users, a public room both are in, both connected.
async fn pair(s: &TestServer) -> (String, WsClient, WsClient, Value, Value, String, String) {
    let (alice, a) = s.register("alice").await;
    let (bob, b) = s.register("bob").await;
    let room = s.create_room(&a, "general", "public").await;
    let mut wa = s.ws(&a).await;
    let mut wb = s.ws(&b).await;
    let joined = wb
        .request("room.join", json!({"room_id": room}), "j1")
        .await;
    assert_eq!(joined["type"], "room.joined", "{joined}");
    assert_eq!(
        joined["payload"]["members"].as_array().map(Vec::len),
        Some(2)
    );
    // Alice hears that bob joined.
    let heard = wa.expect("room.joined").await;
    assert_eq!(heard["payload"]["user"], bob);
    assert_eq!(heard["payload"]["peer_id"], json!(wb.peer_id));
    assert!(heard["payload"].get("members").is_none());
    (room, wa, wb, alice, bob, a, b)
}

#[tokio::test]
async fn welcome_ping_and_two_users_chat() {
    let s = TestServer::start().await;
    let (room, mut wa, mut wb, alice, _, _, b) = pair(&s).await;

    let pong = wa.request("system.ping", json!({}), "p").await;
    assert_eq!(pong["type"], "system.pong");

    for i in 0..5 {
        let ack = wa
            .request(
                "chat.message.send",
                json!({"room_id": room, "content": format!("hello {i}"), "client_id": format!("c{i}")}),
                &format!("m{i}"),
            )
            .await;
        assert_eq!(ack["type"], "chat.message.created", "{ack}");
        let m = &ack["payload"]["message"];
        assert_eq!(m["seq"], i + 1);
        assert_eq!(m["sender"], alice);
        assert_eq!(m["room_id"], json!(room));
        assert_eq!(m["client_id"], json!(format!("c{i}")));
    }
    for i in 0..5 {
        let got = wb.expect("chat.message.created").await;
        assert_eq!(
            got["payload"]["message"]["content"],
            json!(format!("hello {i}"))
        );
        assert_eq!(got["payload"]["message"]["seq"], i + 1);
        assert!(got.get("id").is_none(), "broadcasts carry no request id");
    }

    // A retry with the same client_id is the same message, never a second one.
    let again = wa
        .request(
            "chat.message.send",
            json!({"room_id": room, "content": "hello 4", "client_id": "c4"}),
            "retry",
        )
        .await;
    assert_eq!(again["payload"]["message"]["seq"], 5);
    let (_, page) = s.get(&format!("/api/rooms/{room}/messages"), &b).await;
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(5));

    // Bob replies; alice sees it.
    wb.send(
        "chat.message.send",
        json!({"room_id": room, "content": "hi alice"}),
        None,
    )
    .await;
    let got = wa
        .expect_where("chat.message.created", |f| {
            f["payload"]["message"]["seq"] == 6
        })
        .await;
    assert_eq!(got["payload"]["message"]["content"], "hi alice");
}

#[tokio::test]
async fn history_pages_over_250_messages() {
    // Sending 250 messages at once is past the default frame rate limit.
    let dir = tempfile::tempdir().expect("dir");
    let mut config = mesh_server_bin::Config::new(dir.path());
    config.service.frame_rate.burst = 1000;
    let s = TestServer::start_with(config, Some(dir)).await;
    let (_, a) = s.register("alice").await;
    let room = s.create_room(&a, "log", "public").await;
    let mut wa = s.ws(&a).await;
    for i in 1..=250 {
        wa.send(
            "chat.message.send",
            json!({"room_id": room, "content": format!("m{i}")}),
            Some(&format!("r{i}")),
        )
        .await;
    }
    wa.reply("r250").await;

    let seqs = |page: &Value| -> Vec<u64> {
        page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["seq"].as_u64().expect("seq"))
            .collect()
    };
    let (status, latest) = s.get(&format!("/api/rooms/{room}/messages"), &a).await;
    assert_eq!(status, 200);
    assert_eq!(
        seqs(&latest),
        (201..=250).collect::<Vec<_>>(),
        "default 50, newest"
    );
    assert_eq!(latest["has_more"], true);

    // Walk back to the start with `before`.
    let mut all = seqs(&latest);
    let mut before = all[0];
    loop {
        let (_, page) = s
            .get(
                &format!("/api/rooms/{room}/messages?before={before}&limit=100"),
                &a,
            )
            .await;
        let mut got = seqs(&page);
        if got.is_empty() {
            break;
        }
        before = got[0];
        got.extend(all);
        all = got;
        if page["has_more"] == false {
            break;
        }
    }
    assert_eq!(all, (1..=250).collect::<Vec<_>>());

    let (_, page) = s
        .get(&format!("/api/rooms/{room}/messages?after=240&limit=5"), &a)
        .await;
    assert_eq!(seqs(&page), vec![241, 242, 243, 244, 245]);
    assert_eq!(page["has_more"], true);
    let (_, page) = s
        .get(
            &format!("/api/rooms/{room}/messages?after=245&limit=100"),
            &a,
        )
        .await;
    assert_eq!(seqs(&page), (246..=250).collect::<Vec<_>>());
    assert_eq!(page["has_more"], false);
    let (_, page) = s
        .get(&format!("/api/rooms/{room}/messages?limit=1000"), &a)
        .await;
    assert_eq!(seqs(&page).len(), 100, "limit is capped at 100");

    for bad in ["limit=0", "before=x", "before=5&after=2"] {
        let (status, body) = s
            .get(&format!("/api/rooms/{room}/messages?{bad}"), &a)
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

#[tokio::test]
async fn resume_with_since_delivers_what_was_missed() {
    let s = TestServer::start().await;
    let (room, mut wa, wb, _, _, _, b) = pair(&s).await;
    wa.request(
        "chat.message.send",
        json!({"room_id": room, "content": "before"}),
        "0",
    )
    .await;
    drop(wb);
    for i in 1..=5 {
        wa.request(
            "chat.message.send",
            json!({"room_id": room, "content": format!("missed {i}")}),
            &format!("{i}"),
        )
        .await;
    }
    let mut wb = s
        .ws_with_hello(&b, json!({"since": {room.clone(): 1}}))
        .await;
    for i in 1..=5 {
        let got = wb.expect("chat.message.created").await;
        assert_eq!(got["payload"]["message"]["seq"], i + 1);
        assert_eq!(
            got["payload"]["message"]["content"],
            json!(format!("missed {i}"))
        );
    }
    // And live messages continue after the backlog, with no duplicate.
    wa.request(
        "chat.message.send",
        json!({"room_id": room, "content": "live"}),
        "7",
    )
    .await;
    let got = wb.expect("chat.message.created").await;
    assert_eq!(got["payload"]["message"]["seq"], 7);
}

#[tokio::test]
async fn presence_goes_offline_when_the_socket_dies() {
    let s = TestServer::start().await;
    let (room, mut wa, wb, _, bob, _, b) = pair(&s).await;
    let (_, members) = s.get(&format!("/api/rooms/{room}/members"), &b).await;
    let bob_presence = members["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["user"] == bob)
        .map(|m| m["presence"].clone());
    assert_eq!(bob_presence, Some(json!("online")));

    // Drop the TCP connection without a WebSocket close frame.
    let WsClient { ws, .. } = wb;
    let tcp = ws.into_inner();
    drop(tcp);
    let update = wa
        .expect_where("presence.update", |f| f["payload"]["user_id"] == bob["id"])
        .await;
    assert_eq!(update["payload"]["status"], "offline");
}

#[tokio::test]
async fn presence_is_aggregated_and_settable() {
    let s = TestServer::start().await;
    let (_room, mut wa, mut wb, _, bob, _, b) = pair(&s).await;
    let mut wb2 = s.ws(&b).await;
    let ack = wb
        .request(
            "presence.update",
            json!({"status": "busy", "message": "in a call"}),
            "p",
        )
        .await;
    assert_eq!(ack["type"], "presence.update");
    let seen = wa
        .expect_where("presence.update", |f| f["payload"]["status"] == "busy")
        .await;
    assert_eq!(seen["payload"]["user_id"], bob["id"]);
    assert_eq!(seen["payload"]["message"], "in a call");
    // One of bob's two devices leaving does not make him offline.
    wb2.ws.close(None).await.expect("close");
    drop(wb2);
    let ping = wa.request("system.ping", json!({}), "sync").await;
    assert_eq!(ping["type"], "system.pong");
    assert!(
        !wa.seen
            .iter()
            .any(|f| f["type"] == "presence.update" && f["payload"]["status"] == "offline"),
        "{:?}",
        wa.seen
    );
    let bad = wb
        .request("presence.update", json!({"status": "sleeping"}), "bad")
        .await;
    assert_eq!(bad["payload"]["code"], "invalid_request");
}

#[tokio::test]
async fn typing_reaches_the_others() {
    let s = TestServer::start().await;
    let (room, mut wa, mut wb, alice, _, _, _) = pair(&s).await;
    wa.send(
        "chat.typing",
        json!({"room_id": room, "typing": true}),
        None,
    )
    .await;
    let t = wb.expect("chat.typing").await;
    assert_eq!(
        t["payload"],
        json!({"room_id": room, "user_id": alice["id"], "typing": true})
    );
    wa.send(
        "chat.typing",
        json!({"room_id": room, "typing": false}),
        None,
    )
    .await;
    let t = wb.expect("chat.typing").await;
    assert_eq!(t["payload"]["typing"], false);
    // The sender does not hear its own typing.
    wa.request("system.ping", json!({}), "sync").await;
    assert!(!wa.seen.iter().any(|f| f["type"] == "chat.typing"));
}

#[tokio::test]
async fn rtc_signals_go_only_to_the_target_in_a_shared_room() {
    let s = TestServer::start().await;
    let (room, mut wa, mut wb, alice, _, _, _) = pair(&s).await;
    let (_, c) = s.register("carol").await;
    let mut wc = s.ws(&c).await;
    let other_room = s.create_room(&c, "elsewhere", "public").await;

    wa.send(
        "rtc.offer",
        json!({"target_peer_id": wb.peer_id, "room_id": room, "sdp": "v=0 offer"}),
        Some("o"),
    )
    .await;
    let ack = wa.reply("o").await;
    assert_eq!(
        ack,
        json!({"type": "system.ack", "id": "o", "payload": {"request": "rtc.offer"}})
    );
    let offer = wb.expect("rtc.offer").await;
    assert_eq!(offer["payload"]["sdp"], "v=0 offer");
    assert_eq!(offer["payload"]["from_peer_id"], json!(wa.peer_id));
    assert_eq!(offer["payload"]["from_user_id"], alice["id"]);
    wb.send(
        "rtc.answer",
        json!({"target_peer_id": wa.peer_id, "room_id": room, "sdp": "v=0 answer"}),
        None,
    )
    .await;
    assert_eq!(
        wa.expect("rtc.answer").await["payload"]["sdp"],
        "v=0 answer"
    );

    // Carol shares no room with alice: refused, and alice hears nothing.
    let refused = wc
        .request(
            "rtc.offer",
            json!({"target_peer_id": wa.peer_id, "room_id": other_room, "sdp": "x"}),
            "c1",
        )
        .await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["payload"]["code"], "forbidden");
    let unknown = wa
        .request(
            "rtc.ice",
            json!({"target_peer_id": uuid::Uuid::new_v4(), "room_id": room, "candidate": "c"}),
            "c2",
        )
        .await;
    assert_eq!(unknown["payload"]["code"], "not_found");
    wa.request("system.ping", json!({}), "sync").await;
    assert!(!wa.seen.iter().any(|f| f["type"] == "rtc.offer"));
    wc.request("system.ping", json!({}), "sync").await;
    assert!(
        !wc.seen
            .iter()
            .any(|f| f["type"].as_str().is_some_and(|t| t.starts_with("rtc.")))
    );
}

#[tokio::test]
async fn p2p_sessions_over_http_and_websocket() {
    let s = TestServer::start().await;
    let (room, mut wa, mut wb, alice, bob, a, b) = pair(&s).await;

    // Over the WebSocket.
    let created = wa
        .request(
            "p2p.session.request",
            json!({"room_id": room, "target_peer_id": wb.peer_id, "kind": "file"}),
            "s1",
        )
        .await;
    assert_eq!(created["type"], "p2p.session.created", "{created}");
    let session = created["payload"]["session"].clone();
    for key in [
        "id",
        "room_id",
        "kind",
        "initiator_peer_id",
        "target_peer_id",
        "initiator_user_id",
        "target_user_id",
        "state",
        "created_at",
        "expires_at",
    ] {
        assert!(session.get(key).is_some(), "session has {key}");
    }
    assert_eq!(session["initiator_user_id"], alice["id"]);
    assert_eq!(session["target_user_id"], bob["id"]);
    let token = created["payload"]["session_token"].as_str().expect("token");
    assert_eq!(token.split('.').count(), 3);
    let to_bob = wb.expect("p2p.session.created").await;
    assert_eq!(to_bob["payload"]["session"]["id"], session["id"]);

    // Agents find each other's peer ids (and P2P details) per room.
    let (status, peers) = s.get(&format!("/api/rooms/{room}/peers"), &a).await;
    assert_eq!(status, 200, "{peers}");
    let ids: Vec<&Value> = peers["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| &p["peer_id"])
        .collect();
    assert_eq!(ids, [&json!(wa.peer_id), &json!(wb.peer_id)]);
    assert_eq!(peers["peers"][1]["user"], bob);

    let (status, list) = s.get("/api/p2p/sessions", &b).await;
    assert_eq!(status, 200);
    assert_eq!(list["sessions"][0]["id"], session["id"]);

    // Over HTTP.
    let (status, body) = s
        .post(
            "/api/p2p/session",
            Some(&a),
            json!({"room_id": room, "target_peer_id": wb.peer_id, "kind": "terminal"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(body["session_token"].is_string());
    let second = body["session"]["id"].as_str().expect("id").to_owned();
    let (status, _) = s
        .post(
            "/api/p2p/session",
            Some(&a),
            json!({"room_id": room, "target_peer_id": wb.peer_id, "kind": "printer"}),
        )
        .await;
    assert_eq!(status, 400, "unknown kind");
    let (status, _) = s
        .post(
            "/api/p2p/session",
            Some(&a),
            json!({"room_id": room, "target_peer_id": uuid::Uuid::new_v4(), "kind": "file"}),
        )
        .await;
    assert_eq!(status, 404, "target not connected");
    let (_, c) = s.register("carol").await;
    let _wc = s.ws(&c).await;
    let (status, _) = s
        .post(
            "/api/p2p/session",
            Some(&c),
            json!({"room_id": room, "target_peer_id": wb.peer_id, "kind": "file"}),
        )
        .await;
    assert_eq!(status, 403, "carol is not in the room");

    // Only a party may close; both parties hear it.
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/api/p2p/session/{second}"),
            Some(&c),
            None,
        )
        .await;
    assert_eq!(status, 404, "not a party: as if there were no such session");
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/api/p2p/session/{second}"),
            Some(&b),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let closed = wa
        .expect_where("p2p.session.closed", |f| {
            f["payload"]["session_id"] == json!(second)
        })
        .await;
    assert!(closed["payload"]["reason"].is_string());
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_stays_usable() {
    let s = TestServer::start().await;
    let (room, mut wa, _wb, _, _, _, _) = pair(&s).await;
    wa.send_raw("this is not json").await;
    let e = wa.expect("error").await;
    assert_eq!(e["payload"]["code"], "invalid_request");

    let e = wa.request("no.such.type", json!({}), "u").await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["payload"]["code"], "invalid_request");

    let e = wa
        .request("chat.message.send", json!({"content": "x"}), "missing")
        .await;
    assert_eq!(e["payload"]["code"], "invalid_request");

    let e = wa
        .request(
            "chat.message.send",
            json!({"room_id": room, "content": ""}),
            "empty",
        )
        .await;
    assert_eq!(e["payload"]["code"], "invalid_request");

    let long = "x".repeat(16 * 1024 + 1);
    let e = wa
        .request(
            "chat.message.send",
            json!({"room_id": room, "content": long}),
            "long",
        )
        .await;
    assert_eq!(e["payload"]["code"], "payload_too_large");

    let e = wa
        .request(
            "chat.message.send",
            json!({"room_id": uuid::Uuid::new_v4(), "content": "x"}),
            "notmember",
        )
        .await;
    assert_eq!(e["payload"]["code"], "forbidden");

    let e = wa
        .request("room.join", json!({"room_id": "nope"}), "badid")
        .await;
    assert_eq!(e["payload"]["code"], "invalid_request");

    // Still usable.
    let ok = wa
        .request(
            "chat.message.send",
            json!({"room_id": room, "content": "still here"}),
            "ok",
        )
        .await;
    assert_eq!(ok["type"], "chat.message.created");
}

#[tokio::test]
async fn room_leave_and_unauthenticated_upgrade() {
    let s = TestServer::start().await;
    let (room, mut wa, mut wb, _, bob, _, _) = pair(&s).await;
    let left = wb
        .request("room.leave", json!({"room_id": room}), "l")
        .await;
    assert_eq!(left["type"], "room.left");
    assert_eq!(left["payload"]["user_id"], bob["id"]);
    let heard = wa.expect("room.left").await;
    assert_eq!(heard["payload"]["user_id"], bob["id"]);
    // Bob no longer gets the room's messages.
    wa.request(
        "chat.message.send",
        json!({"room_id": room, "content": "x"}),
        "m",
    )
    .await;
    wb.request("system.ping", json!({}), "sync").await;
    assert!(!wb.seen.iter().any(|f| f["type"] == "chat.message.created"));

    // No token, or a bad one: 401 before the upgrade.
    for url in [
        format!("ws://{}/ws", s.addr),
        format!("ws://{}/ws?token=garbage", s.addr),
    ] {
        let err = tokio_tungstenite::connect_async(url)
            .await
            .expect_err("refused");
        match err {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                assert_eq!(resp.status().as_u16(), 401)
            }
            other => panic!("expected an HTTP 401, got {other:?}"),
        }
    }
}
