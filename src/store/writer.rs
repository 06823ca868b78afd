//! The one way a registry change is written: to this process's registry, or through the stream
//! replicas share. The admin API calls [`RegistryWriter::apply`] and gets one [`Receipt`]
//! whichever it is; which path a change takes is chosen once, at start-up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::log_safe::LogSafe;
use crate::metrics::Metrics;
use crate::store::registry::{Op, Registry};
use crate::store::replication::Replica;

/// How long a write through the shared stream waits to be applied on this replica before it is
/// answered as durable but not yet visible here.
const APPLY_WAIT: Duration = Duration::from_secs(10);

/// Where registry changes go.
pub struct RegistryWriter {
    registry: Arc<Registry>,
    path: WritePath,
    metrics: Arc<Metrics>,
}

/// The two write paths.
enum WritePath {
    /// Straight to this process's log (fsync'd) and registry.
    Local,
    /// To the shared stream (durable there once appended), then applied here by the follower.
    Replicated(Arc<Replica>),
}

/// What an applied change answers, the same shape on both paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    /// Operations in the change.
    pub applied: usize,
    /// Whether this replica's registry holds the change. Always true for a local registry; a
    /// shared one says false when the stream has it (durable) but this replica did not apply it
    /// within the wait.
    pub applied_here: bool,
    /// The registry's change counter in this process after the change. It restarts at every
    /// start, so it is comparable only with the same process's `/admin/v1/stats`.
    pub local_sequence: u64,
    /// Shared registry only: the id of the stream entry that carries the change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<String>,
}

/// Why a change was not acknowledged. Nothing of the change is in it; the cause is logged here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The local log could not be written.
    #[error("the registry could not be written")]
    Storage,
    /// The shared stream could not be written.
    #[error("the registry stream is unavailable")]
    Stream,
}

impl RegistryWriter {
    /// Writes to this process's registry.
    pub fn local(registry: Arc<Registry>, metrics: Arc<Metrics>) -> Self {
        Self {
            registry,
            path: WritePath::Local,
            metrics,
        }
    }

    /// Writes through the stream `replica` shares; `registry` is the one its follower applies
    /// the stream to.
    pub fn replicated(
        registry: Arc<Registry>,
        replica: Arc<Replica>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            registry,
            path: WritePath::Replicated(replica),
            metrics,
        }
    }

    /// Applies `ops`; answers once they are durable (and, where possible, applied here).
    pub async fn apply(&self, ops: Vec<Op>) -> Result<Receipt, WriteError> {
        match &self.path {
            WritePath::Local => self.apply_locally(ops).await,
            WritePath::Replicated(replica) => self.append_to_stream(replica, &ops).await,
        }
    }

    async fn apply_locally(&self, ops: Vec<Op>) -> Result<Receipt, WriteError> {
        let started = Instant::now();
        let registry = Arc::clone(&self.registry);
        let applied = ops.len();
        let local_sequence = match tokio::task::spawn_blocking(move || registry.apply(&ops)).await {
            Ok(Ok(sequence)) => sequence,
            Ok(Err(err)) => return Err(storage_failed(&err)),
            Err(err) => return Err(storage_failed(&err)),
        };
        self.observe(started);
        self.registry.counts().export_to(&self.metrics);
        Ok(Receipt {
            applied,
            applied_here: true,
            local_sequence,
            stream_id: None,
        })
    }

    /// The change goes to the stream (durable there once appended), then waits for this replica
    /// to apply it, so the caller reads its own write here.
    async fn append_to_stream(&self, replica: &Replica, ops: &[Op]) -> Result<Receipt, WriteError> {
        let started = Instant::now();
        let id = replica.append(ops).await.map_err(|err| {
            crate::safe_error!(
                "registry stream write failed; change not acknowledged",
                error = err
            );
            WriteError::Stream
        })?;
        self.observe(started);
        let applied_here = replica.wait_applied(id, APPLY_WAIT).await;
        Ok(Receipt {
            applied: ops.len(),
            applied_here,
            local_sequence: self.registry.local_sequence(),
            stream_id: Some(id.to_string()),
        })
    }

    /// Times a write that was made durable.
    fn observe(&self, started: Instant) {
        self.metrics
            .registry_write_seconds
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Logs why the local write failed (its error names files, never numbers).
fn storage_failed(err: &dyn LogSafe) -> WriteError {
    crate::safe_error!(
        "registry write failed; change not acknowledged",
        error = err
    );
    WriteError::Storage
}
