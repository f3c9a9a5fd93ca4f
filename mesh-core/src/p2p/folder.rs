//! Sending and receiving a folder: `FOLDER_MANIFEST`, `FILE_ACK`, then each
//! file as in [`super::file`].
//!
//! The sender walks the folder without following symlinks out of it: a
//! symlink to a file inside the folder is sent as that file, any other
//! symlink (to a directory, outside, dangling) and anything that is not a
//! file or a directory is skipped. The receiver checks the whole manifest
//! before a byte is written: every path is a safe relative path
//! ([`super::path::check_relative`]), listed once, its parent listed before
//! it; nothing under the destination on the way is a symlink; no file
//! exists already (unless overwriting is allowed). It then receives into
//! `<destination>/<manifest name>/` only.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tokio::io::AsyncRead;

use super::file::{self, FileReport, Progress, ReceiveOptions, SendOptions, Wire, unexpected};
use super::frame::{EntryKind, FolderManifest, Frame, MAX_FRAME_LEN, ManifestEntry};
use super::{P2pError, P2pErrorCode, path};
use crate::Failure;

/// The most entries a manifest may hold.
pub const MAX_ENTRIES: usize = 65_536;

/// What a finished folder transfer did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FolderReport {
    /// Receiver: the folder created or filled. Sender: the folder sent.
    pub root: PathBuf,
    /// Every file, in manifest order.
    pub files: Vec<FileReport>,
    /// How many directories the manifest held.
    pub dirs: usize,
    /// Sender only: paths skipped (symlinks leaving the folder or to
    /// directories, special files), relative to the folder.
    pub skipped: Vec<PathBuf>,
}

struct Walked {
    entries: Vec<ManifestEntry>,
    /// The local file behind each file entry, in order.
    sources: Vec<PathBuf>,
    skipped: Vec<PathBuf>,
}

/// Lists `root` for a manifest (blocking: run on a blocking thread).
fn walk(root: &Path) -> Result<Walked, P2pError> {
    let canon_root = std::fs::canonicalize(root).map_err(|e| P2pError::io(root, e))?;
    let mut out = Walked {
        entries: Vec::new(),
        sources: Vec::new(),
        skipped: Vec::new(),
    };
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut children = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| P2pError::io(&dir, e))? {
            let entry = entry.map_err(|e| P2pError::io(&dir, e))?;
            children.push(entry.file_name());
        }
        children.sort();
        let mut subdirs = Vec::new();
        for name in children {
            let child_rel = rel.join(&name);
            let child = root.join(&child_rel);
            let md = std::fs::symlink_metadata(&child).map_err(|e| P2pError::io(&child, e))?;
            let wire = path::to_wire(&child_rel)?;
            if md.is_dir() {
                out.entries.push(ManifestEntry {
                    path: wire,
                    kind: EntryKind::Dir,
                    size: 0,
                    blake3: None,
                });
                subdirs.push(child_rel);
            } else if md.is_file() {
                push_file(&mut out, wire, &child, md.len())?;
            } else if md.file_type().is_symlink() {
                // Follow only to a regular file inside the folder.
                match std::fs::canonicalize(&child) {
                    Ok(target) if target.starts_with(&canon_root) => {
                        match std::fs::metadata(&target) {
                            Ok(t) if t.is_file() => push_file(&mut out, wire, &target, t.len())?,
                            _ => out.skipped.push(child_rel),
                        }
                    }
                    _ => out.skipped.push(child_rel),
                }
            } else {
                out.skipped.push(child_rel);
            }
            if out.entries.len() > MAX_ENTRIES {
                return Err(P2pError::BadLocalPath(format!(
                    "{}: more than {MAX_ENTRIES} entries",
                    root.display()
                )));
            }
        }
        // Depth first, in name order: a directory always precedes its content.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(out)
}

