//! Agent-to-agent sessions over real QUIC on loopback, with session tokens
//! signed by a real key ring. No sleeps: every wait is for an event.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_core::auth::KeyRing;
use mesh_core::auth::tokens::issue_session_token;
use mesh_core::p2p::{
    AgentIdentity, ExpectedSession, IncomingSession, OutgoingSession, P2pEndpoint, P2pError,
    P2pErrorCode, ReceiveOptions, SendOptions, TerminalCommand, TerminalEvent, TerminalPolicy,
};
use mesh_core::protocol::{
    P2pSession, PeerId, RoomId, SessionId, SessionKind, SessionState, Timestamp, UserId,
};
use tokio::sync::oneshot;

const MIB: usize = 1024 * 1024;

struct Net {
    keys: KeyRing,
    me: PeerId,
    them: PeerId,
    target: P2pEndpoint,
    initiator: P2pEndpoint,
}

fn session(kind: SessionKind, initiator: PeerId, target: PeerId, ttl_secs: i64) -> P2pSession {
    let now = Timestamp::now();
    P2pSession {
        id: SessionId::new(),
        room_id: RoomId::new(),
        kind,
        initiator_peer_id: initiator,
        target_peer_id: target,
        initiator_user_id: UserId::new(),
        target_user_id: UserId::new(),
        state: SessionState::Pending,
        created_at: now,
        expires_at: Timestamp::from_unix_millis(now.unix_millis() + ttl_secs * 1000),
    }
}

fn token(keys: &KeyRing, s: &P2pSession) -> String {
    issue_session_token(keys, s, Timestamp::now())
        .expect("token")
        .token
}

fn net() -> Net {
    net_with(AgentIdentity::generate().expect("initiator identity"))
}

fn net_with(initiator_identity: AgentIdentity) -> Net {
    let keys = KeyRing::generate().expect("keys");
    let me = PeerId::new();
    let target = P2pEndpoint::builder(AgentIdentity::generate().expect("target identity"))
        .accept_sessions(keys.verifier())
        .peer_id(me)
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind target");
    let initiator = P2pEndpoint::builder(initiator_identity)
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind initiator");
    Net {
        keys,
        me,
        them: PeerId::new(),
        target,
        initiator,
    }
}

impl Net {
    /// A session of `kind`, announced to the target as the server would.
    fn announce(&self, kind: SessionKind) -> (P2pSession, String) {
        let s = session(kind, self.them, self.me, 180);
        self.target.expect_session(
            ExpectedSession::new(s.id, s.kind, s.initiator_peer_id)
                .initiator_fingerprint(self.initiator.fingerprint()),
        );
        let t = token(&self.keys, &s);
        (s, t)
    }

    async fn connect(&self, s: SessionId, token: &str) -> Result<OutgoingSession, P2pError> {
        let addr = self.target.local_addr().expect("addr").to_string();
        self.initiator
            .connect(&[addr], self.target.fingerprint(), s, token)
            .await
    }

    /// Connects and accepts at once.
    async fn open(&self, kind: SessionKind) -> (OutgoingSession, IncomingSession) {
        let (s, t) = self.announce(kind);
        let (out, inc) = tokio::join!(self.connect(s.id, &t), self.target.accept());
        let inc = inc.expect("endpoint open").expect("accepted");
        assert_eq!(inc.session_id(), s.id);
        assert_eq!(inc.peer_fingerprint(), self.initiator.fingerprint());
        (out.expect("connected"), inc)
    }

    /// Tries a session with `token` for `hello_session`, expecting both
    /// sides to report `code`.
    async fn expect_refusal(&self, hello_session: SessionId, token: &str, code: P2pErrorCode) {
        let (out, inc) = tokio::join!(self.connect(hello_session, token), self.target.accept());
        let err = out.expect_err("the initiator must be refused");
        assert!(
            matches!(&err, P2pError::Remote { code: c, .. } if *c == code),
            "initiator: {err:?}"
        );
        let err = inc
            .expect("endpoint open")
            .expect_err("the target must refuse");
        assert!(
            matches!(&err, P2pError::Refused { code: c, .. } if *c == code),
            "target: {err:?}"
        );
    }
}

