//! The rules of one file transfer, without I/O: frames and the current
//! state in, what to write and what to answer out.
//!
//! [`Receiving`] is the receiver after its `FILE_RESUME_FROM`: it checks
//! every `FILE_CHUNK` (the next offset, nothing past the announced size, a
//! restart from 0 when the sender did not trust our prefix) and `FILE_DONE`
//! (only once every byte arrived), and says what to do with the bytes.
//! [`Sending`] is the sender after its `FILE_META`: whether the receiver's
//! offer to resume is worth checking, where to start, and what `FILE_ACK`
//! means. [`Sidecar`] is the part file's record and the rule for how much
//! of a part file may be offered for resuming.
//!
//! `file.rs` drives these over a quinn stream and the file system (a
//! reader and a writer on the blocking pool, hashing, the part file); this
//! module imports no tokio, quinn or `std::fs` (scripts/test.sh checks), so
//! its rules are tested here with plain frames.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::frame::{FileMeta, Frame};
use super::{P2pError, P2pErrorCode};

/// The frame that was not the one expected.
pub(crate) fn unexpected(got: &Frame, wanted: &'static str) -> P2pError {
    P2pError::Unexpected {
        got: got.name(),
        wanted,
    }
}

/// Whether the receiver takes a file announced by `meta` at all.
pub(crate) fn check_size(meta: &FileMeta, max_size: Option<u64>) -> Result<(), P2pError> {
    match max_size {
        Some(max) if meta.size > max => Err(P2pError::refused(
            P2pErrorCode::TooLarge,
            format!("{} bytes is more than the {max} accepted", meta.size),
        )),
        _ => Ok(()),
    }
}

/// What the receiver does with a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// Append `data` to the part file; drop what it holds first if `restart`.
    Append { restart: bool, data: Bytes },
    /// Every byte arrived: check the hash, then put the file in place.
    Done,
}

/// The receiving side of one file, from its `FILE_RESUME_FROM` on.
#[derive(Debug)]
pub(crate) struct Receiving {
    size: u64,
    /// The next byte expected.
    offset: u64,
    /// No chunk yet: the first may restart from 0.
    first: bool,
    /// Content bytes received in this session.
    transferred: u64,
}

impl Receiving {
    /// After offering to resume from `offset` (0: no offer) of a file of `size` bytes.
    pub(crate) fn new(size: u64, offset: u64) -> Self {
        Self {
            size,
            offset,
            first: true,
            transferred: 0,
        }
    }

    /// Bytes of the file held so far.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Content bytes that arrived in this session.
    pub(crate) fn transferred(&self) -> u64 {
        self.transferred
    }

    /// Checks the next frame. An error is a protocol violation to report
    /// to the peer; the bytes already appended stay good for resuming.
    pub(crate) fn on_frame(&mut self, frame: Frame) -> Result<Received, P2pError> {
        match frame {
            Frame::FileChunk { offset: at, data } => {
                // The sender did not trust our prefix: it starts over.
                let restart = self.first && at == 0 && self.offset != 0;
                if restart {
                    self.offset = 0;
                }
                self.first = false;
                if at != self.offset {
                    return Err(P2pError::refused(
                        P2pErrorCode::Protocol,
                        format!("chunk at {at}, expected {}", self.offset),
                    ));
                }
                let n = data.len() as u64;
                let end = self.offset.saturating_add(n);
                if end > self.size {
                    return Err(P2pError::refused(
                        P2pErrorCode::Protocol,
                        "more data than FILE_META announced",
                    ));
                }
                self.offset = end;
                self.transferred += n;
                Ok(Received::Append { restart, data })
            }
            Frame::FileDone if self.offset == self.size => Ok(Received::Done),
            Frame::FileDone => Err(P2pError::refused(
                P2pErrorCode::Protocol,
                format!("FILE_DONE after {} of {} bytes", self.offset, self.size),
            )),
            other => Err(unexpected(&other, "FILE_CHUNK or FILE_DONE")),
        }
    }

    /// The verdict on the whole content, hashed as it was written.
    pub(crate) fn check_hash(meta: &FileMeta, got: blake3::Hash) -> Result<(), P2pError> {
        if got == meta.blake3 {
            return Ok(());
        }
        Err(P2pError::refused(
            P2pErrorCode::HashMismatch,
            format!(
                "{}: content hashes to {got}, not the announced {}",
                meta.name, meta.blake3
            ),
        ))
    }
}

/// What the sender does with the receiver's `FILE_RESUME_FROM`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ResumeOffer {
    /// Send from byte 0.
    FromStart,
    /// Resume at `offset` if our own first `offset` bytes hash to `prefix`.
    Check { offset: u64, prefix: blake3::Hash },
}

/// The sending side of one file, from its `FILE_META` on.
#[derive(Debug)]
pub(crate) struct Sending {
    size: u64,
    resume: bool,
}

impl Sending {
    /// After announcing `size` bytes, accepting to resume or not.
    pub(crate) fn new(size: u64, resume: bool) -> Self {
        Self { size, resume }
    }

