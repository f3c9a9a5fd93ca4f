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

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWrite};
use tokio::sync::mpsc;

use super::frame::{self, CHUNK_SIZE, FileMeta, Frame};
pub(crate) use super::transfer::unexpected;
use super::transfer::{self, Received, Receiving, ResumeOffer, Sending, Sidecar};
use super::{P2pError, P2pErrorCode, path};
use crate::Failure;

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

/// Progress of one file within a transfer of `total` bytes, `base` of
/// which were done before this file (the earlier files of a folder).
pub(crate) struct Tally<'a, F> {
    pub(crate) base: u64,
    pub(crate) total: u64,
    pub(crate) report: &'a mut F,
}

impl<F: FnMut(Progress)> Tally<'_, F> {
    /// `done` bytes of the file `name` are done.
    fn at(&mut self, name: &str, done: u64) {
        (self.report)(Progress {
            name: name.to_owned(),
            done: self.base + done,
            total: self.total,
        });
    }
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
    /// transfer is refused with [`P2pErrorCode::AlreadyExists`]).
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    /// Refuses files (or folders, in total) larger than `bytes`
    /// ([`P2pErrorCode::TooLarge`]).
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

/// A byte stream that can take whole [`Bytes`] buffers.
///
/// quinn's `SendStream` keeps the buffers it is given until the peer has
/// acknowledged them, so a file chunk goes from the buffer it was read into
/// to the packets without being copied into a frame or into quinn's own
/// buffer first. Other streams (the in-memory pipes of the tests) copy.
pub(crate) trait WriteBytes: AsyncWrite + Unpin + Send {
    /// Writes every buffer of `bufs`, in order.
    fn write_all_bytes(
        &mut self,
        bufs: &mut [Bytes],
    ) -> impl Future<Output = std::io::Result<()>> + Send;
}

impl WriteBytes for quinn::SendStream {
    async fn write_all_bytes(&mut self, bufs: &mut [Bytes]) -> std::io::Result<()> {
        self.write_all_chunks(bufs)
            .await
            .map_err(std::io::Error::from)
    }
}

/// [`WriteBytes`] for any stream, by copying.
#[cfg(test)]
pub(crate) async fn write_all_copying<W: AsyncWrite + Unpin + Send>(
    w: &mut W,
    bufs: &mut [Bytes],
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    for b in bufs.iter() {
        w.write_all(b).await?;
    }
    Ok(())
}

impl<R, W> Wire<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: WriteBytes,
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

    /// Sends a `FILE_CHUNK` without copying `data`: the same bytes as
    /// `send(&Frame::FileChunk { offset, data })`.
    pub(crate) async fn send_chunk(&mut self, offset: u64, data: Bytes) -> Result<(), P2pError> {
        let header = frame::file_chunk_header(offset, data.len()).map_err(P2pError::Frame)?;
        self.w
            .write_all_bytes(&mut [Bytes::copy_from_slice(&header), data])
            .await
            .map_err(|e| P2pError::from(frame::ReadError::Io(e)))
    }

    /// Tells the peer why we give up, if `err` is ours to tell, and
    /// returns `err`.
    pub(crate) async fn fail(&mut self, err: P2pError) -> P2pError {
        let code = match &err {
            P2pError::Refused { code, .. } => Some(*code),
            P2pError::Frame(_) | P2pError::Unexpected { .. } => Some(P2pErrorCode::Protocol),
            P2pError::Io { .. } => Some(P2pErrorCode::Io),
            P2pError::Terminal(_) => Some(P2pErrorCode::Terminal),
            _ => None,
        };
        if let Some(code) = code {
            // Best effort: the connection may be gone already.
            let _ = self.send(&Frame::error(code, err.to_string())).await;
        }
        err
    }
}

