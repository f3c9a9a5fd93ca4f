//! The server's relay, sans-IO (to be written).
