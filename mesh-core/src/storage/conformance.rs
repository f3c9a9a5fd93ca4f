//! Conformance suite. TODO(helper).
