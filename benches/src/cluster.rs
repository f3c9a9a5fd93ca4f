//! Figure 13, cluster fan-out: one room's deliveries per second with its
//! receivers spread evenly over three mesh-server nodes on one PostgreSQL
//! and one NATS, against one node on the same PostgreSQL (no bus), in the
//! same run; at saturation, then at a fixed offered rate (half of the
//! lower of the two saturated message rates), with send-to-delivery
//! latency at both.
//!
//! As in figure 1, both sides run at once with all their connections open
//! and the load alternates between them in rounds (which side goes first
//! alternates too); the ratios (3 nodes / 1 node) are the medians of the
//! rounds' ratios. Server CPU is the sum over the side's node processes;
//! PostgreSQL's (the postmaster with its backends) and nats-server's are
//! measured beside it, with the WAL PostgreSQL wrote and the bytes
//! nats-server moved. Every process shares the same machine: on two cores
//! this shows what the cluster costs, not how it scales.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _, TryStreamExt as _};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Api, Ws};
use crate::ctx::{CpuMeter, Ctx, cpu_secs, median};
use crate::fanout::{is_reply, send_frame};
use crate::latency::{epoch, stamp_of, stamped_content};
use crate::pg::{self, Pg, ServicePids, ServiceSnapshot};
use crate::proc::Server;
use crate::report::Figure;
use crate::stats::Samples;

/// Nodes of the cluster side.
const NODES: usize = 3;
/// Sending connections (besides the receivers), spread over the nodes
/// like the receivers: mesh answers one request of a connection at a time.
const SENDERS: usize = 9;
/// Messages in flight (unanswered) per sender.
const WINDOW: u64 = 64;
/// How far (in messages) the receivers may fall behind on average; well
/// under the server's 1,000-frame queue.
const LAG: u64 = 200;
/// One receiver in this many records send-to-delivery latencies.
const SAMPLE_EVERY: usize = 10;
/// `pace`: stopped.
const STOP: u64 = 0;
/// `pace`: as fast as the windows allow.
const PEAK: u64 = u64::MAX;

