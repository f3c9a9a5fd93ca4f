//! Figure 14, durable appends on PostgreSQL: messages sent over WebSockets
//! to one mesh-server node on PostgreSQL (`--store postgres://`, no bus)
//! and acknowledged (`chat.message.send` → its `chat.message.created`
//! answer, sent once the append committed), against raw INSERTs of the
//! same rows into a table of the same shape (`LIKE messages INCLUDING
//! ALL`) from one tokio-postgres client, each its own autocommit
//! transaction; in the same run, on the same PostgreSQL.
//!
//! Variants, each measured once per round, rounds alternating the order:
//! - mesh, 1 writer, 1 message in flight (the latency of one append);
//! - mesh, 64 writers (each alone in its room) × 4 in flight, as figure 4;
//! - mesh, 16 writers × 4 in flight in **one** room (every append takes
//!   the room's `room_seqs` row lock: the per-room bound);
//! - raw, one INSERT at a time (the baseline);
//! - raw, 16 connections (mesh-server's pool) each one INSERT at a time;
//! - raw, 64 INSERTs pipelined on the one connection, each autocommit;
//! - raw, batches of 64 rows (one `INSERT … SELECT FROM unnest(…)` each);
//! - raw, mesh's own append statement (the `room_seqs` upsert and the
//!   insert in one statement, copied from `mesh-core`'s `PgStore`), one at
//!   a time, into the real tables under a room of its own.
//!
//! CPU per message: the node's, PostgreSQL's (the postmaster with its
//! backends) and the load tool's (which runs the raw client).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt as _, StreamExt as _};
use mesh_core::protocol::{MessageId, RoomId, UserId};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Api};
use crate::ctx::{Ctx, cpu_secs, median};
use crate::fanout::{is_reply, send_frame};
use crate::latency::{epoch, stamp_of, stamped_content};
use crate::pg::{self, Pg, ServicePids, tokio_postgres};
use crate::report::Figure;
use crate::stats::Samples;

/// Writers alone in their rooms (figure 4's 64).
const WRITERS: usize = 64;
/// Writers sharing one room.
const ONE_ROOM: usize = 16;
/// Messages in flight per writer (figure 4's 4).
const IN_FLIGHT: u64 = 4;
/// Raw INSERTs in flight on the one connection, pipelined.
const PIPELINE: usize = 64;
/// Rows per raw batch.
const BATCH: usize = 64;
/// Raw connections side by side: mesh-server's default pool
/// (`--store-connections`).
const POOL: usize = 16;

/// mesh's append statement, as `mesh-core/src/storage/postgres.rs`
/// (`APPEND`) runs it.
const APPEND: &str = "
WITH earlier AS (
    SELECT 1 FROM messages
    WHERE $7::text IS NOT NULL AND sender_id = $3 AND room_id = $1 AND client_id = $7
), next AS (
    INSERT INTO room_seqs (room_id, last_seq)
    SELECT $1, 1 WHERE NOT EXISTS (SELECT 1 FROM earlier)
    ON CONFLICT (room_id) DO UPDATE SET last_seq = room_seqs.last_seq + 1
    RETURNING last_seq
)
INSERT INTO messages (room_id, seq, id, sender_id, sender_username, sender_display_name,
                      sender_created_at_ms, content, created_at_ms, client_id)
SELECT $1, next.last_seq, $2, $3, $4, $5, $6, $8, $9, $7 FROM next
RETURNING seq";

const COLUMNS: &str = "room_id, seq, id, sender_id, sender_username, sender_display_name, \
                       sender_created_at_ms, content, created_at_ms, client_id";

