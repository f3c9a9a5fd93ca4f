//! A minimal WebSocket client for the README's tour: says hello, joins a
//! room, sends one message, and prints every event until that message comes
//! back acknowledged (or, with `--listen`, until interrupted).
//!
//! ```text
//! cargo run -p mesh-examples --example ws_chat -- ws://127.0.0.1:8000 "$TOKEN" "$ROOM" "hello from the tour"
//! cargo run -p mesh-examples --example ws_chat -- ws://127.0.0.1:8000 "$TOKEN" "$ROOM" --listen
//! ```

use anyhow::{Context as _, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, token, room, text] = args.as_slice() else {
        bail!("usage: ws_chat WS_URL TOKEN ROOM_ID (TEXT | --listen)");
    };
    let url = format!("{}/ws?token={token}", server.trim_end_matches('/'));
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .context("connecting (is the server running, and the token valid?)")?;
    let mut send = async |frame: Value| ws.send(Message::Text(frame.to_string().into())).await;
    send(json!({"type": "system.hello", "id": "hello", "payload": {"device_name": "ws_chat"}}))
        .await?;
    send(json!({"type": "room.join", "id": "join", "payload": {"room_id": room}})).await?;
    let listen = text == "--listen";
    if !listen {
        send(json!({"type": "chat.message.send", "id": "send",
            "payload": {"room_id": room, "content": text}}))
        .await?;
    }
    while let Some(frame) = ws.next().await {
        let Message::Text(frame) = frame? else {
            continue;
        };
        println!("{frame}");
        let frame: Value = serde_json::from_str(&frame)?;
        if !listen && frame["id"] == "send" {
            break;
        }
    }
    Ok(())
}
