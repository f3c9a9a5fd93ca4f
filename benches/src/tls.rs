//! Figures 10 and 11, the cost of TLS: churn (figure 6's sessions) and
//! fan-out (figure 1's room) against a mesh-server serving HTTPS
//! (`--tls-cert`/`--tls-key`, a test CA and leaf made here with rcgen),
//! each against the same workload on a plain-TCP mesh-server in the same
//! run. Both servers run at once, pinned alike; the load alternates between
//! them in rounds (and which goes first), so a change in what else the
//! machine runs hits both. The ratio is TLS / plain; beside each rate, the
//! CPU time per operation of the server and of the load tool (which does
//! the client side of every handshake and decrypts every delivery).
//!
//! The clients use rustls on ring with its default in-memory session
//! cache, so a reconnecting churn client may resume a session (TLS 1.3
//! tickets) as a reconnecting app would; the figure counts how many
//! handshakes did.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::churn;
use crate::client::TLS_NAME;
use crate::ctx::{Ctx, median};
use crate::fanout;
use crate::report::Figure;

/// A test CA and a leaf for `localhost` and 127.0.0.1, in a temporary
/// folder (removed on drop), and a client configuration trusting only
/// that CA.
#[derive(Debug)]
pub(crate) struct TestTls {
    _dir: tempfile::TempDir,
    /// The leaf's certificate chain (PEM).
    pub(crate) cert: PathBuf,
    /// The leaf's private key (PEM).
    pub(crate) key: PathBuf,
    pub(crate) client: Arc<rustls::ClientConfig>,
}

impl TestTls {
    pub(crate) fn new(parent: &Path) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mesh bench CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca_pem = params.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(params, ca_key);

        let leaf = CertificateParams::new(vec![TLS_NAME.to_owned(), "127.0.0.1".to_owned()])?;
        let leaf_key = KeyPair::generate()?;
        let leaf_pem = leaf.signed_by(&leaf_key, &issuer)?.pem();

        let dir = tempfile::Builder::new()
            .prefix("mesh-bench-tls-")
            .tempdir_in(parent)
            .context("creating the certificates' folder")?;
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, leaf_pem).context("writing the certificate")?;
        std::fs::write(&key, leaf_key.serialize_pem()).context("writing the key")?;
        let client = mesh_core::client::TlsConfig::with_ca_pem(ca_pem.as_bytes())
            .context("client TLS configuration")?
            .rustls();
        Ok(Self {
            _dir: dir,
            cert,
            key,
            client,
        })
    }
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// CPU microseconds per operation: `cpu` (a share of one core) over `rate`.
fn us_per(cpu: f64, rate: f64) -> f64 {
    cpu * 1e6 / rate.max(1e-9)
}

