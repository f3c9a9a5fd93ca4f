//! `mesh agent`: stays online and accepts the P2P sessions the server
//! announces for this connection: files and folders go into
//! `--receive-dir` (and nowhere else; without it they are refused), and a
//! terminal someone shares is shown on stdout (viewing only: typing into a
//! shared terminal is `mesh join-terminal`).
//!
//! With `--json` each happening is one JSON line: `ready`,
//! `session_offered`, `progress`-free `received`, `terminal_output`,
//! `terminal_exit`, `session_failed`, `disconnected`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use mesh_core::client::{Event, HttpApi};
use mesh_core::p2p::{IncomingSession, P2pError, ReceiveOptions, TerminalEvent};
use mesh_core::protocol::{RoomId, SessionKind, UserId};
use serde_json::json;

use crate::config::Ctx;
use crate::output::{emit, human_bytes, progress_bar};
use crate::p2p::{Listener, PathArgs, path_word};

/// `mesh agent`.
#[derive(Debug, Args)]
pub(crate) struct AgentArgs {
    /// The only folder files and folders are received into (created if
    /// missing). Without it, file and folder sessions are refused.
    #[arg(long)]
    receive_dir: Option<PathBuf>,
    /// Replace files that already exist in --receive-dir (default: refuse them).
    #[arg(long)]
    overwrite: bool,
    /// The UDP address to listen on for P2P sessions.
    #[arg(long, default_value = "0.0.0.0:0")]
    bind: SocketAddr,
    /// An address (HOST:PORT) peers can reach this agent at; repeatable.
    /// Default: loopback and this machine's outgoing address, on the bound port.
    #[arg(long)]
    announce: Vec<String>,
    #[command(flatten)]
    paths: PathArgs,
}

/// Runs until Ctrl-C or until the server closes the connection for good.
pub(crate) async fn run(ctx: &Ctx, args: AgentArgs) -> anyhow::Result<()> {
    let receive_dir = match &args.receive_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            Some(
                dir.canonicalize()
                    .with_context(|| format!("opening {}", dir.display()))?,
            )
        }
        None => None,
    };
    let kinds = if receive_dir.is_some() {
        vec![
            SessionKind::File,
            SessionKind::Folder,
            SessionKind::Terminal,
        ]
    } else {
        vec![SessionKind::Terminal]
    };
    let mut listener = Listener::start(
        ctx,
        "mesh agent",
        args.bind,
        &args.announce,
        kinds,
        args.paths,
    )
    .await?;
    let user = ctx.saved.username.clone().unwrap_or_default();
    emit(
        ctx,
        json!({
            "event": "ready",
            "peer_id": listener.me(),
            "username": user,
            "fingerprint": listener.endpoint.fingerprint(),
            "addrs": listener.addrs,
            "receive_dir": receive_dir,
        }),
        || {
            format!(
                "agent online as {user} (peer {}), listening on {}; receiving into {}",
                listener.me().map(|p| p.to_string()).unwrap_or_default(),
                listener.addrs.join(", "),
                receive_dir
                    .as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|| "nothing (no --receive-dir)".into())
            )
        },
    );
    let ctx = Arc::new(ctx.clone());
    let opts = ReceiveOptions::default().overwrite(args.overwrite);
    let result = loop {
        let endpoint = listener.endpoint.clone();
        tokio::select! {
            event = listener.events.next() => match event {
                None => break Ok(()),
                Some(Event::P2pSessionCreated(grant)) => {
                    match listener.expect(&grant) {
                        Ok(true) => {
                            // Off the loop: the name takes a request.
                            let (ctx, http) = (ctx.clone(), listener.client.http().clone());
                            tokio::spawn(async move {
                                let s = &grant.session;
                                let who = name_of(&http, s.room_id, s.initiator_user_id).await;
                                emit(&ctx, json!({
                                    "event": "session_offered",
                                    "session_id": s.id,
                                    "kind": s.kind,
                                    "from": who,
                                }), || format!("{who} is opening a {} session", s.kind.as_str()));
                            });
                        }
                        Ok(false) => {}
                        Err(e) => emit(&ctx, json!({"event": "session_failed", "error": e.to_string()}),
                            || format!("ignoring a session: {e}")),
                    }
                }
                Some(Event::P2pSessionClosed { session_id, .. }) => {
                    listener.endpoint.forget_session(session_id);
                }
                // Listen as the new peer id the server assigned.
                Some(Event::Connected { peer_id, resumed: true, .. }) => {
                    listener.reconnected(peer_id).await;
                    emit(&ctx, json!({"event": "reconnected", "peer_id": peer_id}),
                        || "reconnected".to_owned());
                }
                Some(Event::Disconnected { reason, .. }) => {
                    emit(&ctx, json!({"event": "disconnected", "reason": reason}),
                        || format!("connection to the server lost ({reason}); reconnecting..."));
                }
                Some(Event::Closed { error }) => {
                    break match error {
                        Some(e) => Err(anyhow::Error::new(e).context("the server closed the connection")),
                        None => Ok(()),
                    };
                }
                Some(_) => {}
            },
            incoming = endpoint.accept() => match incoming {
                None => break Err(anyhow::anyhow!("the P2P endpoint closed")),
                // Refusals are worth telling; a loser of the initiator's
                // parallel attempts (one per announced address) is not.
                Some(Err(e @ P2pError::Refused { .. })) => emit(&ctx, json!({"event": "session_refused", "error": e.to_string()}),
                    || format!("refused a connection: {e}")),
                Some(Err(_)) => {}
                Some(Ok(session)) => {
                    tokio::spawn(handle(ctx.clone(), listener.client.http().clone(), session, receive_dir.clone(), opts.clone()));
                }
            },
            _ = tokio::signal::ctrl_c() => break Ok(()),
        }
    };
    listener.client.close().await;
    listener.endpoint.close();
    result
}

