//! The client side: reading address books, normalising numbers to E.164, and talking to the
//! service.

pub mod addressbook;
pub mod normalise;
pub mod private;
pub mod report;
pub mod service;

pub use service::{Client, ClientConfig, ClientError, Progress, RunStats};
