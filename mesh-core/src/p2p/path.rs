//! Checks on names and relative paths that come from the peer.
//!
//! A receiving agent only ever writes under the destination folder it was
//! told to receive into. Every name in `FILE_META` and every path in
//! `FOLDER_MANIFEST` goes through [`check_relative`] first: `/`-separated,
//! no absolute paths, no `.` or `..`, no empty components, no backslashes
//! or drive letters (so a Windows receiver is safe too), no control
//! characters, bounded lengths. The receiver also checks, on disk, that
//! what exists under the destination does not lead elsewhere (symlinks).

use std::path::{Component, Path, PathBuf};

use super::{P2pError, P2pErrorCode};

/// The longest path component, in bytes.
pub const MAX_COMPONENT_LEN: usize = 255;
/// The longest relative path, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// The deepest relative path, in components.
pub const MAX_DEPTH: usize = 64;

fn bad(path: &str, why: &str) -> P2pError {
    P2pError::refused(P2pErrorCode::BadPath, format!("{path:?}: {why}"))
}

/// Checks one path component (a file name).
pub fn check_component(name: &str) -> Result<(), P2pError> {
    if name.is_empty() {
        return Err(bad(name, "empty name"));
    }
    if name == "." || name == ".." {
        return Err(bad(name, "`.` and `..` are not names"));
    }
    if name.len() > MAX_COMPONENT_LEN {
        return Err(bad(name, "name too long"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || matches!(c, '/' | '\\' | ':'))
    {
        return Err(bad(name, &format!("forbidden character {c:?}")));
    }
    Ok(())
}

/// Checks a `/`-separated relative path from the peer and returns it as a
/// local relative [`PathBuf`].
pub fn check_relative(path: &str) -> Result<PathBuf, P2pError> {
    if path.len() > MAX_PATH_LEN {
        return Err(bad(path, "path too long"));
    }
    if path.starts_with('/') {
        return Err(bad(path, "absolute path"));
    }
    let mut out = PathBuf::new();
    for (depth, part) in path.split('/').enumerate() {
        if depth >= MAX_DEPTH {
            return Err(bad(path, "path too deep"));
        }
        check_component(part)?;
        out.push(part);
    }
    // Belt and braces: what std makes of it must be plain names only.
    if !out.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(bad(path, "not a plain relative path"));
    }
    Ok(out)
}

/// The `/`-separated wire form of a local relative path (the sender side),
/// or an error for a component that is not UTF-8 or not a plain name.
pub fn to_wire(rel: &Path) -> Result<String, P2pError> {
    let mut parts = Vec::new();
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return Err(P2pError::BadLocalPath(format!(
                "{}: not a plain relative path",
                rel.display()
            )));
        };
        let name = name.to_str().ok_or_else(|| {
            P2pError::BadLocalPath(format!("{}: a name that is not UTF-8", rel.display()))
        })?;
        parts.push(name);
    }
    let wire = parts.join("/");
    check_relative(&wire)?;
    Ok(wire)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_paths_pass() {
        for ok in ["a", "a/b/c.txt", "é/日本.txt", ".hidden", "a..b", "..."] {
            assert!(check_relative(ok).is_ok(), "{ok}");
        }
        assert_eq!(check_relative("a/b").expect("ok"), Path::new("a").join("b"));
    }

    #[test]
    fn escapes_and_odd_names_are_refused() {
        let deep = vec!["d"; MAX_DEPTH + 1].join("/");
        let long = "x".repeat(MAX_COMPONENT_LEN + 1);
        for evil in [
            "",
            "/etc/passwd",
            "../evil",
            "a/../../evil",
            "a/./b",
            ".",
            "..",
            "a//b",
            "a/",
            "a\\..\\b",
            "C:evil",
            "c:/windows",
            "bell\u{7}",
            "new\nline",
            "nul\0",
            "esc\u{1b}[2J",
            "del\u{7f}",
            "c1\u{85}",
            deep.as_str(),
            long.as_str(),
        ] {
            let err = check_relative(evil).expect_err(evil);
            assert_eq!(err.code(), Some(P2pErrorCode::BadPath), "{evil:?}");
        }
    }

    #[test]
    fn wire_form_of_local_paths() {
        assert_eq!(to_wire(&Path::new("a").join("b")).expect("ok"), "a/b");
        assert!(to_wire(Path::new("../a")).is_err());
        assert!(to_wire(Path::new("/a")).is_err());
    }
}
