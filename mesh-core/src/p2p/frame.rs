//! The binary frame layout of agent-to-agent sessions (see `docs/p2p.md`).
//!
//! Every frame is
//!
//! ```text
//! +----------------+---------+----------------------+
//! | len: u32 (BE)  | type: u8| body: len - 1 bytes  |
//! +----------------+---------+----------------------+
//! ```
//!
//! where `len` counts the type byte and the body and is at most
//! [`MAX_FRAME_LEN`]. Metadata bodies are JSON (small, evolvable, easy to
//! read in a capture); bulk bodies (file chunks, terminal bytes) are raw so
//! a 256 KiB chunk costs 13 bytes of framing and no encoding.
//!
//! [`decode`] works on a byte buffer and never panics, whatever the bytes:
//! a buffer too short for a frame is `Ok(None)`, anything malformed is a
//! [`FrameError`]. [`read_frame`] and [`write_frame`] move frames over any
//! tokio byte stream (a QUIC stream in practice).

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::P2pErrorCode;
use crate::protocol::{SessionId, SessionKind};

/// The version of the frame protocol this module speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest `len` (type byte + body) a frame may declare: 1 MiB.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// The size of a file chunk's data (the last chunk may be shorter).
pub const CHUNK_SIZE: usize = 256 * 1024;

/// Error messages are cut to this many bytes when encoded.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// The bytes before a frame's body: the `u32` length and the type byte.
pub const HEADER_LEN: usize = 5;

/// The bytes before a `FILE_CHUNK`'s data: the frame header and the `u64`
/// offset.
pub const CHUNK_HEADER_LEN: usize = HEADER_LEN + 8;

/// Frame type bytes.
mod ty {
    pub(super) const HELLO: u8 = 0x01;
    pub(super) const WELCOME: u8 = 0x02;
    pub(super) const ERROR: u8 = 0x03;
    pub(super) const FILE_META: u8 = 0x10;
    pub(super) const FILE_RESUME_FROM: u8 = 0x11;
    pub(super) const FILE_CHUNK: u8 = 0x12;
    pub(super) const FILE_DONE: u8 = 0x13;
    pub(super) const FILE_ACK: u8 = 0x14;
    pub(super) const FOLDER_MANIFEST: u8 = 0x20;
    pub(super) const TERM_OUTPUT: u8 = 0x30;
    pub(super) const TERM_INPUT: u8 = 0x31;
    pub(super) const TERM_RESIZE: u8 = 0x32;
    pub(super) const TERM_EXIT: u8 = 0x33;
}

/// `P2P_HELLO`: the first frame of every session, initiator to target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionHello {
    /// [`PROTOCOL_VERSION`] of the initiator.
    pub version: u32,
    /// The session the initiator means to open.
    pub session_id: SessionId,
    /// The server-signed session token (a compact JWT).
    pub session_token: String,
}

/// `P2P_WELCOME`: the target accepted the hello.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionWelcome {
    /// [`PROTOCOL_VERSION`] of the target.
    pub version: u32,
    /// The session, echoed.
    pub session_id: SessionId,
    /// The kind the token names.
    pub kind: SessionKind,
}

/// `FILE_META`: announces one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// A file name (file sessions) or a `/`-separated relative path that
    /// must equal the next file entry of the manifest (folder sessions).
    pub name: String,
    /// The size in bytes.
    pub size: u64,
    /// The BLAKE3 hash of the whole content.
    #[serde(with = "hex_hash")]
    pub blake3: blake3::Hash,
    /// Whether the sender can resume from an offset (default true).
    #[serde(default = "yes")]
    pub resume: bool,
}

fn yes() -> bool {
    true
}

/// What a [`FolderManifest`] entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file, sent later as `FILE_META` + chunks.
    File,
    /// A directory (possibly empty).
    Dir,
}

/// One entry of a [`FolderManifest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// A `/`-separated path relative to the folder's root.
    pub path: String,
    /// File or directory.
    pub kind: EntryKind,
    /// The size in bytes (0 for directories).
    #[serde(default)]
    pub size: u64,
    /// The BLAKE3 hash (files only).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_hex_hash"
    )]
    pub blake3: Option<blake3::Hash>,
}

/// `FOLDER_MANIFEST`: everything a folder session will carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderManifest {
    /// The folder's own name: entries land in `<destination>/<name>/`.
    pub name: String,
    /// Directories and files, a directory before what it contains.
    pub entries: Vec<ManifestEntry>,
}

