//! Relay frames: what agents and the server's relay exchange, over UDP (one
//! frame per datagram) or WebSocket (one frame per binary message).
//!
//! Every frame starts with a type byte and the 16 bytes of the session id.
//! The type bytes are `0x21..=0x25`: the top two bits are clear, so a frame
//! is never a QUIC packet (agents run QUIC with the fixed bit set, RFC 9000
//! §17), and it is not a STUN message either (those start with `0x00` or
//! `0x01` and carry the magic cookie at bytes 4..8).
//!
//! | type | frame | direction | after the session id |
//! | ---: | --- | --- | --- |
//! | `0x21` | `BIND` | agent → relay | party `u8` (0 initiator, 1 target), key (32 bytes), session token (UTF-8) |
//! | `0x22` | `BOUND` | relay → agent | nothing |
//! | `0x23` | `REFUSED` | relay → agent | code `u8`, reason (UTF-8) |
//! | `0x24` | `DATA` | both | one QUIC datagram |
//! | `0x25` | `PUNCH` | agent → agent | nonce `u64` (hole punching; never sent to the relay) |

use crate::protocol::{RelayParty, SessionId};

pub const BIND: u8 = 0x21;
pub const BOUND: u8 = 0x22;
pub const REFUSED: u8 = 0x23;
pub const DATA: u8 = 0x24;
pub const PUNCH: u8 = 0x25;

/// Bytes before a `DATA` frame's payload.
pub const DATA_HEADER: usize = 17;
/// The longest frame accepted (a UDP datagram's worth).
pub const MAX_FRAME: usize = 65_535;
/// The longest session token in a `BIND`.
pub const MAX_TOKEN: usize = 2048;
/// The longest reason in a `REFUSED`.
pub const MAX_REASON: usize = 256;

/// Why the relay refused a `BIND` or a `DATA` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefuseCode {
    /// The token's signature, algorithm, issuer or type is wrong.
    InvalidToken,
    /// The token expired.
    TokenExpired,
    /// The token names another session than the frame.
    WrongSession,
    /// The key is not this party's: the binder is not who it says.
    NotAParty,
    /// The server does not relay.
    Disabled,
    /// The session or its user spent its byte budget, or too many relayed
    /// sessions are open.
    OverBudget,
    /// `DATA` for a session this address has not bound (bind again).
    NotBound,
    /// Anything else.
    Other(u8),
}

impl RefuseCode {
    pub fn to_byte(self) -> u8 {
        match self {
            RefuseCode::InvalidToken => 1,
            RefuseCode::TokenExpired => 2,
            RefuseCode::WrongSession => 3,
            RefuseCode::NotAParty => 4,
            RefuseCode::Disabled => 5,
            RefuseCode::OverBudget => 6,
            RefuseCode::NotBound => 7,
            RefuseCode::Other(b) => b,
        }
    }

    pub fn from_byte(b: u8) -> Self {
        match b {
            1 => RefuseCode::InvalidToken,
            2 => RefuseCode::TokenExpired,
            3 => RefuseCode::WrongSession,
            4 => RefuseCode::NotAParty,
            5 => RefuseCode::Disabled,
            6 => RefuseCode::OverBudget,
            7 => RefuseCode::NotBound,
            b => RefuseCode::Other(b),
        }
    }

    /// Whether binding again may help (`NotBound`); every other code is final.
    pub fn is_retryable(self) -> bool {
        matches!(self, RefuseCode::NotBound)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RefuseCode::InvalidToken => "invalid_token",
            RefuseCode::TokenExpired => "token_expired",
            RefuseCode::WrongSession => "wrong_session",
            RefuseCode::NotAParty => "not_a_party",
            RefuseCode::Disabled => "disabled",
            RefuseCode::OverBudget => "over_budget",
            RefuseCode::NotBound => "not_bound",
            RefuseCode::Other(_) => "other",
        }
    }
}

/// One decoded relay frame, borrowing from the datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayFrame<'a> {
    Bind {
        session: SessionId,
        party: RelayParty,
        key: [u8; 32],
        token: &'a str,
    },
    Bound {
        session: SessionId,
    },
    Refused {
        session: SessionId,
        code: RefuseCode,
        reason: &'a str,
    },
    Data {
        session: SessionId,
        payload: &'a [u8],
    },
    Punch {
        session: SessionId,
        nonce: u64,
    },
}

/// Why bytes are not a relay frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a relay frame: {0}")]
pub struct DecodeError(pub &'static str);

/// Whether `bytes` starts like a relay frame (its type byte).
pub fn is_relay_frame(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(BIND..=PUNCH))
}