/// BLAKE3 of the first `len` bytes of `path`, on every core for large
/// files (see [`hash_prefix`]). Blocking: for a blocking task.
pub(crate) fn hash_len_blocking(path: &Path, len: u64) -> Result<blake3::Hash, P2pError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    hash_prefix(path, len, threads, PARALLEL_HASH_MIN).map_err(|e| P2pError::io(path, e))
}

/// [`hash_len_blocking`] on a blocking task.
pub(crate) async fn hash_file(path: &Path, len: u64) -> Result<blake3::Hash, P2pError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || hash_len_blocking(&path, len))
        .await
        .map_err(|e| P2pError::Connection(Failure::caused_by("hashing task", e)))?
}

/// Files (or prefixes) shorter than twice this are hashed on one thread.
const PARALLEL_HASH_MIN: u64 = 4 * 1024 * 1024;

/// BLAKE3 of the first `len` bytes of `path`, on up to `threads` threads.
///
/// The sender must hash the whole file before its first chunk (`FILE_META`
/// carries the hash), so this pass is pure latency: spreading it over the
/// cores shortens it. BLAKE3 is a tree, so the file is cut along the tree's
/// own subtree boundaries (`left_subtree_len`, as the reference
/// implementation splits), each piece is hashed to its chaining value on a
/// worker thread, and the pieces are merged back up to the root. The result
/// is the ordinary `blake3::hash` of the bytes (tested against it below).
/// Fails if the file holds fewer than `len` bytes.
fn hash_prefix(
    path: &Path,
    len: u64,
    threads: usize,
    min_piece: u64,
) -> std::io::Result<blake3::Hash> {
    use blake3::hazmat::{HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root};
    use std::io::{Read, Seek};

    /// A hasher fed the `len` bytes at `offset`, placed at that offset in
    /// the tree.
    fn piece(path: &Path, offset: u64, len: u64) -> std::io::Result<blake3::Hasher> {
        let mut file = std::fs::File::open(path)?;
        file.seek(std::io::SeekFrom::Start(offset))?;
        let mut hasher = blake3::Hasher::new();
        if offset > 0 {
            hasher.set_input_offset(offset);
        }
        hasher.update_reader(file.take(len))?;
        if hasher.count() != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file shrank while being hashed",
            ));
        }
        Ok(hasher)
    }

    if threads <= 1 || len < 2 * min_piece {
        return Ok(piece(path, 0, len)?.finalize());
    }

    enum Tree {
        Leaf(usize),
        Node(Box<Tree>, Box<Tree>),
    }
    fn split(offset: u64, len: u64, target: u64, leaves: &mut Vec<(u64, u64)>) -> Tree {
        if len <= target || len <= blake3::CHUNK_LEN as u64 {
            leaves.push((offset, len));
            return Tree::Leaf(leaves.len() - 1);
        }
        let left = blake3::hazmat::left_subtree_len(len);
        Tree::Node(
            Box::new(split(offset, left, target, leaves)),
            Box::new(split(offset + left, len - left, target, leaves)),
        )
    }
    fn cv(tree: &Tree, cvs: &[[u8; 32]]) -> [u8; 32] {
        match tree {
            Tree::Leaf(i) => cvs[*i],
            Tree::Node(l, r) => merge_subtrees_non_root(&cv(l, cvs), &cv(r, cvs), Mode::Hash),
        }
    }

    // About four pieces per thread, so that uneven pieces (the tree's right
    // edge is short) still keep every thread busy to the end.
    let target = min_piece.max(len / (threads as u64 * 4));
    let mut leaves = Vec::new();
    let tree = split(0, len, target, &mut leaves);
    let Tree::Node(left, right) = &tree else {
        // len >= 2 * min_piece > target: the root always splits.
        return Ok(piece(path, 0, len)?.finalize());
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut cvs = vec![[0u8; 32]; leaves.len()];
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.min(leaves.len()))
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(offset, len)) = leaves.get(i) else {
                            return Ok(done);
                        };
                        done.push((i, piece(path, offset, len)?.finalize_non_root()));
                    }
                })
            })
            .collect();
        for w in workers {
            let done: std::io::Result<Vec<(usize, [u8; 32])>> = w
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("a hashing thread panicked")));
            for (i, h) in done? {
                if let Some(slot) = cvs.get_mut(i) {
                    *slot = h;
                }
            }
        }
        Ok::<(), std::io::Error>(())
    })?;
    Ok(merge_subtrees_root(
        &cv(left, &cvs),
        &cv(right, &cvs),
        Mode::Hash,
    ))
}

