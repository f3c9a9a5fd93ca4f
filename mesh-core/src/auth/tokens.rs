//! Token claims, issuing, and offline verification.
//!
//! Every token mesh signs is an EdDSA (Ed25519) JWT whose header names its
//! key (`kid`). Three rules hold whatever the token:
//!
//! - **EdDSA only, known `kid` only.** The header's `alg` is checked against
//!   EdDSA *before* any key is used, so neither `alg: none` nor algorithm
//!   confusion (an `HS256` token "signed" with the public key as an HMAC
//!   secret) can pass. Asymmetric keys are what let agents verify capability
//!   and P2P session tokens offline from the published JWK Set
//!   ([`TokenVerifier::from_jwks`]) without being able to sign.
//! - **A `typ` claim on every token** ([`TokenKind`]): all kinds are signed by
//!   the same key, so without it a P2P session token handed to an agent could
//!   be replayed as a bearer token, or an access token accepted where a
//!   session token is expected. Every check names the kind it wants.
//! - **Expiry is checked here, against an injected `now`**, not by
//!   `jsonwebtoken` (whose check reads the system clock and allows 60 s of
//!   leeway). A token is accepted while `now < exp` (whole seconds), no
//!   leeway, which keeps expiry exact and testable with a virtual clock.
//!
//! The verification code is shared: [`KeyRing::verify`](super::KeyRing::verify) delegates to a
//! [`TokenVerifier`] built from the ring's own JWK Set, so the server and
//! agents check tokens the same way.

use std::collections::HashMap;
use std::fmt;

use ed25519_dalek::VerifyingKey;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::AuthError;
#[cfg(feature = "server")]
pub use super::issue::{MAX_CAPABILITY_TTL, issue_capability, issue_session_token};
use crate::Failure;
use crate::protocol::{DeviceId, PeerId, RoomId, SessionId, SessionKind, Timestamp, UserId};

/// The `iss` of every token a mesh server signs.
pub const ISSUER: &str = "mesh";

/// What a token is for (its `typ` claim).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// `access`: a device's bearer token, full access.
    Access,
    /// `capability`: a short-lived bearer token limited to a [`Scope`].
    Capability,
    /// `p2p_session`: authorises one P2P session; checked by agents, never
    /// a bearer token.
    P2pSession,
}

// What a capability token allows is wire vocabulary (`scope` in
// `POST /api/auth/token`): it lives in `protocol`.
pub use crate::protocol::Scope;

/// Claims of an access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Always [`ISSUER`].
    pub iss: String,
    /// The token kind: a token is only ever accepted as its own kind.
    pub typ: TokenKind,
    /// The user.
    pub sub: UserId,
    /// The device the token was issued to.
    pub did: DeviceId,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds: accepted while `now < exp`.
    pub exp: i64,
}

/// Claims of a capability token: a short-lived token scoped down from an
/// access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityClaims {
    /// Always [`ISSUER`].
    pub iss: String,
    /// The token kind: a token is only ever accepted as its own kind.
    pub typ: TokenKind,
    /// The user.
    pub sub: UserId,
    /// The device the token was issued to.
    pub did: DeviceId,
    /// What the token allows; never empty.
    pub scope: Vec<Scope>,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds: accepted while `now < exp`.
    pub exp: i64,
}

/// Claims of a P2P session token: names the session, its kind and both peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// Always [`ISSUER`].
    pub iss: String,
    /// The token kind: a token is only ever accepted as its own kind.
    pub typ: TokenKind,
    /// The session.
    pub sid: SessionId,
    /// What the session carries.
    pub kind: SessionKind,
    /// The room the session was requested in.
    pub room_id: RoomId,
    /// The connection that requested the session.
    pub initiator_peer_id: PeerId,
    /// The connection asked to accept it.
    pub target_peer_id: PeerId,
    /// The user behind `initiator_peer_id`.
    pub initiator_user_id: UserId,
    /// The user behind `target_peer_id`.
    pub target_user_id: UserId,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds: accepted while `now < exp`.
    pub exp: i64,
}

