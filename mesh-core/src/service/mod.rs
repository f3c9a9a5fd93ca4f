//! The async service tying storage, auth and the engine together.
