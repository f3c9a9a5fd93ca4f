//! Embeds mesh-core in a program of its own: the in-memory store, a custom
//! authenticator (opaque tokens kept in a map instead of JWTs), and two
//! in-process connections chatting through the engine. No network at all.
//!
//! Run it with:
//!
//! ```text
//! cargo run -p mesh-examples --example embedded_chat
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use mesh_core::auth::{AuthError, IssuedToken, password};
use mesh_core::prelude::*;
use tokio::sync::mpsc;

/// A custom authenticator: random opaque tokens remembered in memory.
/// Passwords still use mesh's argon2id helpers.
#[derive(Debug)]
struct OpaqueTokens {
    tokens: Mutex<HashMap<String, Identity>>,
    keys: Arc<KeyRing>,
}

impl Authenticator for OpaqueTokens {
    fn hash_password(&self, pw: &str) -> Result<String, AuthError> {
        password::hash(pw)
    }

    fn verify_password(&self, pw: &str, hash: &str) -> Result<bool, AuthError> {
        password::verify(pw, hash)
    }

    fn issue_access_token(
        &self,
        user: UserId,
        device: DeviceId,
        now: Timestamp,
    ) -> Result<IssuedToken, AuthError> {
        let token = format!("opaque-{}", uuid_like());
        let identity = Identity {
            user_id: user,
            device_id: device,
            scope: None,
        };
        self.tokens
            .lock()
            .map_err(|_| AuthError::Key("poisoned".into()))?
            .insert(token.clone(), identity);
        Ok(IssuedToken {
            token,
            expires_at: now.saturating_add(std::time::Duration::from_secs(3600)),
        })
    }

    fn authenticate(&self, token: &str, _now: Timestamp) -> Result<Identity, AuthError> {
        self.tokens
            .lock()
            .map_err(|_| AuthError::Key("poisoned".into()))?
            .get(token)
            .cloned()
            .ok_or_else(|| AuthError::InvalidToken("unknown token".into()))
    }

    fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }
}

fn uuid_like() -> String {
    mesh_core::protocol::SessionId::new().to_string()
}

/// An in-process connection: frames go to a channel the program reads.
#[derive(Debug)]
struct Inbox(mpsc::UnboundedSender<EncodedFrame>);

impl Connection for Inbox {
    fn send(&self, frame: EncodedFrame) -> Result<(), SendError> {
        self.0.send(frame).map_err(|_| SendError::Closed)
    }

    fn close(&self, code: CloseCode, reason: &str) {
        println!("connection closed: {} {reason}", code.code());
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let auth = OpaqueTokens {
        tokens: Mutex::new(HashMap::new()),
        keys: Arc::new(KeyRing::generate()?),
    };
    let service = Service::builder()
        .store(MemoryStore::new())
        .authenticator(auth)
        .build()?;

    let register = |name: &str| RegisterRequest {
        username: name.into(),
        password: "correct horse battery".into(),
        ..Default::default()
    };
    let alice = service.register(register("alice"), None).await?;
    let bob = service.register(register("bob"), None).await?;
    println!(
        "registered {} and {}",
        alice.user.username, bob.user.username
    );

    let alice_id = service.authenticate(&alice.token).await?;
    let room = service
        .create_room(
            &alice_id,
            CreateRoomRequest {
                name: "general".into(),
                ..Default::default()
            },
        )
        .await?;

    // Two connections, as a WebSocket server would open them.
    let (tx_a, mut rx_a) = mpsc::unbounded_channel();
    let (tx_b, mut rx_b) = mpsc::unbounded_channel();
    let mut conn_a = service
        .open_connection(alice_id, Arc::new(Inbox(tx_a)))
        .await?;
    let bob_id = service.authenticate(&bob.token).await?;
    let mut conn_b = service
        .open_connection(bob_id, Arc::new(Inbox(tx_b)))
        .await?;

    conn_a.handle_text(r#"{"type":"system.hello"}"#).await;
    conn_b.handle_text(r#"{"type":"system.hello"}"#).await;
    let join = format!(
        r#"{{"type":"room.join","id":"j","payload":{{"room_id":"{}"}}}}"#,
        room.id
    );
    conn_b.handle_text(&join).await;
    let send = format!(
        r#"{{"type":"chat.message.send","id":"1","payload":{{"room_id":"{}","content":"hello from an embedded engine"}}}}"#,
        room.id
    );
    conn_a.handle_text(&send).await;

    // Bob's inbox: welcome, joined, then alice's message.
    loop {
        let frame = rx_b.recv().await.context("bob's inbox closed")?;
        let text = std::str::from_utf8(&frame)?;
        println!("bob   <- {text}");
        if text.contains("chat.message.created") {
            break;
        }
    }
    while let Ok(frame) = rx_a.try_recv() {
        println!("alice <- {}", std::str::from_utf8(&frame)?);
    }
    Ok(())
}
