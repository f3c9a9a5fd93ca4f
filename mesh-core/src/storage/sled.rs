//! [`SledStore`]: the embedded on-disk backend (sled 0.34), with group commit.
//!
//! # Layout
//!
//! Everything lives in sled's default tree, split into keyspaces by a one-byte
//! prefix. Keeping one tree means every multi-record change is a single
//! [`sled::Batch`], which sled applies atomically (readers never see half of
//! it, and recovery replays all of it or none). Ids are their 16 big-endian
//! UUID bytes and numbers are big-endian, so keys are fixed-width and a range
//! scan yields them in order. Values are JSON (`serde_json`): simple to debug
//! with any sled dump; anything that fails to decode is reported as
//! [`StoreError::Corrupt`], never a panic.
//!
//! | prefix | key after the prefix              | value                 |
//! |--------|-----------------------------------|-----------------------|
//! | `u`    | user id                           | [`UserRecord`]        |
//! | `n`    | username (UTF-8)                  | user id               |
//! | `d`    | device id                         | [`DeviceRecord`]      |
//! | `e`    | user id ++ device id              | (empty): devices_of   |
//! | `r`    | room id                           | [`Room`]              |
//! | `p`    | created_at ++ room id             | (empty): public rooms |
//! | `m`    | room id ++ user id                | [`Membership`]        |
//! | `j`    | user id ++ room id                | (empty): rooms_of     |
//! | `s`    | room id ++ seq (u64)              | [`Message`]           |
//! | `i`    | room id ++ sender id ++ client_id | seq (u64)             |
//! | `x`    | session id                        | [`P2pSession`]        |
//! | `y`    | user id ++ session id             | (empty): sessions_of  |
//! | `z`    | room id ++ session id             | (empty): room cascade |
//! | `#`    | `gen`, `schema`                   | u64 big-endian: meta  |
//!
//! Timestamps in keys are milliseconds with the sign bit flipped, so
//! big-endian byte order is time order. The idempotency index is keyed room
//! first (not sender first) so that [`Store::delete_room`] clears it with one
//! prefix scan; lookups always know all three parts anyway.
//!
//! A room's `member_count` is not stored: [`Store::room`] counts the keys
//! under `m ++ room`. A stored counter would be O(1) to read but would turn
//! every join and leave into a read-modify-write of the room record and could
//! drift from the memberships it counts; counting keys is always right and
//! costs one short key-only scan per room read.
//!
//! A room's `seq` is not stored either: the next one is the last key under
//! `s ++ room` plus one, read under the write lock. It therefore advances
//! only when a message is actually written, and can have no gaps.
//!
//! # Writes and durability
//!
//! Writes are serialised by one `std::sync::Mutex` (held for the few
//! microseconds of reads and the batch apply, never across an `.await`), so
//! check-then-write sequences (username taken? next seq? duplicate
//! client_id?) are race-free. Reads take no lock.
//!
//! Every write method ([`Store::create_user`], [`Store::put_device`],
//! [`Store::create_room`], [`Store::update_room`], [`Store::delete_room`],
//! the membership methods, [`Store::append_message`], [`Store::put_session`],
//! [`Store::delete_session`]) returns only after a `Db::flush` that started
//! after its batch was applied has succeeded: everything it wrote, and
//! everything it read to decide its answer (e.g. the earlier message of an
//! [`AppendOutcome::Duplicate`], or the user that made a username taken), is
//! on disk. This holds also when the method writes nothing (`false`,
//! `Duplicate`), since the state it answered from may be another writer's
//! not-yet-flushed batch. Read methods do not wait: they may see data whose
//! writer has not been acknowledged yet.
//!
//! Flushes are shared (group commit): a dedicated `std::thread` (the
//! *flusher*) sleeps until a writer registers, takes every registered writer,
//! calls `Db::flush` once, and completes each of them through a
//! `futures_channel::oneshot`. Writers that register while a flush runs wait
//! for the next one. No async runtime is involved, so the store works under
//! any executor. sled's own periodic flush is turned off
//! (`flush_every_ms(None)`): the flusher is the only thing that makes data
//! durable, which keeps the guarantee above easy to reason about and to test.
//! Dropping the store stops the flusher after it has served every registered
//! writer, then closes the database.
//!
//! If a caller drops a write future while it waits for the flush, the write
//! has still happened and will reach disk with the next flush; only the
//! acknowledgement is lost.
//!
//! # Integrity at open
//!
//! sled 0.34 treats any damage to its files as a torn tail: it opens what is
//! left without an error, and zeroes the damaged part as it opens. So the
//! store keeps its own account of how far the database had got, and checks
//! it before sled touches the real files.
//!
//! - Every write batch also sets the meta record `#gen` to the next
//!   *generation* (a counter of batches, in the same atomic batch, under the
//!   writers' lock). `#schema` holds the schema version ([`SCHEMA`]); a
//!   database with a higher one is refused ([`SledStoreError::NewerSchema`]).
//! - Beside the folder, in `<folder>.integrity` (the server's
//!   `DATA/db.integrity`), a small two-slot record (see the `integrity`
//!   submodule) holds a generation every batch up to which is on disk. The
//!   flusher reads the generation *before* it starts `Db::flush`, and after
//!   the flush succeeded writes it into the record (`fdatasync`); only then
//!   are the waiting writers completed. So whatever was acknowledged is at
//!   or below the recorded generation, and the database on disk is at or
//!   above it: a `kill -9` anywhere (before the flush, between the flush and
//!   the record, after both) leaves a database that passes the check.
//! - A clean close (dropping the store) flushes, waits until sled has let go
//!   of its files, and records "closed cleanly" with a BLAKE3 fingerprint of
//!   every file in the folder (names, sizes, contents).
//! - [`SledStore::open`]: if the record says "closed cleanly" and the files
//!   still have that fingerprint, sled opens them directly. Otherwise the
//!   folder is copied to `<folder>.verify` (removed afterwards; it needs as
//!   much free space as the database, less on file systems that share
//!   blocks on copy), sled opens the copy, and a full scan checks it (every
//!   record decodes, index entries point at records, each room's messages
//!   are numbered 1..N): a copy whose generation is below the recorded one,
//!   or with any problem, is refused with [`SledStoreError::Refused`] and
//!   the real files are left as they were. A folder with no record but a
//!   database (written by a mesh before this check existed) is checked the
//!   same way, without a generation to compare, and recorded from then on.
//!   Files that are not sled's, or a damaged record, are refused too.
//!   Measured with 100,000 messages (102 MiB): the check on a copy takes
//!   0.93 s, fingerprinting at a clean close or open 0.16 s.
//! - [`check`] runs the same check offline and reports what it found
//!   (`mesh-server check --data DIR`).
//!
//! The record file is locked while a store has it open, so a second server
//! on the same folder is refused ([`SledStoreError::Busy`]) before it copies
//! anything.
//!
//! # A full disk
//!
//! When sled fails to apply or flush a batch (a full disk: ENOSPC or a used
//! up quota), the writers waiting for that flush get
//! [`SledStoreError::DiskFull`] (a [`StoreError::Unavailable`]: the service
//! answers `unavailable`, 503) and nothing is acknowledged. sled's error is
//! sticky, for reads too, until the database is reopened, and sled cannot
//! even open a database on a disk with no free byte. So the store keeps a
//! *reserve*: a 4 MiB file `<folder>.reserve` written at open. After a
//! failure for lack of space, the next read (or write) removes the reserve,
//! closes the database and opens it again in the space so freed (reads in
//! that moment get `Unavailable`), and reads work again. A writer, while
//! the disk is known to be full, first writes the reserve back: while that
//! fails, it gets `DiskFull` at once and writes nothing; once it succeeds,
//! there is room again and writing resumes. Batches applied but never
//! flushed are dropped with the failed database; they were never
//! acknowledged. If the reopened database is below the recorded generation,
//! the store refuses all further writes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

use async_trait::async_trait;
use futures_channel::oneshot;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::{Batch, Db, IVec};

use super::{
    AppendOutcome, DeviceRecord, HistoryPage, Membership, NewMessage, Page, RoomUpdate, Store,
    StoreError, UserRecord, apply_update, clamp_limit, device_order, member_order, room_order,
    session_order,
};
use crate::protocol::{
    DeviceId, Message, P2pSession, Role, Room, RoomId, SessionId, Timestamp, UserId, Visibility,
};

mod check;
mod integrity;

pub use check::Contents;
use integrity::{FolderKind, Record, RecordError, RecordFile};

