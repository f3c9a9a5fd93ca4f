//! ICE servers for calls, and the TURN server run as `docs/coturn/turnserver.conf`
//! ships it (Debian's coturn, `turnserver`, on free ports in a temporary
//! folder, killed at the end).
//!
//! - `GET /api/rtc/ice-servers` hands out STUN URLs and TURN credentials
//!   minted from the secret file mesh-server creates (0600).
//! - Those credentials allocate a relay on coturn; the relay cannot reach
//!   loopback (the mesh server's own port), private, link-local or CGNAT
//!   peers (403), nor open TCP relays; a public peer is allowed (control).
//! - Expired or forged credentials are refused (401).
//! - Garbage on the UDP, TCP and TLS ports does not stop it.
//!
//! The test speaks STUN/TURN (RFC 5389/5766) itself: a few dozen lines,
//! and every answer is checked exactly. Without `turnserver` the coturn
//! tests are skipped, except under `CI=true`, where they fail.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::process::{ServerProcess, start_binary};
use hmac::{Hmac, Mac};
use md5::Digest as _;
use mesh_core::auth::turn::mint;
use mesh_core::client::HttpApi;
use mesh_core::protocol::http::IceServersResponse;
use sha1::Sha1;

const WAIT: Duration = Duration::from_secs(10);

// ----- a minimal STUN/TURN client -----

const MAGIC: u32 = 0x2112_A442;
const ALLOCATE: u16 = 0x0003;
const CREATE_PERMISSION: u16 = 0x0008;
const CHANNEL_BIND: u16 = 0x0009;
const BINDING: u16 = 0x0001;
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_INTEGRITY: u16 = 0x0008;
const ATTR_ERROR_CODE: u16 = 0x0009;
const ATTR_CHANNEL_NUMBER: u16 = 0x000C;
const ATTR_XOR_PEER: u16 = 0x0012;
const ATTR_REALM: u16 = 0x0014;
const ATTR_NONCE: u16 = 0x0015;
const ATTR_XOR_RELAYED: u16 = 0x0016;
const ATTR_TRANSPORT: u16 = 0x0019;

/// A decoded STUN answer.
#[derive(Debug)]
struct Answer {
    /// 0b10 success, 0b11 error (the class bits).
    class: u8,
    method: u16,
    attrs: Vec<(u16, Vec<u8>)>,
}

impl Answer {
    fn attr(&self, t: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|(k, _)| *k == t)
            .map(|(_, v)| v.as_slice())
    }
    fn is_success(&self) -> bool {
        self.class == 0b10
    }
    fn error_code(&self) -> Option<u16> {
        let v = self.attr(ATTR_ERROR_CODE)?;
        (v.len() >= 4).then(|| u16::from(v[2] & 0x07) * 100 + u16::from(v[3]))
    }
    fn text(&self, t: u16) -> Option<String> {
        self.attr(t)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

fn xor_addr(addr: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(a) = addr else {
        panic!("IPv4 only here")
    };
    let mut v = vec![0, 0x01];
    v.extend_from_slice(&(a.port() ^ (MAGIC >> 16) as u16).to_be_bytes());
    v.extend_from_slice(&(u32::from(*a.ip()) ^ MAGIC).to_be_bytes());
    v
}

fn parse_xor_addr(v: &[u8]) -> Option<SocketAddr> {
    if v.len() < 8 || v[1] != 0x01 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC >> 16) as u16;
    let ip = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ MAGIC;
    Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
}

/// Long-term credentials as RFC 5389 §15.4 keys them.
struct Auth {
    username: String,
    realm: String,
    nonce: String,
    key: [u8; 16],
}

impl Auth {
    fn new(username: &str, password: &str, realm: &str, nonce: &str) -> Self {
        let key = md5::Md5::digest(format!("{username}:{realm}:{password}").as_bytes());
        Self {
            username: username.to_owned(),
            realm: realm.to_owned(),
            nonce: nonce.to_owned(),
            key: key.into(),
        }
    }
}

