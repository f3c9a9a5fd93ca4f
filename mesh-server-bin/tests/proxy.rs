//! `--trusted-proxy`: the client address behind a reverse proxy.
//!
//! In process (server on `127.0.0.1:0`, requests from 127.0.0.1): with
//! 127.0.0.1/32 trusted, `X-Forwarded-For` picks the login rate-limit
//! bucket; without it the header is ignored; a trusted proxy is not cut
//! off by the per-address connection cap, while its WebSocket clients are
//! capped per real address; malformed headers are answered, never 500.
//!
//! Through the real nginx, run with `docs/proxy/nginx.conf` as shipped
//! (only its two addresses replaced): REST and a WebSocket chat work, and
//! the server sees the client address nginx forwarded (clients connect to
//! nginx from 127.0.0.2, .3, ...). Skipped with a printed reason when
//! nginx is not installed, except under `CI=true`, where that fails.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{WAIT, WsClient};
use mesh_server_bin::{Config, ConnLimits, TrustedProxies};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

type Server = common::ServiceServer;

/// Two login attempts per address, none refilled during a test.
async fn start(trusted: &[&str], conn: ConnLimits) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::new(dir.path());
    config.trusted_proxies = TrustedProxies::parse(trusted).expect("cidrs");
    config.conn = conn;
    config.service.login_rate.per_addr_burst = 2;
    config.service.login_rate.per_addr_refill = Duration::from_secs(3600);
    config.service.login_rate.per_user_burst = 1000;
    Server::start(config, dir).await
}

/// A failed login to `base` (`http://host:port`) with extra headers;
/// returns the status (401 while the address has attempts, then 429).
async fn login(client: &reqwest::Client, base: &str, headers: &[(&str, &[u8])]) -> u16 {
    let mut req = client
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"username": "nobody", "password": "wrong password"}));
    for (name, value) in headers {
        req = req.header(*name, HeaderValue::from_bytes(value).expect("header value"));
    }
    let resp = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("answer in time")
        .expect("login");
    resp.status().as_u16()
}

fn xff(v: &str) -> [(&str, &[u8]); 1] {
    [("x-forwarded-for", v.as_bytes())]
}

#[tokio::test]
async fn trusted_proxy_forwarded_addresses_get_their_own_login_buckets() {
    let s = start(&["127.0.0.1/32"], ConnLimits::default()).await;
    let base = format!("http://{}", s.addr);
    let http = common::http_client();
    // Client A: two attempts, then refused.
    assert_eq!(login(&http, &base, &xff("198.51.100.1")).await, 401);
    assert_eq!(login(&http, &base, &xff("198.51.100.1")).await, 401);
    assert_eq!(login(&http, &base, &xff("198.51.100.1")).await, 429);
    // Client B behind the same proxy has attempts of its own.
    assert_eq!(login(&http, &base, &xff("198.51.100.2")).await, 401);
    // A with something else written in front is still A (walked from the
    // right), and Forwarded names the same client.
    assert_eq!(
        login(&http, &base, &xff("203.0.113.50, 198.51.100.1")).await,
        429
    );
    assert_eq!(
        login(
            &http,
            &base,
            &[("forwarded", b"for=198.51.100.1;proto=https")]
        )
        .await,
        429
    );
    // The proxy's own bucket (no header) is untouched.
    assert_eq!(login(&http, &base, &[]).await, 401);
}

#[tokio::test]
async fn without_trusted_proxy_the_header_is_ignored() {
    let s = start(&[], ConnLimits::default()).await;
    let base = format!("http://{}", s.addr);
    let http = common::http_client();
    assert_eq!(login(&http, &base, &xff("198.51.100.1")).await, 401);
    assert_eq!(login(&http, &base, &xff("198.51.100.2")).await, 401);
    // Every spoofed address shares the peer's (127.0.0.1) bucket.
    assert_eq!(login(&http, &base, &xff("198.51.100.3")).await, 429);
    assert_eq!(
        login(&http, &base, &[("forwarded", b"for=198.51.100.4")]).await,
        429
    );
    assert_eq!(login(&http, &base, &[]).await, 429);
}

