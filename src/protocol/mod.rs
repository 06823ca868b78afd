//! The wire protocol, without HTTP: what a client and the server say to each other, as types
//! and as bytes. Both sides use this module and nothing else encodes or decodes the wire, so
//! the two cannot drift apart (docs/PROTOCOL.md describes the same bytes; tests/protocol_vectors.rs
//! pins them).
//!
//! - [`Format`]: the two encodings of a discovery exchange and their media types.
//! - [`request`]: the discovery request, encoded by clients and decoded by the server.
//! - [`answer`]: the discovery answer, encoded by the server and decoded by clients.
//! - [`evaluate`]: the private mode's evaluation request and answer (blinded and evaluated
//!   elements).
//! - [`gcs`]: Golomb-coded sets (the BIP-158 layout), what the private set's shards are.
//! - [`private_set`]: the private mode's downloadable set: parameters, manifest, ETags, deltas.
//! - [`EpochInfo`]: the epoch object (`GET /v1/epoch`, and the `current` of a 410), with the one
//!   salt decoder.
//! - [`ErrorBody`]: an error answer as a client reads it.
//! - [`DecodeError`] (a request the server refuses, mapped by the API to its error codes) and
//!   [`AnswerError`] (an answer a client refuses).
//!
//! Credentials travel as opaque `Authorization: Bearer` text: their form is the contract between
//! the messaging backend and the server, and lives with the MAC it carries in
//! `domain::credential`, since the MAC is computed over that same text.
//!
//! No HTTP framework is imported here (checked by tests/architecture.rs), so the client library
//! builds without the server stack.

pub mod answer;
mod base64url;
pub mod epoch;
pub mod error;
pub mod evaluate;
pub mod format;
pub mod gcs;
mod json_object;
pub mod private_set;
pub mod request;
mod zeroizing;

pub use answer::{Answer, decode_answer, encode_answer};
pub use epoch::{EpochInfo, ErrorBody, decode_salt};
pub use error::{AnswerError, DecodeError};
pub use format::Format;
pub use request::{DiscoverRequest, decode_request, encode_fingerprint, encode_request};
pub use zeroizing::extend_zeroizing;