/// A signed token and when it expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedToken {
    /// The compact JWT.
    pub token: String,
    /// When the token stops being accepted (its `exp`, whole seconds).
    pub expires_at: Timestamp,
}

/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The claims every mesh token carries, checked the same way for all kinds.
pub(super) trait StandardClaims {
    fn iss(&self) -> &str;
    fn typ(&self) -> TokenKind;
    fn exp(&self) -> i64;

    /// Checks `typ`, `iss` and `exp` (accepted while `now < exp`).
    fn check(&self, want: TokenKind, now: Timestamp) -> Result<(), AuthError> {
        if self.typ() != want {
            return Err(wrong_kind(want, self.typ()));
        }
        if self.iss() != ISSUER {
            return Err(AuthError::InvalidToken("unknown issuer".into()));
        }
        if self.exp() <= now.unix_seconds() {
            return Err(AuthError::Expired);
        }
        Ok(())
    }
}

fn wrong_kind(want: TokenKind, got: TokenKind) -> AuthError {
    AuthError::InvalidToken(format!(
        "expected a {} token, got a {} token",
        kind_name(want),
        kind_name(got)
    ))
}

/// The `typ` of verified claims, read before they are decoded as one kind.
pub(super) fn read_typ(raw: &serde_json::Value) -> Result<TokenKind, AuthError> {
    let typ = raw
        .get("typ")
        .ok_or_else(|| AuthError::InvalidToken("no typ claim".into()))?;
    TokenKind::deserialize(typ).map_err(invalid)
}

fn kind_name(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Access => "access",
        TokenKind::Capability => "capability",
        TokenKind::P2pSession => "P2P session",
    }
}

macro_rules! standard_claims {
    ($($t:ty),*) => {$(
        impl StandardClaims for $t {
            fn iss(&self) -> &str { &self.iss }
            fn typ(&self) -> TokenKind { self.typ }
            fn exp(&self) -> i64 { self.exp }
        }
    )*};
}
standard_claims!(AccessClaims, CapabilityClaims, SessionClaims);

/// Verifies capability and P2P session tokens offline, from a JWK Set.
///
/// Holds public keys only; cheap to clone. The default verifier knows no
/// key and refuses every token.
#[derive(Clone, Default)]
pub struct TokenVerifier {
    keys: HashMap<String, DecodingKey>,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("TokenVerifier")
            .field("kids", &kids)
            .finish()
    }
}

pub(super) fn invalid(e: impl fmt::Display) -> AuthError {
    AuthError::InvalidToken(e.to_string())
}

impl TokenVerifier {
    /// Builds a verifier from `GET /api/auth/keys`' answer.
    ///
    /// Keys other than `"kty": "OKP", "crv": "Ed25519"`, keys whose `alg`
    /// is set to something else than `EdDSA` or whose `use` is not `sig`,
    /// and keys without a `kid` are ignored. A malformed Ed25519 key, or two
    /// different keys under one `kid`, is an error.
    pub fn from_jwks(jwks: &serde_json::Value) -> Result<Self, AuthError> {
        let not_a_set = || AuthError::Key("not a JWK Set: no \"keys\" array".into());
        let list = jwks
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(not_a_set)?;
        let mut keys: HashMap<String, DecodingKey> = HashMap::new();
        for jwk in list {
            let field = |name: &str| jwk.get(name).and_then(serde_json::Value::as_str);
            if field("kty") != Some("OKP") || field("crv") != Some("Ed25519") {
                continue;
            }
            if field("alg").is_some_and(|a| a != "EdDSA")
                || field("use").is_some_and(|u| u != "sig")
            {
                continue;
            }
            let Some(kid) = field("kid") else { continue };
            let x = field("x")
                .ok_or_else(|| AuthError::Key(format!("JWK {kid:?} has no \"x\"").into()))?;
            let key = ed25519_key(x)
                .map_err(|e| AuthError::Key(Failure::caused_by(format!("JWK {kid:?}"), e)))?;
            match keys.get(kid) {
                Some(known) if known.try_get_as_bytes().ok() != key.try_get_as_bytes().ok() => {
                    return Err(AuthError::Key(
                        format!("two different keys with kid {kid:?}").into(),
                    ));
                }
                Some(_) => {}
                None => {
                    keys.insert(kid.to_owned(), key);
                }
            }
        }
        Ok(Self { keys })
    }

