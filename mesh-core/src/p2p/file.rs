//! Sending and receiving one file: `FILE_META`, `FILE_RESUME_FROM`,
//! `FILE_CHUNK`s, `FILE_DONE`, `FILE_ACK`.
//!
//! The receiver never writes the destination directly. It writes
//! `.<name>.mesh-part` next to it, with a sidecar `.<name>.mesh-part.json`
//! recording the expected size and hash and how many bytes were written,
//! checks the BLAKE3 hash of the whole content at `FILE_DONE`, and only then
//! moves the part file into place (never over an existing file unless told
//! to). A part file that does not hash right is deleted.
//!
//! Resuming: when a part file for the same size and hash exists, the
//! receiver answers `FILE_META` with `FILE_RESUME_FROM { offset,
//! prefix_blake3 }`, the hash of the bytes it holds. The sender hashes its
//! own first `offset` bytes and resumes only if they match; otherwise it
//! sends from 0 and the receiver starts over. A part file tampered with or
//! half-written by a crash is therefore never trusted, and the final
//! whole-file hash would catch it anyway.

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use super::frame::{self, CHUNK_SIZE, FileMeta, Frame};
use super::{ErrorCode, P2pError, path};

/// How far a transfer is, for progress bars.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// The file being transferred (its name, or its path in the folder).
    pub name: String,
    /// Bytes of the whole transfer (all files of a folder) done so far,
    /// resumed bytes included.
    pub done: u64,
    /// Bytes of the whole transfer.
    pub total: u64,
}

/// What a finished file transfer did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileReport {
    /// Receiver: where the file now is. Sender: the file sent.
    pub path: PathBuf,
    /// The name (or relative path) on the wire.
    pub name: String,
    /// The file's size.
    pub size: u64,
    /// The file's BLAKE3 hash, checked by the receiver.
    pub blake3: blake3::Hash,
    /// Where the transfer resumed from (0: from the start).
    pub resumed_from: u64,
    /// Content bytes that went over the wire in this session.
    pub transferred: u64,
}

/// How a file is sent. Built with its methods:
/// `SendOptions::default().name("report.pdf")`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SendOptions {
    pub(crate) name: Option<String>,
    pub(crate) resume: bool,
    pub(crate) flip_byte_at: Option<u64>,
}

impl Default for SendOptions {
    fn default() -> Self {
        Self {
            name: None,
            resume: true,
            flip_byte_at: None,
        }
    }
}

impl SendOptions {
    /// The name the receiver should use (default: the file's own name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Whether to accept resuming from the receiver's verified offset
    /// (default true).
    pub fn resume(mut self, resume: bool) -> Self {
        self.resume = resume;
        self
    }

    /// Test hook: flips the byte at `offset` in what is sent, as a tampering
    /// peer or a corrupting path would. Not for real use.
    #[doc(hidden)]
    pub fn flip_byte_for_tests(mut self, offset: u64) -> Self {
        self.flip_byte_at = Some(offset);
        self
    }
}

/// How files are received. Built with its methods:
/// `ReceiveOptions::default().overwrite(true)`.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ReceiveOptions {
    pub(crate) overwrite: bool,
    pub(crate) max_size: Option<u64>,
}

impl ReceiveOptions {
    /// Whether an existing file may be replaced (default false: the
    /// transfer is refused with [`ErrorCode::AlreadyExists`]).
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    /// Refuses files (or folders, in total) larger than `bytes`
    /// ([`ErrorCode::TooLarge`]).
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = Some(bytes);
        self
    }
}

/// The two halves of a session's stream.
#[derive(Debug)]
pub(crate) struct Wire<R, W> {
    pub(crate) r: R,
    pub(crate) w: W,
}

