//! Authorisation before state: a caller who may not ask about a room gets
//! the room's 404 or 403 before any answer about peers, sessions, bodies or
//! targets, so a non-member learns nothing about a room. Each test also
//! shows the state answer a permitted caller gets, so it would fail if the
//! order were wrong.

mod common;

use common::TestServer;
use reqwest::Method;
use serde_json::{Value, json};

fn code(body: &Value) -> &Value {
    &body["error"]["code"]
}

/// The case: a non-member with no connection asks for a P2P
/// session. It used to get 409 ("no connected peer"); now the room's answer.
#[tokio::test]
async fn p2p_session_checks_membership_before_connections() {
    let s = TestServer::start().await;
    let (_, a) = s.register("alice").await;
    let (_, e) = s.register("eve").await;
    let public = s.create_room(&a, "general", "public").await;
    let private = s.create_room(&a, "secret", "private").await;
    let wa = s.ws(&a).await;
    let ask = |room: String| json!({"room_id": room, "target_peer_id": wa.peer_id, "kind": "file"});

    let (status, body) = s
        .post("/api/p2p/session", Some(&e), ask(public.clone()))
        .await;
    assert_eq!((status, code(&body)), (403, &json!("forbidden")), "{body}");
    let (status, body) = s
        .post("/api/p2p/session", Some(&e), ask(private.clone()))
        .await;
    assert_eq!((status, code(&body)), (404, &json!("not_found")), "{body}");
    let nowhere = uuid::Uuid::new_v4().to_string();
    let (status, body) = s.post("/api/p2p/session", Some(&e), ask(nowhere)).await;
    assert_eq!((status, code(&body)), (404, &json!("not_found")), "{body}");

    // Once a member, the same caller with no connection is told about its
    // own state: 409.
    let (status, _) = s
        .post(&format!("/api/rooms/{public}/join"), Some(&e), json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, body) = s.post("/api/p2p/session", Some(&e), ask(public)).await;
    assert_eq!((status, code(&body)), (409, &json!("conflict")), "{body}");
}

/// The same over the WebSocket: an outsider with a connection asking for a
/// session to a peer that is not connected gets the room's answer, not 404
/// "target peer is not connected".
#[tokio::test]
async fn p2p_request_over_websocket_checks_membership_first() {
    let s = TestServer::start().await;
    let (_, a) = s.register("alice").await;
    let (_, e) = s.register("eve").await;
    let public = s.create_room(&a, "general", "public").await;
    let mut we = s.ws(&e).await;
    let ask = json!({"room_id": public, "target_peer_id": uuid::Uuid::new_v4(), "kind": "file"});
    let refused = we.request("p2p.session.request", ask.clone(), "p1").await;
    assert_eq!(refused["payload"]["code"], "forbidden", "{refused}");
    let joined = we
        .request("room.join", json!({"room_id": public}), "j")
        .await;
    assert_eq!(joined["type"], "room.joined");
    let unknown = we.request("p2p.session.request", ask, "p2").await;
    assert_eq!(unknown["payload"]["code"], "not_found", "{unknown}");
}

/// Signaling: an outsider learns nothing about which peers are connected.
#[tokio::test]
async fn rtc_signal_checks_the_senders_room_before_the_target() {
    let s = TestServer::start().await;
    let (_, a) = s.register("alice").await;
    let (_, e) = s.register("eve").await;
    let room = s.create_room(&a, "general", "public").await;
    let mut wa = s.ws(&a).await;
    let mut we = s.ws(&e).await;
    let signal = json!({"target_peer_id": uuid::Uuid::new_v4(), "room_id": room, "sdp": "x"});
    let refused = we.request("rtc.offer", signal.clone(), "o1").await;
    assert_eq!(refused["payload"]["code"], "forbidden", "{refused}");
    let unknown = wa.request("rtc.offer", signal, "o2").await;
    assert_eq!(unknown["payload"]["code"], "not_found", "{unknown}");
}

