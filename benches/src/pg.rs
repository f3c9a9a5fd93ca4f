//! PostgreSQL and NATS for figures 13 and 14: their URLs (`--postgres`,
//! `--nats`, or `MESH_TEST_POSTGRES` / `MESH_TEST_NATS` as
//! `scripts/services.sh` exports them), a fresh database per run, and the
//! CPU time of the services' processes: PostgreSQL's postmaster is the
//! parent of our own backend (`pg_backend_pid()`), and its CPU is its own
//! plus its live backends' plus what it reaped; nats-server is found by
//! its command line (`-p PORT`).

use std::time::Duration;

use anyhow::{Context as _, bail};
pub(crate) use mesh_core::storage::postgres::tokio_postgres;
use tokio_postgres::{Client, NoTls};

use crate::ctx::Ctx;

/// Where to get the services, said once for every error.
const HOW: &str = "start them with `source scripts/services.sh && start_services` \
                   (it exports MESH_TEST_POSTGRES and MESH_TEST_NATS), or pass \
                   --postgres postgres://USER@HOST:PORT/DB and --nats nats://HOST:PORT";

/// The PostgreSQL URL, or an error that says how to get one.
pub(crate) fn postgres_url(ctx: &Ctx, figure: &str) -> anyhow::Result<String> {
    match &ctx.postgres {
        Some(url) if !url.is_empty() => Ok(url.clone()),
        _ => bail!("{figure} needs PostgreSQL and no URL was given: {HOW}"),
    }
}

/// The NATS URL, or an error that says how to get one.
pub(crate) fn nats_url(ctx: &Ctx, figure: &str) -> anyhow::Result<String> {
    match &ctx.nats {
        Some(url) if !url.is_empty() => Ok(url.clone()),
        _ => bail!("{figure} needs NATS and no URL was given: {HOW}"),
    }
}

/// A connection to the PostgreSQL the figure uses (as the URL's user,
/// who must be allowed to create databases), the databases made for the
/// run (dropped by [`Pg::drop_databases`]) and the postmaster's pid.
pub(crate) struct Pg {
    url: String,
    admin: Client,
    made: Vec<String>,
    /// The postmaster, when it runs on this machine.
    pub(crate) postmaster: Option<u32>,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg")
            .field("made", &self.made)
            .field("postmaster", &self.postmaster)
            .finish_non_exhaustive()
    }
}

/// Connects to `url` (spawning the connection's task).
pub(crate) async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) =
        tokio::time::timeout(Duration::from_secs(10), tokio_postgres::connect(url, NoTls))
            .await
            .with_context(|| format!("connecting to {url} timed out"))?
            .with_context(|| format!("connecting to PostgreSQL at {url}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

impl Pg {
    pub(crate) async fn connect(url: &str) -> anyhow::Result<Self> {
        let admin = connect(url).await?;
        let backend: i32 = admin
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        let postmaster = u32::try_from(backend)
            .ok()
            .and_then(|pid| proc_stat(pid).map(|s| s.ppid))
            .filter(|ppid| comm(*ppid).is_some_and(|c| c.starts_with("postgres")));
        Ok(Self {
            url: url.to_owned(),
            admin,
            made: Vec::new(),
            postmaster,
        })
    }

    /// A fresh, empty database (`mesh_bench_<random>`); its URL.
    pub(crate) async fn create_database(&mut self) -> anyhow::Result<String> {
        let name = format!(
            "mesh_bench_{}",
            mesh_core::protocol::RoomId::new().as_uuid().simple()
        );
        self.admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| {
                format!("CREATE DATABASE {name} (does the URL's user have CREATEDB?)")
            })?;
        self.made.push(name.clone());
        with_database(&self.url, &name)
    }

    /// Drops the databases made for the run (best effort; their servers
    /// must be stopped).
    pub(crate) async fn drop_databases(&mut self) {
        for name in std::mem::take(&mut self.made) {
            if let Err(e) = self
                .admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
            {
                eprintln!("could not drop the database {name}: {e}");
            }
        }
    }

    /// Bytes of WAL written so far (the whole PostgreSQL cluster).
    pub(crate) async fn wal_bytes(&self) -> anyhow::Result<i64> {
        let row = self
            .admin
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// `xact_commit` and `tup_fetched` of a database made for the run
    /// (PostgreSQL's statistics, which backends report up to a second or,
    /// when idle, up to ten seconds late).
    pub(crate) async fn db_stats(&self, url: &str) -> anyhow::Result<(i64, i64)> {
        let name = url
            .split('?')
            .next()
            .and_then(|u| u.rsplit_once('/'))
            .map(|(_, db)| db.to_owned())
            .context("a database in the URL")?;
        let row = self
            .admin
            .query_one(
                "SELECT xact_commit, tup_fetched FROM pg_stat_database WHERE datname = $1",
                &[&name],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }
}

/// `url` with its database replaced by `name` (query kept).
fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let host_and_path = &base[after_scheme..];
    let prefix = match host_and_path.find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    if prefix.len() <= after_scheme {
        bail!("cannot read a host from the PostgreSQL URL {url}");
    }
    Ok(match query {
        Some(q) => format!("{prefix}/{name}?{q}"),
        None => format!("{prefix}/{name}"),
    })
}

/// What `/proc/<pid>/stat` says about CPU time and the parent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcStat {
    pub(crate) ppid: u32,
    /// utime + stime, seconds.
    pub(crate) own: f64,
    /// cutime + cstime: children it waited for, seconds.
    pub(crate) reaped: f64,
}

pub(crate) fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Whole-line fields 4 (ppid), 14-17 (utime, stime, cutime, cstime).
    let num = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok());
    Some(ProcStat {
        ppid: f.get(1)?.parse().ok()?,
        // USER_HZ is 100 on every Linux this runs on.
        own: (num(11)? + num(12)?) / 100.0,
        reaped: (num(13)? + num(14)?) / 100.0,
    })
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// CPU seconds of `root` and its children, live or reaped (PostgreSQL:
/// the postmaster and its backends and workers).
pub(crate) fn tree_cpu_secs(root: u32) -> f64 {
    let Some(top) = proc_stat(root) else {
        return 0.0;
    };
    let children: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(proc_stat)
        .filter(|s| s.ppid == root)
        .map(|s| s.own + s.reaped)
        .sum();
    top.own + top.reaped + children
}

