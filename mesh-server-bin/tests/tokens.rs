//! Forged and confused tokens, tried from outside: over HTTP and at the
//! WebSocket upgrade (`/ws?token=…` and the `Authorization` header).
//!
//! Every forgery must be answered 401 with the contract's error body, and
//! the upgrade must be refused before it happens. Each case is tried next to
//! the genuine token it was made from, which must still pass, so a server
//! refusing everything would fail here too.
//!
//! Some cases need a token signed with the server's own key but carrying bad
//! claims (`exp` as a string, no `exp`, an expired one): nobody outside can
//! make those, so the test loads the key ring from the server's data folder,
//! as an insider with a stolen key would, and shows that the claims are
//! checked anyway.

mod common;

use common::TestServer;
use ed25519_dalek::{Signer, SigningKey};
use mesh_core::auth::{KeyRing, TokenVerifier};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// base64url without padding (RFC 7515's encoding).
fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn b64url_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        other => panic!("not base64url: {other}"),
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        acc = (acc << 6) | u32::from(value(c));
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn parts(token: &str) -> [String; 3] {
    let p: Vec<&str> = token.split('.').collect();
    assert_eq!(p.len(), 3, "a compact JWT: {token}");
    [p[0].to_owned(), p[1].to_owned(), p[2].to_owned()]
}

fn claims_of(token: &str) -> Value {
    serde_json::from_slice(&b64url_decode(&parts(token)[1])).expect("claims JSON")
}

/// A JWT with this header and these claims, EdDSA-signed with `key`.
fn ed_sign(key: &SigningKey, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", b64url(&sig.to_bytes()))
}

/// A key that is not the server's.
fn foreign_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Asserts the contract's 401: status, `{"error": {"code": "unauthorized", "message"}}`.
fn assert_unauthorized(what: &str, status: u16, body: &Value) {
    assert_eq!(status, 401, "{what}: {body}");
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("{what}: {body}"));
    assert_eq!(error.len(), 2, "{what}: only code and message: {body}");
    assert_eq!(error["code"], "unauthorized", "{what}: {body}");
    assert!(error["message"].is_string(), "{what}: {body}");
}

/// Sends `Authorization: <value>` as raw bytes (reqwest's `bearer_auth`
/// would refuse some of the garbage).
async fn http_with(s: &TestServer, method: Method, path: &str, auth: &str) -> (u16, Value) {
    let resp = s
        .http
        .request(method, s.url(path))
        .header(
            "authorization",
            HeaderValue::from_bytes(auth.as_bytes()).expect("header value"),
        )
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    (status, body)
}

/// What the upgrade answered: the HTTP status and JSON body of a refusal,
/// or 101 when the WebSocket opened.
async fn ws_status(s: &TestServer, token: &str, in_header: bool) -> (u16, Value) {
    let mut request = if in_header {
        let mut r = format!("ws://{}/ws", s.addr)
            .into_client_request()
            .expect("request");
        r.headers_mut().insert(
            "authorization",
            HeaderValue::from_bytes(format!("Bearer {token}").as_bytes()).expect("header"),
        );
        r
    } else {
        format!("ws://{}/ws?token={}", s.addr, query_escape(token))
            .into_client_request()
            .expect("request")
    };
    // Keep the request small enough for any token the cases build.
    request.headers_mut().remove("sec-websocket-extensions");
    match tokio_tungstenite::connect_async(request).await {
        Ok((mut ws, response)) => {
            let _ = ws.close(None).await;
            (response.status().as_u16(), Value::Null)
        }
        Err(WsError::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .map(|b| serde_json::from_slice(b).expect("JSON refusal"))
                .unwrap_or(Value::Null);
            (resp.status().as_u16(), body)
        }
        Err(other) => panic!("expected an HTTP answer to the upgrade, got {other:?}"),
    }
}

