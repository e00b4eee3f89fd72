//! What a load test measured, and its report: one typed value that prints
//! itself as JSON (`--json`) or as a table.

use std::collections::BTreeMap;

use anyhow::Result;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::ROUTES;

/// Longest latency the histograms hold, in microseconds (an hour); longer
/// ones count as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Everything measured, shared by the users.
pub struct Stats {
    /// Latencies (µs) of completed responses, per route.
    latencies: BTreeMap<&'static str, Histogram<u64>>,
    /// Response counts per route and status.
    statuses: BTreeMap<&'static str, BTreeMap<u16, u64>>,
    /// Transport failures per route and kind.
    transport: BTreeMap<&'static str, BTreeMap<String, u64>>,
    pub embedded_images: u64,
    pub failed_images: u64,
    pub failed_keys: Vec<String>,
    pub skipped_analysis: u64,
}

impl Stats {
    pub fn new() -> Result<Self> {
        let mut latencies = BTreeMap::new();
        for route in ROUTES {
            // Three significant figures: percentiles within 0.1 %.
            latencies.insert(route, Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?);
        }
        Ok(Self {
            latencies,
            statuses: BTreeMap::new(),
            transport: BTreeMap::new(),
            embedded_images: 0,
            failed_images: 0,
            failed_keys: Vec::new(),
            skipped_analysis: 0,
        })
    }

    pub fn response(&mut self, route: &'static str, status: u16, micros: u64) {
        if let Some(h) = self.latencies.get_mut(route) {
            h.saturating_record(micros.max(1));
        }
        *self
            .statuses
            .entry(route)
            .or_default()
            .entry(status)
            .or_default() += 1;
    }

    pub fn transport_error(&mut self, route: &'static str, kind: String) {
        *self
            .transport
            .entry(route)
            .or_default()
            .entry(kind)
            .or_default() += 1;
    }
}

/// The report of one run (`--json` prints it as one object).
#[derive(Serialize, Debug)]
pub struct Report {
    #[serde(flatten)]
    pub run: RunInfo,
    pub requests: u64,
    pub responses_by_status: BTreeMap<u16, u64>,
    pub errors: Errors,
    /// Per `POST /route`, only routes that saw requests.
    pub routes: BTreeMap<String, RouteReport>,
    pub embedded_images: u64,
    /// Embedded images over the sending window (cached ones included).
    pub images_per_sec: f64,
    pub failed_images: u64,
    pub failed_keys_sample: Vec<String>,
    pub analysis_skipped_users: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss: Option<RssReport>,
}

#[derive(Serialize, Debug, Default)]
pub struct Errors {
    #[serde(rename = "4xx")]
    pub client: u64,
    #[serde(rename = "5xx")]
    pub server: u64,
    pub transport: u64,
    pub transport_by_kind: BTreeMap<String, u64>,
}

#[derive(Serialize, Debug)]
pub struct RouteReport {
    pub requests: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// The server's resident memory over the run.
#[derive(Serialize, Debug)]
pub struct RssReport {
    pub pid: u32,
    pub samples: usize,
    #[serde(flatten)]
    pub summary: Option<RssSummary>,
}

/// Start, peak and end RSS and a growth verdict: the peak of the last third
/// of the samples against the peak of the first third (flat within 10 % or
/// 16 MiB).
#[derive(Serialize, Debug)]
pub struct RssSummary {
    pub start_mib: f64,
    pub peak_mib: f64,
    pub end_mib: f64,
    pub first_third_peak_mib: f64,
    pub last_third_peak_mib: f64,
    pub growth_pct: f64,
    pub verdict: &'static str,
    /// `[seconds since start, MiB]` per sample.
    pub series: Vec<[f64; 2]>,
}

/// What the report says about the run itself (its arguments and length).
#[derive(Serialize, Debug)]
pub struct RunInfo {
    pub url: String,
    pub users: usize,
    pub duration_secs: u64,
    pub elapsed_secs: f64,
    pub keys: usize,
    pub images_per_request: [usize; 2],
    pub think_ms: [u64; 2],
    pub seed: u64,
}

/// One decimal: the report's numbers are read by people.
fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn ms(micros: u64) -> f64 {
    round1(micros as f64 / 1000.0)
}

impl Report {
    pub fn new(mut run: RunInfo, stats: &Stats, server_rss: Option<RssReport>) -> Self {
        run.elapsed_secs = round1(run.elapsed_secs);
        let mut responses_by_status: BTreeMap<u16, u64> = BTreeMap::new();
        let mut errors = Errors::default();
        let mut routes = BTreeMap::new();
        let mut total = 0u64;
        for route in ROUTES {
            let statuses = stats.statuses.get(route).cloned().unwrap_or_default();
            let transport = stats.transport.get(route);
            let transport_errors: u64 = transport.map_or(0, |m| m.values().sum());
            for (&status, &n) in &statuses {
                *responses_by_status.entry(status).or_default() += n;
            }
            for (kind, &n) in transport.into_iter().flatten() {
                *errors.transport_by_kind.entry(kind.clone()).or_default() += n;
            }
            let requests = statuses.values().sum::<u64>() + transport_errors;
            total += requests;
            let Some(h) = stats.latencies.get(route).filter(|_| requests > 0) else {
                continue;
            };
            let at = |q: f64| {
                if h.is_empty() {
                    0.0
                } else {
                    ms(h.value_at_quantile(q))
                }
            };
            routes.insert(
                format!("POST {route}"),
                RouteReport {
                    requests,
                    statuses,
                    transport_errors,
                    p50_ms: at(0.50),
                    p95_ms: at(0.95),
                    p99_ms: at(0.99),
                    max_ms: if h.is_empty() { 0.0 } else { ms(h.max()) },
                    mean_ms: round1(h.mean() / 1000.0),
                },
            );
        }
        for (&status, &n) in &responses_by_status {
            match status / 100 {
                4 => errors.client += n,
                5 => errors.server += n,
                _ => {}
            }
        }
        errors.transport = errors.transport_by_kind.values().sum();
        let images_per_sec =
            (stats.embedded_images as f64 / run.duration_secs.max(1) as f64 * 100.0).round()
                / 100.0;
        Report {
            run,
            requests: total,
            responses_by_status,
            errors,
            routes,
            embedded_images: stats.embedded_images,
            images_per_sec,
            failed_images: stats.failed_images,
            failed_keys_sample: stats.failed_keys.clone(),
            analysis_skipped_users: stats.skipped_analysis,
            server_rss,
        }
    }

