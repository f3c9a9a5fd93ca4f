//! `mesh-load`: mesh's load tool. Each subcommand measures one figure of
//! `BENCHMARKS.md` against a baseline taken in the same run and prints the
//! figure, the baseline and their ratio; `all` runs the whole set.
//!
//! It starts what it measures: the release `mesh-server` binary (on
//! `127.0.0.1:0`, in a temporary data folder) or the bare baseline server
//! (`mesh-load baseline-server`), pinned to the last core while the load
//! runs on the others. Loopback only; every loop is bounded in time.
//! Figures 13 and 14 run mesh-server on PostgreSQL (and NATS) given with
//! `--postgres`/`--nats` or `MESH_TEST_POSTGRES`/`MESH_TEST_NATS`
//! (`scripts/services.sh`); each run makes databases of its own and drops
//! them.
//!
//! ```text
//! cargo build --release -p mesh-server-bin -p mesh-benches
//! target/release/mesh-load all --json bench.json
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod baseline;
mod churn;
mod client;
mod cluster;
mod ctx;
mod durable;
mod fanout;
mod held;
mod latency;
mod login_memory;
mod logins;
mod memory;
mod p2p;
mod pg;
mod pg_durable;
mod proc;
mod relay;
mod report;
mod stats;
mod tls;

use ctx::Ctx;
use report::Figure;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "mesh's load tool: every figure against a baseline from the same run"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
    /// The release mesh-server binary [default: next to this binary].
    #[arg(long, global = true)]
    server_bin: Option<PathBuf>,
    /// Write the figures (and the machine) as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Seconds in each measured window.
    #[arg(long, global = true, default_value_t = 10.0)]
    secs: f64,
    /// Smaller sizes and shorter windows: a smoke test, not a measurement.
    #[arg(long, global = true)]
    quick: bool,
    /// Do not pin the servers and the load to different cores.
    #[arg(long, global = true)]
    no_pin: bool,
    /// Where the servers' data folders go [default: the temp folder].
    #[arg(long, global = true)]
    data_parent: Option<PathBuf>,
    /// PostgreSQL for figures 13 and 14: a postgres:// URL of a role that
    /// may create databases (each run makes and drops its own).
    #[arg(
        long,
        global = true,
        env = "MESH_TEST_POSTGRES",
        hide_env_values = true,
        value_name = "URL"
    )]
    postgres: Option<String>,
    /// NATS for figure 13 (nats://HOST:PORT).
    #[arg(
        long,
        global = true,
        env = "MESH_TEST_NATS",
        hide_env_values = true,
        value_name = "URL"
    )]
    nats: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// 1. Room broadcast deliveries/s, 1,000 subscribers, vs a bare broadcast loop.
    Fanout,
    /// 2. Send-to-delivery p50/p99/p999 at half of peak vs WebSocket ping p99.
    Latency,
    /// 3. Server RSS per idle, joined connection at 10,000 connections.
    Memory,
    /// 4. Durable messages/s vs raw sled insert + flush; disk bytes per byte.
    Durable,
    /// 5. Logins/s vs the argon2id bound; /health latency meanwhile.
    Logins,
    /// 6. Connect + authenticate + join per second vs TCP accept + upgrade.
    Churn,
    /// 7. P2P file bytes/s between two agents vs raw quinn and raw TCP.
    P2p,
    /// 8. Server RSS growth after 1,000 registrations and logins.
    LoginMemory,
    /// 9. 10,000 joined connections chatting for a minute: drops, errors, memory.
    Held,
    /// 10. Churn over TLS (wss://) vs the same over plain TCP, same run.
    TlsChurn,
    /// 11. Fan-out to wss:// subscribers vs ws:// subscribers, same run.
    TlsFanout,
    /// 10 and 11: the cost of TLS.
    Tls,
    /// 12. P2P file bytes/s through mesh-server's relay vs direct; CPU/GiB; TTFB.
    P2pRelay,
    /// 13. Fan-out over 3 nodes (PostgreSQL + NATS) vs 1 node; latency, CPU/delivery.
    ClusterFanout,
    /// 14. Acknowledged messages/s on PostgreSQL vs raw INSERTs; latency, CPU/message.
    PgDurable,
    /// 13 and 14: mesh on PostgreSQL (and NATS).
    Cluster,
    /// Every figure, in this order.
    All,
    /// The bare tokio-tungstenite broadcast server (started by the tool).
    #[command(hide = true)]
    BaselineServer,
    /// mesh-server (the library) with a UDP port and the relay's budgets
    /// lifted, for the relay figure (started by the tool).
    #[command(hide = true)]
    RelayServer {
        #[arg(long)]
        data: PathBuf,
        /// Keep the relay's default budgets (64 MiB/s per session).
        #[arg(long)]
        stock_limits: bool,
    },
    /// argon2id verifications/s on N threads (started by the tool).
    #[command(hide = true)]
    Argon2Bound {
        #[arg(long)]
        threads: usize,
        #[arg(long)]
        secs: f64,
    },
}

