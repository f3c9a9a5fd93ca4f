//! `kill -9` of the server process, then a restart on the same data folder:
//! everything acknowledged is there, once. One test kills after N
//! acknowledged messages; another kills at random moments during concurrent
//! sends, 50 times over.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::WsClient;
use common::process::{ServerProcess, start_binary};
use serde_json::json;

/// Starts the real `mesh-server` binary on a free port.
fn spawn_server(data: &std::path::Path) -> ServerProcess {
    spawn_server_with(data, &[])
}

/// [`spawn_server`] with extra flags.
fn spawn_server_with(data: &std::path::Path, flags: &[&str]) -> ServerProcess {
    start_binary(data, flags).expect("the server starts")
}

/// Registers alice; returns her token.
async fn register(http: &reqwest::Client, addr: SocketAddr) -> String {
    register_as(http, addr, "alice").await
}

/// Registers `username`; returns the token.
async fn register_as(http: &reqwest::Client, addr: SocketAddr, username: &str) -> String {
    let body: serde_json::Value = http
        .post(format!("http://{addr}/api/auth/register"))
        .json(&json!({"username": username, "password": "correct horse battery"}))
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
    let server = spawn_server(dir.path());
    let addr = server.addr;
    let http = common::http_client();
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
    server.kill();

    let server = spawn_server(dir.path());
    let addr = server.addr;
    let seqs = common::process::history_seqs(addr, &token, &room).await;
    assert_eq!(
        seqs,
        (1..=N).collect::<Vec<_>>(),
        "the token, the room and all {N} messages survived"
    );
    server.kill();
}

#[tokio::test]
async fn sigterm_closes_websockets_with_1001_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("dir");
    let server = spawn_server(dir.path());
    let addr = server.addr;
    let token = register(&common::http_client(), addr).await;
    let mut ws = WsClient::connect(addr, &token).await;
    ws.send("system.hello", json!({}), Some("h")).await;
    ws.expect("system.welcome").await;

    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    assert_eq!(ws.closed().await, Some(1001));
    let exit = tokio::task::spawn_blocking(move || {
        let mut server = server;
        server.child.wait()
    })
    .await
    .expect("join")
    .expect("wait");
    assert!(exit.success(), "mesh-server exited with {exit}");
}

/// A small xorshift generator: the test needs random moments, not a crate.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// client_id -> (seq, message id) of every acknowledged message.
type Acked = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (u64, String)>>>;

/// One user's sender: keeps up to 8 sends in flight on one WebSocket and
/// records each acknowledgement, until the server goes away. Returns the
/// last acknowledged client_id and its content, if any.
async fn send_until_killed(
    addr: SocketAddr,
    token: String,
    room: String,
    prefix: String,
    acked: Acked,
    acks: tokio::sync::mpsc::UnboundedSender<()>,
) -> Option<(String, String)> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("ws://{addr}/ws?token={token}");
    let Ok((ws, _)) = tokio_tungstenite::connect_async(url).await else {
        return None;
    };
    let (mut tx, mut rx) = ws.split();
    let frame = |kind: &str, id: &str, payload: serde_json::Value| {
        Message::Text(
            json!({"type": kind, "id": id, "payload": payload})
                .to_string()
                .into(),
        )
    };
    tx.send(frame("system.hello", "h", json!({}))).await.ok()?;
    tx.send(frame("room.join", "j", json!({"room_id": room})))
        .await
        .ok()?;
    let content = |i: u64| format!("{prefix} message {i}");
    let (mut sent, mut last) = (0u64, None);
    let mut joined = false;
    loop {
        while joined && sent < 100_000 && tx_window(sent, &last) < 8 {
            let client_id = format!("{prefix}-{sent}");
            let payload =
                json!({"room_id": room, "content": content(sent), "client_id": client_id});
            if tx
                .send(frame("chat.message.send", &client_id, payload))
                .await
                .is_err()
            {
                return last;
            }
            sent += 1;
        }
        let Some(Ok(msg)) = rx.next().await else {
            return last;
        };
        let Message::Text(text) = msg else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        match (v["type"].as_str(), v["id"].as_str()) {
            (Some("room.joined"), Some("j")) => joined = true,
            (Some("chat.message.created"), Some(id)) if id.starts_with(&prefix) => {
                let m = &v["payload"]["message"];
                let seq = m["seq"].as_u64().expect("seq");
                let mid = m["id"].as_str().expect("message id").to_owned();
                let n: u64 = id
                    .rsplit('-')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("n");
                acked
                    .lock()
                    .expect("acked")
                    .insert(id.to_owned(), (seq, mid));
                last = Some((id.to_owned(), content(n)));
                let _ = acks.send(());
            }
            (Some("error"), _) => panic!("the server refused a send: {v}"),
            _ => {}
        }
    }
}

