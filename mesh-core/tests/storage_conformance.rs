//! Runs the storage conformance suite against every backend in mesh-core:
//! one line per backend.

use mesh_core::storage::memory::MemoryStore;
use mesh_core::storage::sled::SledStore;

mesh_core::store_conformance_tests!(memory, async { MemoryStore::new() });
mesh_core::store_conformance_tests!(
    sled,
    restart = |path: std::path::PathBuf| async move {
        SledStore::open(path.join("db")).expect("open the sled store")
    }
);
