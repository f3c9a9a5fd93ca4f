//! sled store. TODO(helper).
