//! Figure 2, latency: send to delivery in a 100-member room at half of the
//! peak message rate, against the round trip of a WebSocket ping to the same
//! server at the same time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Api, Ws};
use crate::ctx::{CpuMeter, Ctx, open_many};
use crate::fanout::{is_reply, send_frame};
use crate::report::Figure;
use crate::stats::Samples;

/// The clock every timestamp in a message counts from.
pub(crate) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// 100 bytes: the send time in ns since [`epoch`], zero-padded, then filler.
pub(crate) fn stamped_content() -> String {
    let ns = epoch().elapsed().as_nanos();
    let mut s = format!("{ns:020}");
    s.extend(std::iter::repeat_n('t', 80));
    s
}

/// The send time carried by a delivered `chat.message.created` frame.
pub(crate) fn stamp_of(text: &str) -> Option<u64> {
    let key = "\"content\":\"";
    let at = text.find(key)? + key.len();
    text.get(at..at + 20)?.parse().ok()
}

/// How senders pace themselves.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// As fast as acknowledgements allow (window of 16 each).
    Peak,
    /// This many messages per second per sender.
    Rate(f64),
}

type Sink = SplitSink<Ws, Message>;

/// Pings over `ws` every `every` for `dur` (or `count` times), returning round trips.
async fn pings(ws: &mut Ws, every: Duration, count: usize) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    let mut tick = tokio::time::interval(every);
    for i in 0..count {
        tick.tick().await;
        let at = Instant::now();
        ws.send(Message::Ping(Bytes::from(
            (i as u64).to_be_bytes().to_vec(),
        )))
        .await?;
        loop {
            match tokio::time::timeout(client::STEP, ws.next()).await? {
                Some(Ok(Message::Pong(_))) => break,
                Some(Ok(_)) => continue,
                _ => anyhow::bail!("ping connection closed"),
            }
        }
        samples.push(at.elapsed());
    }
    Ok(samples)
}

/// On the data folder's disk; then again on tmpfs (`/dev/shm`), which
/// takes the disk's flush latency out and shows what the rest costs.
pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Figure> {
    let fig = run_on(ctx).await?;
    let shm = std::path::Path::new("/dev/shm");
    if ctx.quick || !shm.is_dir() || ctx.data_parent.starts_with(shm) {
        return Ok(fig);
    }
    let on_tmpfs = Ctx {
        data_parent: shm.to_owned(),
        ..ctx.clone()
    };
    let tmpfs = run_on(&on_tmpfs).await?;
    let detail = |k: &str| tmpfs.details.get(k).cloned().unwrap_or_default();
    Ok(fig.detail(
        "on_tmpfs",
        format!(
            "same run with the data on tmpfs: p50 {} ms, p99 {:.3} ms, p999 {} ms, ping p99 {:.3} ms, ratio {:.3}",
            detail("p50_ms"),
            tmpfs.value.unwrap_or(0.0),
            detail("p999_ms"),
            tmpfs.baseline.unwrap_or(0.0),
            tmpfs.ratio.unwrap_or(0.0)
        ),
    ))
}