/// Sends in flight: sent minus the number after the last acknowledged one
/// (acknowledgements of one connection come in order).
fn tx_window(sent: u64, last: &Option<(String, String)>) -> u64 {
    let done = last
        .as_ref()
        .and_then(|(id, _)| id.rsplit('-').next()?.parse::<u64>().ok())
        .map_or(0, |n| n + 1);
    sent - done
}

/// kill -9 at random moments while three users send concurrently, 50
/// times over (`MESH_CRASH_CYCLES` changes the count, `MESH_CRASH_SEED`
/// replays a run). After each restart: every acknowledged message is
/// there exactly once with the seq it was acknowledged with, the room's
/// seqs are 1..N with no gap, and re-sending an acknowledged client_id
/// returns the same message instead of a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_nothing_acknowledged() {
    let cycles: u64 = std::env::var("MESH_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let seed = std::env::var("MESH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("MESH_CRASH_SEED={seed} MESH_CRASH_CYCLES={cycles}");
    let mut rng = Rng(seed);
    // No rate limits in the way of a burst of sends.
    let flags = ["--frame-burst", "100000", "--frame-rate", "100000"];
    let dir = tempfile::tempdir().expect("dir");
    let http = common::http_client();

    let mut server = spawn_server_with(dir.path(), &flags);
    let mut addr = server.addr;
    let mut tokens = Vec::new();
    for name in ["ann", "ben", "cat"] {
        tokens.push(register_as(&http, addr, name).await);
    }
    let room: serde_json::Value = http
        .post(format!("http://{addr}/api/rooms"))
        .bearer_auth(&tokens[0])
        .json(&json!({"name": "crashes", "visibility": "public"}))
        .send()
        .await
        .expect("room")
        .json()
        .await
        .expect("json");
    let room = room["room"]["id"].as_str().expect("id").to_owned();
    let acked: Acked = Default::default();

    for cycle in 0..cycles {
        // Kill after a random number of acknowledgements (0..40), with
        // sends still in flight on every connection.
        let kill_after = rng.below(40);
        let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel();
        let senders: Vec<_> = tokens
            .iter()
            .enumerate()
            .map(|(u, token)| {
                tokio::spawn(send_until_killed(
                    addr,
                    token.clone(),
                    room.clone(),
                    format!("c{cycle}u{u}"),
                    acked.clone(),
                    ack_tx.clone(),
                ))
            })
            .collect();
        drop(ack_tx);
        for _ in 0..kill_after {
            if tokio::time::timeout(common::WAIT, ack_rx.recv())
                .await
                .expect("acknowledgements keep coming")
                .is_none()
            {
                break;
            }
        }
        server.kill();
        let mut last_acked = Vec::new();
        for (u, s) in senders.into_iter().enumerate() {
            if let Some(last) = s.await.expect("sender") {
                last_acked.push((u, last));
            }
        }

        server = spawn_server_with(dir.path(), &flags);
        addr = server.addr;
        let msgs = common::process::history(addr, &tokens[0], &room).await;
        let seqs: Vec<u64> = msgs
            .iter()
            .map(|m| m["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(
            seqs,
            (1..=msgs.len() as u64).collect::<Vec<_>>(),
            "cycle {cycle}: seqs 1..N with no gap"
        );
        let mut by_client_id = std::collections::HashMap::new();
        for m in &msgs {
            let cid = m["client_id"].as_str().expect("client_id").to_owned();
            let seq = m["seq"].as_u64().expect("seq");
            let id = m["id"].as_str().expect("id").to_owned();
            assert!(
                by_client_id.insert(cid.clone(), (seq, id)).is_none(),
                "cycle {cycle}: {cid} stored twice"
            );
        }
        let acked_now = acked.lock().expect("acked").clone();
        for (cid, want) in &acked_now {
            assert_eq!(
                by_client_id.get(cid),
                Some(want),
                "cycle {cycle} (seed {seed}): acknowledged {cid} lost or changed"
            );
        }
        // A retry of each user's last acknowledged send: the same message.
        for (u, (cid, content)) in last_acked {
            let mut ws = WsClient::connect(addr, &tokens[u]).await;
            ws.send("system.hello", json!({}), Some("h")).await;
            ws.expect("system.welcome").await;
            let joined = ws.request("room.join", json!({"room_id": room}), "j").await;
            assert_eq!(joined["type"], "room.joined", "{joined}");
            let again = ws
                .request(
                    "chat.message.send",
                    json!({"room_id": room, "content": content, "client_id": cid}),
                    "retry",
                )
                .await;
            let m = &again["payload"]["message"];
            assert_eq!(again["type"], "chat.message.created", "{again}");
            assert_eq!(
                (
                    m["seq"].as_u64().expect("seq"),
                    m["id"].as_str().expect("id").to_owned()
                ),
                acked_now[&cid],
                "cycle {cycle}: a retry of {cid} returned another message"
            );
        }
    }
    let total = common::process::history(addr, &tokens[0], &room)
        .await
        .len();
    eprintln!(
        "{cycles} kill -9 cycles: {} acknowledged, {total} stored, none lost",
        acked.lock().expect("acked").len()
    );
    server.kill();
}
