//! The integrity record kept beside a [`SledStore`](super::SledStore)'s
//! folder, the fingerprint of a cleanly closed database, and the check of a
//! database on a copy.
//!
//! Why this exists: sled 0.34 treats any damage to its files as a torn tail.
//! It opens what is left *without an error* and zeroes the damaged part as it
//! opens. A server that simply opened a damaged database would serve less
//! than it had acknowledged, without a word. So mesh keeps, outside sled's
//! folder, a small record of how far the database had got (the generation of
//! the newest batch known to be on disk), and before sled touches the real
//! files it either proves they are byte for byte what a clean shutdown left,
//! or opens a *copy* and checks that the copy reaches the recorded
//! generation and that every record in it decodes.
//!
//! # The record file
//!
//! `<db folder>.integrity` (for the server: `DATA/db.integrity`), 8 KiB: two
//! slots at offsets 0 and 4096 (different sectors, so a torn write of one
//! cannot damage the other). A write goes to the slot not holding the newest
//! record, with `fdatasync`; at read the valid slot with the highest sequence
//! wins. A slot ([`SLOT_LEN`] bytes used, the rest zero):
//!
//! | bytes  | field                                                  |
//! |--------|--------------------------------------------------------|
//! | 0..8   | magic `MESHDBI` and the record format (1)              |
//! | 8..16  | slot sequence (u64 big-endian; the higher one wins)    |
//! | 16..24 | generation: every batch up to it is on disk            |
//! | 24..32 | schema version of the database                         |
//! | 32..40 | flags: bit 0 = closed cleanly, bit 1 = fingerprint set |
//! | 40..72 | fingerprint of the files at clean close (BLAKE3)       |
//! | 72..88 | BLAKE3 of bytes 0..72, first 16 bytes                  |
//!
//! The whole file is written at creation, so later writes allocate nothing
//! (they work on a full disk, where the record matters most).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

/// Bytes of a slot that carry data (the rest of the 4 KiB is zero).
pub(super) const SLOT_LEN: usize = 88;
const SLOT_STRIDE: u64 = 4096;
const FILE_LEN: u64 = 2 * SLOT_STRIDE;
const MAGIC: &[u8; 7] = b"MESHDBI";
/// The record format this build writes and reads.
const FORMAT: u8 = 1;

const FLAG_CLEAN: u64 = 1;
const FLAG_FINGERPRINT: u64 = 2;

/// One slot's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Record {
    /// Which write this was: the higher of the two slots wins.
    pub(super) seq: u64,
    /// Every write batch up to this generation is on disk.
    pub(super) generation: u64,
    /// The database's schema version.
    pub(super) schema: u64,
    /// Written after the database was closed cleanly.
    pub(super) clean: bool,
    /// The fingerprint of the files at clean close.
    pub(super) fingerprint: Option<[u8; 32]>,
}

/// What reading a slot found.
#[derive(Debug, PartialEq, Eq)]
enum Slot {
    Valid(Record),
    /// Never written (all zero).
    Empty,
    /// Damaged, torn, or not ours.
    Invalid,
    /// A later record format.
    Newer(u8),
}

impl Record {
    fn encode(&self) -> [u8; SLOT_LEN] {
        let mut out = [0u8; SLOT_LEN];
        out[0..7].copy_from_slice(MAGIC);
        out[7] = FORMAT;
        out[8..16].copy_from_slice(&self.seq.to_be_bytes());
        out[16..24].copy_from_slice(&self.generation.to_be_bytes());
        out[24..32].copy_from_slice(&self.schema.to_be_bytes());
        let mut flags = 0;
        if self.clean {
            flags |= FLAG_CLEAN;
        }
        if let Some(fp) = &self.fingerprint {
            flags |= FLAG_FINGERPRINT;
            out[40..72].copy_from_slice(fp);
        }
        out[32..40].copy_from_slice(&flags.to_be_bytes());
        let sum = blake3::hash(&out[..72]);
        out[72..88].copy_from_slice(&sum.as_bytes()[..16]);
        out
    }