/// Figure 10: churn sessions per second over wss:// against ws://.
pub(crate) async fn run_churn(ctx: &Ctx) -> anyhow::Result<Figure> {
    let rounds = if ctx.quick { 2 } else { 4 };
    let window = ctx.window / 2;
    let tls = TestTls::new(&ctx.data_parent)?;
    let tls_server = ctx.mesh_tls(&tls)?;
    let plain_server = ctx.mesh()?;

    let (tokens, room) = churn::prepare(&tls_server).await?;
    let target = tls_server.target();
    // TLS handshakes: (resumed, full), over the whole figure.
    let handshakes = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let counts = handshakes.clone();
    let tls_one = Arc::new(move |i: usize| {
        let session = churn::session(target.clone(), tokens.clone(), room.clone(), i);
        let counts = counts.clone();
        async move {
            match session.await? {
                Some(true) => counts.0.fetch_add(1, Ordering::Relaxed),
                _ => counts.1.fetch_add(1, Ordering::Relaxed),
            };
            Ok(())
        }
    });
    let (tokens, room) = churn::prepare(&plain_server).await?;
    let target = plain_server.target();
    let plain_one = Arc::new(move |i: usize| {
        let session = churn::session(target.clone(), tokens.clone(), room.clone(), i);
        async move { session.await.map(|_| ()) }
    });

    let (mut t_rates, mut p_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    // CPU microseconds per session: server and load tool, TLS and plain.
    let (mut t_srv, mut p_srv, mut t_load, mut p_load) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut failed = (0, 0);
    let mut last = None;
    for round in 0..rounds {
        let (t, p) = if round % 2 == 0 {
            let t = churn::drive(&tls_server, churn::LOOPS, window, tls_one.clone()).await?;
            let p = churn::drive(&plain_server, churn::LOOPS, window, plain_one.clone()).await?;
            (t, p)
        } else {
            let p = churn::drive(&plain_server, churn::LOOPS, window, plain_one.clone()).await?;
            let t = churn::drive(&tls_server, churn::LOOPS, window, tls_one.clone()).await?;
            (t, p)
        };
        ratios.push(t.rate / p.rate.max(1e-9));
        t_rates.push(t.rate);
        p_rates.push(p.rate);
        t_srv.push(us_per(t.server_cpu, t.rate));
        p_srv.push(us_per(p.server_cpu, p.rate));
        t_load.push(us_per(t.load_cpu, t.rate));
        p_load.push(us_per(p.load_cpu, p.rate));
        failed = (failed.0 + t.failed, failed.1 + p.failed);
        last = Some((t, p));
    }
    drop((tls_server, plain_server, tls));
    let (t, p) = last.ok_or_else(|| anyhow::anyhow!("no rounds"))?;

    let ratio = median(&ratios);
    let mut fig = Figure::new(
        "tls-churn",
        "churn over TLS: TCP + TLS handshake + WebSocket upgrade (wss://) + system.hello + room.join + close, per second",
    )
    .value(median(&t_rates), "sessions/s")
    .baseline(
        "the same sessions over plain TCP (ws://) to a second mesh-server, same run",
        median(&p_rates),
    );
    fig.ratio = Some(ratio);
    Ok(fig
        .detail("rounds", format!("ratios {}", list(&ratios)))
        .detail(
            "cpu/sess",
            format!(
                "server CPU per session (median): {:.0} us TLS, {:.0} us plain (TLS/plain {:.3})",
                median(&t_srv),
                median(&p_srv),
                median(&t_srv) / median(&p_srv).max(1e-9)
            ),
        )
        .detail(
            "load/sess",
            format!(
                "load-tool CPU per session (median): {:.0} us TLS, {:.0} us plain (TLS/plain {:.3})",
                median(&t_load),
                median(&p_load),
                median(&t_load) / median(&p_load).max(1e-9)
            ),
        )
        .detail("srv_us_tls", median(&t_srv))
        .detail("srv_us_plain", median(&p_srv))
        .detail(
            "resumed",
            format!(
                "{} of {} completed TLS sessions resumed (the rest: full handshakes)",
                handshakes.0.load(Ordering::Relaxed),
                handshakes.0.load(Ordering::Relaxed) + handshakes.1.load(Ordering::Relaxed)
            ),
        )
        .detail("loops", churn::LOOPS as u64)
        .detail("failed", format!("{} TLS, {} plain", failed.0, failed.1))
        .detail(
            "srv_cpu",
            format!(
                "last round: {:.0}% TLS, {:.0}% plain",
                t.server_cpu * 100.0,
                p.server_cpu * 100.0
            ),
        )
        .detail(
            "busy",
            format!("last round: TLS: {}; plain: {}", t.cores, p.cores),
        )
        .note(
            "ratio = TLS / plain, median of the rounds' ratios; rates and CPU = medians; \
             clients keep rustls's default session cache",
        ))
}

/// Figure 11: room deliveries per second to wss:// receivers against ws://.
pub(crate) async fn run_fanout(ctx: &Ctx) -> anyhow::Result<Figure> {
    let subscribers = fanout::subscribers(ctx);
    let rounds = if ctx.quick { 2 } else { 4 };
    let warmup = Duration::from_secs(1);
    let window = ctx.window / 2;
    let tls = TestTls::new(&ctx.data_parent)?;
    let tls_server = ctx.mesh_tls(&tls)?;
    let plain_server = ctx.mesh()?;
    let (t_rig, t_frame) = fanout::mesh_rig(&tls_server, subscribers).await?;
    let (p_rig, p_frame) = fanout::mesh_rig(&plain_server, subscribers).await?;

    let (mut t_rates, mut p_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut t_srv, mut p_srv, mut t_load, mut p_load) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for round in 0..rounds {
        let (t, p) = if round % 2 == 0 {
            let t = t_rig.measure(warmup, window).await?;
            let p = p_rig.measure(warmup, window).await?;
            (t, p)
        } else {
            let p = p_rig.measure(warmup, window).await?;
            let t = t_rig.measure(warmup, window).await?;
            (t, p)
        };
        ratios.push(t.deliveries_per_s / p.deliveries_per_s.max(1e-9));
        t_rates.push(t.deliveries_per_s);
        p_rates.push(p.deliveries_per_s);
        t_srv.push(us_per(t.server_cpu, t.deliveries_per_s));
        p_srv.push(us_per(p.server_cpu, p.deliveries_per_s));
        t_load.push(us_per(t.load_cpu, t.deliveries_per_s));
        p_load.push(us_per(p.load_cpu, p.deliveries_per_s));
        last = Some((t, p));
    }
    let closed = (
        t_rig.closed.load(Ordering::Relaxed),
        p_rig.closed.load(Ordering::Relaxed),
    );
    drop((t_rig, p_rig, tls_server, plain_server, tls));
    let (t, p) = last.ok_or_else(|| anyhow::anyhow!("no rounds"))?;

    let ratio = median(&ratios);
    let mut fig = Figure::new(
        "tls-fanout",
        format!(
            "fan-out over TLS: room deliveries per second to {subscribers} wss:// subscribers, 100-byte messages"
        ),
    )
    .value(median(&t_rates), "deliveries/s")
    .baseline(
        format!(
            "the same room with {subscribers} ws:// subscribers on a second mesh-server, same run"
        ),
        median(&p_rates),
    );
    fig.ratio = Some(ratio);
    Ok(fig
        .detail("rounds", format!("ratios {}", list(&ratios)))
        .detail(
            "cpu/deliv",
            format!(
                "server CPU per delivery (median): {:.2} us TLS, {:.2} us plain (TLS/plain {:.3})",
                median(&t_srv),
                median(&p_srv),
                median(&t_srv) / median(&p_srv).max(1e-9)
            ),
        )
        .detail(
            "load/deliv",
            format!(
                "load-tool CPU per delivery (median): {:.2} us TLS, {:.2} us plain (TLS/plain {:.3})",
                median(&t_load),
                median(&p_load),
                median(&t_load) / median(&p_load).max(1e-9)
            ),
        )
        .detail("srv_us_tls", median(&t_srv))
        .detail("srv_us_plain", median(&p_srv))
        .detail(
            "msgs/s",
            format!(
                "last round: {:.0} TLS, {:.0} plain",
                t.messages_per_s, p.messages_per_s
            ),
        )
        .detail("frame_len", format!("{t_frame} TLS, {p_frame} plain"))
        .detail(
            "srv_cpu",
            format!(
                "last round: {:.0}% TLS, {:.0}% plain",
                t.server_cpu * 100.0,
                p.server_cpu * 100.0
            ),
        )
        .detail(
            "load_cpu",
            format!(
                "last round: {:.0}% TLS, {:.0}% plain",
                t.load_cpu * 100.0,
                p.load_cpu * 100.0
            ),
        )
        .detail(
            "busy",
            format!("last round: TLS: {}; plain: {}", t.cores, p.cores),
        )
        .detail(
            "closed",
            format!(
                "{} TLS receivers, {} plain receivers closed by the server",
                closed.0, closed.1
            ),
        )
        .note("ratio = TLS / plain, median of the rounds' ratios; rates and CPU = medians"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_leaf_and_its_key() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("temp dir");
        let tls = TestTls::new(dir.path()).expect("test TLS");
        let cert = std::fs::read_to_string(&tls.cert).expect("cert");
        let key = std::fs::read_to_string(&tls.key).expect("key");
        assert!(cert.contains("BEGIN CERTIFICATE"));
        assert!(key.contains("PRIVATE KEY"));
    }
}
