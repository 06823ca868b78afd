//! contact-discovery: tells a messaging app which of a user's contacts are registered, from
//! salted, keyed fingerprints, without keeping the address book. See ARCHITECTURE.md.
//!
//! The modules are layers; arrows only point down (checked by `tests/architecture.rs`):
//! `commands` → `tools` → `server` → `store` → `domain`, with `client` beside `server`
//! (it never imports `server` or `store`), both speaking the wire through `protocol`, and
//! `clock`, `log_safe`, `metrics` at the bottom.
//!
//! Cargo features cut the stack: `client` builds `domain`, `protocol` and `client` (the client
//! library for apps, without axum, hyper, redis or prometheus); `server` (the default) builds
//! everything. Without either, only `domain` and `protocol` remain.

#[cfg(feature = "client")]
pub mod client;
pub mod clock;
#[cfg(feature = "server")]
pub mod commands;
pub mod domain;
pub mod log_safe;
#[cfg(feature = "server")]
pub mod metrics;
pub mod protocol;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod tools;