    fn decode(bytes: &[u8; SLOT_LEN]) -> Slot {
        if bytes.iter().all(|b| *b == 0) {
            return Slot::Empty;
        }
        if &bytes[0..7] != MAGIC {
            return Slot::Invalid;
        }
        let sum = blake3::hash(&bytes[..72]);
        if bytes[72..88] != sum.as_bytes()[..16] {
            return Slot::Invalid;
        }
        if bytes[7] != FORMAT {
            return Slot::Newer(bytes[7]);
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let flags = u64_at(32);
        let mut fp = [0u8; 32];
        fp.copy_from_slice(&bytes[40..72]);
        Slot::Valid(Record {
            seq: u64_at(8),
            generation: u64_at(16),
            schema: u64_at(24),
            clean: flags & FLAG_CLEAN != 0,
            fingerprint: (flags & FLAG_FINGERPRINT != 0).then_some(fp),
        })
    }
}

/// Why a record file could not be used.
#[derive(Debug, thiserror::Error)]
pub(super) enum RecordError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is in use by another process (a running server?)")]
    Busy(PathBuf),
    #[error("the integrity record {0} is damaged (neither of its two copies is readable)")]
    Damaged(PathBuf),
    #[error(
        "the integrity record {path} was written by a newer mesh (record format {format}, this build reads {FORMAT})"
    )]
    Newer { path: PathBuf, format: u8 },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RecordError + use<> {
    let path = path.to_owned();
    move |source| RecordError::Io { what, path, source }
}

/// The record file, locked for this process while it is open.
#[derive(Debug)]
pub(super) struct RecordFile {
    file: File,
    /// The newest record in the file, if any.
    last: Option<Record>,
}

impl RecordFile {
    /// Opens (creating if missing, empty) and locks the record file, and
    /// reads it (`None`: no record yet). Also tells whether the file was
    /// created, so that a refused start can remove it again. Waits up to
    /// `wait` for the lock (a store of this process that is closing).
    pub(super) fn open_new(
        path: &Path,
        wait: std::time::Duration,
    ) -> Result<(Self, Option<Record>, bool), RecordError> {
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err("opening", path))?;
        if !existed {
            sync_parent(path).map_err(io_err("syncing the folder of", path))?;
        }
        let started = std::time::Instant::now();
        loop {
            match lock(&file, path) {
                Err(RecordError::Busy(_)) if started.elapsed() < wait => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                other => break other?,
            }
        }
        let mut this = Self { file, last: None };
        this.last = read_record(&mut this.file, path)?;
        let last = this.last;
        Ok((this, last, !existed))
    }

    /// The newest record written or read.
    pub(super) fn last(&self) -> Option<Record> {
        self.last
    }

    /// Writes a new record into the slot not holding the newest one, and
    /// waits until it is on disk.
    pub(super) fn write(
        &mut self,
        generation: u64,
        schema: u64,
        clean: bool,
        fingerprint: Option<[u8; 32]>,
    ) -> io::Result<()> {
        let len = self.file.metadata()?.len();
        if len < FILE_LEN {
            // First write: give the file its full size at once, so that no
            // later write needs a new block.
            self.file.set_len(0)?;
            self.file.seek(SeekFrom::Start(0))?;
            self.file.write_all(&vec![0u8; FILE_LEN as usize])?;
        }
        let seq = self.last.map_or(1, |r| r.seq.wrapping_add(1));
        let record = Record {
            seq,
            generation,
            schema,
            clean,
            fingerprint,
        };
        self.file.seek(SeekFrom::Start((seq % 2) * SLOT_STRIDE))?;
        self.file.write_all(&record.encode())?;
        self.file.sync_data()?;
        self.last = Some(record);
        Ok(())
    }
}