    /// Reads the receiver's answer to `FILE_META`.
    pub(crate) fn on_resume_from(&self, frame: Frame) -> Result<ResumeOffer, P2pError> {
        match frame {
            Frame::FileResumeFrom {
                offset,
                prefix_blake3,
            } => Ok(if offset == 0 || !self.resume || offset > self.size {
                ResumeOffer::FromStart
            } else {
                ResumeOffer::Check {
                    offset,
                    prefix: prefix_blake3,
                }
            }),
            other => Err(unexpected(&other, "FILE_RESUME_FROM")),
        }
    }

    /// Where sending starts, given the offer and whether our prefix matched.
    pub(crate) fn start(offer: &ResumeOffer, prefix_matches: bool) -> u64 {
        match offer {
            ResumeOffer::Check { offset, .. } if prefix_matches => *offset,
            _ => 0,
        }
    }

    /// Reads the receiver's answer to `FILE_DONE`.
    pub(crate) fn on_ack(frame: Frame) -> Result<(), P2pError> {
        match frame {
            Frame::FileAck { ok: true, .. } => Ok(()),
            Frame::FileAck { ok: false, message } => Err(P2pError::Remote {
                code: P2pErrorCode::Internal,
                message,
            }),
            other => Err(unexpected(&other, "FILE_ACK")),
        }
    }
}

/// What the sidecar of a part file records.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sidecar {
    version: u32,
    size: u64,
    blake3: String,
    /// Bytes written (and flushed) to the part file.
    written: u64,
}

impl Sidecar {
    /// The record of `written` bytes of the file `meta` announces.
    pub(crate) fn new(meta: &FileMeta, written: u64) -> Self {
        Self {
            version: 1,
            size: meta.size,
            blake3: meta.blake3.to_hex().to_string(),
            written,
        }
    }

