//! The operator benchmark's figures and how they are judged: the operator's counters read from
//! its `/metrics`, its memory read from `/proc/PID/status`, and the report, with the target next
//! to each figure, printed as a table and as one JSON line. Pure: no clock, no client.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// The operator's counter of requests to the API server, labelled by HTTP method.
pub const API_REQUESTS: &str = "longconn_operator_api_requests_total";
/// The same, for the requests of leader election (counted in the figures here too).
pub const LEASE_REQUESTS: &str = "longconn_operator_lease_requests_total";
/// The operator's counter of reconciles.
pub const RECONCILES: &str = "longconn_operator_reconciles_total";

/// The targets each figure is judged against.
pub mod target {
    /// The LongConnServices' creates take at most this times the Deployments' creates.
    pub const CREATES_RATIO: f64 = 1.0;
    /// The LongConnServices converge within this times the Deployments' convergence.
    pub const CONVERGED_RATIO: f64 = 1.2;
    /// The operator's requests per LongConnService while converging.
    pub const REQUESTS_PER_SERVICE: f64 = 15.0;
    /// The operator's resident memory, peak and settled (the target is set for 1000 services).
    pub const RSS_BYTES: u64 = 64 << 20;
    /// The operator's requests per LongConnService per minute while nothing changes.
    pub const IDLE_REQUESTS_PER_SERVICE_PER_MINUTE: f64 = 1.0;
    /// The operator's writes while nothing changes, the leader Lease's renewals aside.
    pub const IDLE_WRITES: u64 = 0;
}

/// One read of the operator's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Requests to the API server by HTTP method (`GET`, `PATCH`, ...).
    pub requests: BTreeMap<String, u64>,
    pub reconciles: u64,
}

impl Counters {
    /// Reads [`API_REQUESTS`] and [`LEASE_REQUESTS`] (added up: every request of the process)
    /// and [`RECONCILES`] from an OpenMetrics text exposition.
    pub fn parse(text: &str) -> Self {
        let mut counters = Counters::default();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            // Counters are whole numbers; the exposition may still write them as floats.
            let value = value.max(0.0).round() as u64;
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            if name == API_REQUESTS || name == LEASE_REQUESTS {
                let method = label(labels, "method").unwrap_or("?").to_uppercase();
                *counters.requests.entry(method).or_default() += value;
            } else if name == RECONCILES {
                counters.reconciles += value;
            }
        }
        counters
    }

    /// What was counted after `before` was read.
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            requests: self
                .requests
                .iter()
                .map(|(method, n)| {
                    let earlier = before.requests.get(method).copied().unwrap_or(0);
                    (method.clone(), n.saturating_sub(earlier))
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
            reconciles: self.reconciles.saturating_sub(before.reconciles),
        }
    }

    /// Requests of every method.
    pub fn total(&self) -> u64 {
        self.requests.values().sum()
    }

    /// Requests that may change something: every method but GET (a watch is a GET).
    pub fn writes(&self) -> u64 {
        self.requests
            .iter()
            .filter(|(method, _)| method.as_str() != "GET")
            .map(|(_, n)| n)
            .sum()
    }
}

/// The value of label `name` in `a="x",b="y"`.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels
        .trim_end_matches('}')
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim().trim_matches('"'))
}

/// A process's resident memory, from `/proc/PID/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    /// `VmHWM`: the most it ever held.
    pub peak_bytes: u64,
    /// `VmRSS`: what it holds now.
    pub resident_bytes: u64,
}

impl Memory {
    /// Reads `VmHWM` and `VmRSS` (in kB) from the text of `/proc/PID/status`.
    pub fn parse_status(text: &str) -> Option<Self> {
        let kib = |field: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        };
        Some(Memory {
            peak_bytes: kib("VmHWM")? * 1024,
            resident_bytes: kib("VmRSS")? * 1024,
        })
    }
}

