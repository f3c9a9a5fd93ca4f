//! Every row of the contract's HTTP table, over real sockets.

mod common;

use common::TestServer;
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn health_and_unknown_routes() {
    let s = TestServer::start().await;
    let (status, body) = s.call(Method::GET, "/health", None, None).await;
    assert_eq!(
        (status, body),
        (200, json!({"status": "ok", "store": "ok"}))
    );
    let (status, body) = s.call(Method::GET, "/api/nope", None, None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = s.call(Method::PUT, "/api/auth/login", None, None).await;
    assert_eq!(status, 405);
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn register_login_me() {
    let s = TestServer::start().await;
    let (user, token) = s.register("Alice").await;
    assert_eq!(user["username"], "alice", "usernames fold to lower case");
    for key in ["id", "username", "display_name", "created_at"] {
        assert!(user.get(key).is_some(), "user has {key}");
    }

    // Taken, whatever the case.
    let (status, body) = s
        .post(
            "/api/auth/register",
            None,
            json!({"username": "ALICE", "password": "another password"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");

    // Validation.
    for bad in [
        json!({"username": "a", "password": "long enough"}),
        json!({"username": "alice bob", "password": "long enough"}),
        json!({"username": "carol", "password": "short"}),
        json!({"username": "carol"}),
    ] {
        let (status, body) = s.post("/api/auth/register", None, bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
    }

    let (status, body) = s
        .post(
            "/api/auth/login",
            None,
            json!({"username": "alice", "password": "correct horse battery", "device_name": "laptop"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["id"], user["id"]);
    let login_token = body["token"].as_str().expect("token").to_owned();

    // Wrong password and unknown user get the same answer.
    let (s1, b1) = s
        .post(
            "/api/auth/login",
            None,
            json!({"username": "alice", "password": "wrong password"}),
        )
        .await;
    let (s2, b2) = s
        .post(
            "/api/auth/login",
            None,
            json!({"username": "nobody", "password": "wrong password"}),
        )
        .await;
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(b1, b2);

    for t in [&token, &login_token] {
        let (status, body) = s.get("/api/auth/me", t).await;
        assert_eq!(status, 200);
        assert_eq!(body["user"], user);
    }
    let (status, body) = s.call(Method::GET, "/api/auth/me", None, None).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("unauthorized"))
    );
    let (status, _) = s.get("/api/auth/me", "not.a.token").await;
    assert_eq!(status, 401);
}

fn b64url_decode(s: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = alphabet.iter().position(|&a| a == c).expect("base64url") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn jwt_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).expect("jwt part");
    serde_json::from_slice(&b64url_decode(part)).expect("jwt json")
}

#[tokio::test]
async fn tokens_are_eddsa_jwts_and_forgeries_are_refused() {
    let s = TestServer::start().await;
    let (_, token) = s.register("alice").await;
    let header = jwt_part(&token, 0);
    assert_eq!(header["alg"], "EdDSA");
    let claims = jwt_part(&token, 1);
    assert!(claims["exp"].as_i64().is_some());

    let (status, keys) = s.call(Method::GET, "/api/auth/keys", None, None).await;
    assert_eq!(status, 200);
    let kids: Vec<&Value> = keys["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| &k["kid"])
        .collect();
    assert!(kids.contains(&&header["kid"]), "{keys}");

    // alg none with the same claims.
    let none = format!(
        "{}.{}.",
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0",
        token.split('.').nth(1).expect("claims")
    );
    let (status, _) = s.get("/api/auth/me", &none).await;
    assert_eq!(status, 401);
    // Tampered signature.
    let mut tampered = token.clone();
    let last = tampered.pop().expect("char");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let (status, _) = s.get("/api/auth/me", &tampered).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn capability_tokens_are_scoped_down() {
    let s = TestServer::start().await;
    let (_, token) = s.register("alice").await;
    let room = s.create_room(&token, "general", "public").await;
    let (status, body) = s
        .post(
            "/api/auth/capability",
            Some(&token),
            json!({"scope": ["rooms:read"], "ttl_secs": 60}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let cap = body["capability_token"].as_str().expect("cap").to_owned();
    assert!(body["expires_at"].is_string());
    assert_eq!(jwt_part(&cap, 0)["alg"], "EdDSA");

    let (status, _) = s.get("/api/rooms", &cap).await;
    assert_eq!(status, 200, "rooms:read allows listing rooms");
    let (status, body) = s.get(&format!("/api/rooms/{room}/messages"), &cap).await;
    assert_eq!(status, 403, "but not reading messages: {body}");
    // A capability cannot mint a wider one.
    let (status, _) = s
        .post(
            "/api/auth/capability",
            Some(&cap),
            json!({"scope": ["messages:read"]}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = s
        .post("/api/auth/capability", Some(&token), json!({"scope": []}))
        .await;
    assert_eq!(status, 400);
    let (status, _) = s
        .post(
            "/api/auth/capability",
            Some(&token),
            json!({"scope": ["root"]}),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn rooms_visibility_and_members() {
    let s = TestServer::start().await;
    let (alice, a) = s.register("alice").await;
    let (bob, b) = s.register("bob").await;
    let public = s.create_room(&a, "general", "public").await;
    let private = s.create_room(&a, "secret", "private").await;

    let (status, body) = s.get(&format!("/api/rooms/{public}"), &b).await;
    assert_eq!(status, 200);
    let room = &body["room"];
    assert_eq!(room["visibility"], "public");
    assert_eq!(room["created_by"], alice["id"]);
    assert_eq!(room["member_count"], 1);
    assert!(room.get("topic").is_some());

    let (status, body) = s.get(&format!("/api/rooms/{private}"), &b).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("not_found"))
    );
    let (_, body) = s.get("/api/rooms", &b).await;
    let names: Vec<&str> = body["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["general"]);
    let (_, body) = s.get("/api/rooms", &a).await;
    assert_eq!(body["rooms"].as_array().expect("rooms").len(), 2);

    // Members only for history.
    let (status, body) = s.get(&format!("/api/rooms/{public}/messages"), &b).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("forbidden"))
    );

    // Join over HTTP, then the member list shows both with roles and presence.
    let (status, _) = s
        .post(&format!("/api/rooms/{public}/join"), Some(&b), json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, body) = s.get(&format!("/api/rooms/{public}/members"), &b).await;
    assert_eq!(status, 200);
    let members = body["members"].as_array().expect("members");
    assert_eq!(members.len(), 2);
    assert_eq!(members[0]["user"], alice);
    assert_eq!(members[0]["role"], "owner");
    assert_eq!(members[1]["user"], bob);
    assert_eq!(members[1]["role"], "member");
    assert_eq!(members[1]["presence"], "offline");
    assert!(members[1]["joined_at"].is_string());

    // Private rooms: joining needs an invitation by the owner or an admin.
    let (status, _) = s
        .post(&format!("/api/rooms/{private}/join"), Some(&b), json!({}))
        .await;
    assert_eq!(status, 404);
    let (status, body) = s
        .post(
            &format!("/api/rooms/{private}/members"),
            Some(&a),
            json!({"username": "bob"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = s.get(&format!("/api/rooms/{private}"), &b).await;
    assert_eq!(status, 200);

    // Bad ids are 400, not 500.
    let (status, body) = s.get("/api/rooms/not-a-uuid", &a).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!("invalid_request"))
    );
    // Bad bodies are 400.
    let (status, _) = s.post("/api/rooms", Some(&a), json!({"name": ""})).await;
    assert_eq!(status, 400);
    let (status, _) = s
        .post(
            "/api/rooms",
            Some(&a),
            json!({"name": "x", "visibility": "secret"}),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn room_management_by_role() {
    let s = TestServer::start().await;
    let (_, a) = s.register("alice").await;
    let (bob, b) = s.register("bob").await;
    let (carol, c) = s.register("carol").await;
    let room = s.create_room(&a, "team", "private").await;
    for name in ["bob", "carol"] {
        let (status, _) = s
            .post(
                &format!("/api/rooms/{room}/members"),
                Some(&a),
                json!({"username": name}),
            )
            .await;
        assert_eq!(status, 201);
    }
    // A plain member cannot rename, invite, or remove.
    let (status, _) = s
        .call(
            Method::PATCH,
            &format!("/api/rooms/{room}"),
            Some(&b),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(status, 403);
    // The owner makes bob an admin; bob renames and sets the topic.
    let (status, body) = s
        .call(
            Method::PATCH,
            &format!(
                "/api/rooms/{room}/members/{}",
                bob["id"].as_str().expect("id")
            ),
            Some(&a),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(
        (status, body["member"]["role"].clone()),
        (200, json!("admin"))
    );
    let (status, body) = s
        .call(
            Method::PATCH,
            &format!("/api/rooms/{room}"),
            Some(&b),
            Some(json!({"name": "team-2", "topic": "launch"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room"]["name"], "team-2");
    assert_eq!(body["room"]["topic"], "launch");
    // Only the owner changes visibility.
    let (status, _) = s
        .call(
            Method::PATCH,
            &format!("/api/rooms/{room}"),
            Some(&b),
            Some(json!({"visibility": "public"})),
        )
        .await;
    assert_eq!(status, 403);
    // The admin removes carol; carol no longer sees the room.
    let carol_id = carol["id"].as_str().expect("id");
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/api/rooms/{room}/members/{carol_id}"),
            Some(&b),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = s.get(&format!("/api/rooms/{room}"), &c).await;
    assert_eq!(status, 404);
    // The owner cannot leave; only the owner deletes.
    let (status, _) = s
        .post(&format!("/api/rooms/{room}/leave"), Some(&a), json!({}))
        .await;
    assert_eq!(status, 409);
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/api/rooms/{room}"),
            Some(&b),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/api/rooms/{room}"),
            Some(&a),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = s.get(&format!("/api/rooms/{room}"), &a).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn devices_can_be_revoked() {
    let s = TestServer::start().await;
    let (_, first) = s.register("alice").await;
    let (_, body) = s
        .post(
            "/api/auth/login",
            None,
            json!({"username": "alice", "password": "correct horse battery", "device_name": "phone"}),
        )
        .await;
    let phone = body["token"].as_str().expect("token").to_owned();
    let phone_device = body["device_id"].as_str().expect("device").to_owned();
    let mut ws = s.ws(&phone).await;

    let (status, body) = s.get("/api/auth/devices", &first).await;
    assert_eq!(status, 200);
    assert_eq!(body["devices"].as_array().expect("devices").len(), 2);
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/api/auth/devices/{phone_device}"),
            Some(&first),
            None,
        )
        .await;
    assert_eq!(status, 204);
    // The phone's token stops working and its connection is closed (1008).
    let (status, _) = s.get("/api/auth/me", &phone).await;
    assert_eq!(status, 401);
    assert_eq!(ws.closed().await, Some(1008));
    let (status, _) = s.get("/api/auth/me", &first).await;
    assert_eq!(status, 200);
}
