//! Figure 8, memory after sign-ins: the server's resident memory after
//! 1,000 registrations and logins, against its idle resident memory.
//!
//! argon2id needs 19 MiB of working memory per hash. Allocated and freed
//! per hash, it stayed with the allocator (measured: 370 MiB after 50
//! sign-ups, for good); `mesh_core::auth::password` now keeps one working
//! block per hashing thread. The goal is at most idle + 64 MiB.

use std::time::Duration;

use futures_util::StreamExt as _;

use crate::client::Api;
use crate::ctx::Ctx;
use crate::report::Figure;

/// Runs `n` calls of `f` with `concurrency` in flight; returns how many failed.
async fn many<F, Fut>(n: usize, concurrency: usize, f: F) -> usize
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    futures_util::stream::iter((0..n).map(f))
        .buffer_unordered(concurrency)
        .filter(|r| std::future::ready(!matches!(r, Ok(true))))
        .count()
        .await
}

pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Figure> {
    let total = if ctx.quick { 200 } else { 1000 };
    let (registrations, logins) = (total / 2, total - total / 2);
    let concurrency = 4 * ctx.pin.cores;
    let all_cores = format!("0-{}", ctx.pin.cores.saturating_sub(1));
    let server = ctx.mesh_on(ctx.pin.load.as_ref().map(|_| all_cores.as_str()))?;
    let api = Api::new(server.addr);
    api.health().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = server.rss_kib()?;

    let failed_reg = many(registrations, concurrency, |i| {
        let api = api.clone();
        async move { api.register(&format!("signin{i}")).await.map(|_| true) }
    })
    .await;
    let after_reg = server.rss_kib()?;
    let failed_login = many(logins, concurrency, |i| {
        let api = api.clone();
        async move {
            api.login(&format!("signin{}", i % registrations.max(1)))
                .await
        }
    })
    .await;
    let after = server.rss_kib()?;
    // Memory the allocator hands back shows after a pause; memory it keeps does not.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settled = server.rss_kib()?;
    drop(server);
    anyhow::ensure!(
        failed_reg == 0 && failed_login == 0,
        "{failed_reg} registrations and {failed_login} logins failed"
    );

    let mib = |kib: u64| kib as f64 / 1024.0;
    let growth = mib(after.max(settled).saturating_sub(idle));
    Ok(Figure::new(
        "login-memory",
        format!(
            "server RSS growth after {registrations} registrations and {logins} logins ({concurrency} in flight)"
        ),
    )
    .value(growth, "MiB")
    .goal("at most idle + 64 MiB", growth <= 64.0)
    .detail("idle_rss", format!("{:.1} MiB", mib(idle)))
    .detail("after_registrations", format!("{:.1} MiB", mib(after_reg)))
    .detail("after_logins", format!("{:.1} MiB", mib(after)))
    .detail("5s_later", format!("{:.1} MiB", mib(settled)))
    .note("growth = max(after, 5 s later) - idle; argon2id at m=19 MiB, t=2, p=1"))
}