/// One phase's times.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Phase {
    /// Wall time of creating every object.
    pub creates_seconds: f64,
    /// From the first create until the last object converged.
    pub converged_seconds: f64,
}

/// What the benchmark measured, as measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    /// Objects of each kind.
    pub count: usize,
    /// Creates in flight at once, in every phase.
    pub concurrency: usize,
    pub idle: Duration,
    /// The plain Deployments.
    pub anchor: Phase,
    /// Wall time of creating the LongConnServices with no operator running.
    pub bare_creates: Duration,
    /// The LongConnServices, with the operator.
    pub longconn: Phase,
    /// The operator's counts from just before the first create until it stopped reconciling
    /// after the last service converged.
    pub converging: Counters,
    /// How long after the last service converged the operator stopped reconciling (no reconcile
    /// for 5 s); `None` when it did not within the limit.
    pub quiet_after: Option<Duration>,
    /// The operator's counts during the idle period after that.
    pub idle_counters: Counters,
    /// Writes to the leader Lease during the idle period (its renewals), seen by a watch on it.
    pub idle_lease_renewals: u64,
    /// VmHWM (over the whole run) and VmRSS after the idle period.
    pub memory: Memory,
}

/// The report: what was measured, what follows from it, and whether each target was met.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub count: usize,
    pub concurrency: usize,
    pub idle_seconds: f64,
    pub anchor: Phase,
    pub longconn: Phase,
    pub creates_ratio: f64,
    /// The LongConnServices' creates with no operator running, and their ratio to the anchor's:
    /// the part of `creates_ratio` that is the API server's own, not the operator's.
    pub bare_creates_seconds: f64,
    pub bare_creates_ratio: f64,
    pub converged_ratio: f64,
    pub quiet_after_converged_seconds: Option<f64>,
    pub converging_requests: BTreeMap<String, u64>,
    pub converging_requests_per_service: f64,
    pub converging_reconciles_per_service: f64,
    pub idle_requests: BTreeMap<String, u64>,
    pub idle_requests_per_service_per_minute: f64,
    pub idle_writes: u64,
    pub idle_lease_renewals: u64,
    pub idle_writes_besides_lease: u64,
    pub idle_reconciles: u64,
    pub peak_rss_bytes: u64,
    pub settled_rss_bytes: u64,
    pub met: Met,
}

/// Whether each target was met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Met {
    pub creates: bool,
    pub converged: bool,
    pub converging_requests: bool,
    pub idle_requests: bool,
    pub idle_writes: bool,
    pub peak_rss: bool,
    pub settled_rss: bool,
}

impl Report {
    /// Derives the ratios and rates from `measured` and judges them.
    pub fn new(measured: &Measured) -> Self {
        let count = measured.count.max(1) as f64;
        let minutes = measured.idle.as_secs_f64() / 60.0;
        let ratio = |ours: f64, anchor: f64| if anchor > 0.0 { ours / anchor } else { 0.0 };
        let creates_ratio = ratio(
            measured.longconn.creates_seconds,
            measured.anchor.creates_seconds,
        );
        let bare_creates_seconds = measured.bare_creates.as_secs_f64();
        let converged_ratio = ratio(
            measured.longconn.converged_seconds,
            measured.anchor.converged_seconds,
        );
        let converging_requests_per_service = measured.converging.total() as f64 / count;
        let idle_requests_per_service_per_minute = if minutes > 0.0 {
            measured.idle_counters.total() as f64 / count / minutes
        } else {
            0.0
        };
        let idle_writes = measured.idle_counters.writes();
        let idle_writes_besides_lease = idle_writes.saturating_sub(measured.idle_lease_renewals);
        let memory = measured.memory;
        Report {
            count: measured.count,
            concurrency: measured.concurrency,
            idle_seconds: measured.idle.as_secs_f64(),
            anchor: measured.anchor,
            longconn: measured.longconn,
            creates_ratio,
            bare_creates_seconds,
            bare_creates_ratio: ratio(bare_creates_seconds, measured.anchor.creates_seconds),
            converged_ratio,
            quiet_after_converged_seconds: measured.quiet_after.map(|d| d.as_secs_f64()),
            converging_requests: measured.converging.requests.clone(),
            converging_requests_per_service,
            converging_reconciles_per_service: measured.converging.reconciles as f64 / count,
            idle_requests: measured.idle_counters.requests.clone(),
            idle_requests_per_service_per_minute,
            idle_writes,
            idle_lease_renewals: measured.idle_lease_renewals,
            idle_writes_besides_lease,
            idle_reconciles: measured.idle_counters.reconciles,
            peak_rss_bytes: memory.peak_bytes,
            settled_rss_bytes: memory.resident_bytes,
            met: Met {
                creates: creates_ratio <= target::CREATES_RATIO,
                converged: converged_ratio <= target::CONVERGED_RATIO,
                converging_requests: converging_requests_per_service
                    <= target::REQUESTS_PER_SERVICE,
                idle_requests: idle_requests_per_service_per_minute
                    <= target::IDLE_REQUESTS_PER_SERVICE_PER_MINUTE,
                idle_writes: idle_writes_besides_lease == target::IDLE_WRITES,
                peak_rss: memory.peak_bytes <= target::RSS_BYTES,
                settled_rss: memory.resident_bytes <= target::RSS_BYTES,
            },
        }
    }

