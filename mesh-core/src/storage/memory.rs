//! In-memory store. TODO(helper).
