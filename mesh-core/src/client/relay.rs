//! The client's side of the server's P2P relay: what an agent hands to
//! [`P2pEndpoint::use_server`](crate::p2p::P2pEndpoint::use_server) after
//! connecting, and the relay WebSocket (`GET /api/p2p/relay`) for agents
//! whose UDP to the server is blocked.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::TlsConfig;
use super::native::Client;
use crate::p2p::{P2pEndpoint, RelayStream, ServerPaths, StreamOpener};
use crate::relay::wire::MAX_FRAME;

/// Relay frames queued each way on the WebSocket; more are dropped, as a
/// congested network would (QUIC retransmits and slows down).
const QUEUE: usize = 1024;

impl Client {
    /// What the server offers for P2P sessions across networks (its last
    /// welcome's `p2p`), ready for `P2pEndpoint::use_server`: the server's
    /// UDP port resolved to an address of `family_v4`'s family when
    /// possible, whether it relays, and how to open the relay WebSocket.
    /// Empty for a server without these extensions.
    pub async fn p2p_paths(&self, family_v4: bool) -> ServerPaths {
        let Some(info) = self.server_p2p() else {
            return ServerPaths::default();
        };
        let server = self.http().server().to_owned();
        let udp = match info.udp_port {
            Some(port) => resolve(&server, port, family_v4).await,
            None => None,
        };
        let stream = info.relay.then(|| {
            let url = relay_url(&server);
            let tls = self.http().tls().clone();
            let open: StreamOpener = Arc::new(move || {
                let (url, tls) = (url.clone(), tls.clone());
                Box::pin(async move { open_stream(&url, &tls).await })
            });
            open
        });
        ServerPaths {
            udp,
            relay: info.relay,
            stream,
        }
    }
}

/// How long [`Client::attach_p2p`] waits for the first STUN answer.
const DISCOVERY_WAIT: Duration = Duration::from_secs(1);

impl Client {
    /// Points `endpoint` at what this server offers across networks
    /// ([`Self::p2p_paths`]; the relay only if `relay`), waits up to a
    /// second for its server-reflexive address and announces it
    /// (`p2p.announce`, with `announce` as the explicit addresses, see
    /// `P2pEndpoint::p2p_info`), then keeps announcing it when it changes
    /// until the returned task is aborted or the endpoint is gone. Call it
    /// after connecting, and again after a reconnect.
    pub async fn attach_p2p(
        &self,
        endpoint: &Arc<P2pEndpoint>,
        announce: &[String],
        relay: bool,
    ) -> tokio::task::JoinHandle<()> {
        let mut paths = self.p2p_paths(true).await;
        if !relay {
            paths.relay = false;
            paths.stream = None;
        }
        let discovering = paths.udp.is_some();
        endpoint.use_server(paths);
        let mut mapped = endpoint.mapped_addr();
        if discovering {
            let first = mapped.wait_for(Option::is_some);
            let _ = tokio::time::timeout(DISCOVERY_WAIT, first).await;
            if mapped.borrow_and_update().is_some() {
                self.announce_p2p(endpoint.p2p_info(announce.to_vec()));
            }
        }
        let (client, weak, announce) = (self.clone(), Arc::downgrade(endpoint), announce.to_vec());
        tokio::spawn(async move {
            while mapped.changed().await.is_ok() {
                let Some(endpoint) = weak.upgrade() else {
                    break;
                };
                client.announce_p2p(endpoint.p2p_info(announce.clone()));
            }
        })
    }
}

/// The server's host with `port`, resolved.
async fn resolve(server: &str, port: u16, v4: bool) -> Option<SocketAddr> {
    let url = reqwest::Url::parse(server).ok()?;
    let host = url.host_str()?;
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let found: Vec<SocketAddr> = match literal.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port)).await.ok()?.collect(),
    };
    found
        .iter()
        .find(|a| a.is_ipv4() == v4)
        .or_else(|| found.first())
        .copied()
}

/// `http://h:p` -> `ws://h:p/api/p2p/relay` (and https -> wss).
fn relay_url(server: &str) -> String {
    let server = server.trim_end_matches('/');
    let rest = server
        .strip_prefix("https://")
        .map(|r| format!("wss://{r}"))
        .or_else(|| server.strip_prefix("http://").map(|r| format!("ws://{r}")))
        .unwrap_or_else(|| server.to_owned());
    format!("{rest}/api/p2p/relay")
}

/// Opens the relay WebSocket: each binary message one relay frame.
async fn open_stream(url: &str, tls: &TlsConfig) -> io::Result<RelayStream> {
    let connector = url.starts_with("wss://").then(|| tls.connector());
    let config = WebSocketConfig::default()
        .read_buffer_size(MAX_FRAME + 64)
        .write_buffer_size(MAX_FRAME + 64)
        .max_write_buffer_size(4 * (MAX_FRAME + 64))
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(url, Some(config), true, connector)
            .await
            .map_err(io::Error::other)?;
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                out = out_rx.recv() => match out {
                    Some(frame) => {
                        if sink.send(WsMessage::Binary(frame.into())).await.is_err() {
                            break;
                        }
                    }
                    None => {
                        let _ = sink.close().await;
                        break;
                    }
                },
                got = source.next() => match got {
                    Some(Ok(WsMessage::Binary(b))) => {
                        // A full queue drops the datagram, as a network would.
                        if let Err(mpsc::error::TrySendError::Closed(_)) = in_tx.try_send(b.to_vec()) {
                            break;
                        }
                    }
                    Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
            }
        }
    });
    Ok(RelayStream {
        tx: out_tx,
        rx: in_rx,
    })
}

#[cfg(test)]
mod tests {
    use super::relay_url;

    #[test]
    fn relay_url_follows_the_scheme() {
        assert_eq!(relay_url("http://a:8000"), "ws://a:8000/api/p2p/relay");
        assert_eq!(relay_url("https://a/"), "wss://a/api/p2p/relay");
    }
}