    /// The run's own failures: the server's 5xx answers and transport errors
    /// (a photo it reports as undecodable is a correct answer).
    pub fn failures(&self) -> u64 {
        self.errors.server + self.errors.transport
    }

    /// The report as a table.
    pub fn print_text(&self) {
        let pairs = |m: &mut dyn Iterator<Item = (String, u64)>| -> String {
            m.map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let run = &self.run;
        println!(
            "ongi-loadtest  {}  users {}  duration {} s  keys {}  images/request {}-{}  think {}-{} ms  seed {}",
            run.url,
            run.users,
            run.duration_secs,
            run.keys,
            run.images_per_request[0],
            run.images_per_request[1],
            run.think_ms[0],
            run.think_ms[1],
            run.seed,
        );
        println!("elapsed            {:.1} s", run.elapsed_secs);
        println!("requests           {}", self.requests);
        println!(
            "responses          {}",
            pairs(
                &mut self
                    .responses_by_status
                    .iter()
                    .map(|(k, &v)| (k.to_string(), v))
            )
        );
        let kinds = pairs(
            &mut self
                .errors
                .transport_by_kind
                .iter()
                .map(|(k, &v)| (k.clone(), v)),
        );
        println!(
            "errors             4xx {}  5xx {}  transport {}{}",
            self.errors.client,
            self.errors.server,
            self.errors.transport,
            if kinds.is_empty() {
                String::new()
            } else {
                format!(" ({kinds})")
            }
        );
        println!(
            "{:<34} {:>8} {:>9} {:>9} {:>9} {:>9}",
            "route", "requests", "p50 ms", "p95 ms", "p99 ms", "max ms"
        );
        for route in ROUTES.map(|r| format!("POST {r}")) {
            let Some(s) = self.routes.get(&route) else {
                continue;
            };
            println!(
                "{:<34} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                route, s.requests, s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms,
            );
        }
        println!(
            "embedded images    {}  ({:.2} images/s over the sending window; cached ones included)",
            self.embedded_images, self.images_per_sec
        );
        println!("failed images      {}", self.failed_images);
        if !self.failed_keys_sample.is_empty() {
            println!(
                "failed keys (some) {}",
                serde_json::Value::from(self.failed_keys_sample.clone())
            );
        }
        if self.analysis_skipped_users > 0 {
            println!(
                "analysis skipped   {} users (no successful embedding, or categories failed)",
                self.analysis_skipped_users
            );
        }
        if let Some(rss) = &self.server_rss {
            rss.print_text();
        }
    }
}

impl RssReport {
    /// Summarises `(seconds, kB)` samples of process `pid`.
    pub fn new(pid: u32, rss: &[(f64, u64)]) -> Self {
        let mib = |kib: u64| round1(kib as f64 / 1024.0);
        let summary = (!rss.is_empty()).then(|| {
            let third = rss.len().div_ceil(3);
            let peak_of = |s: &[(f64, u64)]| s.iter().map(|&(_, k)| k).max().unwrap_or(0);
            let first = peak_of(&rss[..third]);
            let last = peak_of(&rss[rss.len() - third..]);
            let growth_pct = if first == 0 {
                0.0
            } else {
                (last as f64 - first as f64) / first as f64 * 100.0
            };
            let flat = last <= first || last - first <= (first / 10).max(16 * 1024);
            RssSummary {
                start_mib: mib(rss[0].1),
                peak_mib: mib(peak_of(rss)),
                end_mib: mib(rss[rss.len() - 1].1),
                first_third_peak_mib: mib(first),
                last_third_peak_mib: mib(last),
                growth_pct: round1(growth_pct),
                verdict: if flat { "flat" } else { "growing" },
                series: rss.iter().map(|&(t, k)| [round1(t), mib(k)]).collect(),
            }
        });
        RssReport {
            pid,
            samples: rss.len(),
            summary,
        }
    }

