//! Slow and greedy clients, from outside over raw TCP: half request
//! headers, idle keep-alive connections, stalled bodies, and more
//! connections than one address or the server may hold. The limits are
//! set small through `Config`; each test waits for the server's answer or
//! its closing of the connection, never for time to pass.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{WAIT, WsClient};
use mesh_server_bin::{Config, ConnLimits};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Server = common::ServiceServer;

async fn start(conn: ConnLimits) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::new(dir.path());
    config.conn = conn;
    Server::start(config, dir).await
}

const HEALTH: &str = "GET /health HTTP/1.1\r\nHost: mesh\r\n\r\n";
const HALF_HEADER: &str = "GET /health HTTP/1.1\r\nHost: mesh\r\nX-Slow: ";

/// An HTTP answer read off a raw socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Value,
}

/// Reads one answer: the head, then `Content-Length` bytes of body.
async fn read_answer(s: &mut TcpStream) -> Answer {
    let read = async {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(s.read_u8().await?);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        s.read_exact(&mut body).await?;
        Ok::<_, std::io::Error>((head, body))
    };
    let (head, body) = tokio::time::timeout(WAIT, read)
        .await
        .expect("an answer in time")
        .expect("an answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head}"));
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).expect("a JSON body")
    };
    Answer { status, head, body }
}

/// Waits until the server closes the connection; returns what it sent
/// first (a reset counts as closed).
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("the server closes the connection in time");
    got
}

/// A keep-alive connection that has had one answer: the server holds it.
async fn held(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(HEALTH.as_bytes()).await.expect("write");
    let answer = read_answer(&mut s).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    s
}

