//! Figure 4, durable appends: acknowledged (flushed) messages per second
//! through mesh-server against raw sled insert-plus-flush of the same bytes
//! on the same disk; and on-disk bytes per byte of history.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use mesh_core::protocol::{Message as ChatMessage, MessageId, RoomId, Timestamp, User, UserId};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Api};
use crate::ctx::{CpuMeter, Ctx, median};
use crate::fanout::{is_reply, send_frame};
use crate::proc::dir_bytes;
use crate::report::Figure;
use crate::stats::Samples;

const CONTENT: usize = 100;

/// A stored message as the sled store keeps it (JSON), with 100 bytes of content.
fn stored_bytes() -> Vec<u8> {
    let message = ChatMessage {
        id: MessageId::new(),
        room_id: RoomId::new(),
        seq: 1,
        sender: User {
            id: UserId::new(),
            username: "dur0".into(),
            display_name: "dur0".into(),
            created_at: Timestamp::now(),
        },
        content: "d".repeat(CONTENT),
        created_at: Timestamp::now(),
        client_id: None,
    };
    serde_json::to_vec(&message).unwrap_or_default()
}

/// Raw sled: insert one message, flush, repeat, on one thread for
/// `window`; inserts per second. `next` numbers the keys across calls.
fn raw_sled(
    db: &sled::Db,
    next: &AtomicU64,
    window: Duration,
    latency: &mut Samples,
) -> anyhow::Result<f64> {
    let value = stored_bytes();
    let room = [7u8; 16];
    let mut key = Vec::with_capacity(25);
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < window {
        let seq = next.fetch_add(1, Ordering::Relaxed);
        key.clear();
        key.push(b's');
        key.extend_from_slice(&room);
        key.extend_from_slice(&seq.to_be_bytes());
        let at = Instant::now();
        db.insert(key.as_slice(), value.as_slice())?;
        db.flush()?;
        latency.push(at.elapsed());
        n += 1;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Figure> {
    // Many writers, few messages each in flight: mesh reads a connection's
    // frames one at a time and answers a message once it is on disk, so
    // group commit groups across connections, not within one.
    let writers = if ctx.quick { 4 } else { 64 };
    let window_per_writer: u64 = 4;
    let rounds = if ctx.quick { 2 } else { 4 };
    let window = ctx.window / 2;

    // Raw sled, on the same disk (the servers' data folder's parent).
    let raw_dir = tempfile::Builder::new()
        .prefix("mesh-bench-raw-sled-")
        .tempdir_in(&ctx.data_parent)?;
    let raw_db = sled::Config::new()
        .path(raw_dir.path())
        .flush_every_ms(None)
        .open()
        .context("opening the raw sled database")?;
    let raw_next = Arc::new(AtomicU64::new(0));

    // mesh-server: each writer alone in its own room, so a message is
    // acknowledged and goes nowhere else. Writers send only while `go`.
    let mut server = ctx.mesh()?;
    let api = Api::new(server.addr);
    let accounts = api.register_many("dur", writers).await?;
    let acked = Arc::new(AtomicU64::new(0));
    let sent_total = Arc::new(AtomicU64::new(0));
    let go = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, account) in accounts.iter().enumerate() {
        let room = api
            .create_room(&account.token, &format!("durable{i}"))
            .await?;
        let ws = client::ws_hello(server.addr, &account.token).await?;
        let (mut sink, mut stream) = ws.split();
        let mine = Arc::new(AtomicU64::new(0));
        let (acked, mine2) = (acked.clone(), mine.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Text(t) = msg
                    && t.as_str().contains("\"type\":\"chat.message.created\"")
                    && is_reply(t.as_str())
                {
                    acked.fetch_add(1, Ordering::Relaxed);
                    mine2.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        let (go, sent_total) = (go.clone(), sent_total.clone());
        let content = "d".repeat(CONTENT);
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                if !go.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let mut fed = false;
                while sent - mine.load(Ordering::Relaxed) < window_per_writer {
                    if sink
                        .feed(Message::Text(send_frame(&room, sent, &content).into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    sent += 1;
                    sent_total.fetch_add(1, Ordering::Relaxed);
                    fed = true;
                }
                if fed && sink.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }

    let (mut m_rates, mut r_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut last_cpu = (0.0, String::new());
    // CPU microseconds per message: raw sled (this process), mesh (server).
    let (mut r_cost, mut m_cost) = (Vec::new(), Vec::new());
    let mut flush_latency = Samples::default();
    for _ in 0..rounds {
        // Raw sled for a window.
        let (db, next) = (raw_db.clone(), raw_next.clone());
        let me = CpuMeter::start_pid(std::process::id());
        let (raw, samples) = tokio::task::spawn_blocking(move || {
            let mut samples = Samples::default();
            raw_sled(&db, &next, window, &mut samples).map(|rate| (rate, samples))
        })
        .await??;
        r_cost.push(me.read().0 * 1e6 / raw.max(1e-9));
        flush_latency.extend(samples);
        // mesh for a window, after a second of warm-up; then drained.
        go.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (a0, t0, cpu) = (
            acked.load(Ordering::Relaxed),
            Instant::now(),
            CpuMeter::start(&server),
        );
        tokio::time::sleep(window).await;
        let rate = (acked.load(Ordering::Relaxed) - a0) as f64 / t0.elapsed().as_secs_f64();
        last_cpu = (cpu.read().0, cpu.cores());
        m_cost.push(last_cpu.0 * 1e6 / rate.max(1e-9));
        go.store(false, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(20);
        while acked.load(Ordering::Relaxed) < sent_total.load(Ordering::Relaxed)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        m_rates.push(rate);
        r_rates.push(raw);
        ratios.push(rate / raw.max(1e-9));
    }
    // Every sent message answered (so on disk); then a clean stop.
    let stored = acked.load(Ordering::Relaxed);
    tasks.iter().for_each(|t| t.abort());
    server.stop();
    let data = server
        .data
        .as_ref()
        .context("data folder")?
        .path()
        .join("db");
    let disk = dir_bytes(&data);
    let record = stored_bytes().len() as u64;
    let per_content = disk as f64 / (stored * CONTENT as u64).max(1) as f64;
    let per_record = disk as f64 / (stored * record).max(1) as f64;
    drop(server);
    let raw_n = raw_next.load(Ordering::Relaxed);
    drop(raw_db);
    let raw_disk = dir_bytes(raw_dir.path());
    drop(raw_dir);

    let ratio = median(&ratios);
    let list = ratios
        .iter()
        .map(|x| format!("{x:.3}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut fig = Figure::new(
        "durable",
        "acknowledged durable messages per second (100-byte content)",
    )
    .value(median(&m_rates), "messages/s")
    .baseline(
        format!(
            "raw sled insert + flush of the same {record}-byte record, one at a time, same disk"
        ),
        median(&r_rates),
    );
    fig.ratio = Some(ratio);
    Ok(fig
        .goal("ratio >= 0.8 (group commit)", ratio >= 0.8)
        .detail("rounds", format!("ratios {list}"))
        .detail(
            "writers",
            format!("{writers} connections x {window_per_writer} in flight"),
        )
        .detail(
            "cpu/msg",
            format!(
                "median CPU per message: {:.0} us mesh server, {:.0} us raw sled (ratio {:.3})",
                median(&m_cost),
                median(&r_cost),
                median(&r_cost) / median(&m_cost).max(1e-9)
            ),
        )
        .detail(
            "raw_flush",
            format!(
                "raw insert+flush latency p50 {:.3} ms, p99 {:.3} ms, p999 {:.3} ms, max {:.1} ms",
                flush_latency.quantile_ms(0.5),
                flush_latency.quantile_ms(0.99),
                flush_latency.quantile_ms(0.999),
                flush_latency.quantile_ms(1.0)
            ),
        )
        .detail("disk/content", per_content)
        .detail("disk/record", per_record)
        .detail("disk_bytes", disk)
        .detail("stored", stored)
        .detail(
            "raw_disk/rec",
            raw_disk as f64 / (raw_n * record).max(1) as f64,
        )
        .detail("busy", last_cpu.1)
        .detail("srv_cpu", format!("last round: {:.0}%", last_cpu.0 * 100.0))
        .note("ratio = median of the rounds' ratios; measured and baseline = medians"))
}
