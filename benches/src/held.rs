//! Figure 9, load held: 10,000 authenticated WebSocket connections joined
//! to rooms, each sending a chat message every few seconds, for a minute.
//! Reported: connections the server dropped unasked (goal: none), errors,
//! messages sent, acknowledged and delivered, and the server's resident
//! memory per connection, sampled every 10 s.
//!
//! 1,000 users with 10 connections each; 500 rooms of two users, so every
//! message goes to the 20 connections of its room. After the minute the
//! connections stop sending and wait for the acknowledgements still due.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Api, Ws};
use crate::ctx::{Ctx, open_many};
use crate::report::Figure;

#[derive(Debug, Default)]
struct Counts {
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    errors: AtomicU64,
    /// Connections that ended before the end of the window.
    dropped: AtomicU64,
}

/// One connection: a message every `every` (first one at `phase`), reading
/// everything the server sends, until `until`; then it sends no more and
/// waits (up to `drain`) for the acknowledgements still due.
async fn talk(
    mut ws: Ws,
    room: String,
    tag: usize,
    phase: Duration,
    every: Duration,
    (until, drain): (Instant, Instant),
    counts: Arc<Counts>,
) -> Ws {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, every);
    let end = tokio::time::Instant::from_std(until);
    let (mut sent, mut acked, mut sending) = (0u64, 0u64, true);
    let mine = format!("\"h{tag}-");
    loop {
        if !sending && acked == sent {
            return ws;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(end), if sending => sending = false,
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(drain)) => return ws,
            _ = tick.tick(), if sending => {
                let frame = json!({
                    "type": "chat.message.send",
                    "id": format!("h{tag}-{sent}"),
                    "payload": {"room_id": room, "content": format!("held {tag} {sent}")},
                });
                if ws.send(Message::Text(frame.to_string().into())).await.is_err() {
                    counts.dropped.fetch_add(1, Ordering::Relaxed);
                    return ws;
                }
                sent += 1;
                counts.sent.fetch_add(1, Ordering::Relaxed);
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if text.contains("\"chat.message.created\"") {
                        if text.contains(&mine) {
                            acked += 1;
                            counts.acked.fetch_add(1, Ordering::Relaxed);
                        } else {
                            counts.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                    } else if text.contains("\"type\":\"error\"") {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    counts.dropped.fetch_add(1, Ordering::Relaxed);
                    return ws;
                }
            },
        }
    }
}

pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Figure> {
    let wanted = if ctx.quick { 1000 } else { 10_000 };
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    let n = wanted.min(usize::try_from(limit.saturating_sub(200)).unwrap_or(wanted));
    let users = 1000.min(n);
    let every = Duration::from_secs(5);
    let window = if ctx.quick {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(60)
    };

    let server = ctx.mesh()?;
    let api = Api::new(server.addr);
    let accounts = api.register_many("held", users).await?;
    let mut rooms = Vec::new();
    for pair in accounts.chunks(2) {
        rooms.push(api.room_with(&format!("held{}", rooms.len()), pair).await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = server.rss_kib()?;
    let conns = open_many(&server, n, |i| Some(accounts[i % users].token.clone())).await?;
    // Join each connection's room (users 2k and 2k+1 share room k).
    let mut joined = Vec::with_capacity(n);
    let mut stream =
        futures_util::stream::iter(conns.into_iter().enumerate().map(|(i, mut ws)| {
            let room = rooms[(i % users) / 2].clone();
            async move {
                crate::client::send(&mut ws, "room.join", "j", json!({"room_id": room})).await?;
                crate::client::reply(&mut ws, "j").await?;
                Ok::<_, anyhow::Error>((i, room, ws))
            }
        }))
        .buffer_unordered(64);
    while let Some(r) = stream.next().await {
        joined.push(r?);
    }
    drop(stream);
    let rss_idle = server.rss_kib()?;

    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let until = started + window;
    let drain = until + Duration::from_secs(30);
    let step = every.as_nanos() as u64 / n.max(1) as u64;
    let tasks: Vec<_> = joined
        .into_iter()
        .map(|(i, room, ws)| {
            let phase = Duration::from_nanos(step * i as u64);
            tokio::spawn(talk(
                ws,
                room,
                i,
                phase,
                every,
                (until, drain),
                counts.clone(),
            ))
        })
        .collect();
    let cpu = crate::ctx::CpuMeter::start(&server);
    let mut samples = Vec::new();
    while Instant::now() + Duration::from_secs(10) <= until + Duration::from_millis(100) {
        tokio::time::sleep(Duration::from_secs(10)).await;
        samples.push(server.rss_kib()?);
    }
    let mut held = Vec::with_capacity(n);
    for t in tasks {
        held.push(t.await?);
    }
    let (server_cpu, _) = cpu.read();
    let rss_end = server.rss_kib()?;
    let (secs, elapsed) = (window.as_secs_f64(), started.elapsed().as_secs_f64());
    for ws in held {
        tokio::spawn(crate::client::close(ws));
    }
    drop(server);

    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (sent, acked, delivered, errors, dropped) = (
        load(&counts.sent),
        load(&counts.acked),
        load(&counts.delivered),
        load(&counts.errors),
        load(&counts.dropped),
    );
    let per_conn = |kib: u64| kib.saturating_sub(rss_before) as f64 / n as f64;
    let curve = samples
        .iter()
        .map(|k| format!("{:.0}", *k as f64 / 1024.0))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Figure::new(
        "held",
        format!(
            "{n} joined connections ({users} users, {} rooms), a message every {} s each, for {} s",
            rooms.len(),
            every.as_secs(),
            window.as_secs()
        ),
    )
    .value(dropped as f64, "connections dropped unasked")
    .goal(
        "no connection dropped, no error, every send acknowledged (within 30 s of the end)",
        dropped == 0 && errors == 0 && acked == sent,
    )
    .detail("sent", sent)
    .detail("acked", acked)
    .detail("delivered", delivered)
    .detail("errors", errors)
    .detail("msgs_per_s", format!("{:.0}", sent as f64 / secs))
    .detail(
        "deliveries_per_s",
        format!("{:.0}", delivered as f64 / secs),
    )
    .detail(
        "rss_per_conn",
        format!(
            "{:.1} KiB idle, {:.1} KiB at the end",
            per_conn(rss_idle),
            per_conn(rss_end)
        ),
    )
    .detail(
        "rss",
        format!(
            "{:.0} MiB before, {:.0} MiB idle joined, {curve} MiB every 10 s, {:.0} MiB at the end",
            rss_before as f64 / 1024.0,
            rss_idle as f64 / 1024.0,
            rss_end as f64 / 1024.0
        ),
    )
    .detail(
        "srv_cpu",
        format!(
            "{:.0}% of one core; {:.1} µs per delivery",
            server_cpu * 100.0,
            server_cpu * elapsed * 1e6 / (delivered + acked).max(1) as f64
        ),
    ))
}
