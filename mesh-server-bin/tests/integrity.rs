//! A damaged, foreign, newer or rolled-back database at start: the real
//! `mesh-server` binary either serves everything it acknowledged or refuses
//! to start (non-zero exit, a message naming the folder), and leaves every
//! file of the data folder byte for byte as it was. Also `mesh-server
//! check`, and a clean start that logs no ERROR.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::WsClient;
use common::process::{Refused, ServerProcess as Running, start_binary};
use serde_json::json;

const MESSAGES: u64 = 30;

/// Starts the real binary on `data` with no extra flags.
fn start(data: &Path) -> Result<Running, Refused> {
    start_binary(data, &[])
}

/// What a populated server holds: alice's credentials and her room.
#[derive(Clone, Debug)]
struct World {
    room: String,
}

async fn register(http: &reqwest::Client, addr: SocketAddr) -> String {
    let resp = http
        .post(format!("http://{addr}/api/auth/register"))
        .json(&json!({"username": "alice", "password": "correct horse battery"}))
        .send()
        .await
        .expect("register");
    assert_eq!(resp.status(), 201);
    let body: serde_json::Value = resp.json().await.expect("json");
    body["token"].as_str().expect("token").to_owned()
}

async fn login(http: &reqwest::Client, addr: SocketAddr) -> Option<String> {
    let resp = http
        .post(format!("http://{addr}/api/auth/login"))
        .json(&json!({"username": "alice", "password": "correct horse battery"}))
        .send()
        .await
        .expect("login");
    if resp.status() != 200 {
        return None;
    }
    let body: serde_json::Value = resp.json().await.expect("json");
    Some(body["token"].as_str().expect("token").to_owned())
}

/// Sends `count` messages numbered from `first`, each acknowledged.
async fn send(addr: SocketAddr, token: &str, room: &str, first: u64, count: u64) {
    let mut ws = WsClient::connect(addr, token).await;
    ws.send("system.hello", json!({}), Some("h")).await;
    ws.expect("system.welcome").await;
    for i in first..first + count {
        let reply = ws
            .request(
                "chat.message.send",
                json!({"room_id": room, "content": format!("m{i}"), "client_id": format!("c{i}")}),
                &format!("m{i}"),
            )
            .await;
        assert_eq!(reply["type"], "chat.message.created", "{reply}");
    }
}

/// Registers alice, creates a room and sends [`MESSAGES`] messages.
async fn populate(addr: SocketAddr) -> World {
    let http = common::http_client();
    let token = register(&http, addr).await;
    let resp = http
        .post(format!("http://{addr}/api/rooms"))
        .bearer_auth(&token)
        .json(&json!({"name": "kept"}))
        .send()
        .await
        .expect("room");
    assert_eq!(resp.status(), 201);
    let body: serde_json::Value = resp.json().await.expect("json");
    let room = body["room"]["id"].as_str().expect("id").to_owned();
    send(addr, &token, &room, 1, MESSAGES).await;
    World { room }
}

/// The seqs of every message in the room, oldest first.
async fn history(addr: SocketAddr, token: &str, room: &str) -> Vec<u64> {
    common::process::history_seqs(addr, token, room).await
}

/// Everything acknowledged is served: alice logs in, her room has all
/// `count` messages, 1..count.
async fn assert_everything(addr: SocketAddr, world: &World, count: u64) {
    let http = common::http_client();
    let token = login(&http, addr).await.expect("alice can still log in");
    assert_eq!(
        history(addr, &token, &world.room).await,
        (1..=count).collect::<Vec<_>>()
    );
}

/// Every file under `dir`, with its BLAKE3-free fingerprint: the bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let entry = entry.expect("entry");
            let path = entry.path();
            if entry.file_type().expect("type").is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read");
                out.insert(path.strip_prefix(dir).expect("prefix").to_owned(), bytes);
            }
        }
    }
    out
}

/// A fixed-seed xorshift: damage that is the same on every run.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

fn largest_file(db: &Path) -> PathBuf {
    let files = snapshot(db);
    let (rel, _) = files
        .iter()
        .max_by_key(|(_, bytes)| bytes.len())
        .expect("a file");
    db.join(rel)
}

