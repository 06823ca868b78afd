//! Every Prometheus metric the service exports, in one place.
//!
//! Labels are limited to route templates, listener names and status codes: nothing derived from
//! a fingerprint, a number or a user ever becomes a label or a value. No metric is derived from
//! match results either: a counter of matches moved by exactly the number of a query's registered
//! contacts, which a scraper could read per query (issue 11, finding 5;
//! `tests/no_retention.rs` fails on any series that moves with the number of matches).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The service's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    /// Requests by listener, route template and status.
    pub http_requests: IntCounterVec,
    /// Request latency by listener, route template and status.
    pub http_duration: HistogramVec,
    /// Fingerprints looked up (after validation).
    pub fingerprints: IntCounter,
    /// Fingerprints per discovery request.
    pub batch_size: Histogram,
    /// Connections a listener cut short, by listener and reason (`per_address_cap`,
    /// `write_timeout`, `max_age`). Nothing about what the connection carried.
    pub connections_cut: IntCounterVec,
    /// Discovery requests refused by the rate limiter.
    pub rate_limited: IntCounter,
    /// Rate-limit checks that fell back to this process's budget because the shared one
    /// (Redis) failed or was slow.
    pub rate_limit_fallbacks: IntCounter,
    /// The current epoch number.
    pub current_epoch: IntGauge,
    /// 1 once the current epoch's index is built.
    pub ready: IntGauge,
    /// Seconds per index build.
    pub index_build_seconds: Histogram,
    /// Entries in the current epoch's index.
    pub index_entries: IntGauge,
    /// Indexes alive (current, previous in grace, next).
    pub live_indexes: IntGauge,
    /// Registered numbers by visibility.
    pub registry_size: IntGaugeVec,
    /// Seconds from receiving a registry change to having it durable.
    pub registry_write_seconds: Histogram,
    /// The registry change stream shared by replicas (all zero when standalone).
    pub replication: ReplicationMetrics,
    /// The private mode (all zero when it is off).
    pub private: PrivateMetrics,
}

/// The gauges and histogram one mode's rotator keeps current (each mode has its own names).
#[derive(Clone)]
pub struct RotatorMetrics {
    /// Seconds per build.
    pub build_seconds: Histogram,
    /// The current epoch number.
    pub current_epoch: IntGauge,
    /// 1 once the current epoch's artefact is built.
    pub ready: IntGauge,
    /// Entries in the current epoch's artefact.
    pub entries: IntGauge,
    /// Artefacts alive.
    pub live: IntGauge,
}

/// Metrics of the private mode: its rotator's gauges, elements evaluated (the one thing the
/// server learns of a private query: how many numbers were asked about), publications.
pub struct PrivateMetrics {
    /// 1 when the private mode is served (its alerts look only at replicas serving it).
    pub enabled: IntGauge,
    /// The rotator's gauges (`private_key_epoch`, `private_set_*`).
    pub rotator: RotatorMetrics,
    /// Blinded elements evaluated.
    pub elements_evaluated: IntCounter,
    /// Seconds per publication of registry changes into the set.
    pub publish_seconds: Histogram,
}

impl PrivateMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let gauge =
            |name: &str, help: &str| IntGauge::with_opts(Opts::new(name, help).namespace(NS));
        let m = Self {
            enabled: gauge("private_mode_enabled", "1 when the private mode is served")?,
            rotator: RotatorMetrics {
                build_seconds: Histogram::with_opts(
                    HistogramOpts::new(
                        "private_set_build_seconds",
                        "Seconds per private set build",
                    )
                    .namespace(NS)
                    .buckets(vec![0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3_600.0]),
                )?,
                current_epoch: gauge("private_key_epoch", "The current OPRF key epoch")?,
                ready: gauge(
                    "private_set_ready",
                    "1 once the current key epoch's private set is built",
                )?,
                entries: gauge(
                    "private_set_entries",
                    "Values in the current key epoch's private set",
                )?,
                live: gauge("private_live_sets", "Private sets alive")?,
            },
            elements_evaluated: IntCounter::with_opts(
                Opts::new(
                    "private_elements_evaluated_total",
                    "Blinded elements evaluated by the private mode",
                )
                .namespace(NS),
            )?,
            publish_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "private_set_publish_seconds",
                    "Seconds per publication of registry changes into the private set",
                )
                .namespace(NS)
                .buckets(vec![0.000_1, 0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0]),
            )?,
        };
        registry.register(Box::new(m.enabled.clone()))?;
        let r = &m.rotator;
        registry.register(Box::new(r.build_seconds.clone()))?;
        registry.register(Box::new(r.current_epoch.clone()))?;
        registry.register(Box::new(r.ready.clone()))?;
        registry.register(Box::new(r.entries.clone()))?;
        registry.register(Box::new(r.live.clone()))?;
        registry.register(Box::new(m.elements_evaluated.clone()))?;
        registry.register(Box::new(m.publish_seconds.clone()))?;
        Ok(m)
    }
}

