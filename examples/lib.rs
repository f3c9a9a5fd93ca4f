//! Runnable examples that embed mesh-core; see the `[[example]]` entries.
