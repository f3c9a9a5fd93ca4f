//! The limits every mesh server honours, as pure functions.
//!
//! Each returns the cleaned value or an [`Error::InvalidRequest`] (or
//! [`Error::PayloadTooLarge`]) whose message tells the user what to fix.

use crate::error::{Error, Result};

pub const USERNAME_MIN: usize = 3;
pub const USERNAME_MAX: usize = 32;
pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 1024;
pub const DISPLAY_NAME_MAX: usize = 64;
pub const ROOM_NAME_MAX: usize = 64;
pub const TOPIC_MAX: usize = 512;
pub const CONTENT_MAX_BYTES: usize = 16 * 1024;
pub const CLIENT_ID_MAX: usize = 128;
pub const DEVICE_NAME_MAX: usize = 64;
pub const PRESENCE_MESSAGE_MAX: usize = 256;
/// Most candidate addresses an agent announces.
pub const P2P_ADDRS_MAX: usize = 16;
/// The longest announced address or fingerprint.
pub const P2P_ADDR_MAX: usize = 128;

/// Checks an agent's announced [`P2pInfo`](crate::protocol::P2pInfo): at
/// most 16 addresses, each and the fingerprint at most 128 characters.
pub fn p2p_info(info: crate::protocol::P2pInfo) -> Result<crate::protocol::P2pInfo> {
    if info.addrs.len() > P2P_ADDRS_MAX {
        return Err(Error::InvalidRequest(format!(
            "p2p.addrs: at most {P2P_ADDRS_MAX} addresses"
        )));
    }
    let too_long = |s: &str| s.len() > P2P_ADDR_MAX;
    if info.addrs.iter().any(|a| too_long(a))
        || info.cert_fingerprint.as_deref().is_some_and(too_long)
    {
        return Err(Error::InvalidRequest(format!(
            "p2p: addresses and fingerprints are at most {P2P_ADDR_MAX} characters"
        )));
    }
    Ok(info)
}

/// Folds a username to lower case and checks it: 3 to 32 characters of
/// `a-z 0-9 _ . -`.
pub fn username(raw: &str) -> Result<String> {
    let name = raw.to_ascii_lowercase();
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    if !ok_chars || !(USERNAME_MIN..=USERNAME_MAX).contains(&name.len()) {
        return Err(Error::InvalidRequest(format!(
            "username must be {USERNAME_MIN} to {USERNAME_MAX} characters of a-z, 0-9, '_', '.' and '-'"
        )));
    }
    Ok(name)
}

/// Checks a password's length: 8 to 1024 characters.
pub fn password(raw: &str) -> Result<()> {
    let n = raw.chars().count();
    if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&n) {
        return Err(Error::InvalidRequest(format!(
            "password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters"
        )));
    }
    Ok(())
}

/// A one-line human-readable text: trimmed, no control characters.
fn line(field: &str, raw: &str, max_chars: usize, allow_empty: bool) -> Result<String> {
    let text = raw.trim();
    if text.chars().any(char::is_control) {
        return Err(Error::InvalidRequest(format!(
            "{field} must not contain control characters"
        )));
    }
    let n = text.chars().count();
    if (!allow_empty && n == 0) || n > max_chars {
        let min = if allow_empty { 0 } else { 1 };
        return Err(Error::InvalidRequest(format!(
            "{field} must be {min} to {max_chars} characters"
        )));
    }
    Ok(text.to_owned())
}

/// A display name; empty falls back to the username.
pub fn display_name(raw: Option<&str>, username: &str) -> Result<String> {
    match raw.map(|r| line("display_name", r, DISPLAY_NAME_MAX, true)) {
        None => Ok(username.to_owned()),
        Some(Ok(name)) if name.is_empty() => Ok(username.to_owned()),
        Some(result) => result,
    }
}

/// A room name: 1 to 64 characters, no control characters.
pub fn room_name(raw: &str) -> Result<String> {
    line("room name", raw, ROOM_NAME_MAX, false)
}

/// A room topic: up to 512 characters; empty means none.
pub fn topic(raw: Option<&str>) -> Result<Option<String>> {
    match raw {
        None => Ok(None),
        Some(t) => {
            let t = line("topic", t, TOPIC_MAX, true)?;
            Ok((!t.is_empty()).then_some(t))
        }
    }
}

/// Message content: 1 to 16,384 bytes of UTF-8, kept as sent.
pub fn content(raw: &str) -> Result<()> {
    if raw.trim().is_empty() {
        return Err(Error::InvalidRequest("content must not be empty".into()));
    }
    if raw.len() > CONTENT_MAX_BYTES {
        return Err(Error::PayloadTooLarge(format!(
            "content is {} bytes; the limit is {CONTENT_MAX_BYTES}",
            raw.len()
        )));
    }
    Ok(())
}

/// A client's idempotency key: 1 to 128 printable characters.
pub fn client_id(raw: &str) -> Result<()> {
    if raw.is_empty() || raw.len() > CLIENT_ID_MAX || raw.chars().any(char::is_control) {
        return Err(Error::InvalidRequest(format!(
            "client_id must be 1 to {CLIENT_ID_MAX} printable characters"
        )));
    }
    Ok(())
}

/// A device name; none or empty becomes `unnamed device`.
pub fn device_name(raw: Option<&str>) -> Result<String> {
    let name = match raw {
        None => String::new(),
        Some(r) => line("device_name", r, DEVICE_NAME_MAX, true)?,
    };
    Ok(if name.is_empty() {
        "unnamed device".to_owned()
    } else {
        name
    })
}

/// A presence status message.
pub fn presence_message(raw: Option<&str>) -> Result<Option<String>> {
    raw.map(|m| line("presence message", m, PRESENCE_MESSAGE_MAX, true))
        .transpose()
        .map(|m| m.filter(|m| !m.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn usernames_fold_and_check() {
        assert_eq!(username("Alice_01").expect("valid"), "alice_01");
        for bad in ["ab", "a b c", "ünï", "x".repeat(33).as_str(), "ok/no"] {
            assert!(username(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn content_limits() {
        assert!(content("").is_err());
        assert!(content("   ").is_err());
        assert!(content(&"é".repeat(CONTENT_MAX_BYTES / 2)).is_ok());
        let err = content(&"x".repeat(CONTENT_MAX_BYTES + 1)).expect_err("too long");
        assert!(matches!(err, Error::PayloadTooLarge(_)));
    }

    #[test]
    fn names_refuse_control_characters() {
        assert!(room_name("a\u{0}b").is_err());
        assert!(room_name("  ").is_err());
        assert_eq!(room_name("  general ").expect("ok"), "general");
        assert_eq!(topic(Some("")).expect("ok"), None);
        assert_eq!(display_name(Some(""), "bob").expect("ok"), "bob");
    }

    proptest! {
        #[test]
        fn username_never_panics_and_accepts_only_the_alphabet(s in ".{0,40}") {
            if let Ok(name) = username(&s) {
                prop_assert!(name.len() >= USERNAME_MIN && name.len() <= USERNAME_MAX);
                prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b)));
            }
        }
    }
}
