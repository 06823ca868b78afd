//! contact-discovery: tells a messaging app which of a user's contacts are registered, from
//! salted, keyed fingerprints, without keeping the address book. See ARCHITECTURE.md.

pub mod api;
pub mod audit;
pub mod client;
pub mod clock;
pub mod commands;
pub mod config;
pub mod demo;
pub mod domain;
pub mod hardening;
pub mod index;
pub mod keyed_cap;
pub mod loadgen;
pub mod log_safe;
pub mod metrics;
pub mod ratelimit;
pub mod redis_link;
pub mod registry;
pub mod replication;
pub mod rotation;
pub mod server;
pub mod startup;
