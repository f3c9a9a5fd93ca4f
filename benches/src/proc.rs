//! The processes under test: the release `mesh-server` (or the bare
//! baseline server, which is this binary's `baseline-server` subcommand),
//! spawned on `127.0.0.1:0` and pinned to their own core where there are
//! two; their resident memory from `/proc/<pid>/status`.

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::client::Target;

/// How the load and the servers share the cores.
#[derive(Debug, Clone)]
pub(crate) struct Pinning {
    /// `taskset -c` list for servers (None: not pinned).
    pub(crate) server: Option<String>,
    /// `taskset -c` list for the load tool.
    pub(crate) load: Option<String>,
    /// Cores of the machine (counted before pinning).
    pub(crate) cores: usize,
}

impl Pinning {
    /// Server on the last core, load on the others, when there are at least
    /// two cores and `taskset` exists; otherwise nothing is pinned.
    pub(crate) fn detect(enabled: bool) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let taskset = Command::new("taskset")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !enabled || cores < 2 || !taskset {
            return Self {
                server: None,
                load: None,
                cores,
            };
        }
        let last = cores - 1;
        let load = if last == 1 {
            "0".to_owned()
        } else {
            format!("0-{}", last - 1)
        };
        Self {
            server: Some(last.to_string()),
            load: Some(load),
            cores,
        }
    }

    /// Pins this process (every thread; call before starting any).
    pub(crate) fn pin_self(&self) -> anyhow::Result<()> {
        if let Some(cpus) = &self.load {
            let status = Command::new("taskset")
                .args(["-a", "-cp", cpus, &std::process::id().to_string()])
                .stdout(Stdio::null())
                .status()
                .context("running taskset")?;
            if !status.success() {
                bail!("taskset -a -cp {cpus} failed");
            }
        }
        Ok(())
    }

    /// Cores the server may use (for "per server core" figures).
    pub(crate) fn server_cores(&self) -> usize {
        match &self.server {
            Some(list) => list.split(',').count(),
            None => self.cores,
        }
    }
}

/// A server child process; killed when dropped.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: SocketAddr,
    /// Where its data lives (mesh-server only); removed on drop.
    pub(crate) data: Option<tempfile::TempDir>,
    /// How clients speak TLS to it, when it serves HTTPS.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    log: Arc<Mutex<VecDeque<String>>>,
}

/// What to start.
#[derive(Debug, Clone)]
pub(crate) enum ServerKind {
    /// The release `mesh-server` binary with these extra flags.
    Mesh { bin: PathBuf, flags: Vec<String> },
    /// The same in a data folder the caller owns and keeps (the nodes of
    /// one deployment share it, so that they share the signing keys).
    MeshIn {
        bin: PathBuf,
        flags: Vec<String>,
        data: PathBuf,
    },
    /// The bare tokio-tungstenite broadcast server (this binary).
    Baseline,
    /// mesh-server's library with a UDP port, serving from this binary
    /// (`mesh-load relay-server`); the relay's budgets lifted unless
    /// `stock_limits`.
    Relay { stock_limits: bool },
}

impl Server {
    /// Starts a server and waits for its `listening on <addr>` line.
    /// `cpus` is a `taskset -c` list, or None to leave it unpinned.
    pub(crate) fn start(
        kind: &ServerKind,
        cpus: Option<&str>,
        data_parent: &Path,
    ) -> anyhow::Result<Self> {
        let (program, args, data) = match kind {
            ServerKind::Mesh { bin, flags } => {
                if !bin.exists() {
                    bail!(
                        "{} not found: build it with `cargo build --release -p mesh-server-bin` \
                         (or pass --server-bin)",
                        bin.display()
                    );
                }
                let dir = tempfile::Builder::new()
                    .prefix("mesh-bench-")
                    .tempdir_in(data_parent)
                    .context("creating the server's data folder")?;
                let mut args = vec![
                    "--listen".to_owned(),
                    "127.0.0.1:0".to_owned(),
                    "--data".to_owned(),
                    dir.path().display().to_string(),
                ];
                args.extend(flags.iter().cloned());
                (bin.clone(), args, Some(dir))
            }
            ServerKind::MeshIn { bin, flags, data } => {
                if !bin.exists() {
                    bail!(
                        "{} not found: build it with `cargo build --release -p mesh-server-bin` \
                         (or pass --server-bin)",
                        bin.display()
                    );
                }
                let mut args = vec![
                    "--listen".to_owned(),
                    "127.0.0.1:0".to_owned(),
                    "--data".to_owned(),
                    data.display().to_string(),
                ];
                args.extend(flags.iter().cloned());
                (bin.clone(), args, None)
            }
            ServerKind::Baseline => (
                std::env::current_exe().context("finding this binary")?,
                vec!["baseline-server".to_owned()],
                None,
            ),
            ServerKind::Relay { stock_limits } => {
                let dir = tempfile::Builder::new()
                    .prefix("mesh-bench-relay-")
                    .tempdir_in(data_parent)
                    .context("creating the server's data folder")?;
                let mut args = vec![
                    "relay-server".to_owned(),
                    "--data".to_owned(),
                    dir.path().display().to_string(),
                ];
                if *stock_limits {
                    args.push("--stock-limits".to_owned());
                }
                (
                    std::env::current_exe().context("finding this binary")?,
                    args,
                    Some(dir),
                )
            }
        };
        let mut cmd = match cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        args.iter().for_each(|a| {
            cmd.arg(a);
        });
        cmd.env("RUST_LOG", "warn,mesh_server=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let stderr = child.stderr.take().context("server stderr")?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let keep = log.clone();
        // Drains stderr for the server's whole life (a full pipe would
        // block it) and keeps the last lines for error messages.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = parse_listening(&line) {
                    let _ = tx.send(addr);
                }
                let mut log = keep.lock().unwrap_or_else(|e| e.into_inner());
                if log.len() >= 50 {
                    log.pop_front();
                }
                log.push_back(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let lines: Vec<String> = log
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .cloned()
                    .collect();
                bail!(
                    "{} did not say `listening on`; its log:\n{}",
                    program.display(),
                    lines.join("\n")
                );
            }
        };
        Ok(Self {
            child,
            addr,
            data,
            tls: None,
            log,
        })
    }

    /// Where clients connect (over TLS when it serves HTTPS).
    pub(crate) fn target(&self) -> Target {
        Target {
            addr: self.addr,
            tls: self.tls.clone(),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory (VmRSS) of the server, in KiB.
    pub(crate) fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.pid())
    }

    /// The last lines the server logged.
    pub(crate) fn last_log(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// SIGTERM, then waits (up to 15 s) for a graceful exit; kills it after.
    pub(crate) fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `listening on 127.0.0.1:1234` anywhere in a log line.
pub(crate) fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// VmRSS of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .context("no VmRSS line")
}

/// Total size of the files under `dir`, in bytes.
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_listening_address() {
        assert_eq!(
            parse_listening("INFO mesh_server: listening on 127.0.0.1:8443 (https)"),
            "127.0.0.1:8443".parse().ok()
        );
        let line = "2026-01-01T00:00:00.000Z  INFO mesh_server: listening on 127.0.0.1:41234";
        assert_eq!(
            parse_listening(line),
            Some("127.0.0.1:41234".parse().expect("addr"))
        );
        assert_eq!(
            parse_listening("listening on 127.0.0.1:9 more"),
            "127.0.0.1:9".parse().ok()
        );
        assert_eq!(parse_listening("nothing here"), None);
    }

    #[test]
    fn reads_own_rss() {
        assert!(rss_kib(std::process::id()).expect("rss") > 0);
    }
}