/// Metrics of the registry change stream (`replication.rs`).
pub struct ReplicationMetrics {
    /// Seconds this replica is behind the newest change it knows of (0 when caught up).
    pub lag_seconds: IntGauge,
    /// 1 once the initial snapshot and stream are loaded (always 1 when standalone).
    pub synced: IntGauge,
    /// Stream entries applied to the local registry.
    pub entries_applied: IntCounter,
    /// Shared snapshots loaded into the local registry.
    pub snapshots_loaded: IntCounter,
    /// Shared snapshots published by this replica.
    pub snapshots_published: IntCounter,
    /// Failed Redis calls or undecodable entries.
    pub errors: IntCounter,
    /// Values read from Redis and refused (not applied, not written), by a fixed reason:
    /// `format`, `mac`, `bounds`.
    pub rejected: IntCounterVec,
}

impl ReplicationMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::with_opts(Opts::new(name, help).namespace(NS))?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(Opts::new(name, help).namespace(NS))?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        Ok(Self {
            lag_seconds: gauge(
                "replication_lag_seconds",
                "Seconds behind the newest registry change known (0 when caught up)",
            )?,
            synced: gauge(
                "replication_synced",
                "1 once the shared registry snapshot and stream are loaded (1 when standalone)",
            )?,
            entries_applied: counter(
                "replication_entries_applied_total",
                "Registry stream entries applied locally",
            )?,
            snapshots_loaded: counter(
                "replication_snapshots_loaded_total",
                "Shared registry snapshots loaded",
            )?,
            snapshots_published: counter(
                "replication_snapshots_published_total",
                "Shared registry snapshots published by this replica",
            )?,
            errors: counter(
                "replication_errors_total",
                "Failed registry stream calls or undecodable entries",
            )?,
            rejected: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "replication_rejected_total",
                        "Registry stream entries and snapshots read from Redis and refused, by reason (format, mac, bounds)",
                    )
                    .namespace(NS),
                    &["reason"],
                )?;
                registry.register(Box::new(c.clone()))?;
                // Exported at 0 from the start, so an alert on any increase works at once.
                for reason in Refusal::ALL {
                    c.with_label_values(&[reason.label()]);
                }
                c
            },
        })
    }
}

/// Why a value read from Redis was refused (`replication.rs`): the label of
/// `contact_discovery_replication_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not in the current sealed format (an old `ops` record, a description without a MAC).
    Format,
    /// Its MAC or AEAD tag does not verify.
    Mac,
    /// A length beyond its bound, or lengths that disagree.
    Bounds,
}

impl Refusal {
    /// Every label, for the metric.
    pub const ALL: [Refusal; 3] = [Refusal::Format, Refusal::Mac, Refusal::Bounds];

    /// The metric label and logged reason.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Format => "format",
            Refusal::Mac => "mac",
            Refusal::Bounds => "bounds",
        }
    }
}

