//! Figure 3, idle memory: resident memory the server adds per
//! authenticated, joined, idle connection at 10,000 connections, read from
//! `/proc/<pid>/status` of the server process.

use std::time::Duration;

use crate::client::{Api, Ws};
use crate::ctx::{Ctx, open_many};
use crate::proc::Server;
use crate::report::Figure;

/// The connections stay open, each read by a task that answers pings.
fn hold(conns: Vec<Ws>, into: &mut Vec<tokio::task::JoinHandle<()>>) {
    into.extend(
        conns
            .into_iter()
            .map(|ws| tokio::spawn(crate::client::drain(ws))),
    );
}

/// (RSS before, RSS after, connections) for `n` connections made by `open`.
async fn measure(
    server: &Server,
    n: usize,
    first: usize,
    token: impl Fn(usize) -> Option<String> + Copy,
) -> anyhow::Result<(u64, u64)> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.rss_kib()?;
    let mut held = Vec::new();
    // The first connections of each user first, then the rest, so that the
    // "online" announcements go to few connections.
    hold(open_many(server, first, token).await?, &mut held);
    hold(
        open_many(server, n - first, |i| token(i + first)).await?,
        &mut held,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_kib()?;
    held.iter().for_each(|h| h.abort());
    Ok((before, after))
}

pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Figure> {
    let wanted = if ctx.quick { 1000 } else { 10_000 };
    // Each connection costs a descriptor here and one in the server; both
    // processes have our (raised) limit.
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    let n = wanted.min(usize::try_from(limit.saturating_sub(200)).unwrap_or(wanted));
    let users = 100.min(n);

    let server = ctx.mesh()?;
    let api = Api::new(server.addr);
    let accounts = api.register_many("mem", users).await?;
    api.room_with("memory", &accounts).await?;
    let (m0, m1) = measure(&server, n, users, |i| {
        Some(accounts[i % users].token.clone())
    })
    .await?;
    drop(server);

    let server = ctx.baseline()?;
    let (b0, b1) = measure(&server, n, users, |_| None).await?;
    drop(server);

    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / n as f64;
    let (mesh, base) = (per(m0, m1), per(b0, b1));
    let mut fig = Figure::new(
        "memory",
        format!("server RSS added per authenticated, joined, idle connection at {n} connections"),
    )
    .value(mesh, "KiB/connection")
    .baseline(
        "bare tokio-tungstenite server (same buffer sizes), idle upgraded connections",
        base,
    )
    .goal("<= 16 KiB per connection", mesh <= 16.0)
    .detail("mesh_rss", format!("{m0} KiB before, {m1} KiB after"))
    .detail("base_rss", format!("{b0} KiB before, {b1} KiB after"))
    .detail("users", users as u64);
    if n < wanted {
        fig = fig.note(format!(
            "only {n} connections: the open-files limit is {limit} (raise the hard limit, `ulimit -Hn`)"
        ));
    }
    Ok(fig)
}