fn push_file(out: &mut Walked, wire: String, source: &Path, size: u64) -> Result<(), P2pError> {
    // Fails if the file shrank since it was listed.
    let hash = file::hash_len_blocking(source, size)?;
    out.entries.push(ManifestEntry {
        path: wire,
        kind: EntryKind::File,
        size,
        blake3: Some(hash),
    });
    out.sources.push(source.to_owned());
    Ok(())
}

/// Sends the folder `root`.
pub(crate) async fn send_folder<R, W, F>(
    wire: &mut Wire<R, W>,
    root: &Path,
    opts: &SendOptions,
    mut progress: F,
) -> Result<FolderReport, P2pError>
where
    R: AsyncRead + Unpin + Send,
    W: file::WriteBytes,
    F: FnMut(Progress) + Send,
{
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => std::fs::canonicalize(root)
            .map_err(|e| P2pError::io(root, e))?
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                P2pError::BadLocalPath(format!("{}: no UTF-8 folder name", root.display()))
            })?
            .to_owned(),
    };
    path::check_component(&name)?;
    let root_owned = root.to_owned();
    let walked = tokio::task::spawn_blocking(move || walk(&root_owned))
        .await
        .map_err(|e| P2pError::Connection(Failure::caused_by("walking task", e)))??;
    let manifest = FolderManifest {
        name,
        entries: walked.entries,
    };
    let frame = Frame::FolderManifest(manifest);
    // Checked here so an oversized manifest is a clear local error.
    let encoded = super::frame::encode(&frame)?;
    if encoded.len() > MAX_FRAME_LEN + 4 {
        return Err(P2pError::BadLocalPath("manifest too large".into()));
    }
    wire.send(&frame).await?;
    let Frame::FolderManifest(manifest) = frame else {
        return Err(P2pError::BadLocalPath("unreachable".into()));
    };
    match wire.recv().await? {
        Frame::FileAck { ok: true, .. } => {}
        other => return Err(wire.fail(unexpected(&other, "FILE_ACK")).await),
    }

    let total: u64 = manifest.entries.iter().map(|e| e.size).sum();
    let mut base = 0;
    let mut files = Vec::new();
    let mut sources = walked.sources.into_iter();
    let file_opts = SendOptions {
        name: None,
        ..opts.clone()
    };
    for entry in manifest
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
    {
        let Some(source) = sources.next() else { break };
        let mut tally = file::Tally {
            base,
            total,
            report: &mut progress,
        };
        let name = entry.path.clone();
        let report =
            file::send_one(wire, &source, name, entry.blake3, &file_opts, &mut tally).await?;
        if report.size != entry.size || Some(report.blake3) != entry.blake3 {
            return Err(P2pError::BadLocalPath(format!(
                "{} changed while being sent",
                source.display()
            )));
        }
        base += entry.size;
        files.push(report);
    }
    let dirs = manifest
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::Dir)
        .count();
    Ok(FolderReport {
        root: root.to_owned(),
        files,
        dirs,
        skipped: walked.skipped,
    })
}