/// One side: its nodes' pids, its connections' tasks and counters.
#[derive(Debug)]
struct Side {
    pids: Vec<u32>,
    delivered: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    /// Messages a fixed-rate sender could not offer (its window full).
    skipped: Arc<AtomicU64>,
    frame_len: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    failure: Arc<Mutex<Option<String>>>,
    /// [`STOP`], [`PEAK`], or milli-messages per second per sender
    /// (a watch: stopped senders wait on it, costing nothing).
    pace: watch::Sender<u64>,
    /// Latencies of messages stamped in `[from_ns, to_ns)` are recorded.
    from_ns: Arc<AtomicU64>,
    to_ns: Arc<AtomicU64>,
    samples: Vec<Arc<Mutex<Samples>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Side {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

/// What one window measured (counts and seconds, to be divided later).
#[derive(Debug, Clone, Default)]
struct Window {
    secs: f64,
    deliveries: u64,
    messages: u64,
    /// Sum over the side's node processes.
    nodes_cpu: f64,
    /// Each node process's CPU seconds, in the order of the side's pids.
    per_node: Vec<f64>,
    load_cpu: f64,
    services: ServiceSnapshot,
    wal: i64,
    skipped: u64,
    cores: String,
    samples: Samples,
}

impl Window {
    fn deliveries_per_s(&self) -> f64 {
        self.deliveries as f64 / self.secs.max(1e-9)
    }
    fn messages_per_s(&self) -> f64 {
        self.messages as f64 / self.secs.max(1e-9)
    }
    /// Node CPU microseconds per delivery.
    fn nodes_us(&self) -> f64 {
        self.nodes_cpu * 1e6 / (self.deliveries.max(1) as f64)
    }
    /// Nodes + PostgreSQL + NATS CPU microseconds per delivery.
    fn all_us(&self) -> f64 {
        (self.nodes_cpu + self.services.pg_cpu + self.services.nats_cpu) * 1e6
            / (self.deliveries.max(1) as f64)
    }
    fn per_message(&self, v: f64) -> f64 {
        v / (self.messages.max(1) as f64)
    }
}

fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl Side {
    /// Starts the receivers' and senders' tasks; nothing is sent until
    /// [`Side::measure`].
    fn start(pids: Vec<u32>, room: &str, senders: Vec<Ws>, receivers: Vec<Ws>) -> Self {
        let n = receivers.len() as u64;
        let mut side = Self {
            pids,
            delivered: Arc::default(),
            acked: Arc::default(),
            sent: Arc::default(),
            skipped: Arc::default(),
            frame_len: Arc::default(),
            closed: Arc::default(),
            failure: Arc::default(),
            pace: watch::Sender::new(STOP),
            from_ns: Arc::new(AtomicU64::new(u64::MAX)),
            to_ns: Arc::new(AtomicU64::new(0)),
            samples: Vec::new(),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for (j, mut ws) in receivers.into_iter().enumerate() {
            let sample = (j % SAMPLE_EVERY == 0).then(|| Arc::new(Mutex::new(Samples::default())));
            if let Some(s) = &sample {
                side.samples.push(s.clone());
            }
            let (delivered, frame_len, closed, from, to) = (
                side.delivered.clone(),
                side.frame_len.clone(),
                side.closed.clone(),
                side.from_ns.clone(),
                side.to_ns.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) if is_created(t.as_str()) => {
                            delivered.fetch_add(1, Ordering::Relaxed);
                            frame_len.store(t.len(), Ordering::Relaxed);
                            if let Some(s) = &sample
                                && let Some(stamp) = stamp_of(t.as_str())
                                && stamp >= from.load(Ordering::Relaxed)
                                && stamp < to.load(Ordering::Relaxed)
                            {
                                let late = now_ns().saturating_sub(stamp);
                                s.lock().unwrap_or_else(|e| e.into_inner()).push_ns(late);
                            }
                        }
                        Message::Close(_) => {
                            closed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        _ => {}
                    }
                }
            }));
        }
        for sender in senders {
            let (mut sink, mut stream) = sender.split();
            let mine = Arc::new(AtomicU64::new(0));
            let (acked, mine2, failure) = (side.acked.clone(), mine.clone(), side.failure.clone());
            tasks.push(tokio::spawn(async move {
                while let Some(Ok(msg)) = stream.next().await {
                    if let Message::Text(t) = msg {
                        let t = t.as_str();
                        if is_created(t) && is_reply(t) {
                            acked.fetch_add(1, Ordering::Relaxed);
                            mine2.fetch_add(1, Ordering::Relaxed);
                        } else if t.contains("\"type\":\"error\"") {
                            *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(t.to_owned());
                        }
                    }
                }
            }));
            let (delivered, sent_total, skipped, mut pace) = (
                side.delivered.clone(),
                side.sent.clone(),
                side.skipped.clone(),
                side.pace.subscribe(),
            );
            let room = room.to_owned();
            tasks.push(tokio::spawn(async move {
                let mut sent = 0u64;
                // (pace, since, messages sent before it)
                let mut phase: Option<(u64, Instant, u64)> = None;
                loop {
                    let p = *pace.borrow_and_update();
                    if p == STOP {
                        phase = None;
                        if pace.changed().await.is_err() {
                            return;
                        }
                        continue;
                    }
                    if phase.is_none_or(|(q, _, _)| q != p) {
                        phase = Some((p, Instant::now(), sent));
                    }
                    let due = match &mut phase {
                        Some((p, since, base)) if *p != PEAK => {
                            let want = *base
                                + (since.elapsed().as_secs_f64() * *p as f64 / 1000.0) as u64
                                + 1;
                            // Could not keep up: what is more than one
                            // window behind is not offered (counted).
                            let behind = want.saturating_sub(sent + WINDOW);
                            *base += behind;
                            skipped.fetch_add(behind, Ordering::Relaxed);
                            want - behind
                        }
                        _ => u64::MAX,
                    };
                    let mut batch = 0;
                    while sent < due
                        && sent - mine.load(Ordering::Relaxed) < WINDOW
                        && (sent_total.load(Ordering::Relaxed) * n)
                            .saturating_sub(delivered.load(Ordering::Relaxed))
                            <= n * LAG
                        && batch < 16
                    {
                        let frame = send_frame(&room, sent, &stamped_content());
                        if sink.feed(Message::Text(frame.into())).await.is_err() {
                            return;
                        }
                        sent += 1;
                        sent_total.fetch_add(1, Ordering::Relaxed);
                        batch += 1;
                    }
                    if batch > 0 && sink.flush().await.is_err() {
                        return;
                    }
                    if batch < 16 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }));
        }
        side.tasks = tasks;
        side
    }