impl<R, W> Wire<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// The next frame; a `P2P_ERROR` is [`P2pError::Remote`], the end of
    /// the stream an error (every state expects more).
    pub(crate) async fn recv(&mut self) -> Result<Frame, P2pError> {
        match frame::read_frame(&mut self.r).await? {
            Some(Frame::Error(e)) => Err(P2pError::Remote {
                code: e.code,
                message: e.message,
            }),
            Some(f) => Ok(f),
            None => Err(P2pError::Connection("the peer ended the stream".into())),
        }
    }

    pub(crate) async fn send(&mut self, f: &Frame) -> Result<(), P2pError> {
        Ok(frame::write_frame(&mut self.w, f).await?)
    }

    /// Tells the peer why we give up, if `err` is ours to tell, and
    /// returns `err`.
    pub(crate) async fn fail(&mut self, err: P2pError) -> P2pError {
        let code = match &err {
            P2pError::Refused { code, .. } => Some(*code),
            P2pError::Frame(_) | P2pError::Unexpected { .. } => Some(ErrorCode::Protocol),
            P2pError::Io { .. } => Some(ErrorCode::Io),
            P2pError::Terminal(_) => Some(ErrorCode::Terminal),
            _ => None,
        };
        if let Some(code) = code {
            // Best effort: the connection may be gone already.
            let _ = self.send(&Frame::error(code, err.to_string())).await;
        }
        err
    }
}

pub(crate) fn unexpected(got: &Frame, wanted: &'static str) -> P2pError {
    P2pError::Unexpected {
        got: got.name(),
        wanted,
    }
}

/// BLAKE3 of the first `len` bytes of `path` (all of it for `None`).
pub(crate) async fn hash_file(path: &Path, len: Option<u64>) -> Result<blake3::Hash, P2pError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let file = std::fs::File::open(&path).map_err(|e| P2pError::io(&path, e))?;
        let mut hasher = blake3::Hasher::new();
        match len {
            Some(len) => hasher.update_reader(file.take(len)),
            None => hasher.update_reader(file),
        }
        .map_err(|e| P2pError::io(&path, e))?;
        Ok(hasher.finalize())
    })
    .await
    .map_err(|e| P2pError::Connection(format!("hashing task: {e}")))?
}

/// Sends one file. `known_hash` skips hashing when the caller already did
/// (folders hash every file for the manifest).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn send_one<R, W, F>(
    wire: &mut Wire<R, W>,
    path: &Path,
    name: String,
    known_hash: Option<blake3::Hash>,
    opts: &SendOptions,
    base: u64,
    total: u64,
    progress: &mut F,
) -> Result<FileReport, P2pError>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
    F: FnMut(Progress) + Send,
{
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| P2pError::io(path, e))?;
    let meta = file.metadata().await.map_err(|e| P2pError::io(path, e))?;
    if !meta.is_file() {
        return Err(P2pError::BadLocalPath(format!(
            "{}: not a regular file",
            path.display()
        )));
    }
    let size = meta.len();
    let hash = match known_hash {
        Some(h) => h,
        None => hash_file(path, None).await?,
    };
    wire.send(&Frame::FileMeta(FileMeta {
        name: name.clone(),
        size,
        blake3: hash,
        resume: opts.resume,
    }))
    .await?;

    let start = match wire.recv().await? {
        Frame::FileResumeFrom {
            offset,
            prefix_blake3,
        } => {
            if offset == 0 || !opts.resume || offset > size {
                0
            } else if hash_file(path, Some(offset)).await? == prefix_blake3 {
                offset
            } else {
                tracing::info!(%name, offset, "the receiver's partial file does not match; sending from the start");
                0
            }
        }
        other => return Err(wire.fail(unexpected(&other, "FILE_RESUME_FROM")).await),
    };

    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|e| P2pError::io(path, e))?;
    let mut offset = start;
    progress(Progress {
        name: name.clone(),
        done: base + offset,
        total,
    });
    while offset < size {
        let want = (size - offset).min(CHUNK_SIZE as u64) as usize;
        let mut buf = BytesMut::zeroed(want);
        let mut filled = 0;
        while filled < want {
            let n = file
                .read(&mut buf[filled..])
                .await
                .map_err(|e| P2pError::io(path, e))?;
            if n == 0 {
                return Err(P2pError::io(
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file shrank while being sent",
                    ),
                ));
            }
            filled += n;
        }
        if let Some(at) = opts.flip_byte_at
            && (offset..offset + want as u64).contains(&at)
        {
            let i = (at - offset) as usize;
            if let Some(b) = buf.get_mut(i) {
                *b ^= 0xff;
            }
        }
        wire.send(&Frame::FileChunk {
            offset,
            data: buf.freeze(),
        })
        .await?;
        offset += want as u64;
        progress(Progress {
            name: name.clone(),
            done: base + offset,
            total,
        });
    }
    wire.send(&Frame::FileDone).await?;
    match wire.recv().await? {
        Frame::FileAck { ok: true, .. } => Ok(FileReport {
            path: path.to_owned(),
            name,
            size,
            blake3: hash,
            resumed_from: start,
            transferred: size - start,
        }),
        Frame::FileAck { ok: false, message } => Err(P2pError::Remote {
            code: ErrorCode::Internal,
            message,
        }),
        other => Err(wire.fail(unexpected(&other, "FILE_ACK")).await),
    }
}

