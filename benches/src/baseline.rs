//! The baseline server: a bare tokio-tungstenite broadcast loop, with no
//! auth, no parsing and no storage. Every text frame a client sends goes to
//! every connected client (the sender too), encoded once and shared, through
//! the same shape of per-connection pipeline as mesh-server's (a bounded
//! queue drained by a writer task that flushes once per batch) and the same
//! tungstenite buffer sizes. It is what mesh's fan-out, memory and churn are
//! compared against.
//!
//! It runs as `mesh-load baseline-server`, a process of its own pinned like
//! mesh-server, and prints `listening on <addr>` like mesh-server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Subscribers = Arc<Mutex<HashMap<u64, mpsc::Sender<Utf8Bytes>>>>;

/// mesh-server's defaults (`WsLimits::default()`), so the buffers compare.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(8 * 1024 + 64 * 1024 + 1024)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024))
}

/// Serves until killed.
pub(crate) async fn serve() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    eprintln!("baseline: listening on {}", listener.local_addr()?);
    let subs: Subscribers = Arc::default();
    let next = AtomicU64::new(0);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let id = next.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(stream, id, subs.clone()));
    }
}

async fn connection(stream: TcpStream, id: u64, subs: Subscribers) {
    let _ = stream.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config())).await else {
        return;
    };
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(1000);
    subs.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, tx);
    let (mut sink, mut stream) = ws.split();
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(Message::Text(first)).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if sink.feed(Message::Text(more)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
        let _ = sink.close().await;
    });
    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Text(text) => {
                let subs = subs.lock().unwrap_or_else(|e| e.into_inner());
                for tx in subs.values() {
                    // A full queue drops the frame (mesh closes the client).
                    let _ = tx.try_send(text.clone());
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    subs.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    let _ = writer.await;
}