fn overwrite(path: &Path, range: std::ops::Range<usize>, seed: u64) {
    let mut bytes = std::fs::read(path).expect("read");
    let end = range.end.min(bytes.len());
    let start = range.start.min(end);
    Noise(seed).fill(&mut bytes[start..end]);
    std::fs::write(path, bytes).expect("write");
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    RandomStart,
    RandomMiddleHalf,
    RandomEnd,
    TruncatedToAThird,
    ForeignFiles,
}

fn damage(db: &Path, kind: Damage) {
    let file = largest_file(db);
    let len = std::fs::metadata(&file).expect("meta").len() as usize;
    match kind {
        Damage::RandomStart => overwrite(&file, 0..600, 1),
        Damage::RandomMiddleHalf => overwrite(&file, len / 4..3 * len / 4, 2),
        Damage::RandomEnd => overwrite(&file, len.saturating_sub(600)..len, 3),
        Damage::TruncatedToAThird => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .expect("open");
            f.set_len(len as u64 / 3).expect("truncate");
        }
        Damage::ForeignFiles => {
            for (rel, bytes) in snapshot(db) {
                let mut foreign = vec![0u8; bytes.len().max(4096)];
                Noise(4 + bytes.len() as u64).fill(&mut foreign);
                std::fs::write(db.join(rel), foreign).expect("write");
            }
        }
    }
}

/// Starts on `data`, which must be refused: non-zero exit, a message naming
/// the folder and what to do, no file changed.
fn assert_refused(data: &Path, why: &str) -> String {
    let before = snapshot(data);
    let refused = match start(data) {
        Ok(running) => {
            running.kill();
            panic!("{why}: the server started on a database it must refuse");
        }
        Err(r) => r,
    };
    assert_ne!(refused.code, Some(0), "{why}: {}", refused.stderr);
    assert!(
        refused.code.is_some(),
        "{why}: killed by a signal (a panic?)"
    );
    let data_name = data.display().to_string();
    assert!(
        refused.stderr.contains(&data_name),
        "{why}: the message names the folder: {}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("mesh-server check --data"),
        "{why}: the message says what to do: {}",
        refused.stderr
    );
    assert!(
        !refused.stderr.contains("panicked"),
        "{why}: no panic: {}",
        refused.stderr
    );
    assert!(
        snapshot(data) == before,
        "{why}: the data folder changed during a refused start"
    );
    refused.stderr
}

/// A server with [`MESSAGES`] acknowledged messages, stopped cleanly.
async fn populated_and_stopped(data: &Path) -> World {
    let server = start(data).expect("first start");
    let world = populate(server.addr).await;
    server.stop();
    world
}

async fn damage_case(kind: Damage) {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let world = populated_and_stopped(&data).await;
    damage(&data.join("db"), kind);
    let before = snapshot(&data);
    match start(&data) {
        Ok(server) => {
            eprintln!("{kind:?}: served");
            // Allowed only if nothing acknowledged is missing.
            assert_everything(server.addr, &world, MESSAGES).await;
            server.kill();
        }
        Err(refused) => {
            eprintln!("{kind:?}: refused: {}", refused.stderr);
            assert_ne!(refused.code, Some(0));
            assert!(
                refused.stderr.contains(&data.display().to_string()),
                "{kind:?}: {}",
                refused.stderr
            );
            assert!(!refused.stderr.contains("panicked"), "{}", refused.stderr);
            assert!(snapshot(&data) == before, "{kind:?}: files changed");
        }
    }
}

#[tokio::test]
async fn random_bytes_at_the_start_are_refused_or_harmless() {
    damage_case(Damage::RandomStart).await;
}

#[tokio::test]
async fn random_bytes_over_the_middle_half_are_refused_or_harmless() {
    damage_case(Damage::RandomMiddleHalf).await;
}

#[tokio::test]
async fn random_bytes_at_the_end_are_refused_or_harmless() {
    damage_case(Damage::RandomEnd).await;
}

#[tokio::test]
async fn a_database_truncated_to_a_third_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    populated_and_stopped(&data).await;
    damage(&data.join("db"), Damage::TruncatedToAThird);
    assert_refused(&data, "truncated");
}