/// Writes `len` pseudo-random bytes (BLAKE3 as a stream cipher: fast even
/// in a debug build) and returns their hash.
fn random_file(path: &Path, len: usize, seed: &[u8]) -> blake3::Hash {
    use std::io::Write;
    let mut xof = blake3::Hasher::new().update(seed).finalize_xof();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut hasher = blake3::Hasher::new();
    let mut block = vec![0u8; MIB];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB);
        xof.fill(&mut block[..n]);
        hasher.update(&block[..n]);
        f.write_all(&block[..n]).expect("write");
        left -= n;
    }
    f.flush().expect("flush");
    hasher.finalize()
}

fn hash_of(path: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path).expect("open"))
        .expect("read");
    h.finalize()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_file_arrives_byte_identical() {
    let net = net();
    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    let size = 200 * MIB;
    let path = src.path().join("big.bin");
    let hash = random_file(&path, size, b"big");

    let (out, inc) = net.open(SessionKind::File).await;
    let dest = dst.path().to_owned();
    let last = Arc::new(Mutex::new((0u64, 0u64)));
    let seen = last.clone();
    let receiver = tokio::spawn(async move {
        inc.receive_file(&dest, &ReceiveOptions::default(), move |p| {
            if let Ok(mut s) = seen.lock() {
                *s = (p.done, p.total);
            }
        })
        .await
    });
    let started = Instant::now();
    let sent = out
        .send_file(&path, &SendOptions::default(), |_| {})
        .await
        .expect("send");
    let got = receiver.await.expect("join").expect("receive");
    let elapsed = started.elapsed();

    assert_eq!(sent.blake3, hash);
    assert_eq!(got.blake3, hash);
    assert_eq!(got.size, size as u64);
    assert_eq!(got.resumed_from, 0);
    assert_eq!(hash_of(&dst.path().join("big.bin")), hash);
    assert_eq!(*last.lock().expect("lock"), (size as u64, size as u64));
    assert_eq!(names_in(dst.path()), vec!["big.bin"]);
    println!(
        "200 MiB in {:.2?}: {:.1} MiB/s (hashing both sides included)",
        elapsed,
        200.0 / elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_transfer_resumes_from_the_verified_offset() {
    let net = net();
    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    let size = 24 * MIB;
    let path = src.path().join("resume.bin");
    let hash = random_file(&path, size, b"resume");

    // First attempt: the sender dies once the receiver holds 8 MiB.
    let (out, inc) = net.open(SessionKind::File).await;
    let (reached, halfway) = oneshot::channel();
    let reached = Mutex::new(Some(reached));
    let dest = dst.path().to_owned();
    let receiver = tokio::spawn(async move {
        inc.receive_file(&dest, &ReceiveOptions::default(), move |p| {
            if p.done >= 8 * MIB as u64
                && let Some(tx) = reached.lock().ok().and_then(|mut r| r.take())
            {
                let _ = tx.send(());
            }
        })
        .await
    });
    let p = path.clone();
    let sender =
        tokio::spawn(async move { out.send_file(&p, &SendOptions::default(), |_| {}).await });
    halfway.await.expect("the receiver got 8 MiB");
    sender.abort(); // drops the session, and so the connection
    let err = receiver.await.expect("join").expect_err("broken");
    assert!(matches!(err, P2pError::Connection(_)), "{err:?}");
    assert!(!dst.path().join("resume.bin").exists());

    // Second attempt, a new session: resumes.
    let (out, inc) = net.open(SessionKind::File).await;
    let dest = dst.path().to_owned();
    let receiver = tokio::spawn(async move {
        inc.receive_file(&dest, &ReceiveOptions::default(), |_| {})
            .await
    });
    let sent = out
        .send_file(&path, &SendOptions::default(), |_| {})
        .await
        .expect("send");
    let got = receiver.await.expect("join").expect("receive");
    assert!(
        got.resumed_from >= 8 * MIB as u64 && got.resumed_from < size as u64,
        "resumed from {}",
        got.resumed_from
    );
    assert_eq!(sent.resumed_from, got.resumed_from);
    assert_eq!(got.transferred, size as u64 - got.resumed_from);
    assert_eq!(sent.transferred, got.transferred);
    assert_eq!(hash_of(&dst.path().join("resume.bin")), hash);
    assert_eq!(names_in(dst.path()), vec!["resume.bin"]);
}

#[tokio::test]
async fn a_tampered_chunk_is_caught_and_no_file_appears() {
    let net = net();
    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    let path = src.path().join("t.bin");
    random_file(&path, MIB + 5, b"tamper");

    let (out, inc) = net.open(SessionKind::File).await;
    let dest = dst.path().to_owned();
    let receiver = tokio::spawn(async move {
        inc.receive_file(&dest, &ReceiveOptions::default(), |_| {})
            .await
    });
    let err = out
        .send_file(
            &path,
            &SendOptions::default().flip_byte_for_tests(300_000),
            |_| {},
        )
        .await
        .expect_err("tampered");
    assert_eq!(err.code(), Some(P2pErrorCode::HashMismatch), "{err:?}");
    assert!(matches!(err, P2pError::Remote { .. }), "{err:?}");
    let err = receiver.await.expect("join").expect_err("tampered");
    assert!(
        matches!(
            &err,
            P2pError::Refused {
                code: P2pErrorCode::HashMismatch,
                ..
            }
        ),
        "{err:?}"
    );
    // Neither the file nor its part file is left.
    assert!(
        names_in(dst.path()).is_empty(),
        "{:?}",
        names_in(dst.path())
    );
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let net = net();
    let s = session(SessionKind::File, net.them, net.me, -60);
    net.target
        .expect_session(ExpectedSession::new(s.id, s.kind, s.initiator_peer_id));
    net.expect_refusal(s.id, &token(&net.keys, &s), P2pErrorCode::TokenExpired)
        .await;
}

#[tokio::test]
async fn a_token_for_another_session_is_refused() {
    let net = net();
    let (announced, _) = net.announce(SessionKind::File);
    let (_, other_token) = net.announce(SessionKind::File);
    net.expect_refusal(announced.id, &other_token, P2pErrorCode::WrongSession)
        .await;
}

#[tokio::test]
async fn a_token_for_another_peer_is_refused() {
    let net = net();
    let s = session(SessionKind::File, net.them, PeerId::new(), 180);
    net.target
        .expect_session(ExpectedSession::new(s.id, s.kind, s.initiator_peer_id));
    net.expect_refusal(s.id, &token(&net.keys, &s), P2pErrorCode::WrongPeer)
        .await;
}

/// An agent binds before the server assigns its peer id (its address goes
/// in the connect), and gets a new one on each reconnect: sessions are
/// refused until it knows one, then only those naming the current one pass.
#[tokio::test]
async fn the_peer_id_can_be_set_after_binding_and_replaced() {
    let keys = KeyRing::generate().expect("keys");
    let target = P2pEndpoint::builder(AgentIdentity::generate().expect("identity"))
        .accept_sessions(keys.verifier())
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind target");
    let initiator = P2pEndpoint::builder(AgentIdentity::generate().expect("identity"))
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind initiator");
    let addr = target.local_addr().expect("addr").to_string();
    let (first, second) = (PeerId::new(), PeerId::new());
    let try_session = |me: PeerId| {
        let s = session(SessionKind::File, PeerId::new(), me, 180);
        target.expect_session(ExpectedSession::new(s.id, s.kind, s.initiator_peer_id));
        let t = token(&keys, &s);
        let (initiator, target, addr) = (&initiator, &target, addr.clone());
        async move {
            let addrs = [addr];
            let (out, inc) = tokio::join!(
                initiator.connect(&addrs, target.fingerprint(), s.id, &t),
                target.accept()
            );
            (out.map(|_| ()), inc.expect("endpoint open").map(|_| ()))
        }
    };
    // Both sides say why: the initiator was told, the target refused.
    let refused = |(out, inc): (Result<(), P2pError>, Result<(), P2pError>)| {
        matches!(
            out,
            Err(P2pError::Remote {
                code: P2pErrorCode::WrongPeer,
                ..
            })
        ) && matches!(
            inc,
            Err(P2pError::Refused {
                code: P2pErrorCode::WrongPeer,
                ..
            })
        )
    };

    assert!(refused(try_session(first).await), "no peer id yet: refused");
    assert_eq!(target.peer_id(), None);

    target.set_peer_id(first);
    assert_eq!(target.peer_id(), Some(first));
    // An announcement for another target is not this agent's to accept,
    // and one without the initiator's fingerprint cannot be pinned.
    let pinned = mesh_core::protocol::P2pInfo {
        cert_fingerprint: Some(initiator.fingerprint().to_owned()),
        addrs: Vec::new(),
    };
    let other = session(SessionKind::File, PeerId::new(), second, 180);
    assert!(
        !target
            .expect_announced(&other, &pinned, "t", None)
            .expect("checked")
    );
    let mine = session(SessionKind::File, PeerId::new(), first, 180);
    let unpinned = mesh_core::protocol::P2pInfo::default();
    assert!(
        target
            .expect_announced(&mine, &unpinned, "t", None)
            .is_err()
    );
    assert!(
        target
            .expect_announced(&mine, &pinned, "t", None)
            .expect("checked")
    );
    let (out, inc) = try_session(first).await;
    assert!(out.is_ok() && inc.is_ok(), "{out:?} {inc:?}");

    target.set_peer_id(second);
    assert!(
        refused(try_session(first).await),
        "the old peer id no longer passes"
    );
    let (out, inc) = try_session(second).await;
    assert!(out.is_ok() && inc.is_ok(), "{out:?} {inc:?}");
}

#[tokio::test]
async fn a_token_signed_by_another_key_is_refused() {
    let net = net();
    let (s, _) = net.announce(SessionKind::File);
    let forged = token(&KeyRing::generate().expect("other keys"), &s);
    net.expect_refusal(s.id, &forged, P2pErrorCode::InvalidToken)
        .await;
}

#[tokio::test]
async fn a_session_nobody_announced_is_refused() {
    let net = net();
    let s = session(SessionKind::File, net.them, net.me, 180);
    net.expect_refusal(s.id, &token(&net.keys, &s), P2pErrorCode::UnknownSession)
        .await;
}

#[tokio::test]
async fn an_initiator_with_another_certificate_is_refused() {
    let net = net();
    let s = session(SessionKind::File, net.them, net.me, 180);
    // The server announced some other certificate for the initiator.
    let announced = AgentIdentity::generate().expect("announced");
    net.target.expect_session(
        ExpectedSession::new(s.id, s.kind, s.initiator_peer_id)
            .initiator_fingerprint(announced.fingerprint()),
    );
    net.expect_refusal(s.id, &token(&net.keys, &s), P2pErrorCode::WrongCertificate)
        .await;
}

#[tokio::test]
async fn a_target_with_another_certificate_is_refused_by_the_initiator() {
    let net = net();
    let (s, t) = net.announce(SessionKind::File);
    let impostor = AgentIdentity::generate().expect("impostor");
    let addrs = [net.target.local_addr().expect("addr").to_string()];
    let (out, inc) = tokio::join!(
        net.initiator
            .connect(&addrs, impostor.fingerprint(), s.id, &t),
        net.target.accept()
    );
    match out.expect_err("pinning") {
        P2pError::FingerprintMismatch { expected, got } => {
            assert_eq!(expected, impostor.fingerprint());
            assert_eq!(got, net.target.fingerprint());
        }
        other => panic!("{other:?}"),
    }
    // The target saw a failed TLS handshake, never a hello.
    let err = inc.expect("endpoint open").expect_err("no session");
    assert!(matches!(err, P2pError::Connection(_)), "{err:?}");
}

#[tokio::test]
async fn a_kind_the_agent_does_not_accept_is_refused() {
    let keys = KeyRing::generate().expect("keys");
    let me = PeerId::new();
    let target = P2pEndpoint::builder(AgentIdentity::generate().expect("id"))
        .accept_sessions(keys.verifier())
        .peer_id(me)
        .accept_kinds([SessionKind::File])
        .allow_unexpected_sessions(true)
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let initiator = P2pEndpoint::builder(AgentIdentity::generate().expect("id"))
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let s = session(SessionKind::Terminal, PeerId::new(), me, 180);
    let addrs = [target.local_addr().expect("addr").to_string()];
    let t = token(&keys, &s);
    let (out, inc) = tokio::join!(
        initiator.connect(&addrs, target.fingerprint(), s.id, &t),
        target.accept()
    );
    assert_eq!(
        out.expect_err("refused").code(),
        Some(P2pErrorCode::KindNotAccepted)
    );
    assert_eq!(
        inc.expect("open").expect_err("refused").code(),
        Some(P2pErrorCode::KindNotAccepted)
    );
}

#[tokio::test]
async fn an_unreachable_peer_times_out() {
    // A UDP socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("silent");
    let initiator = P2pEndpoint::builder(AgentIdentity::generate().expect("id"))
        .connect_timeout(Duration::from_millis(300))
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let err = initiator
        .connect(&[addr], &"00".repeat(32), SessionId::new(), "token")
        .await
        .expect_err("nobody there");
    assert!(
        matches!(err, P2pError::Timeout(d) if d == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(err.to_string().contains("no direct path worked"), "{err}");
}

#[tokio::test]
async fn a_nested_folder_arrives_intact() {
    let net = net();
    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    let root = src.path().join("project");
    let files = [
        ("README.md", 10usize),
        ("src/main.rs", 3000),
        ("src/p2p/deep/er/file.bin", 600_000),
        ("src/p2p/empty.txt", 0),
        ("données/日本.txt", 42),
    ];
    let mut hashes = Vec::new();
    for (rel, len) in files {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dirs");
        hashes.push(random_file(&p, len, rel.as_bytes()));
    }
    std::fs::create_dir_all(root.join("empty/dir")).expect("empty dir");

    let (out, inc) = net.open(SessionKind::Folder).await;
    let dest = dst.path().to_owned();
    let receiver = tokio::spawn(async move {
        inc.receive_folder(&dest, &ReceiveOptions::default(), |_| {})
            .await
    });
    let sent = out
        .send_folder(&root, &SendOptions::default(), |_| {})
        .await
        .expect("send");
    let got = receiver.await.expect("join").expect("receive");
    assert_eq!(sent.files.len(), files.len());
    assert_eq!(got.files.len(), files.len());
    assert_eq!(got.root, dst.path().join("project"));
    for ((rel, _), hash) in files.iter().zip(&hashes) {
        assert_eq!(hash_of(&got.root.join(rel)), *hash, "{rel}");
    }
    assert!(got.root.join("empty/dir").is_dir());
    assert_eq!(names_in(dst.path()), vec!["project"]);
    // No part files anywhere.
    assert_eq!(
        names_in(&got.root.join("src")),
        vec!["main.rs", "p2p"],
        "part files left behind"
    );

    // The same folder again: its files exist, so it is refused up front.
    let (out, inc) = net.open(SessionKind::Folder).await;
    let dest = dst.path().to_owned();
    let receiver = tokio::spawn(async move {
        inc.receive_folder(&dest, &ReceiveOptions::default(), |_| {})
            .await
    });
    let err = out
        .send_folder(&root, &SendOptions::default(), |_| {})
        .await
        .expect_err("exists");
    assert_eq!(err.code(), Some(P2pErrorCode::AlreadyExists), "{err:?}");
    let err = receiver.await.expect("join").expect_err("exists");
    assert_eq!(err.code(), Some(P2pErrorCode::AlreadyExists), "{err:?}");
}

#[tokio::test]
async fn a_session_of_one_kind_cannot_carry_another() {
    let net = net();
    let src = tempfile::tempdir().expect("src");
    let path = src.path().join("f");
    random_file(&path, 10, b"f");
    let (out, inc) = net.open(SessionKind::Folder).await;
    let receiver = tokio::spawn(async move {
        inc.receive_folder(
            Path::new("/nonexistent"),
            &ReceiveOptions::default(),
            |_| {},
        )
        .await
    });
    let err = out
        .send_file(&path, &SendOptions::default(), |_| {})
        .await
        .expect_err("a folder session");
    assert_eq!(err.code(), Some(P2pErrorCode::KindNotAccepted), "{err:?}");
    let err = receiver.await.expect("join").expect_err("no folder came");
    assert_eq!(err.code(), Some(P2pErrorCode::KindNotAccepted), "{err:?}");
}

/// Collects terminal output until `needle` shows up (or the share ends).
async fn read_until(
    viewer: &mut mesh_core::p2p::TerminalViewer,
    out: &mut String,
    needle: &str,
) -> Vec<TerminalEvent> {
    let mut others = Vec::new();
    while !out.contains(needle) {
        match viewer.next_event().await.expect("event") {
            Some(TerminalEvent::Output(b)) => out.push_str(&String::from_utf8_lossy(&b)),
            Some(e @ TerminalEvent::Exit { .. }) => {
                others.push(e);
                break;
            }
            Some(e) => others.push(e),
            None => break,
        }
    }
    others
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controlled_terminal_runs_what_the_viewer_types() {
    let net = net();
    let (out, inc) = net.open(SessionKind::Terminal).await;
    let sharer = tokio::spawn(out.share_terminal(
        TerminalCommand::new("/bin/sh").env("PS1", "$ "),
        TerminalPolicy::allow_control(),
    ));
    let mut viewer = inc.view_terminal().await.expect("viewer");
    viewer.resize(100, 30).await.expect("resize");
    // The echo of the typed line shows `$((40+2))`; only the shell's
    // output shows 42.
    viewer
        .send_input(&b"echo mesh-$((40+2))\nexit 3\n"[..])
        .await
        .expect("input");
    let mut output = String::new();
    let others = read_until(&mut viewer, &mut output, "mesh-42").await;
    assert!(output.contains("mesh-42"), "{output:?}");
    assert!(others.is_empty(), "{others:?}");
    let mut exit = None;
    while let Some(e) = viewer.next_event().await.expect("event") {
        if let TerminalEvent::Exit { code } = e {
            exit = Some(code);
        }
    }
    assert_eq!(exit, Some(Some(3)));
    drop(viewer);
    assert_eq!(sharer.await.expect("join").expect("share"), Some(3));
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_terminal_refuses_input() {
    let net = net();
    let (out, inc) = net.open(SessionKind::Terminal).await;
    let sharer = tokio::spawn(
        out.share_terminal(
            TerminalCommand::new("sh")
                .arg("-c")
                .arg("echo mesh-terminal-ok; read line; echo got-$line"),
            TerminalPolicy::read_only(),
        ),
    );
    let mut viewer = inc.view_terminal().await.expect("viewer");
    let mut output = String::new();
    read_until(&mut viewer, &mut output, "mesh-terminal-ok").await;
    assert!(output.contains("mesh-terminal-ok"), "{output:?}");

    viewer.send_input(&b"pwned\n"[..]).await.expect("input");
    viewer.resize(10, 10).await.expect("resize");
    let mut refusals = 0;
    while refusals < 2 {
        match viewer.next_event().await.expect("event") {
            Some(TerminalEvent::Refused { code, .. }) => {
                assert_eq!(code, P2pErrorCode::ReadOnly);
                refusals += 1;
            }
            Some(TerminalEvent::Output(b)) => output.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        !output.contains("pwned") && !output.contains("got-"),
        "{output:?}"
    );
    // The viewer leaves: the sharer stops the program and returns.
    viewer.close();
    assert_eq!(sharer.await.expect("join").expect("share"), None);
}

#[tokio::test]
async fn identities_kept_in_a_folder_pin_across_restarts() {
    let dir = tempfile::tempdir().expect("dir");
    let first = AgentIdentity::load_or_generate(dir.path()).expect("first");
    let fp = first.fingerprint().to_owned();
    let net = net_with(AgentIdentity::load_or_generate(dir.path()).expect("again"));
    assert_eq!(net.initiator.fingerprint(), fp);
    let info = net.target.p2p_info(vec![]);
    assert_eq!(
        info.cert_fingerprint.as_deref(),
        Some(net.target.fingerprint())
    );
    assert_eq!(
        info.addrs,
        vec![net.target.local_addr().expect("addr").to_string()]
    );
    let (s, t) = net.announce(SessionKind::File);
    let (out, inc) = tokio::join!(
        net.initiator.connect_to(&info, s.id, &t),
        net.target.accept()
    );
    assert!(out.is_ok() && inc.expect("open").is_ok());
}

#[tokio::test]
async fn an_endpoint_announces_addresses_peers_can_use() {
    let bind = |addr: &str| {
        P2pEndpoint::builder(AgentIdentity::generate().expect("identity"))
            .bind(addr.parse().expect("addr"))
            .expect("bind")
    };
    let specific = bind("127.0.0.1:0");
    let bound = specific.local_addr().expect("addr");
    assert_eq!(specific.reachable_addrs(), vec![bound.to_string()]);

    // A wildcard address is no use to a peer: loopback first, then the
    // machine's outgoing address when it has a route.
    let wildcard = bind("0.0.0.0:0");
    let port = wildcard.local_addr().expect("addr").port();
    let addrs = wildcard.reachable_addrs();
    assert_eq!(addrs[0], format!("127.0.0.1:{port}"));
    assert!(addrs.len() <= 2, "{addrs:?}");
    for a in &addrs {
        let a: std::net::SocketAddr = a.parse().expect("host:port");
        assert!(!a.ip().is_unspecified() && a.port() == port, "{a}");
    }
    assert_eq!(wildcard.p2p_info(Vec::new()).addrs, addrs);
    assert_eq!(
        wildcard.p2p_info(vec!["example.com:4433".into()]).addrs,
        vec!["example.com:4433".to_owned()]
    );
}
