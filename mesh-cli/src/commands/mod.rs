//! One module per command area.

pub(crate) mod agent;
pub(crate) mod auth;
pub(crate) mod chat;
pub(crate) mod rooms;
pub(crate) mod terminal;
pub(crate) mod transfer;