/// Checks everything in a manifest that needs no disk: the folder name,
/// the entry count, every path ([`path::check_relative`]), each listed
/// once and after its directory, every file with a hash, every directory
/// with size 0, and the total size (which must fit in a `u64`) against
/// `max_size`. Returns each entry's local relative path, in order.
///
/// The receiver runs this on every `FOLDER_MANIFEST` before it looks at the
/// destination; it is public so the fuzz targets can drive it.
pub fn validate_manifest(
    m: &FolderManifest,
    max_size: Option<u64>,
) -> Result<Vec<PathBuf>, P2pError> {
    path::check_component(&m.name)?;
    if m.entries.len() > MAX_ENTRIES {
        return Err(P2pError::refused(
            P2pErrorCode::TooLarge,
            format!("more than {MAX_ENTRIES} entries"),
        ));
    }
    let mut dirs: HashSet<&str> = HashSet::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut total = 0u64;
    let mut locals = Vec::with_capacity(m.entries.len());
    for e in &m.entries {
        let rel = path::check_relative(&e.path)?;
        if !seen.insert(e.path.as_str()) {
            return Err(P2pError::refused(
                P2pErrorCode::BadPath,
                format!("{:?} listed twice", e.path),
            ));
        }
        if let Some((parent, _)) = e.path.rsplit_once('/')
            && !dirs.contains(parent)
        {
            return Err(P2pError::refused(
                P2pErrorCode::BadPath,
                format!("{:?} comes before its directory", e.path),
            ));
        }
        match e.kind {
            EntryKind::Dir => {
                if e.size != 0 {
                    return Err(P2pError::refused(
                        P2pErrorCode::Protocol,
                        format!("directory {:?} has a size", e.path),
                    ));
                }
                dirs.insert(e.path.as_str());
            }
            EntryKind::File => {
                if e.blake3.is_none() {
                    return Err(P2pError::refused(
                        P2pErrorCode::Protocol,
                        format!("{:?} has no hash", e.path),
                    ));
                }
                // The receiver adds the sizes up for its progress reports:
                // a total past u64 is refused here, not overflowed there.
                total = total.checked_add(e.size).ok_or_else(|| {
                    P2pError::refused(
                        P2pErrorCode::TooLarge,
                        "the sizes add up to more than 2^64 bytes",
                    )
                })?;
            }
        }
        locals.push(rel);
    }
    if let Some(max) = max_size
        && total > max
    {
        return Err(P2pError::refused(
            P2pErrorCode::TooLarge,
            format!("{total} bytes is more than the {max} accepted"),
        ));
    }
    Ok(locals)
}

/// Checks a manifest against the destination without writing anything.
/// Returns the folder's root and each entry's local path.
async fn check_manifest(
    m: &FolderManifest,
    dest: &Path,
    opts: &ReceiveOptions,
) -> Result<(PathBuf, Vec<PathBuf>), P2pError> {
    let locals = validate_manifest(m, opts.max_size)?;

    let md = tokio::fs::metadata(dest)
        .await
        .map_err(|e| P2pError::io(dest, e))?;
    if !md.is_dir() {
        return Err(P2pError::BadLocalPath(format!(
            "{}: not a directory",
            dest.display()
        )));
    }
    let root = dest.join(&m.name);
    let mut targets = Vec::with_capacity(locals.len());
    check_no_symlink(&root, &m.name).await?;
    for (e, rel) in m.entries.iter().zip(locals) {
        let target = root.join(&rel);
        // Whatever already exists on the way must be a real directory, so
        // nothing written can land outside `root`.
        let mut on_the_way = root.clone();
        for c in rel.components() {
            on_the_way.push(c);
            check_no_symlink(&on_the_way, &e.path).await?;
        }
        if let Ok(md) = tokio::fs::symlink_metadata(&target).await {
            match e.kind {
                EntryKind::Dir if !md.is_dir() => {
                    return Err(P2pError::refused(
                        P2pErrorCode::AlreadyExists,
                        format!("{:?} exists and is not a directory", e.path),
                    ));
                }
                EntryKind::File if !md.is_file() || !opts.overwrite => {
                    return Err(P2pError::refused(
                        P2pErrorCode::AlreadyExists,
                        format!("{:?} exists", e.path),
                    ));
                }
                _ => {}
            }
        }
        targets.push(target);
    }
    Ok((root, targets))
}

async fn check_no_symlink(p: &Path, wire: &str) -> Result<(), P2pError> {
    match tokio::fs::symlink_metadata(p).await {
        Ok(md) if md.file_type().is_symlink() => Err(P2pError::refused(
            P2pErrorCode::BadPath,
            format!("{wire:?}: a symlink is in the way"),
        )),
        _ => Ok(()),
    }
}