/// What the sidecar of a part file records.
#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    version: u32,
    size: u64,
    blake3: String,
    /// Bytes written (and flushed) to the part file.
    written: u64,
}

/// The part file and sidecar for `final_path`.
fn part_paths(final_path: &Path) -> Result<(PathBuf, PathBuf), P2pError> {
    let name = final_path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| P2pError::BadLocalPath(format!("{}: no name", final_path.display())))?;
    // Keep part names within the usual 255-byte limit.
    let stem = if name.len() > 200 {
        blake3::hash(name.as_bytes()).to_hex()[..32].to_owned()
    } else {
        name.to_owned()
    };
    let dir = final_path.parent().unwrap_or(Path::new("."));
    Ok((
        dir.join(format!(".{stem}.mesh-part")),
        dir.join(format!(".{stem}.mesh-part.json")),
    ))
}

async fn write_sidecar(path: &Path, meta: &FileMeta, written: u64) -> Result<(), P2pError> {
    let sidecar = Sidecar {
        version: 1,
        size: meta.size,
        blake3: meta.blake3.to_hex().to_string(),
        written,
    };
    let bytes =
        serde_json::to_vec(&sidecar).map_err(|e| P2pError::io(path, std::io::Error::other(e)))?;
    tokio::fs::write(path, bytes)
        .await
        .map_err(|e| P2pError::io(path, e))
}

/// Whether something (a file, a directory, a symlink, even dangling) is at `p`.
pub(crate) async fn exists(p: &Path) -> Result<bool, P2pError> {
    match tokio::fs::symlink_metadata(p).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(P2pError::io(p, e)),
    }
}

/// How many bytes of a part file can be resumed from, with their hash.
async fn resumable(
    part: &Path,
    sidecar: &Path,
    meta: &FileMeta,
) -> Result<Option<(u64, blake3::Hasher)>, P2pError> {
    let Ok(raw) = tokio::fs::read(sidecar).await else {
        return Ok(None);
    };
    let Ok(s) = serde_json::from_slice::<Sidecar>(&raw) else {
        return Ok(None);
    };
    if s.version != 1 || s.size != meta.size || s.blake3 != meta.blake3.to_hex().as_str() {
        return Ok(None);
    }
    let Ok(md) = tokio::fs::symlink_metadata(part).await else {
        return Ok(None);
    };
    if !md.is_file() {
        return Ok(None);
    }
    let offset = s.written.min(md.len()).min(meta.size);
    if offset == 0 {
        return Ok(None);
    }
    let part_owned = part.to_owned();
    let hasher = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let f = std::fs::File::open(&part_owned).map_err(|e| P2pError::io(&part_owned, e))?;
        let mut h = blake3::Hasher::new();
        h.update_reader(f.take(offset))
            .map_err(|e| P2pError::io(&part_owned, e))?;
        Ok::<_, P2pError>(h)
    })
    .await
    .map_err(|e| P2pError::Connection(format!("hashing task: {e}")))??;
    Ok(Some((offset, hasher)))
}

/// Flush the sidecar's record of written bytes this often.
const SIDECAR_EVERY: u64 = 16 * 1024 * 1024;