/// Sends one file. `known_hash` skips hashing when the caller already did
/// (folders hash every file for the manifest). The rules are
/// [`Sending`]'s; this drives them over the wire and the file.
pub(crate) async fn send_one<R, W, F>(
    wire: &mut Wire<R, W>,
    path: &Path,
    name: String,
    known_hash: Option<blake3::Hash>,
    opts: &SendOptions,
    tally: &mut Tally<'_, F>,
) -> Result<FileReport, P2pError>
where
    R: AsyncRead + Unpin + Send,
    W: WriteBytes,
    F: FnMut(Progress) + Send,
{
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| P2pError::io(path, e))?;
    let meta = file.metadata().await.map_err(|e| P2pError::io(path, e))?;
    if !meta.is_file() {
        let msg = format!("{}: not a regular file", path.display());
        return Err(P2pError::BadLocalPath(msg));
    }
    let size = meta.len();
    let hash = match known_hash {
        Some(h) => h,
        None => hash_file(path, size).await?,
    };
    let announce = FileMeta {
        name: name.clone(),
        size,
        blake3: hash,
        resume: opts.resume,
    };
    wire.send(&Frame::FileMeta(announce)).await?;

    let offer = match Sending::new(size, opts.resume).on_resume_from(wire.recv().await?) {
        Ok(offer) => offer,
        Err(e) => return Err(wire.fail(e).await),
    };
    let prefix_matches = match &offer {
        ResumeOffer::Check { offset, prefix } => hash_file(path, *offset).await? == *prefix,
        ResumeOffer::FromStart => false,
    };
    if let (ResumeOffer::Check { offset, .. }, false) = (&offer, prefix_matches) {
        tracing::info!(%name, offset, "the receiver's partial file does not match; sending from the start");
    }
    let start = Sending::start(&offer, prefix_matches);
    tally.at(&name, start);
    // A reader on the blocking pool reads ahead in large blocks while this
    // task sends; each block is cut into chunks that share its buffer.
    let (mut blocks, reader) = spawn_reader(
        file.into_std().await,
        path.to_owned(),
        start,
        size,
        opts.flip_byte_at,
    );
    let mut offset = start;
    while offset < size {
        let Some(block) = blocks.recv().await else {
            // The reader stops early only by sending an error first or
            // by panicking; let the join tell which.
            return Err(match reader.await {
                Err(e) => P2pError::Connection(Failure::caused_by("file reading task", e)),
                Ok(()) => P2pError::Connection("the file reading task stopped early".into()),
            });
        };
        let block = block?;
        for at in (0..block.len()).step_by(CHUNK_SIZE) {
            let chunk = block.slice(at..(at + CHUNK_SIZE).min(block.len()));
            let n = chunk.len() as u64;
            wire.send_chunk(offset, chunk).await?;
            offset += n;
            tally.at(&name, offset);
        }
    }
    wire.send(&Frame::FileDone).await?;
    if let Err(e) = Sending::on_ack(wire.recv().await?) {
        return Err(wire.fail(e).await);
    }
    Ok(FileReport {
        path: path.to_owned(),
        name,
        size,
        blake3: hash,
        resumed_from: start,
        transferred: size - start,
    })
}

/// Bytes the sender's reader reads at once.
const READ_BLOCK: usize = 1024 * 1024;

/// Blocks read ahead of the sending task.
const READ_AHEAD: usize = 4;