    fn per_node_cpu(&self) -> Vec<f64> {
        self.pids.iter().map(|p| cpu_secs(*p)).collect()
    }

    /// Sends at `pace` for `warmup` + `window`, counting over `window`;
    /// then stops and waits until everything sent is answered and
    /// delivered.
    async fn measure(
        &self,
        pace: u64,
        warmup: Duration,
        window: Duration,
        pg: &Pg,
        services: &ServicePids,
    ) -> anyhow::Result<Window> {
        self.pace.send_replace(pace);
        tokio::time::sleep(warmup).await;
        let wal0 = pg.wal_bytes().await?;
        let (d0, a0, s0, n0) = (
            self.delivered.load(Ordering::Relaxed),
            self.acked.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
            self.per_node_cpu(),
        );
        let svc0 = services.snapshot();
        let cpu = CpuMeter::start_pid(self.pids[0]);
        let t0 = Instant::now();
        self.to_ns.store(u64::MAX, Ordering::Relaxed);
        self.from_ns.store(now_ns(), Ordering::Relaxed);
        tokio::time::sleep(window).await;
        self.to_ns.store(now_ns(), Ordering::Relaxed);
        let (d1, a1, s1, secs) = (
            self.delivered.load(Ordering::Relaxed),
            self.acked.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
            t0.elapsed().as_secs_f64(),
        );
        let per_node: Vec<f64> = self
            .per_node_cpu()
            .iter()
            .zip(&n0)
            .map(|(b, a)| b - a)
            .collect();
        let nodes_cpu = per_node.iter().sum();
        let svc = services.since(&svc0);
        let (_, load) = cpu.read();
        let cores = cpu.cores();
        let wal = pg.wal_bytes().await? - wal0;
        self.pace.send_replace(STOP);
        // Drain: every message answered, and deliveries settled.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = u64::MAX;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let d = self.delivered.load(Ordering::Relaxed);
            if self.acked.load(Ordering::Relaxed) >= self.sent.load(Ordering::Relaxed) && d == last
            {
                break;
            }
            last = d;
        }
        if let Some(error) = self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            bail!("a node refused a message: {error}");
        }
        let mut samples = Samples::default();
        for s in &self.samples {
            samples.extend(std::mem::take(
                &mut *s.lock().unwrap_or_else(|e| e.into_inner()),
            ));
        }
        Ok(Window {
            secs,
            deliveries: d1 - d0,
            messages: a1 - a0,
            nodes_cpu,
            per_node,
            load_cpu: load * secs,
            services: svc,
            wal,
            skipped: s1 - s0,
            cores,
            samples,
        })
    }
}

fn is_created(text: &str) -> bool {
    text.contains("\"type\":\"chat.message.created\"")
}

