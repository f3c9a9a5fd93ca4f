//! Address discovery with STUN Binding (RFC 8489), on the
//! [`stun-rs`](https://docs.rs/stun-rs) codec.
//!
//! Why STUN and not QUIC address discovery: the server's UDP port then needs
//! no QUIC endpoint, certificate or connection state per agent (a plain-HTTP
//! server has no certificate to offer at all); a Binding request is one
//! datagram each way, answered statelessly; and the agent sends it from the
//! very socket its QUIC endpoint uses, so the mapping the server sees is the
//! one peers will reach.

use std::net::SocketAddr;

use stun_rs::attributes::stun::XorMappedAddress;
use stun_rs::methods::BINDING;
use stun_rs::{
    MAGIC_COOKIE, MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessageBuilder,
    TransactionId,
};

/// A STUN transaction id.
pub type TxId = [u8; 12];

/// Whether `bytes` is a STUN message: the first two bits clear, and the
/// magic cookie at bytes 4..8.
pub fn is_stun(bytes: &[u8]) -> bool {
    bytes.len() >= 20 && bytes[0] & 0xc0 == 0 && bytes[4..8] == MAGIC_COOKIE.as_u32().to_be_bytes()
}

/// A Binding request with transaction id `tx`.
pub fn binding_request(tx: TxId) -> Vec<u8> {
    let msg = StunMessageBuilder::new(BINDING, MessageClass::Request)
        .with_transaction_id(TransactionId::from(tx))
        .build();
    encode(&msg)
}

fn encode(msg: &stun_rs::StunMessage) -> Vec<u8> {
    let mut buf = [0u8; 64];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, msg)
        // A header and at most one address attribute fit in 64 bytes.
        .unwrap_or(0);
    buf[..n].to_vec()
}

/// The answer to a Binding request from `from`: a Binding success response
/// with `from` as XOR-MAPPED-ADDRESS. `None` for anything that is not a
/// Binding request (which the server then ignores).
pub fn answer(bytes: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
    let msg = decode_binding(bytes, MessageClass::Request)?;
    let reply = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
        .with_transaction_id(*msg.transaction_id())
        .with_attribute(XorMappedAddress::from(from))
        .build();
    let out = encode(&reply);
    (!out.is_empty()).then_some(out)
}

/// `bytes` as a Binding message of `class`; `None` for anything else.
fn decode_binding(bytes: &[u8], class: MessageClass) -> Option<stun_rs::StunMessage> {
    if !is_stun(bytes) {
        return None;
    }
    let (msg, _) = MessageDecoderBuilder::default()
        .build()
        .decode(bytes)
        .ok()?;
    (msg.method() == BINDING && msg.class() == class).then_some(msg)
}

/// A Binding success response's transaction id and mapped address.
pub fn parse_response(bytes: &[u8]) -> Option<(TxId, SocketAddr)> {
    let msg = decode_binding(bytes, MessageClass::SuccessResponse)?;
    let attr = msg.get::<XorMappedAddress>()?;
    let addr = *attr.as_xor_mapped_address().ok()?.socket_address();
    Some((*msg.transaction_id().as_bytes(), addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_request_is_answered_with_the_source_address() {
        let tx = [9u8; 12];
        let req = binding_request(tx);
        assert!(is_stun(&req));
        for from in ["203.0.113.7:40001", "[2001:db8::1]:5"] {
            let from: SocketAddr = from.parse().expect("addr");
            let resp = answer(&req, from).expect("answered");
            assert_eq!(parse_response(&resp), Some((tx, from)));
            // A response is not a request: no answer to an answer (no loops).
            assert_eq!(answer(&resp, from), None);
        }
        assert_eq!(parse_response(&req), None);
    }

    #[test]
    fn quic_and_relay_frames_are_not_stun() {
        let mut quic = vec![0xc0u8; 1200];
        quic[4..8].copy_from_slice(&MAGIC_COOKIE.as_u32().to_be_bytes());
        assert!(!is_stun(&quic));
        let relay = crate::relay::RelayFrame::Bound {
            session: crate::protocol::SessionId::new(),
        }
        .to_vec();
        assert!(!is_stun(&relay));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn garbage_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let from: SocketAddr = "198.51.100.1:9".parse().expect("addr");
            let _ = answer(&bytes, from);
            let _ = parse_response(&bytes);
            if bytes.len() >= 20 {
                bytes[0] &= 0x3f;
                bytes[4..8].copy_from_slice(&MAGIC_COOKIE.as_u32().to_be_bytes());
                let _ = answer(&bytes, from);
                let _ = parse_response(&bytes);
            }
        }
    }
}
