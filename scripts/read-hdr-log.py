"""Reads an HdrHistogram interval log with HdrHistogram_py (`hdrh`, the Python port on PyPI),
independently of the Rust crate that wrote it, and prints what it found as JSON: the number
of intervals, their start offsets and lengths, the total count, max, p50 and p99 of all
intervals together (microseconds, as logged). tests/api/loadgen.rs compares these with
loadgen's own report; run it through scripts/read-hdr-log.sh, which installs the reader."""

import json
import sys

from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader


def main(path):
    # The reference histogram only matters for add_next_interval_histogram; intervals are
    # decoded with the bounds their own headers carry.
    reader = HistogramLogReader(path, HdrHistogram(1, 2, 1))
    intervals = []
    while True:
        histogram = reader.get_next_interval_histogram()
        if histogram is None:
            break
        intervals.append(histogram)
    total = None
    for histogram in intervals:
        if total is None:
            total = HdrHistogram(
                histogram.lowest_trackable_value,
                histogram.highest_trackable_value,
                histogram.significant_figures,
            )
        total.add(histogram)
    start = reader.get_start_time_sec()
    json.dump(
        {
            "start_time_s": start,
            "intervals": [
                {
                    "offset_s": round(h.get_start_time_stamp() / 1000.0 - start, 3),
                    "length_s": round(
                        (h.get_end_time_stamp() - h.get_start_time_stamp()) / 1000.0, 3
                    ),
                    "count": h.get_total_count(),
                }
                for h in intervals
            ],
            "count": total.get_total_count() if total else 0,
            "max_us": total.get_max_value() if total else 0,
            "p50_us": total.get_value_at_percentile(50.0) if total else 0,
            "p99_us": total.get_value_at_percentile(99.0) if total else 0,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
