//! P2P integration tests (stub).
