//! Figure 7, P2P transfer: file bytes per second between two agents over
//! loopback, against a raw quinn bulk stream and a raw TCP stream.
//!
//! NOT MEASURED YET. The P2P layer (`mesh-core` feature `p2p`) is being
//! written on another branch and is not in this one. When it lands, replace
//! the body of [`run`] with: start mesh-server, register two users in one
//! room, run two agents, send a file of a few hundred MiB between them and
//! time it; then time the same bytes over a bare quinn stream and a bare
//! TCP stream on loopback, and fill the figure like the others (value,
//! baseline, ratio). Nothing else has to change: `main.rs` already lists the
//! figure and `all` already runs it.

use crate::ctx::Ctx;
use crate::report::Figure;

/// What the tool prints for this figure until it is measured.
pub(crate) const NOT_YET: &str = "p2p: not measured yet (needs mesh-core p2p)";

pub(crate) async fn run(_ctx: &Ctx) -> anyhow::Result<Figure> {
    Ok(Figure::not_measured(
        "p2p",
        "P2P file transfer bytes/s between two agents over loopback vs raw quinn and TCP",
        NOT_YET,
    ))
}
