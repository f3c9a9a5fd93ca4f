//! mesh-server on PostgreSQL (`--store postgres://…`): what it acknowledged
//! survives `kill -9`; with the database out of reach, sends fail with
//! `unavailable` (nothing acknowledged), `/health` answers 503, and both
//! recover by themselves when it is back.
//!
//! Each test gets a database of its own on the PostgreSQL that
//! `scripts/services.sh` starts (`MESH_TEST_POSTGRES`).

mod common;

use std::time::Duration;

use common::services::{CutProxy, pg_database, url_addr};
use common::{TestServer, WsClient};
use mesh_core::storage::postgres::PgOptions;
use mesh_server_bin::StoreChoice;
use serde_json::json;

async fn send(ws: &mut WsClient, room: &str, content: &str, id: &str) -> serde_json::Value {
    ws.request(
        "chat.message.send",
        json!({"room_id": room, "content": content, "client_id": id}),
        id,
    )
    .await
}

#[tokio::test]
async fn acknowledged_messages_survive_kill_9_on_postgres() {
    const N: u64 = 50;
    let Some(url) = pg_database().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let server = common::process::start_binary(dir.path(), &["--store", &url])
        .expect("the server starts on PostgreSQL");
    let s = TestServer::attach(server.addr);
    let (_, token) = s.register("alice").await;
    let room = s.create_room(&token, "durable", "public").await;
    let mut ws = s.ws(&token).await;
    for i in 0..N {
        ws.send(
            "chat.message.send",
            json!({"room_id": room, "content": format!("m{i}"), "client_id": format!("k{i}")}),
            Some(&format!("k{i}")),
        )
        .await;
    }
    for i in 0..N {
        let ack = ws.reply(&format!("k{i}")).await;
        assert_eq!(ack["type"], "chat.message.created", "{ack}");
    }
    server.kill();

    // Another node (another data folder, the same keys) on the same
    // database: the token, the room and every message are there.
    let other = tempfile::tempdir().expect("dir");
    std::fs::create_dir_all(other.path()).expect("dir");
    copy_dir(&dir.path().join("keys"), &other.path().join("keys"));
    let server = common::process::start_binary(other.path(), &["--store", &url])
        .expect("a second node starts");
    let seqs = common::process::history_seqs(server.addr, &token, &room).await;
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>());
    server.kill();
}

#[tokio::test]
async fn postgres_out_of_reach_fails_sends_then_recovers() {
    let Some(url) = pg_database().await else {
        return;
    };
    let proxy = CutProxy::start(url_addr(&url)).await;
    let dir = tempfile::tempdir().expect("dir");
    let mut config = mesh_server_bin::Config::new(dir.path());
    config.store = StoreChoice::Postgres {
        url: proxy.rewrite(&url),
        options: PgOptions {
            max_connections: 4,
            connect_timeout: Duration::from_secs(1),
        },
    };
    let s = TestServer::start_with(config, Some(dir)).await;
    let (_, token) = s.register("alice").await;
    let room = s.create_room(&token, "flaky", "public").await;
    let mut ws = s.ws(&token).await;
    assert_eq!(
        send(&mut ws, &room, "one", "a").await["type"],
        "chat.message.created"
    );

    proxy.cut();
    let refused = send(&mut ws, &room, "two", "b").await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["payload"]["code"], "unavailable", "{refused}");
    assert!(
        refused["payload"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nothing was stored")),
        "{refused}"
    );
    let health = s.http.get(s.url("/health")).send().await.expect("health");
    assert_eq!(health.status(), 503);
    let body: serde_json::Value = health.json().await.expect("json");
    assert_eq!(body["status"], "unavailable", "{body}");

    proxy.restore();
    let (status, body) = s.call(reqwest::Method::GET, "/health", None, None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    // The refused message was not stored: sent again, it is new.
    assert_eq!(
        send(&mut ws, &room, "two", "b").await["type"],
        "chat.message.created"
    );
    assert_eq!(
        send(&mut ws, &room, "three", "c").await["type"],
        "chat.message.created"
    );
    let history = common::process::history(s.addr, &token, &room).await;
    let contents: Vec<_> = history.iter().map(|m| m["content"].clone()).collect();
    assert_eq!(contents, vec![json!("one"), json!("two"), json!("three")]);
    let seqs: Vec<_> = history.iter().map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seqs, vec![Some(1), Some(2), Some(3)]);
    s.stop().await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}