#[tokio::test]
async fn malformed_forwarding_headers_are_answered_not_500() {
    let s = start(&["127.0.0.1/32"], ConnLimits::default()).await;
    let base = format!("http://{}", s.addr);
    let http = common::http_client();
    let bad: [(&str, &[u8]); 9] = [
        ("x-forwarded-for", b"garbage"),
        ("x-forwarded-for", b""),
        ("x-forwarded-for", b",,,"),
        ("x-forwarded-for", b"198.51.100.1, unknown"),
        ("x-forwarded-for", b"[::1"),
        ("x-forwarded-for", b"\xff\xfe"),
        ("forwarded", b"for=unknown"),
        ("forwarded", b"for=\"[2001:db8::1"),
        ("forwarded", b";;==,,"),
    ];
    for (name, value) in bad {
        let status = login(&http, &base, &[(name, value)]).await;
        // Each falls back to the proxy's address: two attempts, then 429.
        assert!(
            status == 401 || status == 429,
            "{name}: {value:?} answered {status}"
        );
    }
    // ... all on the proxy's own bucket, which they used up.
    assert_eq!(login(&http, &base, &[]).await, 429);
    let health = http
        .get(format!("{base}/health"))
        .header("x-forwarded-for", "garbage")
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
}

const HEALTH: &str = "GET /health HTTP/1.1\r\nHost: mesh\r\n\r\n";

/// The status of one `/health` on a new raw connection, which is left
/// open (kept alive) so that it keeps counting.
async fn health_held(addr: SocketAddr) -> (u16, TcpStream) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(HEALTH.as_bytes()).await.expect("write");
    let mut first = [0u8; 12];
    tokio::time::timeout(WAIT, s.read_exact(&mut first))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&first);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {text}"));
    (status, s)
}

async fn ws_as(addr: SocketAddr, token: &str, forwarded: &str) -> Result<WsClient, u16> {
    let mut req = format!("ws://{addr}/ws?token={token}")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "x-forwarded-for",
        HeaderValue::from_str(forwarded).expect("value"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(WsClient {
            ws,
            peer_id: String::new(),
            seen: Vec::new(),
        }),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("ws connect: {e}"),
    }
}

#[tokio::test]
async fn a_trusted_proxy_is_not_capped_as_one_address_but_its_clients_are() {
    let conn = ConnLimits {
        max_per_addr: 2,
        ..ConnLimits::default()
    };
    // Without trust, the third connection from 127.0.0.1 is refused...
    let plain = start(&[], conn.clone()).await;
    let mut held = Vec::new();
    for expect in [200, 200, 429] {
        let (status, s) = health_held(plain.addr).await;
        assert_eq!(status, expect);
        held.push(s);
    }
    // ... and with 127.0.0.1 trusted as a proxy, many are served.
    let s = start(&["127.0.0.1/32"], conn).await;
    for _ in 0..6 {
        let (status, c) = health_held(s.addr).await;
        assert_eq!(status, 200);
        held.push(c);
    }
    // WebSockets through the proxy count per real client: two each.
    let token = s.token("alice").await;
    let a1 = ws_as(s.addr, &token, "198.51.100.7").await.expect("a1");
    let _a2 = ws_as(s.addr, &token, "198.51.100.7").await.expect("a2");
    assert_eq!(ws_as(s.addr, &token, "198.51.100.7").await.err(), Some(429));
    let _b = ws_as(s.addr, &token, "198.51.100.8").await.expect("b");
    // A closed WebSocket gives its client's place back.
    drop(a1);
    let deadline = Instant::now() + WAIT;
    loop {
        match ws_as(s.addr, &token, "198.51.100.7").await {
            Ok(_) => break,
            Err(429) if Instant::now() < deadline => {
                // The server notices the close asynchronously.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(code) => panic!("a3 answered {code}"),
        }
    }
}

// ---------------------------------------------------------------- nginx

/// nginx started on a free port with the shipped config; killed on drop.
struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> Option<PathBuf> {
    ["nginx", "/usr/sbin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| {
            Command::new(p)
                .arg("-v")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        })
}

fn shipped_config() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/proxy/nginx.conf");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replaces `from` (which must occur exactly once) by `to`.
fn substitute(conf: &str, from: &str, to: &str) -> String {
    assert_eq!(
        conf.matches(from).count(),
        1,
        "{from:?} in the shipped config"
    );
    conf.replace(from, to)
}

