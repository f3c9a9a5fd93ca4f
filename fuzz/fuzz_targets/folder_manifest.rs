//! Folder manifests (`FOLDER_MANIFEST` bodies), as a receiving agent checks
//! them before anything touches its disk: JSON into
//! `p2p::frame::FolderManifest`, then `p2p::validate_manifest`.
//!
//! Beyond "no panic": a decoded manifest round-trips through JSON, and an
//! accepted one only names plain relative paths, each once, that stay under
//! the destination, with sizes that add up without overflowing (the
//! receiver sums them for its progress reports).

#![no_main]

use std::collections::HashSet;
use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use mesh_core::p2p::frame::{EntryKind, FolderManifest};
use mesh_core::p2p::{MAX_ENTRIES, validate_manifest};

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = serde_json::from_slice::<FolderManifest>(data) else {
        return;
    };
    let encoded = serde_json::to_vec(&manifest).expect("a decoded manifest encodes");
    let again: FolderManifest = serde_json::from_slice(&encoded).expect("re-decodes");
    assert_eq!(again, manifest);

    for max_size in [None, Some(1 << 20)] {
        let Ok(locals) = validate_manifest(&manifest, max_size) else {
            continue;
        };
        assert_eq!(locals.len(), manifest.entries.len());
        assert!(locals.len() <= MAX_ENTRIES);
        let root = Path::new("/dest").join(&manifest.name);
        assert_eq!(
            root.parent(),
            Some(Path::new("/dest")),
            "{:?}",
            manifest.name
        );
        let mut seen = HashSet::new();
        let mut total = 0u64;
        for (entry, local) in manifest.entries.iter().zip(&locals) {
            assert!(
                local
                    .components()
                    .all(|c| matches!(c, Component::Normal(_))),
                "{:?}",
                entry.path
            );
            assert!(root.join(local).starts_with(&root));
            assert!(seen.insert(local.clone()), "{:?} twice", entry.path);
            if entry.kind == EntryKind::File {
                assert!(entry.blake3.is_some());
            }
            total = total
                .checked_add(entry.size)
                .unwrap_or_else(|| panic!("accepted sizes overflow: {:?}", manifest.entries));
        }
        if let Some(max) = max_size {
            assert!(total <= max, "{total} > {max}");
        }
    }
});
