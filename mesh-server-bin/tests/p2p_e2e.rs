//! P2P sessions end to end: the real server issues every session token and
//! announces every agent's certificate fingerprint; the agents are real
//! `P2pEndpoint`s on loopback QUIC that verify tokens offline with the
//! server's published JWK Set. Each refusal is asserted on both sides and
//! before any data moves (nothing lands in the inbox).
//!
//! Tests wait for events, never sleep; time-outs only guard against hangs.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use common::TestServer;
use common::agent::{Agent, Tweaks, attempt, guard};
use mesh_core::auth::TokenVerifier;
use mesh_core::client::P2pSessionGrant;
use mesh_core::p2p::frame::{
    EntryKind, FolderManifest, Frame, ManifestEntry, PROTOCOL_VERSION, SessionHello, read_frame,
    write_frame,
};
use mesh_core::p2p::{
    AgentIdentity, IncomingSession, OutgoingSession, P2pEndpoint, P2pError, P2pErrorCode,
    ReceiveOptions, SendOptions, tls,
};
use mesh_core::protocol::http::CreateRoomRequest;
use mesh_core::protocol::{P2pInfo, RoomId, SessionKind};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A server, one public room, and agents in it.
struct Mesh {
    server: TestServer,
    room: Option<RoomId>,
}

impl Mesh {
    async fn start() -> Self {
        Self {
            server: TestServer::start().await,
            room: None,
        }
    }

    fn room(&self) -> RoomId {
        self.room.expect("an agent created the room")
    }

    /// Starts an agent; the first one creates the room, the others join.
    async fn agent(&mut self, name: &str, tweaks: Tweaks) -> Agent {
        let agent = Agent::start(&self.server, name, tweaks).await;
        if let Some(room) = self.room {
            guard("join", agent.client.join_room(room))
                .await
                .expect("join the room");
        } else {
            let room = guard(
                "create room",
                agent.client.create_room(&CreateRoomRequest {
                    name: "p2p".into(),
                    ..CreateRoomRequest::default()
                }),
            )
            .await
            .expect("create room");
            self.room = Some(room.id);
        }
        agent
    }

    /// `POST /api/p2p/session` from `from` to `to`; waits until both agents
    /// have heard `p2p.session.created`, and has the target expect it.
    async fn session(
        &self,
        from: &mut Agent,
        to: &mut Agent,
        kind: SessionKind,
    ) -> (P2pSessionGrant, String) {
        let resp = guard(
            "POST /api/p2p/session",
            from.client.create_p2p_session(self.room(), to.me, kind),
        )
        .await
        .expect("the server grants the session");
        assert_eq!(resp.session.initiator_peer_id, from.me);
        assert_eq!(resp.session.target_peer_id, to.me);
        let heard_by_target = to.grant(resp.session.id).await;
        let heard_by_initiator = from.grant(resp.session.id).await;
        assert_eq!(heard_by_target.session_token, resp.session_token);
        assert_eq!(heard_by_target.initiator, from.info);
        assert_eq!(heard_by_initiator.target, to.info);
        to.expect(&heard_by_target);
        (heard_by_initiator, resp.session_token)
    }
}