/// Opens `n` WebSockets with `system.hello`, connection `j` to
/// `servers[j % servers.len()]`, 64 at a time.
async fn open_spread(
    servers: &[Server],
    n: usize,
    token: impl Fn(usize) -> String,
) -> anyhow::Result<Vec<Ws>> {
    let targets: Vec<client::Target> = servers.iter().map(Server::target).collect();
    futures_util::stream::iter((0..n).map(|j| (targets[j % targets.len()].clone(), token(j))))
        .map(|(target, token)| async move { client::ws_hello(target, &token).await })
        .buffered(64)
        .try_collect()
        .await
        .with_context(|| {
            let logs: Vec<String> = servers.iter().map(Server::last_log).collect();
            format!(
                "opening {n} connections; the nodes' logs:\n{}",
                logs.join("\n--\n")
            )
        })
}

/// A room on `servers` (made through the first) with `receivers`
/// receivers over 100 accounts and [`SENDERS`] senders, spread evenly
/// over the first `spread` servers; CPU is counted over all of them.
async fn side(
    servers: &[Server],
    spread: usize,
    receivers: usize,
    prefix: &str,
) -> anyhow::Result<Side> {
    let users = 100.min(receivers).max(SENDERS);
    let api = Api::new(servers[0].addr);
    let accounts = api.register_many(prefix, users).await?;
    let room = api.room_with("cluster", &accounts).await?;
    let on = &servers[..spread.clamp(1, servers.len())];
    let conns = open_spread(on, receivers, |j| accounts[j % users].token.clone()).await?;
    let mut senders = Vec::new();
    for (s, account) in accounts.iter().take(SENDERS).enumerate() {
        senders.push(client::ws_hello(on[s % on.len()].target(), &account.token).await?);
    }
    let pids = servers.iter().map(Server::pid).collect();
    Ok(Side::start(pids, &room, senders, conns))
}

pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Figure> {
    let url = pg::postgres_url(ctx, "cluster-fanout")?;
    let nats = pg::nats_url(ctx, "cluster-fanout")?;
    let mut pg = Pg::connect(&url).await?;
    let result = run_on(ctx, &mut pg, &nats).await;
    pg.drop_databases().await;
    result
}

/// Per mode (saturation, fixed rate): each side's windows, in rounds.
#[derive(Debug, Default)]
struct Mode {
    cluster: Vec<Window>,
    single: Vec<Window>,
}

impl Mode {
    fn ratios(&self, f: impl Fn(&Window) -> f64) -> Vec<f64> {
        self.cluster
            .iter()
            .zip(&self.single)
            .map(|(c, s)| f(c) / f(s).max(1e-12))
            .collect()
    }

    fn med(windows: &[Window], f: impl Fn(&Window) -> f64) -> f64 {
        median(&windows.iter().map(f).collect::<Vec<_>>())
    }

    /// Pooled latency quantiles of a side's windows: (p50, p99, samples).
    fn latency(windows: &[Window]) -> (f64, f64, usize) {
        let mut all = Samples::default();
        for w in windows {
            all.extend(w.samples.clone());
        }
        (all.quantile_ms(0.5), all.quantile_ms(0.99), all.len())
    }

    /// One line comparing the sides: `what` of each side (median) and the
    /// median of the rounds' ratios.
    fn line(&self, unit: &str, f: impl Fn(&Window) -> f64 + Copy) -> String {
        let ratios = self.ratios(f);
        format!(
            "3 nodes {} {unit}, 1 node {} {unit}, ratio {:.3} (rounds {})",
            crate::report::fmt_num(Self::med(&self.cluster, f)),
            crate::report::fmt_num(Self::med(&self.single, f)),
            median(&ratios),
            list(&ratios)
        )
    }

    fn latency_line(&self) -> String {
        let (c50, c99, cn) = Self::latency(&self.cluster);
        let (s50, s99, sn) = Self::latency(&self.single);
        format!(
            "p50 {c50:.2} ms / {s50:.2} ms, p99 {c99:.2} ms / {s99:.2} ms (3 nodes / 1 node; ratios {:.2}, {:.2}; {cn} / {sn} samples)",
            c50 / s50.max(1e-9),
            c99 / s99.max(1e-9)
        )
    }