    /// How many bytes of a part file holding `part_len` bytes may be
    /// offered for resuming the file `meta` announces: none unless the
    /// sidecar (`raw`) names the same size and hash. The offer's bytes are
    /// hashed before they are offered, and the sender checks that hash
    /// against its own, so a damaged part file is never trusted.
    pub(crate) fn resumable(raw: &[u8], meta: &FileMeta, part_len: u64) -> Option<u64> {
        let s: Sidecar = serde_json::from_slice(raw).ok()?;
        if s != Sidecar::new(meta, s.written) {
            return None;
        }
        let offset = s.written.min(part_len).min(meta.size);
        (offset > 0).then_some(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64) -> FileMeta {
        FileMeta {
            name: "f.bin".into(),
            size,
            blake3: blake3::hash(b"whole"),
            resume: true,
        }
    }

    fn chunk(offset: u64, data: &'static [u8]) -> Frame {
        Frame::FileChunk {
            offset,
            data: Bytes::from_static(data),
        }
    }

    fn append(restart: bool, data: &'static [u8]) -> Received {
        Received::Append {
            restart,
            data: Bytes::from_static(data),
        }
    }

    fn refused_code(r: Result<Received, P2pError>) -> P2pErrorCode {
        match r {
            Err(P2pError::Refused { code, .. }) => code,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn chunks_in_order_then_done() {
        let mut r = Receiving::new(6, 0);
        assert_eq!(
            r.on_frame(chunk(0, b"abc")).expect("1"),
            append(false, b"abc")
        );
        assert_eq!(
            r.on_frame(chunk(3, b"def")).expect("2"),
            append(false, b"def")
        );
        assert_eq!(r.on_frame(Frame::FileDone).expect("done"), Received::Done);
        assert_eq!((r.offset(), r.transferred()), (6, 6));
    }

    #[test]
    fn a_resumed_transfer_continues_at_the_offer() {
        let mut r = Receiving::new(6, 4);
        assert_eq!(
            r.on_frame(chunk(4, b"ef")).expect("tail"),
            append(false, b"ef")
        );
        assert_eq!(r.on_frame(Frame::FileDone).expect("done"), Received::Done);
        assert_eq!(r.transferred(), 2, "only the tail went over the wire");
    }

    #[test]
    fn a_sender_that_distrusts_the_prefix_restarts_from_zero_once() {
        let mut r = Receiving::new(4, 2);
        assert_eq!(
            r.on_frame(chunk(0, b"ab")).expect("restart"),
            append(true, b"ab")
        );
        // Only the first chunk may restart: a later one at 0 is a violation.
        assert_eq!(
            refused_code(r.on_frame(chunk(0, b"ab"))),
            P2pErrorCode::Protocol
        );
    }

    #[test]
    fn gaps_overlaps_and_overruns_are_refused() {
        let mut r = Receiving::new(4, 0);
        assert_eq!(
            refused_code(r.on_frame(chunk(1, b"b"))),
            P2pErrorCode::Protocol
        );
        let mut r = Receiving::new(4, 0);
        r.on_frame(chunk(0, b"ab")).expect("first");
        assert_eq!(
            refused_code(r.on_frame(chunk(1, b"bc"))),
            P2pErrorCode::Protocol
        );
        let mut r = Receiving::new(4, 0);
        assert_eq!(
            refused_code(r.on_frame(chunk(0, b"abcde"))),
            P2pErrorCode::Protocol
        );
        // An offset near u64::MAX does not wrap around the size check.
        let mut r = Receiving::new(u64::MAX - 1, u64::MAX - 2);
        r.first = false;
        assert_eq!(
            refused_code(r.on_frame(chunk(u64::MAX - 2, b"xyz"))),
            P2pErrorCode::Protocol
        );
    }

    #[test]
    fn done_before_every_byte_or_another_frame_is_refused() {
        let mut r = Receiving::new(4, 0);
        r.on_frame(chunk(0, b"ab")).expect("first");
        assert_eq!(
            refused_code(r.on_frame(Frame::FileDone)),
            P2pErrorCode::Protocol
        );
        let mut r = Receiving::new(4, 0);
        assert!(matches!(
            r.on_frame(Frame::FileMeta(meta(4))),
            Err(P2pError::Unexpected { .. })
        ));
    }

    #[test]
    fn the_hash_and_the_size_limit_decide() {
        let m = meta(5);
        assert!(Receiving::check_hash(&m, blake3::hash(b"whole")).is_ok());
        assert!(matches!(
            Receiving::check_hash(&m, blake3::hash(b"other")),
            Err(P2pError::Refused {
                code: P2pErrorCode::HashMismatch,
                ..
            })
        ));
        assert!(check_size(&m, None).is_ok());
        assert!(check_size(&m, Some(5)).is_ok());
        assert!(matches!(
            check_size(&m, Some(4)),
            Err(P2pError::Refused {
                code: P2pErrorCode::TooLarge,
                ..
            })
        ));
    }

    #[test]
    fn the_sender_checks_a_resume_offer_only_when_it_can_hold() {
        let offer = |offset| Frame::FileResumeFrom {
            offset,
            prefix_blake3: blake3::hash(b"pre"),
        };
        let s = Sending::new(10, true);
        assert_eq!(
            s.on_resume_from(offer(0)).expect("0"),
            ResumeOffer::FromStart
        );
        assert_eq!(
            s.on_resume_from(offer(11)).expect("past"),
            ResumeOffer::FromStart
        );
        let check = s.on_resume_from(offer(4)).expect("4");
        assert_eq!(
            check,
            ResumeOffer::Check {
                offset: 4,
                prefix: blake3::hash(b"pre")
            }
        );
        assert_eq!(Sending::start(&check, true), 4);
        assert_eq!(
            Sending::start(&check, false),
            0,
            "a foreign prefix: from the start"
        );
        let no_resume = Sending::new(10, false);
        assert_eq!(
            no_resume.on_resume_from(offer(4)).expect("4"),
            ResumeOffer::FromStart
        );
        assert!(matches!(
            s.on_resume_from(Frame::FileDone),
            Err(P2pError::Unexpected { .. })
        ));
    }

    #[test]
    fn the_ack_is_read() {
        assert!(
            Sending::on_ack(Frame::FileAck {
                ok: true,
                message: String::new()
            })
            .is_ok()
        );
        assert!(matches!(
            Sending::on_ack(Frame::FileAck { ok: false, message: "disk".into() }),
            Err(P2pError::Remote { message, .. }) if message == "disk"
        ));
        assert!(matches!(
            Sending::on_ack(Frame::FileDone),
            Err(P2pError::Unexpected { .. })
        ));
    }

    #[test]
    fn only_a_matching_sidecar_offers_its_bytes() {
        let m = meta(100);
        let raw = |s: &Sidecar| serde_json::to_vec(s).expect("json");
        assert_eq!(
            Sidecar::resumable(&raw(&Sidecar::new(&m, 40)), &m, 64),
            Some(40)
        );
        // Never more than the part file holds, nor than the file's size.
        assert_eq!(
            Sidecar::resumable(&raw(&Sidecar::new(&m, 40)), &m, 30),
            Some(30)
        );
        assert_eq!(
            Sidecar::resumable(&raw(&Sidecar::new(&m, 400)), &m, 500),
            Some(100)
        );
        assert_eq!(Sidecar::resumable(&raw(&Sidecar::new(&m, 0)), &m, 64), None);
        // Another file's record, another version, or garbage: nothing.
        assert_eq!(
            Sidecar::resumable(&raw(&Sidecar::new(&meta(99), 40)), &m, 64),
            None
        );
        let mut other_hash = meta(100);
        other_hash.blake3 = blake3::hash(b"else");
        assert_eq!(
            Sidecar::resumable(&raw(&Sidecar::new(&other_hash, 40)), &m, 64),
            None
        );
        let mut v2 = Sidecar::new(&m, 40);
        v2.version = 2;
        assert_eq!(Sidecar::resumable(&raw(&v2), &m, 64), None);
        assert_eq!(Sidecar::resumable(b"{not json", &m, 64), None);
    }
}
