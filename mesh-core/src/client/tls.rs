//! TLS for the native client: one rustls configuration, on the ring
//! provider, shared by the HTTP API (reqwest) and the WebSocket
//! (tokio-tungstenite), so `https://` and `wss://` trust the same roots.
//!
//! Two ways to trust a server:
//!
//! - [`TlsConfig::platform`] (the default): the operating system's roots,
//!   through `rustls-platform-verifier` (the system store on Linux, the
//!   platform verifier on macOS, Windows, Android and iOS). What a public
//!   server with a certificate from a public CA needs.
//! - [`TlsConfig::with_ca_pem`] / [`TlsConfig::with_ca_file`]: **only** the
//!   given CA certificates (a private CA; the CLI's `--ca-cert FILE` /
//!   `MESH_CA_CERT`). The platform's roots are not consulted then, like
//!   `curl --cacert`.
//!
//! There is no switch that accepts any certificate.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite;

use super::ClientError;

/// Which servers a client trusts (see the [module docs](self)). Cheap to
/// clone; one per app is enough.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    config: Arc<ClientConfig>,
    /// For messages: "the platform's roots" or the CA file given.
    trusts: Arc<str>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> ClientError {
    ClientError::Tls(crate::Failure::caused_by(what, e))
}

impl TlsConfig {
    /// Trusts the operating system's root certificates. Loaded once per
    /// process (the system store is read and parsed then).
    pub fn platform() -> Result<Self, ClientError> {
        static PLATFORM: OnceLock<Result<TlsConfig, ClientError>> = OnceLock::new();
        PLATFORM.get_or_init(Self::load_platform).clone()
    }

    /// What a client uses when the app gave no [`TlsConfig`]: the platform's
    /// roots; for an `http://` server on a machine without any, a
    /// configuration that trusts no server (TLS is not spoken then, unless
    /// the server redirects to `https://`, which then fails with a clear
    /// error).
    pub fn default_for(server: &str) -> Result<Self, ClientError> {
        match Self::platform() {
            Ok(tls) => Ok(tls),
            Err(_) if server.starts_with("http://") => Ok(Self::trusting_nothing()),
            Err(e) => Err(e),
        }
    }

    fn trusting_nothing() -> Self {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_root_certificates(RootCertStore::empty())
                    .with_no_client_auth()
            });
        match config {
            Ok(config) => Self {
                config: Arc::new(config),
                trusts: "no CA at all (the system has no root certificates)".into(),
            },
            // ring supports the safe default versions; this cannot fail.
            Err(e) => unreachable!("ring lacks the default TLS versions: {e}"),
        }
    }

    fn load_platform() -> Result<Self, ClientError> {
        use rustls_platform_verifier::BuilderVerifierExt as _;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("TLS set-up", e))?
            .with_platform_verifier()
            .map_err(|e| tls_error("cannot load the platform's root certificates", e))?
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
            trusts: "the system's root certificates".into(),
        })
    }

    /// Trusts only the CA certificates in `pem` (one or more
    /// `-----BEGIN CERTIFICATE-----` blocks).
    pub fn with_ca_pem(pem: &[u8]) -> Result<Self, ClientError> {
        Self::from_pem(pem, "the CA certificate given".into())
    }

    /// Trusts only the CA certificates in the PEM file at `path`.
    pub fn with_ca_file(path: &Path) -> Result<Self, ClientError> {
        let pem = std::fs::read(path).map_err(|e| {
            ClientError::InvalidArgument(format!("cannot read the CA file {}: {e}", path.display()))
        })?;
        Self::from_pem(&pem, format!("the CA in {}", path.display()).into()).map_err(|e| match e {
            ClientError::Tls(m) => ClientError::InvalidArgument(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    fn from_pem(pem: &[u8], trusts: Arc<str>) -> Result<Self, ClientError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| tls_error("not a PEM certificate", e))?;
            roots
                .add(cert)
                .map_err(|e| tls_error("not a usable CA certificate", e))?;
        }
        if roots.is_empty() {
            return Err(ClientError::Tls(
                "no certificate found (expected PEM `-----BEGIN CERTIFICATE-----` blocks)".into(),
            ));
        }
        let provider = provider();
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| tls_error("TLS set-up", e))?;
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("TLS set-up", e))?
            .with_webpki_verifier(verifier)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
            trusts,
        })
    }

    /// The rustls configuration, for an app's own connections.
    pub fn rustls(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// A reqwest client that speaks TLS with this configuration.
    pub fn http_client(&self) -> Result<reqwest::Client, ClientError> {
        reqwest::Client::builder()
            .tls_backend_preconfigured(ClientConfig::clone(&self.config))
            .build()
            .map_err(|e| tls_error("cannot build the HTTP client", e))
    }

    pub(crate) fn connector(&self) -> tokio_tungstenite::Connector {
        tokio_tungstenite::Connector::Rustls(self.config.clone())
    }

    /// Turns a transport failure into a [`ClientError::Tls`] that says what
    /// went wrong and what to do, when TLS is what failed; else keeps it.
    pub(crate) fn explain(&self, e: ClientError) -> ClientError {
        let ClientError::Transport(source) = &e else {
            return e;
        };
        match find_rustls_error(source.as_ref()) {
            Some(tls) => ClientError::Tls(describe(tls, &self.trusts).into()),
            None => e,
        }
    }
}

/// The rustls error somewhere in `e`'s chain. `io::Error` hides the error
/// it wraps from `source()`, so it is opened by hand.
fn find_rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tungstenite::Error::Tls(tungstenite::error::TlsError::Rustls(tls))) =
            e.downcast_ref::<tungstenite::Error>()
        {
            return Some(&**tls);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            // The wrapped error, itself maybe another io::Error.
            next = Some(inner);
            continue;
        }
        next = e.source();
    }
    None
}

fn describe(e: &rustls::Error, trusts: &str) -> String {
    use rustls::{CertificateError, Error};
    match e {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "the server's certificate is not signed by a CA this client trusts \
             (it trusts {trusts}); for a private CA give its certificate with \
             --ca-cert FILE or MESH_CA_CERT"
        ),
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            "the server's certificate is for another name than the one in the server URL".to_owned()
        }
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the server's certificate has expired".to_owned(),
        Error::InvalidCertificate(other) => {
            format!("the server's certificate was refused: {other:?}")
        }
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => {
            format!("the server does not speak TLS there (is it an http:// server?): {e}")
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_a_clear_error() {
        let e = TlsConfig::with_ca_pem(b"not a certificate").expect_err("refused");
        assert!(e.to_string().contains("no certificate found"), "{e}");
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("ca.pem");
        let e = TlsConfig::with_ca_file(&missing).expect_err("refused");
        assert!(e.to_string().contains("cannot read the CA file"), "{e}");
    }

    #[test]
    fn an_io_error_wrapping_rustls_is_explained() {
        let io = std::io::Error::other(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        // Never fails: without system roots it trusts nothing.
        let tls = TlsConfig::default_for("http://127.0.0.1:1").expect("config");
        let e = tls.explain(ClientError::transport(io));
        assert_eq!(e.code_str(), "tls");
        assert!(e.to_string().contains("--ca-cert"), "{e}");
        let plain = tls.explain(ClientError::transport(std::io::Error::other("reset")));
        assert_eq!(plain.code_str(), "transport");
    }
}
