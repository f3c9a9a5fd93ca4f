//! WebSocket text frames from a client, as the server decodes them
//! (`protocol::parse_client_frame`, then the checks `service::connection`
//! applies to each field).
//!
//! Beyond "no panic": a decoded frame encodes back to JSON that decodes to
//! the same event and request id, the request id stays within its limit,
//! and every refusal is an `invalid_request` naming at most that id.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::ErrorCode;
use mesh_core::protocol::{ClientRequest, MAX_REQUEST_ID_LEN, parse_client_frame};
use mesh_core::validate;
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    // The WebSocket layer only hands over valid UTF-8 text frames.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_client_frame(text) {
        Ok(frame) => {
            if let Some(id) = &frame.id {
                assert!(id.len() <= MAX_REQUEST_ID_LEN, "id of {} bytes", id.len());
            }
            check_fields(&frame.event);
            // decode -> encode -> decode: the same frame.
            let mut encoded = serde_json::to_value(&frame.event).expect("a decoded event encodes");
            if let Some(id) = &frame.id {
                encoded["id"] = json!(id);
            }
            let again = parse_client_frame(&encoded.to_string())
                .unwrap_or_else(|(_, e)| panic!("re-encoded frame refused: {e:?}\n{encoded}"));
            assert_eq!(again.id, frame.id);
            assert_eq!(again.event, frame.event, "{encoded}");
        }
        Err((id, error)) => {
            assert_eq!(error.code, ErrorCode::InvalidRequest);
            assert!(error.retry_after_ms.is_none());
            if let Some(id) = id {
                assert!(id.len() <= MAX_REQUEST_ID_LEN);
            }
        }
    }
});

/// The server's field checks, as `service::connection` applies them: they
/// may refuse, never panic, and what they accept is within the limits.
fn check_fields(event: &ClientRequest) {
    match event {
        ClientRequest::Hello(hello) => {
            if let Some(name) = &hello.device_name
                && let Ok(clean) = validate::device_name(Some(name))
            {
                assert!(clean.chars().count() <= validate::DEVICE_NAME_MAX);
            }
        }
        ClientRequest::MessageSend {
            content, client_id, ..
        } => {
            if validate::content(content).is_ok() {
                assert!(content.len() <= validate::CONTENT_MAX_BYTES);
            }
            if let Some(id) = client_id {
                let _ = validate::client_id(id);
            }
        }
        ClientRequest::PresenceUpdate { message, .. } => {
            if let Ok(Some(clean)) = validate::presence_message(message.as_deref()) {
                assert!(clean.chars().count() <= validate::PRESENCE_MESSAGE_MAX);
            }
        }
        ClientRequest::RtcOffer(s)
        | ClientRequest::RtcAnswer(s)
        | ClientRequest::RtcIce(s)
        | ClientRequest::RtcHangup(s) => {
            // What the server relays must encode again.
            let _: Value = serde_json::to_value(s).expect("a signal encodes");
        }
        _ => {}
    }
}