fn encode(method: u16, attrs: &[(u16, Vec<u8>)], auth: Option<&Auth>) -> Vec<u8> {
    let mut tid = [0u8; 12];
    getrandom::fill(&mut tid).expect("randomness");
    let mut msg = Vec::new();
    msg.extend_from_slice(&method.to_be_bytes());
    msg.extend_from_slice(&[0, 0]);
    msg.extend_from_slice(&MAGIC.to_be_bytes());
    msg.extend_from_slice(&tid);
    let push = |msg: &mut Vec<u8>, t: u16, v: &[u8]| {
        msg.extend_from_slice(&t.to_be_bytes());
        msg.extend_from_slice(&(v.len() as u16).to_be_bytes());
        msg.extend_from_slice(v);
        while !msg.len().is_multiple_of(4) {
            msg.push(0);
        }
    };
    for (t, v) in attrs {
        push(&mut msg, *t, v);
    }
    if let Some(a) = auth {
        push(&mut msg, ATTR_USERNAME, a.username.as_bytes());
        push(&mut msg, ATTR_REALM, a.realm.as_bytes());
        push(&mut msg, ATTR_NONCE, a.nonce.as_bytes());
        // The length covers MESSAGE-INTEGRITY itself (24 bytes) while the
        // HMAC is computed over everything before it.
        let len = (msg.len() - 20 + 24) as u16;
        msg[2..4].copy_from_slice(&len.to_be_bytes());
        let mut mac = Hmac::<Sha1>::new_from_slice(&a.key).expect("hmac key");
        mac.update(&msg);
        let tag = mac.finalize().into_bytes();
        push(&mut msg, ATTR_INTEGRITY, &tag);
    }
    let len = (msg.len() - 20) as u16;
    msg[2..4].copy_from_slice(&len.to_be_bytes());
    msg
}

fn decode(buf: &[u8]) -> Answer {
    assert!(buf.len() >= 20, "short STUN answer: {buf:?}");
    let t = u16::from_be_bytes([buf[0], buf[1]]);
    let class = (((t >> 8) & 1) << 1 | ((t >> 4) & 1)) as u8;
    let method = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let body = &buf[20..20 + len];
    let mut attrs = Vec::new();
    let mut i = 0;
    while i + 4 <= body.len() {
        let at = u16::from_be_bytes([body[i], body[i + 1]]);
        let al = usize::from(u16::from_be_bytes([body[i + 2], body[i + 3]]));
        attrs.push((at, body[i + 4..i + 4 + al].to_vec()));
        i += 4 + al.div_ceil(4) * 4;
    }
    Answer {
        class,
        method,
        attrs,
    }
}

/// TURN over TLS: rustls (ring) on a blocking TCP stream.
type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// One TURN control connection, over UDP, TCP or TLS.
enum Turn {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<TlsStream>),
}

impl Turn {
    fn udp(server: SocketAddr) -> Self {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.connect(server).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        Turn::Udp(s)
    }

    fn tcp(server: SocketAddr) -> Self {
        let s = TcpStream::connect(server).expect("connect TCP");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        Turn::Tcp(s)
    }

    /// TURN over TLS (`turns:`), trusting only `ca_pem`, for the name `localhost`.
    fn tls(server: SocketAddr, ca_pem: &str) -> Self {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA");
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = "localhost".try_into().expect("name");
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("tls");
        let s = TcpStream::connect(server).expect("connect TLS");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        Turn::Tls(Box::new(rustls::StreamOwned::new(conn, s)))
    }

    fn request(&mut self, msg: &[u8]) -> Answer {
        /// One STUN message off a stream (TCP, TLS): header, then body.
        fn over_stream(s: &mut impl std::io::Read) -> Answer {
            let mut head = [0u8; 20];
            s.read_exact(&mut head).expect("STUN answer over a stream");
            let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let mut all = head.to_vec();
            all.resize(20 + len, 0);
            s.read_exact(&mut all[20..]).expect("STUN body");
            decode(&all)
        }
        match self {
            Turn::Udp(s) => {
                s.send(msg).expect("send");
                let mut buf = [0u8; 2048];
                let n = s.recv(&mut buf).expect("STUN answer over UDP");
                decode(&buf[..n])
            }
            Turn::Tcp(s) => {
                s.write_all(msg).expect("send");
                over_stream(s)
            }
            Turn::Tls(s) => {
                s.write_all(msg).expect("send over TLS");
                s.flush().expect("flush");
                over_stream(s.as_mut())
            }
        }
    }