/// The username of `user` as a member of `room`, or the id if the server
/// does not say.
async fn name_of(http: &HttpApi, room: RoomId, user: UserId) -> String {
    http.members(room)
        .await
        .ok()
        .and_then(|ms| ms.into_iter().find(|m| m.user.id == user))
        .map(|m| m.user.username)
        .unwrap_or_else(|| user.to_string())
}

/// One accepted session, to its end.
async fn handle(
    ctx: Arc<Ctx>,
    http: HttpApi,
    session: IncomingSession,
    receive_dir: Option<PathBuf>,
    opts: ReceiveOptions,
) {
    let id = session.session_id();
    let path = session.path();
    let claims = session.claims();
    let who = name_of(&http, claims.room_id, claims.initiator_user_id).await;
    let kind = session.kind();
    let outcome: anyhow::Result<()> = async {
        match (kind, &receive_dir) {
            (SessionKind::File, Some(dir)) => {
                let bar = progress_bar(&ctx, 0, &format!("from {who}"));
                let report = session
                    .receive_file(dir, &opts, |p| {
                        bar.set_length(p.total);
                        bar.set_position(p.done);
                    })
                    .await?;
                bar.finish_and_clear();
                emit(
                    &ctx,
                    json!({
                        "event": "received", "kind": "file", "from": who, "session_id": id,
                        "path": report.path, "size": report.size, "via": path.as_str(),
                        "blake3": report.blake3.to_hex().to_string(),
                        "resumed_from": report.resumed_from,
                    }),
                    || {
                        format!(
                            "received {} ({}) from {who}, {}",
                            report.path.display(),
                            human_bytes(report.size),
                            path_word(path)
                        )
                    },
                );
            }
            (SessionKind::Folder, Some(dir)) => {
                let bar = progress_bar(&ctx, 0, &format!("from {who}"));
                let report = session
                    .receive_folder(dir, &opts, |p| {
                        bar.set_length(p.total);
                        bar.set_position(p.done);
                    })
                    .await?;
                bar.finish_and_clear();
                let size: u64 = report.files.iter().map(|f| f.size).sum();
                emit(
                    &ctx,
                    json!({
                        "event": "received", "kind": "folder", "from": who, "session_id": id,
                        "path": report.root, "files": report.files.len(), "dirs": report.dirs,
                        "size": size, "via": path.as_str(),
                    }),
                    || {
                        format!(
                            "received folder {} ({} files, {}) from {who}",
                            report.root.display(),
                            report.files.len(),
                            human_bytes(size)
                        )
                    },
                );
            }
            (SessionKind::Terminal, _) => {
                emit(
                    &ctx,
                    json!({"event": "terminal_started", "from": who, "session_id": id, "via": path.as_str()}),
                    || {
                        format!(
                            "-- {who} is sharing a terminal (view only; Ctrl-C stops the agent)"
                        )
                    },
                );
                let mut viewer = session.view_terminal().await?;
                while let Some(ev) = viewer.next_event().await? {
                    match ev {
                        TerminalEvent::Output(data) => {
                            if ctx.json {
                                emit(
                                    &ctx,
                                    json!({"event": "terminal_output", "session_id": id,
                                    "data": String::from_utf8_lossy(&data)}),
                                    String::new,
                                );
                            } else {
                                let mut out = std::io::stdout().lock();
                                let _ = out.write_all(&data);
                                let _ = out.flush();
                            }
                        }
                        TerminalEvent::Exit { code } => {
                            emit(
                                &ctx,
                                json!({"event": "terminal_exit", "session_id": id, "code": code}),
                                || format!("\n-- {who}'s terminal ended"),
                            );
                        }
                        _ => {}
                    }
                }
            }
            // Refused by the endpoint already (kinds); keep the match total.
            _ => anyhow::bail!("this agent does not accept {} sessions", kind.as_str()),
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        emit(
            &ctx,
            json!({"event": "session_failed", "session_id": id, "from": who, "error": format!("{e:#}")}),
            || format!("session with {who} failed: {e:#}"),
        );
    }
}