/// `P2P_ERROR`: why the sender of the frame gives up (or, for
/// [`P2pErrorCode::ReadOnly`], refuses one frame).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorFrame {
    /// What went wrong.
    pub code: P2pErrorCode,
    /// For people; at most [`MAX_ERROR_MESSAGE`] bytes.
    pub message: String,
}

/// One frame of the P2P protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// `P2P_HELLO` (0x01), JSON body.
    Hello(SessionHello),
    /// `P2P_WELCOME` (0x02), JSON body.
    Welcome(SessionWelcome),
    /// `P2P_ERROR` (0x03): `code: u16 BE` then a UTF-8 message.
    Error(ErrorFrame),
    /// `FILE_META` (0x10), JSON body.
    FileMeta(FileMeta),
    /// `FILE_RESUME_FROM` (0x11): `offset: u64 BE`, `prefix_blake3: [u8; 32]`.
    /// The receiver holds the first `offset` bytes, whose hash is
    /// `prefix_blake3`; `offset` 0 means "send everything".
    FileResumeFrom {
        /// Bytes the receiver already holds.
        offset: u64,
        /// BLAKE3 of those bytes, for the sender to check.
        prefix_blake3: blake3::Hash,
    },
    /// `FILE_CHUNK` (0x12): `offset: u64 BE` then raw data.
    FileChunk {
        /// Where `data` starts in the file.
        offset: u64,
        /// At most [`CHUNK_SIZE`] bytes.
        data: Bytes,
    },
    /// `FILE_DONE` (0x13): empty body; every chunk has been sent.
    FileDone,
    /// `FILE_ACK` (0x14): `ok: u8` (0 or 1) then an optional UTF-8 note.
    /// The file (or the folder manifest) was accepted.
    FileAck {
        /// Whether it was accepted.
        ok: bool,
        /// Optional note.
        message: String,
    },
    /// `FOLDER_MANIFEST` (0x20), JSON body.
    FolderManifest(FolderManifest),
    /// `TERM_OUTPUT` (0x30): raw bytes from the PTY.
    TermOutput(Bytes),
    /// `TERM_INPUT` (0x31): raw bytes for the PTY.
    TermInput(Bytes),
    /// `TERM_RESIZE` (0x32): `cols: u16 BE`, `rows: u16 BE`.
    TermResize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// `TERM_EXIT` (0x33): `has_code: u8`, then `code: u32 BE` if 1.
    TermExit {
        /// The exit code, when the process exited normally.
        code: Option<u32>,
    },
}

impl Frame {
    /// The wire name of the frame type, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "P2P_HELLO",
            Frame::Welcome(_) => "P2P_WELCOME",
            Frame::Error(_) => "P2P_ERROR",
            Frame::FileMeta(_) => "FILE_META",
            Frame::FileResumeFrom { .. } => "FILE_RESUME_FROM",
            Frame::FileChunk { .. } => "FILE_CHUNK",
            Frame::FileDone => "FILE_DONE",
            Frame::FileAck { .. } => "FILE_ACK",
            Frame::FolderManifest(_) => "FOLDER_MANIFEST",
            Frame::TermOutput(_) => "TERM_OUTPUT",
            Frame::TermInput(_) => "TERM_INPUT",
            Frame::TermResize { .. } => "TERM_RESIZE",
            Frame::TermExit { .. } => "TERM_EXIT",
        }
    }

    /// A `P2P_ERROR` frame.
    pub fn error(code: P2pErrorCode, message: impl Into<String>) -> Self {
        Frame::Error(ErrorFrame {
            code,
            message: message.into(),
        })
    }
}

/// Why bytes are not a frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// `len` is 0 or above [`MAX_FRAME_LEN`].
    #[error("frame length {0} outside 1..={MAX_FRAME_LEN}")]
    BadLength(u64),
    /// An unknown type byte.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// The body does not match its type's layout.
    #[error("malformed {frame} body: {reason}")]
    Malformed {
        /// The frame type.
        frame: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// A frame to encode is larger than [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes is larger than {MAX_FRAME_LEN}")]
    TooLarge(usize),
}

fn malformed(frame: &'static str, reason: impl ToString) -> FrameError {
    FrameError::Malformed {
        frame,
        reason: reason.to_string(),
    }
}

