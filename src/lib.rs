//! contact-discovery: tells a messaging app which of a user's contacts are registered, from
//! salted, keyed fingerprints, without keeping the address book. See ARCHITECTURE.md.
//!
//! The modules are layers; arrows only point down (checked by `tests/architecture.rs`):
//! `commands` → `tools` → `server` → `store` → `domain`, with `client` beside `server`
//! (it never imports `server` or `store`) and `clock`, `log_safe`, `metrics` at the bottom.

pub mod client;
pub mod clock;
pub mod commands;
pub mod domain;
pub mod log_safe;
pub mod metrics;
pub mod server;
pub mod store;
pub mod tools;