/// The variants, in the order of an even round.
const VARIANTS: [Variant; 8] = [
    Variant::MeshOne,
    Variant::RawSerial,
    Variant::MeshMany,
    Variant::RawPool,
    Variant::RawPipelined,
    Variant::RawBatch,
    Variant::RawAppend,
    Variant::MeshOneRoom,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    MeshOne,
    MeshMany,
    MeshOneRoom,
    RawSerial,
    RawPool,
    RawPipelined,
    RawBatch,
    RawAppend,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::MeshOne => "mesh, 1 writer x 1 in flight",
            Variant::MeshMany => "mesh, 64 writers (own rooms) x 4 in flight",
            Variant::MeshOneRoom => "mesh, 16 writers in one room x 4 in flight",
            Variant::RawSerial => "raw INSERT, one at a time, autocommit",
            Variant::RawPool => {
                "raw INSERT, 16 connections (mesh's pool) x 1 at a time, autocommit"
            }
            Variant::RawPipelined => "raw INSERT, 64 pipelined on one connection, autocommit",
            Variant::RawBatch => "raw INSERT of 64-row batches (unnest), autocommit",
            Variant::RawAppend => "raw mesh append statement, one at a time",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Variant::MeshOne => "mesh_1",
            Variant::MeshMany => "mesh_64",
            Variant::MeshOneRoom => "mesh_room",
            Variant::RawSerial => "raw_serial",
            Variant::RawPool => "raw_pool16",
            Variant::RawPipelined => "raw_pipe",
            Variant::RawBatch => "raw_batch",
            Variant::RawAppend => "raw_append",
        }
    }

    /// `mode` for the mesh writers; None for a raw variant.
    fn mode(self) -> Option<u64> {
        match self {
            Variant::MeshOne => Some(1),
            Variant::MeshMany => Some(2),
            Variant::MeshOneRoom => Some(3),
            _ => None,
        }
    }
}

/// What one window of one variant measured.
#[derive(Debug, Clone, Default)]
struct Window {
    secs: f64,
    /// Messages acknowledged, or rows inserted.
    n: u64,
    node_cpu: f64,
    load_cpu: f64,
    pg_cpu: f64,
    wal: i64,
    /// Per acknowledgement, per INSERT, or per batch.
    latency: Samples,
}

impl Window {
    fn rate(&self) -> f64 {
        self.n as f64 / self.secs.max(1e-9)
    }
    fn us(&self, cpu: f64) -> f64 {
        cpu * 1e6 / self.n.max(1) as f64
    }
}

fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The mesh writers: tasks and counters.
#[derive(Debug)]
struct Writers {
    /// 0: stopped; 1: writer 0 alone, 1 in flight; 2: the own-room writers;
    /// 3: the one-room writers. Idle writers wait on it, costing nothing.
    mode: watch::Sender<u64>,
    acked: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    from_ns: Arc<AtomicU64>,
    to_ns: Arc<AtomicU64>,
    samples: Vec<Arc<std::sync::Mutex<Samples>>>,
    failure: Arc<std::sync::Mutex<Option<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

impl Writers {
    /// Starts writer `i` of `group` (2: own rooms; 3: the one room) on
    /// `ws`, sending to `room`.
    fn add(&mut self, ws: client::Ws, room: String, group: u64, i: usize) {
        let (mut sink, mut stream) = ws.split();
        let mine = Arc::new(AtomicU64::new(0));
        let acked_signal = Arc::new(Notify::new());
        let samples = Arc::new(std::sync::Mutex::new(Samples::default()));
        self.samples.push(samples.clone());
        let (acked, mine2, failure, from, to, signal) = (
            self.acked.clone(),
            mine.clone(),
            self.failure.clone(),
            self.from_ns.clone(),
            self.to_ns.clone(),
            acked_signal.clone(),
        );
        self.tasks.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(t) = msg else { continue };
                let t = t.as_str();
                if t.contains("\"type\":\"chat.message.created\"") && is_reply(t) {
                    if let Some(stamp) = stamp_of(t)
                        && stamp >= from.load(Ordering::Relaxed)
                        && stamp < to.load(Ordering::Relaxed)
                    {
                        let late = now_ns().saturating_sub(stamp);
                        samples
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push_ns(late);
                    }
                    acked.fetch_add(1, Ordering::Relaxed);
                    mine2.fetch_add(1, Ordering::Relaxed);
                    signal.notify_one();
                } else if t.contains("\"type\":\"error\"") {
                    *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(t.to_owned());
                }
            }
        }));
        let (mut mode, sent_total) = (self.mode.subscribe(), self.sent.clone());
        self.tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                let limit = match *mode.borrow_and_update() {
                    1 if group == 2 && i == 0 => 1,
                    m if m == group => IN_FLIGHT,
                    _ => 0,
                };
                if limit == 0 {
                    if mode.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                let mut fed = false;
                while sent - mine.load(Ordering::Relaxed) < limit {
                    let frame = send_frame(&room, sent, &stamped_content());
                    if sink.feed(Message::Text(frame.into())).await.is_err() {
                        return;
                    }
                    sent += 1;
                    sent_total.fetch_add(1, Ordering::Relaxed);
                    fed = true;
                }
                if fed && sink.flush().await.is_err() {
                    return;
                }
                let _ =
                    tokio::time::timeout(Duration::from_millis(5), acked_signal.notified()).await;
            }
        }));
    }

    async fn measure(
        &self,
        mode: u64,
        window: Duration,
        node: u32,
        pg: &Pg,
        services: &ServicePids,
    ) -> anyhow::Result<Window> {
        self.mode.send_replace(mode);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (wal0, a0, n0, l0) = (
            pg.wal_bytes().await?,
            self.acked.load(Ordering::Relaxed),
            cpu_secs(node),
            cpu_secs(std::process::id()),
        );
        let svc0 = services.snapshot();
        let t0 = Instant::now();
        self.to_ns.store(u64::MAX, Ordering::Relaxed);
        self.from_ns.store(now_ns(), Ordering::Relaxed);
        tokio::time::sleep(window).await;
        self.to_ns.store(now_ns(), Ordering::Relaxed);
        let (a1, secs) = (
            self.acked.load(Ordering::Relaxed),
            t0.elapsed().as_secs_f64(),
        );
        let (node_cpu, load_cpu) = (cpu_secs(node) - n0, cpu_secs(std::process::id()) - l0);
        let svc = services.since(&svc0);
        let wal = pg.wal_bytes().await? - wal0;
        self.mode.send_replace(0);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.acked.load(Ordering::Relaxed) < self.sent.load(Ordering::Relaxed)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(error) = self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            bail!("the server refused a message: {error}");
        }
        let mut latency = Samples::default();
        for s in &self.samples {
            latency.extend(std::mem::take(
                &mut *s.lock().unwrap_or_else(|e| e.into_inner()),
            ));
        }
        Ok(Window {
            secs,
            n: a1 - a0,
            node_cpu,
            load_cpu,
            pg_cpu: svc.pg_cpu,
            wal,
            latency,
        })
    }
}

/// The raw client: its connection, its statements, the row it writes.
struct Raw {
    client: tokio_postgres::Client,
    insert: tokio_postgres::Statement,
    /// More connections, each with its INSERT, for [`Variant::RawPool`].
    pool: Vec<(tokio_postgres::Client, tokio_postgres::Statement)>,
    batch: tokio_postgres::Statement,
    append: tokio_postgres::Statement,
    /// The raw table's room, and mesh's tables' room for the append.
    room: RoomId,
    append_room: RoomId,
    sender: UserId,
    seq: i64,
    content: Vec<u8>,
}

impl Raw {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = pg::connect(url).await?;
        // The same shape as mesh's `messages`: columns, keys, indexes.
        client
            .batch_execute("CREATE TABLE bench_messages (LIKE messages INCLUDING ALL)")
            .await
            .context("creating the raw table")?;
        let insert_sql = format!(
            "INSERT INTO bench_messages ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        );
        let insert = client.prepare(&insert_sql).await?;
        let batch = client
            .prepare(&format!(
                "INSERT INTO bench_messages ({COLUMNS}) SELECT * FROM unnest($1::uuid[], $2::int8[], \
                 $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::int8[], $8::bytea[], \
                 $9::int8[], $10::text[])"
            ))
            .await?;
        let append = client.prepare(APPEND).await?;
        let mut pool = Vec::new();
        for _ in 0..POOL {
            let c = pg::connect(url).await?;
            let insert = c.prepare(&insert_sql).await?;
            pool.push((c, insert));
        }
        Ok(Self {
            client,
            insert,
            pool,
            batch,
            append,
            room: RoomId::new(),
            append_room: RoomId::new(),
            sender: UserId::new(),
            seq: 0,
            content: stamped_content().into_bytes(),
        })
    }

    fn next_seq(&mut self) -> i64 {
        self.seq += 1;
        self.seq
    }