/// Encodes `frame` (header included). Fails only for a frame larger than
/// [`MAX_FRAME_LEN`] or metadata that does not serialise.
pub fn encode(frame: &Frame) -> Result<Bytes, FrameError> {
    let (t, body): (u8, Vec<u8>) = match frame {
        Frame::Hello(h) => (ty::HELLO, json(h, "P2P_HELLO")?),
        Frame::Welcome(w) => (ty::WELCOME, json(w, "P2P_WELCOME")?),
        Frame::Error(e) => {
            let msg = truncate_utf8(&e.message, MAX_ERROR_MESSAGE);
            let mut b = Vec::with_capacity(2 + msg.len());
            b.extend_from_slice(&e.code.as_u16().to_be_bytes());
            b.extend_from_slice(msg.as_bytes());
            (ty::ERROR, b)
        }
        Frame::FileMeta(m) => (ty::FILE_META, json(m, "FILE_META")?),
        Frame::FileResumeFrom {
            offset,
            prefix_blake3,
        } => {
            let mut b = Vec::with_capacity(40);
            b.extend_from_slice(&offset.to_be_bytes());
            b.extend_from_slice(prefix_blake3.as_bytes());
            (ty::FILE_RESUME_FROM, b)
        }
        Frame::FileChunk { offset, data } => {
            let header = file_chunk_header(*offset, data.len())?;
            let mut out = BytesMut::with_capacity(header.len() + data.len());
            out.extend_from_slice(&header);
            out.extend_from_slice(data);
            return Ok(out.freeze());
        }
        Frame::FileDone => (ty::FILE_DONE, Vec::new()),
        Frame::FileAck { ok, message } => {
            let msg = truncate_utf8(message, MAX_ERROR_MESSAGE);
            let mut b = vec![u8::from(*ok)];
            b.extend_from_slice(msg.as_bytes());
            (ty::FILE_ACK, b)
        }
        Frame::FolderManifest(m) => (ty::FOLDER_MANIFEST, json(m, "FOLDER_MANIFEST")?),
        Frame::TermOutput(d) => (ty::TERM_OUTPUT, d.to_vec()),
        Frame::TermInput(d) => (ty::TERM_INPUT, d.to_vec()),
        Frame::TermResize { cols, rows } => {
            let mut b = Vec::with_capacity(4);
            b.extend_from_slice(&cols.to_be_bytes());
            b.extend_from_slice(&rows.to_be_bytes());
            (ty::TERM_RESIZE, b)
        }
        Frame::TermExit { code } => match code {
            Some(c) => {
                let mut b = vec![1];
                b.extend_from_slice(&c.to_be_bytes());
                (ty::TERM_EXIT, b)
            }
            None => (ty::TERM_EXIT, vec![0]),
        },
    };
    let len = 1 + body.len();
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    let mut out = BytesMut::with_capacity(4 + len);
    out.put_u32(len as u32);
    out.put_u8(t);
    out.extend_from_slice(&body);
    Ok(out.freeze())
}

/// The bytes of a `FILE_CHUNK` frame that come before its `data_len` bytes
/// of data at `offset`.
///
/// The file sender's hot path: it writes this header and then hands the
/// data to the stream as it was read, instead of copying it into a frame
/// ([`encode`] gives the same bytes, header and data in one buffer).
pub fn file_chunk_header(
    offset: u64,
    data_len: usize,
) -> Result<[u8; CHUNK_HEADER_LEN], FrameError> {
    let len = 1 + 8 + data_len;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    let mut h = [0u8; CHUNK_HEADER_LEN];
    let mut w = &mut h[..];
    w.put_u32(len as u32);
    w.put_u8(ty::FILE_CHUNK);
    w.put_u64(offset);
    Ok(h)
}

fn json<T: Serialize>(value: &T, frame: &'static str) -> Result<Vec<u8>, FrameError> {
    serde_json::to_vec(value).map_err(|e| malformed(frame, e))
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char
/// boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

/// Reads the length of the frame starting at `buf`, if the header is there.
fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let mut len = [0u8; 4];
    len.copy_from_slice(header);
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME_LEN {
        return Err(FrameError::BadLength(len as u64));
    }
    Ok(Some(len))
}

/// Decodes the frame at the start of `buf`.
///
/// `Ok(None)`: `buf` holds only part of a frame (read more). `Ok(Some((frame,
/// used)))`: a frame and the number of bytes it took. An oversized length is
/// an error as soon as the 4-byte header is in, before any body is buffered.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(len) = frame_len(buf)? else {
        return Ok(None);
    };
    let Some(rest) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let (&t, body) = rest
        .split_first()
        .ok_or(FrameError::BadLength(len as u64))?;
    let frame = decode_body(t, Bytes::copy_from_slice(body))?;
    Ok(Some((frame, 4 + len)))
}

