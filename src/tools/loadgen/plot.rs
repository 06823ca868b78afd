//! `--plot`: the run's latency as one SVG with two charts, the pictures a load test is read
//! by. Above, the percentile spectrum: latency against percentile on HdrHistogram's usual
//! scale, where each step right is ten times rarer (0 %, 90 %, 99 %, 99.9 % …), so the tail is
//! as wide as the body. Below, p50, p99 and max per second of the run, which shows when a
//! tail happened (a stall, an epoch change, a compaction) rather than only that it did.
//!
//! Drawn with plotters' SVG backend and no font library: labels are SVG `<text>` elements the
//! viewer renders with its own sans-serif font. Every text is a setting of the run or a
//! number we computed; nothing comes from a server's answers.

use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::{
    BLACK, ChartBuilder, Color, DrawingArea, IntoDrawingArea, LineSeries, PathElement, RGBColor,
    SVGBackend, SeriesLabelPosition, WHITE,
};

use super::timeline::Recording;

const WIDTH: u32 = 1_000;
const HEIGHT: u32 = 900;
const FONT: &str = "sans-serif";
/// Percentile spectrum points per decade of 1/(1 − p).
const STEPS_PER_DECADE: u32 = 100;
/// The spectrum's right end at most: 99.99999 %.
const MOST_DECADES: u32 = 7;

const P50: RGBColor = RGBColor(31, 119, 180);
const P99: RGBColor = RGBColor(255, 127, 14);
const MAX: RGBColor = RGBColor(214, 39, 40);

/// Title of the upper chart.
const SPECTRUM_TITLE: &str = "Latency by percentile";
/// Title of the lower chart.
const OVER_TIME_TITLE: &str = "Latency over time (per second of scheduled start)";

/// The SVG document of a finished run; `description` (its settings) heads it.
pub(super) fn render(recording: &Recording, description: &str) -> Result<String, String> {
    let mut svg = String::new();
    draw(&mut svg, recording, description).map_err(|e| e.to_string())?;
    Ok(svg)
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Both charts, under a title naming the run.
fn draw(svg: &mut String, recording: &Recording, description: &str) -> DrawResult {
    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "contact-discovery loadgen: {} requests",
        recording.latency.len()
    );
    let body = root
        .titled(&title, (FONT, 22))?
        .titled(description, (FONT, 16))?;
    let (upper, lower) = body.split_vertically(HEIGHT / 2 - 30);
    spectrum(&upper, &recording.latency)?;
    over_time(&lower, recording)?;
    root.present()?;
    Ok(())
}

/// The percentile spectrum of the whole run.
fn spectrum(area: &DrawingArea<SVGBackend<'_>, Shift>, latency: &Histogram<u64>) -> DrawResult {
    let decades = decades_resolved(latency.len());
    let points = spectrum_points(latency, decades);
    let y_max = headroom(points.iter().map(|&(_, ms)| ms));
    let mut chart = ChartBuilder::on(area)
        .caption(SPECTRUM_TITLE, (FONT, 18))
        .margin(12)
        .margin_right(36)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..f64::from(decades), 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("percentile (each step ten times rarer: 1/(1 - p) on a log scale)")
        .y_desc("latency (ms)")
        .light_line_style(BLACK.mix(0.04))
        // One label a decade: plotters' ticks on 0..d with at most d + 1 labels are the integers.
        .x_labels(decades as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|ms| format!("{ms:.1}"))
        .draw()?;
    chart.draw_series(LineSeries::new(points, P50.stroke_width(2)))?;
    Ok(())
}

