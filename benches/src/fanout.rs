//! Figure 1, fan-out: room broadcast deliveries per second with 1,000
//! subscribers and 100-byte messages, mesh-server against the bare
//! broadcast server, both driven by the same client code.
//!
//! Both servers run at once (idle one costs nothing) with all their
//! connections open, and the load alternates between them in rounds, so
//! that a change in what else the (shared) machine runs hits both sides of
//! a round alike. The ratio is the median of the rounds' ratios.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Api, Ws};
use crate::ctx::{CpuMeter, Ctx, median, open_many};
use crate::proc::Server;
use crate::report::Figure;

/// Connections sending to the room (besides the receivers), so that mesh's
/// one-request-at-a-time reading of each connection (a message is answered
/// once it is on disk) does not bound the rate.
const SENDERS: usize = 8;
/// Messages in flight (unanswered) per sender.
const WINDOW: u64 = 64;
/// How far (in messages) the receivers may fall behind the senders on
/// average; well under the server's 1,000-frame queue.
const LAG: u64 = 200;

/// What one window measured.
#[derive(Debug, Clone)]
pub(crate) struct Rate {
    pub(crate) deliveries_per_s: f64,
    pub(crate) messages_per_s: f64,
    pub(crate) server_cpu: f64,
    pub(crate) load_cpu: f64,
    pub(crate) cores: String,
}