/// Decodes a frame body of type `t`.
pub fn decode_body(t: u8, body: Bytes) -> Result<Frame, FrameError> {
    Ok(match t {
        ty::HELLO => Frame::Hello(from_json(&body, "P2P_HELLO")?),
        ty::WELCOME => Frame::Welcome(from_json(&body, "P2P_WELCOME")?),
        ty::ERROR => {
            let (code, msg) = split_at_checked(&body, 2, "P2P_ERROR")?;
            let code = u16::from_be_bytes([code[0], code[1]]);
            Frame::Error(ErrorFrame {
                code: P2pErrorCode::from_u16(code),
                message: utf8(msg, "P2P_ERROR")?,
            })
        }
        ty::FILE_META => Frame::FileMeta(from_json(&body, "FILE_META")?),
        ty::FILE_RESUME_FROM => {
            if body.len() != 40 {
                return Err(malformed("FILE_RESUME_FROM", "body is not 40 bytes"));
            }
            let (offset, hash) = split_at_checked(&body, 8, "FILE_RESUME_FROM")?;
            let mut o = [0u8; 8];
            o.copy_from_slice(offset);
            let mut h = [0u8; 32];
            h.copy_from_slice(hash);
            Frame::FileResumeFrom {
                offset: u64::from_be_bytes(o),
                prefix_blake3: blake3::Hash::from_bytes(h),
            }
        }
        ty::FILE_CHUNK => {
            if body.len() < 8 {
                return Err(malformed("FILE_CHUNK", "no offset"));
            }
            let mut o = [0u8; 8];
            o.copy_from_slice(&body[..8]);
            let data = body.slice(8..);
            if data.len() > CHUNK_SIZE {
                return Err(malformed("FILE_CHUNK", "chunk larger than CHUNK_SIZE"));
            }
            Frame::FileChunk {
                offset: u64::from_be_bytes(o),
                data,
            }
        }
        ty::FILE_DONE => {
            if !body.is_empty() {
                return Err(malformed("FILE_DONE", "non-empty body"));
            }
            Frame::FileDone
        }
        ty::FILE_ACK => {
            let (ok, msg) = split_at_checked(&body, 1, "FILE_ACK")?;
            let ok = match ok[0] {
                0 => false,
                1 => true,
                b => return Err(malformed("FILE_ACK", format!("ok byte {b}"))),
            };
            Frame::FileAck {
                ok,
                message: utf8(msg, "FILE_ACK")?,
            }
        }
        ty::FOLDER_MANIFEST => Frame::FolderManifest(from_json(&body, "FOLDER_MANIFEST")?),
        ty::TERM_OUTPUT => Frame::TermOutput(body),
        ty::TERM_INPUT => Frame::TermInput(body),
        ty::TERM_RESIZE => {
            if body.len() != 4 {
                return Err(malformed("TERM_RESIZE", "body is not 4 bytes"));
            }
            Frame::TermResize {
                cols: u16::from_be_bytes([body[0], body[1]]),
                rows: u16::from_be_bytes([body[2], body[3]]),
            }
        }
        ty::TERM_EXIT => match body.as_ref() {
            [0] => Frame::TermExit { code: None },
            [1, a, b, c, d] => Frame::TermExit {
                code: Some(u32::from_be_bytes([*a, *b, *c, *d])),
            },
            _ => return Err(malformed("TERM_EXIT", "bad body")),
        },
        other => return Err(FrameError::UnknownType(other)),
    })
}

fn split_at_checked<'a>(
    body: &'a [u8],
    at: usize,
    frame: &'static str,
) -> Result<(&'a [u8], &'a [u8]), FrameError> {
    body.split_at_checked(at)
        .ok_or_else(|| malformed(frame, "body too short"))
}

fn utf8(bytes: &[u8], frame: &'static str) -> Result<String, FrameError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed(frame, "message is not UTF-8"))
}

fn from_json<T: serde::de::DeserializeOwned>(
    body: &[u8],
    frame: &'static str,
) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(|e| malformed(frame, e))
}

