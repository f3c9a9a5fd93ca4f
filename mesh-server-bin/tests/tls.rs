//! HTTPS on mesh-server: the SDK over `https://` and `wss://` with a
//! private CA, a certificate from another CA refused with a clear error,
//! certificates reloaded under live connections, and hostile TLS input
//! (plain HTTP to the TLS port, a handshake that never finishes).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::WAIT;
use common::process::start_binary;
use common::tls::TestCa;
use mesh_core::client::{Client, ClientError, Event, EventStream, HttpApi, TlsConfig};
use mesh_core::protocol::RoomId;
use mesh_core::protocol::http::{CreateRoomRequest, RegisterRequest};
use mesh_server_bin::tls::{CertStore, ServerTls, files};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A server on 127.0.0.1:0 serving HTTPS from PEM files in its folder,
/// checked for changes every `reload_every`.
struct TlsServer {
    server: common::TestServer,
    certs: Arc<CertStore>,
    dir: tempfile::TempDir,
    url: String,
}

impl TlsServer {
    async fn start(ca: &TestCa, header_timeout: Option<Duration>) -> Self {
        Self::start_for(ca, &["localhost", "127.0.0.1"], header_timeout).await
    }

    async fn start_for(ca: &TestCa, names: &[&str], header_timeout: Option<Duration>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let leaf = ca.leaf(names);
        std::fs::write(dir.path().join("cert.pem"), &leaf.cert_pem).expect("cert");
        std::fs::write(dir.path().join("key.pem"), &leaf.key_pem).expect("key");
        let certs = CertStore::new();
        let mut files = files::Config::new(dir.path().join("cert.pem"), dir.path().join("key.pem"));
        files.reload_every = Duration::from_millis(50);
        tokio::spawn(files::watch(files, certs.clone()).expect("certificate loads"));
        let mut config = mesh_server_bin::Config::new(dir.path().join("data"));
        config.tls = Some(ServerTls::new(certs.clone()).expect("tls"));
        if let Some(t) = header_timeout {
            config.conn.header_timeout = t;
        }
        let server = common::TestServer::start_with(config, None).await;
        let url = format!("https://localhost:{}", server.addr.port());
        Self {
            server,
            certs,
            dir,
            url,
        }
    }
}

fn trusting(ca: &TestCa) -> TlsConfig {
    TlsConfig::with_ca_pem(ca.pem().as_bytes()).expect("CA loads")
}

async fn register(url: &str, tls: &TlsConfig, name: &str) -> String {
    HttpApi::with_tls(url, tls.clone())
        .expect("api")
        .register(&RegisterRequest {
            username: name.into(),
            password: "correct horse battery".into(),
            ..RegisterRequest::default()
        })
        .await
        .expect("register over https")
        .token
}

/// `GET /health` over HTTPS, trusting what `tls` trusts.
async fn health(url: &str, tls: TlsConfig) -> Result<(), ClientError> {
    HttpApi::with_tls(url, tls).expect("api").health().await
}

/// A room "general" made by `token`'s user.
async fn create_room(url: &str, tls: &TlsConfig, token: &str) -> RoomId {
    HttpApi::with_tls(url, tls.clone())
        .expect("api")
        .with_token(token)
        .create_room(&CreateRoomRequest {
            name: "general".into(),
            ..CreateRoomRequest::default()
        })
        .await
        .expect("room")
        .id
}

async fn join(url: &str, tls: &TlsConfig, token: &str, room: RoomId) {
    HttpApi::with_tls(url, tls.clone())
        .expect("api")
        .with_token(token)
        .join_room(room)
        .await
        .expect("join");
}

async fn connect(url: &str, tls: &TlsConfig, token: &str) -> (Client, EventStream) {
    let client = Client::builder()
        .server(url)
        .token(token)
        .tls(tls.clone())
        .connect()
        .await
        .expect("connect over wss");
    let events = client.events().expect("events");
    (client, events)
}

