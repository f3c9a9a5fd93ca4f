//! Engine tests, driven through [`harness::Harness`]: many peers, one
//! engine, a virtual clock. Nothing here sleeps or reads the real time.

mod harness;

mod determinism;
mod fanout;
mod presence;
mod rooms;
mod signaling;
mod typing;