/// Receives a folder into `dest/<manifest name>/`.
pub(crate) async fn receive_folder<R, W, F>(
    wire: &mut Wire<R, W>,
    dest: &Path,
    opts: &ReceiveOptions,
    mut progress: F,
) -> Result<FolderReport, P2pError>
where
    R: AsyncRead + Unpin + Send,
    W: file::WriteBytes,
    F: FnMut(Progress) + Send,
{
    let manifest = match wire.recv().await? {
        Frame::FolderManifest(m) => m,
        other => return Err(wire.fail(unexpected(&other, "FOLDER_MANIFEST")).await),
    };
    let (root, targets) = match check_manifest(&manifest, dest, opts).await {
        Ok(v) => v,
        Err(e) => return Err(wire.fail(e).await),
    };
    let made = async {
        create_dir(&root).await?;
        for (e, t) in manifest.entries.iter().zip(&targets) {
            if e.kind == EntryKind::Dir {
                create_dir(t).await?;
            }
        }
        Ok::<_, P2pError>(())
    }
    .await;
    if let Err(e) = made {
        return Err(wire.fail(e).await);
    }
    wire.send(&Frame::FileAck {
        ok: true,
        message: String::new(),
    })
    .await?;

    let total: u64 = manifest.entries.iter().map(|e| e.size).sum();
    let mut base = 0;
    let mut files = Vec::new();
    for (e, target) in manifest.entries.iter().zip(&targets) {
        if e.kind != EntryKind::File {
            continue;
        }
        let meta = match wire.recv().await? {
            Frame::FileMeta(m) => m,
            other => return Err(wire.fail(unexpected(&other, "FILE_META")).await),
        };
        if meta.name != e.path || meta.size != e.size || Some(meta.blake3) != e.blake3 {
            return Err(wire
                .fail(P2pError::refused(
                    P2pErrorCode::Protocol,
                    format!("FILE_META {:?} does not match the manifest", meta.name),
                ))
                .await);
        }
        let mut tally = file::Tally {
            base,
            total,
            report: &mut progress,
        };
        let report = file::receive_one(wire, meta, target, opts, &mut tally).await?;
        base += e.size;
        files.push(report);
    }
    let dirs = manifest
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::Dir)
        .count();
    Ok(FolderReport {
        root,
        files,
        dirs,
        skipped: Vec::new(),
    })
}

