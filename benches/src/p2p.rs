//! Figure 7, P2P transfer: file bytes per second between two mesh agents
//! over loopback, against a raw quinn bulk stream and a raw TCP stream of
//! the same bytes, all three in this process and in the same run.
//!
//! The agents are `mesh_core::p2p` endpoints used as the CLI uses them: a
//! target that expects the session and checks its token (signed by a real
//! key ring) and the initiator's certificate, and an initiator that pins
//! the target's certificate. Each transfer is a new session: connect,
//! `P2P_HELLO`, then `send_file` / `receive_file` of the whole file, which
//! includes the sender's BLAKE3 pass over the file before it sends, the
//! receiver's hashing and writing of the part file, its sidecar, the final
//! `fsync` and rename. The baselines send the same file, read the same way
//! (1 MiB reads) over one fresh connection each (quinn: a unidirectional
//! stream with mesh's window sizes; TCP: tokio `TcpStream`), and the
//! receiver only counts the bytes. Timed from connect to the receiver
//! holding every byte.
//!
//! The file lives on tmpfs (`/dev/shm`) when there is one, so that the
//! figure is about the transfer, not the disk. There is no server here, so
//! the transfers may use every core (the load tool is pinned to the others
//! while the other figures run; it is unpinned for this one and pinned back
//! after). Rounds alternate mesh, quinn, TCP; the ratios are the medians of
//! the rounds' ratios.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use mesh_core::auth::KeyRing;
use mesh_core::auth::tokens::issue_session_token;
use mesh_core::p2p::{AgentIdentity, ExpectedSession, P2pEndpoint, ReceiveOptions, SendOptions};
use mesh_core::protocol::{
    P2pSession, PeerId, RoomId, SessionId, SessionKind, SessionState, Timestamp, UserId,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::ctx::{Ctx, cpu_secs, median};
use crate::report::Figure;

const MIB: usize = 1024 * 1024;
/// The baselines' read and write size.
const BUF: usize = MIB;

/// One timed transfer: seconds, and this process's CPU seconds meanwhile.
#[derive(Debug, Clone, Copy)]
struct Timed {
    secs: f64,
    cpu: f64,
}

async fn timed<F: Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<Timed> {
    let (cpu0, at) = (cpu_secs(std::process::id()), Instant::now());
    f.await?;
    Ok(Timed {
        secs: at.elapsed().as_secs_f64(),
        cpu: cpu_secs(std::process::id()) - cpu0,
    })
}

pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Figure> {
    let size = if ctx.quick { 64 * MIB } else { 512 * MIB };
    let rounds = if ctx.quick { 2 } else { 5 };
    let (dir, medium) = scratch(ctx, "mesh-bench-p2p-")?;
    let src = dir.path().join("payload.bin");
    let dest = dir.path().join("inbox");
    std::fs::create_dir(&dest)?;
    {
        let src = src.clone();
        tokio::task::spawn_blocking(move || write_file(&src, size)).await??;
    }

    // No server in this figure: let the two agents use every core.
    let cores = ctx.pin.cores.max(1);
    let (src2, dest2) = (src.clone(), dest.clone());
    let m = on_every_core(ctx, move || async move {
        measure(&src2, &dest2, size as u64, rounds).await
    })
    .await?;
    drop(dir);

    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rate = |t: &[Timed]| median(&t.iter().map(|t| size as f64 / t.secs).collect::<Vec<_>>());
    // CPU seconds (all threads of this process, both sides) per GiB moved.
    let cpu_per_gib = |t: &[Timed]| {
        median(
            &t.iter()
                .map(|t| t.cpu * (1024.0 * MIB as f64) / size as f64)
                .collect::<Vec<_>>(),
        )
    };
    let (mesh, quic, tcp) = (rate(&m.mesh), rate(&m.quic), rate(&m.tcp));
    let vs_quic = median(&m.vs_quic);
    let vs_tcp = median(&m.vs_tcp);
    let mib_s = |v: f64| v / MIB as f64;
    let mut fig = Figure::new(
        "p2p",
        format!(
            "P2P file bytes per second between two mesh agents over loopback, {} MiB file",
            size / MIB
        ),
    )
    .value(mesh, "bytes/s")
    .baseline(
        "raw quinn 0.11 (ring), one uni stream, mesh's window sizes, same file read in 1 MiB, receiver counts",
        quic,
    )
    .baseline2(
        "raw TCP (tokio TcpStream), same file read in 1 MiB, receiver reads 1 MiB at a time and counts",
        tcp,
        vs_tcp,
    );
    fig.ratio = Some(vs_quic);
    Ok(fig
        .goal(
            "ratio >= 0.9 of raw quinn and ratio2 >= 0.15 of raw TCP",
            vs_quic >= 0.9 && vs_tcp >= 0.15,
        )
        .detail(
            "MiB/s",
            format!(
                "median: mesh {:.0}, quinn {:.0}, TCP {:.0}",
                mib_s(mesh),
                mib_s(quic),
                mib_s(tcp)
            ),
        )
        .detail("vs_quinn", format!("rounds {}", list(&m.vs_quic)))
        .detail("vs_tcp", format!("rounds {}", list(&m.vs_tcp)))
        .detail(
            "cpu/GiB",
            format!(
                "CPU seconds per GiB, both sides (median): mesh {:.2}, quinn {:.2}, TCP {:.2}",
                cpu_per_gib(&m.mesh),
                cpu_per_gib(&m.quic),
                cpu_per_gib(&m.tcp)
            ),
        )
        .detail(
            "hash",
            format!(
                "BLAKE3 of the file on one thread: {:.0} MiB/s (mesh hashes it twice: sender before, receiver while)",
                mib_s(m.hash_rate)
            ),
        )
        .detail("file_on", medium)
        .detail("size", size as u64)
        .detail("threads", format!("{cores} tokio workers, unpinned"))
        .note(
            "each transfer a fresh connection (mesh: a fresh session, token checked), timed from connect \
             until the receiver holds every byte (mesh: verified, synced and renamed); ratios = medians \
             of the rounds' ratios",
        ))
}

/// The timed transfers of every round.
#[derive(Debug, Default)]
struct Measured {
    mesh: Vec<Timed>,
    quic: Vec<Timed>,
    tcp: Vec<Timed>,
    vs_quic: Vec<f64>,
    vs_tcp: Vec<f64>,
    /// BLAKE3 bytes/s of the file, one thread.
    hash_rate: f64,
}

async fn measure(src: &Path, dest: &Path, size: u64, rounds: usize) -> anyhow::Result<Measured> {
    let agents = Agents::new()?;
    let quic = Quic::new()?;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut m = Measured::default();

    // Warm-up, untimed: one of each.
    let got = agents
        .transfer(src, dest, size)
        .await
        .context("mesh agents")?;
    std::fs::remove_file(got)?;
    quic.transfer(src, size).await.context("raw quinn")?;
    tcp_transfer(&tcp, src, size).await.context("raw TCP")?;

    for _ in 0..rounds {
        // The received copy is removed after the clock stops: freeing
        // 512 MiB of tmpfs pages is not part of the transfer (and the
        // baselines write no file).
        let mut got = None;
        let a = timed(async {
            got = Some(agents.transfer(src, dest, size).await?);
            Ok(())
        })
        .await?;
        if let Some(got) = got {
            std::fs::remove_file(got)?;
        }
        let q = timed(quic.transfer(src, size)).await?;
        let t = timed(tcp_transfer(&tcp, src, size)).await?;
        m.vs_quic.push(q.secs / a.secs);
        m.vs_tcp.push(t.secs / a.secs);
        m.mesh.push(a);
        m.quic.push(q);
        m.tcp.push(t);
    }

    let path = src.to_owned();
    m.hash_rate = tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        let at = Instant::now();
        let mut h = blake3::Hasher::new();
        h.update_reader(std::fs::File::open(&path)?)?;
        let _ = h.finalize();
        Ok(size as f64 / at.elapsed().as_secs_f64())
    })
    .await??;
    Ok(m)
}

