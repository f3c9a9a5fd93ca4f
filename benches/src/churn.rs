//! Figure 6, churn: connect + authenticate + join (+ close) per second
//! against bare TCP accept + WebSocket upgrade (+ close) to the baseline
//! server, by the same client loops. Both servers run at once and the
//! load alternates between them in rounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::{self, Api, Target};
use crate::ctx::{CpuMeter, Ctx, median};
use crate::proc::Server;
use crate::report::Figure;

/// Concurrent client loops: enough to keep the server busy (a mesh
/// session is three round trips, the baseline's one).
pub(crate) const LOOPS: usize = 64;
/// Accounts the mesh sessions sign in as, in turn.
const USERS: usize = 16;

/// What one window measured.
#[derive(Debug, Clone)]
pub(crate) struct Churn {
    pub(crate) rate: f64,
    pub(crate) failed: u64,
    /// Server and load-tool CPU use, as a share of one core.
    pub(crate) server_cpu: f64,
    pub(crate) load_cpu: f64,
    pub(crate) cores: String,
}

/// Accounts and a room for churn sessions on a mesh-server: the accounts'
/// tokens and the room's id.
pub(crate) async fn prepare(server: &Server) -> anyhow::Result<(Arc<Vec<String>>, String)> {
    let api = Api::at(&server.target())?;
    let accounts = api.register_many("churn", USERS).await?;
    let room = api.room_with("churn", &accounts).await?;
    Ok((
        Arc::new(accounts.iter().map(|a| a.token.clone()).collect()),
        room,
    ))
}

/// One mesh session: connect (with the TLS handshake for a TLS target),
/// authenticate with the `i`th token, `system.hello`, `room.join`, close.
/// Over TLS, says whether the handshake resumed a session (see
/// [`client::resumed`]).
pub(crate) async fn session(
    target: Target,
    tokens: Arc<Vec<String>>,
    room: String,
    i: usize,
) -> anyhow::Result<Option<bool>> {
    let token = tokens
        .get(i % tokens.len().max(1))
        .ok_or_else(|| anyhow::anyhow!("no churn accounts"))?;
    let mut ws = client::ws_hello(target, token).await?;
    let resumed = client::resumed(&ws);
    client::send(&mut ws, "room.join", "join", json!({"room_id": room})).await?;
    client::reply(&mut ws, "join").await?;
    client::close(ws).await;
    Ok(resumed)
}

/// Runs `loops` concurrent loops of `one` for a second, then counts
/// completions over `window`.
pub(crate) async fn drive<F, Fut>(
    server: &Server,
    loops: usize,
    window: Duration,
    one: Arc<F>,
) -> anyhow::Result<Churn>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..loops)
        .map(|i| {
            let (one, stop, done, failed) =
                (one.clone(), stop.clone(), done.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match one(i).await {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (d0, t0, cpu) = (
        done.load(Ordering::Relaxed),
        Instant::now(),
        CpuMeter::start(server),
    );
    tokio::time::sleep(window).await;
    let rate = (done.load(Ordering::Relaxed) - d0) as f64 / t0.elapsed().as_secs_f64();
    let (server_cpu, load_cpu) = cpu.read();
    let cores = cpu.cores();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Ok(Churn {
        rate,
        failed: failed.load(Ordering::Relaxed),
        server_cpu,
        load_cpu,
        cores,
    })
}

pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Figure> {
    let loops = LOOPS;
    let rounds = if ctx.quick { 2 } else { 4 };
    let window = ctx.window / 2;

    let mesh_server = ctx.mesh()?;
    let (tokens, room) = prepare(&mesh_server).await?;
    let target = mesh_server.target();
    let mesh_one = Arc::new(move |i: usize| {
        let session = session(target.clone(), tokens.clone(), room.clone(), i);
        async move { session.await.map(|_| ()) }
    });

    let base_server = ctx.baseline()?;
    let addr = base_server.addr;
    let base_one = Arc::new(move |_: usize| async move {
        let ws = client::ws(addr, None).await?;
        client::close(ws).await;
        Ok(())
    });

    let (mut m_rates, mut b_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    // Server CPU microseconds per session.
    let (mut m_cost, mut b_cost) = (Vec::new(), Vec::new());
    let mut failed = (0, 0);
    let mut last = None;
    for _ in 0..rounds {
        let m = drive(&mesh_server, loops, window, mesh_one.clone()).await?;
        let b = drive(&base_server, loops, window, base_one.clone()).await?;
        ratios.push(m.rate / b.rate.max(1e-9));
        m_rates.push(m.rate);
        m_cost.push(m.server_cpu * 1e6 / m.rate.max(1e-9));
        b_cost.push(b.server_cpu * 1e6 / b.rate.max(1e-9));
        b_rates.push(b.rate);
        failed = (failed.0 + m.failed, failed.1 + b.failed);
        last = Some((m, b));
    }
    drop((mesh_server, base_server));
    let (m, b) = last.ok_or_else(|| anyhow::anyhow!("no rounds"))?;

    let ratio = median(&ratios);
    let list = ratios
        .iter()
        .map(|x| format!("{x:.3}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut fig = Figure::new(
        "churn",
        "connect + authenticate (token) + system.hello + room.join + close, per second",
    )
    .value(median(&m_rates), "sessions/s")
    .baseline(
        "bare TCP accept + WebSocket upgrade + close (baseline server)",
        median(&b_rates),
    );
    fig.ratio = Some(ratio);
    Ok(fig
        .goal("ratio >= 0.5", ratio >= 0.5)
        .detail("rounds", format!("ratios {list}"))
        .detail(
            "cpu/session",
            format!(
                "server CPU per session (median): {:.0} us mesh, {:.0} us baseline (ratio {:.3})",
                median(&m_cost),
                median(&b_cost),
                median(&b_cost) / median(&m_cost).max(1e-9)
            ),
        )
        .detail("loops", loops as u64)
        .detail(
            "failed",
            format!("{} mesh, {} baseline", failed.0, failed.1),
        )
        .detail(
            "srv_cpu",
            format!(
                "last round: {:.0}% mesh, {:.0}% baseline",
                m.server_cpu * 100.0,
                b.server_cpu * 100.0
            ),
        )
        .detail(
            "busy",
            format!("last round: mesh: {}; baseline: {}", m.cores, b.cores),
        )
        .note("ratio = median of the rounds' ratios; measured and baseline = medians"))
}