/// p50, p99 and max per interval.
fn over_time(area: &DrawingArea<SVGBackend<'_>, Shift>, recording: &Recording) -> DrawResult {
    let intervals = recording.intervals();
    let end = intervals
        .last()
        .map_or(1.0, |i| (i.start + i.length).as_secs_f64());
    let series = over_time_series(recording);
    let y_max = headroom(
        series
            .iter()
            .flat_map(|l| l.points.iter().map(|&(_, ms)| ms)),
    );
    let mut chart = ChartBuilder::on(area)
        .caption(OVER_TIME_TITLE, (FONT, 18))
        .margin(12)
        .margin_right(36)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..end, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("time since the start of the run (s)")
        .y_desc("latency (ms)")
        .light_line_style(BLACK.mix(0.04))
        .y_label_formatter(&|ms| format!("{ms:.1}"))
        .draw()?;
    for Line {
        name,
        color,
        points,
    } in series
    {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// One line of the lower chart.
#[derive(Debug)]
struct Line {
    name: &'static str,
    color: RGBColor,
    /// (middle of the interval in s, ms).
    points: Vec<(f64, f64)>,
}

/// A figure of one interval's histogram, in microseconds.
type Statistic = fn(&Histogram<u64>) -> u64;

/// The lines of the lower chart; intervals without a request have no point. Highest first, so
/// where p99 is the max (fewer than 100 requests in a second) its line is drawn over the max's
/// and both stay visible.
fn over_time_series(recording: &Recording) -> Vec<Line> {
    let lines: [(&str, RGBColor, Statistic); 3] = [
        ("max", MAX, Histogram::max),
        ("p99", P99, |h| h.value_at_quantile(0.99)),
        ("p50", P50, |h| h.value_at_quantile(0.5)),
    ];
    let intervals = recording.intervals();
    lines
        .into_iter()
        .map(|(name, color, value)| {
            let points = intervals
                .iter()
                .filter(|i| !i.latency.is_empty())
                .map(|i| {
                    let middle = (i.start + i.length / 2).as_secs_f64();
                    (middle, ms(value(i.latency)))
                })
                .collect();
            Line {
                name,
                color,
                points,
            }
        })
        .collect()
}

/// How many decades of 1/(1 − p) the run's count resolves: with `n` requests the value at
/// 1 − 10^-d is the max once 10^d > n, so the spectrum ends at the first such d (at least at
/// 99 %).
fn decades_resolved(n: u64) -> u32 {
    let mut decades = 2;
    while decades < MOST_DECADES && 10u64.pow(decades) <= n {
        decades += 1;
    }
    decades
}

/// (x, ms) along the spectrum: x = log10(1/(1 − p)), the value at each p as the report
/// computes its percentiles (`value_at_quantile`).
fn spectrum_points(latency: &Histogram<u64>, decades: u32) -> Vec<(f64, f64)> {
    if latency.is_empty() {
        return Vec::new();
    }
    let xs: Vec<f64> = (0..=decades * STEPS_PER_DECADE)
        .map(|step| f64::from(step) / f64::from(STEPS_PER_DECADE))
        .collect();
    let quantiles = xs.iter().map(|&x| quantile_at(x));
    xs.iter()
        .zip(latency.value_at_quantiles(quantiles))
        .map(|(&x, micros)| (x, ms(micros)))
        .collect()
}

/// The quantile p at x = log10(1/(1 − p)).
fn quantile_at(x: f64) -> f64 {
    1.0 - 10f64.powf(-x)
}

/// An x tick's label: 0 → "0%", 1 → "90%", 2 → "99%", 3 → "99.9%" …
fn percentile_label(x: f64) -> String {
    let decimals = (x.round() as usize).saturating_sub(2);
    format!("{:.*}%", decimals, 100.0 * quantile_at(x))
}

/// The top of a latency axis: a little above the highest value, at least 1 ms (an empty run
/// still gets axes).
fn headroom(values: impl Iterator<Item = f64>) -> f64 {
    (values.fold(0.0, f64::max) * 1.05).max(1.0)
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1_000.0
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::tools::loadgen::drive::histogram;

    fn recording(per_second: &[&[u64]]) -> Recording {
        let timeline: Vec<Histogram<u64>> = per_second
            .iter()
            .map(|values| {
                let mut h = histogram();
                values.iter().for_each(|&v| h.record(v).unwrap());
                h
            })
            .collect();
        let mut latency = histogram();
        timeline.iter().for_each(|h| latency.add(h).unwrap());
        Recording {
            started_at: SystemTime::UNIX_EPOCH,
            duration: Duration::from_secs(timeline.len() as u64),
            latency,
            timeline,
        }
    }

    #[test]
    fn percentile_ticks_read_as_percentiles() {
        let labels: Vec<String> = (0..=4).map(|x| percentile_label(f64::from(x))).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%"]);
    }

    #[test]
    fn the_spectrum_ends_where_the_count_stops_resolving() {
        assert_eq!(decades_resolved(0), 2);
        assert_eq!(decades_resolved(99), 2);
        assert_eq!(decades_resolved(100), 3);
        assert_eq!(decades_resolved(1_000), 4);
        assert_eq!(decades_resolved(20_000), 5);
        assert_eq!(decades_resolved(u64::MAX), MOST_DECADES);
    }

    #[test]
    fn the_spectrum_agrees_with_the_report_and_ends_at_the_max() {
        let values: Vec<u64> = (1..=1_000).map(|i| i * 100).collect();
        let r = recording(&[&values]);
        let points = spectrum_points(&r.latency, decades_resolved(1_000));
        assert_eq!(points.len(), 401);
        assert_eq!(points[0], (0.0, ms(r.latency.value_at_quantile(0.0))));
        let at = |x: f64| points.iter().find(|p| (p.0 - x).abs() < 1e-9).unwrap().1;
        assert_eq!(at(1.0), ms(r.latency.value_at_quantile(0.9)));
        assert_eq!(at(2.0), ms(r.latency.value_at_quantile(0.99)));
        assert_eq!(points.last().unwrap().1, ms(r.latency.max()));
        assert!(points.windows(2).all(|w| w[0].1 <= w[1].1), "never falls");
    }

    #[test]
    fn each_second_gets_its_p50_p99_and_max_and_quiet_seconds_none() {
        let r = recording(&[&[1_000, 2_000, 50_000], &[], &[3_000]]);
        let series = over_time_series(&r);
        let names: Vec<&str> = series.iter().map(|l| l.name).collect();
        assert_eq!(names, ["max", "p99", "p50"]);
        // 3,000 µs is recorded as its bucket's highest equivalent, 3,001 µs.
        assert_eq!(series[2].points, [(0.5, 2.0), (2.5, 3.001)]);
        assert_eq!(series[0].points[0].0, 0.5);
        assert!((series[0].points[0].1 - 50.0).abs() < 0.05);
    }

    #[test]
    fn renders_both_charts_even_for_a_run_without_requests() {
        for r in [recording(&[&[1_000, 5_000], &[2_000]]), recording(&[])] {
            let svg = render(&r, "open loop at 10 requests/s for 2s").unwrap();
            assert!(svg.starts_with("<svg"), "{svg}");
            assert!(svg.contains(SPECTRUM_TITLE));
            assert!(svg.contains(OVER_TIME_TITLE));
            assert!(svg.contains("open loop at 10 requests/s for 2s"));
        }
    }
}