impl<'a> RelayFrame<'a> {
    /// Decodes one frame; never panics.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_FRAME {
            return Err(DecodeError("too long"));
        }
        let (&ty, rest) = bytes.split_first().ok_or(DecodeError("empty"))?;
        let (sid, body) = rest
            .split_first_chunk::<16>()
            .ok_or(DecodeError("no session id"))?;
        let session = SessionId::from_bytes(*sid);
        match ty {
            BIND => {
                let (&party, body) = body.split_first().ok_or(DecodeError("no party"))?;
                let party = RelayParty::from_byte(party).ok_or(DecodeError("unknown party"))?;
                let (key, token) = body
                    .split_first_chunk::<32>()
                    .ok_or(DecodeError("no key"))?;
                if token.is_empty() || token.len() > MAX_TOKEN {
                    return Err(DecodeError("token length"));
                }
                let token =
                    std::str::from_utf8(token).map_err(|_| DecodeError("token not UTF-8"))?;
                Ok(RelayFrame::Bind {
                    session,
                    party,
                    key: *key,
                    token,
                })
            }
            BOUND if body.is_empty() => Ok(RelayFrame::Bound { session }),
            BOUND => Err(DecodeError("BOUND has no body")),
            REFUSED => {
                let (&code, reason) = body.split_first().ok_or(DecodeError("no code"))?;
                if reason.len() > MAX_REASON {
                    return Err(DecodeError("reason too long"));
                }
                let reason =
                    std::str::from_utf8(reason).map_err(|_| DecodeError("reason not UTF-8"))?;
                Ok(RelayFrame::Refused {
                    session,
                    code: RefuseCode::from_byte(code),
                    reason,
                })
            }
            DATA if body.is_empty() => Err(DecodeError("empty DATA")),
            DATA => Ok(RelayFrame::Data {
                session,
                payload: body,
            }),
            PUNCH => {
                let nonce = <[u8; 8]>::try_from(body).map_err(|_| DecodeError("PUNCH length"))?;
                Ok(RelayFrame::Punch {
                    session,
                    nonce: u64::from_be_bytes(nonce),
                })
            }
            _ => Err(DecodeError("unknown type")),
        }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            RelayFrame::Bind {
                session,
                party,
                key,
                token,
            } => {
                out.push(BIND);
                out.extend_from_slice(session.as_bytes());
                out.push(party.to_byte());
                out.extend_from_slice(key);
                out.extend_from_slice(token.as_bytes());
            }
            RelayFrame::Bound { session } => {
                out.push(BOUND);
                out.extend_from_slice(session.as_bytes());
            }
            RelayFrame::Refused {
                session,
                code,
                reason,
            } => {
                out.push(REFUSED);
                out.extend_from_slice(session.as_bytes());
                out.push(code.to_byte());
                let mut end = reason.len().min(MAX_REASON);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                out.extend_from_slice(&reason.as_bytes()[..end]);
            }
            RelayFrame::Data { session, payload } => {
                out.extend_from_slice(&data_header(*session));
                out.extend_from_slice(payload);
            }
            RelayFrame::Punch { session, nonce } => {
                out.push(PUNCH);
                out.extend_from_slice(session.as_bytes());
                out.extend_from_slice(&nonce.to_be_bytes());
            }
        }
    }

    /// The encoded frame.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// The 17 bytes that make a QUIC datagram a `DATA` frame for `session`.
pub fn data_header(session: SessionId) -> [u8; DATA_HEADER] {
    let mut h = [0u8; DATA_HEADER];
    h[0] = DATA;
    h[1..].copy_from_slice(session.as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_frame_round_trips() {
        let session = SessionId::new();
        let frames = [
            RelayFrame::Bind {
                session,
                party: RelayParty::Target,
                key: [7; 32],
                token: "a.b.c",
            },
            RelayFrame::Bound { session },
            RelayFrame::Refused {
                session,
                code: RefuseCode::TokenExpired,
                reason: "expired",
            },
            RelayFrame::Data {
                session,
                payload: &[0xc0, 1, 2, 3],
            },
            RelayFrame::Punch { session, nonce: 42 },
        ];
        for f in frames {
            let bytes = f.to_vec();
            assert!(is_relay_frame(&bytes));
            assert_eq!(bytes[0] & 0xc0, 0, "never looks like QUIC");
            assert_eq!(RelayFrame::decode(&bytes), Ok(f));
        }
    }

    #[test]
    fn malformed_frames_are_errors() {
        let sid = [1u8; 16];
        let mut bind = vec![BIND];
        bind.extend_from_slice(&sid);
        bind.push(2); // no such party
        bind.extend_from_slice(&[0; 32]);
        bind.extend_from_slice(b"t");
        for bad in [
            &[][..],
            &[DATA][..],
            &[DATA, 1, 2][..],
            &[0x26; 20][..],
            &bind[..],
        ] {
            assert!(RelayFrame::decode(bad).is_err(), "{bad:?}");
        }
        let mut empty_data = vec![DATA];
        empty_data.extend_from_slice(&sid);
        assert!(RelayFrame::decode(&empty_data).is_err());
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let reason = "é".repeat(MAX_REASON);
        let bytes = RelayFrame::Refused {
            session: SessionId::new(),
            code: RefuseCode::Other(99),
            reason: &reason,
        }
        .to_vec();
        assert!(matches!(
            RelayFrame::decode(&bytes),
            Ok(RelayFrame::Refused { code: RefuseCode::Other(99), reason, .. }) if reason.len() <= MAX_REASON
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), ty in BIND..=PUNCH) {
            let _ = RelayFrame::decode(&bytes);
            let mut typed = bytes;
            typed.insert(0, ty);
            if let Ok(f) = RelayFrame::decode(&typed) {
                let encoded = f.to_vec();
                prop_assert_eq!(RelayFrame::decode(&encoded), Ok(f));
            }
        }
    }
}