/// Receives the file `meta` announces into `final_path` (already checked to
/// be under the destination).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn receive_one<R, W, F>(
    wire: &mut Wire<R, W>,
    meta: FileMeta,
    final_path: &Path,
    opts: &ReceiveOptions,
    base: u64,
    total: u64,
    progress: &mut F,
) -> Result<FileReport, P2pError>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
    F: FnMut(Progress) + Send,
{
    if let Some(max) = opts.max_size
        && meta.size > max
    {
        return Err(wire
            .fail(P2pError::refused(
                ErrorCode::TooLarge,
                format!("{} bytes is more than the {max} accepted", meta.size),
            ))
            .await);
    }
    if !opts.overwrite && exists(final_path).await? {
        return Err(wire
            .fail(P2pError::refused(
                ErrorCode::AlreadyExists,
                format!("{} exists", meta.name),
            ))
            .await);
    }
    if let Ok(md) = tokio::fs::symlink_metadata(final_path).await
        && !md.is_file()
    {
        return Err(wire
            .fail(P2pError::refused(
                ErrorCode::AlreadyExists,
                format!("{} exists and is not a regular file", meta.name),
            ))
            .await);
    }
    let (part, sidecar) = part_paths(final_path)?;

    let resume = if meta.resume {
        resumable(&part, &sidecar, &meta).await?
    } else {
        None
    };
    let (mut offset, mut hasher, mut file) = match resume {
        Some((offset, hasher)) => {
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .open(&part)
                .await
                .map_err(|e| P2pError::io(&part, e))?;
            file.set_len(offset)
                .await
                .map_err(|e| P2pError::io(&part, e))?;
            (offset, hasher, file)
        }
        None => {
            // A stale part (or whatever sits at its name, a symlink even)
            // is removed, never followed.
            if exists(&part).await? {
                tokio::fs::remove_file(&part)
                    .await
                    .map_err(|e| P2pError::io(&part, e))?;
            }
            let file = create_new(&part).await?;
            (0, blake3::Hasher::new(), file)
        }
    };
    let resumed_from = offset;
    write_sidecar(&sidecar, &meta, offset).await?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| P2pError::io(&part, e))?;
    wire.send(&Frame::FileResumeFrom {
        offset,
        prefix_blake3: hasher.clone().finalize(),
    })
    .await?;
    progress(Progress {
        name: meta.name.clone(),
        done: base + offset,
        total,
    });

    let mut first = true;
    let mut transferred = 0u64;
    let mut since_sidecar = 0u64;
    let outcome: Result<(), P2pError> = async {
        loop {
            match wire.recv().await? {
                Frame::FileChunk { offset: at, data } => {
                    if first && at == 0 && offset != 0 {
                        // The sender did not trust our prefix: start over.
                        file.set_len(0).await.map_err(|e| P2pError::io(&part, e))?;
                        file.seek(std::io::SeekFrom::Start(0))
                            .await
                            .map_err(|e| P2pError::io(&part, e))?;
                        offset = 0;
                        hasher = blake3::Hasher::new();
                    }
                    first = false;
                    if at != offset {
                        return Err(P2pError::refused(
                            ErrorCode::Protocol,
                            format!("chunk at {at}, expected {offset}"),
                        ));
                    }
                    let end = offset.saturating_add(data.len() as u64);
                    if end > meta.size {
                        return Err(P2pError::refused(
                            ErrorCode::Protocol,
                            "more data than FILE_META announced",
                        ));
                    }
                    file.write_all(&data)
                        .await
                        .map_err(|e| P2pError::io(&part, e))?;
                    hasher.update(&data);
                    offset = end;
                    transferred += data.len() as u64;
                    since_sidecar += data.len() as u64;
                    if since_sidecar >= SIDECAR_EVERY {
                        since_sidecar = 0;
                        file.flush().await.map_err(|e| P2pError::io(&part, e))?;
                        write_sidecar(&sidecar, &meta, offset).await?;
                    }
                    progress(Progress {
                        name: meta.name.clone(),
                        done: base + offset,
                        total,
                    });
                }
                Frame::FileDone => {
                    if offset != meta.size {
                        return Err(P2pError::refused(
                            ErrorCode::Protocol,
                            format!("FILE_DONE after {offset} of {} bytes", meta.size),
                        ));
                    }
                    return Ok(());
                }
                other => return Err(unexpected(&other, "FILE_CHUNK or FILE_DONE")),
            }
        }
    }
    .await;

    if let Err(e) = outcome {
        // Keep what arrived for a later resume: it is re-hashed and checked
        // by the sender before it is trusted.
        let saved = async {
            file.flush().await.map_err(|e| P2pError::io(&part, e))?;
            file.sync_data().await.map_err(|e| P2pError::io(&part, e))?;
            // Another session may have finished the same file meanwhile (a
            // resumed send while this one waited out its idle time-out):
            // then there is no part file left to describe.
            if tokio::fs::try_exists(&part).await.unwrap_or(false) {
                write_sidecar(&sidecar, &meta, offset).await?;
            }
            Ok::<(), P2pError>(())
        }
        .await;
        if let Err(save) = saved {
            tracing::warn!(error = %save, "could not record the partial file for resuming");
        }
        return Err(wire.fail(e).await);
    }

    file.flush().await.map_err(|e| P2pError::io(&part, e))?;
    file.sync_all().await.map_err(|e| P2pError::io(&part, e))?;
    drop(file);
    let got = hasher.finalize();
    if got != meta.blake3 {
        discard(&part, &sidecar).await;
        return Err(wire
            .fail(P2pError::refused(
                ErrorCode::HashMismatch,
                format!(
                    "{}: content hashes to {got}, not the announced {}",
                    meta.name, meta.blake3
                ),
            ))
            .await);
    }
    if let Err(e) = put_in_place(&part, final_path, opts.overwrite).await {
        discard(&part, &sidecar).await;
        return Err(wire.fail(e).await);
    }
    let _ = tokio::fs::remove_file(&sidecar).await;
    wire.send(&Frame::FileAck {
        ok: true,
        message: String::new(),
    })
    .await?;
    Ok(FileReport {
        path: final_path.to_owned(),
        name: meta.name,
        size: meta.size,
        blake3: meta.blake3,
        resumed_from,
        transferred,
    })
}