    /// The table for the terminal: one row per figure, the anchor's beside the operator's where
    /// there is one, and the target.
    pub fn table(&self) -> String {
        let count = self.count;
        let by_method = |requests: &BTreeMap<String, u64>, show: &dyn Fn(u64) -> String| {
            requests
                .iter()
                .map(|(method, n)| format!("{method} {}", show(*n)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let per_service = |n: u64| format!("{:.2}", n as f64 / count.max(1) as f64);
        let mib = |bytes: u64| format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20));
        let rss_target = format!("<= {} at 1000", mib(target::RSS_BYTES));
        let rows = [
            Row::timed(
                format!("creates of all {count}"),
                [self.anchor.creates_seconds, self.longconn.creates_seconds],
                self.creates_ratio,
                target::CREATES_RATIO,
                self.met.creates,
            ),
            Row {
                what: format!("creates of all {count}, no operator running"),
                anchor: format!("{:.1} s", self.anchor.creates_seconds),
                longconn: format!(
                    "{:.1} s ({:.2}x)",
                    self.bare_creates_seconds, self.bare_creates_ratio
                ),
                target: "-".into(),
                met: "-".into(),
            },
            Row::timed(
                format!("all {count} converged"),
                [
                    self.anchor.converged_seconds,
                    self.longconn.converged_seconds,
                ],
                self.converged_ratio,
                target::CONVERGED_RATIO,
                self.met.converged,
            ),
            Row::operator(
                "operator's last reconcile after that",
                self.quiet_after_converged_seconds
                    .map_or("still reconciling".into(), |s| format!("{s:.1} s")),
                None,
            ),
            Row::operator(
                "requests per service while converging",
                format!(
                    "{:.2} ({})",
                    self.converging_requests_per_service,
                    by_method(&self.converging_requests, &per_service)
                ),
                Some((
                    format!("<= {}", target::REQUESTS_PER_SERVICE),
                    self.met.converging_requests,
                )),
            ),
            Row::operator(
                "reconciles per service while converging",
                format!("{:.2}", self.converging_reconciles_per_service),
                None,
            ),
            Row::operator(
                "idle requests per service per minute",
                format!(
                    "{:.3} ({} in {:.0} s: {})",
                    self.idle_requests_per_service_per_minute,
                    self.idle_requests.values().sum::<u64>(),
                    self.idle_seconds,
                    by_method(&self.idle_requests, &|n| n.to_string())
                ),
                Some((
                    format!("<= {}", target::IDLE_REQUESTS_PER_SERVICE_PER_MINUTE),
                    self.met.idle_requests,
                )),
            ),
            Row::operator(
                "idle writes, leader Lease renewals aside",
                format!(
                    "{} ({} writes, {} Lease renewals)",
                    self.idle_writes_besides_lease, self.idle_writes, self.idle_lease_renewals
                ),
                Some((target::IDLE_WRITES.to_string(), self.met.idle_writes)),
            ),
            Row::operator("idle reconciles", self.idle_reconciles.to_string(), None),
            Row::operator(
                "operator RSS, peak (VmHWM)",
                mib(self.peak_rss_bytes),
                Some((rss_target.clone(), self.met.peak_rss)),
            ),
            Row::operator(
                "operator RSS, settled (VmRSS after idle)",
                mib(self.settled_rss_bytes),
                Some((rss_target, self.met.settled_rss)),
            ),
        ];
        let header = Row {
            what: String::new(),
            anchor: "Deployments (anchor)".into(),
            longconn: "LongConnServices".into(),
            target: "target".into(),
            met: "met".into(),
        };
        render(&header, &rows)
    }
}

/// One line of the table.
struct Row {
    what: String,
    anchor: String,
    longconn: String,
    target: String,
    met: String,
}

impl Row {
    /// A time of both phases, the ratio of the operator's to the anchor's, and its target.
    fn timed(
        what: String,
        [anchor, longconn]: [f64; 2],
        ratio: f64,
        target: f64,
        met: bool,
    ) -> Self {
        Row {
            what,
            anchor: format!("{anchor:.1} s"),
            longconn: format!("{longconn:.1} s ({ratio:.2}x)"),
            target: format!("<= {target:.2}x the anchor"),
            met: yes_no(met).into(),
        }
    }