    fn print_text(&self) {
        let Some(s) = &self.summary else {
            println!("server RSS         pid {}: no samples", self.pid);
            return;
        };
        println!(
            "server RSS         pid {}: start {:.1} MiB, peak {:.1} MiB, end {:.1} MiB ({} samples)",
            self.pid, s.start_mib, s.peak_mib, s.end_mib, self.samples
        );
        println!(
            "RSS growth         first-third peak {:.1} MiB, last-third peak {:.1} MiB ({:+.1} %): {}",
            s.first_third_peak_mib, s.last_third_peak_mib, s.growth_pct, s.verdict
        );
        // About 12 points over the run.
        let step = s.series.len().div_ceil(12).max(1);
        let points: Vec<String> = s
            .series
            .iter()
            .enumerate()
            .filter(|(i, _)| i % step == 0 || *i == s.series.len() - 1)
            .map(|(_, [t, m])| format!("{t:.0}s {m:.0}"))
            .collect();
        println!("RSS over time MiB  {}", points.join(" | "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_info() -> RunInfo {
        RunInfo {
            url: "http://127.0.0.1:8000".into(),
            users: 2,
            duration_secs: 10,
            elapsed_secs: 12.345,
            keys: 5,
            images_per_request: [1, 3],
            think_ms: [10, 20],
            seed: 0,
        }
    }

    fn json_of(report: &Report) -> serde_json::Value {
        serde_json::to_value(report).unwrap()
    }

    #[test]
    fn report_counts_percentiles_and_classes() {
        let mut stats = Stats::new().unwrap();
        let route = ROUTES[0];
        // 1..=100 ms: nearest-rank p50 = 50 ms, p95 = 95 ms, p99 = 99 ms.
        for ms in 1..=100u64 {
            stats.response(route, 201, ms * 1000);
        }
        stats.response(ROUTES[1], 500, 2_000);
        stats.response(ROUTES[1], 400, 1_000);
        stats.transport_error(ROUTES[1], "timeout".into());
        stats.embedded_images = 25;
        let report = Report::new(run_info(), &stats, None);
        let r = &report.routes[&format!("POST {route}")];
        assert_eq!(r.requests, 100);
        for (got, want) in [
            (r.p50_ms, 50.0),
            (r.p95_ms, 95.0),
            (r.p99_ms, 99.0),
            (r.max_ms, 100.0),
        ] {
            assert!((got - want).abs() <= want * 0.001 + 0.1, "{got} vs {want}");
        }
        assert!((r.mean_ms - 50.5).abs() <= 0.1, "{}", r.mean_ms);
        assert_eq!(report.requests, 103);
        assert_eq!((report.errors.client, report.errors.server), (1, 1));
        assert_eq!(report.errors.transport, 1);
        assert_eq!(report.failures(), 2);
        assert_eq!(report.images_per_sec, 2.5);
        assert_eq!(report.run.elapsed_secs, 12.3);
        assert_eq!(json_of(&report)["elapsed_secs"], 12.3);
        // Routes without requests are left out; the JSON keys are as the
        // client tooling reads them.
        assert_eq!(report.routes.len(), 2);
        let json = json_of(&report);
        assert_eq!(json["errors"]["5xx"], 1);
        assert_eq!(json["responses_by_status"]["201"], 100);
        assert!(json.get("server_rss").is_none());
    }

    #[test]
    fn rss_verdicts() {
        let flat: Vec<(f64, u64)> = (0..9).map(|i| (i as f64, 100 * 1024 + i)).collect();
        let s = RssReport::new(7, &flat).summary.unwrap();
        assert_eq!(s.verdict, "flat");
        let growing: Vec<(f64, u64)> = (0..9).map(|i| (i as f64, (100 + 20 * i) * 1024)).collect();
        let s = RssReport::new(7, &growing).summary.unwrap();
        assert_eq!(s.verdict, "growing");
        assert_eq!((s.start_mib, s.peak_mib), (100.0, 260.0));
        let none = RssReport::new(7, &[]);
        assert!(none.summary.is_none());
        assert_eq!(
            serde_json::to_value(&none).unwrap(),
            serde_json::json!({"pid": 7, "samples": 0})
        );
    }
}
