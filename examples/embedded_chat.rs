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
    let alice = service.register(register("alice")).await?;
    let bob = service.register(register("bob")).await?;
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

    // Two connections, as a WebSocket server would open them, but in this
    // process: typed frames in, typed frames out.
    let (to_alice, mut alice_inbox) = in_process(64);
    let (to_bob, mut bob_inbox) = in_process(64);
    let mut conn_a = service.open_connection(alice_id, to_alice).await?;
    let bob_id = service.authenticate(&bob.token).await?;
    let mut conn_b = service.open_connection(bob_id, to_bob).await?;

    let hello = || IncomingFrame::new(ClientRequest::Hello(Hello::default()));
    conn_a.handle(hello()).await;
    conn_b.handle(hello()).await;
    let join = ClientRequest::RoomJoin { room_id: room.id };
    conn_b.handle(IncomingFrame::request("j", join)).await;
    let send = ClientRequest::MessageSend {
        room_id: room.id,
        content: "hello from an embedded engine".into(),
        client_id: None,
    };
    conn_a.handle(IncomingFrame::request("1", send)).await;

    // Bob's inbox: welcome, joined, then alice's message.
    loop {
        match bob_inbox.recv().await.context("bob's inbox closed")? {
            Delivery::Frame(frame) => {
                let frame = *frame;
                println!("bob   <- {}", frame.event.type_name());
                if let ServerEvent::MessageCreated { message } = frame.event {
                    println!("bob   read {:?} (seq {})", message.content, message.seq);
                    break;
                }
            }
            Delivery::Closed { code, reason } => {
                anyhow::bail!("bob's connection closed: {} {reason}", code.code())
            }
        }
    }
    while let Some(delivery) = alice_inbox.try_recv() {
        match delivery {
            Delivery::Frame(frame) => println!("alice <- {}", frame.event.type_name()),
            Delivery::Closed { code, reason } => println!("alice closed: {} {reason}", code.code()),
        }
    }
    Ok(())
}
