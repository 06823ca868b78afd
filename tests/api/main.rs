//! Integration tests over real HTTP against the service on port 0.

mod helpers;
mod smoke;
