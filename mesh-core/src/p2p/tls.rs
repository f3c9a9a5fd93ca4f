//! TLS 1.3 with certificate pinning, for QUIC between two agents.
//!
//! There is no certificate authority: each agent's certificate is
//! self-signed, and the server tells each agent the SHA-256 fingerprint the
//! other announced. So the verifiers here replace chain validation with a
//! fingerprint comparison, and *still* check the handshake signature with
//! the crypto provider, which proves the peer holds the certificate's key:
//!
//! - [`PinnedServerVerifier`] (initiator side): the target's certificate must
//!   have the announced fingerprint.
//! - [`ClientCertRequired`] (target side): a client certificate is
//!   mandatory and must sign the handshake. Which fingerprint is right
//!   depends on the session, which the target only learns from `P2P_HELLO`,
//!   so the comparison happens there (see
//!   [`P2pEndpoint::accept`](super::P2pEndpoint::accept)).
//!
//! Exactly one crypto provider is used, ring, passed explicitly to every
//! config (never the process default), so linking another provider elsewhere
//! cannot change or break this.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::identity::{fingerprint_of, normalise_fingerprint};
use super::{AgentIdentity, P2pError};

/// The ALPN protocol of mesh P2P sessions, version 1.
pub const ALPN: &[u8] = b"mesh-p2p/1";

/// The server name the initiator puts in its ClientHello. It is not
/// checked (pinning replaces name checks); certificates are issued for it.
pub(crate) const SERVER_NAME: &str = "mesh-peer";

/// Both verifiers: configs are TLS 1.3 only (as QUIC requires).
fn refuse_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls12NotOffered,
    ))
}

/// Both verifiers: the handshake signature, checked with the provider, is
/// what proves the peer holds its pinned certificate's key.
fn verify_tls13(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

/// The ring crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::error::Error + Send + Sync + 'static) -> P2pError {
    P2pError::Tls(crate::Failure::caused_by("", e))
}

/// Verifies the target's certificate by fingerprint (initiator side).
///
/// A mismatch is also recorded, so the caller can report
/// [`P2pError::FingerprintMismatch`] instead of a generic TLS alert.
#[derive(Debug)]
pub struct PinnedServerVerifier {
    expected: String,
    provider: Arc<CryptoProvider>,
    mismatch: Arc<Mutex<Option<String>>>,
}

impl PinnedServerVerifier {
    /// Accepts only a certificate whose SHA-256 fingerprint is `expected`
    /// (hex, `:` separators and case ignored).
    pub fn new(expected: &str, provider: Arc<CryptoProvider>) -> Self {
        Self {
            expected: normalise_fingerprint(expected),
            provider,
            mismatch: Arc::default(),
        }
    }

    /// The fingerprint of a refused certificate, once one was refused.
    pub fn mismatch(&self) -> Option<String> {
        self.mismatch.lock().ok().and_then(|m| m.clone())
    }
}

/// The signature methods both verifiers share: TLS 1.2 refused, TLS 1.3
/// handshake signatures checked with the verifier's `provider`.
macro_rules! tls13_signatures_only {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            refuse_tls12()
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13(&self.provider, message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint_of(end_entity);
        if got == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            if let Ok(mut m) = self.mismatch.lock() {
                *m = Some(got);
            }
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    tls13_signatures_only!();
}

/// Requires a client certificate that signs the handshake (target side);
/// its fingerprint is checked after `P2P_HELLO`.
#[derive(Debug)]
pub struct ClientCertRequired {
    provider: Arc<CryptoProvider>,
}

impl ClientCertRequired {
    /// A verifier checking signatures with `provider`.
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self { provider }
    }
}

impl ClientCertVerifier for ClientCertRequired {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    tls13_signatures_only!();
}

fn transport(idle_timeout: Duration) -> Result<Arc<quinn::TransportConfig>, P2pError> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle_timeout).map_err(tls_err)?,
    ));
    // Well under the idle timeout, so an idle terminal stays up.
    t.keep_alive_interval(Some(idle_timeout / 4));
    // One bidirectional stream per session, opened by the initiator.
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    // Larger windows than the defaults: a file transfer is one stream.
    t.stream_receive_window((8u32 * 1024 * 1024).into());
    t.receive_window((16u32 * 1024 * 1024).into());
    t.send_window(16 * 1024 * 1024);
    Ok(Arc::new(t))
}

/// The QUIC server config of an agent (the target side of sessions).
pub(crate) fn server_config(
    identity: &AgentIdentity,
    idle_timeout: Duration,
) -> Result<quinn::ServerConfig, P2pError> {
    let provider = provider();
    let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(Arc::new(ClientCertRequired::new(provider)))
        .with_single_cert(vec![identity.certificate().clone()], identity.private_key())
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(tls_err)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(idle_timeout)?);
    Ok(config)
}

/// The QUIC client config for one connection to a peer whose certificate
/// must have `expected_fingerprint`.
pub(crate) fn client_config(
    identity: &AgentIdentity,
    expected_fingerprint: &str,
    idle_timeout: Duration,
) -> Result<(quinn::ClientConfig, Arc<PinnedServerVerifier>), P2pError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServerVerifier::new(
        expected_fingerprint,
        provider.clone(),
    ));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_client_auth_cert(vec![identity.certificate().clone()], identity.private_key())
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(tls_err)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(idle_timeout)?);
    Ok((config, verifier))
}
