//! Automatic certificates over ACME (RFC 8555), with `instant-acme`: the
//! account, the order, the HTTP-01 challenge answered on the plain-HTTP
//! listener (`--http-listen`, which must be reachable on port 80 of the
//! names), and renewal.
//!
//! The account key and the certificate are kept in [`Config::cache`] (by
//! default `DATA/acme/`; a folder every node of a cluster can read): a
//! restart serves the cached certificate at once and orders a new one
//! only when it is due. A certificate is renewed when a third of its
//! lifetime is left (30 days of Let's Encrypt's 90). A failed order is
//! retried after 1 minute, doubling up to 6 hours; the certificate being
//! served stays until it is replaced.
//!
//! **Several nodes behind one name** (a cluster, `--bus`) share the cache
//! folder: only the node with the smallest id orders
//! ([`Service::cluster_leader`]); its HTTP-01 answers go to every node over
//! the bus, and it asks for the check once every node says it serves them
//! (or after [`ACK_WAIT`]), so the certificate authority's check may reach
//! any of them; once
//! the certificate is in the cache, the others load it (told over the bus,
//! and in any case every minute while theirs is due). When that node is gone,
//! the next one takes over.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use mesh_core::cluster::NodeId;
use mesh_core::service::{AcmeNotice, Service};

use super::CertStore;

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// What to order, from where, and where to keep it.
#[derive(Clone, Debug)]
pub struct Config {
    /// The names the certificate is for (DNS names, no wildcards: HTTP-01).
    pub domains: Vec<String>,
    /// The ACME directory URL.
    pub directory: String,
    /// `mailto:` contacts for the account (expiry notices).
    pub contact: Vec<String>,
    /// Where the account and the certificate are kept.
    pub cache: PathBuf,
    /// A CA to trust for the ACME server itself, instead of the system's
    /// roots (a test or private ACME server such as pebble).
    pub directory_ca: Option<PathBuf>,
}

/// The HTTP-01 answers being served: token -> key authorization.
#[derive(Debug, Default)]
pub struct Challenges {
    answers: Mutex<HashMap<String, String>>,
}

impl Challenges {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The answer for `token`, while its order runs.
    pub fn answer(&self, token: &str) -> Option<String> {
        self.lock().get(token).cloned()
    }

    pub(crate) fn insert(&self, token: String, key_authorization: String) {
        self.lock().insert(token, key_authorization);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.answers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";
const ACCOUNT_FILE: &str = "account.json";

/// How often a node that does not order checks the shared cache while its
/// certificate is due.
const FOLLOWER_CHECK: Duration = Duration::from_secs(60);

/// Serves the cached certificate if there is one, then keeps a valid one
/// in `store` for as long as the server runs. In a cluster (`cluster`),
/// only the leader orders; see the module docs.
pub async fn run(
    config: Config,
    store: Arc<CertStore>,
    challenges: Arc<Challenges>,
    cluster: Option<Service>,
) {
    let ordered = Arc::new(tokio::sync::Notify::new());
    let acks = Arc::new(Acks::default());
    if let Some(service) = &cluster
        && let Some(notices) = service.acme_challenges()
    {
        let others = Others {
            challenges: challenges.clone(),
            ordered: ordered.clone(),
            acks: acks.clone(),
            service: service.clone(),
        };
        tokio::spawn(serve_others(notices, others));
    }
    let mut retry = Duration::from_secs(60);
    loop {
        let due = match cached(&config) {
            Ok(Some((key, due))) => {
                store.set(key);
                due
            }
            Ok(None) => SystemTime::now(),
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "the cached certificate is not usable"
                );
                SystemTime::now()
            }
        };
        let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
        if !wait.is_zero() {
            tracing::info!(
                domains = ?config.domains,
                renew_in_hours = wait.as_secs() / 3600,
                "serving the cached ACME certificate"
            );
            // Woken at least twice a day, so a clock jump is caught.
            tokio::time::sleep(wait.min(Duration::from_secs(12 * 3600))).await;
            continue;
        }
        match cluster.as_ref().map(Service::cluster_leader) {
            // Not yet known who orders: soon.
            Some(None) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            // Another node orders: its certificate comes to the cache.
            Some(Some(false)) => {
                tokio::select! {
                    _ = ordered.notified() => {}
                    _ = tokio::time::sleep(FOLLOWER_CHECK) => {}
                }
                continue;
            }
            None | Some(Some(true)) => {}
        }
        let shared = cluster.as_ref().map(|service| (service, &*acks));
        match order(&config, &challenges, shared).await {
            Ok(()) => {
                tracing::info!(domains = ?config.domains, "ACME certificate issued");
                retry = Duration::from_secs(60);
            }
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    retry_in_secs = retry.as_secs(),
                    "ACME order failed"
                );
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(6 * 3600));
            }
        }
    }
}