/// Reads `file` from `start` to `size` in [`READ_BLOCK`]s on the blocking
/// pool: one blocking task for the whole file instead of one per read.
fn spawn_reader(
    mut file: std::fs::File,
    path: PathBuf,
    start: u64,
    size: u64,
    flip_byte_at: Option<u64>,
) -> (
    mpsc::Receiver<Result<Bytes, P2pError>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let task = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek};
        if let Err(e) = file.seek(std::io::SeekFrom::Start(start)) {
            let _ = tx.blocking_send(Err(P2pError::io(&path, e)));
            return;
        }
        let mut offset = start;
        while offset < size {
            let want = (size - offset).min(READ_BLOCK as u64) as usize;
            // `read_to_end` reads into the spare capacity: no zero-filling.
            let mut buf = Vec::with_capacity(want);
            let read = match (&mut file).take(want as u64).read_to_end(&mut buf) {
                Ok(n) if n == want => Ok(Bytes::from(flip(buf, offset, flip_byte_at))),
                Ok(_) => Err(P2pError::io(
                    &path,
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file shrank while being sent",
                    ),
                )),
                Err(e) => Err(P2pError::io(&path, e)),
            };
            let failed = read.is_err();
            // The sender gone (it failed or was dropped): stop reading.
            if tx.blocking_send(read).is_err() || failed {
                return;
            }
            offset += want as u64;
        }
    });
    (rx, task)
}