    /// Runs `variant` for `window`: (rows, latency samples).
    async fn run(&mut self, variant: Variant, window: Duration) -> anyhow::Result<(u64, Samples)> {
        let mut latency = Samples::default();
        let mut n = 0u64;
        let started = Instant::now();
        let name = "pgd0";
        let none: Option<String> = None;
        match variant {
            Variant::RawSerial | Variant::RawAppend => {
                while started.elapsed() < window {
                    let (seq, id, ms) = (self.next_seq(), *MessageId::new().as_uuid(), now_ms());
                    let at = Instant::now();
                    if variant == Variant::RawSerial {
                        self.client
                            .execute(
                                &self.insert,
                                &[
                                    self.room.as_uuid(),
                                    &seq,
                                    &id,
                                    self.sender.as_uuid(),
                                    &name,
                                    &name,
                                    &ms,
                                    &self.content,
                                    &ms,
                                    &none,
                                ],
                            )
                            .await?;
                    } else {
                        let rows = self
                            .client
                            .query(
                                &self.append,
                                &[
                                    self.append_room.as_uuid(),
                                    &id,
                                    self.sender.as_uuid(),
                                    &name,
                                    &name,
                                    &ms,
                                    &none,
                                    &self.content.as_slice(),
                                    &ms,
                                ],
                            )
                            .await?;
                        if rows.len() != 1 {
                            bail!("the append statement returned {} rows", rows.len());
                        }
                    }
                    latency.push(at.elapsed());
                    n += 1;
                }
            }
            Variant::RawPipelined => {
                let Self {
                    client,
                    insert,
                    room,
                    sender,
                    content,
                    seq: next,
                    ..
                } = self;
                let (client, insert, content, none) = (&*client, &*insert, &*content, &none);
                let (room, sender) = (*room.as_uuid(), *sender.as_uuid());
                let mut in_flight = FuturesUnordered::new();
                loop {
                    while in_flight.len() < PIPELINE && started.elapsed() < window {
                        *next += 1;
                        let (seq, id, ms) = (*next, *MessageId::new().as_uuid(), now_ms());
                        in_flight.push(async move {
                            let at = Instant::now();
                            client
                                .execute(
                                    insert,
                                    &[
                                        &room, &seq, &id, &sender, &name, &name, &ms, content, &ms,
                                        none,
                                    ],
                                )
                                .await
                                .map(|_| at.elapsed())
                        });
                    }
                    match in_flight.next().await {
                        Some(took) => {
                            latency.push(took?);
                            n += 1;
                        }
                        None => break,
                    }
                }
            }
            Variant::RawPool => {
                let (sender, content, none) = (*self.sender.as_uuid(), &self.content, &none);
                let each = self.pool.iter().map(|(client, insert)| async move {
                    // A room of its own for this connection and window.
                    let room = *RoomId::new().as_uuid();
                    let mut latency = Samples::default();
                    let mut seq = 0i64;
                    while started.elapsed() < window {
                        seq += 1;
                        let (id, ms) = (*MessageId::new().as_uuid(), now_ms());
                        let at = Instant::now();
                        client
                            .execute(
                                insert,
                                &[
                                    &room, &seq, &id, &sender, &name, &name, &ms, content, &ms,
                                    none,
                                ],
                            )
                            .await?;
                        latency.push(at.elapsed());
                    }
                    Ok::<_, tokio_postgres::Error>((seq, latency))
                });
                for result in futures_util::future::join_all(each).await {
                    let (rows, samples) = result?;
                    n += u64::try_from(rows).unwrap_or(0);
                    latency.extend(samples);
                }
            }
            Variant::RawBatch => {
                while started.elapsed() < window {
                    let ms = now_ms();
                    let rooms = vec![*self.room.as_uuid(); BATCH];
                    let seqs: Vec<i64> = (0..BATCH).map(|_| self.next_seq()).collect();
                    let ids: Vec<_> = (0..BATCH).map(|_| *MessageId::new().as_uuid()).collect();
                    let senders = vec![*self.sender.as_uuid(); BATCH];
                    let names = vec![name; BATCH];
                    let times = vec![ms; BATCH];
                    let contents = vec![self.content.as_slice(); BATCH];
                    let nones: Vec<Option<&str>> = vec![None; BATCH];
                    let at = Instant::now();
                    let rows = self
                        .client
                        .execute(
                            &self.batch,
                            &[
                                &rooms, &seqs, &ids, &senders, &names, &names, &times, &contents,
                                &times, &nones,
                            ],
                        )
                        .await?;
                    latency.push(at.elapsed());
                    n += rows;
                }
            }
            _ => bail!("{variant:?} is not a raw variant"),
        }
        Ok((n, latency))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A raw variant for `window`, with the CPU of this process and of
/// PostgreSQL over it.
async fn measure_raw(
    raw: &mut Raw,
    variant: Variant,
    window: Duration,
    pg: &Pg,
    services: &ServicePids,
) -> anyhow::Result<Window> {
    let (wal0, l0) = (pg.wal_bytes().await?, cpu_secs(std::process::id()));
    let svc0 = services.snapshot();
    let t0 = Instant::now();
    let (n, latency) = raw.run(variant, window).await?;
    let secs = t0.elapsed().as_secs_f64();
    let load_cpu = cpu_secs(std::process::id()) - l0;
    let svc = services.since(&svc0);
    let wal = pg.wal_bytes().await? - wal0;
    Ok(Window {
        secs,
        n,
        node_cpu: 0.0,
        load_cpu,
        pg_cpu: svc.pg_cpu,
        wal,
        latency,
    })
}

pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Figure> {
    let url = pg::postgres_url(ctx, "pg-durable")?;
    let mut pg = Pg::connect(&url).await?;
    let result = run_on(ctx, &mut pg).await;
    pg.drop_databases().await;
    result
}

async fn run_on(ctx: &Ctx, pg: &mut Pg) -> anyhow::Result<Figure> {
    let writers = if ctx.quick { 8 } else { WRITERS };
    let one_room = if ctx.quick { 4 } else { ONE_ROOM };
    let rounds = if ctx.quick { 2 } else { 4 };
    let window = ctx.window / 2;
    let url = pg.create_database().await?;
    let services = ServicePids {
        pg: pg.postmaster,
        nats: None,
    };

    let server = ctx.mesh_with(&["--store".to_owned(), url.clone()], None)?;
    let api = Api::new(server.addr);
    let accounts = api.register_many("pgd", writers).await?;
    let mut w = Writers {
        mode: watch::Sender::new(0),
        acked: Arc::default(),
        sent: Arc::default(),
        from_ns: Arc::new(AtomicU64::new(u64::MAX)),
        to_ns: Arc::new(AtomicU64::new(0)),
        samples: Vec::new(),
        failure: Arc::default(),
        tasks: Vec::new(),
    };
    for (i, account) in accounts.iter().enumerate() {
        let room = api
            .create_room(&account.token, &format!("pgdurable{i}"))
            .await?;
        w.add(
            client::ws_hello(server.addr, &account.token).await?,
            room,
            2,
            i,
        );
    }
    let shared = api
        .room_with("pgdurable-one", &accounts[..one_room])
        .await?;
    for (i, account) in accounts.iter().take(one_room).enumerate() {
        w.add(
            client::ws_hello(server.addr, &account.token).await?,
            shared.clone(),
            3,
            i,
        );
    }
    // The raw client, once mesh made its tables.
    let mut raw = Raw::connect(&url).await?;

    // Untimed: PostgreSQL makes its first WAL segments, the node its pool.
    let short = Duration::from_secs(2);
    w.measure(2, short, server.pid(), pg, &services).await?;
    measure_raw(&mut raw, Variant::RawSerial, short, pg, &services).await?;

    let mut windows: BTreeMap<Variant, Vec<Window>> = BTreeMap::new();
    for round in 0..rounds {
        let mut order = VARIANTS.to_vec();
        if round % 2 == 1 {
            order.reverse();
        }
        for variant in order {
            let win = match variant.mode() {
                Some(mode) => w.measure(mode, window, server.pid(), pg, &services).await?,
                None => measure_raw(&mut raw, variant, window, pg, &services).await?,
            };
            windows.entry(variant).or_default().push(win);
        }
        let rate = |v: Variant| {
            windows
                .get(&v)
                .and_then(|w| w.last())
                .map_or(0.0, Window::rate)
        };
        eprintln!(
            "   round {round}: mesh 64 writers {:.0} msg/s, raw serial {:.0}/s, mesh 1 writer {:.0}/s",
            rate(Variant::MeshMany),
            rate(Variant::RawSerial),
            rate(Variant::MeshOne)
        );
    }
    drop(w);
    drop(raw);
    drop(server);

    let get = |v: Variant| windows.get(&v).map(Vec::as_slice).unwrap_or_default();
    let med =
        |v: Variant, f: &dyn Fn(&Window) -> f64| median(&get(v).iter().map(f).collect::<Vec<_>>());
    let ratios = |a: Variant, b: Variant| -> Vec<f64> {
        get(a)
            .iter()
            .zip(get(b))
            .map(|(x, y)| x.rate() / y.rate().max(1e-9))
            .collect()
    };
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let head = ratios(Variant::MeshMany, Variant::RawSerial);
    let vs_pool = ratios(Variant::MeshMany, Variant::RawPool);
    let like = ratios(Variant::MeshOne, Variant::RawSerial);
    let mut fig = Figure::new(
        "pg-durable",
        format!(
            "acknowledged messages per second on PostgreSQL, 100-byte content, {writers} writers x {IN_FLIGHT} in flight, each alone in its room"
        ),
    )
    .value(med(Variant::MeshMany, &Window::rate), "messages/s")
    .baseline(
        "raw INSERT of the same row into a table LIKE messages, one client, one at a time, each autocommit",
        med(Variant::RawSerial, &Window::rate),
    )
    .baseline2(
        "raw INSERTs from 16 connections (mesh-server's pool size), each one at a time, autocommit",
        med(Variant::RawPool, &Window::rate),
        median(&vs_pool),
    );
    fig.ratio = Some(median(&head));
    fig = fig
        .detail("rounds", format!("ratios {}", list(&head)))
        .detail(
            "rounds2",
            format!("ratios to 16 raw connections {}", list(&vs_pool)),
        )
        .detail(
            "like4like",
            format!(
                "mesh 1 writer x 1 in flight / raw one at a time: {:.3} (rounds {})",
                median(&like),
                list(&like)
            ),
        );
    for variant in [
        Variant::MeshOne,
        Variant::MeshMany,
        Variant::MeshOneRoom,
        Variant::RawSerial,
        Variant::RawPool,
        Variant::RawPipelined,
        Variant::RawBatch,
        Variant::RawAppend,
    ] {
        let mut lat = Samples::default();
        for win in get(variant) {
            lat.extend(win.latency.clone());
        }
        let per = if variant == Variant::RawBatch {
            "batch"
        } else {
            "ack"
        };
        let cpu = if variant.mode().is_some() {
            format!(
                "CPU per message: node {:.0} us, PostgreSQL {:.0} us, load tool {:.0} us",
                med(variant, &|w| w.us(w.node_cpu)),
                med(variant, &|w| w.us(w.pg_cpu)),
                med(variant, &|w| w.us(w.load_cpu)),
            )
        } else {
            format!(
                "CPU per row: PostgreSQL {:.0} us, load tool (the client) {:.0} us",
                med(variant, &|w| w.us(w.pg_cpu)),
                med(variant, &|w| w.us(w.load_cpu)),
            )
        };
        fig = fig.detail(
            variant.key(),
            format!(
                "{}: {:.0}/s (rounds {}); {per} p50 {:.3} ms, p99 {:.3} ms; {cpu}; WAL {:.0} B per row",
                variant.name(),
                med(variant, &Window::rate),
                get(variant)
                    .iter()
                    .map(|w| format!("{:.0}", w.rate()))
                    .collect::<Vec<_>>()
                    .join(", "),
                lat.quantile_ms(0.5),
                lat.quantile_ms(0.99),
                med(variant, &|w| w.wal as f64 / w.n.max(1) as f64),
            ),
        );
    }
    Ok(fig
        .detail("services", services.describe())
        .note("ratio = median of the rounds' ratios (mesh 64 writers / raw one at a time); rates and CPU = medians, latencies pooled over the rounds"))
}
