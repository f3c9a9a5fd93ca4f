//! The server's Ed25519 signing keys.
//!
//! Why Ed25519 (`EdDSA` JWTs) rather than a shared HMAC secret: capability
//! and P2P session tokens are checked *offline* by agents, from the public
//! JWK Set the server publishes (`GET /api/auth/keys`). With an asymmetric
//! key, publishing what verifies never lets anyone sign.
//!
//! On disk every key is a PKCS#8 PEM file `ed25519-<kid>.pem` in the key
//! folder, written with mode 0600 (the folder, when created, gets 0700). All
//! the keys found there verify; the most recently written one signs. So a
//! key is rotated by writing a new file next to the old ones, and tokens
//! signed with the old key keep verifying until its file is removed.
//!
//! The `kid` of a key is the hex form of the first 8 bytes of its public
//! key, so it is derived from the key itself and never needs to be stored.
//!
//! Private keys never leave this module: they are not logged, not printed by
//! `Debug`, and not part of [`KeyRing::jwks`].

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{AuthError, TokenVerifier};

const FILE_PREFIX: &str = "ed25519-";
const FILE_SUFFIX: &str = ".pem";

/// The server's signing keys: the current one signs, all of them verify.
///
/// `Debug` shows the key ids only.
pub struct KeyRing {
    /// The `kid` of the signing key.
    current_kid: String,
    /// The signing key, as PKCS#8 DER (zeroized on drop by `jsonwebtoken`).
    signing: EncodingKey,
    /// Every public key, the signing one first.
    public: Vec<(String, VerifyingKey)>,
    /// The public keys as a JWK Set.
    jwks: serde_json::Value,
    /// Verifies with `jwks`: the same code path as an agent's verifier.
    verifier: TokenVerifier,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("current_kid", &self.current_kid)
            .field(
                "kids",
                &self.public.iter().map(|(kid, _)| kid).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The `kid` of a public key: the hex form of its first 8 bytes.
pub fn kid_of(key: &VerifyingKey) -> String {
    key.as_bytes()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn key_err(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> AuthError {
    AuthError::Key(crate::Failure::caused_by(what, e))
}

fn new_signing_key() -> Result<SigningKey, AuthError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| key_err("random key", e))?;
    let key = SigningKey::from_bytes(&secret);
    // Best effort: `SigningKey` zeroizes itself on drop, this is the copy.
    secret.fill(0);
    Ok(key)
}

impl KeyRing {
    /// A fresh in-memory key ring (tests, embedding without a data folder).
    pub fn generate() -> Result<Self, AuthError> {
        Self::from_keys(&new_signing_key()?, Vec::new())
    }

    /// Loads the keys kept in `dir`, generating and saving one (file mode
    /// 0600) if there is none.
    ///
    /// `dir` is created (mode 0700 on Unix) if missing. Every
    /// `ed25519-*.pem` file in it must hold an Ed25519 PKCS#8 private key:
    /// one that does not is an error rather than silently skipped. The key
    /// whose file was modified last signs; all verify.
    pub fn load_or_generate(dir: &Path) -> Result<Self, AuthError> {
        create_dir(dir).map_err(|e| key_err(&format!("creating {}", dir.display()), e))?;
        let mut found = load_dir(dir)?;
        if found.is_empty() {
            let key = new_signing_key()?;
            let path = save(dir, &key)?;
            tracing::info!(kid = %kid_of(&key.verifying_key()), path = %path.display(),
                "generated a new token signing key");
            return Self::from_keys(&key, Vec::new());
        }
        // Newest first; equal times are ordered by kid so the choice is stable.
        found.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut keys = found.into_iter().map(|(_, _, key)| key);
        let Some(current) = keys.next() else {
            return Err(AuthError::Key("no key loaded".into()));
        };
        let others = keys.map(|k| k.verifying_key()).collect();
        Self::from_keys(&current, others)
    }

    fn from_keys(current: &SigningKey, others: Vec<VerifyingKey>) -> Result<Self, AuthError> {
        let der = current
            .to_pkcs8_der()
            .map_err(|e| key_err("encoding key", e))?;
        let signing = EncodingKey::from_ed_der(der.as_bytes());
        let current_public = current.verifying_key();
        let current_kid = kid_of(&current_public);

        let mut public = vec![(current_kid.clone(), current_public)];
        for key in others {
            let kid = kid_of(&key);
            if public.iter().all(|(k, _)| *k != kid) {
                public.push((kid, key));
            }
        }

        let mut set = JwkSet::default();
        for (kid, key) in &public {
            let mut jwk = Jwk::from_decoding_key(
                &DecodingKey::from_ed_der(key.as_bytes()),
                Some(Algorithm::EdDSA),
            )
            .map_err(|e| key_err("public key as JWK", e))?;
            jwk.common.key_id = Some(kid.clone());
            jwk.common.public_key_use = Some(PublicKeyUse::Signature);
            set.keys.push(jwk);
        }
        let jwks = serde_json::to_value(&set).map_err(|e| key_err("JWK Set", e))?;
        let verifier = TokenVerifier::from_jwks(&jwks)?;
        Ok(Self {
            current_kid,
            signing,
            public,
            jwks,
            verifier,
        })
    }

    /// The `kid` of the key that signs.
    pub fn current_kid(&self) -> &str {
        &self.current_kid
    }

    /// The `kid`s of every key that verifies, the signing one first.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.public.iter().map(|(kid, _)| kid.as_str())
    }

    /// Signs `claims` as an EdDSA JWT whose header names the current `kid`.
    pub fn sign<C: Serialize>(&self, claims: &C) -> Result<String, AuthError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.current_kid.clone());
        jsonwebtoken::encode(&header, claims, &self.signing).map_err(|e| key_err("signing", e))
    }

    /// Checks the signature, algorithm (EdDSA only) and `kid` of `token` and
    /// decodes its claims. Does not look at `exp`: callers check expiry
    /// against the `now` they are given.
    pub fn verify<C: DeserializeOwned>(&self, token: &str) -> Result<C, AuthError> {
        self.verifier.decode(token)
    }

    /// The public keys as a JWK Set (RFC 7517), `kid` on each:
    /// `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"…","kid":"…","alg":"EdDSA","use":"sig"}]}`.
    pub fn jwks(&self) -> serde_json::Value {
        self.jwks.clone()
    }

    /// An offline verifier holding the public keys.
    pub fn verifier(&self) -> TokenVerifier {
        self.verifier.clone()
    }
}

