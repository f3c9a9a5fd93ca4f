//! `mesh share-terminal PEER` and `mesh join-terminal`.
//!
//! The sharer always opens the session, so a terminal is never shared
//! without the sharer running `share-terminal` on purpose. It is read-only
//! unless the sharer passes `--allow-control` or answers yes when asked on
//! a terminal; a read-only share refuses every keystroke (the viewer is
//! told). The program runs on a fresh PTY on the sharer's machine; it ends
//! when it exits or when the viewer leaves.
//!
//! `join-terminal` waits (like an agent, announcing itself to the server)
//! for one peer to share a terminal with it, shows the output, and sends
//! the lines typed. `mesh agent` also shows terminals shared with it, but
//! does not type into them.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;

use anyhow::anyhow;
use clap::Args;
use mesh_core::client::Event;
use mesh_core::p2p::{IncomingSession, P2pError, TerminalCommand, TerminalEvent, TerminalPolicy};
use mesh_core::protocol::SessionKind;
use serde_json::json;
use tokio::io::AsyncBufReadExt;

use crate::config::Ctx;
use crate::output::emit;
use crate::p2p::{self, Listener, explain};

/// `mesh share-terminal`.
#[derive(Debug, Args)]
pub(crate) struct ShareArgs {
    /// The viewer's username (or peer id), running `mesh join-terminal` or `mesh agent`.
    peer: String,
    /// The room (id or name) you share with the peer; default: any.
    #[arg(long)]
    room: Option<String>,
    /// Seconds to try reaching the peer's agent before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    connect_timeout: f64,
    #[command(flatten)]
    paths: p2p::PathArgs,
    /// Let the viewer type into the terminal and resize it (default:
    /// read-only; on a terminal you are asked).
    #[arg(long)]
    allow_control: bool,
    /// The program to share and its arguments, after `--` (default: your shell).
    #[arg(last = true)]
    command: Vec<String>,
}

/// `mesh join-terminal`.
#[derive(Debug, Args)]
pub(crate) struct JoinArgs {
    /// The UDP address to listen on for the session.
    #[arg(long, default_value = "0.0.0.0:0")]
    bind: SocketAddr,
    /// An address (HOST:PORT) the sharer can reach this machine at; repeatable.
    #[arg(long)]
    announce: Vec<String>,
    #[command(flatten)]
    paths: p2p::PathArgs,
}

