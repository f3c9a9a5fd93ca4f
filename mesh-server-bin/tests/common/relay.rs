//! Relay helpers for tests: a party's grant as `p2p.session.created` gave
//! it, and plain UDP sockets speaking the relay frames.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh_core::protocol::{RelayParty, SessionId};
use mesh_core::relay::grant::parse_key;
use mesh_core::relay::{RefuseCode, RelayFrame};
use serde_json::Value;
use tokio::net::UdpSocket;

use super::WAIT;

/// What a party needs to bind: session id, party, key and token.
#[derive(Clone)]
pub struct Grant {
    pub sid: SessionId,
    pub party: RelayParty,
    pub key: [u8; 32],
    pub token: String,
}

impl Grant {
    pub fn of(created: &Value) -> Self {
        let sid: SessionId = serde_json::from_value(created["session"]["id"].clone()).expect("sid");
        let party: RelayParty =
            serde_json::from_value(created["relay"]["party"].clone()).expect("a relay grant");
        let key = parse_key(created["relay"]["key"].as_str().expect("key")).expect("hex key");
        let token = created["session_token"].as_str().expect("token").to_owned();
        Self {
            sid,
            party,
            key,
            token,
        }
    }

    pub fn bind(&self) -> Vec<u8> {
        RelayFrame::Bind {
            session: self.sid,
            party: self.party,
            key: self.key,
            token: &self.token,
        }
        .to_vec()
    }

    pub fn data(&self, payload: &[u8]) -> Vec<u8> {
        RelayFrame::Data {
            session: self.sid,
            payload,
        }
        .to_vec()
    }
}

pub async fn udp_client(server: SocketAddr) -> UdpSocket {
    let any = if server.ip().is_loopback() {
        "127.0.0.1:0"
    } else {
        "0.0.0.0:0"
    };
    let s = UdpSocket::bind(any).await.expect("bind");
    s.connect(server).await.expect("connect");
    s
}

/// The next datagram, within `wait`.
pub async fn recv_within(s: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 70_000];
    match tokio::time::timeout(wait, s.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

pub async fn recv(s: &UdpSocket) -> Vec<u8> {
    recv_within(s, WAIT).await.expect("a datagram in time")
}

/// Sends `frame` until an answer comes (UDP may drop), then returns it.
pub async fn ask(s: &UdpSocket, frame: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        s.send(frame).await.expect("send");
        if let Some(answer) = recv_within(s, Duration::from_millis(500)).await {
            return answer;
        }
    }
    panic!("no answer in time");
}

pub fn refusal(bytes: &[u8]) -> Option<RefuseCode> {
    match RelayFrame::decode(bytes) {
        Ok(RelayFrame::Refused { code, .. }) => Some(code),
        _ => None,
    }
}

pub fn is_bound(bytes: &[u8], sid: SessionId) -> bool {
    RelayFrame::decode(bytes) == Ok(RelayFrame::Bound { session: sid })
}