/// The test hook of [`SendOptions::flip_byte_for_tests`] on a block read at
/// `offset`.
fn flip(mut buf: Vec<u8>, offset: u64, at: Option<u64>) -> Vec<u8> {
    if let Some(at) = at
        && let Some(i) = at.checked_sub(offset)
        && let Some(b) = usize::try_from(i).ok().and_then(|i| buf.get_mut(i))
    {
        *b ^= 0xff;
    }
    buf
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

fn sidecar_bytes(path: &Path, meta: &FileMeta, written: u64) -> Result<Vec<u8>, P2pError> {
    serde_json::to_vec(&Sidecar::new(meta, written))
        .map_err(|e| P2pError::io(path, std::io::Error::other(e)))
}

async fn write_sidecar(path: &Path, meta: &FileMeta, written: u64) -> Result<(), P2pError> {
    let bytes = sidecar_bytes(path, meta, written)?;
    tokio::fs::write(path, bytes)
        .await
        .map_err(|e| P2pError::io(path, e))
}

fn write_sidecar_blocking(path: &Path, meta: &FileMeta, written: u64) -> Result<(), P2pError> {
    let bytes = sidecar_bytes(path, meta, written)?;
    std::fs::write(path, bytes).map_err(|e| P2pError::io(path, e))
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
    let Ok(md) = tokio::fs::symlink_metadata(part).await else {
        return Ok(None);
    };
    if !md.is_file() {
        return Ok(None);
    }
    let Some(offset) = Sidecar::resumable(&raw, meta, md.len()) else {
        return Ok(None);
    };
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
    .map_err(|e| P2pError::Connection(Failure::caused_by("hashing task", e)))??;
    Ok(Some((offset, hasher)))
}

/// Flush the sidecar's record of written bytes this often.
const SIDECAR_EVERY: u64 = 16 * 1024 * 1024;

/// Chunks received ahead of the writer.
const WRITE_AHEAD: usize = 8;

/// What the receiving task asks of the writer.
#[derive(Debug)]
enum ToWriter {
    /// Append these bytes (already checked to be the next ones).
    Data(Bytes),
    /// Drop what the part file holds and start from byte 0.
    Restart,
}

/// The part file as the writer leaves it.
#[derive(Debug)]
struct Written {
    file: std::fs::File,
    /// BLAKE3 state over the `written` bytes.
    hasher: blake3::Hasher,
    /// Bytes in the part file, all of them hashed.
    written: u64,
    /// Why the writer stopped before the channel closed.
    error: Option<P2pError>,
}

fn writer_stopped() -> P2pError {
    P2pError::Connection("the file writing task stopped".into())
}

/// Writes and hashes received chunks on the blocking pool, one blocking
/// task for the whole file (std writes: no copy into tokio's file buffer,
/// no round trip through the pool per chunk), so that this work overlaps
/// with reading the next frames. Records the written length in the sidecar
/// every [`SIDECAR_EVERY`] bytes. Stops at the first error (kept in
/// [`Written::error`]) or when the channel closes, after writing everything
/// sent before.
fn spawn_writer(
    mut w: Written,
    part: PathBuf,
    sidecar: PathBuf,
    meta: &FileMeta,
) -> (mpsc::Sender<ToWriter>, tokio::task::JoinHandle<Written>) {
    let (tx, mut rx) = mpsc::channel(WRITE_AHEAD);
    let meta = meta.clone();
    let task = tokio::task::spawn_blocking(move || {
        use std::io::{Seek, Write};
        let mut since_sidecar = 0u64;
        while let Some(cmd) = rx.blocking_recv() {
            let step = match cmd {
                ToWriter::Data(data) => w.file.write_all(&data).map(|()| {
                    w.hasher.update(&data);
                    w.written += data.len() as u64;
                    since_sidecar += data.len() as u64;
                }),
                ToWriter::Restart => w
                    .file
                    .set_len(0)
                    .and_then(|()| w.file.seek(std::io::SeekFrom::Start(0)))
                    .map(|_| {
                        w.hasher = blake3::Hasher::new();
                        w.written = 0;
                        since_sidecar = 0;
                    }),
            };
            if let Err(e) = step {
                w.error = Some(P2pError::io(&part, e));
                break;
            }
            if since_sidecar >= SIDECAR_EVERY {
                since_sidecar = 0;
                if let Err(e) = write_sidecar_blocking(&sidecar, &meta, w.written) {
                    w.error = Some(e);
                    break;
                }
            }
        }
        w
    });
    (tx, task)
}

/// Receives the file `meta` announces into `final_path` (already checked to
/// be under the destination). The rules are [`Receiving`]'s; this drives
/// them over the wire, a writer task and the part file.
pub(crate) async fn receive_one<R, W, F>(
    wire: &mut Wire<R, W>,
    meta: FileMeta,
    final_path: &Path,
    opts: &ReceiveOptions,
    tally: &mut Tally<'_, F>,
) -> Result<FileReport, P2pError>
where
    R: AsyncRead + Unpin + Send,
    W: WriteBytes,
    F: FnMut(Progress) + Send,
{
    let refusal = match transfer::check_size(&meta, opts.max_size) {
        Err(e) => Some(e),
        Ok(()) => destination_taken(&meta, final_path, opts.overwrite).await?,
    };
    if let Some(e) = refusal {
        return Err(wire.fail(e).await);
    }
    let (part, sidecar) = part_paths(final_path)?;
    let start = open_part(&part, &sidecar, &meta).await?;
    let resumed_from = start.written;
    wire.send(&Frame::FileResumeFrom {
        offset: resumed_from,
        prefix_blake3: start.hasher.clone().finalize(),
    })
    .await?;
    tally.at(&meta.name, resumed_from);

    // This task reads and checks frames; a writer on the blocking pool
    // writes and hashes what they carry meanwhile (see `spawn_writer`).
    let mut receiving = Receiving::new(meta.size, resumed_from);
    let (to_writer, writer) = spawn_writer(start, part.clone(), sidecar.clone(), &meta);
    let outcome = pump(wire, &mut receiving, &to_writer, &meta.name, tally).await;
    // The writer finishes what it was given, then hands the file back.
    drop(to_writer);
    let written = writer
        .await
        .map_err(|e| P2pError::Connection(Failure::caused_by("file writing task", e)))?;
    let file = tokio::fs::File::from_std(written.file);
    // A writer that failed is why the channel closed: its error first.
    if let Err(e) = written.error.map_or(outcome, Err) {
        keep_for_resuming(file, &part, &sidecar, &meta, written.written).await;
        return Err(wire.fail(e).await);
    }

    file.sync_all().await.map_err(|e| P2pError::io(&part, e))?;
    drop(file);
    let placed = match Receiving::check_hash(&meta, written.hasher.finalize()) {
        Ok(()) => put_in_place(&part, final_path, opts.overwrite).await,
        Err(e) => Err(e),
    };
    if let Err(e) = placed {
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
        transferred: receiving.transferred(),
    })
}

