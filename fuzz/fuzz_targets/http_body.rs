//! HTTP request bodies, as the server decodes them: `serde_json::from_slice`
//! into the contract's request types (`protocol::http`), then the field
//! checks of `validate`.
//!
//! The first byte picks the route; the rest is the body. Beyond "no
//! panic": a decoded body encodes back to JSON that decodes to the same
//! value, and what the checks accept is within the documented limits.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::protocol::http::{
    CapabilityRequest, CreateRoomRequest, InviteRequest, LoginRequest, P2pSessionRequest,
    RegisterRequest, RoleRequest, UpdateRoomRequest,
};
use mesh_core::validate;
use serde::Serialize;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    let Some((&route, body)) = data.split_first() else {
        return;
    };
    match route % 8 {
        0 => {
            if let Some(r) = round_trip::<RegisterRequest>(body) {
                check_name_and_password(&r.username, &r.password);
                // As the service does: the display name falls back to the
                // username once that is checked.
                if let Ok(username) = validate::username(&r.username)
                    && let Ok(name) = validate::display_name(r.display_name.as_deref(), &username)
                {
                    assert!(name.chars().count() <= validate::DISPLAY_NAME_MAX);
                }
                let _ = validate::device_name(r.device_name.as_deref());
            }
        }
        1 => {
            if let Some(r) = round_trip::<LoginRequest>(body) {
                check_name_and_password(&r.username, &r.password);
                let _ = validate::device_name(r.device_name.as_deref());
            }
        }
        2 => {
            let _ = round_trip::<CapabilityRequest>(body);
        }
        3 => {
            if let Some(r) = round_trip::<CreateRoomRequest>(body) {
                check_room(Some(&r.name), r.topic.as_deref());
            }
        }
        4 => {
            if let Some(r) = round_trip::<UpdateRoomRequest>(body) {
                check_room(r.name.as_deref(), r.topic.clone().flatten().as_deref());
            }
        }
        5 => {
            if let Some(r) = round_trip::<InviteRequest>(body)
                && let Some(name) = &r.username
            {
                let _ = validate::username(name);
            }
        }
        6 => {
            let _ = round_trip::<RoleRequest>(body);
        }
        _ => {
            let _ = round_trip::<P2pSessionRequest>(body);
        }
    }
});

/// decode -> encode -> decode: the same value.
fn round_trip<T>(body: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let value: T = serde_json::from_slice(body).ok()?;
    let encoded = serde_json::to_vec(&value).expect("a decoded body encodes");
    let again: T = serde_json::from_slice(&encoded).expect("a re-encoded body decodes");
    assert_eq!(again, value);
    Some(value)
}

fn check_name_and_password(username: &str, password: &str) {
    if let Ok(name) = validate::username(username) {
        assert!((validate::USERNAME_MIN..=validate::USERNAME_MAX).contains(&name.len()));
        assert_eq!(
            validate::username(&name).ok().as_deref(),
            Some(name.as_str())
        );
    }
    let _ = validate::password(password);
}

fn check_room(name: Option<&str>, topic: Option<&str>) {
    if let Some(name) = name
        && let Ok(clean) = validate::room_name(name)
    {
        assert!(clean.chars().count() <= validate::ROOM_NAME_MAX);
    }
    if let Ok(Some(clean)) = validate::topic(topic) {
        assert!(clean.chars().count() <= validate::TOPIC_MAX);
    }
}