const ALL: [&str; 14] = [
    "fanout",
    "latency",
    "memory",
    "durable",
    "logins",
    "churn",
    "p2p",
    "login-memory",
    "held",
    "tls-churn",
    "tls-fanout",
    "p2p-relay",
    "cluster-fanout",
    "pg-durable",
];

/// Figures that need PostgreSQL (and NATS): `all` leaves them out, saying
/// so, when no URL is given.
const NEED_SERVICES: [&str; 2] = ["cluster-fanout", "pg-durable"];

fn main() -> anyhow::Result<()> {
    // reqwest has rustls without a provider of its own: ring, the
    // workspace's one provider, is the process default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    match args.command {
        Cmd::BaselineServer => {
            return tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(baseline::serve());
        }
        Cmd::Argon2Bound { threads, secs } => return logins::bound(threads, secs),
        Cmd::RelayServer {
            ref data,
            stock_limits,
        } => return relay::serve(data.clone(), stock_limits),
        _ => {}
    }
    let names: Vec<&str> = match args.command {
        Cmd::Fanout => vec!["fanout"],
        Cmd::Latency => vec!["latency"],
        Cmd::Memory => vec!["memory"],
        Cmd::Durable => vec!["durable"],
        Cmd::Logins => vec!["logins"],
        Cmd::Churn => vec!["churn"],
        Cmd::P2p => vec!["p2p"],
        Cmd::LoginMemory => vec!["login-memory"],
        Cmd::Held => vec!["held"],
        Cmd::TlsChurn => vec!["tls-churn"],
        Cmd::TlsFanout => vec!["tls-fanout"],
        Cmd::Tls => vec!["tls-churn", "tls-fanout"],
        Cmd::P2pRelay => vec!["p2p-relay"],
        Cmd::ClusterFanout => vec!["cluster-fanout"],
        Cmd::PgDurable => vec!["pg-durable"],
        Cmd::Cluster => vec!["cluster-fanout", "pg-durable"],
        _ => ALL.to_vec(),
    };

    // Many connections: raise our soft open-files limit to the hard one.
    // The servers we start inherit it.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => eprintln!("open-files limit: {n}"),
        Err(e) => eprintln!("could not raise the open-files limit ({e}); try `ulimit -n 30000`"),
    }
    let pin = proc::Pinning::detect(!args.no_pin);
    pin.pin_self()?;
    let load_threads = match &pin.load {
        Some(_) => pin.cores - pin.server_cores(),
        None => pin.cores,
    };
    let server_bin = match args.server_bin {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("this binary's folder")?
            .join("mesh-server"),
    };
    let ctx = Ctx {
        server_bin,
        pin: pin.clone(),
        data_parent: args.data_parent.unwrap_or_else(std::env::temp_dir),
        window: Duration::from_secs_f64(if args.quick {
            args.secs.min(2.0)
        } else {
            args.secs
        }),
        quick: args.quick,
        postgres: args.postgres.clone(),
        nats: args.nats.clone(),
    };
    let everything = matches!(args.command, Cmd::All);
    eprintln!(
        "servers on cores {}, load on cores {} ({} worker threads){}",
        pin.server.as_deref().unwrap_or("any"),
        pin.load.as_deref().unwrap_or("any"),
        load_threads.max(1),
        if args.quick {
            "; QUICK: smoke test sizes, not a measurement"
        } else {
            ""
        }
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(load_threads.max(1))
        .enable_all()
        .build()?;
    let started = Instant::now();
    let mut figures = Vec::new();
    let mut failed = false;
    for name in names {
        eprintln!("-- {name} ...");
        let at = Instant::now();
        let missing = ctx.postgres.is_none() || (name == "cluster-fanout" && ctx.nats.is_none());
        if everything && NEED_SERVICES.contains(&name) && missing {
            let figure = Figure::not_measured(
                name_static(name),
                name,
                "not run: needs PostgreSQL and NATS (--postgres/--nats, or MESH_TEST_POSTGRES/MESH_TEST_NATS from scripts/services.sh)",
            );
            figure.print();
            figures.push(figure);
            continue;
        }
        let result = runtime.block_on(run_one(name, &ctx));
        let figure = match result {
            Ok(f) => f,
            Err(e) => {
                failed = true;
                Figure::not_measured(name_static(name), name, &format!("FAILED: {e:#}"))
            }
        };
        figure.print();
        eprintln!("   ({name} took {:.0} s)", at.elapsed().as_secs_f64());
        figures.push(figure);
    }
    let total = started.elapsed().as_secs_f64();
    println!("\nall figures in {total:.0} s");
    summary(&figures);
    if let Some(path) = args.json {
        let doc = serde_json::json!({
            "machine": report::machine(pin.cores),
            "pinning": {"server": pin.server, "load": pin.load},
            "shared_machine_note": "loadavg_at_start shows other work on the machine; compare ratios, not absolute figures",
            "quick": args.quick,
            "window_secs": ctx.window.as_secs_f64(),
            "total_secs": total,
            "figures": figures,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    // Let the runtime's idle connections go without waiting for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if failed {
        anyhow::bail!("some figures failed");
    }
    Ok(())
}

fn name_static(name: &str) -> &'static str {
    ALL.iter().find(|n| **n == name).copied().unwrap_or("?")
}

async fn run_one(name: &str, ctx: &Ctx) -> anyhow::Result<Figure> {
    match name {
        "fanout" => fanout::run(ctx).await,
        "latency" => latency::run(ctx).await,
        "memory" => memory::run(ctx).await,
        "durable" => durable::run(ctx).await,
        "logins" => logins::run(ctx).await,
        "churn" => churn::run(ctx).await,
        "p2p" => p2p::run(ctx).await,
        "login-memory" => login_memory::run(ctx).await,
        "held" => held::run(ctx).await,
        "tls-churn" => tls::run_churn(ctx).await,
        "tls-fanout" => tls::run_fanout(ctx).await,
        "p2p-relay" => relay::run(ctx).await,
        "cluster-fanout" => cluster::run(ctx).await,
        "pg-durable" => pg_durable::run(ctx).await,
        other => anyhow::bail!("no figure named {other:?}"),
    }
}

/// One line per figure: the ratio and the verdict.
fn summary(figures: &[Figure]) {
    println!(
        "{:<9} {:>16} {:>16} {:>8}  goal",
        "figure", "measured", "baseline", "ratio"
    );
    for f in figures {
        if !f.measured {
            println!("{:<9} {}", f.name, f.note);
            continue;
        }
        let num = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), report::fmt_num);
        let verdict = match f.goal_met {
            Some(true) => "met: ",
            Some(false) => "MISSED: ",
            None => "-",
        };
        println!(
            "{:<9} {:>16} {:>16} {:>8}  {verdict}{}",
            f.name,
            num(f.value),
            num(f.baseline),
            f.ratio
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.3}")),
            f.goal
        );
        if let Some(b) = &f.baseline2 {
            println!(
                "{:<9} {:>16} {:>16} {:>8}  (second baseline)",
                "",
                "",
                report::fmt_num(b.value),
                format!("{:.3}", b.ratio)
            );
        }
    }
}