/// Reads one frame from `r`.
///
/// `Ok(None)` when the stream ends cleanly between frames. A length above
/// [`MAX_FRAME_LEN`] is refused before its body is read.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, ReadError> {
    let mut header = [0u8; HEADER_LEN];
    // The first byte separately: EOF there is a clean end.
    let n = r.read(&mut header[..1]).await.map_err(ReadError::Io)?;
    if n == 0 {
        return Ok(None);
    }
    read_exact(r, &mut header[1..]).await?;
    let len = frame_len(&header)?.ok_or(FrameError::Truncated)?;
    // Read straight into spare capacity: no zero-filling of up to 1 MiB per
    // frame before the bytes overwrite it.
    let want = len - 1;
    let mut body = BytesMut::with_capacity(want);
    let mut limited = AsyncReadExt::take(&mut *r, want as u64);
    while body.len() < want {
        let n = limited.read_buf(&mut body).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Frame(FrameError::Truncated));
        }
    }
    Ok(Some(decode_body(header[4], body.freeze())?))
}

async fn read_exact<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), ReadError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(ReadError::Frame(FrameError::Truncated))
        }
        Err(e) => Err(ReadError::Io(e)),
    }
}

/// Writes one frame to `w`.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> Result<(), ReadError> {
    let bytes = encode(frame)?;
    w.write_all(&bytes).await.map_err(ReadError::Io)
}