async fn create_dir(p: &Path) -> Result<(), P2pError> {
    match tokio::fs::create_dir(p).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Checked before, checked again: a directory, not a symlink.
            match tokio::fs::symlink_metadata(p).await {
                Ok(md) if md.is_dir() => Ok(()),
                _ => Err(P2pError::refused(
                    P2pErrorCode::AlreadyExists,
                    format!("{} exists and is not a directory", p.display()),
                )),
            }
        }
        Err(e) => Err(P2pError::io(p, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> ManifestEntry {
        ManifestEntry {
            path: path.into(),
            kind,
            size: u64::from(kind == EntryKind::File),
            blake3: (kind == EntryKind::File).then(|| blake3::hash(b"x")),
        }
    }

    #[tokio::test]
    async fn manifests_are_checked_before_anything_is_written() {
        let dst = tempfile::tempdir().expect("dst");
        let ok = FolderManifest {
            name: "root".into(),
            entries: vec![entry("a", EntryKind::Dir), entry("a/b", EntryKind::File)],
        };
        check_manifest(&ok, dst.path(), &ReceiveOptions::default())
            .await
            .expect("fine");

        for (entries, code) in [
            (vec![entry("a/b", EntryKind::File)], P2pErrorCode::BadPath),
            (
                vec![entry("a", EntryKind::File), entry("a", EntryKind::File)],
                P2pErrorCode::BadPath,
            ),
            (vec![entry("../x", EntryKind::File)], P2pErrorCode::BadPath),
            (
                vec![ManifestEntry {
                    blake3: None,
                    ..entry("f", EntryKind::File)
                }],
                P2pErrorCode::Protocol,
            ),
        ] {
            let m = FolderManifest {
                name: "root".into(),
                entries,
            };
            let err = check_manifest(&m, dst.path(), &ReceiveOptions::default())
                .await
                .expect_err("refused");
            assert_eq!(err.code(), Some(code), "{err}");
        }
        let bad_name = FolderManifest {
            name: "..".into(),
            entries: vec![],
        };
        assert!(
            check_manifest(&bad_name, dst.path(), &ReceiveOptions::default())
                .await
                .is_err()
        );
        assert_eq!(std::fs::read_dir(dst.path()).expect("ls").count(), 0);
    }

    /// Found by the `folder_manifest` fuzz target: sizes adding up past
    /// `u64::MAX` were accepted, and the receiver's progress total then
    /// overflowed (a panic with overflow checks, a wrong total without).
    #[test]
    fn sizes_that_overflow_or_dirs_with_a_size_are_refused() {
        let sized = |path: &str, kind, size| ManifestEntry {
            size,
            ..entry(path, kind)
        };
        let manifest = |entries| FolderManifest {
            name: "root".into(),
            entries,
        };
        let huge = manifest(vec![
            sized("a", EntryKind::File, u64::MAX),
            sized("b", EntryKind::File, 1),
        ]);
        for max in [None, Some(u64::MAX)] {
            let err = validate_manifest(&huge, max).expect_err("overflow");
            assert_eq!(err.code(), Some(P2pErrorCode::TooLarge), "{err}");
        }
        let dir = manifest(vec![
            sized("d", EntryKind::Dir, u64::MAX),
            sized("d/f", EntryKind::File, 1),
        ]);
        let err = validate_manifest(&dir, None).expect_err("sized dir");
        assert_eq!(err.code(), Some(P2pErrorCode::Protocol), "{err}");

        // Right at the edge is fine, and every path comes back in order.
        let edge = manifest(vec![
            sized("d", EntryKind::Dir, 0),
            sized("d/a", EntryKind::File, u64::MAX - 1),
            sized("b", EntryKind::File, 1),
        ]);
        let locals = validate_manifest(&edge, None).expect("edge");
        assert_eq!(
            locals,
            vec![PathBuf::from("d"), PathBuf::from("d/a"), PathBuf::from("b")]
        );
        assert!(validate_manifest(&edge, Some(u64::MAX - 1)).is_err());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_symlink_in_the_destination_is_never_followed() {
        let dst = tempfile::tempdir().expect("dst");
        let outside = tempfile::tempdir().expect("outside");
        std::fs::create_dir(dst.path().join("root")).expect("root");
        std::os::unix::fs::symlink(outside.path(), dst.path().join("root").join("a"))
            .expect("symlink");
        let m = FolderManifest {
            name: "root".into(),
            entries: vec![entry("a", EntryKind::Dir), entry("a/b", EntryKind::File)],
        };
        let err = check_manifest(&m, dst.path(), &ReceiveOptions::default())
            .await
            .expect_err("symlink");
        assert_eq!(err.code(), Some(P2pErrorCode::BadPath), "{err}");

        // The root itself as a symlink.
        let dst2 = tempfile::tempdir().expect("dst2");
        std::os::unix::fs::symlink(outside.path(), dst2.path().join("root")).expect("symlink");
        let err = check_manifest(&m, dst2.path(), &ReceiveOptions::default())
            .await
            .expect_err("symlink root");
        assert_eq!(err.code(), Some(P2pErrorCode::BadPath), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn the_sender_does_not_follow_symlinks_out_of_the_folder() {
        let src = tempfile::tempdir().expect("src");
        let outside = tempfile::tempdir().expect("outside");
        std::fs::write(outside.path().join("secret"), b"secret").expect("secret");
        let root = src.path().join("r");
        std::fs::create_dir_all(root.join("d")).expect("dirs");
        std::fs::write(root.join("d").join("f"), b"f").expect("f");
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("out")).expect("out");
        std::os::unix::fs::symlink(outside.path(), root.join("outdir")).expect("outdir");
        std::os::unix::fs::symlink(root.join("d").join("f"), root.join("in")).expect("in");
        let w = walk(&root).expect("walk");
        let paths: Vec<_> = w.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec!["d", "in", "d/f"]);
        assert_eq!(
            w.skipped,
            vec![PathBuf::from("out"), PathBuf::from("outdir")]
        );
    }
}

#[cfg(test)]
mod wire_tests {
    //! Malicious manifests over an in-memory pipe: the peer is authorised,
    //! the content is hostile.

    use super::*;
    use crate::p2p::file::tests::pipe;

    #[tokio::test]
    async fn a_malicious_manifest_is_refused_and_nothing_lands_outside() {
        let outer = tempfile::tempdir().expect("outer");
        let dest = outer.path().join("inbox");
        std::fs::create_dir(&dest).expect("inbox");
        let evil_entries = [
            ("root", "../evil"),
            ("root", "/etc/passwd"),
            ("root", "a/../../evil"),
            ("root", "bell\u{7}"),
            ("root", "esc\u{1b}]0;pwned\u{7}"),
            ("root", "new\nline"),
            ("..", "evil"),
            ("/tmp", "evil"),
        ];
        for (name, path) in evil_entries {
            let (mut a, mut b) = pipe();
            let d = dest.clone();
            let recv = tokio::spawn(async move {
                receive_folder(&mut b, &d, &ReceiveOptions::default(), |_| {}).await
            });
            a.send(&Frame::FolderManifest(FolderManifest {
                name: name.into(),
                entries: vec![ManifestEntry {
                    path: path.into(),
                    kind: EntryKind::File,
                    size: 4,
                    blake3: Some(blake3::hash(b"evil")),
                }],
            }))
            .await
            .expect("manifest");
            let err = a.recv().await.expect_err("refused");
            assert_eq!(
                err.code(),
                Some(P2pErrorCode::BadPath),
                "{name:?} {path:?}: {err}"
            );
            let err = recv.await.expect("join").expect_err("refused");
            assert_eq!(
                err.code(),
                Some(P2pErrorCode::BadPath),
                "{name:?} {path:?}: {err}"
            );
        }
        // Nothing was written, inside or outside the destination.
        assert_eq!(std::fs::read_dir(&dest).expect("ls").count(), 0);
        let outside: Vec<_> = std::fs::read_dir(outer.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(outside, vec![std::ffi::OsString::from("inbox")]);
    }

    #[tokio::test]
    async fn file_meta_must_follow_the_manifest() {
        let dst = tempfile::tempdir().expect("dst");
        let (mut a, mut b) = pipe();
        let d = dst.path().to_owned();
        let recv = tokio::spawn(async move {
            receive_folder(&mut b, &d, &ReceiveOptions::default(), |_| {}).await
        });
        a.send(&Frame::FolderManifest(FolderManifest {
            name: "root".into(),
            entries: vec![ManifestEntry {
                path: "ok.txt".into(),
                kind: EntryKind::File,
                size: 2,
                blake3: Some(blake3::hash(b"ok")),
            }],
        }))
        .await
        .expect("manifest");
        assert!(matches!(
            a.recv().await,
            Ok(Frame::FileAck { ok: true, .. })
        ));
        // A file the manifest did not list.
        a.send(&Frame::FileMeta(crate::p2p::frame::FileMeta {
            name: "other.txt".into(),
            size: 2,
            blake3: blake3::hash(b"ok"),
            resume: true,
        }))
        .await
        .expect("meta");
        let err = recv.await.expect("join").expect_err("refused");
        assert_eq!(err.code(), Some(P2pErrorCode::Protocol), "{err}");
        assert!(!dst.path().join("root").join("other.txt").exists());
    }
}