/// A temporary folder for the transferred files: on tmpfs (`/dev/shm`)
/// when there is one, so that the figure is about the transfer, not the
/// disk; and a few words saying where it is.
pub(crate) fn scratch(ctx: &Ctx, prefix: &str) -> anyhow::Result<(tempfile::TempDir, String)> {
    let shm = Path::new("/dev/shm");
    let (parent, medium) = if shm.is_dir() && tempfile::tempdir_in(shm).is_ok() {
        (shm.to_path_buf(), "tmpfs (/dev/shm)".to_owned())
    } else {
        (
            ctx.data_parent.clone(),
            format!(
                "{} (not tmpfs: disk speed counts)",
                ctx.data_parent.display()
            ),
        )
    };
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&parent)
        .with_context(|| format!("a temporary folder in {}", parent.display()))?;
    Ok((dir, medium))
}

/// Runs `f` unpinned, on a runtime of its own with one worker per core
/// (the load tool is pinned to the other cores than the server's while the
/// other figures run; it is unpinned for this and pinned back after).
pub(crate) async fn on_every_core<T, F, Fut>(ctx: &Ctx, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let cores = ctx.pin.cores.max(1);
    if ctx.pin.load.is_some() {
        let all = format!("0-{}", cores - 1);
        let ok = std::process::Command::new("taskset")
            .args(["-a", "-cp", &all, &std::process::id().to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("   could not unpin the load tool; the transfers share its cores");
        }
    }
    // A runtime of its own, with one worker per core, on a thread started
    // after unpinning (threads inherit the affinity of their parent).
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                let r = rt.block_on(f());
                rt.shutdown_timeout(Duration::from_secs(1));
                r
            });
        let _ = tx.send(result);
    });
    let result = rx.await.context("the measuring thread died");
    // Pin back. `taskset -a` fails when a thread exits while it runs (the
    // measuring runtime's threads are going away): try again a few times.
    if ctx.pin.load.is_some() {
        let mut tries = 0;
        while let Err(e) = ctx.pin.pin_self() {
            tries += 1;
            if tries == 5 {
                eprintln!("   could not pin the load tool back ({e:#})");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    result?
}

/// Writes `len` pseudo-random (incompressible) bytes.
pub(crate) fn write_file(path: &Path, len: usize) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut f = std::io::BufWriter::with_capacity(BUF, std::fs::File::create(path)?);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; BUF];
    let mut left = len;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            word.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        let n = left.min(BUF);
        f.write_all(&block[..n])?;
        left -= n;
    }
    f.flush()?;
    Ok(())
}