    /// Checks signature, algorithm, `kid`, `typ` and expiry of a P2P session token.
    pub fn verify_session(&self, token: &str, now: Timestamp) -> Result<SessionClaims, AuthError> {
        self.verify_kind(token, TokenKind::P2pSession, now)
    }

    /// Checks signature, algorithm, `kid`, `typ` and expiry of a capability token.
    pub fn verify_capability(
        &self,
        token: &str,
        now: Timestamp,
    ) -> Result<CapabilityClaims, AuthError> {
        self.verify_kind(token, TokenKind::Capability, now)
    }

    /// The `kid`s this verifier knows.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    fn verify_kind<C: DeserializeOwned + StandardClaims>(
        &self,
        token: &str,
        want: TokenKind,
        now: Timestamp,
    ) -> Result<C, AuthError> {
        // The kind first, from claims whose signature is already checked, so
        // a token of another kind gets a clear "wrong kind" error instead of
        // a missing-field one.
        let raw: serde_json::Value = self.decode(token)?;
        let typ = read_typ(&raw)?;
        if typ != want {
            return Err(wrong_kind(want, typ));
        }
        let claims: C = serde_json::from_value(raw).map_err(invalid)?;
        claims.check(want, now)?;
        Ok(claims)
    }

    /// Checks the header (`alg` EdDSA, a known `kid`) and the signature, and
    /// decodes the claims. Does not look at any claim.
    pub(crate) fn decode<C: DeserializeOwned>(&self, token: &str) -> Result<C, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::InvalidToken("token too long".into()));
        }
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::InvalidToken(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| AuthError::InvalidToken("no kid in header".into()))?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| AuthError::InvalidToken("unknown kid".into()))?;
        jsonwebtoken::decode::<C>(token, key, &signature_only())
            .map(|data| data.claims)
            .map_err(invalid)
    }
}

/// A `jsonwebtoken` validation that checks the algorithm and signature and
/// nothing else: claims are checked by [`StandardClaims::check`].
fn signature_only() -> Validation {
    let mut v = Validation::new(Algorithm::EdDSA);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.leeway = 0;
    v
}

/// A verifying key from a JWK's `x`, checked to be a valid Ed25519 point.
fn ed25519_key(x: &str) -> Result<DecodingKey, AuthError> {
    let key = DecodingKey::from_ed_components(x)
        .map_err(|e| AuthError::Key(Failure::caused_by("", e)))?;
    let bytes = key
        .try_get_as_bytes()
        .map_err(|e| AuthError::Key(Failure::caused_by("", e)))?;
    // `jsonwebtoken` slices the first 32 bytes without a length check.
    let bytes: &[u8; 32] = bytes
        .try_into()
        .map_err(|_| AuthError::Key("an Ed25519 key is 32 bytes".into()))?;
    let point =
        VerifyingKey::from_bytes(bytes).map_err(|_| AuthError::Key("not an Ed25519 key".into()))?;
    if point.is_weak() {
        return Err(AuthError::Key("weak Ed25519 key".into()));
    }
    Ok(key)
}

// Every test signs its tokens: they need the server's half.
#[cfg(all(test, feature = "server"))]
mod tests {
    use super::*;
    use crate::auth::{Authenticator, Identity, JwtAuthenticator, KeyRing};
    use crate::protocol::P2pSession;
    use crate::protocol::SessionState;
    use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use std::sync::Arc;
    use std::time::Duration;

