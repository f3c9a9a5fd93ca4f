//! What every figure needs: where the server binary is, how to pin, how
//! long to measure; and the small measuring helpers they share.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::{StreamExt as _, TryStreamExt as _};

use crate::client::{self, Ws};
use crate::proc::{Pinning, Server, ServerKind};

/// Settings of a run.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) server_bin: PathBuf,
    pub(crate) pin: Pinning,
    /// Where the servers' data folders (and the raw sled baseline) go.
    pub(crate) data_parent: PathBuf,
    /// Length of each measured window.
    pub(crate) window: Duration,
    /// Smaller sizes, for a smoke test.
    pub(crate) quick: bool,
    /// PostgreSQL (a `postgres://` URL of a role that may create
    /// databases), for figures 13 and 14.
    pub(crate) postgres: Option<String>,
    /// NATS (`nats://`), for figure 13.
    pub(crate) nats: Option<String>,
}

/// Flags that lift mesh-server's rate and connection limits, which a load
/// test would hit at once (10,000 WebSockets plus the HTTP clients are past
/// the default total of 10,000); queue limits stay at their defaults.
const UNLIMITED: [&str; 12] = [
    "--frame-burst",
    "1000000",
    "--frame-rate",
    "1000000",
    "--login-addr-burst",
    "1000000",
    "--login-addr-refill-ms",
    "1",
    "--max-connections",
    "100000",
    "--max-connections-per-addr",
    "100000",
];

impl Ctx {
    /// mesh-server with lifted rate limits, pinned to the server core.
    pub(crate) fn mesh(&self) -> anyhow::Result<Server> {
        self.mesh_on(self.pin.server.as_deref())
    }

    /// mesh-server with lifted rate limits, on the given cores (None: any).
    pub(crate) fn mesh_on(&self, cpus: Option<&str>) -> anyhow::Result<Server> {
        let kind = ServerKind::Mesh {
            bin: self.server_bin.clone(),
            flags: UNLIMITED.iter().map(|s| (*s).to_owned()).collect(),
        };
        Server::start(&kind, cpus, &self.data_parent)
    }

    /// mesh-server with lifted rate limits and `extra` flags, pinned to the
    /// server cores; in `data` when given (the caller keeps it: the nodes
    /// of one deployment share it), else in a fresh temporary folder.
    pub(crate) fn mesh_with(
        &self,
        extra: &[String],
        data: Option<&Path>,
    ) -> anyhow::Result<Server> {
        let mut flags: Vec<String> = UNLIMITED.iter().map(|s| (*s).to_owned()).collect();
        flags.extend(extra.iter().cloned());
        let bin = self.server_bin.clone();
        let kind = match data {
            Some(data) => ServerKind::MeshIn {
                bin,
                flags,
                data: data.to_owned(),
            },
            None => ServerKind::Mesh { bin, flags },
        };
        Server::start(&kind, self.pin.server.as_deref(), &self.data_parent)
    }

    /// mesh-server serving HTTPS with `tls`'s certificate (otherwise as
    /// [`Ctx::mesh`]); its [`Server::target`] trusts `tls`'s CA.
    pub(crate) fn mesh_tls(&self, tls: &crate::tls::TestTls) -> anyhow::Result<Server> {
        let mut flags: Vec<String> = UNLIMITED.iter().map(|s| (*s).to_owned()).collect();
        flags.extend([
            "--tls-cert".to_owned(),
            tls.cert.display().to_string(),
            "--tls-key".to_owned(),
            tls.key.display().to_string(),
        ]);
        let kind = ServerKind::Mesh {
            bin: self.server_bin.clone(),
            flags,
        };
        let mut server = Server::start(&kind, self.pin.server.as_deref(), &self.data_parent)?;
        server.tls = Some(tls.client.clone());
        Ok(server)
    }

    /// The bare tokio-tungstenite broadcast server, pinned like mesh-server.
    pub(crate) fn baseline(&self) -> anyhow::Result<Server> {
        Server::start(
            &ServerKind::Baseline,
            self.pin.server.as_deref(),
            &self.data_parent,
        )
    }
}

/// Opens `n` WebSockets, 64 at a time. With tokens, each completes
/// `system.hello` with `tokens(i)`; without, it is a bare upgrade.
pub(crate) async fn open_many(
    server: &Server,
    n: usize,
    token: impl Fn(usize) -> Option<String>,
) -> anyhow::Result<Vec<Ws>> {
    let target = server.target();
    futures_util::stream::iter((0..n).map(token))
        .map(|t| {
            let target = target.clone();
            async move {
                match t {
                    Some(t) => client::ws_hello(target, &t).await,
                    None => client::ws(target, None).await,
                }
            }
        })
        .buffered(64)
        .try_collect()
        .await
        .with_context(|| {
            format!(
                "opening {n} connections; server log:\n{}",
                server.last_log()
            )
        })
}

/// The median (upper median for an even count); 0 when empty.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// CPU seconds (user + system) a process has used so far.
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        // USER_HZ is 100 on every Linux this runs on.
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => 0.0,
    }
}

/// (busy, total) jiffies of each core, from `/proc/stat`.
fn core_jiffies() -> Vec<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            // idle and iowait
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// CPU use of the server and of the load tool over a window, and how busy
/// each core was (by anything: the machine may be shared).
#[derive(Debug, Clone)]
pub(crate) struct CpuMeter {
    pid: u32,
    server0: f64,
    load0: f64,
    cores0: Vec<(u64, u64)>,
    at: std::time::Instant,
}

impl CpuMeter {
    pub(crate) fn start(server: &Server) -> Self {
        Self::start_pid(server.pid())
    }

    pub(crate) fn start_pid(pid: u32) -> Self {
        Self {
            pid,
            server0: cpu_secs(pid),
            load0: cpu_secs(std::process::id()),
            cores0: core_jiffies(),
            at: std::time::Instant::now(),
        }
    }

    /// Each core's busy share (everything on the machine, softirqs too),
    /// e.g. `cpu0 100%, cpu1 97%`.
    pub(crate) fn cores(&self) -> String {
        core_jiffies()
            .iter()
            .zip(&self.cores0)
            .enumerate()
            .map(|(i, ((b1, t1), (b0, t0)))| {
                // Per-CPU counters can step back (iowait): never underflow.
                let share = b1.saturating_sub(*b0) as f64 / t1.saturating_sub(*t0).max(1) as f64;
                format!("cpu{i} {:.0}%", share * 100.0)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// (server, load tool) CPU use as a share of one core.
    pub(crate) fn read(&self) -> (f64, f64) {
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        (
            (cpu_secs(self.pid) - self.server0) / secs,
            (cpu_secs(std::process::id()) - self.load0) / secs,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_time() {
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        assert!(cpu_secs(std::process::id()) > 0.0);
    }
}