/// Two mesh agents: a target accepting file sessions, and an initiator.
struct Agents {
    keys: KeyRing,
    target_peer: PeerId,
    initiator_peer: PeerId,
    target: P2pEndpoint,
    initiator: P2pEndpoint,
}

impl Agents {
    fn new() -> anyhow::Result<Self> {
        let keys = KeyRing::generate()?;
        let target_peer = PeerId::new();
        let target = P2pEndpoint::builder(AgentIdentity::generate()?)
            .accept_sessions(keys.verifier())
            .peer_id(target_peer)
            .accept_kinds([SessionKind::File])
            .bind("127.0.0.1:0".parse()?)?;
        let initiator =
            P2pEndpoint::builder(AgentIdentity::generate()?).bind("127.0.0.1:0".parse()?)?;
        Ok(Self {
            keys,
            target_peer,
            initiator_peer: PeerId::new(),
            target,
            initiator,
        })
    }

    /// One session sending `src` into `dest`; returns where the received
    /// copy is, for the caller to remove after timing.
    async fn transfer(&self, src: &Path, dest: &Path, size: u64) -> anyhow::Result<PathBuf> {
        // The session as the server would create and announce it.
        let now = Timestamp::now();
        let session = P2pSession {
            id: SessionId::new(),
            room_id: RoomId::new(),
            kind: SessionKind::File,
            initiator_peer_id: self.initiator_peer,
            target_peer_id: self.target_peer,
            initiator_user_id: UserId::new(),
            target_user_id: UserId::new(),
            state: SessionState::Pending,
            created_at: now,
            expires_at: Timestamp::from_unix_millis(now.unix_millis() + 180_000),
        };
        self.target.expect_session(
            ExpectedSession::new(session.id, session.kind, session.initiator_peer_id)
                .initiator_fingerprint(self.initiator.fingerprint()),
        );
        let token = issue_session_token(&self.keys, &session, now)?.token;
        let addrs = [self.target.local_addr()?.to_string()];
        let (out, inc) = tokio::join!(
            self.initiator
                .connect(&addrs, self.target.fingerprint(), session.id, &token),
            self.target.accept()
        );
        let out = out.context("connecting")?;
        let inc = inc.context("the target endpoint closed")??;
        let into: PathBuf = dest.to_owned();
        let receiver = tokio::spawn(async move {
            inc.receive_file(&into, &ReceiveOptions::default(), |_| {})
                .await
        });
        let sent = out
            .send_file(src, &SendOptions::default(), |_| {})
            .await
            .context("sending")?;
        let got = receiver.await?.context("receiving")?;
        ensure!(
            got.size == size && got.blake3 == sent.blake3 && got.resumed_from == 0,
            "the received file differs: {got:?}"
        );
        Ok(got.path)
    }
}