async fn next_message(events: &mut EventStream) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.next().await.expect("events open") {
                Event::Message(m) => return m.content,
                _ => continue,
            }
        }
    })
    .await
    .expect("a message in time")
}

#[tokio::test]
async fn the_sdk_chats_over_https_and_wss_with_a_private_ca() {
    let ca = TestCa::new("mesh test CA");
    let s = TlsServer::start(&ca, None).await;
    let tls = trusting(&ca);
    let alice = register(&s.url, &tls, "alice").await;
    let bob = register(&s.url, &tls, "bob").await;
    let room = create_room(&s.url, &tls, &alice).await;
    join(&s.url, &tls, &bob, room).await;
    let (a, _a_events) = connect(&s.url, &tls, &alice).await;
    let (_b, mut b_events) = connect(&s.url, &tls, &bob).await;
    a.send_message(room, "hello over wss").await.expect("sent");
    assert_eq!(next_message(&mut b_events).await, "hello over wss");
    s.server.stop().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_with_a_clear_error() {
    let ca = TestCa::new("mesh test CA");
    let s = TlsServer::start(&ca, None).await;
    let other = trusting(&TestCa::new("some other CA"));
    let err = health(&s.url, other.clone()).await.expect_err("refused");
    assert!(matches!(err, ClientError::Tls(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("not signed by a CA this client trusts"),
        "{err}"
    );
    // The WebSocket says the same.
    let token = register(&s.url, &trusting(&ca), "carol").await;
    let err = Client::builder()
        .server(&s.url)
        .token(token)
        .tls(other)
        .connect()
        .await
        .expect_err("refused");
    assert_eq!(err.code_str(), "tls", "{err}");
    s.server.stop().await;

    // The name is checked too: this certificate is for localhost only.
    let s = TlsServer::start_for(&ca, &["localhost"], None).await;
    let by_address = format!("https://127.0.0.1:{}", s.server.addr.port());
    let err = health(&by_address, trusting(&ca))
        .await
        .expect_err("wrong name");
    assert!(err.to_string().contains("another name"), "{err}");
    s.server.stop().await;
}

#[tokio::test]
async fn replaced_certificate_files_are_served_to_new_connections_while_old_ones_go_on() {
    let ca = TestCa::new("first CA");
    let s = TlsServer::start(&ca, None).await;
    let tls = trusting(&ca);
    let alice = register(&s.url, &tls, "alice").await;
    let room = create_room(&s.url, &tls, &alice).await;
    let (a, mut a_events) = connect(&s.url, &tls, &alice).await;

    // New files from a new CA, written as an operator's renewal would:
    // beside the old ones, then renamed over them.
    let mut changed = s.certs.subscribe();
    let second = TestCa::new("second CA");
    let leaf = second.leaf(&["localhost"]);
    let dir = s.dir.path();
    std::fs::write(dir.join("key.pem.new"), &leaf.key_pem).expect("key");
    std::fs::write(dir.join("cert.pem.new"), &leaf.cert_pem).expect("cert");
    std::fs::rename(dir.join("key.pem.new"), dir.join("key.pem")).expect("mv key");
    std::fs::rename(dir.join("cert.pem.new"), dir.join("cert.pem")).expect("mv cert");
    // The watcher may catch the key before the certificate (a mismatched
    // pair is refused and the old one kept): wait until the new one serves.
    tokio::time::timeout(WAIT, async {
        loop {
            changed.changed().await.expect("store alive");
            let ok = health(&s.url, trusting(&second)).await.is_ok();
            if ok {
                break;
            }
        }
    })
    .await
    .expect("the new certificate is served");

    // New connections: the old CA no longer fits, the new one does. (A
    // fresh client: one that connected before may resume its TLS session.)
    let err = health(&s.url, trusting(&ca))
        .await
        .expect_err("old CA no longer fits");
    assert_eq!(err.code_str(), "tls");
    let bob = register(&s.url, &trusting(&second), "bob").await;
    join(&s.url, &trusting(&second), &bob, room).await;
    let (b, mut b_events) = connect(&s.url, &trusting(&second), &bob).await;

    // The connection opened before the reload still works, both ways.
    a.send_message(room, "from the old connection")
        .await
        .expect("old connection sends");
    assert_eq!(next_message(&mut b_events).await, "from the old connection");
    b.send_message(room, "to the old connection")
        .await
        .expect("sent");
    loop {
        if next_message(&mut a_events).await == "to the old connection" {
            break;
        }
    }
    s.server.stop().await;
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_told_to_use_https() {
    let ca = TestCa::new("mesh test CA");
    let s = TlsServer::start(&ca, None).await;
    let mut raw = TcpStream::connect(s.server.addr).await.expect("connect");
    raw.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(WAIT, raw.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("use an https:// URL"), "{answer}");
    // The same through the SDK, as a user who typed http:// would see it.
    let http_url = format!("http://localhost:{}", s.server.addr.port());
    let err = HttpApi::new(&http_url)
        .expect("api")
        .health()
        .await
        .expect_err("400");
    assert!(err.to_string().contains("https://"), "{err}");
    assert!(health(&s.url, trusting(&ca)).await.is_ok(), "still serving");
    s.server.stop().await;
}

#[tokio::test]
async fn handshakes_that_never_finish_are_cut_off_and_the_server_keeps_serving() {
    let ca = TestCa::new("mesh test CA");
    let s = TlsServer::start(&ca, Some(Duration::from_millis(300))).await;
    // Silent, and a handshake that starts (one record byte) then stalls.
    let mut silent = TcpStream::connect(s.server.addr).await.expect("connect");
    let mut stalled = TcpStream::connect(s.server.addr).await.expect("connect");
    stalled.write_all(&[0x16, 0x03, 0x01]).await.expect("write");
    for (what, conn) in [("silent", &mut silent), ("stalled", &mut stalled)] {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, conn.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{what}: closed in time"));
        assert!(
            matches!(n, Ok(0) | Err(_)),
            "{what}: closed without an answer: {n:?}"
        );
    }
    // Garbage that looks like a handshake record gets an alert or a close.
    let mut garbage = TcpStream::connect(s.server.addr).await.expect("connect");
    garbage
        .write_all(&[0x16, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5])
        .await
        .expect("write");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, garbage.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    assert!(health(&s.url, trusting(&ca)).await.is_ok(), "still serving");
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_certificate_of_the_real_binary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = TestCa::new("first CA");
    let leaf = first.leaf(&["localhost"]);
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &leaf.cert_pem).expect("cert");
    std::fs::write(&key, &leaf.key_pem).expect("key");
    let flags = [
        "--tls-cert",
        cert.to_str().expect("utf-8"),
        "--tls-key",
        key.to_str().expect("utf-8"),
        // Only the signal reloads in this test.
        "--tls-reload-secs",
        "3600",
    ];
    let server = start_binary(&dir.path().join("data"), &flags).expect("starts");
    let url = format!("https://localhost:{}", server.addr.port());
    health(&url, trusting(&first))
        .await
        .expect("first certificate served");

    // A broken pair first: refused, the old certificate stays.
    std::fs::write(&cert, "not a certificate").expect("cert");
    let pid = server.child.id().to_string();
    let hup = || {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "SIGHUP sent");
    };
    hup();
    let kept = server.wait_for_log("still serving the previous one", WAIT);
    assert!(kept.is_some(), "{}", server.stop());
    health(&url, trusting(&first))
        .await
        .expect("still the first certificate");

    let second = TestCa::new("second CA");
    let leaf = second.leaf(&["localhost"]);
    std::fs::write(&key, &leaf.key_pem).expect("key");
    std::fs::write(&cert, &leaf.cert_pem).expect("cert");
    hup();
    let reloaded = server.wait_for_log("why=\"SIGHUP\"", WAIT);
    assert!(reloaded.is_some(), "{}", server.stop());
    health(&url, trusting(&second))
        .await
        .expect("the second certificate served");
    server.stop();
}
