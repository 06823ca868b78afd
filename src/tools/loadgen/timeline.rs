//! The run cut into one-second intervals: which interval a request belongs to, and the
//! intervals a finished run reports. The report's `timeline`, the interval log (`--hdr-log`)
//! and the latency-over-time chart (`--plot`) all read these, so the three agree.
//!
//! A request belongs to the interval of its *scheduled* start, not of its answer: latency is
//! measured from the schedule (no coordinated omission), so a stall shows up in the seconds
//! whose requests it delayed, not in the second their answers finally arrived.

use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;

/// Length of one interval.
pub(super) const INTERVAL: Duration = Duration::from_secs(1);

/// Shortest interval written: a request started a hair after the run's end (the closed loop
/// checks the clock before it starts one) still gets an interval of positive length.
const SHORTEST: Duration = Duration::from_millis(1);

/// The interval a request scheduled `offset` after the start of the run belongs to.
pub(super) fn interval_of(offset: Duration) -> usize {
    (offset.as_nanos() / INTERVAL.as_nanos()) as usize
}

/// How many intervals a run of `duration` needs: every start falls in `0..duration`, plus one
/// for a start exactly at its end.
pub(super) fn intervals_for(duration: Duration) -> usize {
    interval_of(duration) + 1
}

/// What a finished run recorded over time, for the outputs drawn from its histograms.
pub(super) struct Recording {
    /// Wall-clock time of the run's start (the `StartTime` of the interval log).
    pub started_at: SystemTime,
    /// The requested duration: requests were scheduled in `0..duration`.
    pub duration: Duration,
    /// Latency of every completed request, whatever its status (the report's `latency_ms`).
    pub latency: Histogram<u64>,
    /// The same latencies by interval of scheduled start (see [`interval_of`]).
    pub timeline: Vec<Histogram<u64>>,
}

/// One interval of a finished run.
#[derive(Debug)]
pub(super) struct Interval<'a> {
    /// Offset of its start from the start of the run.
    pub start: Duration,
    /// Its length: [`INTERVAL`], shorter for the last one when the run ends mid-second.
    pub length: Duration,
    /// Latencies of the requests scheduled in it.
    pub latency: &'a Histogram<u64>,
}

impl Recording {
    /// The intervals from the start of the run to its end, or to the last one with a request
    /// if that is later; empty ones in between are kept (a gap is a finding, not noise).
    pub fn intervals(&self) -> Vec<Interval<'_>> {
        let last_used = self.timeline.iter().rposition(|h| !h.is_empty());
        let covering_run = self.duration.as_nanos().div_ceil(INTERVAL.as_nanos()) as usize;
        let count = last_used
            .map_or(covering_run, |i| covering_run.max(i + 1))
            .min(self.timeline.len());
        self.timeline[..count]
            .iter()
            .enumerate()
            .map(|(i, latency)| {
                let start = INTERVAL * i as u32;
                let left = self.duration.saturating_sub(start);
                Interval {
                    start,
                    length: left.clamp(SHORTEST, INTERVAL),
                    latency,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::loadgen::drive::histogram;

    fn recording(duration: Duration, counts: &[u64]) -> Recording {
        let timeline: Vec<Histogram<u64>> = counts
            .iter()
            .map(|&n| {
                let mut h = histogram();
                h.record_n(1_000, n).unwrap();
                h
            })
            .collect();
        Recording {
            started_at: SystemTime::UNIX_EPOCH,
            duration,
            latency: histogram(),
            timeline,
        }
    }

    fn shape(r: &Recording) -> Vec<(u128, u128, u64)> {
        r.intervals()
            .iter()
            .map(|i| (i.start.as_millis(), i.length.as_millis(), i.latency.len()))
            .collect()
    }

    #[test]
    fn a_request_belongs_to_the_second_it_was_scheduled_in() {
        assert_eq!(interval_of(Duration::ZERO), 0);
        assert_eq!(interval_of(Duration::from_nanos(999_999_999)), 0);
        assert_eq!(interval_of(Duration::from_secs(1)), 1);
        assert_eq!(interval_of(Duration::from_millis(2_500)), 2);
        // Every start in 0..=duration has an interval.
        assert_eq!(intervals_for(Duration::from_millis(1_500)), 2);
        assert_eq!(intervals_for(Duration::from_secs(10)), 11);
        assert_eq!(intervals_for(Duration::ZERO), 1);
    }

    #[test]
    fn whole_seconds_make_whole_intervals_and_the_spare_one_is_dropped() {
        let r = recording(Duration::from_secs(3), &[5, 6, 7, 0]);
        assert_eq!(
            shape(&r),
            [(0, 1_000, 5), (1_000, 1_000, 6), (2_000, 1_000, 7)]
        );
    }

    #[test]
    fn a_run_ending_mid_second_ends_with_a_short_interval() {
        let r = recording(Duration::from_millis(1_500), &[200, 100, 0]);
        assert_eq!(shape(&r), [(0, 1_000, 200), (1_000, 500, 100)]);
    }

    #[test]
    fn quiet_seconds_inside_the_run_are_kept() {
        let r = recording(Duration::from_secs(3), &[4, 0, 0, 0]);
        assert_eq!(
            shape(&r),
            [(0, 1_000, 4), (1_000, 1_000, 0), (2_000, 1_000, 0)]
        );
    }

    #[test]
    fn a_start_at_the_very_end_gets_a_short_interval_of_its_own() {
        let r = recording(Duration::from_secs(2), &[3, 3, 1]);
        assert_eq!(shape(&r), [(0, 1_000, 3), (1_000, 1_000, 3), (2_000, 1, 1)]);
    }

    #[test]
    fn the_intervals_hold_every_recorded_request() {
        let r = recording(Duration::from_millis(2_300), &[7, 8, 9, 0]);
        let total: u64 = r.intervals().iter().map(|i| i.latency.len()).sum();
        assert_eq!(total, 24);
    }
}
