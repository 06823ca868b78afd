//! The service: configuration and start-up, the connection loop, the HTTP API and what guards
//! it (rate limits, caps, process hardening).

pub mod api;
pub mod config;
pub mod connection;
pub mod hardening;
pub mod keyed_cap;
pub mod ratelimit;
pub mod startup;