async fn start_nginx(bin: &Path, upstream: SocketAddr) -> Nginx {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().display().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let site = substitute(
        &shipped_config(),
        "listen 80;",
        &format!("listen 127.0.0.1:{port};"),
    );
    let site = substitute(
        &site,
        "server 127.0.0.1:8000;",
        &format!("server {upstream};"),
    );
    std::fs::write(dir.path().join("mesh.conf"), site).expect("write site");
    let main = format!(
        "error_log {d}/error.log info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
           access_log {d}/access.log;\n\
           client_body_temp_path {d}/body;\n\
           proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n\
           uwsgi_temp_path {d}/uwsgi;\n\
           scgi_temp_path {d}/scgi;\n\
           include {d}/mesh.conf;\n\
         }}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), main).expect("write conf");
    // One process (no master): killing it leaves no worker behind.
    let child = Command::new(bin)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .arg("-g")
        .arg(format!(
            "daemon off; master_process off; pid {d}/nginx.pid;"
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nginx");
    let mut nginx = Nginx { child, port, dir };
    // nginx says nothing on a pipe when it listens: poll its port, and
    // stop at once if it exits (its error log says why).
    let deadline = Instant::now() + WAIT;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return nginx;
        }
        if let Ok(Some(status)) = nginx.child.try_wait() {
            let log =
                std::fs::read_to_string(nginx.dir.path().join("error.log")).unwrap_or_default();
            panic!("nginx exited with {status}:\n{log}");
        }
        assert!(Instant::now() < deadline, "nginx listens in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(from.parse().expect("ip"), 0))
        .expect("bind a loopback source");
    socket.connect(to).await.expect("connect")
}

/// A WebSocket to nginx from `from`, hello done.
async fn ws_from(from: &str, nginx: SocketAddr, token: &str) -> WsClient {
    let stream = connect_from(from, nginx).await;
    let url = format!("ws://{nginx}/ws?token={token}");
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)),
    )
    .await
    .expect("upgrade in time")
    .expect("ws upgrade through nginx");
    let mut client = WsClient {
        ws,
        peer_id: String::new(),
        seen: Vec::new(),
    };
    let welcome = client.request("system.hello", json!({}), "hello").await;
    assert_eq!(welcome["type"], "system.welcome", "{welcome}");
    client
}

fn client_from(from: &str) -> reqwest::Client {
    common::install_ring();
    reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().expect("ip"))
        .build()
        .expect("client")
}

#[tokio::test]
async fn through_nginx_rest_and_websocket_chat_work_and_the_client_address_is_seen() {
    let Some(bin) = nginx_binary() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nginx is not installed, and CI=true: the reverse-proxy test must run"
        );
        eprintln!("SKIPPED: nginx is not installed (Debian: apt-get install nginx-light)");
        return;
    };
    let started = Instant::now();
    let s = start(&["127.0.0.1/32"], ConnLimits::default()).await;
    let nginx = start_nginx(&bin, s.addr).await;
    let front: SocketAddr = ([127, 0, 0, 1], nginx.port).into();
    let base = format!("http://{front}");
    eprintln!("nginx up after {:?}", started.elapsed());

    // REST through nginx.
    let alice = s.token("alice").await;
    let bob = s.token("bob").await;
    let http = client_from("127.0.0.2");
    let health: Value = http
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(health["status"], "ok");
    let room: Value = http
        .post(format!("{base}/api/rooms"))
        .bearer_auth(&alice)
        .json(&json!({"name": "general", "visibility": "public"}))
        .send()
        .await
        .expect("create room")
        .json()
        .await
        .expect("json");
    let room_id = room["room"]["id"].as_str().expect("room id").to_owned();
    let joined = client_from("127.0.0.3")
        .post(format!("{base}/api/rooms/{room_id}/join"))
        .bearer_auth(&bob)
        .send()
        .await
        .expect("join");
    assert_eq!(joined.status(), 200);

    // A WebSocket chat through nginx.
    let mut a = ws_from("127.0.0.2", front, &alice).await;
    let mut b = ws_from("127.0.0.3", front, &bob).await;
    let sent = a
        .request(
            "chat.message.send",
            json!({"room_id": room_id, "content": "hello through nginx"}),
            "m1",
        )
        .await;
    assert_eq!(sent["type"], "chat.message.created", "{sent}");
    let got = b
        .expect_where("chat.message.created", |f| {
            f["payload"]["message"]["content"] == "hello through nginx"
        })
        .await;
    assert_eq!(got["payload"]["message"]["room_id"], room_id.as_str());
    eprintln!("REST and chat through nginx after {:?}", started.elapsed());

    // The server sees the address nginx forwarded: 127.0.0.4 and 127.0.0.5
    // (both reaching the server from nginx's 127.0.0.1) get a login bucket
    // each, and what a client writes in X-Forwarded-For changes nothing.
    let four = client_from("127.0.0.4");
    assert_eq!(login(&four, &base, &[]).await, 401);
    assert_eq!(login(&four, &base, &xff("198.51.100.9")).await, 401);
    assert_eq!(login(&four, &base, &xff("198.51.100.10")).await, 429);
    let five = client_from("127.0.0.5");
    assert_eq!(login(&five, &base, &[]).await, 401);
    eprintln!("nginx test done after {:?}", started.elapsed());
    drop(nginx);
}
