//! Hostile WebSocket frames, from outside over a raw TCP socket: each frame
//! that breaks RFC 6455 closes its connection with the code section 7.4.1
//! gives it (1002 protocol error, 1007 text that is not UTF-8, 1009 too
//! big), and a well-behaved connection on the same server keeps working.
//!
//! The upgrade and the frames are written by hand: a WebSocket library
//! would refuse to send most of them.

mod common;

use std::net::SocketAddr;

use common::{TestServer, WAIT, WsClient};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;

/// Opens a WebSocket by hand: the upgrade request, then the 101 answer,
/// read byte by byte so that nothing after it is consumed.
async fn raw_ws(addr: SocketAddr, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(request.as_bytes())
        .await
        .expect("write upgrade");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let b = tokio::time::timeout(WAIT, s.read_u8())
            .await
            .expect("upgrade answer in time")
            .expect("upgrade answer");
        head.push(b);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// One frame as a client writes it: `rsv` is the three RSV bits (0..=7),
/// the payload masked unless `masked` is false.
fn frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A complete masked frame.
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, 0, opcode, payload, true)
}

/// A close frame's payload: the code, then the reason's bytes.
fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// Reads server frames until the close frame; returns its code (`None`
/// for a close frame without one). Fails if the connection ends first.
async fn close_code(s: &mut TcpStream) -> Option<u16> {
    loop {
        let read = async {
            let b0 = s.read_u8().await?;
            let b1 = s.read_u8().await?;
            assert_eq!(b1 & 0x80, 0, "server frames are not masked");
            let len = match b1 & 0x7f {
                126 => u64::from(s.read_u16().await?),
                127 => s.read_u64().await?,
                n => u64::from(n),
            };
            let mut payload = vec![0; usize::try_from(len).expect("length")];
            s.read_exact(&mut payload).await?;
            Ok::<_, std::io::Error>((b0 & 0x0f, payload))
        };
        let (opcode, payload) = tokio::time::timeout(WAIT, read)
            .await
            .expect("a frame in time")
            .expect("the server sends a close frame before it closes the connection");
        if opcode == CLOSE {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
}

/// A server with a well-behaved client already connected and joined.
async fn setup() -> (TestServer, String, WsClient, String) {
    let s = TestServer::start().await;
    let (_, token) = s.register("alice").await;
    let room = s.create_room(&token, "general", "public").await;
    let good = s.ws(&token).await;
    (s, token, good, room)
}

/// Sends `bytes` on a fresh raw WebSocket and returns the close code the
/// server answers with; then checks that the well-behaved client still
/// chats.
async fn answer_to(bytes: &[u8]) -> Option<u16> {
    let (s, token, mut good, room) = setup().await;
    let mut raw = raw_ws(s.addr, &token).await;
    raw.write_all(bytes).await.expect("write frame");
    let code = close_code(&mut raw).await;
    let sent = good
        .request(
            "chat.message.send",
            json!({"room_id": room, "content": "still here"}),
            "after",
        )
        .await;
    assert_eq!(sent["type"], "chat.message.created", "{sent}");
    code
}

#[tokio::test]
async fn a_clean_close_is_answered_with_1000() {
    // The control case: the harness tells codes apart.
    let code = answer_to(&masked(CLOSE, &close_payload(1000, b"bye"))).await;
    assert_eq!(code, Some(1000));
}

#[tokio::test]
async fn an_unmasked_client_frame_closes_with_1002() {
    let code = answer_to(&frame(true, 0, TEXT, br#"{"type":"system.ping"}"#, false)).await;
    assert_eq!(code, Some(1002));
}

#[tokio::test]
async fn rsv_bits_without_an_extension_close_with_1002() {
    let code = answer_to(&frame(true, 0b100, TEXT, b"{}", true)).await;
    assert_eq!(code, Some(1002));
}

#[tokio::test]
async fn a_reserved_data_opcode_closes_with_1002() {
    let code = answer_to(&masked(0x3, b"{}")).await;
    assert_eq!(code, Some(1002));
}

#[tokio::test]
async fn a_reserved_control_opcode_closes_with_1002() {
    let code = answer_to(&masked(0xb, b"")).await;
    assert_eq!(code, Some(1002));
}

#[tokio::test]
async fn a_continuation_with_nothing_to_continue_closes_with_1002() {
    let code = answer_to(&masked(CONTINUATION, b"{}")).await;
    assert_eq!(code, Some(1002));
}

#[tokio::test]
async fn a_control_frame_over_125_bytes_closes_with_1002() {
    let code = answer_to(&masked(PING, &[b'x'; 126])).await;
    assert_eq!(code, Some(1002));
}

#[tokio::test]
async fn a_fragmented_control_frame_closes_with_1002() {
    let code = answer_to(&frame(false, 0, PING, b"half", true)).await;
    assert_eq!(code, Some(1002));
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    let code = answer_to(&masked(TEXT, &[b'{', 0xff, 0xfe, b'}'])).await;
    assert_eq!(code, Some(1007));
}

#[tokio::test]
async fn a_fragmented_text_message_that_is_not_utf8_closes_with_1007() {
    let mut bytes = frame(false, 0, TEXT, b"{\"a\":\"", true);
    bytes.extend(frame(
        true,
        0,
        CONTINUATION,
        &[0xc3, 0x28, b'"', b'}'],
        true,
    ));
    assert_eq!(answer_to(&bytes).await, Some(1007));
}

#[tokio::test]
async fn a_close_reason_that_is_not_utf8_closes_with_1007() {
    let code = answer_to(&masked(CLOSE, &close_payload(1000, &[0xff, 0xfe]))).await;
    assert_eq!(code, Some(1007));
}

#[tokio::test]
async fn a_one_byte_close_payload_closes_with_1002() {
    let code = answer_to(&masked(CLOSE, &[0x03])).await;
    assert_eq!(code, Some(1002));
}

#[tokio::test]
async fn close_codes_that_may_not_be_sent_are_answered_with_1002() {
    for bad in [999u16, 1004, 1005, 1006, 1015, 5000] {
        let code = answer_to(&masked(CLOSE, &close_payload(bad, b""))).await;
        assert_eq!(code, Some(1002), "close code {bad}");
    }
}

#[tokio::test]
async fn a_message_over_the_limit_still_closes_with_1009() {
    let code = answer_to(&masked(TEXT, &vec![b' '; 64 * 1024 + 1])).await;
    assert_eq!(code, Some(1009));
}