/// The nats-server serving `url`: the one whose command line names the
/// URL's port, else the only nats-server running.
pub(crate) fn nats_pid(url: &str) -> Option<u32> {
    let port = url
        .split(',')
        .next()?
        .rsplit(':')
        .next()?
        .trim_end_matches('/')
        .to_owned();
    let mut all = Vec::new();
    for pid in std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args
            .first()
            .is_none_or(|a| a.rsplit('/').next() != Some("nats-server"))
        {
            continue;
        }
        let names_port = args
            .windows(2)
            .any(|w| matches!(w[0].as_str(), "-p" | "--port" | "-port") && w[1] == port)
            || args.iter().any(|a| *a == format!("--port={port}"));
        if names_port {
            return Some(pid);
        }
        all.push(pid);
    }
    if all.len() == 1 { all.pop() } else { None }
}

/// Bytes a process has read and written through system calls (sockets
/// included), from `/proc/<pid>/io`.
pub(crate) fn io_bytes(pid: u32) -> Option<(u64, u64)> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| {
        io.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
    };
    Some((field("rchar:")?, field("wchar:")?))
}

/// The services' CPU seconds and NATS's socket bytes so far, to take
/// differences of.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ServiceSnapshot {
    pub(crate) pg_cpu: f64,
    pub(crate) nats_cpu: f64,
    pub(crate) nats_in: u64,
    pub(crate) nats_out: u64,
}

/// Where the services' processes are (None: not found on this machine).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ServicePids {
    pub(crate) pg: Option<u32>,
    pub(crate) nats: Option<u32>,
}

impl ServicePids {
    pub(crate) fn snapshot(&self) -> ServiceSnapshot {
        let (nats_in, nats_out) = self.nats.and_then(io_bytes).unwrap_or_default();
        ServiceSnapshot {
            pg_cpu: self.pg.map_or(0.0, tree_cpu_secs),
            nats_cpu: self.nats.map_or(0.0, crate::ctx::cpu_secs),
            nats_in,
            nats_out,
        }
    }

    /// What happened since `before`.
    pub(crate) fn since(&self, before: &ServiceSnapshot) -> ServiceSnapshot {
        let now = self.snapshot();
        ServiceSnapshot {
            pg_cpu: now.pg_cpu - before.pg_cpu,
            nats_cpu: now.nats_cpu - before.nats_cpu,
            nats_in: now.nats_in.saturating_sub(before.nats_in),
            nats_out: now.nats_out.saturating_sub(before.nats_out),
        }
    }

    /// For the figure's details: which processes were measured.
    pub(crate) fn describe(&self) -> String {
        let one = |what: &str, pid: Option<u32>| match pid {
            Some(pid) => format!("{what} pid {pid}"),
            None => format!("{what} not found (its CPU is not counted)"),
        };
        format!(
            "{}; {}",
            one("PostgreSQL postmaster (with its backends)", self.pg),
            one("nats-server", self.nats)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_of_a_url() {
        assert_eq!(
            with_database("postgres://mesh@127.0.0.1:5432/mesh", "b").ok(),
            Some("postgres://mesh@127.0.0.1:5432/b".to_owned())
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "b").ok(),
            Some("postgres://u:p@h/b?sslmode=disable".to_owned())
        );
        assert_eq!(
            with_database("postgres://h:1", "b").ok(),
            Some("postgres://h:1/b".to_owned())
        );
    }

    #[test]
    fn reads_own_stat() {
        let me = proc_stat(std::process::id()).expect("stat");
        assert!(me.ppid > 0);
        assert!(tree_cpu_secs(std::process::id()) >= 0.0);
        assert!(io_bytes(std::process::id()).is_some());
    }
}