/// Why `final_path` cannot take the file, if it cannot: something is there
/// and may not be replaced, or is not a regular file.
async fn destination_taken(
    meta: &FileMeta,
    final_path: &Path,
    overwrite: bool,
) -> Result<Option<P2pError>, P2pError> {
    if !overwrite && exists(final_path).await? {
        let msg = format!("{} exists", meta.name);
        return Ok(Some(P2pError::refused(P2pErrorCode::AlreadyExists, msg)));
    }
    if let Ok(md) = tokio::fs::symlink_metadata(final_path).await
        && !md.is_file()
    {
        let msg = format!("{} exists and is not a regular file", meta.name);
        return Ok(Some(P2pError::refused(P2pErrorCode::AlreadyExists, msg)));
    }
    Ok(None)
}

/// The part file, resumed where its sidecar allows or new, with the
/// sidecar written and the file positioned at its end.
async fn open_part(part: &Path, sidecar: &Path, meta: &FileMeta) -> Result<Written, P2pError> {
    let resume = if meta.resume {
        resumable(part, sidecar, meta).await?
    } else {
        None
    };
    let (written, hasher, mut file) = match resume {
        Some((offset, hasher)) => {
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .open(part)
                .await
                .map_err(|e| P2pError::io(part, e))?;
            file.set_len(offset)
                .await
                .map_err(|e| P2pError::io(part, e))?;
            (offset, hasher, file)
        }
        None => {
            // A stale part (or whatever sits at its name, a symlink even)
            // is removed, never followed.
            if exists(part).await? {
                tokio::fs::remove_file(part)
                    .await
                    .map_err(|e| P2pError::io(part, e))?;
            }
            (0, blake3::Hasher::new(), create_new(part).await?)
        }
    };
    write_sidecar(sidecar, meta, written).await?;
    file.seek(std::io::SeekFrom::Start(written))
        .await
        .map_err(|e| P2pError::io(part, e))?;
    Ok(Written {
        file: file.into_std().await,
        hasher,
        written,
        error: None,
    })
}

/// Reads frames until `FILE_DONE`, handing their bytes to the writer.
async fn pump<R, W, F>(
    wire: &mut Wire<R, W>,
    receiving: &mut Receiving,
    to_writer: &mpsc::Sender<ToWriter>,
    name: &str,
    tally: &mut Tally<'_, F>,
) -> Result<(), P2pError>
where
    R: AsyncRead + Unpin + Send,
    W: WriteBytes,
    F: FnMut(Progress) + Send,
{
    loop {
        match receiving.on_frame(wire.recv().await?)? {
            Received::Append { restart, data } => {
                if restart {
                    let sent = to_writer.send(ToWriter::Restart).await;
                    sent.map_err(|_| writer_stopped())?;
                }
                let sent = to_writer.send(ToWriter::Data(data)).await;
                sent.map_err(|_| writer_stopped())?;
                tally.at(name, receiving.offset());
            }
            Received::Done => return Ok(()),
        }
    }
}

