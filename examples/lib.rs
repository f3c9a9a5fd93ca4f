//! Runnable examples that embed mesh-core; see the `[[example]]` entries in
//! `Cargo.toml`. The library itself is empty but for the README, whose Rust
//! snippets are compiled here as doc tests so they cannot rot.

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