/// The cached certificate and when to renew it, if there is one for these
/// names.
fn cached(
    config: &Config,
) -> anyhow::Result<Option<(Arc<rustls::sign::CertifiedKey>, SystemTime)>> {
    let (cert, key) = match (
        std::fs::read(config.cache.join(CERT_FILE)),
        std::fs::read(config.cache.join(KEY_FILE)),
    ) {
        (Ok(c), Ok(k)) => (c, k),
        _ => return Ok(None),
    };
    let (not_before, not_after, names) = validity(&cert)?;
    if !config.domains.iter().all(|d| names.iter().any(|n| n == d)) {
        return Ok(None);
    }
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let due = not_after - lifetime / 3;
    let key = super::files::certified_key(&cert, &key)?;
    Ok(Some((key, due)))
}

/// The leaf's validity and DNS names.
fn validity(cert_pem: &[u8]) -> anyhow::Result<(SystemTime, SystemTime, Vec<String>)> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let leaf = CertificateDer::pem_slice_iter(cert_pem)
        .next()
        .context("no certificate in the cached file")??;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| anyhow::anyhow!("the cached certificate does not parse: {e}"))?;
    let at = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    let validity = cert.validity();
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((at(validity.not_before), at(validity.not_after), names))
}

/// The account: loaded from the cache, or made and cached.
async fn account(config: &Config) -> anyhow::Result<Account> {
    let builder = || match &config.directory_ca {
        Some(ca) => Account::builder_with_root(ca)
            .with_context(|| format!("loading the ACME server's CA {}", ca.display())),
        None => Account::builder().context("the system's root certificates"),
    };
    let path = config.cache.join(ACCOUNT_FILE);
    if let Ok(bytes) = std::fs::read(&path) {
        let creds: AccountCredentials = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        return builder()?
            .from_credentials(creds)
            .await
            .context("restoring the ACME account");
    }
    let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory.clone(),
            None,
        )
        .await
        .with_context(|| format!("creating an account at {}", config.directory))?;
    write_private(&path, &serde_json::to_vec(&creds)?)?;
    Ok(account)
}

/// How long the ordering node waits for the others to serve an answer
/// before it asks for the check anyway.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// Which nodes serve which of this node's answers.
#[derive(Debug, Default)]
struct Acks {
    held: Mutex<HashMap<String, HashSet<NodeId>>>,
    changed: tokio::sync::Notify,
}

impl Acks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<NodeId>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (up to [`ACK_WAIT`]) until every node of `nodes` serves the
    /// answer for `token`; whether they all do.
    async fn wait_all(&self, token: &str, nodes: &[NodeId]) -> bool {
        let all = || {
            let held = self.lock();
            nodes
                .iter()
                .all(|n| held.get(token).is_some_and(|set| set.contains(n)))
        };
        tokio::time::timeout(ACK_WAIT, async {
            loop {
                let changed = self.changed.notified();
                if all() {
                    return;
                }
                changed.await;
            }
        })
        .await
        .is_ok()
    }
}

/// What [`serve_others`] works with.
struct Others {
    challenges: Arc<Challenges>,
    /// Wakes this node's loop when another node's order is over.
    ordered: Arc<tokio::sync::Notify>,
    acks: Arc<Acks>,
    service: Service,
}

