//! Tools around the service: the load generator, the reversal-cost audit, the demo and the
//! synthetic number generator. They use the client and the server; nothing imports them.

pub mod audit;
pub mod demo;
pub mod generate;
pub mod loadgen;