    /// A figure of the operator alone, with its target and whether it was met, if it has one.
    fn operator(what: &str, value: String, judged: Option<(String, bool)>) -> Self {
        let (target, met) = judged.map_or(("-".into(), "-"), |(target, met)| (target, yes_no(met)));
        Row {
            what: what.into(),
            anchor: "-".into(),
            longconn: value,
            target,
            met: met.into(),
        }
    }

    fn cells(&self) -> [&str; 5] {
        [
            &self.what,
            &self.anchor,
            &self.longconn,
            &self.target,
            &self.met,
        ]
    }
}

fn yes_no(met: bool) -> &'static str {
    if met { "yes" } else { "no" }
}

/// Left-aligned columns two spaces apart.
fn render(header: &Row, rows: &[Row]) -> String {
    let mut widths = [0usize; 5];
    for row in std::iter::once(header).chain(rows) {
        for (width, cell) in widths.iter_mut().zip(row.cells()) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows) {
        let line: Vec<String> = row
            .cells()
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "\
# HELP longconn_operator_reconciles Reconciles run.
# TYPE longconn_operator_reconciles counter
longconn_operator_reconciles_total 12
# HELP longconn_operator_api_requests Requests sent to the Kubernetes API server.
# TYPE longconn_operator_api_requests counter
longconn_operator_api_requests_total{method=\"Get\"} 40
longconn_operator_api_requests_total{method=\"Patch\"} 7
longconn_operator_api_requests_total{method=\"Post\"} 3.0
longconn_operator_lease_requests_total{method=\"Patch\"} 2
longconn_operator_rollout_phase{namespace=\"a\",name=\"b\",phase=\"None\"} 1
# EOF
";

    #[test]
    fn counters_are_read_by_method_from_the_exposition() {
        let counters = Counters::parse(METRICS);
        assert_eq!(counters.reconciles, 12);
        assert_eq!(
            counters.requests,
            BTreeMap::from([("GET".into(), 40), ("PATCH".into(), 9), ("POST".into(), 3)]),
            "the leader election's requests are the process's too"
        );
        assert_eq!(counters.total(), 52);
        assert_eq!(counters.writes(), 12);
    }

    #[test]
    fn counters_since_an_earlier_read_keep_only_what_moved() {
        let before = Counters::parse(METRICS);
        let after = Counters::parse(
            &METRICS
                .replace("} 40", "} 52")
                .replace("_total 12", "_total 15"),
        );
        let since = after.since(&before);
        assert_eq!(since.requests, BTreeMap::from([("GET".into(), 12)]));
        assert_eq!(since.reconciles, 3);
        assert_eq!(since.writes(), 0);
    }

    #[test]
    fn memory_is_read_from_proc_status_in_kib() {
        let status = "Name:\tlongconn-operator\nVmPeak:\t  900000 kB\nVmHWM:\t   40960 kB\nVmRSS:\t   30720 kB\n";
        assert_eq!(
            Memory::parse_status(status),
            Some(Memory {
                peak_bytes: 40 << 20,
                resident_bytes: 30 << 20
            })
        );
        assert_eq!(Memory::parse_status("Name:\tx\n"), None);
    }

    fn measured() -> Measured {
        Measured {
            count: 100,
            concurrency: 1,
            idle: Duration::from_secs(120),
            anchor: Phase {
                creates_seconds: 10.0,
                converged_seconds: 20.0,
            },
            bare_creates: Duration::from_secs(11),
            longconn: Phase {
                creates_seconds: 12.0,
                converged_seconds: 22.0,
            },
            converging: Counters {
                requests: BTreeMap::from([("GET".into(), 600), ("PATCH".into(), 400)]),
                reconciles: 250,
            },
            quiet_after: Some(Duration::from_millis(1500)),
            idle_counters: Counters {
                requests: BTreeMap::from([("GET".into(), 30), ("PATCH".into(), 12)]),
                reconciles: 0,
            },
            idle_lease_renewals: 12,
            memory: Memory {
                peak_bytes: 70 << 20,
                resident_bytes: 20 << 20,
            },
        }
    }

    #[test]
    fn the_report_judges_each_figure_against_its_target() {
        let report = Report::new(&measured());
        assert!((report.creates_ratio - 1.2).abs() < 1e-9);
        assert!((report.bare_creates_ratio - 1.1).abs() < 1e-9);
        assert!((report.converged_ratio - 1.1).abs() < 1e-9);
        assert!((report.converging_requests_per_service - 10.0).abs() < 1e-9);
        assert!((report.converging_reconciles_per_service - 2.5).abs() < 1e-9);
        // 42 requests over 2 minutes for 100 services.
        assert!((report.idle_requests_per_service_per_minute - 0.21).abs() < 1e-9);
        assert_eq!(report.idle_writes, 12);
        assert_eq!(report.idle_writes_besides_lease, 0);
        assert_eq!(
            report.met,
            Met {
                creates: false,
                converged: true,
                converging_requests: true,
                idle_requests: true,
                idle_writes: true,
                peak_rss: false,
                settled_rss: true,
            }
        );
    }

    #[test]
    fn the_table_puts_the_target_beside_each_figure() {
        let table = Report::new(&measured()).table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 12, "{table}");
        assert!(lines[0].contains("Deployments (anchor)") && lines[0].contains("target"));
        let creates = lines[1];
        for cell in [
            "creates of all 100",
            "10.0 s",
            "12.0 s (1.20x)",
            "<= 1.00x the anchor",
            "no",
        ] {
            assert!(creates.contains(cell), "{creates:?} lacks {cell:?}");
        }
        let bare = lines[2];
        for cell in ["creates of all 100, no operator running", "11.0 s (1.10x)"] {
            assert!(bare.contains(cell), "{bare:?} lacks {cell:?}");
        }
        assert!(lines[4].contains("1.5 s"), "{}", lines[4]);
        assert!(
            lines[5].contains("10.00 (GET 6.00, PATCH 4.00)"),
            "{}",
            lines[5]
        );
        assert!(
            lines[10].contains("70.0 MiB") && lines[10].ends_with("no"),
            "{}",
            lines[10]
        );
    }
}