async fn run_on(ctx: &Ctx) -> anyhow::Result<Figure> {
    let members = if ctx.quick { 20 } else { 100 };
    let senders = 10.min(members);
    let server = ctx.mesh()?;
    let api = Api::new(server.addr);
    let accounts = api.register_many("lat", members).await?;
    let room = api.room_with("latency", &accounts).await?;
    let outsider = api.register("latping").await?;
    let conns = open_many(&server, members, |i| Some(accounts[i].token.clone())).await?;
    let mut ping_ws = client::ws_hello(server.addr, &outsider.token).await?;

    // Every member records delivery latencies while `recording`; a sender's
    // own copy (the reply) also counts its acknowledgement.
    let recording = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let acked: Vec<Arc<AtomicU64>> = (0..members).map(|_| Arc::default()).collect();
    let all_samples = Arc::new(Mutex::new(Samples::default()));
    let mut sinks: Vec<Sink> = Vec::new();
    let mut readers = Vec::new();
    for (i, ws) in conns.into_iter().enumerate() {
        let (sink, mut stream) = ws.split();
        sinks.push(sink);
        let (recording, delivered, acked, all) = (
            recording.clone(),
            delivered.clone(),
            acked[i].clone(),
            all_samples.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut mine = Samples::default();
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(t) = msg else { continue };
                let t = t.as_str();
                if !t.contains("\"type\":\"chat.message.created\"") {
                    continue;
                }
                if is_reply(t) {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                delivered.fetch_add(1, Ordering::Relaxed);
                if recording.load(Ordering::Relaxed)
                    && let Some(sent) = stamp_of(t)
                {
                    let now = epoch().elapsed().as_nanos() as u64;
                    mine.push_ns(now.saturating_sub(sent));
                }
                if mine.len() >= 4096 {
                    all.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(std::mem::take(&mut mine));
                }
            }
            all.lock().unwrap_or_else(|e| e.into_inner()).extend(mine);
        }));
    }

    // The ping round trip with the room idle.
    let mut idle_ping = pings(&mut ping_ws, Duration::from_millis(5), 400).await?;

    // Runs the senders with `pace` for `dur`; returns (acked messages/s, sinks).
    let run_senders = |sinks: Vec<Sink>, pace: Pace, dur: Duration| {
        let stop = Arc::new(AtomicBool::new(false));
        let room = room.clone();
        let tasks: Vec<_> = sinks
            .into_iter()
            .enumerate()
            .map(|(i, mut sink)| {
                let (stop, acked) = (stop.clone(), acked[i].clone());
                let room = room.clone();
                tokio::spawn(async move {
                    // Acknowledgements count from this run's start.
                    let mut sent = acked.load(Ordering::Relaxed);
                    let mut tick = match pace {
                        Pace::Rate(r) => {
                            Some(tokio::time::interval(Duration::from_secs_f64(1.0 / r)))
                        }
                        Pace::Peak => None,
                    };
                    while !stop.load(Ordering::Relaxed) {
                        // A late ack from an earlier run may count past `sent`.
                        let in_flight = sent.saturating_sub(acked.load(Ordering::Relaxed));
                        match &mut tick {
                            Some(t) => {
                                t.tick().await;
                                if in_flight >= 64 {
                                    continue;
                                }
                            }
                            None if in_flight >= 16 => {
                                tokio::time::sleep(Duration::from_millis(1)).await;
                                continue;
                            }
                            None => {}
                        }
                        let frame = send_frame(&room, sent, &stamped_content());
                        if sink.send(Message::Text(frame.into())).await.is_err() {
                            break;
                        }
                        sent += 1;
                    }
                    sink
                })
            })
            .collect();
        async move {
            tokio::time::sleep(dur).await;
            stop.store(true, Ordering::Relaxed);
            let mut sinks = Vec::new();
            for t in tasks {
                sinks.push(t.await?);
            }
            Ok::<_, anyhow::Error>(sinks)
        }
    };
    let acked_total =
        |acked: &[Arc<AtomicU64>]| -> u64 { acked.iter().map(|a| a.load(Ordering::Relaxed)).sum() };

    // Peak: the senders as fast as their windows allow.
    let (senders_sinks, rest): (Vec<Sink>, Vec<Sink>) = {
        let mut all = sinks;
        let rest = all.split_off(senders);
        (all, rest)
    };
    let peak_window = ctx.window.min(Duration::from_secs(5));
    let peak_run = run_senders(
        senders_sinks,
        Pace::Peak,
        peak_window + Duration::from_secs(1),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (a0, t0) = (acked_total(&acked), Instant::now());
    tokio::time::sleep(peak_window).await;
    let peak = (acked_total(&acked) - a0) as f64 / t0.elapsed().as_secs_f64();
    let senders_sinks = peak_run.await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Half of peak, stamped, with pings alongside.
    let half = peak / 2.0;
    let per_sender = (half / senders as f64).max(1.0);
    let measured = Duration::from_secs(1) + ctx.window;
    let half_run = run_senders(senders_sinks, Pace::Rate(per_sender), measured);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = CpuMeter::start(&server);
    let (a0, d0, t0) = (
        acked_total(&acked),
        delivered.load(Ordering::Relaxed),
        Instant::now(),
    );
    recording.store(true, Ordering::Relaxed);
    let ping_count = (ctx.window.as_millis() / 10).max(10) as usize;
    let mut load_ping = pings(&mut ping_ws, Duration::from_millis(10), ping_count).await?;
    let elapsed = t0.elapsed();
    if elapsed < ctx.window {
        tokio::time::sleep(ctx.window - elapsed).await;
    }
    recording.store(false, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let achieved = (acked_total(&acked) - a0) as f64 / secs;
    let deliveries = (delivered.load(Ordering::Relaxed) - d0) as f64 / secs;
    let (server_cpu, load_cpu) = cpu.read();
    let busy = cpu.cores();
    let mut sinks = half_run.await?;
    sinks.extend(rest);
    for sink in &mut sinks {
        let _ = sink.close().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    readers.iter().for_each(|r| r.abort());
    for r in readers {
        let _ = r.await;
    }
    drop(server);

    let mut samples = std::mem::take(&mut *all_samples.lock().unwrap_or_else(|e| e.into_inner()));
    let (p50, p99, p999) = (
        samples.quantile_ms(0.5),
        samples.quantile_ms(0.99),
        samples.quantile_ms(0.999),
    );
    let ping99 = load_ping.quantile_ms(0.99);
    let idle99 = idle_ping.quantile_ms(0.99);
    Ok(Figure::new(
        "latency",
        format!("send to delivery, {members}-member room, half of peak rate"),
    )
    .value(p99, "ms (p99)")
    .baseline(
        "p99 of a WebSocket ping round trip to the same server during the same load",
        ping99,
    )
    .goal("p99 <= 3x the ping p99", p99 <= 3.0 * ping99)
    .detail("p50_ms", p50)
    .detail("p999_ms", p999)
    .detail("samples", samples.len() as u64)
    .detail("peak_msg/s", peak)
    .detail("run_msg/s", achieved)
    .detail("deliv/s", deliveries)
    .detail("ping_p50", load_ping.quantile_ms(0.5))
    .detail("idle_p99", idle99)
    .detail("vs_idle", p99 / idle99.max(1e-9))
    .detail("busy", busy)
    .detail(
        "srv_cpu",
        format!("{:.0}% at half load", server_cpu * 100.0),
    )
    .detail("load_cpu", format!("{:.0}%", load_cpu * 100.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_through_a_frame() {
        let content = stamped_content();
        assert_eq!(content.len(), 100);
        let frame = format!(
            r#"{{"type":"chat.message.created","payload":{{"message":{{"content":"{content}"}}}}}}"#
        );
        let stamp = stamp_of(&frame).expect("stamp");
        assert!(u128::from(stamp) <= epoch().elapsed().as_nanos());
    }
}