/// The schema version of the database this build writes and reads. A
/// database with a higher one is refused.
pub const SCHEMA: u64 = 1;
/// Meta record: the generation of the newest write batch (u64 big-endian).
const GEN_KEY: &[u8] = b"#gen";
/// Meta record: the schema version (u64 big-endian).
const SCHEMA_KEY: &[u8] = b"#schema";
/// The size of the reserve file kept beside the database and given up on a
/// full disk, so that sled can reopen the database and reads go on (see
/// the module docs): a few of sled's 512 KiB segments.
pub const RESERVE_BYTES: u64 = 4 << 20;

/// The error of [`SledStore`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SledStoreError {
    /// sled failed (I/O, or its own corruption detection).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// Starting the flusher thread failed.
    #[error("starting the flusher thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// A record could not be encoded.
    #[error("encoding a record: {0}")]
    Encode(#[source] serde_json::Error),
    /// A stored record or key could not be decoded.
    #[error("corrupt record under key {key}: {reason}")]
    Corrupt {
        /// The key, escaped for printing.
        key: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The flusher thread went away before confirming a write.
    #[error("the flusher thread stopped before the write was flushed")]
    FlusherGone,
    /// The disk holding the database is full (or the quota is used up):
    /// the write was not made durable and not acknowledged. Reads keep
    /// working; writes work again once space is freed.
    #[error("the disk holding the database is full: {0}")]
    DiskFull(#[source] io::Error),
    /// A write failed earlier and the database has not been reopened yet
    /// (or cannot be); retrying later may succeed.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// Opening the database would serve less than was acknowledged, or it
    /// is not a mesh database. Nothing was changed on disk.
    #[error("refusing to open the database in {}: {reason}. Its files were left untouched", folder.display())]
    Refused {
        /// The database folder.
        folder: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The database was written by a newer mesh.
    #[error("the database in {} was written by a newer mesh (schema {found}; this build reads schema {SCHEMA}). Its files were left untouched", folder.display())]
    NewerSchema {
        /// The database folder.
        folder: PathBuf,
        /// The schema version found.
        found: u64,
    },
    /// Another process (or store) has the database open.
    #[error("the database {} is in use by another process (a running server?)", .0.display())]
    Busy(PathBuf),
    /// I/O around the database: the integrity record, the fingerprint, the
    /// copy that is checked.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl From<SledStoreError> for StoreError {
    fn from(e: SledStoreError) -> Self {
        match e {
            SledStoreError::Corrupt { .. } => StoreError::Corrupt(e.to_string()),
            SledStoreError::DiskFull(_) | SledStoreError::Unavailable(_) => {
                StoreError::Unavailable(Box::new(e))
            }
            other => StoreError::backend(other),
        }
    }
}

impl SledStoreError {
    fn from_record(e: RecordError, folder: &Path) -> Self {
        match e {
            RecordError::Busy(_) => SledStoreError::Busy(folder.to_owned()),
            RecordError::Io { what, path, source } => SledStoreError::Io {
                what: format!("{what} {}", path.display()),
                source,
            },
            other @ (RecordError::Damaged(_) | RecordError::Newer { .. }) => {
                refused(folder, other.to_string())
            }
        }
    }
}

fn refused(folder: &Path, reason: impl Into<String>) -> SledStoreError {
    SledStoreError::Refused {
        folder: folder.to_owned(),
        reason: reason.into(),
    }
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> SledStoreError {
    let what = what.into();
    move |source| SledStoreError::Io { what, source }
}

/// Whether an I/O error means "no space left" (or "quota used up").
fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(28 | 122))
}

/// sled's error for a failed write, classified.
fn write_error(e: sled::Error) -> SledStoreError {
    match e {
        sled::Error::Io(io) if is_no_space(&io) => SledStoreError::DiskFull(io),
        other => SledStoreError::Sled(other),
    }
}

/// How long [`SledStore::open`] waits for a lock left by a store of the
/// same process that was just dropped.
pub const OPEN_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

type Result<T, E = SledStoreError> = std::result::Result<T, E>;

/// A [`Store`] on disk, in a sled database. See the [module docs](self).
#[derive(Debug)]
pub struct SledStore {
    inner: Arc<Inner>,
    /// Serialises writers; see the module docs.
    write_lock: Mutex<()>,
    flusher: Flusher,
}

/// What the store shares with its flusher thread.
#[derive(Debug)]
struct Inner {
    /// `None` only while the database is being reopened after a failed
    /// write, or when reopening failed.
    db: RwLock<Option<Db>>,
    /// The database folder; `None` for a temporary store.
    path: Option<PathBuf>,
    /// The generation of the newest batch applied (not necessarily flushed).
    applied: AtomicU64,
    /// sled failed a write or a flush: its error is sticky, so the database
    /// must be reopened before the next write.
    broken: AtomicBool,
    /// Reopening found less than was recorded: no more writes.
    lost: AtomicBool,
    /// The last failure was a full disk: writers check for free space
    /// before writing again.
    full: AtomicBool,
    /// The integrity record (`None` for a temporary store). Its lock is
    /// held across a flush and the record write that follows it, and across
    /// a reopen, so neither sees the other half done.
    record: Mutex<Option<RecordFile>>,
}

impl Inner {
    fn db(&self) -> Result<Db> {
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                SledStoreError::Unavailable(
                    "the database is being reopened after a failed write".into(),
                )
            })
    }

    /// sled failed a write or a flush: its error is now sticky.
    fn failed(&self, e: &sled::Error) {
        if matches!(e, sled::Error::Io(io) if is_no_space(io)) {
            self.full.store(true, Ordering::Release);
        }
        self.broken.store(true, Ordering::Release);
    }

    fn record(&self) -> MutexGuard<'_, Option<RecordFile>> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One group-commit round: flush, then record the generation read
    /// before the flush. Only after this returns `Ok` may the writers who
    /// registered before it be acknowledged.
    fn flush_and_record(&self) -> std::result::Result<(), FlushError> {
        let mut record = self.record();
        if self.broken.load(Ordering::Acquire) {
            return Err(FlushError::Unavailable(
                "an earlier write failed; the next write reopens the database".into(),
            ));
        }
        let db = self
            .db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| FlushError::Unavailable("the database is not open".into()))?;
        // Read BEFORE the flush: every batch up to it was applied before
        // the flush started, so the flush covers it.
        let generation = self.applied.load(Ordering::Acquire);
        if let Err(e) = db.flush() {
            self.failed(&e);
            return Err(FlushError::Sled(e));
        }
        drop(db);
        if let Some(record) = record.as_mut() {
            let stale = record
                .last()
                .is_none_or(|r| r.generation < generation || r.clean);
            if stale {
                record
                    .write(generation, SCHEMA, false, None)
                    .map_err(|e| FlushError::Record(Arc::new(e)))?;
            }
        }
        Ok(())
    }
}

/// Why a group-commit round failed; cloned to every waiting writer.
#[derive(Clone, Debug)]
enum FlushError {
    Sled(sled::Error),
    Unavailable(String),
    Record(Arc<io::Error>),
}

impl From<FlushError> for SledStoreError {
    fn from(e: FlushError) -> Self {
        match e {
            FlushError::Sled(e) => write_error(e),
            FlushError::Unavailable(why) => SledStoreError::Unavailable(why),
            FlushError::Record(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                if is_no_space(&e) {
                    SledStoreError::DiskFull(copy)
                } else {
                    SledStoreError::Io {
                        what: "writing the integrity record".into(),
                        source: copy,
                    }
                }
            }
        }
    }
}

/// The path `<dir>.<ext>` beside the folder `dir`.
fn beside(dir: &Path, ext: &str) -> Result<PathBuf> {
    let name = dir.file_name().ok_or_else(|| {
        refused(
            dir,
            "the database path must end in a folder name (such as DATA/db)",
        )
    })?;
    let mut name = name.to_os_string();
    name.push(".");
    name.push(ext);
    Ok(dir.with_file_name(name))
}

/// sled's settings. A fresh `Config` every time: sled logs an ERROR when
/// a `Config` that already started a database is changed, which is what
/// happened on every start before.
fn sled_config(path: &Path) -> sled::Config {
    // The flusher makes writes durable; sled's timer would only blur which
    // write is on disk when (see the module docs).
    sled::Config::new().path(path).flush_every_ms(None)
}

/// Opens sled in `path`, waiting up to [`OPEN_LOCK_WAIT`] for a lock left
/// by a database of this process that was just closed.
fn open_db(path: &Path) -> Result<Db> {
    let started = std::time::Instant::now();
    loop {
        match sled_config(path).open() {
            Ok(db) => return Ok(db),
            Err(_) if sled_lock_held(path) && started.elapsed() < OPEN_LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(_) if sled_lock_held(path) => return Err(SledStoreError::Busy(path.to_owned())),
            Err(e) => return Err(SledStoreError::Sled(e)),
        }
    }
}

