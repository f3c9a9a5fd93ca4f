//! `kill -9` of the server process after N acknowledged messages, then a
//! restart on the same data folder: all N are there.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use common::WsClient;
use serde_json::json;

/// Starts the real `mesh-server` binary on a free port; returns it and its address.
fn spawn_server(data: &std::path::Path) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-server"))
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mesh-server");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("server printed its address before exiting")
            .expect("read stderr");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.trim().parse().expect("address");
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// Registers alice; returns her token.
async fn register(http: &reqwest::Client, addr: SocketAddr) -> String {
    let body: serde_json::Value = http
        .post(format!("http://{addr}/api/auth/register"))
        .json(&json!({"username": "alice", "password": "correct horse battery"}))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json");
    body["token"].as_str().expect("token").to_owned()
}

#[tokio::test]
async fn acknowledged_messages_survive_kill_9() {
    const N: u64 = 200;
    let dir = tempfile::tempdir().expect("dir");
    let (mut child, addr) = spawn_server(dir.path());
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    let token = register(&http, addr).await;
    let room: serde_json::Value = http
        .post(format!("{base}/api/rooms"))
        .bearer_auth(&token)
        .json(&json!({"name": "durable"}))
        .send()
        .await
        .expect("room")
        .json()
        .await
        .expect("json");
    let room = room["room"]["id"].as_str().expect("id").to_owned();

    let mut ws = WsClient::connect(addr, &token).await;
    ws.send("system.hello", json!({}), Some("h")).await;
    ws.expect("system.welcome").await;
    // Pipelined sends from several connections, so appends share flushes.
    let mut others = Vec::new();
    for _ in 0..3 {
        let mut c = WsClient::connect(addr, &token).await;
        c.send("system.hello", json!({}), Some("h")).await;
        c.expect("system.welcome").await;
        others.push(c);
    }
    let mut acked = 0;
    for i in 0..N {
        let c = if i % 4 == 0 {
            &mut ws
        } else {
            &mut others[(i % 4 - 1) as usize]
        };
        c.send(
            "chat.message.send",
            json!({"room_id": room, "content": format!("durable {i}"), "client_id": format!("k{i}")}),
            Some(&format!("m{i}")),
        )
        .await;
    }
    for i in 0..N {
        let c = if i % 4 == 0 {
            &mut ws
        } else {
            &mut others[(i % 4 - 1) as usize]
        };
        let ack = c.reply(&format!("m{i}")).await;
        assert_eq!(ack["type"], "chat.message.created", "{ack}");
        acked += 1;
    }
    assert_eq!(acked, N);

    // SIGKILL: no shutdown, no flush on exit.
    child.kill().expect("kill -9");
    child.wait().expect("reaped");

    let (mut child, addr) = spawn_server(dir.path());
    let base = format!("http://{addr}");
    let mut seqs = Vec::new();
    let mut after = 0;
    loop {
        let page: serde_json::Value = http
            .get(format!(
                "{base}/api/rooms/{room}/messages?after={after}&limit=100"
            ))
            .bearer_auth(&token)
            .send()
            .await
            .expect("history")
            .json()
            .await
            .expect("json");
        let msgs = page["messages"].as_array().expect("messages");
        for m in msgs {
            seqs.push(m["seq"].as_u64().expect("seq"));
        }
        match msgs.last() {
            Some(m) if page["has_more"] == true => after = m["seq"].as_u64().expect("seq"),
            _ => break,
        }
    }
    assert_eq!(
        seqs,
        (1..=N).collect::<Vec<_>>(),
        "the token, the room and all {N} messages survived"
    );
    child.kill().expect("kill");
    child.wait().expect("reaped");
}

#[tokio::test]
async fn sigterm_closes_websockets_with_1001_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("dir");
    let (mut child, addr) = spawn_server(dir.path());
    let token = register(&reqwest::Client::new(), addr).await;
    let mut ws = WsClient::connect(addr, &token).await;
    ws.send("system.hello", json!({}), Some("h")).await;
    ws.expect("system.welcome").await;

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    assert_eq!(ws.closed().await, Some(1001));
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "mesh-server exited with {exit}");
}