/// Keeps what arrived of a failed transfer for a later resume: it is
/// re-hashed and checked by the sender before it is trusted.
async fn keep_for_resuming(
    file: tokio::fs::File,
    part: &Path,
    sidecar: &Path,
    meta: &FileMeta,
    written: u64,
) {
    let saved = async {
        file.sync_data().await.map_err(|e| P2pError::io(part, e))?;
        // Another session may have finished the same file meanwhile (a
        // resumed send while this one waited out its idle time-out): then
        // there is no part file left to describe.
        if tokio::fs::try_exists(part).await.unwrap_or(false) {
            write_sidecar(sidecar, meta, written).await?;
        }
        Ok::<(), P2pError>(())
    }
    .await;
    if let Err(save) = saved {
        tracing::warn!(error = %save, "could not record the partial file for resuming");
    }
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
            P2pErrorCode::AlreadyExists,
            format!("{} exists", final_path.display()),
        )),
        Err(_) => {
            if exists(final_path).await? {
                return Err(P2pError::refused(
                    P2pErrorCode::AlreadyExists,
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
    W: WriteBytes,
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
    let mut tally = Tally {
        base: 0,
        total: meta.size,
        report: &mut progress,
    };
    receive_one(wire, meta, &final_path, opts, &mut tally).await
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
    W: WriteBytes,
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
    let mut tally = Tally {
        base: 0,
        total: size,
        report: &mut progress,
    };
    send_one(wire, path, name, None, opts, &mut tally).await
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

    impl WriteBytes for WriteHalf<DuplexStream> {
        async fn write_all_bytes(&mut self, bufs: &mut [Bytes]) -> std::io::Result<()> {
            write_all_copying(self, bufs).await
        }
    }

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

    #[test]
    fn parallel_hashing_equals_blake3() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("f");
        let content: Vec<u8> = (0..(3 * 1024 * 1024 + 4321))
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&path, &content).expect("write");
        let k = 1024u64;
        // Small pieces force deep, uneven trees; lengths on and around
        // chunk and power-of-two boundaries, the whole file and prefixes.
        for len in [
            0,
            1,
            k - 1,
            k,
            k + 1,
            2 * k,
            2 * k + 1,
            7 * k + 5,
            64 * k,
            64 * k + 1,
            1024 * k - 1,
            1024 * k + 3,
            content.len() as u64,
        ] {
            let want = blake3::hash(&content[..len as usize]);
            for (threads, min_piece) in [(1, 4 * k), (2, k), (2, 4 * k), (3, 8 * k), (8, 1)] {
                assert_eq!(
                    hash_prefix(&path, len, threads, min_piece).expect("hash"),
                    want,
                    "len {len}, {threads} threads, pieces of {min_piece}"
                );
            }
        }
        // Past the end of the file: an error, not the hash of fewer bytes.
        let past = content.len() as u64 + 1;
        assert!(hash_prefix(&path, past, 2, k).is_err());
        assert!(hash_prefix(&path, past, 1, k).is_err());
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
        assert_eq!(err.code(), Some(P2pErrorCode::AlreadyExists), "{err}");
        let err = recv.await.expect("join").expect_err("exists");
        assert_eq!(err.code(), Some(P2pErrorCode::AlreadyExists), "{err}");
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
                matches!(err.code(), Some(P2pErrorCode::Protocol))
                    || matches!(err, P2pError::Unexpected { .. }),
                "{what}: {err}"
            );
            let remote = a.recv().await.expect_err("error frame");
            assert_eq!(
                remote.code(),
                Some(P2pErrorCode::Protocol),
                "{what}: {remote}"
            );
            assert!(!dst.path().join(&name).exists(), "{what}");
        }
    }

    #[tokio::test]
    async fn bad_names_and_sizes_are_refused_before_any_file_is_created() {
        let dst = tempfile::tempdir().expect("dst");
        for (name, opts, code) in [
            ("../evil", ReceiveOptions::default(), P2pErrorCode::BadPath),
            ("a/b", ReceiveOptions::default(), P2pErrorCode::BadPath),
            (
                "ok.txt",
                ReceiveOptions::default().max_size(2),
                P2pErrorCode::TooLarge,
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