/// Whether an open database (of this process or another) holds sled's lock
/// on `path`: the `flock` sled takes on `path/db`, tried here and released
/// at once. sled reports a held lock only as the text of an `Other` I/O
/// error; the lock itself answers with a typed "contended" error.
fn sled_lock_held(path: &Path) -> bool {
    use fs2::FileExt as _;
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path.join("db"))
    else {
        return false;
    };
    match file.try_lock_exclusive() {
        Ok(()) => {
            let _ = fs2::FileExt::unlock(&file);
            false
        }
        Err(e) => e.kind() == fs2::lock_contended_error().kind(),
    }
}

/// The generation and schema stored in `db` (0 and `None` if absent).
fn read_meta(db: &Db) -> Result<(u64, Option<u64>)> {
    let number = |key: &[u8]| -> Result<Option<u64>> {
        match db.get(key)? {
            None => Ok(None),
            Some(v) => seq_at(&v, 0)
                .map(Some)
                .map_err(|_| corrupt(key, "expected a big-endian u64")),
        }
    };
    Ok((number(GEN_KEY)?.unwrap_or(0), number(SCHEMA_KEY)?))
}

/// Copies the database to `<dir>.verify`, opens the copy, scans it, and
/// removes it. The real files are only read.
fn verify_copy(dir: &Path) -> Result<Contents> {
    let copy = beside(dir, "verify")?;
    match std::fs::remove_dir_all(&copy) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(format!("removing {}", copy.display()))(e)),
    }
    if let Err(e) = integrity::copy_dir(dir, &copy) {
        let _ = std::fs::remove_dir_all(&copy);
        return Err(io_error(format!(
            "copying {} to {} to check it before opening (this needs as much free space as the database)",
            dir.display(),
            copy.display()
        ))(e));
    }
    // sled may panic on some damage; a panic here is a verdict on the
    // copy, not a reason to bring the process down.
    let result = std::panic::catch_unwind(|| -> std::result::Result<Contents, String> {
        let db = sled_config(&copy).open().map_err(|e| e.to_string())?;
        let contents = check::scan(&db);
        drop(db);
        Ok(contents)
    });
    // Let sled's threads close the copy before it is removed.
    drop(integrity::wait_for_sled_lock(&copy, OPEN_LOCK_WAIT));
    let _ = std::fs::remove_dir_all(&copy);
    match result {
        Ok(Ok(contents)) => Ok(contents),
        Ok(Err(e)) => Err(refused(dir, format!("sled cannot open a copy of it ({e})"))),
        Err(_) => Err(refused(dir, "sled crashed while reading a copy of it")),
    }
}

/// Whether what a copy holds may be served, given the record.
fn judge(dir: &Path, record: Option<Record>, contents: &Contents) -> Result<()> {
    if let Some(found) = contents.schema.filter(|s| *s > SCHEMA) {
        return Err(SledStoreError::NewerSchema {
            folder: dir.to_owned(),
            found,
        });
    }
    if let Some(r) = record
        && contents.generation < r.generation
    {
        return Err(refused(
            dir,
            format!(
                "acknowledged data is missing or damaged: it holds writes up to generation {}, but writes up to {} were acknowledged",
                contents.generation, r.generation
            ),
        ));
    }
    if let Some(first) = contents.problems.first() {
        return Err(refused(
            dir,
            format!(
                "it is damaged: {} problem(s), the first: {first}",
                contents.problem_count
            ),
        ));
    }
    Ok(())
}

/// What [`check`] found in a data folder.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CheckReport {
    /// The database folder checked.
    pub folder: PathBuf,
    /// The generation in the integrity record (`None`: no record).
    pub recorded_generation: Option<u64>,
    /// The record says the database was closed cleanly.
    pub closed_cleanly: bool,
    /// The files are those of the clean close (`None`: nothing to compare).
    pub unchanged_since_clean_close: Option<bool>,
    /// What the copy holds (`None`: there is no database, or sled could not
    /// open a copy).
    pub contents: Option<Contents>,
    /// Why the server would refuse it; `None` when it would open it.
    pub refusal: Option<String>,
}

impl CheckReport {
    /// Whether the server would open the database.
    pub fn is_whole(&self) -> bool {
        self.refusal.is_none()
    }
}