/// Mesh's transport windows (`mesh_core::p2p::tls`): the baseline moves
/// bytes under the same flow control.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window((8u32 * 1024 * 1024).into());
    t.receive_window((16u32 * 1024 * 1024).into());
    t.send_window(16 * 1024 * 1024);
    Arc::new(t)
}

/// Raw quinn: a server endpoint and a client endpoint, ring TLS 1.3.
struct Quic {
    server: quinn::Endpoint,
    client: quinn::Endpoint,
    addr: std::net::SocketAddr,
}

impl Quic {
    fn new() -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
        let cert = certified.cert.der().clone();
        let key =
            rustls::pki_types::PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        let alpn = b"mesh-bench".to_vec();

        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key.into())?;
        server_tls.alpn_protocols = vec![alpn.clone()];
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)?,
        ));
        server_config.transport_config(transport());
        let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse()?)?;

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert)?;
        let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client_tls.alpn_protocols = vec![alpn];
        let mut client_config = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)?,
        ));
        client_config.transport_config(transport());
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        client.set_default_client_config(client_config);
        let addr = server.local_addr()?;
        Ok(Self {
            server,
            client,
            addr,
        })
    }

    /// One connection, one stream carrying the file; the receiver counts.
    async fn transfer(&self, src: &Path, size: u64) -> anyhow::Result<()> {
        let connecting = self.client.connect(self.addr, "localhost")?;
        // The server's side of the handshake runs once the incoming
        // connection is awaited, so both at once.
        let (conn, server_conn) = tokio::join!(connecting, async {
            let incoming = self
                .server
                .accept()
                .await
                .context("the quinn server closed")?;
            Ok::<_, anyhow::Error>(incoming.await?)
        });
        let conn = conn?;
        let server_conn = server_conn?;
        let receiver = tokio::spawn(async move {
            let mut stream = server_conn.accept_uni().await?;
            let mut n = 0u64;
            while let Some(chunk) = stream.read_chunk(usize::MAX, true).await? {
                n += chunk.bytes.len() as u64;
            }
            Ok::<_, anyhow::Error>((n, server_conn))
        });
        let mut stream = conn.open_uni().await?;
        send_file_into(src, &mut stream).await?;
        stream.finish()?;
        let (n, server_conn) = receiver.await??;
        if n != size {
            bail!("quinn: {n} of {size} bytes arrived");
        }
        conn.close(0u32.into(), b"done");
        server_conn.close(0u32.into(), b"done");
        Ok(())
    }
}

/// One TCP connection carrying the file; the receiver counts.
async fn tcp_transfer(
    listener: &tokio::net::TcpListener,
    src: &Path,
    size: u64,
) -> anyhow::Result<()> {
    let (conn, accepted) = tokio::join!(
        tokio::net::TcpStream::connect(listener.local_addr()?),
        listener.accept()
    );
    let mut conn = conn?;
    let (mut peer, _) = accepted?;
    conn.set_nodelay(true)?;
    let receiver = tokio::spawn(async move {
        let mut buf = vec![0u8; BUF];
        let mut n = 0u64;
        loop {
            let got = peer.read(&mut buf).await?;
            if got == 0 {
                break;
            }
            n += got as u64;
        }
        Ok::<_, anyhow::Error>(n)
    });
    send_file_into(src, &mut conn).await?;
    conn.shutdown().await?;
    let n = receiver.await??;
    if n != size {
        bail!("TCP: {n} of {size} bytes arrived");
    }
    Ok(())
}

/// Writes the file at `src` into `to`, `BUF` bytes a read, as the
/// baselines' senders do.
async fn send_file_into(
    src: &Path,
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> anyhow::Result<()> {
    let mut file = tokio::fs::File::open(src).await?;
    let mut buf = vec![0u8; BUF];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
    }
}
