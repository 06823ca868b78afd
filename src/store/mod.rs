//! What the service keeps: the durable registry of registered numbers, the per-epoch match
//! indexes and private sets built from it and the task that rotates them, and the registry
//! shared by replicas through Redis.

pub(crate) mod atomic_file;
pub mod index;
pub mod private_set;
pub mod redis_link;
pub mod registry;
pub mod replication;
pub mod rotation;
pub mod writer;