/// Polls (with a deadline) until a new connection gets `/health` again.
async fn accepts_again(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        if s.write_all(HEALTH.as_bytes()).await.is_ok() {
            let mut first = [0u8; 12];
            if s.read_exact(&mut first).await.is_ok() && first.starts_with(b"HTTP/1.1 200") {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server accepts again in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn limits() -> ConnLimits {
    ConnLimits::default()
}

#[tokio::test]
async fn slowloris_connections_do_not_stop_a_normal_client() {
    let s = start(ConnLimits {
        header_timeout: Duration::from_secs(60),
        ..limits()
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut c = TcpStream::connect(s.addr).await.expect("connect");
        c.write_all(HALF_HEADER.as_bytes()).await.expect("write");
        slow.push(c);
    }
    // Accepted in order, so these are served while all 200 are held.
    let _normal = held(s.addr).await;
    let resp = common::http_client()
        .get(format!("http://{}/health", s.addr))
        .send()
        .await
        .expect("health");
    assert_eq!(resp.status(), 200);
    drop(slow);
}

#[tokio::test]
async fn a_half_header_is_answered_408_then_closed_after_the_header_timeout() {
    let s = start(ConnLimits {
        header_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let mut c = TcpStream::connect(s.addr).await.expect("connect");
    c.write_all(HALF_HEADER.as_bytes()).await.expect("write");
    let answer = read_answer(&mut c).await;
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(answer.head.starts_with("http/1.1 408 "), "{}", answer.head);
    assert_eq!(answer.body["error"]["code"], "timeout", "{answer:?}");
    assert!(answer.body["error"]["message"].is_string(), "{answer:?}");
    assert!(
        answer.head.contains("connection: close\r\n"),
        "{}",
        answer.head
    );
    // Exactly one answer, then the end.
    let rest = read_until_closed(&mut c).await;
    assert!(
        rest.is_empty(),
        "after the 408: {}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test]
async fn a_half_header_after_an_answer_is_answered_408() {
    let s = start(ConnLimits {
        header_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let mut c = held(s.addr).await;
    c.write_all(HALF_HEADER.as_bytes()).await.expect("write");
    let answer = read_answer(&mut c).await;
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(read_until_closed(&mut c).await.is_empty());
}

#[tokio::test]
async fn a_silent_connection_is_closed_unanswered_after_the_header_timeout() {
    let s = start(ConnLimits {
        header_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let mut c = TcpStream::connect(s.addr).await.expect("connect");
    let got = read_until_closed(&mut c).await;
    assert!(
        got.is_empty(),
        "no answer: {}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test]
async fn a_slow_header_within_the_timeout_is_served() {
    // Each piece waits for the server to have read the previous one (a
    // failed read would show as an answer or a close): the header takes
    // as long as the pieces, all well within the time-out.
    let s = start(ConnLimits {
        header_timeout: Duration::from_secs(30),
        ..limits()
    })
    .await;
    let mut c = TcpStream::connect(s.addr).await.expect("connect");
    for piece in HEALTH.as_bytes().chunks(5) {
        c.write_all(piece).await.expect("write");
        c.flush().await.expect("flush");
        tokio::task::yield_now().await;
    }
    let answer = read_answer(&mut c).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    // And the connection stays usable.
    c.write_all(HEALTH.as_bytes()).await.expect("write");
    assert_eq!(read_answer(&mut c).await.status, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let s = start(ConnLimits {
        header_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let mut c = held(s.addr).await;
    let got = read_until_closed(&mut c).await;
    assert!(
        got.is_empty(),
        "no answer: {}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test]
async fn a_stalled_body_is_closed_after_the_idle_timeout() {
    // The header time-out is far off: only the idle time-out can close it.
    let s = start(ConnLimits {
        header_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let mut c = TcpStream::connect(s.addr).await.expect("connect");
    c.write_all(
        b"POST /api/auth/login HTTP/1.1\r\nHost: mesh\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"username\"",
    )
    .await
    .expect("write");
    let got = read_until_closed(&mut c).await;
    assert!(
        got.is_empty(),
        "no answer: {}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test]
async fn a_websocket_outlives_the_http_time_outs() {
    let s = start(ConnLimits {
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let token = s.token("alice").await;
    let mut ws = WsClient::connect(s.addr, &token).await;
    let welcome = ws.request("system.hello", json!({}), "hello").await;
    assert_eq!(welcome["type"], "system.welcome");
    // Three silent connections closed one after the other by the header
    // time-out: the WebSocket has been silent longer than both time-outs.
    for _ in 0..3 {
        let mut c = TcpStream::connect(s.addr).await.expect("connect");
        assert!(read_until_closed(&mut c).await.is_empty());
    }
    let pong = ws.request("system.ping", json!({}), "p").await;
    assert_eq!(pong["type"], "system.pong", "{pong}");
}

#[tokio::test]
async fn the_per_address_cap_answers_429_then_accepts_again() {
    let s = start(ConnLimits {
        max_per_addr: 3,
        ..limits()
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(held(s.addr).await);
    }
    let mut extra = TcpStream::connect(s.addr).await.expect("connect");
    extra.write_all(HEALTH.as_bytes()).await.expect("write");
    let answer = read_answer(&mut extra).await;
    assert_eq!(answer.status, 429, "{answer:?}");
    assert_eq!(answer.body["error"]["code"], "rate_limited", "{answer:?}");
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("too many connections")),
        "{answer:?}"
    );
    assert!(
        answer.head.contains("retry-after: 5\r\n"),
        "{}",
        answer.head
    );
    assert!(
        answer.head.contains("connection: close\r\n"),
        "{}",
        answer.head
    );
    assert!(read_until_closed(&mut extra).await.is_empty());
    // The three held ones still work.
    for c in &mut open {
        c.write_all(HEALTH.as_bytes()).await.expect("write");
        assert_eq!(read_answer(c).await.status, 200);
    }
    drop(open.pop());
    accepts_again(s.addr).await;
}

#[tokio::test]
async fn a_websocket_counts_against_the_cap_while_open() {
    let s = start(ConnLimits {
        max_per_addr: 2,
        ..limits()
    })
    .await;
    let token = s.token("alice").await;
    let mut ws = WsClient::connect(s.addr, &token).await;
    let welcome = ws.request("system.hello", json!({}), "hello").await;
    assert_eq!(welcome["type"], "system.welcome");
    let _one = held(s.addr).await;
    let mut extra = TcpStream::connect(s.addr).await.expect("connect");
    extra.write_all(HEALTH.as_bytes()).await.expect("write");
    assert_eq!(read_answer(&mut extra).await.status, 429);
    drop(ws);
    accepts_again(s.addr).await;
}

#[tokio::test]
async fn past_the_total_cap_connections_are_closed_unanswered() {
    let s = start(ConnLimits {
        max_connections: 3,
        ..limits()
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(held(s.addr).await);
    }
    let mut extra = TcpStream::connect(s.addr).await.expect("connect");
    // The write may already fail: the server closes without reading.
    let _ = extra.write_all(HEALTH.as_bytes()).await;
    let got = read_until_closed(&mut extra).await;
    assert!(
        got.is_empty(),
        "no answer: {}",
        String::from_utf8_lossy(&got)
    );
    drop(open.pop());
    accepts_again(s.addr).await;
}