fn lock(file: &File, path: &Path) -> Result<(), RecordError> {
    use fs2::FileExt as _;
    file.try_lock_exclusive().map_err(|e| {
        if e.kind() == fs2::lock_contended_error().kind() {
            RecordError::Busy(path.to_owned())
        } else {
            RecordError::Io {
                what: "locking",
                path: path.to_owned(),
                source: e,
            }
        }
    })
}

/// Reads the record at `path` without creating or locking it (for the
/// offline check, which also works on a copy of a stopped server's folder).
pub(super) fn read_record_at(path: &Path) -> Result<Option<Record>, RecordError> {
    match File::open(path) {
        Ok(mut f) => read_record(&mut f, path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("opening", path)(e)),
    }
}

fn read_record(file: &mut File, path: &Path) -> Result<Option<Record>, RecordError> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(io_err("reading", path))?;
    if bytes.is_empty() {
        return Ok(None);
    }
    let mut best: Option<Record> = None;
    let mut newer = None;
    for i in 0..2 {
        let at = i * SLOT_STRIDE as usize;
        let mut slot = [0u8; SLOT_LEN];
        if let Some(b) = bytes.get(at..at + SLOT_LEN) {
            slot.copy_from_slice(b);
        }
        match Record::decode(&slot) {
            Slot::Valid(r) if best.is_none_or(|b| r.seq > b.seq) => best = Some(r),
            Slot::Newer(f) => newer = Some(f),
            _ => {}
        }
    }
    match (best, newer) {
        (_, Some(format)) => Err(RecordError::Newer {
            path: path.to_owned(),
            format,
        }),
        (Some(r), None) => Ok(Some(r)),
        (None, None) if bytes.iter().all(|b| *b == 0) => Ok(None),
        (None, None) => Err(RecordError::Damaged(path.to_owned())),
    }
}

/// Makes a new directory entry durable.
pub(super) fn sync_parent(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    if let Some(parent) = path.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        File::open(parent)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Every file under `dir`, as paths relative to it, sorted.
fn files_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(dir.join(&rel))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let rel = rel.join(entry.file_name());
            if kind.is_dir() {
                stack.push(rel);
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The fingerprint of a closed database: BLAKE3 over every file's relative
/// path, size and content, in path order. Equal fingerprints mean the files
/// are byte for byte the same.
pub(super) fn fingerprint(dir: &Path) -> io::Result<[u8; 32]> {
    let mut all = blake3::Hasher::new();
    for rel in files_under(dir)? {
        let path = dir.join(&rel);
        let name = rel.to_string_lossy();
        let mut file = File::open(&path)?;
        let len = file.metadata()?.len();
        let mut one = blake3::Hasher::new();
        one.update_reader(&mut file)?;
        all.update(&(name.len() as u64).to_be_bytes());
        all.update(name.as_bytes());
        all.update(&len.to_be_bytes());
        all.update(one.finalize().as_bytes());
    }
    Ok(*all.finalize().as_bytes())
}

/// What a database folder holds, judged from its file names alone.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum FolderKind {
    /// Missing, or an empty folder.
    Empty,
    /// sled's files (`conf` or `db`) are there.
    Sled,
    /// Files, but none of sled's: the names of a few of them.
    Foreign(Vec<String>),
}

pub(super) fn folder_kind(dir: &Path) -> io::Result<FolderKind> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FolderKind::Empty),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    if names.is_empty() {
        Ok(FolderKind::Empty)
    } else if names.iter().any(|n| n == "conf" || n == "db") {
        Ok(FolderKind::Sled)
    } else {
        names.sort();
        names.truncate(5);
        Ok(FolderKind::Foreign(names))
    }
}

/// Copies the folder `from` to `to` (which must not exist).
pub(super) fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for rel in files_under(from)? {
        let target = to.join(&rel);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(from.join(&rel), &target)?;
    }
    // sled keeps an empty `blobs` folder; keep the shape.
    for sub in ["blobs"] {
        if from.join(sub).is_dir() {
            fs::create_dir_all(to.join(sub))?;
        }
    }
    Ok(())
}