#[tokio::test]
async fn foreign_files_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    populated_and_stopped(&data).await;
    damage(&data.join("db"), Damage::ForeignFiles);
    assert_refused(&data, "foreign files");
}

#[tokio::test]
async fn foreign_files_without_a_record_are_refused_not_replaced() {
    // No record (an earlier mesh's folder, say), and a db/ full of another
    // program's files: a clear error, not a fresh empty server.
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("db")).expect("mkdir");
    std::fs::write(data.join("db").join("notes.txt"), b"not a database").expect("write");
    assert_refused(&data, "foreign folder");
}

#[tokio::test]
async fn an_older_copy_of_the_database_is_refused() {
    // db/ restored from a copy taken after fewer acknowledged writes, under
    // the newer integrity record: acknowledged messages would be missing.
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let world = populated_and_stopped(&data).await;
    let old = dir.path().join("old-db");
    copy_dir(&data.join("db"), &old);

    let server = start(&data).expect("second start");
    let token = login(&common::http_client(), server.addr)
        .await
        .expect("login");
    send(server.addr, &token, &world.room, MESSAGES + 1, 1).await;
    server.stop();

    std::fs::remove_dir_all(data.join("db")).expect("rm");
    copy_dir(&old, &data.join("db"));
    let stderr = assert_refused(&data, "older copy");
    assert!(stderr.contains("acknowledged"), "{stderr}");
}

#[tokio::test]
async fn a_database_of_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    populated_and_stopped(&data).await;
    {
        let db = sled::open(data.join("db")).expect("sled");
        db.insert(b"#schema", &2u64.to_be_bytes()[..])
            .expect("insert");
        db.flush().expect("flush");
    }
    let stderr = assert_refused(&data, "newer schema");
    assert!(stderr.contains("newer mesh"), "{stderr}");
}

#[tokio::test]
async fn a_missing_database_with_a_record_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    populated_and_stopped(&data).await;
    std::fs::remove_dir_all(data.join("db")).expect("rm");
    assert_refused(&data, "missing db/");
}

#[tokio::test]
async fn kill_9_and_clean_restarts_keep_everything_and_log_no_error() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let server = start(&data).expect("start");
    let world = populate(server.addr).await;
    let first = server.stop();

    // Clean restart: opened directly, nothing logged as an error.
    let server = start(&data).expect("clean restart");
    assert_everything(server.addr, &world, MESSAGES).await;
    let token = login(&common::http_client(), server.addr)
        .await
        .expect("login");
    send(server.addr, &token, &world.room, MESSAGES + 1, 5).await;
    let second = server.stop();
    for log in [&first, &second] {
        assert!(
            !log.lines().any(|l| l.contains("ERROR")),
            "a clean start and stop log no ERROR:\n{log}"
        );
        assert!(!log.contains("on a copy"), "no check needed:\n{log}");
    }

    // kill -9: the next start checks a copy, and finds everything.
    let server = start(&data).expect("restart");
    send(server.addr, &token, &world.room, MESSAGES + 6, 5).await;
    server.kill();
    let server = start(&data).expect("start after kill -9");
    assert_everything(server.addr, &world, MESSAGES + 10).await;
    let third = server.stop();
    assert!(third.contains("on a copy"), "{third}");
    assert!(!third.lines().any(|l| l.contains("ERROR")), "{third}");
}

fn check(data: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-server"))
        .args(["check", "--data"])
        .arg(data)
        .output()
        .expect("run check");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn check_reports_whole_damaged_and_busy_folders() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let server = start(&data).expect("start");
    populate(server.addr).await;
    let (code, out) = check(&data);
    assert_eq!(
        code,
        Some(2),
        "a running server's folder is not checked: {out}"
    );
    assert!(out.contains("in use"), "{out}");
    server.stop();

    let before = snapshot(&data);
    let (code, out) = check(&data);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("OK"), "{out}");
    assert!(out.contains(&format!("{MESSAGES} messages")), "{out}");
    assert!(out.contains("1 users"), "{out}");
    assert!(snapshot(&data) == before, "check changes nothing");

    damage(&data.join("db"), Damage::TruncatedToAThird);
    let before = snapshot(&data);
    let (code, out) = check(&data);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("NOT OK"), "{out}");
    assert!(snapshot(&data) == before, "check changes nothing");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}