fn create_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Every key file in `dir`: its kid, modification time, and key.
fn load_dir(dir: &Path) -> Result<Vec<(String, SystemTime, SigningKey)>, AuthError> {
    let read_err = |path: &Path, e: io::Error| key_err(&format!("reading {}", path.display()), e);
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| read_err(dir, e))? {
        let entry = entry.map_err(|e| read_err(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_leftover_temp(name) {
            // A save that never reached its rename (a crash, a full disk):
            // never a key, and never read. Removed so they do not pile up.
            if let Err(e) = fs::remove_file(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e,
                    "cannot remove a leftover temporary key file");
            }
            continue;
        }
        if !name.starts_with(FILE_PREFIX) || !name.ends_with(FILE_SUFFIX) {
            continue;
        }
        let path = entry.path();
        let meta = fs::metadata(&path).map_err(|e| read_err(&path, e))?;
        if !meta.is_file() {
            continue;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(),
                    "token signing key file is accessible to other users; it should be mode 0600");
            }
        }
        let pem = fs::read_to_string(&path).map_err(|e| read_err(&path, e))?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
            key_err(
                &format!("{} is not an Ed25519 PKCS#8 private key", path.display()),
                e,
            )
        })?;
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        found.push((kid_of(&key.verifying_key()), modified, key));
    }
    Ok(found)
}

/// A temporary file of [`save`]: `.ed25519-<kid>.pem.tmp`.
fn is_leftover_temp(name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|n| n.strip_suffix(".tmp"))
        .is_some_and(|n| n.starts_with(FILE_PREFIX) && n.ends_with(FILE_SUFFIX))
}