    /// Allocate with the TURN REST credentials; returns the answer (success
    /// or the error after the authenticated attempt) and the keyed auth.
    fn allocate(&mut self, username: &str, password: &str, transport: u8) -> (Answer, Auth) {
        let wants = vec![(ATTR_TRANSPORT, vec![transport, 0, 0, 0])];
        let first = self.request(&encode(ALLOCATE, &wants, None));
        assert_eq!(
            first.error_code(),
            Some(401),
            "an unauthenticated Allocate gets 401: {first:?}"
        );
        let realm = first.text(ATTR_REALM).expect("REALM");
        let nonce = first.text(ATTR_NONCE).expect("NONCE");
        let auth = Auth::new(username, password, &realm, &nonce);
        let answer = self.request(&encode(ALLOCATE, &wants, Some(&auth)));
        assert_eq!(answer.method, ALLOCATE);
        (answer, auth)
    }

    fn create_permission(&mut self, auth: &Auth, peer: SocketAddr) -> Answer {
        self.request(&encode(
            CREATE_PERMISSION,
            &[(ATTR_XOR_PEER, xor_addr(peer))],
            Some(auth),
        ))
    }

    fn channel_bind(&mut self, auth: &Auth, channel: u16, peer: SocketAddr) -> Answer {
        let mut num = channel.to_be_bytes().to_vec();
        num.extend_from_slice(&[0, 0]);
        self.request(&encode(
            CHANNEL_BIND,
            &[(ATTR_CHANNEL_NUMBER, num), (ATTR_XOR_PEER, xor_addr(peer))],
            Some(auth),
        ))
    }
}

// ----- coturn as the docs ship it -----

/// coturn started from `docs/coturn/turnserver.conf`; killed on drop.
struct Coturn {
    child: Child,
    port: u16,
    tls_port: u16,
    /// The CA of its TLS certificate (for `localhost`).
    ca_pem: String,
    realm: String,
    _dir: tempfile::TempDir,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    // Free for TCP and UDP at the moment of asking; coturn binds both.
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = t.local_addr().expect("addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn template() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/coturn/turnserver.conf");
    std::fs::read_to_string(&path).expect("docs/coturn/turnserver.conf")
}

/// `None` when `turnserver` is missing and this is not CI.
fn start_coturn(secret: &str) -> Option<Coturn> {
    if Command::new("turnserver")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "turnserver (Debian's coturn) is missing; CI must run the TURN tests"
        );
        eprintln!("SKIPPED: turnserver (coturn) is not installed");
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = common::tls::TestCa::new("TURN test CA");
    let leaf = ca.leaf(&["localhost"]);
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, &leaf.cert_pem).expect("write cert");
    std::fs::write(&key_path, &leaf.key_pem).expect("write key");
    let port = free_port();
    let tls_port = free_port();
    let relay = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let min_port = relay.local_addr().expect("addr").port().min(65_000);
    drop(relay);
    let realm = "mesh.test".to_owned();
    let config = template()
        .replace("@SECRET@", secret)
        .replace("@REALM@", &realm)
        .replace("@LISTEN_IP@", "127.0.0.1")
        .replace("@RELAY_IP@", "127.0.0.1")
        .replace("@PORT@", &port.to_string())
        .replace("@TLS_PORT@", &tls_port.to_string())
        .replace("@MIN_PORT@", &min_port.to_string())
        .replace("@MAX_PORT@", &(min_port + 30).to_string())
        .replace("@CERT@", &cert_path.display().to_string())
        .replace("@PKEY@", &key_path.display().to_string())
        .replace("@STATE_DIR@", &dir.path().display().to_string());
    assert!(
        !config
            .lines()
            .any(|l| !l.starts_with('#') && l.contains('@')),
        "a placeholder is left: {config}"
    );
    let conf = dir.path().join("turnserver.conf");
    std::fs::write(&conf, config).expect("write config");
    let log = std::fs::File::create(dir.path().join("turnserver.log")).expect("log");
    let child = Command::new("turnserver")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn turnserver");
    let mut coturn = Coturn {
        child,
        port,
        tls_port,
        ca_pem: ca.pem().to_owned(),
        realm,
        _dir: dir,
    };
    wait_ready(&mut coturn);
    Some(coturn)
}