/// Senders and receivers on one server. Senders send only while `go`:
/// each keeps at most [`WINDOW`] messages unanswered, and all stop while
/// the receivers are more than [`LAG`] messages behind.
#[derive(Debug)]
pub(crate) struct Rig {
    pid: u32,
    delivered: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    frame_len: Arc<AtomicUsize>,
    pub(crate) closed: Arc<AtomicUsize>,
    failure: Arc<std::sync::Mutex<Option<String>>>,
    go: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

impl Rig {
    fn start(
        server: &Server,
        senders: Vec<Ws>,
        receivers: Vec<Ws>,
        make: impl Fn(usize, u64) -> String + Send + Sync + 'static,
        is_delivery: fn(&str) -> bool,
        is_ack: fn(usize, &str) -> bool,
    ) -> Self {
        let n = receivers.len() as u64;
        let mut rig = Self {
            pid: server.pid(),
            delivered: Arc::default(),
            acked: Arc::default(),
            sent: Arc::default(),
            frame_len: Arc::default(),
            closed: Arc::default(),
            failure: Arc::default(),
            go: Arc::default(),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for mut ws in receivers {
            let (delivered, frame_len, closed) = (
                rig.delivered.clone(),
                rig.frame_len.clone(),
                rig.closed.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) if is_delivery(t.as_str()) => {
                            delivered.fetch_add(1, Ordering::Relaxed);
                            frame_len.store(t.len(), Ordering::Relaxed);
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
        let make = Arc::new(make);
        for (i, sender) in senders.into_iter().enumerate() {
            let (mut sink, mut stream) = sender.split();
            let mine = Arc::new(AtomicU64::new(0));
            let (acked, mine2, failure) = (rig.acked.clone(), mine.clone(), rig.failure.clone());
            tasks.push(tokio::spawn(async move {
                while let Some(Ok(msg)) = stream.next().await {
                    if let Message::Text(t) = msg {
                        if is_ack(i, t.as_str()) {
                            acked.fetch_add(1, Ordering::Relaxed);
                            mine2.fetch_add(1, Ordering::Relaxed);
                        } else if t.as_str().contains("\"type\":\"error\"") {
                            *failure.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(t.as_str().to_owned());
                        }
                    }
                }
            }));
            let (delivered, sent_total, go, make) = (
                rig.delivered.clone(),
                rig.sent.clone(),
                rig.go.clone(),
                make.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut sent = 0u64;
                loop {
                    if !go.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    let mut batch = 0;
                    while sent - mine.load(Ordering::Relaxed) < WINDOW
                        && (sent_total.load(Ordering::Relaxed) * n)
                            .saturating_sub(delivered.load(Ordering::Relaxed))
                            <= n * LAG
                        && batch < 16
                    {
                        if sink
                            .feed(Message::Text(make(i, sent).into()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        sent += 1;
                        sent_total.fetch_add(1, Ordering::Relaxed);
                        batch += 1;
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                    if batch < 16 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }));
        }
        rig.tasks = tasks;
        rig
    }

    /// Sends for `warmup` + `window`, counting over `window`; then stops
    /// and waits until everything sent is answered and delivered.
    pub(crate) async fn measure(&self, warmup: Duration, window: Duration) -> anyhow::Result<Rate> {
        self.go.store(true, Ordering::Relaxed);
        tokio::time::sleep(warmup).await;
        let (d0, a0, t0) = (
            self.delivered.load(Ordering::Relaxed),
            self.acked.load(Ordering::Relaxed),
            Instant::now(),
        );
        let cpu = CpuMeter::start_pid(self.pid);
        tokio::time::sleep(window).await;
        let (d1, a1, secs) = (
            self.delivered.load(Ordering::Relaxed),
            self.acked.load(Ordering::Relaxed),
            t0.elapsed().as_secs_f64(),
        );
        let (server_cpu, load_cpu) = cpu.read();
        let cores = cpu.cores();
        self.go.store(false, Ordering::Relaxed);
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
            bail!("the server refused a message: {error}");
        }
        Ok(Rate {
            deliveries_per_s: (d1 - d0) as f64 / secs,
            messages_per_s: (a1 - a0) as f64 / secs,
            server_cpu,
            load_cpu,
            cores,
        })
    }
}

/// A `chat.message.send` frame.
pub(crate) fn send_frame(room: &str, id: u64, content: &str) -> String {
    json!({
        "type": "chat.message.send",
        "id": id.to_string(),
        "payload": {"room_id": room, "content": content},
    })
    .to_string()
}

/// Whether a mesh frame is the answer to a request (a top-level `id`, which
/// the server writes last, after the payload).
pub(crate) fn is_reply(text: &str) -> bool {
    text.contains("},\"id\":\"")
}

fn is_created(text: &str) -> bool {
    text.contains("\"type\":\"chat.message.created\"")
}

fn is_created_reply(_sender: usize, text: &str) -> bool {
    is_created(text) && is_reply(text)
}

fn any(_: &str) -> bool {
    true
}

/// The baseline echoes every frame to everyone: a sender's own frames
/// start with its tag.
fn baseline_frame(sender: usize, len: usize) -> String {
    let mut s = format!("s{sender:03}:");
    s.extend(std::iter::repeat_n('b', len.saturating_sub(s.len())));
    s
}

fn is_own_echo(sender: usize, text: &str) -> bool {
    text.get(..5) == Some(&format!("s{sender:03}:")[..])
}

/// The length of the `chat.message.created` frame mesh delivers for a
/// 100-byte message (one message through the room).
async fn mesh_frame_len(server: &Server, token: &str, room: &str) -> anyhow::Result<usize> {
    let mut ws = client::ws_hello(server.target(), token).await?;
    client::send_raw(&mut ws, &send_frame(room, 0, &"m".repeat(100))).await?;
    let reply = client::reply_text(&mut ws, "0").await?;
    client::close(ws).await;
    // Receivers get the frame without the trailing `,"id":"0"`.
    Ok(reply.len() - ",\"id\":\"0\"".len())
}

/// Receivers in the room: 1,000 (100 for a smoke test).
pub(crate) fn subscribers(ctx: &Ctx) -> usize {
    if ctx.quick { 100 } else { 1000 }
}

/// A mesh-server's room with `subscribers` receivers (over 100 accounts)
/// and [`SENDERS`] senders of 100-byte messages, all connected to its
/// [`Server::target`] (over TLS for a TLS server); and the length of the
/// frame each receiver gets.
pub(crate) async fn mesh_rig(server: &Server, subscribers: usize) -> anyhow::Result<(Rig, usize)> {
    let users = 100.min(subscribers);
    let api = Api::at(&server.target())?;
    let accounts = api.register_many("fan", users).await?;
    let room = api.room_with("fanout", &accounts).await?;
    let frame_len = mesh_frame_len(server, &accounts[0].token, &room).await?;
    let receivers = open_many(server, subscribers, |i| {
        Some(accounts[i % users].token.clone())
    })
    .await?;
    let mut senders = Vec::new();
    for account in accounts.iter().take(SENDERS) {
        senders.push(client::ws_hello(server.target(), &account.token).await?);
    }
    let content = "m".repeat(100);
    let rig = Rig::start(
        server,
        senders,
        receivers,
        move |_, i| send_frame(&room, i, &content),
        is_created,
        is_created_reply,
    );
    Ok((rig, frame_len))
}

pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Figure> {
    let subscribers = subscribers(ctx);
    let rounds = if ctx.quick { 2 } else { 4 };
    let warmup = Duration::from_secs(1);
    let window = ctx.window / 2;

    // mesh-server.
    let mesh_server = ctx.mesh()?;
    let (mesh, frame_len) = mesh_rig(&mesh_server, subscribers).await?;

    // The bare broadcast server, sent frames as long as mesh delivers.
    let base_server = ctx.baseline()?;
    let receivers = open_many(&base_server, subscribers, |_| None).await?;
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        senders.push(client::ws(base_server.addr, None).await?);
    }
    let base = Rig::start(
        &base_server,
        senders,
        receivers,
        move |s, _| baseline_frame(s, frame_len),
        any,
        is_own_echo,
    );

    let mut m_rates = Vec::new();
    let mut b_rates = Vec::new();
    let mut ratios = Vec::new();
    // Server CPU microseconds per delivery.
    let mut m_cost = Vec::new();
    let mut b_cost = Vec::new();
    let mut last = None;
    for _ in 0..rounds {
        let m = mesh.measure(warmup, window).await?;
        let b = base.measure(warmup, window).await?;
        ratios.push(m.deliveries_per_s / b.deliveries_per_s.max(1e-9));
        m_rates.push(m.deliveries_per_s);
        m_cost.push(m.server_cpu * 1e6 / m.deliveries_per_s.max(1e-9));
        b_cost.push(b.server_cpu * 1e6 / b.deliveries_per_s.max(1e-9));
        b_rates.push(b.deliveries_per_s);
        last = Some((m, b));
    }
    let closed = (
        mesh.closed.load(Ordering::Relaxed),
        base.closed.load(Ordering::Relaxed),
    );
    drop((mesh, base, mesh_server, base_server));
    let (m, b) = last.ok_or_else(|| anyhow::anyhow!("no rounds"))?;

    let cores = ctx.pin.server_cores() as f64;
    let (mesh_rate, base_rate, ratio) = (median(&m_rates), median(&b_rates), median(&ratios));
    let per_core = mesh_rate / cores;
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut fig = Figure::new(
        "fanout",
        format!(
            "room broadcast deliveries per second, {subscribers} subscribers, 100-byte messages"
        ),
    )
    .value(mesh_rate, "deliveries/s")
    .baseline(
        format!(
            "bare tokio-tungstenite broadcast server, {frame_len}-byte frames (the size of mesh's delivered frame)"
        ),
        base_rate,
    );
    fig.ratio = Some(ratio);
    Ok(fig
        .goal(
            "ratio >= 0.8 and >= 100,000 deliveries/s per server core",
            ratio >= 0.8 && per_core >= 100_000.0,
        )
        .detail("per_core", per_core)
        .detail("server_cores", cores)
        .detail("rounds", format!("ratios {}", list(&ratios)))
        .detail(
            "cpu/deliv",
            format!(
                "server CPU per delivery (median): {:.2} us mesh, {:.2} us baseline (ratio {:.3})",
                median(&m_cost),
                median(&b_cost),
                median(&b_cost) / median(&m_cost).max(1e-9)
            ),
        )
        .detail("msgs/s", m.messages_per_s)
        .detail("frame_len", frame_len as u64)
        .detail(
            "srv_cpu",
            format!(
                "last round: {:.0}% mesh, {:.0}% baseline",
                m.server_cpu * 100.0,
                b.server_cpu * 100.0
            ),
        )
        .detail(
            "load_cpu",
            format!(
                "last round: {:.0}% (mesh), {:.0}% (baseline)",
                m.load_cpu * 100.0,
                b.load_cpu * 100.0
            ),
        )
        .detail(
            "busy",
            format!("last round: mesh: {}; baseline: {}", m.cores, b.cores),
        )
        .detail(
            "closed",
            format!(
                "{} mesh receivers, {} baseline receivers closed by the server",
                closed.0, closed.1
            ),
        )
        .note("ratio = median of the rounds' ratios; measured and baseline = medians"))
}
