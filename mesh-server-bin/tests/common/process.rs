//! The real `mesh-server` binary as a child process on `127.0.0.1:0`: for
//! the tests that kill it, restart it on the same data folder or read what
//! it logs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// A running server: its process, address, and everything it has written
/// to stderr so far. Killed on drop.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    /// Woken at every new log line.
    logged: Arc<std::sync::Condvar>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// A start that ended before the server listened.
#[derive(Debug)]
pub struct Refused {
    pub code: Option<i32>,
    pub stderr: String,
}

/// Starts the binary on `data` with extra `flags` and waits until it
/// listens (its `listening on` log line), or until it exits without.
pub fn start_binary(data: &Path, flags: &[&str]) -> Result<ServerProcess, Refused> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-server"))
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(flags)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mesh-server");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let log = Arc::new(Mutex::new(Vec::new()));
    loop {
        let Some(line) = lines.next() else {
            // stderr closed: the process ended without listening.
            let status = child.wait().expect("wait");
            let stderr = log.lock().expect("log").join("\n");
            return Err(Refused {
                code: status.code(),
                stderr,
            });
        };
        let line = line.expect("read stderr");
        log.lock().expect("log").push(line.clone());
        if let Some(rest) = line.split("listening on ").nth(1) {
            // `listening on ADDR (http)`
            let addr = rest
                .split_whitespace()
                .next()
                .and_then(|a| a.parse().ok())
                .expect("address");
            // Keep draining (and keeping) stderr so the server never blocks.
            let logged = Arc::new(std::sync::Condvar::new());
            let reader = std::thread::spawn({
                let log = Arc::clone(&log);
                let logged = Arc::clone(&logged);
                move || {
                    for line in lines.map_while(Result::ok) {
                        log.lock().expect("log").push(line);
                        logged.notify_all();
                    }
                    logged.notify_all();
                }
            });
            return Ok(ServerProcess {
                child,
                addr,
                log,
                logged,
                reader: Some(reader),
            });
        }
    }
}

impl ServerProcess {
    /// Waits (up to `timeout`, a hang guard) for a log line containing
    /// `needle`; returns it.
    pub fn wait_for_log(&self, needle: &str, timeout: std::time::Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        let mut log = self.log.lock().expect("log");
        loop {
            if let Some(line) = log.iter().find(|l| l.contains(needle)) {
                return Some(line.clone());
            }
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            log = self.logged.wait_timeout(log, left).expect("log").0;
        }
    }

    /// SIGTERM, then waits for a clean exit; returns the whole stderr.
    pub fn stop(mut self) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let exit = self.child.wait().expect("wait");
        assert!(exit.success(), "mesh-server exited with {exit}");
        if let Some(r) = self.reader.take() {
            r.join().expect("reader");
        }
        self.log.lock().expect("log").join("\n")
    }

    /// `kill -9`, and waits until it is gone.
    pub fn kill(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every message of `room`, oldest first, paged through
/// `GET /api/rooms/{id}/messages?after=` 100 at a time; each page must be a 200.
pub async fn history(addr: SocketAddr, token: &str, room: &str) -> Vec<serde_json::Value> {
    let http = super::http_client();
    let (mut all, mut after) = (Vec::new(), 0);
    loop {
        let resp = http
            .get(format!(
                "http://{addr}/api/rooms/{room}/messages?after={after}&limit=100"
            ))
            .bearer_auth(token)
            .send()
            .await
            .expect("history");
        assert_eq!(resp.status(), 200, "history of {room}");
        let page: serde_json::Value = resp.json().await.expect("json");
        let msgs = page["messages"].as_array().expect("messages").clone();
        let more = page["has_more"] == true;
        if let Some(m) = msgs.last() {
            after = m["seq"].as_u64().expect("seq");
        }
        all.extend(msgs);
        if !more {
            return all;
        }
    }
}

/// The seqs of [`history`].
pub async fn history_seqs(addr: SocketAddr, token: &str, room: &str) -> Vec<u64> {
    history(addr, token, room)
        .await
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}