async fn create_new(path: &Path) -> Result<tokio::fs::File, P2pError> {
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    opts.open(path).await.map_err(|e| P2pError::io(path, e))
}

async fn discard(part: &Path, sidecar: &Path) {
    for p in [part, sidecar] {
        if let Err(e) = tokio::fs::remove_file(p).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %p.display(), error = %e, "could not remove");
        }
    }
}

/// Moves the verified part file to its final name. Without `overwrite`,
/// never replaces anything, even something that appeared meanwhile: a hard
/// link fails if the name exists (falling back to a check and a rename on
/// file systems without hard links).
async fn put_in_place(part: &Path, final_path: &Path, overwrite: bool) -> Result<(), P2pError> {
    if overwrite {
        return tokio::fs::rename(part, final_path)
            .await
            .map_err(|e| P2pError::io(final_path, e));
    }
    match tokio::fs::hard_link(part, final_path).await {
        Ok(()) => tokio::fs::remove_file(part)
            .await
            .map_err(|e| P2pError::io(part, e)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(P2pError::refused(
            ErrorCode::AlreadyExists,
            format!("{} exists", final_path.display()),
        )),
        Err(_) => {
            if exists(final_path).await? {
                return Err(P2pError::refused(
                    ErrorCode::AlreadyExists,
                    format!("{} exists", final_path.display()),
                ));
            }
            tokio::fs::rename(part, final_path)
                .await
                .map_err(|e| P2pError::io(final_path, e))
        }
    }
}

/// Receives a single-file session's file into `dest_dir`.
pub(crate) async fn receive_file<R, W, F>(
    wire: &mut Wire<R, W>,
    dest_dir: &Path,
    opts: &ReceiveOptions,
    mut progress: F,
) -> Result<FileReport, P2pError>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
    F: FnMut(Progress) + Send,
{
    let meta = match wire.recv().await? {
        Frame::FileMeta(m) => m,
        other => return Err(wire.fail(unexpected(&other, "FILE_META")).await),
    };
    if let Err(e) = path::check_component(&meta.name) {
        return Err(wire.fail(e).await);
    }
    let md = tokio::fs::metadata(dest_dir)
        .await
        .map_err(|e| P2pError::io(dest_dir, e))?;
    if !md.is_dir() {
        return Err(P2pError::BadLocalPath(format!(
            "{}: not a directory",
            dest_dir.display()
        )));
    }
    let final_path = dest_dir.join(&meta.name);
    let total = meta.size;
    receive_one(wire, meta, &final_path, opts, 0, total, &mut progress).await
}

/// Sends a single-file session's file.
pub(crate) async fn send_file<R, W, F>(
    wire: &mut Wire<R, W>,
    path: &Path,
    opts: &SendOptions,
    mut progress: F,
) -> Result<FileReport, P2pError>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
    F: FnMut(Progress) + Send,
{
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                P2pError::BadLocalPath(format!("{}: no UTF-8 file name", path.display()))
            })?
            .to_owned(),
    };
    path::check_component(&name)?;
    let size = tokio::fs::metadata(path)
        .await
        .map_err(|e| P2pError::io(path, e))?
        .len();
    send_one(wire, path, name, None, opts, 0, size, &mut progress).await
}