/// Why [`read_frame`] or [`write_frame`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The stream failed (for QUIC: the connection or stream was lost).
    #[error("stream: {0}")]
    Io(#[source] std::io::Error),
    /// The bytes are not a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(h: &blake3::Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(h.to_hex().as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<blake3::Hash, D::Error> {
        let s = String::deserialize(d)?;
        blake3::Hash::from_hex(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

mod opt_hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        h: &Option<blake3::Hash>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match h {
            Some(h) => s.serialize_some(h.to_hex().as_str()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<blake3::Hash>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| blake3::Hash::from_hex(s.as_bytes()).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Frame> {
        let h = blake3::hash(b"mesh");
        vec![
            Frame::Hello(SessionHello {
                version: PROTOCOL_VERSION,
                session_id: SessionId::new(),
                session_token: "a.b.c".into(),
            }),
            Frame::Welcome(SessionWelcome {
                version: PROTOCOL_VERSION,
                session_id: SessionId::new(),
                kind: SessionKind::Folder,
            }),
            Frame::error(P2pErrorCode::TokenExpired, "expired"),
            Frame::error(P2pErrorCode::Unknown(4242), "from the future"),
            Frame::FileMeta(FileMeta {
                name: "a.txt".into(),
                size: 5,
                blake3: h,
                resume: true,
            }),
            Frame::FileResumeFrom {
                offset: 1 << 40,
                prefix_blake3: h,
            },
            Frame::FileChunk {
                offset: 7,
                data: Bytes::from_static(b"hello"),
            },
            Frame::FileChunk {
                offset: 0,
                data: Bytes::from(vec![9u8; CHUNK_SIZE]),
            },
            Frame::FileDone,
            Frame::FileAck {
                ok: true,
                message: String::new(),
            },
            Frame::FolderManifest(FolderManifest {
                name: "root".into(),
                entries: vec![
                    ManifestEntry {
                        path: "d".into(),
                        kind: EntryKind::Dir,
                        size: 0,
                        blake3: None,
                    },
                    ManifestEntry {
                        path: "d/f".into(),
                        kind: EntryKind::File,
                        size: 4,
                        blake3: Some(h),
                    },
                ],
            }),
            Frame::TermOutput(Bytes::from_static(b"\x1b[1mhi")),
            Frame::TermInput(Bytes::from_static(b"ls\n")),
            Frame::TermResize { cols: 80, rows: 24 },
            Frame::TermExit { code: Some(3) },
            Frame::TermExit { code: None },
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for frame in samples() {
            let bytes = encode(&frame).expect("encode");
            let (back, used) = decode(&bytes).expect("decode").expect("complete");
            assert_eq!(back, frame);
            assert_eq!(used, bytes.len());
        }
    }

    #[test]
    fn truncated_frames_ask_for_more_and_never_decode() {
        for frame in samples() {
            let bytes = encode(&frame).expect("encode");
            for cut in 0..bytes.len() {
                assert_eq!(
                    decode(&bytes[..cut]),
                    Ok(None),
                    "{} cut at {cut}",
                    frame.name()
                );
            }
        }
    }

    #[test]
    fn oversized_and_empty_lengths_are_refused_from_the_header() {
        let too_big = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert_eq!(
            decode(&too_big),
            Err(FrameError::BadLength(MAX_FRAME_LEN as u64 + 1))
        );
        assert_eq!(decode(&[0, 0, 0, 0]), Err(FrameError::BadLength(0)));
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff, 0x12]),
            Err(FrameError::BadLength(u32::MAX as u64))
        );
        let huge = Frame::TermOutput(Bytes::from(vec![0u8; MAX_FRAME_LEN]));
        assert_eq!(encode(&huge), Err(FrameError::TooLarge(MAX_FRAME_LEN + 1)));
        let chunk = Frame::FileChunk {
            offset: 0,
            data: Bytes::from(vec![0u8; MAX_FRAME_LEN]),
        };
        assert!(matches!(encode(&chunk), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let cases: &[(u8, &[u8])] = &[
            (ty::HELLO, b"{"),
            (ty::HELLO, b"{\"version\":1}"),
            (ty::ERROR, b"\x00"),
            (ty::ERROR, b"\x00\x01\xff\xfe"),
            (
                ty::FILE_META,
                b"{\"name\":\"a\",\"size\":1,\"blake3\":\"zz\"}",
            ),
            (ty::FILE_RESUME_FROM, &[0; 39]),
            (ty::FILE_CHUNK, &[0; 7]),
            (ty::FILE_DONE, &[0]),
            (ty::FILE_ACK, &[]),
            (ty::FILE_ACK, &[2]),
            (ty::TERM_RESIZE, &[0, 80, 0]),
            (ty::TERM_EXIT, &[1, 0]),
            (ty::TERM_EXIT, &[]),
        ];
        for (t, body) in cases {
            assert!(
                matches!(
                    decode_body(*t, Bytes::copy_from_slice(body)),
                    Err(FrameError::Malformed { .. })
                ),
                "type {t:#x} body {body:?}"
            );
        }
        assert_eq!(
            decode_body(0x7f, Bytes::new()),
            Err(FrameError::UnknownType(0x7f))
        );
        let big_chunk = [vec![0u8; 8], vec![1u8; CHUNK_SIZE + 1]].concat();
        assert!(decode_body(ty::FILE_CHUNK, Bytes::from(big_chunk)).is_err());
    }

    #[test]
    fn long_error_messages_are_cut_on_a_char_boundary() {
        let msg = "é".repeat(MAX_ERROR_MESSAGE);
        let bytes = encode(&Frame::error(P2pErrorCode::Internal, msg)).expect("encode");
        let (back, _) = decode(&bytes).expect("decode").expect("complete");
        let Frame::Error(e) = back else {
            panic!("not an error frame")
        };
        assert_eq!(e.message.len(), MAX_ERROR_MESSAGE);
    }

    #[tokio::test]
    async fn streams_carry_frames_and_report_truncation() {
        let frames = samples();
        let mut wire = Vec::new();
        for f in &frames {
            write_frame(&mut wire, f).await.expect("write");
        }
        let mut r = wire.as_slice();
        for f in &frames {
            assert_eq!(read_frame(&mut r).await.expect("read").as_ref(), Some(f));
        }
        assert!(read_frame(&mut r).await.expect("eof").is_none());

        // Cut inside the last frame: truncated, not a clean end.
        let mut r = &wire[..wire.len() - 1];
        let mut got = 0;
        let err = loop {
            match read_frame(&mut r).await {
                Ok(Some(_)) => got += 1,
                Ok(None) => panic!("clean end inside a frame"),
                Err(e) => break e,
            }
        };
        assert_eq!(got, frames.len() - 1);
        assert!(
            matches!(err, ReadError::Frame(FrameError::Truncated)),
            "{err:?}"
        );

        // An oversized header is refused without reading a body.
        let mut r: &[u8] = &[0x7f, 0xff, 0xff, 0xff, 0x12];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(ReadError::Frame(FrameError::BadLength(_)))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn decode_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(Some((_, used))) = decode(&bytes) {
                prop_assert!(used <= bytes.len());
            }
        }

        #[test]
        fn decode_body_never_panics(t in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_body(t, Bytes::from(body));
        }

        #[test]
        fn decode_never_panics_on_mutated_frames(idx in 0usize..16, flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let frames = samples();
            let frame = &frames[idx % frames.len()];
            let mut bytes = encode(frame).expect("encode").to_vec();
            for (at, b) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= b;
            }
            let _ = decode(&bytes);
        }
    }
}