/// Checks the database in `path` (the folder [`SledStore::open`] takes)
/// the way opening it would, on a copy, and reports what it holds. Nothing
/// in `path` or its record is changed. Errors: only what prevents checking
/// (a server has it open, I/O).
pub fn check(path: impl AsRef<Path>) -> Result<CheckReport> {
    let dir = std::path::absolute(path.as_ref()).map_err(io_error("resolving the path"))?;
    let record_path = beside(&dir, "integrity")?;
    // Hold the record's lock while copying, so no server starts meanwhile;
    // a running server holds it already.
    let _lock = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&record_path)
    {
        Ok(file) => {
            use fs2::FileExt as _;
            if file.try_lock_exclusive().is_err() {
                return Err(SledStoreError::Busy(dir));
            }
            Some(file)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error(format!("opening {}", record_path.display()))(e)),
    };
    let mut report = CheckReport {
        folder: dir.clone(),
        recorded_generation: None,
        closed_cleanly: false,
        unchanged_since_clean_close: None,
        contents: None,
        refusal: None,
    };
    let record = match integrity::read_record_at(&record_path) {
        Ok(r) => r,
        Err(e) => {
            report.refusal = Some(SledStoreError::from_record(e, &dir).to_string());
            None
        }
    };
    if let Some(r) = record {
        report.recorded_generation = Some(r.generation);
        report.closed_cleanly = r.clean;
        if r.schema > SCHEMA {
            report.refusal = Some(
                SledStoreError::NewerSchema {
                    folder: dir.clone(),
                    found: r.schema,
                }
                .to_string(),
            );
        }
    }
    match integrity::folder_kind(&dir).map_err(io_error(format!("reading {}", dir.display())))? {
        FolderKind::Foreign(names) => {
            report.refusal = Some(foreign(&dir, &names).to_string());
        }
        FolderKind::Empty => {
            if let Some(r) = record.filter(|r| r.generation > 0) {
                report.refusal = Some(missing(&dir, &record_path, r).to_string());
            }
        }
        FolderKind::Sled => {
            if let Some(fp) = record.and_then(|r| r.fingerprint) {
                let now = integrity::fingerprint(&dir)
                    .map_err(io_error(format!("reading {}", dir.display())))?;
                report.unchanged_since_clean_close = Some(now == fp);
            }
            match verify_copy(&dir) {
                Ok(contents) => {
                    if let Err(e) = judge(&dir, record, &contents) {
                        report.refusal.get_or_insert(e.to_string());
                    }
                    report.contents = Some(contents);
                }
                Err(e @ (SledStoreError::Refused { .. } | SledStoreError::NewerSchema { .. })) => {
                    report.refusal.get_or_insert(e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(report)
}

fn foreign(dir: &Path, names: &[String]) -> SledStoreError {
    refused(
        dir,
        format!(
            "it holds files that are not a sled database ({})",
            names.join(", ")
        ),
    )
}

fn missing(dir: &Path, record_path: &Path, r: Record) -> SledStoreError {
    refused(
        dir,
        format!(
            "acknowledged data is missing: the folder is missing or empty, but {} records writes up to generation {}",
            record_path.display(),
            r.generation
        ),
    )
}

/// Writes the reserve file ([`RESERVE_BYTES`]) beside the database,
/// unless it is there already. Fails (and removes what it wrote) when the
/// disk has no room for it.
fn write_reserve(dir: &Path) -> Result<()> {
    let reserve = beside(dir, "reserve")?;
    if std::fs::metadata(&reserve).is_ok_and(|m| m.len() == RESERVE_BYTES) {
        return Ok(());
    }
    let result = (|| -> io::Result<()> {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&reserve)?;
        // Real bytes, not `set_len`: a sparse file would reserve nothing.
        let chunk = vec![0u8; 64 << 10];
        for _ in 0..RESERVE_BYTES / chunk.len() as u64 {
            file.write_all(&chunk)?;
        }
        file.sync_data()
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&reserve);
        if is_no_space(&e) {
            SledStoreError::DiskFull(e)
        } else {
            io_error(format!("writing {}", reserve.display()))(e)
        }
    })
}

impl SledStore {
    /// Opens (or creates) the store in the folder `path`, after checking
    /// that it holds everything that was acknowledged (see the module
    /// docs, "Integrity at open"). The integrity record lives beside it, in
    /// `<path>.integrity`; `path` must therefore end in a folder name.
    ///
    /// Errors: [`SledStoreError::Refused`] or
    /// [`SledStoreError::NewerSchema`] when the database must not be served
    /// (nothing on disk is changed then), [`SledStoreError::Busy`] when
    /// another process has it open.
    ///
    /// sled holds an exclusive lock on its files, and after a [`SledStore`]
    /// is dropped sled's background I/O threads may keep them open (and so
    /// locked) for a moment. Opening the same path again right away, as a
    /// restart in the same process does, would then fail spuriously; so
    /// while the lock is taken, this retries for up to [`OPEN_LOCK_WAIT`]
    /// before giving up. (sled's own test builds block on the lock for the
    /// same reason.) Another process holding the store still gets an error.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let dir = std::path::absolute(path.as_ref()).map_err(io_error("resolving the path"))?;
        let record_path = beside(&dir, "integrity")?;
        let (record, found, created) = RecordFile::open_new(&record_path, OPEN_LOCK_WAIT)
            .map_err(|e| SledStoreError::from_record(e, &dir))?;
        let opened = Self::open_checked(dir, &record_path, record, found);
        if opened.is_err() && created {
            // A refused start leaves the folder as it found it.
            let _ = std::fs::remove_file(&record_path);
        }
        opened
    }

    fn open_checked(
        dir: PathBuf,
        record_path: &Path,
        mut record: RecordFile,
        found: Option<Record>,
    ) -> Result<Self> {
        if let Some(r) = found.filter(|r| r.schema > SCHEMA) {
            return Err(SledStoreError::NewerSchema {
                folder: dir,
                found: r.schema,
            });
        }
        let kind =
            integrity::folder_kind(&dir).map_err(io_error(format!("reading {}", dir.display())))?;
        match kind {
            FolderKind::Foreign(names) => return Err(foreign(&dir, &names)),
            FolderKind::Empty => {
                if let Some(r) = found.filter(|r| r.generation > 0) {
                    return Err(missing(&dir, record_path, r));
                }
            }
            FolderKind::Sled => {
                let unchanged = match found {
                    Some(Record {
                        clean: true,
                        fingerprint: Some(fp),
                        ..
                    }) => integrity::fingerprint(&dir).is_ok_and(|now| now == fp),
                    _ => false,
                };
                if unchanged {
                    tracing::debug!(folder = %dir.display(),
                        "the database was closed cleanly and is unchanged since");
                } else {
                    let started = std::time::Instant::now();
                    let contents = verify_copy(&dir)?;
                    judge(&dir, found, &contents)?;
                    tracing::info!(folder = %dir.display(), generation = contents.generation,
                        messages = contents.messages, took_ms = started.elapsed().as_millis() as u64,
                        "checked the database on a copy (it was not closed cleanly)");
                    if found.is_none() {
                        tracing::info!(record = %record_path.display(),
                            "no integrity record: a database of an earlier mesh; checked, and recorded from now on");
                    }
                }
            }
        }
        let db = open_db(&dir)?;
        let (generation, schema) = read_meta(&db)?;
        if let Some(found) = schema.filter(|s| *s > SCHEMA) {
            return Err(SledStoreError::NewerSchema { folder: dir, found });
        }
        if let Some(r) = found.filter(|r| generation < r.generation) {
            // The copy had it all; the real files should too.
            return Err(refused(
                &dir,
                format!(
                    "acknowledged data is missing: writes up to generation {generation} found, {} recorded",
                    r.generation
                ),
            ));
        }
        if schema.is_none() {
            let mut batch = Batch::default();
            batch.insert(SCHEMA_KEY, &SCHEMA.to_be_bytes()[..]);
            batch.insert(GEN_KEY, &generation.to_be_bytes()[..]);
            db.apply_batch(batch)?;
            db.flush()?;
        }
        if let Err(e) = write_reserve(&dir) {
            tracing::warn!(folder = %dir.display(), error = %e,
                "cannot write the reserve file: on a full disk, reads may stop until space is freed");
        }
        // Not clean from now on, until a clean close says so again.
        record
            .write(generation, SCHEMA, false, None)
            .map_err(io_error(format!("writing {}", record_path.display())))?;
        Self::start(db, Some(dir), Some(record), generation)
    }

    /// A store in a temporary directory, removed when the store is dropped.
    /// For tests. It has no integrity record and is not reopened after a
    /// failed write.
    pub fn temporary() -> Result<Self> {
        let db = sled::Config::new()
            .temporary(true)
            .flush_every_ms(None)
            .open()?;
        Self::start(db, None, None, 0)
    }

    fn start(
        db: Db,
        path: Option<PathBuf>,
        record: Option<RecordFile>,
        generation: u64,
    ) -> Result<Self> {
        let inner = Arc::new(Inner {
            db: RwLock::new(Some(db)),
            path,
            applied: AtomicU64::new(generation),
            broken: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            full: AtomicBool::new(false),
            record: Mutex::new(record),
        });
        let flusher = Flusher::start(Arc::clone(&inner))?;
        Ok(Self {
            inner,
            write_lock: Mutex::new(()),
            flusher,
        })
    }

    /// How many flushes the flusher has run (for tests of group commit).
    #[cfg(test)]
    fn flush_count(&self) -> u64 {
        self.flusher.shared.lock().flushes
    }

    /// The database, for reads and writes. After a failed write, sled
    /// fails reads too until the database is reopened: the first read to
    /// find the writers' lock free reopens it. (A writer holding that lock
    /// has reopened it already, or gets an error anyway.)
    fn db(&self) -> Result<Db> {
        if self.inner.broken.load(Ordering::Acquire)
            && let Ok(_guard) = self.write_lock.try_lock()
            && self.inner.broken.load(Ordering::Acquire)
            && let Err(e) = self.reopen()
        {
            tracing::warn!(error = %e, "cannot reopen the database after a failed write");
        }
        self.inner.db()
    }

    /// Takes the writers' lock; reopens the database first if a write
    /// failed since it was opened.
    fn lock_writes(&self) -> Result<MutexGuard<'_, ()>> {
        // The guarded state is sled's, which a panicking writer cannot leave
        // half-applied (batches are atomic): poisoning carries no meaning.
        let guard = self
            .write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // While the disk is full, fail fast (no write that must fail, and
        // so no new sticky error): only write once there is room again.
        if self.inner.full.load(Ordering::Acquire) {
            let Some(path) = &self.inner.path else {
                return Err(SledStoreError::Unavailable(
                    "a write failed and a temporary store cannot be reopened".into(),
                ));
            };
            write_reserve(path)?;
            self.inner.full.store(false, Ordering::Release);
        }
        if self.inner.broken.load(Ordering::Acquire) {
            self.reopen()?;
        }
        Ok(guard)
    }

    /// After sled failed a write: sled's error is sticky (for reads too), so
    /// close the database and open it again. Called with the writers' lock
    /// held.
    fn reopen(&self) -> Result<()> {
        if self.inner.lost.load(Ordering::Acquire) {
            return Err(SledStoreError::Unavailable(
                "reopening the database found less than was acknowledged; stop the server and check the data folder".into(),
            ));
        }
        let Some(path) = &self.inner.path else {
            return Err(SledStoreError::Unavailable(
                "a write failed and a temporary store cannot be reopened".into(),
            ));
        };
        let record = self.inner.record();
        if self.inner.full.load(Ordering::Acquire) {
            // Room for sled to open the database in.
            match beside(path, "reserve").map(std::fs::remove_file) {
                Ok(Ok(())) => tracing::warn!(folder = %path.display(),
                    "the disk is full: gave up the reserve file to reopen the database"),
                Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove the reserve file"),
                Err(e) => tracing::warn!(error = %e, "no reserve file"),
            }
        }
        let old = self
            .inner
            .db
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        // What the failed database applied but never flushed is dropped
        // with it: it was never acknowledged.
        drop(old);
        let db = open_db(path).map_err(|e| {
            SledStoreError::Unavailable(format!("reopening the database failed: {e}"))
        })?;
        let (generation, _) = read_meta(&db)?;
        let recorded = record
            .as_ref()
            .and_then(|r| r.last())
            .map_or(0, |r| r.generation);
        *self.inner.db.write().unwrap_or_else(|p| p.into_inner()) = Some(db);
        if generation < recorded {
            self.inner.lost.store(true, Ordering::Release);
            tracing::error!(folder = %path.display(), generation, recorded,
                "the database lost acknowledged writes when it was reopened after a failed write; refusing further writes");
            return Err(SledStoreError::Unavailable(
                "reopening the database found less than was acknowledged".into(),
            ));
        }
        self.inner.applied.store(generation, Ordering::Release);
        self.inner.broken.store(false, Ordering::Release);
        tracing::info!(folder = %path.display(), "reopened the database after a failed write");
        Ok(())
    }

    /// Applies `batch` with the next generation in it. Called with the
    /// writers' lock held.
    fn apply(&self, mut batch: Batch) -> Result<()> {
        let db = self.db()?;
        let next = self.inner.applied.load(Ordering::Relaxed) + 1;
        batch.insert(GEN_KEY, &next.to_be_bytes()[..]);
        if let Err(e) = db.apply_batch(batch) {
            self.inner.failed(&e);
            return Err(write_error(e));
        }
        self.inner.applied.store(next, Ordering::Release);
        Ok(())
    }

    /// Waits until a flush that starts after this call has completed, and
    /// its generation is recorded.
    async fn durable(&self) -> Result<()> {
        let done = self.flusher.request();
        match done.await {
            Ok(result) => result.map_err(SledStoreError::from),
            Err(oneshot::Canceled) => Err(SledStoreError::FlusherGone),
        }
    }

    /// Closes the database; after a clean final flush, records that it was
    /// closed cleanly with the fingerprint of its files.
    fn close(&mut self) {
        self.flusher.stop();
        let db = self
            .inner
            .db
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(db) = db else { return };
        let flushed = db.flush().is_ok() && !self.inner.broken.load(Ordering::Acquire);
        drop(db);
        let (Some(path), true) = (&self.inner.path, flushed) else {
            return;
        };
        let mut record = self.inner.record();
        let Some(record) = record.as_mut() else {
            return;
        };
        // sled's threads may hold the files a moment longer; its lock tells.
        let Some(_lock) = integrity::wait_for_sled_lock(path, OPEN_LOCK_WAIT) else {
            tracing::warn!(folder = %path.display(),
                "the database stayed busy after closing; the next start checks it on a copy");
            return;
        };
        let generation = self.inner.applied.load(Ordering::Acquire);
        let result = integrity::fingerprint(path)
            .and_then(|fp| record.write(generation, SCHEMA, true, Some(fp)));
        if let Err(e) = result {
            tracing::warn!(folder = %path.display(), error = %e,
                "could not record the clean close; the next start checks the database on a copy");
        }
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        self.db()?.get(key)?.map(|v| decode(key, &v)).transpose()
    }

    /// Values under a prefix, decoded.
    fn values<T: DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>> {
        self.db()?
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// The 16-byte ids that end the keys under a prefix (index keyspaces).
    fn ids_under(&self, prefix: &[u8]) -> Result<Vec<[u8; 16]>> {
        self.db()?
            .scan_prefix(prefix)
            .keys()
            .map(|k| {
                let k = k?;
                id_at(&k, prefix.len())
            })
            .collect()
    }

    fn room_out(&self, mut room: Room) -> Result<Room> {
        let prefix = key2(b'm', room.id.as_bytes(), &[]);
        let mut count = 0u64;
        for k in self.db()?.scan_prefix(&prefix).keys() {
            k?;
            count += 1;
        }
        room.member_count = count;
        Ok(room)
    }

    fn last_seq_sync(&self, room: RoomId) -> Result<u64> {
        let prefix = key2(b's', room.as_bytes(), &[]);
        match self.db()?.scan_prefix(&prefix).keys().next_back() {
            None => Ok(0),
            Some(k) => seq_at(&k?, prefix.len()),
        }
    }

    /// Removes a session's record and index entries (if any) into `batch`.
    fn unindex_session(&self, batch: &mut Batch, id: SessionId) -> Result<bool> {
        let key = key2(b'x', id.as_bytes(), &[]);
        let Some(old) = self.get::<P2pSession>(&key)? else {
            return Ok(false);
        };
        batch.remove(key);
        batch.remove(key2(b'y', old.initiator_user_id.as_bytes(), id.as_bytes()));
        batch.remove(key2(b'y', old.target_user_id.as_bytes(), id.as_bytes()));
        batch.remove(key2(b'z', old.room_id.as_bytes(), id.as_bytes()));
        Ok(true)
    }

    /// Removes a room record and its public-index entry into `batch`.
    fn unindex_room(&self, batch: &mut Batch, old: &Room) {
        batch.remove(key2(b'r', old.id.as_bytes(), &[]));
        batch.remove(public_key(old));
    }

    /// Writes a room record and its public-index entry into `batch`.
    fn index_room(batch: &mut Batch, room: &Room) -> Result<()> {
        let stored = Room {
            member_count: 0,
            ..room.clone()
        };
        batch.insert(key2(b'r', room.id.as_bytes(), &[]), encode(&stored)?);
        if room.visibility == Visibility::Public {
            batch.insert(public_key(room), &[][..]);
        }
        Ok(())
    }

    fn put_membership(batch: &mut Batch, m: &Membership) -> Result<()> {
        batch.insert(
            key2(b'm', m.room_id.as_bytes(), m.user_id.as_bytes()),
            encode(m)?,
        );
        batch.insert(
            key2(b'j', m.user_id.as_bytes(), m.room_id.as_bytes()),
            &[][..],
        );
        Ok(())
    }

    fn sorted_rooms(&self, ids: Vec<[u8; 16]>) -> Result<Vec<Room>> {
        let mut rooms = Vec::with_capacity(ids.len());
        for id in ids {
            // A concurrent delete_room may have removed it since the index
            // scan; skip it then.
            if let Some(room) = self.get::<Room>(&key2(b'r', &id, &[]))? {
                rooms.push(self.room_out(room)?);
            }
        }
        rooms.sort_by_key(room_order);
        Ok(rooms)
    }

    fn page(
        &self,
        iter: impl Iterator<Item = sled::Result<(IVec, IVec)>>,
        limit: usize,
    ) -> Result<(Vec<Message>, bool)> {
        let mut messages = Vec::with_capacity(limit + 1);
        for kv in iter.take(limit + 1) {
            let (k, v) = kv?;
            messages.push(decode::<Message>(&k, &v)?);
        }
        let has_more = messages.len() > limit;
        messages.truncate(limit);
        Ok((messages, has_more))
    }
}

#[async_trait]
impl Store for SledStore {
    type Error = SledStoreError;

    async fn create_user(&self, record: UserRecord) -> Result<bool> {
        let created = {
            let _w = self.lock_writes()?;
            let id_key = key2(b'u', record.user.id.as_bytes(), &[]);
            let name_key = key2(b'n', record.user.username.as_bytes(), &[]);
            if self.db()?.contains_key(&id_key)? || self.db()?.contains_key(&name_key)? {
                false
            } else {
                let mut batch = Batch::default();
                batch.insert(name_key, &record.user.id.as_bytes()[..]);
                batch.insert(id_key, encode(&record)?);
                self.apply(batch)?;
                true
            }
        };
        self.durable().await?;
        Ok(created)
    }

    async fn user(&self, id: UserId) -> Result<Option<UserRecord>> {
        self.get(&key2(b'u', id.as_bytes(), &[]))
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        let name_key = key2(b'n', username.as_bytes(), &[]);
        let Some(id) = self.db()?.get(&name_key)? else {
            return Ok(None);
        };
        let id = id_at(&id, 0).map_err(|_| corrupt(&name_key, "user id is not 16 bytes"))?;
        self.get(&key2(b'u', &id, &[]))
    }

    async fn put_device(&self, device: DeviceRecord) -> Result<()> {
        {
            let _w = self.lock_writes()?;
            let key = key2(b'd', device.id.as_bytes(), &[]);
            let mut batch = Batch::default();
            if let Some(old) = self.get::<DeviceRecord>(&key)? {
                batch.remove(key2(b'e', old.user_id.as_bytes(), device.id.as_bytes()));
            }
            batch.insert(
                key2(b'e', device.user_id.as_bytes(), device.id.as_bytes()),
                &[][..],
            );
            batch.insert(key, encode(&device)?);
            self.apply(batch)?;
        }
        self.durable().await
    }

    async fn device(&self, id: DeviceId) -> Result<Option<DeviceRecord>> {
        self.get(&key2(b'd', id.as_bytes(), &[]))
    }

    async fn devices_of(&self, user: UserId) -> Result<Vec<DeviceRecord>> {
        let mut devices = Vec::new();
        for id in self.ids_under(&key2(b'e', user.as_bytes(), &[]))? {
            if let Some(d) = self.get::<DeviceRecord>(&key2(b'd', &id, &[]))? {
                devices.push(d);
            }
        }
        devices.sort_by_key(device_order);
        Ok(devices)
    }

    async fn create_room(&self, room: Room, owner: Membership) -> Result<()> {
        {
            let _w = self.lock_writes()?;
            let mut batch = Batch::default();
            if let Some(old) = self.get::<Room>(&key2(b'r', room.id.as_bytes(), &[]))? {
                self.unindex_room(&mut batch, &old);
            }
            Self::index_room(&mut batch, &room)?;
            let owner = Membership {
                room_id: room.id,
                ..owner
            };
            Self::put_membership(&mut batch, &owner)?;
            self.apply(batch)?;
        }
        self.durable().await
    }

    async fn room(&self, id: RoomId) -> Result<Option<Room>> {
        match self.get::<Room>(&key2(b'r', id.as_bytes(), &[]))? {
            Some(room) => Ok(Some(self.room_out(room)?)),
            None => Ok(None),
        }
    }

    async fn update_room(&self, id: RoomId, update: RoomUpdate) -> Result<Option<Room>> {
        let updated = {
            let _w = self.lock_writes()?;
            match self.get::<Room>(&key2(b'r', id.as_bytes(), &[]))? {
                None => None,
                Some(old) => {
                    let mut room = old.clone();
                    apply_update(&mut room, update);
                    let mut batch = Batch::default();
                    self.unindex_room(&mut batch, &old);
                    Self::index_room(&mut batch, &room)?;
                    self.apply(batch)?;
                    Some(self.room_out(room)?)
                }
            }
        };
        self.durable().await?;
        Ok(updated)
    }

    async fn delete_room(&self, id: RoomId) -> Result<bool> {
        let deleted = {
            let _w = self.lock_writes()?;
            match self.get::<Room>(&key2(b'r', id.as_bytes(), &[]))? {
                None => false,
                Some(old) => {
                    let room = id.as_bytes();
                    let mut batch = Batch::default();
                    self.unindex_room(&mut batch, &old);
                    for user in self.ids_under(&key2(b'm', room, &[]))? {
                        batch.remove(key2(b'm', room, &user));
                        batch.remove(key2(b'j', &user, room));
                    }
                    for session in self.ids_under(&key2(b'z', room, &[]))? {
                        self.unindex_session(&mut batch, SessionId::from_bytes(session))?;
                        // In case the session record is gone but the index
                        // entry is not.
                        batch.remove(key2(b'z', room, &session));
                    }
                    for prefix in [b's', b'i'] {
                        for k in self.db()?.scan_prefix(key2(prefix, room, &[])).keys() {
                            batch.remove(k?);
                        }
                    }
                    self.apply(batch)?;
                    true
                }
            }
        };
        self.durable().await?;
        Ok(deleted)
    }

    async fn public_rooms(&self) -> Result<Vec<Room>> {
        // The `p` keys are already in (created_at, id) order; `sorted_rooms`
        // sorts anyway, which costs nothing on sorted input.
        let prefix = [b'p'];
        let mut ids = Vec::new();
        for k in self.db()?.scan_prefix(prefix).keys() {
            ids.push(id_at(&k?, 1 + 8)?);
        }
        let mut rooms = self.sorted_rooms(ids)?;
        // Skip a room whose visibility changed between the scan and the read.
        rooms.retain(|r| r.visibility == Visibility::Public);
        Ok(rooms)
    }

    async fn rooms_of(&self, user: UserId) -> Result<Vec<Room>> {
        let ids = self.ids_under(&key2(b'j', user.as_bytes(), &[]))?;
        self.sorted_rooms(ids)
    }

    /// The user's index alone: no room records read or decoded, no member
    /// counts. The index and the rooms change in the same batches.
    async fn room_ids_of(&self, user: UserId) -> Result<Vec<RoomId>> {
        Ok(self
            .ids_under(&key2(b'j', user.as_bytes(), &[]))?
            .into_iter()
            .map(RoomId::from_bytes)
            .collect())
    }

    async fn add_member(&self, membership: Membership) -> Result<bool> {
        let added = {
            let _w = self.lock_writes()?;
            let key = key2(
                b'm',
                membership.room_id.as_bytes(),
                membership.user_id.as_bytes(),
            );
            if self.db()?.contains_key(&key)? {
                false
            } else {
                let mut batch = Batch::default();
                Self::put_membership(&mut batch, &membership)?;
                self.apply(batch)?;
                true
            }
        };
        self.durable().await?;
        Ok(added)
    }

    async fn remove_member(&self, room: RoomId, user: UserId) -> Result<bool> {
        let removed = {
            let _w = self.lock_writes()?;
            let key = key2(b'm', room.as_bytes(), user.as_bytes());
            if self.db()?.contains_key(&key)? {
                let mut batch = Batch::default();
                batch.remove(key);
                batch.remove(key2(b'j', user.as_bytes(), room.as_bytes()));
                self.apply(batch)?;
                true
            } else {
                false
            }
        };
        self.durable().await?;
        Ok(removed)
    }

    async fn set_role(&self, room: RoomId, user: UserId, role: Role) -> Result<bool> {
        let set = {
            let _w = self.lock_writes()?;
            let key = key2(b'm', room.as_bytes(), user.as_bytes());
            match self.get::<Membership>(&key)? {
                Some(mut m) => {
                    m.role = role;
                    let mut batch = Batch::default();
                    batch.insert(key, encode(&m)?);
                    self.apply(batch)?;
                    true
                }
                None => false,
            }
        };
        self.durable().await?;
        Ok(set)
    }

    async fn member(&self, room: RoomId, user: UserId) -> Result<Option<Membership>> {
        self.get(&key2(b'm', room.as_bytes(), user.as_bytes()))
    }

    async fn members(&self, room: RoomId) -> Result<Vec<Membership>> {
        let mut members: Vec<Membership> = self.values(&key2(b'm', room.as_bytes(), &[]))?;
        members.sort_by_key(member_order);
        Ok(members)
    }

    async fn append_message(&self, message: NewMessage) -> Result<AppendOutcome> {
        let outcome = {
            let _w = self.lock_writes()?;
            let room = message.room_id;
            let idem_key = message.client_id.as_ref().map(|c| {
                key2(
                    b'i',
                    room.as_bytes(),
                    &[&message.sender.id.as_bytes()[..], c.as_bytes()].concat(),
                )
            });
            let earlier = match &idem_key {
                Some(k) => match self.db()?.get(k)? {
                    Some(seq) => {
                        let seq = seq_at(&seq, 0).map_err(|_| corrupt(k, "seq is not 8 bytes"))?;
                        let msg_key = message_key(room, seq);
                        Some(
                            self.get::<Message>(&msg_key)?
                                .ok_or_else(|| corrupt(k, "names a message that is not stored"))?,
                        )
                    }
                    None => None,
                },
                None => None,
            };
            match earlier {
                Some(m) => AppendOutcome::Duplicate(m),
                None => {
                    let seq = self.last_seq_sync(room)? + 1;
                    let stored = Message {
                        id: message.id,
                        room_id: room,
                        seq,
                        sender: message.sender,
                        content: message.content,
                        created_at: message.created_at,
                        client_id: message.client_id,
                    };
                    let mut batch = Batch::default();
                    batch.insert(message_key(room, seq), encode(&stored)?);
                    if let Some(k) = idem_key {
                        batch.insert(k, &seq.to_be_bytes()[..]);
                    }
                    self.apply(batch)?;
                    AppendOutcome::Created(stored)
                }
            }
        };
        self.durable().await?;
        Ok(outcome)
    }

    async fn messages(&self, room: RoomId, query: HistoryPage, limit: usize) -> Result<Page> {
        let limit = clamp_limit(limit);
        let (messages, has_more) = match query {
            HistoryPage::Latest => {
                let prefix = key2(b's', room.as_bytes(), &[]);
                let (mut m, more) = self.page(self.db()?.scan_prefix(prefix).rev(), limit)?;
                m.reverse();
                (m, more)
            }
            HistoryPage::Before(seq) => {
                let range = message_key(room, 0)..message_key(room, seq);
                let (mut m, more) = self.page(self.db()?.range(range).rev(), limit)?;
                m.reverse();
                (m, more)
            }
            HistoryPage::After(seq) => match seq.checked_add(1) {
                None => (Vec::new(), false),
                Some(first) => {
                    let range = message_key(room, first)..=message_key(room, u64::MAX);
                    self.page(self.db()?.range(range), limit)?
                }
            },
        };
        Ok(Page { messages, has_more })
    }

    async fn last_seq(&self, room: RoomId) -> Result<u64> {
        self.last_seq_sync(room)
    }

    async fn put_session(&self, session: P2pSession) -> Result<()> {
        {
            let _w = self.lock_writes()?;
            let id = session.id.as_bytes();
            let mut batch = Batch::default();
            self.unindex_session(&mut batch, session.id)?;
            batch.insert(
                key2(b'y', session.initiator_user_id.as_bytes(), id),
                &[][..],
            );
            batch.insert(key2(b'y', session.target_user_id.as_bytes(), id), &[][..]);
            batch.insert(key2(b'z', session.room_id.as_bytes(), id), &[][..]);
            batch.insert(key2(b'x', id, &[]), encode(&session)?);
            self.apply(batch)?;
        }
        self.durable().await
    }

    async fn session(&self, id: SessionId) -> Result<Option<P2pSession>> {
        self.get(&key2(b'x', id.as_bytes(), &[]))
    }

    async fn sessions_of(&self, user: UserId) -> Result<Vec<P2pSession>> {
        let mut sessions = Vec::new();
        for id in self.ids_under(&key2(b'y', user.as_bytes(), &[]))? {
            if let Some(s) = self.get::<P2pSession>(&key2(b'x', &id, &[]))? {
                sessions.push(s);
            }
        }
        sessions.sort_by_key(session_order);
        Ok(sessions)
    }

    async fn delete_session(&self, id: SessionId) -> Result<bool> {
        let deleted = {
            let _w = self.lock_writes()?;
            let mut batch = Batch::default();
            let found = self.unindex_session(&mut batch, id)?;
            if found {
                self.apply(batch)?;
            }
            found
        };
        self.durable().await?;
        Ok(deleted)
    }
}

// ---- keys and records ----

/// `prefix ++ a ++ b`.
fn key2(prefix: u8, a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + a.len() + b.len());
    key.push(prefix);
    key.extend_from_slice(a);
    key.extend_from_slice(b);
    key
}

