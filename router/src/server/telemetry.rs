//! Every metric the server exports, described once: `/metrics` shows a
//! `# HELP` line for each, and the unlabelled counters and gauges read 0
//! from start-up instead of appearing only after their first event (a
//! scraper's `rate()` needs the zero).

use metrics::Unit;

enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// (kind, name, unit, help, whether it has labels)
const METRICS: &[(Kind, &str, Unit, &str, bool)] = &[
    (
        Kind::Counter,
        "ongi_images_embedded_total",
        Unit::Count,
        "Photos embedded (not counting cache hits).",
        false,
    ),
    (
        Kind::Counter,
        "ongi_cache_hits_total",
        Unit::Count,
        "Requested photos whose features were already in the store.",
        false,
    ),
    (
        Kind::Counter,
        "ongi_cache_misses_total",
        Unit::Count,
        "Requested photos that had to be embedded.",
        false,
    ),
    (
        Kind::Counter,
        "ongi_images_deadline_exceeded_total",
        Unit::Count,
        "Photos not embedded within the request timeout.",
        false,
    ),
    (
        Kind::Counter,
        "ongi_unauthorized_requests_total",
        Unit::Count,
        "API requests refused for a missing or wrong key.",
        false,
    ),
    (
        Kind::Counter,
        "ongi_accept_errors_total",
        Unit::Count,
        "Failed accept() calls on the listening socket.",
        false,
    ),
    (
        Kind::Counter,
        "ongi_connections_closed_total",
        Unit::Count,
        "Connections closed by the server, by reason.",
        true,
    ),
    (
        Kind::Gauge,
        "ongi_connections_open",
        Unit::Count,
        "Open client connections.",
        false,
    ),
    (
        Kind::Gauge,
        "ongi_queue_depth",
        Unit::Count,
        "Photos waiting in the inference queue.",
        false,
    ),
    (
        Kind::Gauge,
        "ongi_images_per_second",
        Unit::CountPerSecond,
        "Photos embedded per second by the last request that embedded any.",
        false,
    ),
    (
        Kind::Histogram,
        "ongi_batch_size",
        Unit::Count,
        "Photos per inference batch.",
        false,
    ),
    (
        Kind::Histogram,
        "ongi_batch_requests",
        Unit::Count,
        "Requests sharing one inference batch.",
        false,
    ),
    (
        Kind::Histogram,
        "ongi_batch_seconds",
        Unit::Seconds,
        "Model time of one inference batch.",
        false,
    ),
    (
        Kind::Histogram,
        "ongi_stage_seconds",
        Unit::Seconds,
        "Time per photo (or request: store, total) in each embedding stage, by stage.",
        true,
    ),
    (
        Kind::Counter,
        "ongi_kafka_jobs_total",
        Unit::Count,
        "Kafka jobs consumed, by task.",
        true,
    ),
    (
        Kind::Counter,
        "ongi_kafka_answers_total",
        Unit::Count,
        "Kafka answers produced, by task and status code.",
        true,
    ),
    (
        Kind::Counter,
        "ongi_kafka_consumer_errors_total",
        Unit::Count,
        "Kafka receive errors the client recovers from (e.g. a topic not created yet), by task.",
        true,
    ),
    (
        Kind::Gauge,
        "ongi_kafka_lag",
        Unit::Count,
        "Kafka jobs waiting in a worker's assigned partitions, by task (from the client's statistics).",
        true,
    ),
    (
        Kind::Counter,
        "ongi_kafka_aborts_total",
        Unit::Count,
        "Kafka batches whose answers were not committed (consumed again), by task.",
        true,
    ),
    (
        Kind::Histogram,
        "ongi_analysis_seconds",
        Unit::Seconds,
        "Time to answer an analysis route, by route.",
        true,
    ),
];

/// Describes every metric to the installed recorder and sets the
/// unlabelled counters and gauges to zero.
pub fn describe() {
    for (kind, name, unit, help, labelled) in METRICS {
        let (name, unit, help) = (*name, *unit, *help);
        match kind {
            Kind::Counter => {
                metrics::describe_counter!(name, unit, help);
                if !labelled {
                    metrics::counter!(name).absolute(0);
                }
            }
            Kind::Gauge => {
                metrics::describe_gauge!(name, unit, help);
                if !labelled {
                    metrics::gauge!(name).set(0.0);
                }
            }
            Kind::Histogram => metrics::describe_histogram!(name, unit, help),
        }
    }
}

/// The names described here, for tests.
#[cfg(test)]
pub fn names() -> impl Iterator<Item = &'static str> {
    METRICS.iter().map(|m| m.1)
}

#[cfg(test)]
mod tests {
    /// Every metric the code records is described here (the sources are
    /// scanned for `counter!("ongi_…` and its kin).
    #[test]
    fn every_recorded_metric_is_described() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut recorded = std::collections::BTreeSet::new();
        for dir in [
            "router/src",
            "crates/ongi-core/src",
            "crates/ongi-model/src",
        ] {
            for entry in walkdir::WalkDir::new(root.join(dir)) {
                let entry = entry.unwrap();
                if entry.path().extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(entry.path()).unwrap();
                for macro_name in ["counter!(", "gauge!(", "histogram!("] {
                    for part in text.split(macro_name).skip(1) {
                        let name = part.trim_start().trim_start_matches('"');
                        if let Some(name) = name.split('"').next().filter(|n| {
                            n.starts_with("ongi_")
                                && n.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                        }) {
                            recorded.insert(name.to_string());
                        }
                    }
                }
            }
        }
        assert!(recorded.len() >= 10, "found only {recorded:?}");
        let described: std::collections::BTreeSet<String> =
            super::names().map(String::from).collect();
        let missing: Vec<_> = recorded.difference(&described).collect();
        assert!(
            missing.is_empty(),
            "recorded but not described: {missing:?}"
        );
    }
}
