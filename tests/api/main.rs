//! Integration tests over real HTTP against the service on port 0.

mod abuse;
mod admin;
mod auth;
mod client;
mod discover;
mod epochs;
mod errors;
mod helpers;
mod limits;
mod loadgen;
mod openapi;
mod ratelimit;
mod restart;
mod rotation_load;
mod smoke;
