//! `mesh send-file PEER PATH` and `mesh send-folder PEER DIR`: a direct
//! session to the peer's agent, with a progress bar (rate, time left) on a
//! terminal. The receiver verifies every file's BLAKE3 hash; an interrupted
//! file resumes where the receiver's verified part ends when sent again.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use mesh_core::p2p::SendOptions;
use mesh_core::protocol::SessionKind;
use serde_json::json;

use crate::config::Ctx;
use crate::output::{emit, human_bytes, progress_bar};
use crate::p2p::{self, explain, timeout};

/// `mesh send-file`.
#[derive(Debug, Args)]
pub(crate) struct SendFileArgs {
    /// The peer's username (or peer id): its agent must be online.
    peer: String,
    /// The file to send.
    path: PathBuf,
    /// The room (id or name) you share with the peer; default: any.
    #[arg(long)]
    room: Option<String>,
    /// Seconds to try reaching the peer's agent before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    connect_timeout: f64,
    #[command(flatten)]
    paths: p2p::PathArgs,
    /// Send under another name.
    #[arg(long)]
    name: Option<String>,
}

/// `mesh send-folder`.
#[derive(Debug, Args)]
pub(crate) struct SendFolderArgs {
    /// The peer's username (or peer id): its agent must be online.
    peer: String,
    /// The folder to send, with everything under it.
    dir: PathBuf,
    /// The room (id or name) you share with the peer; default: any.
    #[arg(long)]
    room: Option<String>,
    /// Seconds to try reaching the peer's agent before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    connect_timeout: f64,
    #[command(flatten)]
    paths: p2p::PathArgs,
}

/// Sends one file.
pub(crate) async fn send_file(ctx: &Ctx, args: SendFileArgs) -> anyhow::Result<()> {
    let meta = std::fs::metadata(&args.path)
        .with_context(|| format!("reading {}", args.path.display()))?;
    if !meta.is_file() {
        bail!(
            "{} is not a file (use `mesh send-folder` for folders)",
            args.path.display()
        );
    }
    let opened = p2p::open(
        ctx,
        &args.peer,
        args.room.as_deref(),
        SessionKind::File,
        timeout(args.connect_timeout)?,
        args.paths,
    )
    .await?;
    let peer = opened.peer.user.username.clone();
    let addrs = opened.peer.p2p.clone().map(|i| i.addrs).unwrap_or_default();
    let id = opened.session.session_id();
    let path = opened.session.path();
    let connect_secs = opened.connect_time.as_secs_f64();
    let label = args
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bar = progress_bar(ctx, meta.len(), &format!("{label} -> {peer}"));
    let mut opts = SendOptions::default();
    if let Some(name) = &args.name {
        opts = opts.name(name.clone());
    }
    let started = Instant::now();
    let p2p::Opened { session, link, .. } = opened;
    let result = session
        .send_file(&args.path, &opts, |p| {
            bar.set_length(p.total);
            bar.set_position(p.done);
        })
        .await;
    bar.finish_and_clear();
    link.finish(id).await;
    let report = result.map_err(|e| explain(e, &peer, &addrs))?;
    let secs = started.elapsed().as_secs_f64();
    emit(
        ctx,
        json!({
            "sent": report.path, "name": report.name, "to": peer, "session_id": id,
            "size": report.size, "transferred": report.transferred,
            "resumed_from": report.resumed_from,
            "blake3": report.blake3.to_hex().to_string(), "seconds": secs,
            "path": path.as_str(), "connect_seconds": connect_secs,
        }),
        || {
            let resumed = if report.resumed_from > 0 {
                format!(", resumed at {}", human_bytes(report.resumed_from))
            } else {
                String::new()
            };
            format!(
                "sent {} ({}) to {peer} in {secs:.1} s{resumed}, {}; the receiver verified it",
                report.name,
                human_bytes(report.size),
                p2p::path_word(path)
            )
        },
    );
    Ok(())
}

/// Sends a folder.
pub(crate) async fn send_folder(ctx: &Ctx, args: SendFolderArgs) -> anyhow::Result<()> {
    if !std::fs::metadata(&args.dir)
        .with_context(|| format!("reading {}", args.dir.display()))?
        .is_dir()
    {
        bail!(
            "{} is not a folder (use `mesh send-file` for files)",
            args.dir.display()
        );
    }
    let opened = p2p::open(
        ctx,
        &args.peer,
        args.room.as_deref(),
        SessionKind::Folder,
        timeout(args.connect_timeout)?,
        args.paths,
    )
    .await?;
    let peer = opened.peer.user.username.clone();
    let addrs = opened.peer.p2p.clone().map(|i| i.addrs).unwrap_or_default();
    let id = opened.session.session_id();
    let path = opened.session.path();
    let connect_secs = opened.connect_time.as_secs_f64();
    let bar = progress_bar(ctx, 0, &format!("-> {peer}"));
    let started = Instant::now();
    let p2p::Opened { session, link, .. } = opened;
    let result = session
        .send_folder(&args.dir, &SendOptions::default(), |p| {
            bar.set_length(p.total);
            bar.set_position(p.done);
            bar.set_message(format!("{} -> {peer}", p.name));
        })
        .await;
    bar.finish_and_clear();
    link.finish(id).await;
    let report = result.map_err(|e| explain(e, &peer, &addrs))?;
    let size: u64 = report.files.iter().map(|f| f.size).sum();
    let secs = started.elapsed().as_secs_f64();
    emit(
        ctx,
        json!({
            "sent": report.root, "to": peer, "session_id": id, "files": report.files.len(),
            "dirs": report.dirs, "size": size, "skipped": report.skipped, "seconds": secs,
            "path": path.as_str(), "connect_seconds": connect_secs,
        }),
        || {
            let mut text = format!(
                "sent {} ({} files, {}) to {peer} in {secs:.1} s, {}",
                report.root.display(),
                report.files.len(),
                human_bytes(size),
                p2p::path_word(path)
            );
            if !report.skipped.is_empty() {
                text.push_str(&format!(
                    "; skipped (symlinks out of the folder, special files): {}",
                    report
                        .skipped
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            text
        },
    );
    Ok(())
}