/// Asserts the initiator was told `code` and the target refused with it.
fn assert_refused(
    out: Result<OutgoingSession, P2pError>,
    inc: Result<IncomingSession, P2pError>,
    code: P2pErrorCode,
) {
    let err = out.expect_err("the initiator must be refused");
    assert!(
        matches!(&err, P2pError::Remote { code: c, .. } if *c == code),
        "initiator: {err:?}"
    );
    let err = inc.expect_err("the target must refuse");
    assert!(
        matches!(&err, P2pError::Refused { code: c, .. } if *c == code),
        "target: {err:?}"
    );
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Some bytes that are not all alike.
fn content(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_arrives_byte_identical_over_a_server_granted_session() {
    let mut mesh = Mesh::start().await;
    let mut alice = mesh.agent("alice", Tweaks::default()).await;
    let mut bob = mesh.agent("bob", Tweaks::default()).await;
    let (grant, token) = mesh.session(&mut alice, &mut bob, SessionKind::File).await;

    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    let bytes = content(300_000);
    let path = src.path().join("hello.bin");
    std::fs::write(&path, &bytes).expect("write");

    let (out, inc) = attempt(
        &alice.endpoint,
        &grant.target,
        grant.session.id,
        &token,
        &bob,
    )
    .await;
    let inc = inc.expect("bob accepts");
    assert_eq!(inc.session_id(), grant.session.id);
    assert_eq!(inc.peer_fingerprint(), alice.endpoint.fingerprint());
    assert_eq!(inc.claims().initiator_peer_id, alice.me);
    assert_eq!(inc.claims().target_peer_id, bob.me);
    let dest = dst.path().to_owned();
    let receiver = tokio::spawn(async move {
        inc.receive_file(&dest, &ReceiveOptions::default(), |_| {})
            .await
    });
    let sent = guard(
        "send",
        out.expect("alice connects")
            .send_file(&path, &SendOptions::default(), |_| {}),
    )
    .await
    .expect("sent");
    let got = guard("receive", receiver)
        .await
        .expect("join")
        .expect("received");
    assert_eq!(sent.blake3, got.blake3);
    assert_eq!(got.size, bytes.len() as u64);
    assert_eq!(
        std::fs::read(dst.path().join("hello.bin")).expect("read"),
        bytes
    );
    assert_eq!(names_in(dst.path()), vec!["hello.bin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_past_its_expiry_is_refused() {
    let mut mesh = Mesh::start().await;
    let mut alice = mesh.agent("alice", Tweaks::default()).await;
    // Bob's clock runs 181 s ahead: the server's 180 s token has expired.
    let mut bob = mesh
        .agent(
            "bob",
            Tweaks {
                clock_ahead_ms: 181_000,
                ..Tweaks::default()
            },
        )
        .await;
    let (grant, token) = mesh.session(&mut alice, &mut bob, SessionKind::File).await;
    let (out, inc) = attempt(
        &alice.endpoint,
        &grant.target,
        grant.session.id,
        &token,
        &bob,
    )
    .await;
    assert_refused(out, inc, P2pErrorCode::TokenExpired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_session_is_refused() {
    let mut mesh = Mesh::start().await;
    let mut alice = mesh.agent("alice", Tweaks::default()).await;
    let mut bob = mesh.agent("bob", Tweaks::default()).await;
    let (a, a_token) = mesh.session(&mut alice, &mut bob, SessionKind::File).await;
    let (b, _) = mesh.session(&mut alice, &mut bob, SessionKind::File).await;
    assert_ne!(a.session.id, b.session.id);
    // The hello names session B but carries session A's token.
    let (out, inc) = attempt(&alice.endpoint, &b.target, b.session.id, &a_token, &bob).await;
    assert_refused(out, inc, P2pErrorCode::WrongSession);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_peer_is_refused() {
    let mut mesh = Mesh::start().await;
    let mut alice = mesh.agent("alice", Tweaks::default()).await;
    let mut bob = mesh.agent("bob", Tweaks::default()).await;
    let carol = mesh.agent("carol", Tweaks::default()).await;
    let (grant, bob_token) = mesh.session(&mut alice, &mut bob, SessionKind::File).await;
    // Carol's agent as the server lists it in the room.
    let peers = guard("peers", alice.client.http().peers(mesh.room()))
        .await
        .expect("peers");
    let carol_info = peers
        .iter()
        .find(|p| p.peer_id == carol.me)
        .and_then(|p| p.p2p.clone())
        .expect("carol announced her agent");
    assert_eq!(carol_info, carol.info);
    let (out, inc) = attempt(
        &alice.endpoint,
        &carol_info,
        grant.session.id,
        &bob_token,
        &carol,
    )
    .await;
    assert_refused(out, inc, P2pErrorCode::WrongPeer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initiator_with_another_certificate_than_announced_is_refused() {
    let mut mesh = Mesh::start().await;
    let mut alice = mesh.agent("alice", Tweaks::default()).await;
    let mut bob = mesh.agent("bob", Tweaks::default()).await;
    let (grant, token) = mesh.session(&mut alice, &mut bob, SessionKind::File).await;
    // Someone with alice's token but not her certificate.
    let impostor = P2pEndpoint::builder(AgentIdentity::generate().expect("identity"))
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    assert_ne!(impostor.fingerprint(), alice.endpoint.fingerprint());
    let (out, inc) = attempt(&impostor, &grant.target, grant.session.id, &token, &bob).await;
    assert_refused(out, inc, P2pErrorCode::WrongCertificate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_with_another_certificate_than_announced_is_refused_by_the_initiator() {
    let mut mesh = Mesh::start().await;
    let mut alice = mesh.agent("alice", Tweaks::default()).await;
    let mut bob = mesh.agent("bob", Tweaks::default()).await;
    let (grant, token) = mesh.session(&mut alice, &mut bob, SessionKind::File).await;
    // Something else answers at an address: it has not bob's certificate.
    let jwks = guard("keys", alice.client.http().keys())
        .await
        .expect("keys");
    let impostor = P2pEndpoint::builder(AgentIdentity::generate().expect("identity"))
        .accept_sessions(TokenVerifier::from_jwks(&jwks).expect("jwks"))
        .peer_id(bob.me)
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let redirected = P2pInfo {
        cert_fingerprint: grant.target.cert_fingerprint.clone(),
        addrs: vec![impostor.local_addr().expect("addr").to_string()],
    };
    let (out, inc) = guard("connect and accept", async {
        tokio::join!(
            alice
                .endpoint
                .connect_to(&redirected, grant.session.id, &token),
            impostor.accept(),
        )
    })
    .await;
    match out.expect_err("pinning") {
        P2pError::FingerprintMismatch { expected, got } => {
            assert_eq!(Some(&expected), bob.info.cert_fingerprint.as_ref());
            assert_eq!(got, impostor.fingerprint());
        }
        other => panic!("{other:?}"),
    }
    // The impostor saw a failed TLS handshake, never the hello (nor the token).
    let err = inc.expect("open").expect_err("no session");
    assert!(matches!(err, P2pError::Connection(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_chunk_is_caught_and_no_file_appears() {
    let mut mesh = Mesh::start().await;
    let mut alice = mesh.agent("alice", Tweaks::default()).await;
    let mut bob = mesh.agent("bob", Tweaks::default()).await;
    let (grant, token) = mesh.session(&mut alice, &mut bob, SessionKind::File).await;
    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    let path = src.path().join("t.bin");
    std::fs::write(&path, content(600_000)).expect("write");

    let (out, inc) = attempt(
        &alice.endpoint,
        &grant.target,
        grant.session.id,
        &token,
        &bob,
    )
    .await;
    let inc = inc.expect("bob accepts");
    let dest = dst.path().to_owned();
    let receiver = tokio::spawn(async move {
        inc.receive_file(&dest, &ReceiveOptions::default(), |_| {})
            .await
    });
    let err = guard(
        "send",
        out.expect("alice connects").send_file(
            &path,
            &SendOptions::default().flip_byte_for_tests(300_000),
            |_| {},
        ),
    )
    .await
    .expect_err("tampered");
    assert!(
        matches!(
            &err,
            P2pError::Remote {
                code: P2pErrorCode::HashMismatch,
                ..
            }
        ),
        "sender: {err:?}"
    );
    let err = guard("receive", receiver)
        .await
        .expect("join")
        .expect_err("tampered");
    assert!(
        matches!(
            &err,
            P2pError::Refused {
                code: P2pErrorCode::HashMismatch,
                ..
            }
        ),
        "receiver: {err:?}"
    );
    // Neither the file nor its part file is left.
    assert!(
        names_in(dst.path()).is_empty(),
        "{:?}",
        names_in(dst.path())
    );
}

/// A raw QUIC client presenting `cert`/`key` and pinning `target`'s
/// fingerprint: speaks the P2P frames itself, so it can send what a
/// well-behaved `OutgoingSession` never would.
async fn raw_connect(
    cert: &CertificateDer<'static>,
    key: &PrivateKeyDer<'static>,
    target: &P2pInfo,
) -> (quinn::Endpoint, quinn::Connection) {
    let provider = tls::provider();
    let fingerprint = target.cert_fingerprint.as_deref().expect("fingerprint");
    let verifier = Arc::new(tls::PinnedServerVerifier::new(
        fingerprint,
        provider.clone(),
    ));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![cert.clone()], key.clone_key())
        .expect("client certificate");
    config.alpn_protocols = vec![tls::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config).expect("QUIC TLS");
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
    let addr: SocketAddr = target.addrs[0].parse().expect("announced address");
    let conn = guard(
        "QUIC handshake",
        endpoint
            .connect_with(
                quinn::ClientConfig::new(Arc::new(crypto)),
                addr,
                "mesh-peer",
            )
            .expect("connect"),
    )
    .await
    .expect("handshake");
    (endpoint, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malicious_folder_manifest_is_refused_before_anything_is_written() {
    let mut mesh = Mesh::start().await;
    // Alice's identity is kept in a folder, so the raw client can present
    // the very certificate (and key) her agent announced.
    let keys = tempfile::tempdir().expect("keys");
    let identity = AgentIdentity::load_or_generate(keys.path()).expect("identity");
    let cert = CertificateDer::from_pem_file(keys.path().join("p2p-cert.pem")).expect("cert");
    let key = PrivateKeyDer::from_pem_file(keys.path().join("p2p-key.pem")).expect("key");
    let mut alice = mesh
        .agent(
            "alice",
            Tweaks {
                identity: Some(identity),
                ..Tweaks::default()
            },
        )
        .await;
    let mut bob = mesh.agent("bob", Tweaks::default()).await;

    let scratch = tempfile::tempdir().expect("scratch");
    let inbox = scratch.path().join("inbox");
    std::fs::create_dir(&inbox).expect("inbox");
    let absolute = scratch.path().join("evil-abs");
    let manifests = [
        ("a `..` entry", "innocent".to_owned(), "../evil".to_owned()),
        (
            "an absolute entry",
            "innocent".to_owned(),
            absolute.to_string_lossy().into_owned(),
        ),
        ("a `..` folder name", "..".to_owned(), "evil".to_owned()),
    ];
    for (what, name, path) in manifests {
        let (grant, token) = mesh
            .session(&mut alice, &mut bob, SessionKind::Folder)
            .await;
        let (_client, conn) = raw_connect(&cert, &key, &grant.target).await;
        let receiving = async {
            let inc = bob.accept().await.expect("bob accepts the session");
            assert_eq!(inc.peer_fingerprint(), alice.endpoint.fingerprint());
            inc.receive_folder(&inbox, &ReceiveOptions::default(), |_| {})
                .await
        };
        let sending = async {
            let (mut w, mut r) = conn.open_bi().await.expect("stream");
            write_frame(
                &mut w,
                &Frame::Hello(SessionHello {
                    version: PROTOCOL_VERSION,
                    session_id: grant.session.id,
                    session_token: token.clone(),
                }),
            )
            .await
            .expect("hello");
            match read_frame(&mut r).await.expect("welcome") {
                Some(Frame::Welcome(w)) => {
                    assert_eq!(w.session_id, grant.session.id);
                    assert_eq!(w.kind, SessionKind::Folder);
                }
                other => panic!("{what}: {other:?}"),
            }
            write_frame(
                &mut w,
                &Frame::FolderManifest(FolderManifest {
                    name: name.clone(),
                    entries: vec![ManifestEntry {
                        path: path.clone(),
                        kind: EntryKind::Dir,
                        size: 0,
                        blake3: None,
                    }],
                }),
            )
            .await
            .expect("manifest");
            let answer = read_frame(&mut r).await.expect("an answer");
            // We got the last word: close so the target need not wait.
            conn.close(0u32.into(), b"done");
            answer
        };
        let (received, answer) = guard(what, async { tokio::join!(receiving, sending) }).await;
        match answer {
            Some(Frame::Error(e)) => assert_eq!(e.code, P2pErrorCode::BadPath, "{what}: {e:?}"),
            other => panic!("{what}: {other:?}"),
        }
        let err = received.expect_err(what);
        assert!(
            matches!(
                &err,
                P2pError::Refused {
                    code: P2pErrorCode::BadPath,
                    ..
                }
            ),
            "{what}: {err:?}"
        );
        // Nothing was created, inside the inbox or beside it.
        assert!(
            names_in(&inbox).is_empty(),
            "{what}: {:?}",
            names_in(&inbox)
        );
        assert_eq!(names_in(scratch.path()), vec!["inbox"], "{what}");
    }
}
