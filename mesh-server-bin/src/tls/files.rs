//! `--tls-cert`/`--tls-key`: PEM files, reloaded when they change or on
//! SIGHUP, without a restart.
//!
//! The files are checked every [`Config::reload_every`] (their size,
//! modification time and inode, so a `mv` of new files over old ones or a
//! Kubernetes secret's symlink swap is seen too). A reload that fails (a
//! half-written file, a key that does not match) is logged and the
//! certificate being served stays; the next change tries again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::CertStore;

/// Where the certificate and key are, and how often to look for changes.
#[derive(Clone, Debug)]
pub struct Config {
    /// The certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// How often the files are checked for a change.
    pub reload_every: Duration,
}

impl Config {
    /// Checks every 10 s.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            reload_every: Duration::from_secs(10),
        }
    }
}

/// Reads a certificate chain and its key from PEM bytes.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("the certificate file is not PEM")?;
    if chain.is_empty() {
        bail!("the certificate file holds no certificate");
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).context("the key file holds no private key")?;
    let key = CertifiedKey::from_der(chain, key, &super::provider())
        .context("the key does not fit the certificate, or is of an unsupported kind")?;
    Ok(Arc::new(key))
}

/// Reads both files.
pub fn load(config: &Config) -> anyhow::Result<Arc<CertifiedKey>> {
    let cert = std::fs::read(&config.cert)
        .with_context(|| format!("reading the certificate {}", config.cert.display()))?;
    let key = std::fs::read(&config.key)
        .with_context(|| format!("reading the key {}", config.key.display()))?;
    certified_key(&cert, &key).with_context(|| {
        format!(
            "loading {} and {}",
            config.cert.display(),
            config.key.display()
        )
    })
}

/// What identifies a version of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let ino = 0;
    Some(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        ino,
    })
}

/// Loads the files into `store` now (an error here stops the start), then
/// returns the task that reloads them; `reloads` hears of every reload
/// tried (from SIGHUP, or a change seen).
pub fn watch(
    config: Config,
    store: Arc<CertStore>,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    store.set(load(&config)?);
    Ok(async move {
        let stamps = |c: &Config| (stamp(&c.cert), stamp(&c.key));
        let mut seen = stamps(&config);
        let mut every = tokio::time::interval(config.reload_every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hangup = hangup();
        loop {
            let asked = tokio::select! {
                _ = every.tick() => false,
                _ = hangup.recv() => true,
            };
            let now = stamps(&config);
            if !asked && now == seen {
                continue;
            }
            seen = now;
            match load(&config) {
                Ok(key) => {
                    store.set(key);
                    tracing::info!(
                        cert = %config.cert.display(),
                        why = if asked { "SIGHUP" } else { "the files changed" },
                        "reloaded the TLS certificate"
                    );
                }
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    "the TLS certificate could not be reloaded; still serving the previous one"
                ),
            }
        }
    })
}

/// SIGHUP, or never where there is none.
fn hangup() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut s) => {
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        if tx.send(()).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP"),
        }
    }
    #[cfg(not(unix))]
    std::mem::forget(tx);
    rx
}
