//! Figure 5, logins: logins per second against the bound set by argon2id's
//! hash time on all the cores; and whether other requests (`/health`) are
//! slowed meanwhile.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::client::{Api, PASSWORD};
use crate::ctx::{CpuMeter, Ctx, median};
use crate::report::Figure;
use crate::stats::Samples;

/// `mesh-load argon2-bound`: verifies passwords on `threads` threads for
/// `secs` and prints verifications per second and CPU seconds per
/// verification. Runs as its own process so
/// that it can use every core while the load tool is pinned.
pub(crate) fn bound(threads: usize, secs: f64) -> anyhow::Result<()> {
    let hash = mesh_core::auth::password::hash(PASSWORD)?;
    let cpu0 = crate::ctx::cpu_secs(std::process::id());
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (hash, stop, done) = (hash.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(true) = mesh_core::auth::password::verify(PASSWORD, &hash) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let n = done.load(Ordering::Relaxed);
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let cpu = (crate::ctx::cpu_secs(std::process::id()) - cpu0) / n.max(1) as f64;
    println!("{rate} {cpu}");
    Ok(())
}

/// Runs `argon2-bound` on every core: (verifications per second, CPU
/// seconds per verification).
fn measure_bound(cores: usize, secs: f64) -> anyhow::Result<(f64, f64)> {
    let exe = std::env::current_exe()?;
    let all = format!("0-{}", cores.saturating_sub(1));
    let (threads, secs) = (cores.to_string(), secs.to_string());
    let args = ["argon2-bound", "--threads", &threads, "--secs", &secs];
    let out = Command::new("taskset")
        .args(["-c", &all])
        .arg(&exe)
        .args(args)
        .output()
        .or_else(|_| Command::new(&exe).args(args).output())
        .context("running argon2-bound")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut nums = text.split_whitespace().map(str::parse::<f64>);
    match (nums.next(), nums.next()) {
        (Some(Ok(rate)), Some(Ok(cpu))) => Ok((rate, cpu)),
        _ => anyhow::bail!(
            "argon2-bound said: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// `/health` round trips every 10 ms until `stop`.
async fn probe(api: Api, stop: Arc<AtomicBool>) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let at = Instant::now();
        api.health().await?;
        samples.push(at.elapsed());
    }
    Ok(samples)
}

/// Logins per second over `window` with `concurrency` clients, after a
/// second of warm-up; with `/health` probed alongside.
async fn storm(
    server: &crate::proc::Server,
    api: &Api,
    usernames: &[String],
    concurrency: usize,
    window: Duration,
) -> anyhow::Result<(f64, u64, Samples, f64, String)> {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let (api, stop, ok, refused) = (api.clone(), stop.clone(), ok.clone(), refused.clone());
            let username = usernames[i % usernames.len()].clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match api.login(&username).await {
                        Ok(true) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => refused.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let probe_stop = Arc::new(AtomicBool::new(false));
    let busy = tokio::spawn(probe(Api::new(server.addr), probe_stop.clone()));
    let (n0, t0, cpu) = (
        ok.load(Ordering::Relaxed),
        Instant::now(),
        CpuMeter::start(server),
    );
    tokio::time::sleep(window).await;
    let rate = (ok.load(Ordering::Relaxed) - n0) as f64 / t0.elapsed().as_secs_f64();
    let (server_cpu, _) = cpu.read();
    let cores = cpu.cores();
    probe_stop.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let busy = busy.await??;
    for t in tasks {
        let _ = t.await;
    }
    Ok((
        rate,
        refused.load(Ordering::Relaxed),
        busy,
        server_cpu,
        cores,
    ))
}

pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Figure> {
    let cores = ctx.pin.cores;
    let users = 8;
    let concurrency = 4 * cores;
    let rounds = if ctx.quick { 2 } else { 3 };
    let window = ctx.window / 2;

    // The server may use every core (we are pinned, and it would inherit
    // that): hashing on all of them is what is measured.
    let all_cores = format!("0-{}", cores.saturating_sub(1));
    let server = ctx.mesh_on(ctx.pin.load.as_ref().map(|_| all_cores.as_str()))?;
    let api = Api::new(server.addr);
    let accounts = api.register_many("login", users).await?;
    let usernames: Vec<String> = accounts.iter().map(|a| a.username.clone()).collect();

    // /health with the server idle.
    let stop = Arc::new(AtomicBool::new(false));
    let idle = tokio::spawn(probe(Api::new(server.addr), stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut idle = idle.await??;

    // Rounds: the bound (argon2id alone, every core) then the storm.
    let (mut rates, mut bounds, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    // CPU seconds per verification (bound) and per login (server).
    let (mut verify_cpu, mut login_cpu) = (Vec::new(), Vec::new());
    let mut busy_all = Samples::default();
    let mut refused = 0;
    let mut last = (0.0, String::new());
    for _ in 0..rounds {
        let secs = window.as_secs_f64();
        let (bound, per_verify) =
            tokio::task::spawn_blocking(move || measure_bound(cores, secs)).await??;
        let (rate, r, busy, cpu, busy_cores) =
            storm(&server, &api, &usernames, concurrency, window).await?;
        verify_cpu.push(per_verify);
        login_cpu.push(cpu / rate.max(1e-9));
        rates.push(rate);
        bounds.push(bound);
        ratios.push(rate / bound.max(1e-9));
        busy_all.extend(busy);
        refused += r;
        last = (cpu, busy_cores);
    }
    drop(server);

    let ratio = median(&ratios);
    let (v_cpu, l_cpu) = (median(&verify_cpu), median(&login_cpu));
    let cpu_ratio = v_cpu / l_cpu.max(1e-12);
    let (i50, i99, b50, b99) = (
        idle.quantile_ms(0.5),
        idle.quantile_ms(0.99),
        busy_all.quantile_ms(0.5),
        busy_all.quantile_ms(0.99),
    );
    let not_slowed = b99 <= (2.0 * i99).max(2.0);
    let list = ratios
        .iter()
        .map(|x| format!("{x:.3}"))
        .collect::<Vec<_>>()
        .join(", ");
    // On a shared machine the wall-clock rates depend on what else runs
    // (the bound process and the server do not get the same share of the
    // cores), so the figure is taken from CPU time: logins per second on
    // `cores` dedicated cores = cores / server CPU per login; the bound =
    // cores / CPU per argon2id verification.
    let n = cores as f64;
    let mut fig = Figure::new(
        "logins",
        format!(
            "logins per second on {cores} cores (argon2id verify + device write + token), from the server's CPU time per login"
        ),
    )
    .value(n / l_cpu.max(1e-12), "logins/s")
    .baseline(
        format!(
            "{cores} / argon2id verification CPU time ({:.1} ms, measured in a process of its own)",
            v_cpu * 1e3
        ),
        n / v_cpu.max(1e-12),
    );
    fig.ratio = Some(cpu_ratio);
    Ok(fig
        .goal(
            "ratio >= 0.9, and /health not slowed meanwhile",
            cpu_ratio >= 0.9 && not_slowed,
        )
        .detail(
            "wall_clock",
            format!(
                "{:.1} logins/s against {:.1} verifications/s on {cores} threads, ratio {ratio:.3} (rounds {list}); unreliable on a shared machine",
                median(&rates),
                median(&bounds)
            ),
        )
        .detail("cpu/login", format!("{:.1} ms server CPU per login", l_cpu * 1e3))
        .detail("health_idle", format!("p50 {i50:.3} ms, p99 {i99:.3} ms"))
        .detail(
            "health_storm",
            format!(
                "p50 {b50:.3} ms, p99 {b99:.3} ms ({} probes)",
                busy_all.len()
            ),
        )
        .detail("refused", refused)
        .detail("in_flight", concurrency as u64)
        .detail("busy", last.1)
        .detail(
            "srv_cpu",
            format!("last round: {:.0}% of one core", last.0 * 100.0),
        )
        .note(
            "\"not slowed\" = /health p99 during the storm at most 2x idle (or 2 ms); \
             ratio = median of the rounds' ratios",
        ))
}