/// Tries `token` as a bearer token over HTTP (two routes) and at the
/// upgrade (query and header): 401 everywhere.
async fn refused_everywhere(s: &TestServer, what: &str, token: &str) {
    for path in ["/api/auth/me", "/api/rooms"] {
        let (status, body) = http_with(s, Method::GET, path, &format!("Bearer {token}")).await;
        assert_unauthorized(&format!("{what} GET {path}"), status, &body);
    }
    for in_header in [false, true] {
        let (status, body) = ws_status(s, token, in_header).await;
        assert_unauthorized(
            &format!("{what} at the upgrade (header: {in_header})"),
            status,
            &body,
        );
    }
}

/// The genuine token works over HTTP and at the upgrade: the control case.
async fn accepted_everywhere(s: &TestServer, token: &str) {
    let (status, body) = s.get("/api/auth/me", token).await;
    assert_eq!(status, 200, "{body}");
    for in_header in [false, true] {
        assert_eq!(ws_status(s, token, in_header).await.0, 101);
    }
}

struct Setup {
    s: TestServer,
    /// The server's own keys, loaded from its data folder.
    ring: KeyRing,
    /// The server's published key set.
    jwks: Value,
    token: String,
    claims: Value,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = TestServer::start_with(mesh_server_bin::Config::new(dir.path()), None).await;
    let (_, token) = s.register("alice").await;
    let ring = KeyRing::load_or_generate(&dir.path().join("keys")).expect("the server's keys");
    let (status, jwks) = s.call(Method::GET, "/api/auth/keys", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(jwks["keys"][0]["kid"], ring.current_kid(), "the same ring");
    let claims = claims_of(&token);
    Setup {
        s,
        ring,
        jwks,
        token,
        claims,
        _dir: dir,
    }
}

#[tokio::test]
async fn forged_algorithms_are_refused() {
    let Setup {
        s,
        ring,
        jwks,
        token,
        ..
    } = setup().await;
    accepted_everywhere(&s, &token).await;
    let [_, payload, signature] = parts(&token);
    let kid = ring.current_kid().to_owned();

    // `alg: none` (in every case), with and without our kid, with no
    // signature and with the genuine one.
    for alg in ["none", "None", "NONE", "nOnE"] {
        for header in [
            json!({"alg": alg, "typ": "JWT"}),
            json!({"alg": alg, "typ": "JWT", "kid": kid}),
        ] {
            let h = b64url(header.to_string().as_bytes());
            for sig in ["", signature.as_str()] {
                let forged = format!("{h}.{payload}.{sig}");
                refused_everywhere(&s, &format!("alg {alg} {header} sig {sig:?}"), &forged).await;
            }
        }
    }

    // HS256 (and its siblings) keyed with the server's public key: the raw
    // 32 bytes, and the base64url text as published.
    let x = jwks["keys"][0]["x"].as_str().expect("x").to_owned();
    let raw = b64url_decode(&x);
    assert_eq!(raw.len(), 32);
    for alg in [
        jsonwebtoken::Algorithm::HS256,
        jsonwebtoken::Algorithm::HS384,
        jsonwebtoken::Algorithm::HS512,
    ] {
        for secret in [raw.as_slice(), x.as_bytes()] {
            let mut header = jsonwebtoken::Header::new(alg);
            header.kid = Some(kid.clone());
            let forged = jsonwebtoken::encode(
                &header,
                &claims_of(&token),
                &jsonwebtoken::EncodingKey::from_secret(secret),
            )
            .expect("HMAC token");
            refused_everywhere(&s, &format!("{alg:?} keyed with the public key"), &forged).await;
        }
    }

    // EdDSA with the algorithm left out.
    let forged = ed_sign(
        &foreign_key(1),
        &json!({"typ": "JWT", "kid": kid}),
        &claims_of(&token),
    );
    refused_everywhere(&s, "no alg", &forged).await;
    accepted_everywhere(&s, &token).await;
}

#[tokio::test]
async fn unknown_and_injected_kids_are_refused() {
    let Setup {
        s,
        ring,
        token,
        claims,
        ..
    } = setup().await;
    let ours = ring.current_kid().to_owned();
    let key = foreign_key(2);
    let long = "k".repeat(4000);
    let kids: Vec<Value> = vec![
        json!("0011223344556677"),
        json!(format!("{ours}0")),
        json!(ours.to_uppercase()),
        json!(format!(" {ours}")),
        json!("../../etc/passwd"),
        json!(format!("../keys/ed25519-{ours}.pem")),
        json!(format!("/proc/self/cwd/keys/ed25519-{ours}")),
        json!("https://attacker.invalid/jwks.json"),
        json!("file:///etc/passwd"),
        json!("' OR '1'='1"),
        json!("\u{0000}"),
        json!(""),
        json!(long),
        json!(null),
        json!(7),
        json!([ours]),
        json!({"kid": ours}),
    ];
    for kid in kids {
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
        let forged = ed_sign(&key, &header, &claims);
        let label: String = kid.to_string().chars().take(60).collect();
        refused_everywhere(&s, &format!("kid {label}"), &forged).await;
    }
    // No kid at all, signed by another key and by ours (our own key must
    // still name itself).
    let header = json!({"alg": "EdDSA", "typ": "JWT"});
    refused_everywhere(&s, "no kid", &ed_sign(&key, &header, &claims)).await;
    accepted_everywhere(&s, &token).await;
}

#[tokio::test]
async fn another_servers_key_is_refused() {
    let Setup {
        s,
        ring,
        token,
        claims,
        ..
    } = setup().await;
    // Another mesh server's ring, its own kid: an unknown kid here.
    let other = KeyRing::generate().expect("another ring");
    let theirs = other.sign(&claims).expect("sign");
    refused_everywhere(&s, "another server's token", &theirs).await;
    // Another key under our kid: the signature does not check.
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": ring.current_kid()});
    let relabelled = ed_sign(&foreign_key(3), &header, &claims);
    refused_everywhere(&s, "another key under our kid", &relabelled).await;
    accepted_everywhere(&s, &token).await;
}

#[tokio::test]
async fn tampered_and_garbage_tokens_are_refused() {
    let Setup {
        s, token, claims, ..
    } = setup().await;
    let (bob, _) = s.register("bob").await;
    let [header, payload, signature] = parts(&token);

    // Edited claims under the genuine signature.
    let mut edits = Vec::new();
    for (field, value) in [
        ("sub", bob["id"].clone()),
        ("exp", json!(i64::MAX)),
        ("typ", json!("capability")),
        ("iss", json!("elsewhere")),
    ] {
        let mut c = claims.clone();
        c[field] = value;
        edits.push((field.to_owned(), c));
    }
    let mut extra = claims.clone();
    extra["scope"] = json!(["rooms:read"]);
    edits.push(("an added claim".into(), extra));
    for (what, c) in edits {
        let forged = format!("{header}.{}.{signature}", b64url(c.to_string().as_bytes()));
        refused_everywhere(&s, &format!("tampered {what}"), &forged).await;
    }

    // A flipped bit in each part; a signature cut short, doubled, or gone.
    for i in 0..3 {
        let mut p = parts(&token);
        let mut bytes = b64url_decode(&p[i]);
        bytes[4] ^= 1;
        p[i] = b64url(&bytes);
        refused_everywhere(&s, &format!("bit flip in part {i}"), &p.join(".")).await;
    }
    for sig in [
        &signature[..signature.len() - 2],
        &format!("{signature}{signature}"),
        "",
    ] {
        refused_everywhere(&s, "bad signature", &format!("{header}.{payload}.{sig}")).await;
    }

    // Garbage.
    let huge = "a".repeat(9000);
    for junk in [
        "",
        " ",
        "null",
        "garbage",
        "a.b",
        "a.b.c",
        "...",
        "..",
        "e30.e30.",
        "e30.e30.e30",
        &format!("{token}.x"),
        &format!("{header}.{payload}"),
        &format!("{header}..{signature}"),
        &format!("Bearer {token}"),
        "\u{00e9}\u{00e9}.\u{00e9}.\u{00e9}",
        &huge,
    ] {
        refused_everywhere(
            &s,
            &format!("garbage {:?}", &junk[..junk.len().min(40)]),
            junk,
        )
        .await;
    }

    // No token, or another scheme.
    for auth in [
        String::new(),
        "Bearer".into(),
        format!("Basic {token}"),
        format!("Token {token}"),
        token.clone(),
    ] {
        let (status, body) = http_with(&s, Method::GET, "/api/auth/me", &auth).await;
        assert_unauthorized(&format!("Authorization: {auth:.20}"), status, &body);
    }
    let (status, body) = s.call(Method::GET, "/api/auth/me", None, None).await;
    assert_unauthorized("no Authorization", status, &body);
    accepted_everywhere(&s, &token).await;
}

#[tokio::test]
async fn bad_claims_under_the_servers_own_key_are_refused() {
    let Setup {
        s,
        ring,
        token,
        claims,
        ..
    } = setup().await;
    let now = claims["iat"].as_i64().expect("iat");
    let exp = claims["exp"].as_i64().expect("exp");
    let with = |field: &str, value: Value| {
        let mut c = claims.clone();
        c[field] = value;
        c
    };
    let without = |field: &str| {
        let mut c = claims.clone();
        c.as_object_mut().expect("object").remove(field);
        c
    };
    // Control: the same claims re-signed by the ring pass, so each refusal
    // below is the claim's doing.
    accepted_everywhere(&s, &ring.sign(&claims).expect("sign")).await;

    let cases: Vec<(&str, Value)> = vec![
        ("exp as a string", with("exp", json!(exp.to_string()))),
        (
            "exp as a far-future string",
            with("exp", json!("99999999999")),
        ),
        ("exp as a float", with("exp", json!(exp as f64 + 0.5))),
        ("exp null", with("exp", Value::Null)),
        ("exp in an array", with("exp", json!([exp]))),
        ("no exp", without("exp")),
        ("expired a second ago", with("exp", json!(now - 1))),
        ("expired long ago", with("exp", json!(1))),
        ("exp 0", with("exp", json!(0))),
        ("exp negative", with("exp", json!(i64::MIN))),
        ("no typ", without("typ")),
        ("typ unknown", with("typ", json!("admin"))),
        ("typ in capitals", with("typ", json!("ACCESS"))),
        ("no iss", without("iss")),
        ("iss elsewhere", with("iss", json!("mesh.example"))),
        ("no sub", without("sub")),
        ("sub not a UUID", with("sub", json!("alice"))),
        ("no did", without("did")),
        ("did not a UUID", with("did", json!(7))),
        ("a P2P session's claims", with("typ", json!("p2p_session"))),
        // A capability without a scope is not a wider one.
        (
            "a capability with no scope",
            with("typ", json!("capability")),
        ),
        ("claims not an object", json!([claims.clone()])),
    ];
    for (what, c) in cases {
        let forged = ring.sign(&c).expect("sign");
        refused_everywhere(&s, what, &forged).await;
    }
    accepted_everywhere(&s, &token).await;
}

#[tokio::test]
async fn a_token_of_one_kind_is_never_accepted_as_another() {
    let s = TestServer::start().await;
    let (_, a) = s.register("alice").await;
    let (_, b) = s.register("bob").await;
    let room = s.create_room(&a, "general", "public").await;
    let mut wa = s.ws(&a).await;
    let mut wb = s.ws(&b).await;
    let joined = wb.request("room.join", json!({"room_id": room}), "j").await;
    assert_eq!(joined["type"], "room.joined", "{joined}");
    wa.expect("room.joined").await;

    // A P2P session token, issued for real, is no bearer token.
    let (status, body) = s
        .post(
            "/api/p2p/session",
            Some(&a),
            json!({"room_id": room, "target_peer_id": wb.peer_id, "kind": "file"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let session_token = body["session_token"].as_str().expect("token").to_owned();
    assert_eq!(claims_of(&session_token)["typ"], "p2p_session");
    refused_everywhere(&s, "P2P session token as a bearer token", &session_token).await;

    // A capability token is a bearer token for its scope only: past it, the
    // contract's 403 (a genuine token, not enough rights), never the full
    // access an access token has. Without `messages:write` the upgrade is
    // refused before it happens.
    let (status, body) = s
        .post(
            "/api/auth/capability",
            Some(&a),
            json!({"scope": ["rooms:read"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let capability = body["capability_token"].as_str().expect("token").to_owned();
    assert_eq!(claims_of(&capability)["typ"], "capability");
    let (status, _) = s.get("/api/rooms", &capability).await;
    assert_eq!(status, 200, "within its scope");
    let forbidden = |what: &str, status: u16, body: &Value| {
        assert_eq!(status, 403, "{what}: {body}");
        assert_eq!(body["error"]["code"], "forbidden", "{what}: {body}");
    };
    let (status, body) = s
        .get(&format!("/api/rooms/{room}/messages"), &capability)
        .await;
    forbidden("history", status, &body);
    let (status, body) = s
        .post(
            "/api/auth/capability",
            Some(&capability),
            json!({"scope": ["messages:write"]}),
        )
        .await;
    forbidden("widening", status, &body);
    let (_, devices) = s.get("/api/auth/devices", &a).await;
    let device = devices["devices"][0]["id"].as_str().expect("device");
    let (status, body) = s
        .call(
            Method::DELETE,
            &format!("/api/auth/devices/{device}"),
            Some(&capability),
            None,
        )
        .await;
    forbidden("revoking a device", status, &body);
    for in_header in [false, true] {
        let (status, body) = ws_status(&s, &capability, in_header).await;
        forbidden("the upgrade", status, &body);
    }
    // Relabelled as an access token, it is a forgery.
    let [h, _, sig] = parts(&capability);
    let mut c = claims_of(&capability);
    c["typ"] = json!("access");
    c.as_object_mut().expect("object").remove("scope");
    let relabelled = format!("{h}.{}.{sig}", b64url(c.to_string().as_bytes()));
    refused_everywhere(&s, "capability relabelled as access", &relabelled).await;

    // The other way round: an agent checking capability or session tokens
    // offline from the published keys refuses an access token, and each
    // refuses the other kind.
    let (_, jwks) = s.call(Method::GET, "/api/auth/keys", None, None).await;
    let verifier = TokenVerifier::from_jwks(&jwks).expect("verifier");
    let now = mesh_core::protocol::Timestamp::now();
    assert!(verifier.verify_capability(&capability, now).is_ok());
    assert!(verifier.verify_session(&session_token, now).is_ok());
    assert!(
        verifier.verify_capability(&a, now).is_err(),
        "access as capability"
    );
    assert!(
        verifier.verify_session(&a, now).is_err(),
        "access as session"
    );
    assert!(verifier.verify_capability(&session_token, now).is_err());
    assert!(verifier.verify_session(&capability, now).is_err());
    accepted_everywhere(&s, &a).await;
}

#[tokio::test]
async fn tokens_of_a_revoked_device_are_refused() {
    let s = TestServer::start().await;
    let (_, first) = s.register("alice").await;
    let (status, body) = s
        .post(
            "/api/auth/login",
            None,
            json!({"username": "alice", "password": "correct horse battery", "device_name": "phone"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let phone = body["token"].as_str().expect("token").to_owned();
    let phone_device = body["device_id"].as_str().expect("device").to_owned();
    // A capability the phone made before it was revoked.
    let (status, body) = s
        .post(
            "/api/auth/capability",
            Some(&phone),
            json!({"scope": ["rooms:read", "messages:write"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let capability = body["capability_token"].as_str().expect("token").to_owned();
    accepted_everywhere(&s, &phone).await;
    assert_eq!(ws_status(&s, &capability, false).await.0, 101);

    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/api/auth/devices/{phone_device}"),
            Some(&first),
            None,
        )
        .await;
    assert_eq!(status, 204);
    refused_everywhere(&s, "a revoked device's access token", &phone).await;
    refused_everywhere(&s, "a revoked device's capability token", &capability).await;
    accepted_everywhere(&s, &first).await;
}