fn message_key(room: RoomId, seq: u64) -> Vec<u8> {
    key2(b's', room.as_bytes(), &seq.to_be_bytes())
}

/// A timestamp as 8 bytes whose big-endian order is time order.
fn time_key(t: Timestamp) -> [u8; 8] {
    ((t.unix_millis() as u64) ^ (1 << 63)).to_be_bytes()
}

fn public_key(room: &Room) -> Vec<u8> {
    key2(b'p', &time_key(room.created_at), room.id.as_bytes())
}

fn corrupt(key: &[u8], reason: impl Into<String>) -> SledStoreError {
    SledStoreError::Corrupt {
        key: key.escape_ascii().to_string(),
        reason: reason.into(),
    }
}

/// The 16-byte id at `offset` that ends `key`.
fn id_at(key: &[u8], offset: usize) -> Result<[u8; 16]> {
    key.get(offset..)
        .and_then(|rest| <[u8; 16]>::try_from(rest).ok())
        .ok_or_else(|| corrupt(key, "expected a 16-byte id"))
}

/// The big-endian u64 at `offset` that ends `key`.
fn seq_at(key: &[u8], offset: usize) -> Result<u64> {
    key.get(offset..)
        .and_then(|rest| <[u8; 8]>::try_from(rest).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(key, "expected a big-endian u64"))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(SledStoreError::Encode)
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(key, e.to_string()))
}