/// Serves the other nodes' HTTP-01 answers and says so; a withdrawn one
/// means their order is over (this node's loop loads the cache). Counts
/// the others' acknowledgements of this node's answers.
async fn serve_others(mut notices: tokio::sync::mpsc::Receiver<AcmeNotice>, others: Others) {
    while let Some(notice) = notices.recv().await {
        match notice {
            AcmeNotice::Answer {
                token,
                key_authorization: Some(answer),
            } => {
                others.challenges.insert(token.clone(), answer);
                others.service.publish_acme_held(token);
            }
            AcmeNotice::Answer {
                token,
                key_authorization: None,
            } => {
                others.challenges.lock().remove(&token);
                others.ordered.notify_one();
            }
            AcmeNotice::Held { token, node } => {
                others.acks.lock().entry(token).or_default().insert(node);
                others.acks.changed.notify_waiters();
            }
        }
    }
}

/// One order, start to finish: the certificate ends in the cache (the
/// caller's loop then serves it). In a cluster, the challenge answers are
/// shared with the other nodes and withdrawn once the certificate is in
/// the cache (or the order failed).
async fn order(
    config: &Config,
    challenges: &Challenges,
    cluster: Option<(&Service, &Acks)>,
) -> anyhow::Result<()> {
    let mut tokens = Vec::new();
    let result = order_with(config, challenges, cluster, &mut tokens).await;
    {
        let mut answers = challenges.lock();
        for t in &tokens {
            answers.remove(t);
        }
    }
    if let Some((service, acks)) = cluster {
        let mut held = acks.lock();
        for t in tokens {
            held.remove(&t);
            service.publish_acme_challenge(t, None);
        }
    }
    result
}

async fn order_with(
    config: &Config,
    challenges: &Challenges,
    cluster: Option<(&Service, &Acks)>,
    tokens: &mut Vec<String>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.cache)
        .with_context(|| format!("creating {}", config.cache.display()))?;
    let account = account(config).await?;
    let identifiers: Vec<Identifier> = config
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .context("placing the order")?;
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.context("reading an authorization")?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => bail!("an authorization is {other:?}"),
            }
            let mut challenge = authz
                .challenge(ChallengeType::Http01)
                .context("the ACME server offers no http-01 challenge")?;
            let answer = challenge.key_authorization().as_str().to_owned();
            challenges.insert(challenge.token.clone(), answer.clone());
            tokens.push(challenge.token.clone());
            if let Some((service, acks)) = cluster {
                // The check may reach any node: all must serve the answer
                // before the certificate authority is asked to check.
                let nodes = service.cluster_peers().unwrap_or_default();
                service.publish_acme_challenge(challenge.token.clone(), Some(answer));
                if !acks.wait_all(&challenge.token, &nodes).await {
                    tracing::warn!(
                        "not every node said it serves the ACME answer within {ACK_WAIT:?}; asking for the check anyway"
                    );
                }
            }
            challenge
                .set_ready()
                .await
                .context("answering a challenge")?;
        }
        let retries = RetryPolicy::new().timeout(Duration::from_secs(120));
        let status = order
            .poll_ready(&retries)
            .await
            .context("waiting for validation")?;
        if status != OrderStatus::Ready {
            bail!("the order is {status:?}, not ready: was port 80 of the names reachable?");
        }
        let key_pem = order.finalize().await.context("finalizing")?;
        let cert_pem = order
            .poll_certificate(&retries)
            .await
            .context("downloading the certificate")?;
        Ok((cert_pem, key_pem))
    }
    .await;
    let (cert_pem, key_pem) = result?;
    // Checked before it replaces anything.
    super::files::certified_key(cert_pem.as_bytes(), key_pem.as_bytes())?;
    write_private(&config.cache.join(KEY_FILE), key_pem.as_bytes())?;
    write_private(&config.cache.join(CERT_FILE), cert_pem.as_bytes())?;
    Ok(())
}

/// Writes `bytes` to `path` whole (a temporary file renamed over it),
/// readable by the owner only.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