fn ask_control(peer: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    print!("Let {peer} type into the shared terminal? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Shares a terminal until the program exits or the viewer leaves.
pub(crate) async fn share(ctx: &Ctx, args: ShareArgs) -> anyhow::Result<()> {
    let control = args.allow_control || (!ctx.json && ask_control(&args.peer)?);
    let policy = if control {
        TerminalPolicy::allow_control()
    } else {
        TerminalPolicy::read_only()
    };
    let cmd = match args.command.split_first() {
        None => TerminalCommand::shell(),
        Some((program, rest)) => rest
            .iter()
            .fold(TerminalCommand::new(program), |c, a| c.arg(a)),
    };
    let opened = p2p::open(
        ctx,
        &args.peer,
        args.room.as_deref(),
        SessionKind::Terminal,
        p2p::timeout(args.connect_timeout)?,
        args.paths,
    )
    .await?;
    let peer = opened.peer.user.username.clone();
    let addrs = opened.peer.p2p.clone().map(|i| i.addrs).unwrap_or_default();
    let id = opened.session.session_id();
    let path = opened.session.path();
    let mode = if control { "with control" } else { "read-only" };
    emit(
        ctx,
        json!({"event": "sharing", "with": peer, "session_id": id, "allow_control": control,
            "path": path.as_str(), "connect_seconds": opened.connect_time.as_secs_f64()}),
        || {
            format!(
                "sharing a terminal with {peer} ({mode}, {}); it ends when the program exits or {peer} leaves",
                p2p::path_word(path)
            )
        },
    );
    let p2p::Opened { session, link, .. } = opened;
    let result = session.share_terminal(cmd, policy).await;
    link.finish(id).await;
    let code = result.map_err(|e| explain(e, &peer, &addrs))?;
    emit(
        ctx,
        json!({"event": "ended", "code": code}),
        || match code {
            Some(c) => format!("the shared program exited with code {c}"),
            None => format!("{peer} left; the shared program was stopped"),
        },
    );
    Ok(())
}

/// Waits for a terminal share and uses it.
pub(crate) async fn join(ctx: &Ctx, args: JoinArgs) -> anyhow::Result<()> {
    let mut listener = Listener::start(
        ctx,
        "mesh join-terminal",
        args.bind,
        &args.announce,
        vec![SessionKind::Terminal],
        args.paths,
    )
    .await?;
    emit(
        ctx,
        json!({"event": "ready", "peer_id": listener.me(), "addrs": listener.addrs}),
        || {
            format!(
                "waiting for someone to share a terminal with you (peer {}); Ctrl-C to stop",
                listener.me().map(|p| p.to_string()).unwrap_or_default()
            )
        },
    );
    let waited: anyhow::Result<Option<IncomingSession>> = loop {
        let endpoint = listener.endpoint.clone();
        tokio::select! {
            event = listener.events.next() => match event {
                None => break Err(anyhow!("the server connection ended")),
                Some(Event::P2pSessionCreated(grant)) => {
                    if let Err(e) = listener.expect(&grant) {
                        emit(ctx, json!({"event": "session_failed", "error": e.to_string()}),
                            || format!("ignoring a session: {e}"));
                    }
                }
                Some(Event::Connected { peer_id, resumed: true, .. }) => listener.reconnected(peer_id).await,
                Some(Event::Closed { error }) => {
                    break Err(match error {
                        Some(e) => anyhow::Error::new(e).context("the server closed the connection"),
                        None => anyhow!("the server connection closed"),
                    });
                }
                Some(_) => {}
            },
            incoming = endpoint.accept() => match incoming {
                None => break Err(anyhow!("the P2P endpoint closed")),
                Some(Err(e @ P2pError::Refused { .. })) => emit(ctx, json!({"event": "session_refused", "error": e.to_string()}),
                    || format!("refused a connection: {e}")),
                Some(Err(_)) => {}
                Some(Ok(session)) => break Ok(Some(session)),
            },
            _ = tokio::signal::ctrl_c() => break Ok(None),
        }
    };
    let incoming = match waited {
        Ok(Some(session)) => session,
        other => {
            listener.client.close().await;
            listener.endpoint.close();
            return other.map(drop);
        }
    };
    let id = incoming.session_id();
    emit(
        ctx,
        json!({"event": "terminal_started", "session_id": id, "path": incoming.path().as_str()}),
        || "-- connected to the shared terminal; lines you type are sent".to_owned(),
    );
    let viewer = match incoming.view_terminal().await {
        Ok(viewer) => viewer,
        Err(e) => {
            listener.client.close_p2p_session(id);
            listener.client.close().await;
            listener.endpoint.close();
            return Err(anyhow::Error::new(e).context("joining the terminal"));
        }
    };
    let (mut reader, mut writer) = viewer.split();
    // Lines typed go to the sharer; end of input (Ctrl-D) leaves.
    let mut typing = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if writer.send_input(format!("{line}\n")).await.is_err() {
                break;
            }
        }
        writer
    });
    let mut typing_done = false;
    let result = loop {
        tokio::select! {
            ev = reader.next_event() => match ev {
                Ok(Some(TerminalEvent::Output(data))) => {
                    if ctx.json {
                        emit(ctx, json!({"event": "terminal_output", "data": String::from_utf8_lossy(&data)}), String::new);
                    } else {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(&data);
                        let _ = out.flush();
                    }
                }
                Ok(Some(TerminalEvent::Refused { message, .. })) => {
                    emit(ctx, json!({"event": "input_refused", "message": message}),
                        || format!("\n-- input refused: {message} (the share is read-only)"));
                }
                Ok(Some(TerminalEvent::Exit { code })) => {
                    emit(ctx, json!({"event": "terminal_exit", "code": code}),
                        || "\n-- the shared terminal ended".to_owned());
                }
                Ok(Some(_)) => {}
                Ok(None) => break Ok(()),
                Err(e) => break Err(anyhow::Error::new(e).context("the shared terminal")),
            },
            writer = &mut typing, if !typing_done => {
                typing_done = true;
                if let Ok(writer) = writer {
                    emit(ctx, json!({"event": "left"}), || "\n-- you left the shared terminal".to_owned());
                    writer.close();
                    break Ok(());
                }
            },
            _ = tokio::signal::ctrl_c() => break Ok(()),
        }
    };
    // Closing the reader closes the connection (when the share ended);
    // the server goodbye below gives QUIC time to tell the sharer.
    drop(reader);
    if !typing_done {
        typing.abort();
        if let Ok(writer) = typing.await {
            writer.close();
        }
    }
    listener.client.close_p2p_session(id);
    listener.client.close().await;
    listener.endpoint.close();
    result
}