    /// Per message sent: PostgreSQL and NATS CPU, WAL, NATS bytes; for
    /// one side.
    fn services_line(windows: &[Window]) -> String {
        format!(
            "per message: PostgreSQL CPU {:.0} us, nats-server CPU {:.1} us, WAL {:.0} B, NATS in {:.0} B / out {:.0} B; all processes {:.2} us per delivery",
            Self::med(windows, |w| w.per_message(w.services.pg_cpu) * 1e6),
            Self::med(windows, |w| w.per_message(w.services.nats_cpu) * 1e6),
            Self::med(windows, |w| w.per_message(w.wal as f64)),
            Self::med(windows, |w| w.per_message(w.services.nats_in as f64)),
            Self::med(windows, |w| w.per_message(w.services.nats_out as f64)),
            Self::med(windows, Window::all_us),
        )
    }
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn run_on(ctx: &Ctx, pg: &mut Pg, nats: &str) -> anyhow::Result<Figure> {
    // 333 receivers per node (50 for a smoke test).
    let receivers = if ctx.quick { 150 } else { 999 };
    let rounds = if ctx.quick { 2 } else { 4 };
    let warmup = Duration::from_secs(1);
    let window = ctx.window / 2;
    let cluster_url = pg.create_database().await?;
    let single_url = pg.create_database().await?;
    let services = ServicePids {
        pg: pg.postmaster,
        nats: pg::nats_pid(nats),
    };

    // Three nodes in one data folder (one signing key), one NATS prefix of
    // their own; the first writes the keys before the others start.
    let shared = tempfile::Builder::new()
        .prefix("mesh-bench-cluster-")
        .tempdir_in(&ctx.data_parent)
        .context("creating the nodes' data folder")?;
    let prefix = format!(
        "bench{}",
        &mesh_core::protocol::RoomId::new()
            .as_uuid()
            .simple()
            .to_string()[..8]
    );
    let mut nodes = Vec::new();
    for k in 0..NODES {
        let flags: Vec<String> = [
            "--store",
            &cluster_url,
            "--bus",
            nats,
            "--bus-prefix",
            &prefix,
            "--node-id",
            &format!("bench-{k}"),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        nodes.push(ctx.mesh_with(&flags, Some(shared.path()))?);
    }
    let single = ctx.mesh_with(&["--store".to_owned(), single_url.clone()], None)?;
    let cluster_side = side(&nodes, NODES, receivers, "cl").await?;
    let single_side = side(std::slice::from_ref(&single), 1, receivers, "sg").await?;
    // A room of the cluster with every member on its first node: what the
    // other nodes spend on a message for a room they have nobody in (they
    // subscribe to every room's subject).
    let local_side = side(&nodes, 1, receivers / NODES, "lo").await?;
    // Untimed: a saturated window on each side (PostgreSQL makes its
    // first WAL segments, the nodes their first room state); then
    // PostgreSQL's statistics of the set-up settle (a backend reports them
    // up to 10 s after it went idle) before the run's are counted.
    let short = Duration::from_secs(2);
    cluster_side
        .measure(PEAK, warmup, short, pg, &services)
        .await?;
    single_side
        .measure(PEAK, warmup, short, pg, &services)
        .await?;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let stats0 = (
        pg.db_stats(&cluster_url).await?,
        pg.db_stats(&single_url).await?,
        cluster_side.acked.load(Ordering::Relaxed),
        single_side.acked.load(Ordering::Relaxed),
    );

    let both = |pace: u64, round: usize| {
        let (c, s, pg, services) = (&cluster_side, &single_side, &*pg, &services);
        async move {
            // Which side goes first alternates.
            if round.is_multiple_of(2) {
                let cw = c.measure(pace, warmup, window, pg, services).await?;
                let sw = s.measure(pace, warmup, window, pg, services).await?;
                Ok::<_, anyhow::Error>((cw, sw))
            } else {
                let sw = s.measure(pace, warmup, window, pg, services).await?;
                let cw = c.measure(pace, warmup, window, pg, services).await?;
                Ok((cw, sw))
            }
        }
    };

    let mut peak = Mode::default();
    for round in 0..rounds {
        let (c, s) = both(PEAK, round).await?;
        eprintln!(
            "   peak round {round}: 3 nodes {:.0} deliveries/s, 1 node {:.0}",
            c.deliveries_per_s(),
            s.deliveries_per_s()
        );
        peak.cluster.push(c);
        peak.single.push(s);
    }
    // The fixed rate: half of the lower saturated message rate.
    let offered = 0.5
        * Mode::med(&peak.cluster, Window::messages_per_s)
            .min(Mode::med(&peak.single, Window::messages_per_s));
    let per_sender_milli = ((offered * 1000.0 / SENDERS as f64) as u64).max(1);
    let mut fixed = Mode::default();
    for round in 0..rounds {
        let (c, s) = both(per_sender_milli, round).await?;
        eprintln!(
            "   fixed round {round}: 3 nodes {:.0} deliveries/s, 1 node {:.0}",
            c.deliveries_per_s(),
            s.deliveries_per_s()
        );
        fixed.cluster.push(c);
        fixed.single.push(s);
    }

    // PostgreSQL reports a backend's statistics up to 10 s after it went
    // idle: wait that long, then take the whole run's commits and rows.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let stats1 = (
        pg.db_stats(&cluster_url).await?,
        pg.db_stats(&single_url).await?,
        cluster_side.acked.load(Ordering::Relaxed),
        single_side.acked.load(Ordering::Relaxed),
    );
    let per_msg = |(x1, f1): (i64, i64), (x0, f0): (i64, i64), msgs: u64| {
        let m = msgs.max(1) as f64;
        ((x1 - x0) as f64 / m, (f1 - f0) as f64 / m)
    };
    let c_stats = per_msg(stats1.0, stats0.0, stats1.2 - stats0.2);
    let s_stats = per_msg(stats1.1, stats0.1, stats1.3 - stats0.3);
    let closed = (
        cluster_side.closed.load(Ordering::Relaxed),
        single_side.closed.load(Ordering::Relaxed),
    );
    let frame_len = cluster_side.frame_len.load(Ordering::Relaxed);

    // The one-node room, at the same offered rate (after the statistics:
    // its messages are in the cluster's database).
    let mut local = Vec::new();
    for _ in 0..rounds {
        local.push(
            local_side
                .measure(per_sender_milli, warmup, window, pg, &services)
                .await?,
        );
    }
    let local_line = {
        let per_msg_us = |w: &Window, cpu: f64| cpu * 1e6 / (w.messages.max(1) as f64);
        let first = Mode::med(&local, |w| per_msg_us(w, w.per_node[0]));
        let others = Mode::med(&local, |w| {
            let rest = &w.per_node[1..];
            per_msg_us(w, rest.iter().sum::<f64>() / rest.len().max(1) as f64)
        });
        format!(
            "room with all {} receivers and the senders on node 0, {:.0} messages/s: node CPU per message {:.0} us on node 0, {:.0} us on each node without a member (NATS in, decode, drop); nats-server {:.1} us and in {:.0} B / out {:.0} B per message",
            receivers / NODES,
            Mode::med(&local, Window::messages_per_s),
            first,
            others,
            Mode::med(&local, |w| w.per_message(w.services.nats_cpu) * 1e6),
            Mode::med(&local, |w| w.per_message(w.services.nats_in as f64)),
            Mode::med(&local, |w| w.per_message(w.services.nats_out as f64)),
        )
    };
    drop((cluster_side, single_side, local_side));
    drop((nodes, single, shared));

    let ratios = peak.ratios(Window::deliveries_per_s);
    let ratio = median(&ratios);
    let last = |m: &Mode| {
        format!(
            "3 nodes: {}; 1 node: {}",
            m.cluster.last().map_or("", |w| &w.cores),
            m.single.last().map_or("", |w| &w.cores)
        )
    };
    let mut fig = Figure::new(
        "cluster-fanout",
        format!(
            "one room's deliveries per second, {receivers} receivers spread over {NODES} nodes (PostgreSQL + NATS), 100-byte messages, saturated"
        ),
    )
    .value(
        Mode::med(&peak.cluster, Window::deliveries_per_s),
        "deliveries/s",
    )
    .baseline(
        format!("1 node on the same PostgreSQL (no bus), {receivers} receivers, same run"),
        Mode::med(&peak.single, Window::deliveries_per_s),
    );
    fig.ratio = Some(ratio);
    Ok(fig
        .detail("rounds", format!("ratios {}", list(&ratios)))
        .detail(
            "peak_msg/s",
            peak.line("messages/s", Window::messages_per_s),
        )
        .detail("peak_lat", peak.latency_line())
        .detail(
            "peak_cpu",
            peak.line("us node CPU per delivery", Window::nodes_us),
        )
        .detail(
            "peak_all",
            peak.line("us CPU per delivery, nodes + PostgreSQL + NATS", Window::all_us),
        )
        .detail("peak_svc_3", Mode::services_line(&peak.cluster))
        .detail("peak_svc_1", Mode::services_line(&peak.single))
        .detail(
            "peak_load",
            peak.line("us load-tool CPU per delivery", |w| {
                w.load_cpu * 1e6 / w.deliveries.max(1) as f64
            }),
        )
        .detail(
            "fixed_rate",
            format!(
                "offered {:.0} messages/s ({} x {:.1}/s; half of the lower saturated rate)",
                per_sender_milli as f64 * SENDERS as f64 / 1000.0,
                SENDERS,
                per_sender_milli as f64 / 1000.0
            ),
        )
        .detail(
            "fixed_deliv",
            fixed.line("deliveries/s", Window::deliveries_per_s),
        )
        .detail("fixed_lat", fixed.latency_line())
        .detail(
            "fixed_cpu",
            fixed.line("us node CPU per delivery", Window::nodes_us),
        )
        .detail(
            "fixed_all",
            fixed.line("us CPU per delivery, nodes + PostgreSQL + NATS", Window::all_us),
        )
        .detail("fixed_svc_3", Mode::services_line(&fixed.cluster))
        .detail("fixed_svc_1", Mode::services_line(&fixed.single))
        .detail(
            "skipped",
            format!(
                "fixed rate, messages not offered (window full): 3 nodes {}, 1 node {}",
                fixed.cluster.iter().map(|w| w.skipped).sum::<u64>(),
                fixed.single.iter().map(|w| w.skipped).sum::<u64>()
            ),
        )
        .detail(
            "pg_stats",
            format!(
                "whole run, per message sent (pg_stat_database): commits {:.2} / {:.2}, rows fetched {:.2} / {:.2} (3 nodes / 1 node)",
                c_stats.0, s_stats.0, c_stats.1, s_stats.1
            ),
        )
        .detail("one_node_room", local_line)
        .detail("services", services.describe())
        .detail("frame_len", frame_len as u64)
        .detail("busy", format!("last saturated round: {}", last(&peak)))
        .detail(
            "closed",
            format!(
                "{} receivers (3 nodes), {} (1 node) closed by the server",
                closed.0, closed.1
            ),
        )
        .note(
            "ratio = median of the rounds' ratios (3 nodes / 1 node); all processes share this machine's cores, so this is the cluster's overhead, not its scaling",
        ))
}
