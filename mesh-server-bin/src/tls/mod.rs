//! HTTPS: the server's certificate and the TLS side of a connection.
//!
//! - [`CertStore`] holds the certificate being served and swaps it whole
//!   when a new one arrives (a reload of the PEM files, an ACME renewal):
//!   new handshakes get the new certificate, connections already open keep
//!   theirs.
//! - [`ServerTls`] is what the accept loop uses: rustls on the ring
//!   provider, HTTP/1.1 only (the WebSocket upgrade needs it).
//! - [`files`] loads `--tls-cert`/`--tls-key` and reloads them when they
//!   change or on SIGHUP; [`acme`] gets certificates over ACME.
//!
//! A connection to the TLS port that does not start a TLS handshake (plain
//! HTTP by mistake) is answered `400` in plain HTTP with the `https://`
//! address to use, then closed; a handshake that stalls is cut off after
//! the header time-out, like a stalled request header.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

pub mod acme;
pub mod files;

/// The certificate being served, swapped whole on reload.
#[derive(Default)]
pub struct CertStore {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// Counts the certificates set, for whoever waits for a new one.
    changes: tokio::sync::watch::Sender<u64>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("loaded", &self.get().is_some())
            .finish()
    }
}

impl CertStore {
    /// An empty store: handshakes fail until a certificate is [`set`](Self::set).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Serves `key` from the next handshake on.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
        self.changes.send_modify(|n| *n += 1);
    }

    /// Hears of every certificate set from now on (the count so far is
    /// marked seen).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The certificate being served.
    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

/// The TLS side of the server's listener.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    certs: Arc<CertStore>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("certs", &self.certs)
            .finish()
    }
}

/// The ring provider: the workspace's one rustls provider.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ServerTls {
    /// Serves whatever `certs` holds at each handshake.
    pub fn new(certs: Arc<CertStore>) -> anyhow::Result<Self> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            certs,
        })
    }

    /// The store the certificate is served from.
    pub fn certs(&self) -> &Arc<CertStore> {
        &self.certs
    }

    /// Runs the handshake on an accepted connection, within `timeout`.
    /// `None` when the connection is not served: not TLS (answered `400`
    /// in plain HTTP), stalled, or a failed handshake (logged).
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let peer = stream.peer_addr().ok();
        let handshake = async {
            let mut first = [0u8; 1];
            // A TLS connection starts with a handshake record (0x16).
            match stream.peek(&mut first).await {
                Ok(1) if first[0] == 0x16 => {}
                Ok(1) => {
                    not_tls(stream).await;
                    return None;
                }
                _ => return None,
            }
            match self.acceptor.accept(stream).await {
                Ok(tls) => Some(tls),
                Err(e) => {
                    tracing::debug!(?peer, error = %e, "TLS handshake failed");
                    None
                }
            }
        };
        match tokio::time::timeout(timeout, handshake).await {
            Ok(done) => done,
            Err(_) => {
                tracing::debug!(?peer, "TLS handshake took too long");
                None
            }
        }
    }
}

/// Plain HTTP sent to the TLS port: one `400` that says to use `https://`.
async fn not_tls(mut stream: TcpStream) {
    use tokio::io::AsyncReadExt as _;
    // Read what was sent first: closing on unread bytes resets the
    // connection, and the answer would be lost.
    let mut request = [0u8; 4096];
    let _ = stream.read(&mut request).await;
    let body = r#"{"error":{"code":"invalid_request","message":"this port speaks HTTPS: use an https:// URL (wss:// for the WebSocket)"}}"#;
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}
