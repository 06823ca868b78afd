//! `--hdr-log`: the run's latencies as an HdrHistogram interval log, the format HdrHistogram's
//! own tools read (Java's HistogramLogProcessor and HistogramLogAnalyzer, the Python and
//! JavaScript ports, the plotters built on them), so a run can be plotted, compared and merged
//! with other load tests' logs without our code.
//!
//! Layout, as Java's `HistogramLogWriter` writes it: comment lines, `#[StartTime: …]` and
//! `#[BaseTime: …]` (both the wall-clock start of the run, so interval timestamps are seconds
//! from it), the legend line, then one untagged line per interval: start, length, max (for
//! people; readers ignore it) and the histogram, V2 deflate-compressed and base64-encoded. Untagged because HistogramLogProcessor reads only untagged intervals unless
//! told a tag. Values are microseconds, from each request's scheduled start.

use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;

use super::timeline::{INTERVAL, Recording};

/// The column legend Java's `HistogramLogWriter::outputLegend` writes; readers skip it.
const LEGEND: &str =
    "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n";

/// The log of a finished run; `description` (the run's settings) goes into a comment.
pub(super) fn render(recording: &Recording, description: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    header(&mut out, &mut serializer, recording, description)?;
    out.extend_from_slice(LEGEND.as_bytes());
    // A builder without headers writes nothing: it only continues the log after the legend.
    let mut log = IntervalLogWriterBuilder::new()
        .begin_log_with(&mut out, &mut serializer)
        .map_err(|e| e.to_string())?;
    for interval in recording.intervals() {
        log.write_histogram(interval.latency, interval.start, interval.length, None)
            .map_err(|e| e.to_string())?;
    }
    drop(log);
    Ok(out)
}

/// The comment lines and the time headers, written by the crate's builder.
fn header(
    out: &mut Vec<u8>,
    serializer: &mut V2DeflateSerializer,
    recording: &Recording,
    description: &str,
) -> Result<(), String> {
    IntervalLogWriterBuilder::new()
        .add_comment(&format!("[contact-discovery loadgen: {description}]"))
        .add_comment(&format!(
            "[Latency in microseconds from each request's scheduled start, every completed \
             request whatever its status; one interval per {} s of scheduled start]",
            INTERVAL.as_secs()
        ))
        .add_comment("[Histogram log format version 1.3]")
        .with_start_time(recording.started_at)
        .with_base_time(recording.started_at)
        .begin_log_with(out, serializer)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use hdrhistogram::Histogram;
    use hdrhistogram::serialization::Deserializer;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    use super::*;
    use crate::tools::loadgen::drive::histogram;

    fn recording() -> Recording {
        let mut first = histogram();
        first.record_n(1_500, 99).unwrap();
        first.record(250_000).unwrap();
        let mut second = histogram();
        second.record_n(2_000, 50).unwrap();
        let mut latency = histogram();
        latency.add(&first).unwrap();
        latency.add(&second).unwrap();
        Recording {
            started_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_640_000_250),
            duration: Duration::from_millis(1_500),
            latency,
            timeline: vec![first, second, histogram()],
        }
    }

    #[test]
    fn the_header_is_what_hdrhistogram_readers_expect() {
        let log = String::from_utf8(render(&recording(), "open loop").unwrap()).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines[0], "#[contact-discovery loadgen: open loop]");
        assert!(lines[1].starts_with("#[Latency in microseconds"), "{log}");
        assert_eq!(lines[2], "#[Histogram log format version 1.3]");
        assert_eq!(
            lines[3],
            "#[StartTime: 1764640000.250 (seconds since epoch)]"
        );
        assert_eq!(
            lines[4],
            "#[BaseTime: 1764640000.250 (seconds since epoch)]"
        );
        assert_eq!(lines[5], LEGEND.trim_end());
        // One line per interval: start and length in seconds, max in microseconds, and the
        // histogram compressed V2 ("HISTF" is base64 of its cookie's start).
        assert!(
            lines[6].starts_with("0.000,1.000,250111.000,HISTF"),
            "{log}"
        );
        assert!(lines[7].starts_with("1.000,0.500,2000.000,HISTF"), "{log}");
        assert_eq!(lines.len(), 8, "{log}");
    }

    #[test]
    fn the_crate_reads_back_every_interval() {
        let recording = recording();
        let log = render(&recording, "closed loop").unwrap();
        let mut deserializer = Deserializer::new();
        let mut read: Vec<(Duration, Duration, Histogram<u64>)> = Vec::new();
        for entry in IntervalLogIterator::new(&log) {
            if let LogEntry::Interval(interval) = entry.unwrap() {
                let bytes = interval.encoded_histogram();
                let decoded = base64_decode(bytes);
                let h: Histogram<u64> = deserializer.deserialize(&mut decoded.as_slice()).unwrap();
                read.push((interval.start_timestamp(), interval.duration(), h));
            }
        }
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].0, Duration::ZERO);
        assert_eq!(read[1].0, Duration::from_secs(1));
        assert_eq!(read[1].1, Duration::from_millis(500));
        assert_eq!(read[0].2, recording.timeline[0]);
        assert_eq!(read[1].2, recording.timeline[1]);
        let total: u64 = read.iter().map(|(_, _, h)| h.len()).sum();
        assert_eq!(total, recording.latency.len());
    }

    fn base64_decode(text: &str) -> Vec<u8> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap()
    }
}