/// Waits until coturn answers a STUN Binding request (asked again every
/// 100 ms, since a datagram sent before it binds is lost).
fn wait_ready(coturn: &mut Coturn) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let deadline = std::time::Instant::now() + WAIT;
    let msg = encode(BINDING, &[], None);
    let mut buf = [0u8; 1024];
    loop {
        if let Some(status) = coturn.child.try_wait().expect("try_wait") {
            panic!("turnserver exited: {status}; log: {}", coturn.log());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "turnserver never answered; log: {}",
            coturn.log()
        );
        let _ = s.send_to(&msg, ("127.0.0.1", coturn.port));
        if let Ok(n) = s.recv(&mut buf)
            && decode(&buf[..n]).is_success()
        {
            return;
        }
    }
}

impl Coturn {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("turnserver.log")).unwrap_or_default()
    }

    fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "turnserver died; log: {}",
            self.log()
        );
    }
}

// ----- mesh-server handing out the ICE servers -----

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

async fn register(server: &ServerProcess, name: &str) -> (HttpApi, String) {
    let api = HttpApi::new(&format!("http://{}", server.addr)).expect("api");
    let auth = api
        .register(&mesh_core::protocol::http::RegisterRequest {
            username: name.into(),
            password: "correct horse battery".into(),
            ..Default::default()
        })
        .await
        .expect("register");
    (api.with_token(auth.token), auth.user.id.to_string())
}

fn secret_of(data: &Path) -> (PathBuf, String) {
    let file = data.join("turn.secret");
    let secret = std::fs::read_to_string(&file).expect("turn.secret");
    (file, secret.trim().to_owned())
}

#[tokio::test]
async fn ice_servers_endpoint_hands_out_stun_and_minted_turn_credentials() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start_binary(
        dir.path(),
        &[
            "--stun-url",
            "stun:turn.mesh.test:3478",
            "--turn-url",
            "turn:turn.mesh.test:3478?transport=udp",
            "--turn-url",
            "turns:turn.mesh.test:5349?transport=tcp",
            "--turn-ttl-secs",
            "600",
        ],
    )
    .expect("server starts");
    let (file, secret) = secret_of(dir.path());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "turn.secret is private");
    }
    assert_eq!(secret.len(), 64, "32 random bytes as hex");
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));

    // Authenticated only.
    let url = format!("http://{}/api/rtc/ice-servers", server.addr);
    let anon = common::http_client()
        .get(&url)
        .send()
        .await
        .expect("request");
    assert_eq!(anon.status().as_u16(), 401);

    let (api, user_id) = register(&server, "alice").await;
    let before = now_secs();
    let answer: IceServersResponse = api.ice_servers().await.expect("ice servers");
    let after = now_secs();
    assert_eq!(answer.ice_servers.len(), 2, "{answer:?}");
    assert_eq!(answer.ice_servers[0].urls, ["stun:turn.mesh.test:3478"]);
    assert_eq!(answer.ice_servers[0].username, None);
    let turn = &answer.ice_servers[1];
    assert_eq!(
        turn.urls,
        [
            "turn:turn.mesh.test:3478?transport=udp",
            "turns:turn.mesh.test:5349?transport=tcp"
        ]
    );
    let username = turn.username.clone().expect("username");
    let (expiry, who) = username.split_once(':').expect("expiry:user");
    assert_eq!(who, user_id);
    let expiry: i64 = expiry.parse().expect("seconds");
    assert!(
        (before + 600..=after + 600).contains(&expiry),
        "expiry {expiry} is the TTL after now ({before}..{after})"
    );
    assert_eq!(answer.expires_at.unix_seconds(), expiry);
    // Recomputed here from the file: what coturn's use-auth-secret checks.
    let expected = mint(secret.as_bytes(), &user_id, expiry);
    assert_eq!(
        turn.credential.as_deref(),
        Some(expected.credential.as_str())
    );

    // A capability token that cannot join calls gets no TURN credential.
    let http = common::http_client();
    let cap: serde_json::Value = http
        .post(format!("http://{}/api/auth/capability", server.addr))
        .bearer_auth(api.token().expect("token"))
        .json(&serde_json::json!({"scope": ["rooms:read"]}))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    let cap = cap["capability_token"].as_str().expect("capability token");
    let refused = http
        .get(&url)
        .bearer_auth(cap)
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status().as_u16(), 403);
    drop(server);

    // A restart keeps the secret (other nodes and coturn share the file);
    // without TURN URLs only the STUN entry is handed out.
    let server = start_binary(dir.path(), &["--stun-url", "stun:turn.mesh.test:3478"])
        .expect("server restarts");
    assert_eq!(secret_of(dir.path()).1, secret);
    let api = HttpApi::new(&format!("http://{}", server.addr)).expect("api");
    let api = api.clone().with_token(
        api.login(&mesh_core::protocol::http::LoginRequest {
            username: "alice".into(),
            password: "correct horse battery".into(),
            device_name: None,
        })
        .await
        .expect("login")
        .token,
    );
    let answer = api.ice_servers().await.expect("ice servers");
    assert_eq!(answer.ice_servers.len(), 1);
    assert_eq!(answer.ice_servers[0].username, None);
    drop(server);

    // Neither: an empty list.
    let server = start_binary(dir.path(), &[]).expect("server restarts");
    let url = format!("http://{}/api/rtc/ice-servers", server.addr);
    let token = api.token().expect("token").to_owned();
    let body: serde_json::Value = common::http_client()
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(body["ice_servers"], serde_json::json!([]));
}

