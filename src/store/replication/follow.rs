//! The follower loop: reads the change stream in bounded batches and applies them to the local
//! registry, loads the shared snapshot when it fell behind a trim, publishes one when due, and
//! reports readiness and lag.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::shared_snapshot::{MetaState, SnapshotMeta, trimmed_past};
use super::stream::{End, Entry, READ_COUNT, open_entry, read_after, stream_end};
use super::{Refusal, Replica, ReplicationError, StreamPos};
use crate::store::registry::Op;

/// How long the follower waits before asking again when the stream had nothing new. (A
/// blocking `XREAD` would send entries of any size; the bounded read is a script, which
/// cannot block.)
const IDLE_POLL: Duration = Duration::from_millis(50);

/// What the snapshot description allows this round.
enum RoundMeta {
    /// Authentic (or absent): a trim past our position can be detected, publishing is allowed.
    Known(Option<SnapshotMeta>),
    /// Refused, while the stream still holds our position: entries may be applied, but no
    /// snapshot is published over it.
    Refused,
}

impl Replica {
    /// Applies stream entries as they come; marks the replica synced once it reaches `head`.
    pub(super) async fn follow(
        &self,
        conn: &mut MultiplexedConnection,
        head: Option<StreamPos>,
    ) -> Result<(), ReplicationError> {
        loop {
            let pos = self.position();
            self.note_caught_up(pos, head);
            let entries = read_after(conn, pos).await?;
            self.last_contact_ms
                .store(self.clock.now_millis(), Ordering::Relaxed);
            let Some(meta) = self.round_meta(conn, pos, entries.is_empty()).await? else {
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            };
            if entries.is_empty() {
                self.metrics.replication.lag_seconds.set(0);
                if let RoundMeta::Known(meta) = &meta {
                    self.maybe_publish(conn, meta.as_ref()).await?;
                }
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            }
            if let RoundMeta::Known(Some(meta)) = &meta
                && self.overtaken(conn, pos, meta).await?
            {
                self.load_snapshot(conn, meta.clone()).await?;
                continue;
            }
            let full = entries.len() == READ_COUNT;
            let last = self.apply_entries(&entries).await?;
            self.report_lag(last, full);
            if let RoundMeta::Known(meta) = &meta {
                self.maybe_publish(conn, meta.as_ref()).await?;
            }
        }
    }

    /// Marks the replica synced (for `/readyz`) the first time it reaches `head`.
    fn note_caught_up(&self, pos: StreamPos, head: Option<StreamPos>) {
        if !self.synced() && head.is_none_or(|h| pos >= h) {
            self.synced.store(true, Ordering::Release);
            self.metrics.replication.synced.set(1);
            crate::safe_info!("registry stream caught up", position = pos);
        }
    }

    /// Reads the snapshot description for this round. `None`: wait and ask again (it is
    /// refused and there is nothing to apply). A refused description is counted once, and
    /// neither trims nor publishes: no snapshot is published over it, no stream entry is
    /// skipped for it.
    async fn round_meta(
        &self,
        conn: &mut MultiplexedConnection,
        pos: StreamPos,
        idle: bool,
    ) -> Result<Option<RoundMeta>, ReplicationError> {
        match self.read_meta(conn).await? {
            MetaState::Valid(meta) => Ok(Some(RoundMeta::Known(Some(meta)))),
            MetaState::None => Ok(Some(RoundMeta::Known(None))),
            MetaState::Refused(..) if idle => Ok(None),
            MetaState::Refused(why, _) => {
                // Without an authentic description we cannot tell whether entries after
                // `pos` were trimmed away: apply only while the stream still holds `pos`
                // itself, else stop (and keep serving) until Redis is repaired.
                if stream_end(conn, End::First)
                    .await?
                    .is_none_or(|first| first > pos)
                {
                    return Err(ReplicationError::Refused(why));
                }
                Ok(Some(RoundMeta::Refused))
            }
        }
    }

    /// Whether a snapshot newer than `pos` trimmed entries this replica never saw (then it
    /// must load the snapshot). `meta.id > pos` first: it spares the `XRANGE` when no newer
    /// snapshot exists.
    async fn overtaken(
        &self,
        conn: &mut MultiplexedConnection,
        pos: StreamPos,
        meta: &SnapshotMeta,
    ) -> Result<bool, ReplicationError> {
        if meta.id <= pos || !trimmed_past(pos, meta, stream_end(conn, End::First).await?) {
            return Ok(false);
        }
        crate::safe_warn!(
            "this replica fell behind a trimmed registry stream; loading the shared snapshot",
            resume_point = pos,
            snapshot = meta.id,
        );
        Ok(true)
    }

    /// Opens a batch, applies what is authentic as one registry change, and moves the resume
    /// point past the whole batch (refused entries are skipped, counted and logged). Returns
    /// the new resume point.
    async fn apply_entries(&self, entries: &[Entry]) -> Result<StreamPos, ReplicationError> {
        let ops = self.open_entries(entries);
        if !ops.is_empty() {
            let registry = Arc::clone(&self.registry);
            tokio::task::spawn_blocking(move || registry.apply(&ops))
                .await
                .map_err(|_| ReplicationError::Task)??;
            self.registry.counts().export_to(&self.metrics);
        }
        self.metrics
            .replication
            .entries_applied
            .inc_by(entries.len() as u64);
        let last = entries.last().map_or_else(|| self.position(), |e| e.id);
        self.set_position(last).await?;
        Ok(last)
    }

    /// The operations of every authentic entry, in order; the others are refused.
    fn open_entries(&self, entries: &[Entry]) -> Vec<Op> {
        let mut ops = Vec::new();
        for entry in entries {
            match open_entry(&self.sealer, entry) {
                Ok(decoded) => ops.extend(decoded),
                Err(why) => self.refuse_entry(entry.id, why),
            }
        }
        ops
    }

    fn refuse_entry(&self, id: StreamPos, why: Refusal) {
        self.refused(why);
        crate::safe_error!(
            "refused a registry stream entry; not applied",
            entry = id,
            reason = why.label(),
        );
    }

    /// After a full batch more is waiting: reports how old the last applied entry is (its id
    /// holds the writer's clock); after a partial one, caught up.
    fn report_lag(&self, last: StreamPos, full: bool) {
        let lag = if full {
            self.clock.now_millis().saturating_sub(last.millis()) / 1000
        } else {
            0
        };
        self.metrics.replication.lag_seconds.set(lag as i64);
    }
}
