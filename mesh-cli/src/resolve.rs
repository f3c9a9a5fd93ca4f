//! Turning what the user typed into ids: ROOM is a room id or name (looked
//! up in the room list), PEER a peer id or username (looked up in the
//! rooms' online peers, `GET /api/rooms/{id}/peers`).

use anyhow::{Context, bail};
use mesh_core::client::{ClientError, HttpApi};
use mesh_core::protocol::http::Peer;
use mesh_core::protocol::{PeerId, Room, RoomId};

/// The room named or numbered `arg`; an error if none or several match.
pub(crate) async fn room(api: &HttpApi, arg: &str) -> anyhow::Result<Room> {
    let rooms = api.rooms().await.context("listing rooms")?;
    if let Ok(id) = arg.parse::<RoomId>() {
        if let Some(r) = rooms.iter().find(|r| r.id == id) {
            return Ok(r.clone());
        }
        // A private room not listed may still be reachable by id.
        return api
            .room(id)
            .await
            .with_context(|| format!("no room with id {arg}"));
    }
    let named: Vec<&Room> = rooms.iter().filter(|r| r.name == arg).collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("no room named {arg:?} (see `mesh rooms`)"),
        many => bail!(
            "{} rooms are named {arg:?}; use an id: {}",
            many.len(),
            many.iter()
                .map(|r| r.id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The agent PEER stands for: `(room, peer)` where both this user and the
/// peer are in `room` (the one given, else any room of this user's).
/// `me` (this client's own connection) is never picked.
pub(crate) async fn peer(
    api: &HttpApi,
    arg: &str,
    room_arg: Option<&str>,
    me: PeerId,
) -> anyhow::Result<(RoomId, Peer)> {
    let rooms: Vec<Room> = match room_arg {
        Some(r) => vec![room(api, r).await?],
        None => api.rooms().await.context("listing rooms")?,
    };
    let by_id = arg.parse::<PeerId>().ok();
    let mut found: Vec<(RoomId, Peer)> = Vec::new();
    for r in &rooms {
        let peers = match api.peers(r.id).await {
            Ok(p) => p,
            // Public rooms this user is not in: not a way to reach anyone.
            Err(ClientError::Server {
                code: mesh_core::ErrorCode::Forbidden,
                ..
            }) if room_arg.is_none() => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("listing who is online in {}", r.name));
            }
        };
        for p in peers {
            let matches = Some(p.peer_id) == by_id || p.user.username == arg;
            if matches && p.peer_id != me && !found.iter().any(|(_, f)| f.peer_id == p.peer_id) {
                found.push((r.id, p));
            }
        }
    }
    let where_ = match room_arg {
        Some(r) => format!("in room {r:?}"),
        None => "in any room you are in".to_owned(),
    };
    let (agents, others): (Vec<_>, Vec<_>) = found.into_iter().partition(|(_, p)| {
        p.p2p
            .as_ref()
            .is_some_and(|i| i.cert_fingerprint.is_some() && !i.addrs.is_empty())
    });
    match agents.as_slice() {
        [one] => Ok(one.clone()),
        [] if others.is_empty() => bail!(
            "{arg} is not online {where_}: start `mesh agent` on their machine (and share a room with them)"
        ),
        [] => bail!(
            "{arg} is online {where_} but not running an agent that accepts sessions: start `mesh agent` there"
        ),
        many => bail!(
            "{arg} is ambiguous: {} agents are online {where_}; pass one peer id instead: {}",
            many.len(),
            many.iter()
                .map(|(_, p)| format!("{} ({})", p.peer_id, p.user.username))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