/// Sending: a non-member gets 403 whatever it sends, even content that
/// would be refused as invalid.
#[tokio::test]
async fn send_checks_membership_before_content() {
    let s = TestServer::start().await;
    let (_, a) = s.register("alice").await;
    let (_, e) = s.register("eve").await;
    let room = s.create_room(&a, "general", "public").await;
    let mut wa = s.ws(&a).await;
    let mut we = s.ws(&e).await;
    let empty = json!({"room_id": room, "content": ""});
    let refused = we.request("chat.message.send", empty.clone(), "m1").await;
    assert_eq!(refused["payload"]["code"], "forbidden", "{refused}");
    let invalid = wa.request("chat.message.send", empty, "m2").await;
    assert_eq!(invalid["payload"]["code"], "invalid_request", "{invalid}");
}

/// History: members only, before the query is looked at.
#[tokio::test]
async fn history_checks_membership_before_the_query() {
    let s = TestServer::start().await;
    let (_, a) = s.register("alice").await;
    let (_, e) = s.register("eve").await;
    let public = s.create_room(&a, "general", "public").await;
    let private = s.create_room(&a, "secret", "private").await;
    for (room, want) in [(&public, 403), (&private, 404)] {
        let (status, body) = s
            .get(&format!("/api/rooms/{room}/messages?before=5&after=1"), &e)
            .await;
        assert_eq!(status, want, "{body}");
    }
    let (status, _) = s
        .get(
            &format!("/api/rooms/{public}/messages?before=5&after=1"),
            &a,
        )
        .await;
    assert_eq!(status, 400, "a member is told about the query");
}

/// Members: who is in a room and who is online is for members, like the
/// history and the peers.
#[tokio::test]
async fn member_list_is_for_members() {
    let s = TestServer::start().await;
    let (_, a) = s.register("alice").await;
    let (_, e) = s.register("eve").await;
    let public = s.create_room(&a, "general", "public").await;
    let private = s.create_room(&a, "secret", "private").await;
    let (status, body) = s.get(&format!("/api/rooms/{public}/members"), &e).await;
    assert_eq!((status, code(&body)), (403, &json!("forbidden")), "{body}");
    let (status, body) = s.get(&format!("/api/rooms/{private}/members"), &e).await;
    assert_eq!((status, code(&body)), (404, &json!("not_found")), "{body}");
    // The room itself stays public.
    let (status, body) = s.get(&format!("/api/rooms/{public}"), &e).await;
    assert_eq!((status, &body["room"]["member_count"]), (200, &json!(1)));
    let (status, _) = s
        .post(&format!("/api/rooms/{public}/join"), Some(&e), json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, body) = s.get(&format!("/api/rooms/{public}/members"), &e).await;
    assert_eq!(status, 200);
    assert_eq!(body["members"].as_array().map(Vec::len), Some(2));
}

/// Removing: a plain member is refused before the target is looked up, so
/// it cannot tell members from strangers by the answer.
#[tokio::test]
async fn remove_member_checks_the_callers_role_before_the_target() {
    let s = TestServer::start().await;
    let (_, a) = s.register("alice").await;
    let (_, b) = s.register("bob").await;
    let (stranger, _) = s.register("sam").await;
    let room = s.create_room(&a, "general", "public").await;
    let (status, _) = s
        .post(&format!("/api/rooms/{room}/join"), Some(&b), json!({}))
        .await;
    assert_eq!(status, 200);
    let path = format!(
        "/api/rooms/{room}/members/{}",
        stranger["id"].as_str().expect("id")
    );
    let (status, body) = s.call(Method::DELETE, &path, Some(&b), None).await;
    assert_eq!((status, code(&body)), (403, &json!("forbidden")), "{body}");
    let (status, body) = s.call(Method::DELETE, &path, Some(&a), None).await;
    assert_eq!((status, code(&body)), (404, &json!("not_found")), "{body}");
}

