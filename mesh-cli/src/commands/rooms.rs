//! `mesh rooms`, `mesh room create|join|members|peers`, `mesh history`.

use anyhow::Context;
use clap::{Args, Subcommand};
use mesh_core::client::HistoryQuery;
use mesh_core::protocol::http::CreateRoomRequest;
use mesh_core::protocol::{Message, Visibility};
use serde_json::json;

use crate::config::Ctx;
use crate::output::emit;
use crate::resolve;

/// `mesh room ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum RoomCommand {
    /// Create a room (you own it).
    Create {
        /// The room's name.
        name: String,
        /// What the room is about.
        #[arg(long)]
        topic: Option<String>,
        /// Only members and those they invite see it.
        #[arg(long)]
        private: bool,
    },
    /// Join a public room (or one you were invited to).
    Join {
        /// Room id or name.
        room: String,
    },
    /// List a room's members and their presence.
    Members {
        /// Room id or name.
        room: String,
    },
    /// List who is online in a room, and which of them run an agent.
    Peers {
        /// Room id or name.
        room: String,
    },
}

/// `mesh history`.
#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    /// Room id or name.
    room: String,
    /// How many of the newest messages.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

/// One message as a line of text.
pub(crate) fn message_line(m: &Message) -> String {
    format!(
        "[{}] {}: {}",
        m.created_at.to_rfc3339(),
        m.sender.username,
        m.content
    )
}

/// `mesh rooms`.
pub(crate) async fn list(ctx: &Ctx) -> anyhow::Result<()> {
    let rooms = ctx.api()?.rooms().await.context("listing rooms")?;
    emit(ctx, json!({ "rooms": rooms }), || {
        if rooms.is_empty() {
            return "no rooms yet: `mesh room create NAME`".to_owned();
        }
        rooms
            .iter()
            .map(|r| {
                format!(
                    "{:<24} {}  {} member(s){}",
                    r.name,
                    r.id,
                    r.member_count,
                    r.topic
                        .as_deref()
                        .map(|t| format!("  {t}"))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

/// `mesh room ...`.
pub(crate) async fn room(ctx: &Ctx, cmd: RoomCommand) -> anyhow::Result<()> {
    let api = ctx.api()?;
    match cmd {
        RoomCommand::Create {
            name,
            topic,
            private,
        } => {
            let room = api
                .create_room(&CreateRoomRequest {
                    name,
                    topic,
                    visibility: Some(Visibility::private_if(private)),
                })
                .await
                .context("creating the room")?;
            emit(ctx, json!({ "room": room }), || {
                format!("created room {} ({})", room.name, room.id)
            });
        }
        RoomCommand::Join { room } => {
            let found = resolve::room(&api, &room).await?;
            let joined = match api.join_room(found.id).await {
                Ok(r) => r,
                // Already a member: joining again is not an error for us.
                Err(mesh_core::client::ClientError::Server {
                    code: mesh_core::ErrorCode::Conflict,
                    ..
                }) => found,
                Err(e) => return Err(e).context("joining the room"),
            };
            emit(ctx, json!({ "room": joined }), || {
                format!("joined room {} ({})", joined.name, joined.id)
            });
        }
        RoomCommand::Members { room } => {
            let found = resolve::room(&api, &room).await?;
            let members = api.members(found.id).await.context("listing members")?;
            emit(ctx, json!({ "members": members }), || {
                members
                    .iter()
                    .map(|m| {
                        format!(
                            "{:<20} {:<8} {}",
                            m.user.username,
                            json!(m.role).as_str().unwrap_or("?"),
                            json!(m.presence).as_str().unwrap_or("?")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        RoomCommand::Peers { room } => {
            let found = resolve::room(&api, &room).await?;
            let peers = api.peers(found.id).await.context("listing peers")?;
            emit(ctx, json!({ "peers": peers }), || {
                if peers.is_empty() {
                    return format!("nobody is online in {}", found.name);
                }
                peers
                    .iter()
                    .map(|p| {
                        let agent = match &p.p2p {
                            Some(i) if i.cert_fingerprint.is_some() => {
                                format!("agent at {}", i.addrs.join(", "))
                            }
                            _ => "no agent".to_owned(),
                        };
                        format!("{:<20} {}  {agent}", p.user.username, p.peer_id)
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(())
}

/// `mesh history`.
pub(crate) async fn history(ctx: &Ctx, args: HistoryArgs) -> anyhow::Result<()> {
    let api = ctx.api()?;
    let room = resolve::room(&api, &args.room).await?;
    let page = api
        .messages(room.id, HistoryQuery::latest(args.limit))
        .await
        .context("reading the history")?;
    emit(
        ctx,
        json!({"room": room, "messages": page.messages, "has_more": page.has_more}),
        || {
            page.messages
                .iter()
                .map(message_line)
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
    Ok(())
}