/// Metric name prefix.
const NS: &str = "contact_discovery";

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        // From 10 µs: most discovery answers take well under 100 µs, and a lowest bucket of
        // 100 µs made every percentile an interpolation inside it.
        let latency = vec![
            0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01,
            0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        let m = Self {
            http_requests: IntCounterVec::new(
                Opts::new(
                    "http_requests_total",
                    "HTTP requests by listener, route and status",
                )
                .namespace(NS),
                &["listener", "route", "status"],
            )?,
            http_duration: HistogramVec::new(
                HistogramOpts::new("http_request_duration_seconds", "HTTP request latency")
                    .namespace(NS)
                    .buckets(latency),
                &["listener", "route", "status"],
            )?,
            fingerprints: IntCounter::with_opts(
                Opts::new("fingerprints_looked_up_total", "Fingerprints looked up").namespace(NS),
            )?,
            batch_size: Histogram::with_opts(
                HistogramOpts::new("discover_batch_size", "Fingerprints per discovery request")
                    .namespace(NS)
                    .buckets(vec![
                        1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0,
                        25_000.0, 50_000.0,
                    ]),
            )?,
            connections_cut: IntCounterVec::new(
                Opts::new(
                    "connections_cut_total",
                    "Connections refused or closed early, by listener and reason",
                )
                .namespace(NS),
                &["listener", "reason"],
            )?,
            rate_limited: IntCounter::with_opts(
                Opts::new(
                    "rate_limited_requests_total",
                    "Discovery requests refused by the rate limit",
                )
                .namespace(NS),
            )?,
            rate_limit_fallbacks: IntCounter::with_opts(
                Opts::new(
                    "rate_limit_fallbacks_total",
                    "Rate-limit checks done against the local budget because the shared one failed",
                )
                .namespace(NS),
            )?,
            current_epoch: IntGauge::with_opts(
                Opts::new("current_epoch", "The current epoch number").namespace(NS),
            )?,
            ready: IntGauge::with_opts(
                Opts::new("ready", "1 once the current epoch's index is built").namespace(NS),
            )?,
            index_build_seconds: Histogram::with_opts(
                HistogramOpts::new("index_build_seconds", "Seconds per match index build")
                    .namespace(NS)
                    .buckets(vec![
                        0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                    ]),
            )?,
            index_entries: IntGauge::with_opts(
                Opts::new(
                    "index_entries",
                    "Entries in the current epoch's match index",
                )
                .namespace(NS),
            )?,
            live_indexes: IntGauge::with_opts(
                Opts::new("live_indexes", "Match indexes alive").namespace(NS),
            )?,
            registry_size: IntGaugeVec::new(
                Opts::new("registry_size", "Registered numbers by visibility").namespace(NS),
                &["visibility"],
            )?,
            registry_write_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "registry_write_seconds",
                    "Seconds to make a registry change durable",
                )
                .namespace(NS)
                .buckets(vec![
                    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0,
                ]),
            )?,
            replication: ReplicationMetrics::new(&registry)?,
            private: PrivateMetrics::new(&registry)?,
            registry,
        };
        m.registry.register(Box::new(m.http_requests.clone()))?;
        m.registry.register(Box::new(m.http_duration.clone()))?;
        m.registry.register(Box::new(m.fingerprints.clone()))?;
        m.registry.register(Box::new(m.batch_size.clone()))?;
        m.registry.register(Box::new(m.connections_cut.clone()))?;
        m.registry.register(Box::new(m.rate_limited.clone()))?;
        m.registry
            .register(Box::new(m.rate_limit_fallbacks.clone()))?;
        m.registry.register(Box::new(m.current_epoch.clone()))?;
        m.registry.register(Box::new(m.ready.clone()))?;
        m.registry
            .register(Box::new(m.index_build_seconds.clone()))?;
        m.registry.register(Box::new(m.index_entries.clone()))?;
        m.registry.register(Box::new(m.live_indexes.clone()))?;
        m.registry.register(Box::new(m.registry_size.clone()))?;
        m.registry
            .register(Box::new(m.registry_write_seconds.clone()))?;
        Ok(m)
    }

    /// The hashed mode's rotator gauges.
    pub fn hashed_rotator(&self) -> RotatorMetrics {
        RotatorMetrics {
            build_seconds: self.index_build_seconds.clone(),
            current_epoch: self.current_epoch.clone(),
            ready: self.ready.clone(),
            entries: self.index_entries.clone(),
            live: self.live_indexes.clone(),
        }
    }

    /// Sets the registry size gauges.
    pub fn set_registry_counts(&self, discoverable: u64, hidden: u64) {
        self.registry_size
            .with_label_values(&["discoverable"])
            .set(discoverable as i64);
        self.registry_size
            .with_label_values(&["hidden"])
            .set(hidden as i64);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