/// Writes `key` to `dir/ed25519-<kid>.pem`, mode 0600, atomically: a
/// temporary file is written and synced, renamed over the final name, and
/// the folder synced. A crash or a full disk at any point leaves either no
/// key file or a whole one, never half of one (a key file that does not
/// parse stops the server from starting).
fn save(dir: &Path, key: &SigningKey) -> Result<PathBuf, AuthError> {
    let kid = kid_of(&key.verifying_key());
    let path = dir.join(format!("{FILE_PREFIX}{kid}{FILE_SUFFIX}"));
    let tmp = dir.join(format!(".{FILE_PREFIX}{kid}{FILE_SUFFIX}.tmp"));
    let write_err = |e: io::Error| key_err(&format!("writing {}", path.display()), e);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| key_err("encoding key", e))?;

    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(write_err(e)),
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    {
        // Closed at the end of this block, before the rename.
        let mut file = options.open(&tmp).map_err(write_err)?;
        file.write_all(pem.as_bytes()).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
    }
    fs::rename(&tmp, &path).map_err(write_err)?;
    #[cfg(unix)]
    {
        // Make the rename durable; failing here loses nothing already written.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Claims {
        sub: String,
        exp: i64,
    }

    fn claims() -> Claims {
        Claims {
            sub: "alice".into(),
            // Long past: `verify` must not look at `exp`.
            exp: 1,
        }
    }

    #[test]
    fn sign_verify_round_trip_ignores_exp() {
        let ring = KeyRing::generate().expect("generate");
        let token = ring.sign(&claims()).expect("sign");
        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(ring.current_kid()));
        assert_eq!(ring.verify::<Claims>(&token).expect("verify"), claims());
    }

    #[test]
    fn another_rings_token_is_refused() {
        let ours = KeyRing::generate().expect("ours");
        let theirs = KeyRing::generate().expect("theirs");
        let token = theirs.sign(&claims()).expect("sign");
        assert!(matches!(
            ours.verify::<Claims>(&token),
            Err(AuthError::InvalidToken(_))
        ));
    }

    #[test]
    fn jwks_has_the_rfc7517_shape_and_no_private_part() {
        let ring = KeyRing::generate().expect("generate");
        let jwks = ring.jwks();
        let keys = jwks["keys"].as_array().expect("keys");
        assert_eq!(keys.len(), 1);
        let key = &keys[0];
        let x = key["x"].as_str().expect("x");
        assert_eq!(x.len(), 43, "32 bytes, base64url without padding: {x}");
        assert!(!x.contains(['+', '/', '=']), "{x}");
        assert_eq!(
            key,
            &json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": ring.current_kid(),
                "alg": "EdDSA", "use": "sig"})
        );
    }

    #[test]
    fn debug_shows_no_key_material() {
        let ring = KeyRing::generate().expect("generate");
        let debug = format!("{ring:?}");
        assert!(debug.contains(ring.current_kid()), "{debug}");
        let x = ring.jwks()["keys"][0]["x"].as_str().expect("x").to_owned();
        assert!(!debug.contains(&x), "{debug}");
        assert!(debug.len() < 200, "{debug}");
    }

    #[test]
    fn load_or_generate_persists_and_reloads_the_same_key() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("keys").join("nested");
        let first = KeyRing::load_or_generate(&dir).expect("first start");
        let path = dir.join(format!("ed25519-{}.pem", first.current_kid()));
        let pem = fs::read_to_string(&path).expect("key file");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = fs::metadata(&dir).expect("dir meta").permissions().mode();
            assert_eq!(mode & 0o077, 0, "dir mode {mode:o}");
        }
        let token = first.sign(&claims()).expect("sign");

        let second = KeyRing::load_or_generate(&dir).expect("second start");
        assert_eq!(second.current_kid(), first.current_kid());
        assert_eq!(second.jwks(), first.jwks());
        assert_eq!(second.verify::<Claims>(&token).expect("verify"), claims());
        let files = fs::read_dir(&dir).expect("list").count();
        assert_eq!(files, 1, "no second key, no temporary file");
    }

    #[test]
    fn all_keys_in_the_folder_verify_and_the_newest_signs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let old = KeyRing::load_or_generate(tmp.path()).expect("first start");
        let old_token = old.sign(&claims()).expect("sign");
        // A rotated-in key: written after the first, so it is the newest.
        let new_key = new_signing_key().expect("key");
        let new_path = save(tmp.path(), &new_key).expect("save");
        let later = SystemTime::now() + std::time::Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(&new_path)
            .and_then(|f| f.set_modified(later))
            .expect("touch");

        let ring = KeyRing::load_or_generate(tmp.path()).expect("reload");
        assert_eq!(ring.current_kid(), kid_of(&new_key.verifying_key()));
        assert_eq!(ring.kids().count(), 2);
        assert_eq!(ring.verify::<Claims>(&old_token).expect("old"), claims());
        let new_token = ring.sign(&claims()).expect("sign");
        assert!(old.verify::<Claims>(&new_token).is_err());
    }

    #[test]
    fn a_half_written_temporary_key_is_ignored_and_removed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // What a crash in the middle of `save` leaves: a partial temp file.
        let leftover = tmp.path().join(".ed25519-0123456789abcdef.pem.tmp");
        fs::write(&leftover, "-----BEGIN PRIVATE KEY-----\nMC4CAQAw").expect("write");
        let ring = KeyRing::load_or_generate(tmp.path()).expect("start");
        assert!(!leftover.exists(), "the leftover is removed");
        let names: Vec<_> = fs::read_dir(tmp.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        assert_eq!(names, [format!("ed25519-{}.pem", ring.current_kid())]);
    }

    #[test]
    fn a_corrupt_key_file_is_an_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::write(tmp.path().join("ed25519-bad.pem"), "not a key").expect("write");
        assert!(matches!(
            KeyRing::load_or_generate(tmp.path()),
            Err(AuthError::Key(_))
        ));
    }
}
