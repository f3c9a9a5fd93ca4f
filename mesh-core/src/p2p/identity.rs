//! An agent's P2P identity: a self-signed certificate and its key.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use super::P2pError;
use crate::Failure;

const CERT_FILE: &str = "p2p-cert.pem";
const KEY_FILE: &str = "p2p-key.pem";

/// The SHA-256 fingerprint of a DER certificate, as lowercase hex: what an
/// agent announces in [`P2pInfo::cert_fingerprint`](crate::protocol::P2pInfo).
pub fn fingerprint_of(cert_der: &[u8]) -> String {
    Sha256::digest(cert_der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Normalises an announced fingerprint for comparison: lowercase, with
/// optional `:` separators (as `openssl x509 -fingerprint` prints) removed.
pub(crate) fn normalise_fingerprint(fp: &str) -> String {
    fp.chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// An agent's certificate (self-signed, ECDSA P-256) and private key.
///
/// `Debug` shows the fingerprint only; the key is never printed.
pub struct AgentIdentity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    fingerprint: String,
}

impl fmt::Debug for AgentIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentIdentity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Clone for AgentIdentity {
    fn clone(&self) -> Self {
        Self {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint.clone(),
        }
    }
}

fn tls_err(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> P2pError {
    P2pError::Tls(Failure::caused_by(what, e))
}

impl AgentIdentity {
    /// A fresh identity kept in memory only.
    pub fn generate() -> Result<Self, P2pError> {
        let certified = rcgen::generate_simple_self_signed(vec!["mesh-peer".to_owned()])
            .map_err(|e| tls_err("generating a certificate", e))?;
        Ok(Self::from_parts(
            certified.cert.der().clone(),
            PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()),
        ))
    }

    fn from_parts(cert: CertificateDer<'static>, key: PrivatePkcs8KeyDer<'static>) -> Self {
        let fingerprint = fingerprint_of(&cert);
        Self {
            cert,
            key,
            fingerprint,
        }
    }

    /// Loads the identity kept in `dir` (`p2p-cert.pem`, `p2p-key.pem`), or
    /// generates one and saves it there (files mode 0600, a new folder 0700).
    pub fn load_or_generate(dir: &Path) -> Result<Self, P2pError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        if cert_path.exists() || key_path.exists() {
            return Self::load(dir);
        }
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(|e| P2pError::io(dir, e))?;

        let certified = rcgen::generate_simple_self_signed(vec!["mesh-peer".to_owned()])
            .map_err(|e| tls_err("generating a certificate", e))?;
        write_private(&key_path, certified.signing_key.serialize_pem().as_bytes())?;
        write_private(&cert_path, certified.cert.pem().as_bytes())?;
        Ok(Self::from_parts(
            certified.cert.der().clone(),
            PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()),
        ))
    }

    /// Loads the identity kept in `dir`.
    pub fn load(dir: &Path) -> Result<Self, P2pError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let cert_pem = fs::read(&cert_path).map_err(|e| P2pError::io(&cert_path, e))?;
        let key_pem = fs::read(&key_path).map_err(|e| P2pError::io(&key_path, e))?;
        let cert = CertificateDer::from_pem_slice(&cert_pem)
            .map_err(|e| tls_err(&cert_path.display().to_string(), e))?;
        let key = match PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| tls_err(&key_path.display().to_string(), e))?
        {
            PrivateKeyDer::Pkcs8(k) => k,
            _ => {
                return Err(P2pError::Tls(
                    format!("{}: not a PKCS#8 key", key_path.display()).into(),
                ));
            }
        };
        Ok(Self::from_parts(cert, key))
    }

    /// The SHA-256 fingerprint of the certificate, lowercase hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The certificate, DER.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), P2pError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(|e| P2pError::io(path, e))?;
    f.write_all(bytes).map_err(|e| P2pError::io(path, e))?;
    f.sync_all().map_err(|e| P2pError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_persist_with_private_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p2p");
        let first = AgentIdentity::load_or_generate(&path).expect("generate");
        let again = AgentIdentity::load_or_generate(&path).expect("load");
        assert_eq!(first.fingerprint(), again.fingerprint());
        assert_eq!(first.fingerprint().len(), 64);
        assert_ne!(
            AgentIdentity::generate().expect("other").fingerprint(),
            first.fingerprint()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [CERT_FILE, KEY_FILE] {
                let mode = fs::metadata(path.join(f))
                    .expect("meta")
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
        assert!(!format!("{first:?}").contains("PRIVATE"));
        assert_eq!(normalise_fingerprint("AB:cd"), "abcd");
    }
}