    const HOUR: Duration = Duration::from_secs(3600);

    fn now() -> Timestamp {
        Timestamp::from_unix_millis(1_790_000_000_250)
    }

    fn secs(s: i64) -> Duration {
        Duration::from_secs(s.unsigned_abs())
    }

    fn setup() -> (Arc<KeyRing>, JwtAuthenticator) {
        let keys = Arc::new(KeyRing::generate().expect("keys"));
        let auth = JwtAuthenticator::new(keys.clone()).with_access_ttl(HOUR);
        (keys, auth)
    }

    fn full_identity() -> Identity {
        Identity {
            user_id: UserId::new(),
            device_id: DeviceId::new(),
            scope: None,
        }
    }

    fn session(expires_in: Duration) -> P2pSession {
        P2pSession {
            id: SessionId::new(),
            room_id: RoomId::new(),
            kind: SessionKind::File,
            initiator_peer_id: PeerId::new(),
            target_peer_id: PeerId::new(),
            initiator_user_id: UserId::new(),
            target_user_id: UserId::new(),
            state: SessionState::Pending,
            created_at: now(),
            expires_at: now().saturating_add(expires_in),
        }
    }

    /// base64url without padding, borrowing `jsonwebtoken`'s encoder.
    fn b64url(data: &[u8]) -> String {
        match Jwk::from_decoding_key(&DecodingKey::from_secret(data), None)
            .expect("jwk")
            .algorithm
        {
            AlgorithmParameters::OctetKey(p) => p.value,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn parts(token: &str) -> Vec<&str> {
        token.split('.').collect()
    }

    fn public_key_bytes(keys: &KeyRing) -> Vec<u8> {
        let x = keys.jwks()["keys"][0]["x"].as_str().expect("x").to_owned();
        DecodingKey::from_ed_components(&x)
            .expect("x")
            .try_get_as_bytes()
            .expect("bytes")
            .to_vec()
    }

    fn assert_invalid<T: fmt::Debug>(result: Result<T, AuthError>, what: &str) {
        assert!(
            matches!(result, Err(AuthError::InvalidToken(_))),
            "{what}: {result:?}"
        );
    }

    #[test]
    fn access_token_round_trip() {
        let (_, auth) = setup();
        let (user, device) = (UserId::new(), DeviceId::new());
        let issued = auth.issue_access_token(user, device, now()).expect("issue");
        assert_eq!(
            issued.expires_at.unix_seconds(),
            now().saturating_add(HOUR).unix_seconds()
        );
        let identity = auth.authenticate(&issued.token, now()).expect("auth");
        assert_eq!(
            identity,
            Identity {
                user_id: user,
                device_id: device,
                scope: None
            }
        );
        let claims: AccessClaims = auth.keys().verify(&issued.token).expect("claims");
        assert_eq!(
            (claims.iss.as_str(), claims.typ, claims.iat),
            (ISSUER, TokenKind::Access, now().unix_seconds())
        );
    }

    #[test]
    fn remembered_tokens_keep_every_check_but_the_signature() {
        for (auth, cached) in [(setup().1, 1), (setup().1.with_token_cache(0), 0)] {
            let (user, device) = (UserId::new(), DeviceId::new());
            let issued = auth.issue_access_token(user, device, now()).expect("issue");
            let first = auth.authenticate(&issued.token, now()).expect("first");
            assert_eq!(
                auth.verified.len(),
                cached,
                "remembered after the full check"
            );
            // The second time comes from the cache (when there is one):
            // the same identity.
            let second = auth.authenticate(&issued.token, now()).expect("second");
            assert_eq!(second, first);
            // A tampered copy of a remembered token is checked in full.
            let p = parts(&issued.token);
            let forged = format!("{}.{}.{}", p[0], b64url(br#"{"sub":"x"}"#), p[2]);
            assert_invalid(auth.authenticate(&forged, now()), "forged payload");
            let mut sig = p[2].to_owned();
            sig.replace_range(..1, if sig.starts_with('A') { "B" } else { "A" });
            let bad_sig = format!("{}.{}.{sig}", p[0], p[1]);
            assert_invalid(auth.authenticate(&bad_sig, now()), "bad signature");
            assert_eq!(auth.verified.len(), cached, "refusals are not remembered");
            // Remembered or not, it expires at `exp`.
            assert!(matches!(
                auth.authenticate(&issued.token, issued.expires_at),
                Err(AuthError::Expired)
            ));
        }
        // Capability tokens keep their scope.
        let (keys, auth) = setup();
        let cap = issue_capability(
            &keys,
            &full_identity(),
            vec![Scope::MessagesRead],
            Duration::from_secs(60),
            now(),
        )
        .expect("capability");
        for _ in 0..2 {
            let id = auth.authenticate(&cap.token, now()).expect("cap");
            assert_eq!(id.scope, Some(vec![Scope::MessagesRead]));
        }
    }

    #[test]
    fn access_token_expires_exactly_at_exp_by_the_injected_clock() {
        let (_, auth) = setup();
        let issued = auth
            .issue_access_token(UserId::new(), DeviceId::new(), now())
            .expect("issue");
        let exp = issued.expires_at;
        let just_before = Timestamp::from_unix_millis(exp.unix_millis() - 1);
        assert!(auth.authenticate(&issued.token, just_before).is_ok());
        for at in [
            exp,
            exp.saturating_add(secs(1)),
            exp.saturating_add(HOUR * 24 * 365),
        ] {
            assert!(
                matches!(
                    auth.authenticate(&issued.token, at),
                    Err(AuthError::Expired)
                ),
                "at {at}"
            );
        }
    }

    #[test]
    fn capability_round_trip_and_expiry() {
        let (keys, auth) = setup();
        let identity = full_identity();
        let scope = vec![Scope::MessagesRead, Scope::RoomsRead, Scope::MessagesRead];
        let issued =
            issue_capability(&keys, &identity, scope, secs(300), now()).expect("capability");
        assert_eq!(issued.expires_at.unix_seconds(), now().unix_seconds() + 300);

        let got = auth.authenticate(&issued.token, now()).expect("auth");
        assert_eq!(got.user_id, identity.user_id);
        assert_eq!(got.device_id, identity.device_id);
        assert_eq!(got.scope, Some(vec![Scope::MessagesRead, Scope::RoomsRead]));
        assert!(got.allows(Scope::RoomsRead) && !got.allows(Scope::MessagesWrite));

        let claims = keys
            .verifier()
            .verify_capability(&issued.token, now())
            .expect("offline");
        assert_eq!(claims.typ, TokenKind::Capability);
        assert!(matches!(
            keys.verifier()
                .verify_capability(&issued.token, issued.expires_at),
            Err(AuthError::Expired)
        ));
        assert!(matches!(
            auth.authenticate(&issued.token, issued.expires_at),
            Err(AuthError::Expired)
        ));
    }

    #[test]
    fn capability_ttl_is_clamped() {
        let (keys, _) = setup();
        let issued = issue_capability(&keys, &full_identity(), vec![Scope::P2p], HOUR, now())
            .expect("capability");
        assert_eq!(
            issued.expires_at.unix_seconds(),
            now().saturating_add(MAX_CAPABILITY_TTL).unix_seconds()
        );
    }

    #[test]
    fn capability_scope_can_only_narrow() {
        let (keys, auth) = setup();
        // A full access identity may ask for any scope.
        let all = vec![
            Scope::RoomsRead,
            Scope::MessagesRead,
            Scope::MessagesWrite,
            Scope::P2p,
        ];
        let wide = issue_capability(&keys, &full_identity(), all, secs(600), now())
            .expect("from full access");
        let wide = auth.authenticate(&wide.token, now()).expect("wide");

        // A capability identity may narrow further...
        let narrow = Identity {
            scope: Some(vec![Scope::RoomsRead, Scope::MessagesRead]),
            ..wide.clone()
        };
        let narrower = issue_capability(&keys, &narrow, vec![Scope::RoomsRead], secs(60), now())
            .expect("narrower");
        let narrower = auth.authenticate(&narrower.token, now()).expect("auth");
        assert_eq!(narrower.scope, Some(vec![Scope::RoomsRead]));

        // ...but never widen, and never ask for nothing.
        let err = issue_capability(
            &keys,
            &narrower,
            vec![Scope::RoomsRead, Scope::MessagesWrite],
            secs(60),
            now(),
        )
        .expect_err("widening");
        assert!(
            matches!(&err, AuthError::OutOfScope(s) if s == "messages:write"),
            "{err:?}"
        );
        assert!(err.is_credential_error());
        assert!(matches!(
            issue_capability(&keys, &narrow, vec![], secs(60), now()),
            Err(AuthError::OutOfScope(_))
        ));
        assert!(matches!(
            issue_capability(&keys, &full_identity(), vec![], secs(60), now()),
            Err(AuthError::OutOfScope(_))
        ));
    }

    #[test]
    fn session_token_verifies_offline_from_the_published_jwks() {
        let (keys, _) = setup();
        let s = session(secs(120));
        let issued = issue_session_token(&keys, &s, now()).expect("issue");
        assert_eq!(
            issued.expires_at.unix_seconds(),
            s.expires_at.unix_seconds()
        );

        // What an agent does: fetch the JSON, build a verifier, check offline.
        let published = serde_json::to_string(&keys.jwks()).expect("json");
        let fetched: serde_json::Value = serde_json::from_str(&published).expect("parse");
        let verifier = TokenVerifier::from_jwks(&fetched).expect("verifier");
        let claims = verifier
            .verify_session(&issued.token, now())
            .expect("session");
        assert_eq!(
            claims,
            SessionClaims {
                iss: ISSUER.into(),
                typ: TokenKind::P2pSession,
                sid: s.id,
                kind: s.kind,
                room_id: s.room_id,
                initiator_peer_id: s.initiator_peer_id,
                target_peer_id: s.target_peer_id,
                initiator_user_id: s.initiator_user_id,
                target_user_id: s.target_user_id,
                iat: now().unix_seconds(),
                exp: s.expires_at.unix_seconds(),
            }
        );
        assert!(matches!(
            verifier.verify_session(&issued.token, s.expires_at),
            Err(AuthError::Expired)
        ));

        // Another server's key set does not verify it.
        let other = KeyRing::generate().expect("other");
        let foreign = TokenVerifier::from_jwks(&other.jwks()).expect("foreign");
        assert_invalid(foreign.verify_session(&issued.token, now()), "foreign");
        assert_invalid(
            TokenVerifier::default().verify_session(&issued.token, now()),
            "empty verifier",
        );
    }

    #[test]
    fn a_token_of_one_kind_is_never_accepted_as_another() {
        let (keys, auth) = setup();
        let verifier = keys.verifier();
        let session = issue_session_token(&keys, &session(secs(60)), now()).expect("session");
        let access = auth
            .issue_access_token(UserId::new(), DeviceId::new(), now())
            .expect("access");
        let capability =
            issue_capability(&keys, &full_identity(), vec![Scope::P2p], secs(60), now())
                .expect("capability");

        assert_invalid(
            auth.authenticate(&session.token, now()),
            "session as bearer",
        );
        assert_invalid(
            verifier.verify_session(&access.token, now()),
            "access as session",
        );
        assert_invalid(
            verifier.verify_session(&capability.token, now()),
            "capability as session",
        );
        assert_invalid(
            verifier.verify_capability(&access.token, now()),
            "access as capability",
        );
        assert_invalid(
            verifier.verify_capability(&session.token, now()),
            "session as capability",
        );

        // Even with every field a capability needs, `typ` decides.
        let forged = keys
            .sign(
                &json!({"iss": ISSUER, "typ": "p2p_session", "sub": UserId::new(),
                "did": DeviceId::new(), "scope": ["p2p"], "iat": 0, "exp": i64::MAX}),
            )
            .expect("sign");
        assert_invalid(auth.authenticate(&forged, now()), "typ p2p_session");
        let untyped = keys
            .sign(
                &json!({"iss": ISSUER, "sub": UserId::new(), "did": DeviceId::new(),
                "iat": 0, "exp": i64::MAX}),
            )
            .expect("sign");
        assert_invalid(auth.authenticate(&untyped, now()), "no typ");
    }

    #[test]
    fn a_foreign_issuer_is_refused() {
        let (keys, auth) = setup();
        let token = keys
            .sign(&AccessClaims {
                iss: "elsewhere".into(),
                typ: TokenKind::Access,
                sub: UserId::new(),
                did: DeviceId::new(),
                iat: 0,
                exp: i64::MAX,
            })
            .expect("sign");
        assert_invalid(auth.authenticate(&token, now()), "iss");
    }

    #[test]
    fn tampered_tokens_are_refused() {
        let (_, auth) = setup();
        let (user, device) = (UserId::new(), DeviceId::new());
        let mine = auth
            .issue_access_token(user, device, now())
            .expect("mine")
            .token;
        let admin = auth
            .issue_access_token(UserId::new(), DeviceId::new(), now())
            .expect("other")
            .token;
        let (m, a) = (parts(&mine), parts(&admin));

        // Another (validly signed) payload under my signature.
        let spliced = format!("{}.{}.{}", m[0], a[1], m[2]);
        assert_invalid(auth.authenticate(&spliced, now()), "spliced payload");

        // A hand-edited payload: a longer expiry.
        let claims = json!({"iss": ISSUER, "typ": "access", "sub": user, "did": device,
            "iat": now().unix_seconds(), "exp": i64::MAX});
        let edited = format!(
            "{}.{}.{}",
            m[0],
            b64url(claims.to_string().as_bytes()),
            m[2]
        );
        assert_invalid(auth.authenticate(&edited, now()), "edited payload");

        // A flipped signature bit.
        let mut sig = m[2].as_bytes().to_vec();
        sig[5] = if sig[5] == b'A' { b'B' } else { b'A' };
        let flipped = format!(
            "{}.{}.{}",
            m[0],
            m[1],
            String::from_utf8(sig).expect("ascii")
        );
        assert_invalid(auth.authenticate(&flipped, now()), "flipped signature");

        for junk in ["", "a.b", "a.b.c", "...", &format!("{mine}.x")] {
            assert_invalid(auth.authenticate(junk, now()), junk);
        }
        assert_invalid(
            auth.authenticate(&"a".repeat(MAX_TOKEN_LEN + 1), now()),
            "huge",
        );
        // The untouched token still passes.
        assert!(auth.authenticate(&mine, now()).is_ok());
    }

    #[test]
    fn a_token_signed_by_another_key_ring_is_refused() {
        let (keys, auth) = setup();
        let theirs = JwtAuthenticator::new(Arc::new(KeyRing::generate().expect("theirs")));
        let token = theirs
            .issue_access_token(UserId::new(), DeviceId::new(), now())
            .expect("issue")
            .token;
        let err = auth.authenticate(&token, now()).expect_err("foreign");
        assert!(
            matches!(&err, AuthError::InvalidToken(m) if m.contains("unknown kid")),
            "{err:?}"
        );

        // Their token relabelled with our kid: the signature does not match.
        let p = parts(&token);
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": keys.current_kid()});
        let relabelled = format!(
            "{}.{}.{}",
            b64url(header.to_string().as_bytes()),
            p[1],
            p[2]
        );
        assert_invalid(auth.authenticate(&relabelled, now()), "relabelled");
    }

    #[test]
    fn alg_none_is_refused() {
        let (keys, auth) = setup();
        let valid = auth
            .issue_access_token(UserId::new(), DeviceId::new(), now())
            .expect("issue")
            .token;
        let payload = parts(&valid)[1].to_owned();
        // base64url of {"alg":"none","typ":"JWT"}
        let plain = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        let with_kid = b64url(
            json!({"alg": "none", "kid": keys.current_kid()})
                .to_string()
                .as_bytes(),
        );
        for header in [plain.to_owned(), with_kid] {
            for sig in ["", parts(&valid)[2]] {
                let token = format!("{header}.{payload}.{sig}");
                assert_invalid(auth.authenticate(&token, now()), "alg none");
                assert_invalid(keys.verify::<serde_json::Value>(&token), "alg none");
            }
        }
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        let (keys, auth) = setup();
        let raw = public_key_bytes(&keys);
        let x = keys.jwks()["keys"][0]["x"].as_str().expect("x").to_owned();
        let claims = AccessClaims {
            iss: ISSUER.into(),
            typ: TokenKind::Access,
            sub: UserId::new(),
            did: DeviceId::new(),
            iat: now().unix_seconds(),
            exp: now().saturating_add(HOUR).unix_seconds(),
        };
        for secret in [raw.as_slice(), x.as_bytes()] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(keys.current_kid().to_owned());
            let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret))
                .expect("encode hs256");
            assert_invalid(auth.authenticate(&token, now()), "HS256");
            assert_invalid(
                keys.verifier().verify_capability(&token, now()),
                "HS256 offline",
            );
        }
    }

    #[test]
    fn from_jwks_keeps_ed25519_signing_keys_only() {
        let keys = KeyRing::generate().expect("keys");
        let ours = keys.jwks()["keys"][0].clone();
        let mut x25519 = ours.clone();
        x25519["crv"] = json!("X25519");
        x25519["kid"] = json!("x25519");
        let mut no_kid = ours.clone();
        no_kid.as_object_mut().expect("object").remove("kid");
        let set = json!({"keys": [
            {"kty": "RSA", "kid": "rsa", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
            x25519,
            no_kid,
            ours.clone(),
            ours,
        ]});
        let verifier = TokenVerifier::from_jwks(&set).expect("verifier");
        assert_eq!(
            verifier.kids().collect::<Vec<_>>(),
            vec![keys.current_kid()]
        );

        // Malformed Ed25519 keys are errors, not panics.
        for x in ["", "AAAA", "not base64!", &"A".repeat(44)] {
            let bad = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": x}]});
            assert!(
                matches!(TokenVerifier::from_jwks(&bad), Err(AuthError::Key(_))),
                "{x:?}"
            );
        }
        let clash = json!({"keys": [keys.jwks()["keys"][0].clone(),
            {"kty": "OKP", "crv": "Ed25519", "kid": keys.current_kid(),
             "x": KeyRing::generate().expect("other").jwks()["keys"][0]["x"].clone()}]});
        assert!(TokenVerifier::from_jwks(&clash).is_err());
        assert!(TokenVerifier::from_jwks(&json!({"nope": []})).is_err());
        assert_eq!(
            TokenVerifier::from_jwks(&json!({"keys": []}))
                .expect("empty")
                .kids()
                .count(),
            0
        );
    }

    #[test]
    fn scope_wire_names_match_serde() {
        for s in [
            Scope::RoomsRead,
            Scope::MessagesRead,
            Scope::MessagesWrite,
            Scope::P2p,
        ] {
            assert_eq!(serde_json::to_value(s).expect("json"), json!(s.as_str()));
        }
    }
}