// ---- group commit ----

type FlushResult = std::result::Result<(), FlushError>;

/// The group-commit flusher: one thread, one `Db::flush` (and one record
/// write) per batch of waiting writers. See the module docs.
#[derive(Debug)]
struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct Queue {
    /// Writers whose batch is applied and who wait for the next flush.
    waiters: Vec<oneshot::Sender<FlushResult>>,
    shutdown: bool,
    /// Flushes run so far.
    flushes: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing in the queue can be left inconsistent by a panic.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Flusher {
    fn start(inner: Arc<Inner>) -> Result<Self> {
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("mesh-sled-flusher".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || flush_loop(&inner, &shared)
            })
            .map_err(SledStoreError::Spawn)?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Registers a writer; the receiver completes after the next flush that
    /// starts after this call.
    fn request(&self) -> oneshot::Receiver<FlushResult> {
        let (tx, rx) = oneshot::channel();
        self.shared.lock().waiters.push(tx);
        self.shared.wake.notify_one();
        rx
    }

    /// Serves every registered writer, then stops the thread.
    fn stop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            // A panic in the flusher has already failed its waiters (their
            // senders were dropped); there is nothing more to report here.
            let _ = thread.join();
        }
    }
}

fn flush_loop(inner: &Inner, shared: &Shared) {
    loop {
        let batch = {
            let mut queue = shared.lock();
            while queue.waiters.is_empty() && !queue.shutdown {
                queue = shared
                    .wake
                    .wait(queue)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if queue.waiters.is_empty() {
                // Shut down, and nobody is left waiting.
                return;
            }
            std::mem::take(&mut queue.waiters)
        };
        // Everyone in `batch` applied their write before registering, so
        // this flush covers all of them. Writers arriving now queue up for
        // the next round. They are completed only after the generation is
        // recorded: what was acknowledged is never above the record.
        let result = inner.flush_and_record();
        shared.lock().flushes += 1;
        for waiter in batch {
            // A writer that stopped waiting (future dropped) is fine to miss.
            let _ = waiter.send(result.clone());
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::User;

    fn user(name: &str) -> UserRecord {
        UserRecord {
            user: User {
                id: UserId::new(),
                username: name.into(),
                display_name: name.into(),
                created_at: Timestamp::from_unix_millis(1),
            },
            password_hash: String::new(),
        }
    }

    fn room(owner: UserId) -> (Room, Membership) {
        let room = Room {
            id: RoomId::new(),
            name: "general".into(),
            topic: None,
            visibility: Visibility::Public,
            created_by: owner,
            created_at: Timestamp::from_unix_millis(2),
            member_count: 0,
        };
        let owner = Membership {
            room_id: room.id,
            user_id: owner,
            role: Role::Owner,
            joined_at: Timestamp::from_unix_millis(2),
        };
        (room, owner)
    }

    fn message(room: RoomId, sender: &User, n: usize) -> NewMessage {
        NewMessage {
            id: crate::protocol::MessageId::new(),
            room_id: room,
            sender: sender.clone(),
            content: format!("message {n}"),
            created_at: Timestamp::from_unix_millis(3),
            client_id: Some(format!("c{n}")),
        }
    }

    /// The store needs no particular runtime; a current-thread one will do.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    const CRASH_ENV: &str = "MESH_SLED_CRASH_CHILD_DIR";

    /// Run in a child process by [`acknowledged_writes_survive_a_crash`]:
    /// writes, then aborts the process at once, without dropping (and so
    /// without any flush but the store's own).
    #[test]
    fn crash_child() {
        let Some(dir) = std::env::var_os(CRASH_ENV) else {
            return; // Not the child: nothing to do.
        };
        let store = SledStore::open(std::path::Path::new(&dir).join("db")).expect("open");
        block_on(async {
            let alice = user("alice");
            assert!(store.create_user(alice.clone()).await.expect("user"));
            let (room, owner) = room(alice.user.id);
            std::fs::write(
                std::path::Path::new(&dir).join("ids"),
                format!("{} {}", alice.user.id, room.id),
            )
            .expect("ids");
            store.create_room(room.clone(), owner).await.expect("room");
            for n in 0..20 {
                store
                    .append_message(message(room.id, &alice.user, n))
                    .await
                    .expect("append");
            }
        });
        // Every write above was acknowledged. Die without cleaning up.
        std::process::abort();
    }

    #[test]
    fn acknowledged_writes_survive_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "storage::sled::tests::crash_child",
                "--nocapture",
            ])
            .env(CRASH_ENV, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run child");
        assert!(!status.success(), "the child must have aborted");
        let ids = std::fs::read_to_string(dir.path().join("ids")).expect("ids");
        let (user_id, room_id) = ids.split_once(' ').expect("two ids");
        let user_id: UserId = user_id.parse().expect("user id");
        let room_id: RoomId = room_id.parse().expect("room id");

        let store = SledStore::open(dir.path().join("db")).expect("reopen");
        block_on(async {
            let alice = store.user(user_id).await.expect("read").expect("user kept");
            assert_eq!(alice.user.username, "alice");
            let room = store.room(room_id).await.expect("read").expect("room kept");
            assert_eq!(room.member_count, 1);
            assert_eq!(store.last_seq(room_id).await.expect("seq"), 20);
            let page = store
                .messages(room_id, HistoryPage::Latest, 100)
                .await
                .expect("page");
            let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
            assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
        });
    }

    #[test]
    fn writes_survive_a_plain_drop_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let alice = user("alice");
        {
            let store = SledStore::open(dir.path().join("db")).expect("open");
            assert!(block_on(store.create_user(alice.clone())).expect("create"));
        }
        let store = SledStore::open(dir.path().join("db")).expect("reopen");
        assert_eq!(
            block_on(store.user_by_name("alice")).expect("read"),
            Some(alice)
        );
    }

    #[test]
    fn concurrent_writers_share_flushes() {
        let store = SledStore::temporary().expect("open");
        let alice = user("alice");
        let (room, owner) = room(alice.user.id);
        block_on(store.create_room(room.clone(), owner)).expect("room");
        let before = store.flush_count();
        const N: usize = 64;
        // All appends are in flight at once, from threads of their own as
        // the server's requests are: each applies its batch, then they wait
        // for flushes together. (From one thread, a writer would apply only
        // after the flush the one before it waits for: sled holds batches
        // back while it flushes, so nothing could share that flush.)
        let start = std::sync::Barrier::new(N);
        std::thread::scope(|s| {
            let writers: Vec<_> = (0..N)
                .map(|n| {
                    let (store, start, sender) = (&store, &start, &alice.user);
                    s.spawn(move || {
                        start.wait();
                        block_on(store.append_message(message(room.id, sender, n)))
                    })
                })
                .collect();
            for w in writers {
                let outcome = w.join().expect("writer thread").expect("append");
                assert!(matches!(outcome, AppendOutcome::Created(_)));
            }
        });
        let flushes = store.flush_count() - before;
        assert!(
            (1..N as u64).contains(&flushes),
            "{flushes} flushes for {N} writes"
        );
        assert_eq!(block_on(store.last_seq(room.id)).expect("seq"), N as u64);
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let store = SledStore::temporary().expect("open");
        let id = UserId::new();
        store
            .db()
            .expect("db")
            .insert(key2(b'u', id.as_bytes(), &[]), &b"not json"[..])
            .expect("insert");
        let err = block_on(store.user(id)).expect_err("corrupt");
        assert!(matches!(StoreError::from(err), StoreError::Corrupt(_)));
    }

    /// Copies `from/db` and `from/db.integrity` into `to`: the files as a
    /// crash at this moment would leave them (nothing is being written).
    fn crash_copy(from: &Path, to: &Path) {
        integrity::copy_dir(&from.join("db"), &to.join("db")).expect("copy db");
        std::fs::copy(from.join("db.integrity"), to.join("db.integrity")).expect("copy record");
    }

    fn recorded(dir: &Path) -> u64 {
        integrity::read_record_at(&dir.join("db.integrity"))
            .expect("read")
            .expect("a record")
            .generation
    }

    #[test]
    fn every_acknowledged_write_is_at_or_below_the_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path().join("db")).expect("open");
        let alice = user("alice");
        assert!(block_on(store.create_user(alice.clone())).expect("user"));
        let (room, owner) = room(alice.user.id);
        block_on(store.create_room(room.clone(), owner)).expect("room");
        for n in 0..5 {
            block_on(store.append_message(message(room.id, &alice.user, n))).expect("append");
            // One writer: its batch is the newest applied one.
            let acked = store.inner.applied.load(Ordering::Acquire);
            assert!(recorded(dir.path()) >= acked);
            let on_disk = read_meta(&store.db().expect("db")).expect("meta").0;
            assert_eq!(on_disk, acked, "the generation travels in the batch");
        }
        // A duplicate writes nothing and moves no generation.
        let before = store.inner.applied.load(Ordering::Acquire);
        let dup = block_on(store.append_message(message(room.id, &alice.user, 0))).expect("dup");
        assert!(matches!(dup, AppendOutcome::Duplicate(_)));
        assert_eq!(store.inner.applied.load(Ordering::Acquire), before);
    }

    #[test]
    fn a_crash_between_the_flush_and_the_record_opens_fine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let crashed = tempfile::tempdir().expect("tempdir");
        let alice = user("alice");
        let store = SledStore::open(dir.path().join("db")).expect("open");
        assert!(block_on(store.create_user(alice.clone())).expect("user"));
        // A batch applied and flushed by sled, whose generation the record
        // does not have yet: the moment between `Db::flush` and the record
        // write.
        let (room, owner) = room(alice.user.id);
        {
            let _w = store.lock_writes().expect("lock");
            let mut batch = Batch::default();
            SledStore::index_room(&mut batch, &room).expect("index");
            SledStore::put_membership(&mut batch, &owner).expect("member");
            store.apply(batch).expect("apply");
            store.db().expect("db").flush().expect("flush");
        }
        let applied = store.inner.applied.load(Ordering::Acquire);
        assert!(recorded(dir.path()) < applied, "the record lags");
        crash_copy(dir.path(), crashed.path());
        drop(store);

        let store = SledStore::open(crashed.path().join("db")).expect("opens after the crash");
        assert!(block_on(store.user(alice.user.id)).expect("read").is_some());
        assert!(block_on(store.room(room.id)).expect("read").is_some());
        assert_eq!(recorded(crashed.path()), applied, "recorded as found");
    }

    #[test]
    fn a_crash_before_anything_was_written_opens_fine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let crashed = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path().join("db")).expect("open");
        crash_copy(dir.path(), crashed.path());
        drop(store);
        let store = SledStore::open(crashed.path().join("db")).expect("opens");
        assert_eq!(block_on(store.user_by_name("alice")).expect("read"), None);
    }

    #[test]
    fn an_older_copy_under_a_newer_record_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = tempfile::tempdir().expect("tempdir");
        let alice = user("alice");
        let store = SledStore::open(dir.path().join("db")).expect("open");
        assert!(block_on(store.create_user(alice.clone())).expect("user"));
        crash_copy(dir.path(), old.path());
        // One more acknowledged write: the last user.
        assert!(block_on(store.create_user(user("bob"))).expect("user"));
        drop(store);
        // The older database under the newer record.
        std::fs::copy(
            dir.path().join("db.integrity"),
            old.path().join("db.integrity"),
        )
        .expect("record");
        let before = integrity::fingerprint(&old.path().join("db")).expect("fp");
        let err = SledStore::open(old.path().join("db")).expect_err("refused");
        assert!(matches!(err, SledStoreError::Refused { .. }), "{err}");
        assert!(err.to_string().contains("acknowledged"), "{err}");
        assert_eq!(
            integrity::fingerprint(&old.path().join("db")).expect("fp"),
            before
        );
        assert!(
            !old.path().join("db.verify").exists(),
            "the copy is removed"
        );
        let report = check(old.path().join("db")).expect("check");
        assert!(!report.is_whole());
        assert_eq!(report.contents.map(|c| c.users), Some(1));
    }

    #[test]
    fn a_clean_close_is_recorded_and_reopens_without_a_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = SledStore::open(dir.path().join("db")).expect("open");
            assert!(block_on(store.create_user(user("alice"))).expect("user"));
        }
        let record = integrity::read_record_at(&dir.path().join("db.integrity"))
            .expect("read")
            .expect("record");
        assert!(record.clean);
        assert_eq!(
            record.fingerprint,
            Some(integrity::fingerprint(&dir.path().join("db")).expect("fp"))
        );
        let report = check(dir.path().join("db")).expect("check");
        assert!(report.is_whole(), "{report:?}");
        assert_eq!(report.unchanged_since_clean_close, Some(true));
        let store = SledStore::open(dir.path().join("db")).expect("reopen");
        let record = store
            .inner
            .record()
            .as_ref()
            .and_then(|r| r.last())
            .expect("record");
        assert!(!record.clean, "open clears the clean mark");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(SledStore::open(dir.path().join("db")).expect("open"));
        {
            let db = sled_config(&dir.path().join("db")).open().expect("sled");
            db.insert(SCHEMA_KEY, &(SCHEMA + 1).to_be_bytes()[..])
                .expect("insert");
            db.flush().expect("flush");
        }
        let err = SledStore::open(dir.path().join("db")).expect_err("refused");
        assert!(
            matches!(err, SledStoreError::NewerSchema { found: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn sleds_own_lock_is_recognised_without_reading_its_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        assert!(!sled_lock_held(&path), "nothing there yet");
        let held = sled_config(&path).open().expect("sled");
        assert!(sled_lock_held(&path));
        // open_db waits OPEN_LOCK_WAIT for it, then says who holds it.
        let err = open_db(&path).expect_err("locked");
        assert!(matches!(err, SledStoreError::Busy(_)), "{err}");
        // Dropped, sled may hold the lock a moment longer: open_db waits.
        drop(held);
        open_db(&path).expect("opens once the lock is released");
    }

    #[test]
    fn a_second_store_on_the_same_folder_is_busy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = SledStore::open(dir.path().join("db")).expect("open");
        let err = SledStore::open(dir.path().join("db")).expect_err("busy");
        assert!(matches!(err, SledStoreError::Busy(_)), "{err}");
    }
}