/// A chunk of data, for tests that write raw frames.
#[cfg(test)]
pub(crate) fn chunk(offset: u64, data: &'static [u8]) -> Frame {
    Frame::FileChunk {
        offset,
        data: bytes::Bytes::from_static(data),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! The file state machine over an in-memory pipe (no QUIC): the edge
    //! cases that are awkward to provoke over a real connection.

    use super::*;
    use bytes::Bytes;
    use tokio::io::{DuplexStream, ReadHalf, WriteHalf, duplex, split};

    pub(crate) type Half = Wire<ReadHalf<DuplexStream>, WriteHalf<DuplexStream>>;

    pub(crate) fn pipe() -> (Half, Half) {
        let (a, b) = duplex(4 * 1024 * 1024);
        let (ar, aw) = split(a);
        let (br, bw) = split(b);
        (Wire { r: ar, w: aw }, Wire { r: br, w: bw })
    }

    fn meta(name: &str, content: &[u8]) -> FileMeta {
        FileMeta {
            name: name.into(),
            size: content.len() as u64,
            blake3: blake3::hash(content),
            resume: true,
        }
    }

    #[tokio::test]
    async fn round_trip_and_no_overwrite() {
        let src = tempfile::tempdir().expect("src");
        let dst = tempfile::tempdir().expect("dst");
        let content: Vec<u8> = (0..(CHUNK_SIZE * 2 + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let path = src.path().join("data.bin");
        std::fs::write(&path, &content).expect("write");

        let (mut a, mut b) = pipe();
        let dest = dst.path().to_owned();
        let recv = tokio::spawn(async move {
            receive_file(&mut b, &dest, &ReceiveOptions::default(), |_| {}).await
        });
        let mut seen = Vec::new();
        let sent = send_file(&mut a, &path, &SendOptions::default(), |p| {
            seen.push(p.done)
        })
        .await
        .expect("send");
        let got = recv.await.expect("join").expect("receive");
        assert_eq!(std::fs::read(&got.path).expect("read"), content);
        assert_eq!(sent.blake3, got.blake3);
        assert_eq!(seen.last().copied(), Some(content.len() as u64));
        // No part file or sidecar left behind.
        assert_eq!(std::fs::read_dir(dst.path()).expect("ls").count(), 1);

        // Again: the file exists now.
        let (mut a, mut b) = pipe();
        let dest = dst.path().to_owned();
        let recv = tokio::spawn(async move {
            receive_file(&mut b, &dest, &ReceiveOptions::default(), |_| {}).await
        });
        let err = send_file(&mut a, &path, &SendOptions::default(), |_| {})
            .await
            .expect_err("exists");
        assert_eq!(err.code(), Some(ErrorCode::AlreadyExists), "{err}");
        let err = recv.await.expect("join").expect_err("exists");
        assert_eq!(err.code(), Some(ErrorCode::AlreadyExists), "{err}");
    }

    #[tokio::test]
    async fn out_of_order_and_overlong_chunks_are_refused() {
        let dst = tempfile::tempdir().expect("dst");
        for (frames, what) in [
            (vec![chunk(1, b"ello")], "gap"),
            (vec![chunk(0, b"hello!!")], "overlong"),
            (vec![chunk(0, b"he"), Frame::FileDone], "short"),
            (
                vec![Frame::TermInput(Bytes::from_static(b"x"))],
                "wrong frame",
            ),
        ] {
            let (mut a, mut b) = pipe();
            let dest = dst.path().to_owned();
            let recv = tokio::spawn(async move {
                receive_file(&mut b, &dest, &ReceiveOptions::default(), |_| {}).await
            });
            // A fresh name each time: a failed transfer leaves a part file
            // to resume from.
            let name = format!("{}.txt", what.replace(' ', "-"));
            a.send(&Frame::FileMeta(meta(&name, b"hello")))
                .await
                .expect("meta");
            assert!(matches!(
                a.recv().await.expect("resume"),
                Frame::FileResumeFrom { offset: 0, .. }
            ));
            for f in frames {
                a.send(&f).await.expect("send");
            }
            let err = recv.await.expect("join").expect_err(what);
            assert!(
                matches!(err.code(), Some(ErrorCode::Protocol))
                    || matches!(err, P2pError::Unexpected { .. }),
                "{what}: {err}"
            );
            let remote = a.recv().await.expect_err("error frame");
            assert_eq!(remote.code(), Some(ErrorCode::Protocol), "{what}: {remote}");
            assert!(!dst.path().join(&name).exists(), "{what}");
        }
    }

    #[tokio::test]
    async fn bad_names_and_sizes_are_refused_before_any_file_is_created() {
        let dst = tempfile::tempdir().expect("dst");
        for (name, opts, code) in [
            ("../evil", ReceiveOptions::default(), ErrorCode::BadPath),
            ("a/b", ReceiveOptions::default(), ErrorCode::BadPath),
            (
                "ok.txt",
                ReceiveOptions::default().max_size(2),
                ErrorCode::TooLarge,
            ),
        ] {
            let (mut a, mut b) = pipe();
            let dest = dst.path().to_owned();
            let recv =
                tokio::spawn(async move { receive_file(&mut b, &dest, &opts, |_| {}).await });
            a.send(&Frame::FileMeta(meta(name, b"hello")))
                .await
                .expect("meta");
            let err = a.recv().await.expect_err("refused");
            assert_eq!(err.code(), Some(code), "{name}: {err}");
            let err = recv.await.expect("join").expect_err("refused");
            assert_eq!(err.code(), Some(code), "{name}: {err}");
            assert_eq!(std::fs::read_dir(dst.path()).expect("ls").count(), 0);
        }
    }

    #[tokio::test]
    async fn a_tampered_part_file_is_not_trusted() {
        let src = tempfile::tempdir().expect("src");
        let dst = tempfile::tempdir().expect("dst");
        let content: Vec<u8> = (0..(CHUNK_SIZE * 3)).map(|i| (i % 253) as u8).collect();
        let path = src.path().join("f.bin");
        std::fs::write(&path, &content).expect("write");
        let m = meta("f.bin", &content);

        // A part file claiming a chunk, but with a flipped byte.
        let final_path = dst.path().join("f.bin");
        let (part, sidecar) = part_paths(&final_path).expect("paths");
        let mut prefix = content[..CHUNK_SIZE].to_vec();
        prefix[10] ^= 1;
        std::fs::write(&part, &prefix).expect("part");
        write_sidecar(&sidecar, &m, CHUNK_SIZE as u64)
            .await
            .expect("sidecar");

        let (mut a, mut b) = pipe();
        let dest = dst.path().to_owned();
        let recv = tokio::spawn(async move {
            receive_file(&mut b, &dest, &ReceiveOptions::default(), |_| {}).await
        });
        let sent = send_file(&mut a, &path, &SendOptions::default(), |_| {})
            .await
            .expect("send");
        let got = recv.await.expect("join").expect("receive");
        assert_eq!(sent.resumed_from, 0);
        assert_eq!(got.transferred, content.len() as u64);
        assert_eq!(std::fs::read(&final_path).expect("read"), content);
        assert!(!part.exists() && !sidecar.exists());
    }
}