/// Waits (up to `wait`) until no process holds sled's lock on the database
/// in `dir`, and returns the lock. `None` if it stayed taken.
pub(super) fn wait_for_sled_lock(dir: &Path, wait: std::time::Duration) -> Option<File> {
    use fs2::FileExt as _;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("db"))
        .ok()?;
    let started = std::time::Instant::now();
    loop {
        if file.try_lock_exclusive().is_ok() {
            return Some(file);
        }
        if started.elapsed() >= wait {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, generation: u64) -> Record {
        Record {
            seq,
            generation,
            schema: 1,
            clean: seq.is_multiple_of(2),
            fingerprint: seq.is_multiple_of(3).then_some([seq as u8; 32]),
        }
    }

    #[test]
    fn slots_round_trip_and_damage_is_seen() {
        let r = record(3, 42);
        let bytes = r.encode();
        assert_eq!(Record::decode(&bytes), Slot::Valid(r));
        for i in 0..SLOT_LEN {
            let mut bad = bytes;
            bad[i] ^= 0x40;
            assert!(
                !matches!(Record::decode(&bad), Slot::Valid(_)),
                "a flipped byte {i} must be seen"
            );
        }
        assert_eq!(Record::decode(&[0u8; SLOT_LEN]), Slot::Empty);
    }

    #[test]
    fn the_newest_valid_slot_wins_and_a_torn_one_is_skipped() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("db.integrity");
        {
            let (mut file, found, _) =
                RecordFile::open_new(&path, std::time::Duration::ZERO).expect("open");
            assert_eq!(found, None);
            for generation in 1..=5 {
                file.write(generation, 1, false, None).expect("write");
            }
        }
        let (_, found, _) = RecordFile::open_new(&path, std::time::Duration::ZERO).expect("reopen");
        let last = found.expect("a record");
        assert_eq!(last.generation, 5);
        // Tear the newest slot: the older one (generation 4) is read.
        let mut bytes = fs::read(&path).expect("read");
        let at = ((last.seq % 2) * SLOT_STRIDE) as usize;
        bytes[at + 20] ^= 1;
        fs::write(&path, &bytes).expect("write");
        assert_eq!(
            read_record_at(&path).expect("read").map(|r| r.generation),
            Some(4)
        );
        // Both torn: damaged, not "no record".
        let other = (((last.seq + 1) % 2) * SLOT_STRIDE) as usize;
        bytes[other + 20] ^= 1;
        fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            read_record_at(&path),
            Err(RecordError::Damaged(_))
        ));
    }

    #[test]
    fn a_second_opener_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("db.integrity");
        let first = RecordFile::open_new(&path, std::time::Duration::ZERO).expect("open");
        assert!(matches!(
            RecordFile::open_new(&path, std::time::Duration::ZERO),
            Err(RecordError::Busy(_))
        ));
        drop(first);
        RecordFile::open_new(&path, std::time::Duration::ZERO).expect("free again");
    }

    #[test]
    fn fingerprints_change_with_any_byte_and_any_file() {
        let dir = tempfile::tempdir().expect("dir");
        fs::create_dir(dir.path().join("blobs")).expect("mkdir");
        fs::write(dir.path().join("db"), b"abc").expect("write");
        fs::write(dir.path().join("blobs").join("1"), b"x").expect("write");
        let a = fingerprint(dir.path()).expect("fp");
        assert_eq!(a, fingerprint(dir.path()).expect("fp"));
        fs::write(dir.path().join("db"), b"abd").expect("write");
        let b = fingerprint(dir.path()).expect("fp");
        assert_ne!(a, b);
        fs::write(dir.path().join("snap.1"), b"").expect("write");
        assert_ne!(b, fingerprint(dir.path()).expect("fp"));
    }
}