#[tokio::test]
async fn minted_credentials_allocate_but_never_reach_private_peers() {
    let dir = tempfile::tempdir().expect("temp dir");
    // mesh-server creates the secret; coturn gets the same one.
    let server = start_binary(
        dir.path(),
        &["--turn-url", "turn:127.0.0.1:3478?transport=udp"],
    )
    .expect("server starts");
    let (_, secret) = secret_of(dir.path());
    let Some(mut coturn) = start_coturn(&secret) else {
        return;
    };
    let (api, _) = register(&server, "alice").await;
    let ice = api.ice_servers().await.expect("ice servers");
    let turn = &ice.ice_servers[0];
    let username = turn.username.clone().expect("username");
    let password = turn.credential.clone().expect("credential");

    let mut udp = Turn::udp(coturn.addr());
    let (answer, auth) = udp.allocate(&username, &password, 17);
    assert!(
        answer.is_success(),
        "mesh's credentials allocate: {answer:?}\n{}",
        coturn.log()
    );
    let relayed = parse_xor_addr(answer.attr(ATTR_XOR_RELAYED).expect("XOR-RELAYED-ADDRESS"))
        .expect("relayed address");
    assert_eq!(relayed.ip(), IpAddr::from([127, 0, 0, 1]));
    assert_eq!(auth.realm, coturn.realm);

    // The control: a public peer is allowed, so the refusals below are the
    // denied-peer-ip lines at work, not a broken request.
    let public: SocketAddr = "198.51.100.7:5000".parse().expect("addr");
    let ok = udp.create_permission(&auth, public);
    assert!(ok.is_success(), "a public peer is allowed: {ok:?}");
    let ok = udp.channel_bind(&auth, 0x4000, public);
    assert!(ok.is_success(), "channel to a public peer: {ok:?}");

    let mesh_port = server.addr;
    for peer in [
        mesh_port,
        "127.0.0.1:3478".parse().expect("addr"),
        "127.9.9.9:80".parse().expect("addr"),
        "10.1.2.3:80".parse().expect("addr"),
        "172.16.0.1:80".parse().expect("addr"),
        "192.168.1.1:80".parse().expect("addr"),
        "169.254.169.254:80".parse().expect("addr"),
        "100.64.0.1:80".parse().expect("addr"),
        "0.0.0.0:80".parse().expect("addr"),
        "224.0.0.251:5353".parse().expect("addr"),
    ] {
        let no = udp.create_permission(&auth, peer);
        assert_eq!(
            no.error_code(),
            Some(403),
            "CreatePermission to {peer} is refused: {no:?}"
        );
        let no = udp.channel_bind(&auth, 0x4001, peer);
        assert_eq!(
            no.error_code(),
            Some(403),
            "ChannelBind to {peer} is refused: {no:?}"
        );
    }

    // No TCP relays at all (RFC 6062), so nothing reaches mesh-server's TCP
    // port through the relay either.
    let mut tcp = Turn::tcp(coturn.addr());
    let (answer, _) = tcp.allocate(&username, &password, 6);
    assert!(!answer.is_success(), "a TCP relay is refused: {answer:?}");
    eprintln!(
        "TCP relay allocation refused with {:?}",
        answer.error_code()
    );
    coturn.assert_alive();
}

