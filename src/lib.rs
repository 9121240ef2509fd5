//! session-sidecar
#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod config;
pub mod cookie;
pub mod error;
pub mod keepalive;
pub mod lifecycle;
pub mod logging;
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod store;
