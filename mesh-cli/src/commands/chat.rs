//! `mesh send` (one message, for scripts) and `mesh chat` (interactive).

use std::collections::HashMap;

use anyhow::Context;
use clap::Args;
use mesh_core::client::{Event, HistoryQuery};
use mesh_core::protocol::{RoomId, UserId};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

use crate::commands::rooms::message_line;
use crate::config::Ctx;
use crate::output::emit;
use crate::resolve;

/// `mesh send`.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// Room id or name.
    room: String,
    /// The message.
    text: String,
}

/// `mesh chat`.
#[derive(Debug, Args)]
pub(crate) struct ChatArgs {
    /// Room id or name.
    room: String,
    /// How many recent messages to show first.
    #[arg(long, default_value_t = 20)]
    last: u32,
}

/// Sends one message and prints it as stored (with its `seq`).
pub(crate) async fn send(ctx: &Ctx, args: SendArgs) -> anyhow::Result<()> {
    let room = resolve::room(&ctx.api()?, &args.room).await?;
    let (client, _events) = ctx.connect("mesh-cli", None).await?;
    let result = client.send_message(room.id, args.text).await;
    client.close().await;
    let message = result.context("sending the message")?;
    emit(ctx, json!({ "message": message }), || {
        format!("sent to {} (#{})", room.name, message.seq)
    });
    Ok(())
}

/// Shows the room live and sends the lines typed, until end of input or
/// Ctrl-C.
pub(crate) async fn chat(ctx: &Ctx, args: ChatArgs) -> anyhow::Result<()> {
    let room = resolve::room(&ctx.api()?, &args.room).await?;
    let (client, mut events) = ctx.connect("mesh-cli chat", None).await?;
    let members = client
        .join_room(room.id)
        .await
        .with_context(|| format!("joining {}", room.name))?;
    let mut names: HashMap<UserId, String> = members
        .iter()
        .map(|m| (m.user.id, m.user.username.clone()))
        .collect();
    let page = client
        .history(room.id, HistoryQuery::latest(args.last))
        .await
        .context("reading the history")?;
    let mut seen_seq = 0;
    for m in &page.messages {
        seen_seq = m.seq;
        emit(ctx, json!({"event": "message", "message": m}), || {
            message_line(m)
        });
    }
    emit(ctx, json!({"event": "ready", "room": room}), || {
        format!("-- chatting in {} (Ctrl-D or Ctrl-C to leave)", room.name)
    });
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let result = loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { break Ok(()) };
                if let Some(stop) = show_event(ctx, room.id, &mut names, &mut seen_seq, event) {
                    break stop;
                }
            }
            line = lines.next_line() => match line {
                Ok(Some(line)) if line.trim().is_empty() => {}
                Ok(Some(line)) => {
                    if let Err(e) = client.send_message(room.id, line).await {
                        emit(ctx, json!({"event": "send_failed", "error": e.to_string()}), || {
                            format!("-- not sent: {e}")
                        });
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(anyhow::Error::new(e).context("reading stdin")),
            },
            _ = tokio::signal::ctrl_c() => break Ok(()),
        }
    };
    client.close().await;
    result
}

/// Prints one event of the room; `Some` ends the chat.
fn show_event(
    ctx: &Ctx,
    room: RoomId,
    names: &mut HashMap<UserId, String>,
    seen_seq: &mut u64,
    event: Event,
) -> Option<anyhow::Result<()>> {
    let name = |names: &HashMap<UserId, String>, id: &UserId| {
        names.get(id).cloned().unwrap_or_else(|| id.to_string())
    };
    match event {
        Event::Message(m) if m.room_id == room && m.seq > *seen_seq => {
            *seen_seq = m.seq;
            names.insert(m.sender.id, m.sender.username.clone());
            emit(ctx, json!({"event": "message", "message": m}), || {
                message_line(&m)
            });
        }
        Event::Typing {
            room_id,
            user_id,
            typing,
        } if room_id == room => {
            let who = name(names, &user_id);
            emit(
                ctx,
                json!({"event": "typing", "user_id": user_id, "username": who, "typing": typing}),
                || {
                    if typing {
                        format!("-- {who} is typing...")
                    } else {
                        format!("-- {who} stopped typing")
                    }
                },
            );
        }
        Event::Presence {
            user_id,
            status,
            message,
        } => {
            let who = name(names, &user_id);
            let status_text = json!(status).as_str().unwrap_or("?").to_owned();
            emit(
                ctx,
                json!({"event": "presence", "user_id": user_id, "username": who, "status": status, "message": message}),
                || format!("-- {who} is {status_text}"),
            );
        }
        Event::RoomJoined { room_id, user, .. } if room_id == room => {
            names.insert(user.id, user.username.clone());
            emit(ctx, json!({"event": "joined", "user": user}), || {
                format!("-- {} joined", user.username)
            });
        }
        Event::RoomLeft { room_id, user_id } if room_id == room => {
            let who = name(names, &user_id);
            emit(
                ctx,
                json!({"event": "left", "user_id": user_id, "username": who}),
                || format!("-- {who} left"),
            );
        }
        Event::RoomDeleted { room_id } if room_id == room => {
            return Some(Err(anyhow::anyhow!("the room was deleted")));
        }
        Event::Disconnected { reason, .. } => {
            emit(
                ctx,
                json!({"event": "disconnected", "reason": reason}),
                || format!("-- connection lost ({reason}); reconnecting..."),
            );
        }
        Event::Connected { resumed: true, .. } => {
            emit(ctx, json!({"event": "reconnected"}), || {
                "-- reconnected".to_owned()
            });
        }
        Event::Closed { error } => {
            return Some(match error {
                Some(e) => Err(anyhow::Error::new(e).context("the server closed the connection")),
                None => Ok(()),
            });
        }
        _ => {}
    }
    None
}