/// A P2P session the caller is not a party to is answered as if it did not
/// exist.
#[tokio::test]
async fn closing_someone_elses_session_is_not_found() {
    let s = TestServer::start().await;
    let (_, a) = s.register("alice").await;
    let (_, b) = s.register("bob").await;
    let (_, e) = s.register("eve").await;
    let room = s.create_room(&a, "general", "public").await;
    let _wa = s.ws(&a).await;
    let mut wb = s.ws(&b).await;
    let joined = wb.request("room.join", json!({"room_id": room}), "j").await;
    assert_eq!(joined["type"], "room.joined");
    let (status, body) = s
        .post(
            "/api/p2p/session",
            Some(&a),
            json!({"room_id": room, "target_peer_id": wb.peer_id, "kind": "file"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let path = format!(
        "/api/p2p/session/{}",
        body["session"]["id"].as_str().expect("id")
    );
    let (status, body) = s.call(Method::DELETE, &path, Some(&e), None).await;
    assert_eq!((status, code(&body)), (404, &json!("not_found")), "{body}");
    let (status, _) = s.call(Method::DELETE, &path, Some(&b), None).await;
    assert_eq!(status, 204, "a party closes it");
}

/// Capability tokens: managing rooms and devices is in no scope, so they
/// are refused; leaving needs `messages:write`, as joining does.
#[tokio::test]
async fn capability_tokens_cannot_manage_rooms_or_devices() {
    let s = TestServer::start().await;
    let (alice, a) = s.register("alice").await;
    let (bob, b) = s.register("bob").await;
    let room = s.create_room(&a, "general", "public").await;
    let (status, _) = s
        .post(&format!("/api/rooms/{room}/join"), Some(&b), json!({}))
        .await;
    assert_eq!(status, 200);
    let all = json!({"scope": ["rooms:read", "messages:read", "messages:write", "p2p"]});
    let (status, body) = s.post("/api/auth/capability", Some(&a), all.clone()).await;
    assert_eq!(status, 200, "{body}");
    let cap = body["capability_token"].as_str().expect("cap").to_owned();
    let bob_id = bob["id"].as_str().expect("id");
    let device = {
        let (_, body) = s.get("/api/auth/devices", &a).await;
        body["devices"][0]["id"]
            .as_str()
            .expect("device")
            .to_owned()
    };
    let calls: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::PATCH,
            format!("/api/rooms/{room}"),
            Some(json!({"name": "renamed"})),
        ),
        (
            Method::POST,
            format!("/api/rooms/{room}/members"),
            Some(json!({"username": "carol"})),
        ),
        (
            Method::PATCH,
            format!("/api/rooms/{room}/members/{bob_id}"),
            Some(json!({"role": "admin"})),
        ),
        (
            Method::DELETE,
            format!("/api/rooms/{room}/members/{bob_id}"),
            None,
        ),
        (Method::DELETE, format!("/api/rooms/{room}"), None),
        (Method::GET, "/api/auth/devices".to_owned(), None),
        (Method::DELETE, format!("/api/auth/devices/{device}"), None),
    ];
    for (method, path, body) in &calls {
        let (status, answer) = s.call(method.clone(), path, Some(&cap), body.clone()).await;
        assert_eq!(
            (status, code(&answer)),
            (403, &json!("forbidden")),
            "{method} {path}: {answer}"
        );
    }
    // Nothing changed: bob is still a member and the room keeps its name.
    let (_, body) = s.get(&format!("/api/rooms/{room}"), &a).await;
    assert_eq!(body["room"]["name"], "general");
    assert_eq!(body["room"]["member_count"], 2);
    assert_eq!(body["room"]["created_by"], alice["id"]);

    // Leaving needs messages:write.
    let (_, body) = s
        .post(
            "/api/auth/capability",
            Some(&b),
            json!({"scope": ["rooms:read"]}),
        )
        .await;
    let read_only = body["capability_token"].as_str().expect("cap").to_owned();
    let leave = format!("/api/rooms/{room}/leave");
    let (status, _) = s.post(&leave, Some(&read_only), json!({})).await;
    assert_eq!(status, 403);
    let (_, body) = s.post("/api/auth/capability", Some(&b), all).await;
    let writer = body["capability_token"].as_str().expect("cap").to_owned();
    let (status, body) = s.post(&leave, Some(&writer), json!({})).await;
    assert_eq!(status, 204, "{body}");
    // And the access token still manages rooms.
    let (status, _) = s
        .call(
            Method::PATCH,
            &format!("/api/rooms/{room}"),
            Some(&a),
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert_eq!(status, 200);
}