#[tokio::test]
async fn expired_and_forged_credentials_are_refused() {
    let secret = "0123456789abcdef0123456789abcdef";
    let Some(mut coturn) = start_coturn(secret) else {
        return;
    };
    let user = "6f1c2a4e-0000-4000-8000-000000000001";

    let good = mint(secret.as_bytes(), user, now_secs() + 300);
    let (answer, _) = Turn::udp(coturn.addr()).allocate(&good.username, &good.credential, 17);
    assert!(answer.is_success(), "a valid credential works: {answer:?}");

    let expired = mint(secret.as_bytes(), user, now_secs() - 60);
    let (answer, _) = Turn::udp(coturn.addr()).allocate(&expired.username, &expired.credential, 17);
    assert_eq!(answer.error_code(), Some(401), "expired: {answer:?}");

    let forged = mint(b"not the secret", user, now_secs() + 300);
    let (answer, _) = Turn::udp(coturn.addr()).allocate(&forged.username, &forged.credential, 17);
    assert_eq!(answer.error_code(), Some(401), "forged: {answer:?}");

    // A later expiry with the old MAC: the username is what is signed.
    let stretched = format!("{}:{user}", now_secs() + 86_400);
    let (answer, _) = Turn::udp(coturn.addr()).allocate(&stretched, &good.credential, 17);
    assert_eq!(answer.error_code(), Some(401), "stretched: {answer:?}");
    coturn.assert_alive();
}

#[tokio::test]
async fn garbage_on_the_turn_ports_does_not_stop_it() {
    let secret = "garbage-test-secret";
    let Some(mut coturn) = start_coturn(secret) else {
        return;
    };
    let mut junk = vec![0u8; 1400];
    for round in 0..50u8 {
        getrandom::fill(&mut junk).expect("randomness");
        // Some rounds look like STUN (magic cookie, silly lengths).
        if round % 2 == 0 {
            junk[4..8].copy_from_slice(&MAGIC.to_be_bytes());
            junk[2..4].copy_from_slice(&(u16::from(round) * 997).to_be_bytes());
        }
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let _ = udp.send_to(&junk[..(usize::from(round) * 27 + 1)], coturn.addr());
    }
    for port in [coturn.port, coturn.tls_port] {
        for _ in 0..5 {
            getrandom::fill(&mut junk).expect("randomness");
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.set_read_timeout(Some(WAIT)).expect("timeout");
            let _ = s.write_all(&junk);
            let _ = s.shutdown(std::net::Shutdown::Write);
            // Wait until coturn is done with it (closes, or answers).
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
    }
    coturn.assert_alive();
    let good = mint(secret.as_bytes(), "u", now_secs() + 300);
    let (answer, _) = Turn::udp(coturn.addr()).allocate(&good.username, &good.credential, 17);
    assert!(answer.is_success(), "still serving over UDP: {answer:?}");
    let (answer, _) = Turn::tcp(coturn.addr()).allocate(&good.username, &good.credential, 17);
    assert!(answer.is_success(), "still serving over TCP: {answer:?}");
    coturn.assert_alive();
}

#[tokio::test]
async fn turn_over_tls_allocates_with_minted_credentials() {
    // For networks that let only TLS out: `turns:` on the TLS port.
    let secret = "tls-test-secret";
    let Some(coturn) = start_coturn(secret) else {
        return;
    };
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], coturn.tls_port));
    let good = mint(secret.as_bytes(), "u", now_secs() + 300);
    let mut turns = Turn::tls(tls_addr, &coturn.ca_pem);
    let (answer, auth) = turns.allocate(&good.username, &good.credential, 17);
    assert!(
        answer.is_success(),
        "allocates over TLS: {answer:?}\n{}",
        coturn.log()
    );
    // The same peer rules hold over TLS.
    let denied = turns.create_permission(&auth, "127.0.0.1:9".parse().expect("addr"));
    assert_eq!(denied.error_code(), Some(403), "{denied:?}");
    let expired = mint(secret.as_bytes(), "u", now_secs() - 10);
    let (answer, _) =
        Turn::tls(tls_addr, &coturn.ca_pem).allocate(&expired.username, &expired.credential, 17);
    assert_eq!(
        answer.error_code(),
        Some(401),
        "expired over TLS: {answer:?}"
    );
}
