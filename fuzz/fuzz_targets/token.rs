//! Tokens: an arbitrary string verified as an access token
//! (`JwtAuthenticator::authenticate`, what every HTTP request and WebSocket
//! upgrade does), as a capability token and as a P2P session token
//! (`TokenVerifier`, what agents do offline), with a real key ring.
//!
//! The first byte picks the mode:
//!
//! - even: the rest is the token. Nobody without the key can sign, so any
//!   acceptance must be a token that an independent check (EdDSA over the
//!   first two parts with the ring's public key, `kid` naming it) finds
//!   genuinely signed; every other string is refused, never a panic.
//! - odd: the rest is a claims object that the ring signs, as an insider
//!   with the key could. Whatever the claims, a token is accepted only as
//!   the kind its `typ` names, with `iss` "mesh" and an integer `exp` in
//!   the future.
//!
//! The ring's key is fixed (so the corpus can hold tokens of its `kid`) and
//! loaded the way the server loads it, from a key folder.

#![no_main]

use std::sync::{Arc, OnceLock};

use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use libfuzzer_sys::fuzz_target;
use mesh_core::auth::{Authenticator, JwtAuthenticator, KeyRing, TokenVerifier};
use mesh_core::protocol::Timestamp;
use serde_json::Value;

/// 2026-09-21: the corpus's genuine tokens are valid then.
const NOW_MS: i64 = 1_790_000_000_000;

struct Keys {
    auth: JwtAuthenticator,
    verifier: TokenVerifier,
    ring: Arc<KeyRing>,
    public: VerifyingKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let secret = SigningKey::from_bytes(&[0x6d; 32]);
        let dir = std::env::temp_dir().join(format!("mesh-fuzz-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("key folder");
        let pem = secret.to_pkcs8_pem(LineEnding::LF).expect("pem");
        std::fs::write(dir.join("ed25519-fuzz.pem"), pem.as_bytes()).expect("key file");
        let ring = Arc::new(KeyRing::load_or_generate(&dir).expect("key ring"));
        let _ = std::fs::remove_dir_all(&dir);
        Keys {
            auth: JwtAuthenticator::new(ring.clone()).with_token_cache(0),
            verifier: ring.verifier(),
            public: secret.verifying_key(),
            ring,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let keys = keys();
    let now = Timestamp::from_unix_millis(NOW_MS);
    if mode % 2 == 0 {
        let Ok(token) = std::str::from_utf8(rest) else {
            return;
        };
        let results = [
            keys.auth.authenticate(token, now).is_ok(),
            keys.verifier.verify_capability(token, now).is_ok(),
            keys.verifier.verify_session(token, now).is_ok(),
        ];
        if results.iter().any(|ok| *ok) {
            assert!(genuinely_signed(keys, token), "accepted a forgery: {token}");
        }
        // Errors are errors of the caller, never ours.
        if let Err(e) = keys.auth.authenticate(token, now) {
            assert!(e.is_credential_error(), "{e:?}");
        }
    } else {
        let Ok(claims) = serde_json::from_slice::<Value>(rest) else {
            return;
        };
        let token = keys.ring.sign(&claims).expect("the ring signs any JSON");
        let typ = claims.get("typ").and_then(Value::as_str);
        let fresh = claims.get("iss").and_then(Value::as_str) == Some("mesh")
            && claims
                .get("exp")
                .and_then(Value::as_i64)
                .is_some_and(|exp| exp > now.unix_seconds());
        let access = keys.auth.authenticate(&token, now);
        if let Ok(identity) = &access {
            assert!(fresh, "accepted stale or foreign claims: {claims}");
            match typ {
                Some("access") => assert!(identity.scope.is_none()),
                Some("capability") => assert!(identity.scope.is_some()),
                other => panic!("a {other:?} token accepted as a bearer token: {claims}"),
            }
        }
        if keys.verifier.verify_capability(&token, now).is_ok() {
            assert!(fresh && typ == Some("capability"), "{claims}");
        }
        if keys.verifier.verify_session(&token, now).is_ok() {
            assert!(fresh && typ == Some("p2p_session"), "{claims}");
        }
    }
});

/// An independent check that `token` is an EdDSA JWT signed by our key.
fn genuinely_signed(keys: &Keys, token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Some(header) = b64url(h).and_then(|b| serde_json::from_slice::<Value>(&b).ok()) else {
        return false;
    };
    if header.get("alg").and_then(Value::as_str) != Some("EdDSA")
        || header.get("kid").and_then(Value::as_str) != Some(keys.ring.current_kid())
    {
        return false;
    }
    let Some(sig) = b64url(s).and_then(|b| Signature::from_slice(&b).ok()) else {
        return false;
    };
    keys.public
        .verify_strict(format!("{h}.{p}").as_bytes(), &sig)
        .is_ok()
}

/// base64url, padding optional; `None` for anything else.
fn b64url(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}
