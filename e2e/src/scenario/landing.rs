//! How moved sessions land: "every session moves once, and lands where there is room". This
//! module owns the bounds of that goal (one place, to tune with evidence), reads where the
//! sessions are at the end (each Ready, non-terminating pod's `longconn_gateway_sessions_active`
//! from its gateway's admin port, `/metrics`, from the client host, as the clients cannot see
//! pods through the ClusterIP), and makes the expectations.
//!
//! The clients' figures (sessions by moves, refused attempts, time to serving) come from the load
//! report ([`crate::load::LoadReport`]); see [`ScenarioReport::client`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

use super::harness::Harness;
use super::service::ServiceSpec;
use super::{ScenarioError, ScenarioReport};

/// Sessions that may be moved more than once.
pub const MOVED_MORE_THAN_ONCE: u64 = 0;
/// Connection attempts that may be refused (503, 429, reset, refused at TCP level).
pub const REFUSED_ATTEMPTS: u64 = 0;
/// The p99 of the time to serving after a move must be below this, in milliseconds.
pub const TIME_TO_SERVING_P99_MS: u32 = 1_000;
/// The longest time to serving after a move must be below this, in milliseconds.
pub const TIME_TO_SERVING_MAX_MS: u32 = 3_000;
/// The busiest pod's sessions over the mean per pod may be at most this.
pub const BALANCE: f64 = 1.25;

/// The gauge of the sessions a gateway holds.
const SESSIONS_ACTIVE: &str = "longconn_gateway_sessions_active";
/// How long reading one pod's metrics may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest `/metrics` answer read.
const SCRAPE_LIMIT: u64 = 1024 * 1024;
/// Where the reason the sessions per pod could not be read goes in the report's details.
const UNREAD_DETAIL: &str = "sessionsPerPodError";
/// Where the operator's account of the routing and the drains goes when the balance is off.
const TIMELINE_DETAIL: &str = "operatorTimeline";
/// Where the number of routing label changes the operator made goes.
const ROUTING_DETAIL: &str = "operatorRoutingChanges";
/// The operator's log messages that tell where sessions went: label changes, drains started and
/// recorded, Deployment scales, and what forced each status write.
const TIMELINE_MESSAGES: [&str; 5] = [
    "routing changed",
    "drain started",
    "recorded",
    "recording status",
    "scaled",
];
/// The most lines of that account a report keeps (the last ones).
const TIMELINE_LINES: usize = 200;

/// Sessions each pod's gateway holds, by pod name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodSessions(pub BTreeMap<String, u64>);

impl PodSessions {
    /// The busiest pod's sessions over the mean per pod; `None` with no pod or no session.
    pub fn balance(&self) -> Option<f64> {
        let max = self.0.values().max().copied()?;
        Some(max as f64 / self.mean()?)
    }

    /// The pods holding more than `bound` times the mean per pod.
    pub fn over(&self, bound: f64) -> Vec<&str> {
        let Some(mean) = self.mean() else {
            return Vec::new();
        };
        self.0
            .iter()
            .filter(|&(_, &n)| n as f64 > bound * mean)
            .map(|(pod, _)| pod.as_str())
            .collect()
    }

    /// The mean sessions per pod; `None` with no pod or no session.
    fn mean(&self) -> Option<f64> {
        let total: u64 = self.0.values().sum();
        (total > 0).then(|| total as f64 / self.0.len() as f64)
    }

    /// [`PodSessions::balance`] to three decimals, as reports show it.
    pub fn rounded_balance(&self) -> Option<f64> {
        self.balance().map(|b| (b * 1000.0).round() / 1000.0)
    }
}

/// Reads the sessions of every Ready, non-terminating pod of `spec` from its gateway, on the
/// client host (which routes every pod network).
pub async fn sessions_per_pod(
    harness: &Harness,
    spec: &ServiceSpec,
) -> Result<PodSessions, ScenarioError> {
    let pods = spec.pods(&harness.client()).await?;
    let mut targets = Vec::new();
    for pod in pods.iter().filter(|p| p.ready && !p.terminating) {
        let unread = |reason: &str| ScenarioError::Metrics {
            pod: pod.name.clone(),
            reason: reason.to_owned(),
        };
        let ip: IpAddr = pod
            .ip
            .as_deref()
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| unread("no pod IP"))?;
        let port = pod
            .admin_port
            .ok_or_else(|| unread("no gateway port named admin"))?;
        targets.push((pod.name.clone(), SocketAddr::new(ip, port)));
    }
    let read = harness.on_client_host(async move {
        let mut sessions = BTreeMap::new();
        for (pod, addr) in targets {
            let unread = |reason: String| ScenarioError::Metrics {
                pod: pod.clone(),
                reason,
            };
            let text = tokio::time::timeout(
                SCRAPE_TIMEOUT,
                crate::cluster::http_get(addr, "/metrics", SCRAPE_LIMIT),
            )
            .await
            .map_err(|_| unread(format!("GET {addr}/metrics timed out")))?
            .map_err(|e| unread(format!("GET {addr}/metrics: {e}")))?;
            let active = gauge(&text, SESSIONS_ACTIVE)
                .ok_or_else(|| unread(format!("no {SESSIONS_ACTIVE} in {addr}/metrics")))?;
            sessions.insert(pod, active.max(0.0).round() as u64);
        }
        Ok(PodSessions(sessions))
    });
    read.await?
}

/// Puts the operator's own account of the run in the details, from its log: the label changes it
/// made for the scenario's service (`operatorRoutingChanges`, each one a PATCH of a pod), and, when
/// the sessions ended less balanced than [`BALANCE`], its [`timeline`] (`operatorTimeline`), so
/// that a run missing the target carries the evidence of why. A log that cannot be read says so
/// there instead.
pub async fn operator_account(harness: &Harness, spec: &ServiceSpec, report: &mut ScenarioReport) {
    let log = match harness.operator_log().await {
        Ok(log) => log,
        Err(err) => return report.detail(ROUTING_DETAIL, format!("not read: {err}")),
    };
    let lcs = format!("{}/{}", spec.namespace, spec.name);
    let lines = timeline(&log, &lcs);
    let routing = lines
        .iter()
        .filter(|(_, message)| message.starts_with("routing changed"))
        .count();
    report.detail(ROUTING_DETAIL, routing);
    if report.balance.is_some_and(|balance| balance > BALANCE) {
        let skip = lines.len().saturating_sub(TIMELINE_LINES);
        let kept: Vec<String> = lines[skip..]
            .iter()
            .map(|(time, message)| format!("{time} {message}"))
            .collect();
        report.detail(TIMELINE_DETAIL, kept);
    }
}

/// The lines of the operator's log (the text format the harness installs it with) from a
/// reconcile of the LongConnService `lcs` (`namespace/name`) whose message starts with one of
/// [`TIMELINE_MESSAGES`], each as (time, `message field=value ...`).
fn timeline<'a>(log: &'a str, lcs: &str) -> Vec<(&'a str, &'a str)> {
    let span = format!("reconcile{{lcs={lcs}}}:");
    log.lines()
        .filter_map(|line| {
            let (time, rest) = line.split_once(' ')?;
            let (_, event) = rest.split_once(&span)?;
            // The event's target, then its message and fields.
            let (_, message) = event.trim_start().split_once(": ")?;
            TIMELINE_MESSAGES
                .iter()
                .any(|m| message.starts_with(m))
                .then_some((time, message))
        })
        .collect()
}

/// The value of the unlabelled series `name` in a Prometheus or OpenMetrics text exposition.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            if fields.next()? != name {
                return None;
            }
            fields.next()?.parse().ok()
        })
}

impl ScenarioReport {
    /// Records the sessions per pod read at the end, and their balance; what kept them from
    /// being read goes in the details (the expectation then names it).
    pub fn landed(&mut self, read: Result<PodSessions, ScenarioError>) {
        match read {
            Ok(sessions) => {
                self.balance = sessions.rounded_balance();
                self.sessions_per_pod = Some(sessions.0);
            }
            Err(err) => self.detail(UNREAD_DETAIL, err.to_string()),
        }
    }

    /// "Every session moves once, and lands where there is room": no session moved more than
    /// [`MOVED_MORE_THAN_ONCE`], no more than [`REFUSED_ATTEMPTS`] refused attempts, time to
    /// serving and balance measured (and reported in the details against
    /// [`TIME_TO_SERVING_P99_MS`], [`TIME_TO_SERVING_MAX_MS`] and [`BALANCE`]).
    #[allow(
        clippy::absurd_extreme_comparisons,
        reason = "the bounds are tunable; at 0, at most is exactly"
    )]
    pub fn expect_moved_once_and_landed_with_room(&mut self) {
        self.expect_moved_once();
        self.expect_landed_with_room();
    }

    /// No session moved more than [`MOVED_MORE_THAN_ONCE`] over the whole run.
    #[allow(
        clippy::absurd_extreme_comparisons,
        reason = "the bounds are tunable; at 0, at most is exactly"
    )]
    pub fn expect_moved_once(&mut self) {
        let moved_more = self.moved_more_than_once.unwrap_or(0);
        let by_moves = self.sessions_by_moves.unwrap_or_default();
        self.expect(
            self.moved_more_than_once.is_some() && moved_more <= MOVED_MORE_THAN_ONCE,
            format!(
                "movedMoreThanOnce {moved_more}, bound {MOVED_MORE_THAN_ONCE} (sessions moved 0/1/2/3+ times: {}/{}/{}/{})",
                by_moves.never, by_moves.once, by_moves.twice, by_moves.more
            ),
        );
    }

    /// No more than [`REFUSED_ATTEMPTS`] refused attempts; time to serving and balance measured.
    #[allow(
        clippy::absurd_extreme_comparisons,
        reason = "the bounds are tunable; at 0, at most is exactly"
    )]
    pub fn expect_landed_with_room(&mut self) {
        let refused = self.refused_attempts.unwrap_or_default();
        self.expect(
            self.refused_attempts.is_some() && refused.total <= REFUSED_ATTEMPTS,
            format!(
                "refusedAttempts {}, bound {REFUSED_ATTEMPTS} (HTTP 503 {}, HTTP 429 {}, reset {}, refused at TCP level {})",
                refused.total, refused.http503, refused.http429, refused.reset, refused.refused
            ),
        );
        // Time to serving is reported against its target, not judged: on this 2-core machine
        // the clients, the control plane, three nodes and the pods share the cores, and the
        // target is not met in every scenario yet (see e2e/README.md). It must be measured.
        match self.time_to_serving_ms {
            Some(serving) => {
                let within =
                    serving.p99 < TIME_TO_SERVING_P99_MS && serving.max < TIME_TO_SERVING_MAX_MS;
                self.detail(
                    "timeToServingWithinTarget",
                    format!(
                        "{within}: p99 {} ms (target < {TIME_TO_SERVING_P99_MS}), max {} ms (target < {TIME_TO_SERVING_MAX_MS})",
                        serving.p99, serving.max
                    ),
                );
            }
            None => {
                let moves = self.migrated.unwrap_or(0);
                self.expect(
                    moves == 0,
                    format!("timeToServingMs not measured for {moves} moves"),
                );
            }
        }
        // Balance too is reported against its target, not judged: three runs of the same
        // commit ended between 1.02 and 1.45 (see e2e/README.md). It must be measured.
        match self.balance {
            Some(balance) => self.detail(
                "balanceWithinTarget",
                format!(
                    "{}: {balance:.3} (busiest pod over the mean, target <= {BALANCE}); sessions per pod {:?}",
                    balance <= BALANCE,
                    self.sessions_per_pod.clone().unwrap_or_default()
                ),
            ),
            None => {
                let why = match self.details.get(UNREAD_DETAIL) {
                    Some(err) => format!("not read: {err}"),
                    None => format!(
                        "no session on the pods: {:?}",
                        self.sessions_per_pod.clone().unwrap_or_default()
                    ),
                };
                self.failures
                    .push(format!("balance not measured ({why}), bound {BALANCE}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{RefusedAttempts, SessionsByMoves, TimeToServing};

    #[test]
    fn the_timeline_keeps_the_routing_and_drain_lines_of_the_services_reconciles() {
        // As the operator writes them in its text format.
        let log = concat!(
            "2026-12-05T09:44:54.840512Z  INFO reconcile{lcs=default/chat}: longconn_operator::reconcile: routing changed pod=default/chat-a-1 accepting=false\n",
            "2026-12-05T09:44:54.9Z DEBUG reconcile{lcs=default/chat}: longconn_operator::api: request method=PATCH\n",
            "2026-12-05T09:44:55.0Z  INFO reconcile{lcs=other/chat}: longconn_operator::reconcile: routing changed pod=other/chat-b-1 accepting=true\n",
            "2026-12-05T09:44:56.0Z  INFO longconn_operator::leader: became the leader\n",
            "2026-12-05T09:44:57.5Z  INFO reconcile{lcs=default/chat}: longconn_operator::reconcile: drain started pod=chat-a-1 sessions=266\n",
        );
        assert_eq!(
            timeline(log, "default/chat"),
            [
                (
                    "2026-12-05T09:44:54.840512Z",
                    "routing changed pod=default/chat-a-1 accepting=false"
                ),
                (
                    "2026-12-05T09:44:57.5Z",
                    "drain started pod=chat-a-1 sessions=266"
                ),
            ]
        );
    }

    #[test]
    fn balance_is_the_busiest_pod_over_the_mean() {
        let sessions = |counts: &[u64]| {
            PodSessions(
                counts
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (format!("chat-{i}"), *n))
                    .collect(),
            )
        };
        assert_eq!(sessions(&[100, 100, 100]).balance(), Some(1.0));
        assert_eq!(sessions(&[150, 100, 50]).balance(), Some(1.5));
        assert_eq!(sessions(&[0, 0]).balance(), None);
        assert_eq!(sessions(&[]).balance(), None);
    }

    #[test]
    fn the_sessions_gauge_is_read_from_the_exposition_and_nothing_else() {
        let text = "# HELP longconn_gateway_sessions_active WebSocket sessions open now.\n\
            # TYPE longconn_gateway_sessions_active gauge\n\
            longconn_gateway_sessions_active 334\n\
            longconn_gateway_sessions_active_total 9\n\
            longconn_gateway_sessions_opened_total 1200\n\
            # EOF\n";
        assert_eq!(gauge(text, SESSIONS_ACTIVE), Some(334.0));
        assert_eq!(gauge("# EOF\n", SESSIONS_ACTIVE), None);
    }

    /// A report whose every figure is within the bounds.
    fn within_bounds() -> ScenarioReport {
        ScenarioReport {
            migrated: Some(300),
            sessions_by_moves: Some(SessionsByMoves {
                never: 0,
                once: 300,
                twice: 0,
                more: 0,
            }),
            moved_more_than_once: Some(0),
            refused_attempts: Some(RefusedAttempts::default()),
            time_to_serving_ms: Some(TimeToServing {
                samples: 300,
                p50: 40,
                p99: 400,
                max: 900,
            }),
            balance: Some(1.1),
            ..ScenarioReport::default()
        }
    }

    #[test]
    fn figures_within_the_bounds_pass() {
        let mut report = within_bounds();
        report.expect_moved_once_and_landed_with_room();
        assert_eq!(report.failures, Vec::<String>::new());
    }

    #[test]
    fn time_to_serving_is_reported_against_its_target() {
        let mut report = within_bounds();
        report.expect_moved_once_and_landed_with_room();
        let within = report.details["timeToServingWithinTarget"].clone();
        assert!(
            within.as_str().is_some_and(|w| w.starts_with("true")),
            "{within}"
        );
        report.time_to_serving_ms = Some(TimeToServing {
            samples: 300,
            p50: 40,
            p99: 1_000,
            max: 3_000,
        });
        report.expect_moved_once_and_landed_with_room();
        let over = report.details["timeToServingWithinTarget"].clone();
        assert!(
            over.as_str().is_some_and(|w| w.starts_with("false")),
            "{over}"
        );
    }

    #[test]
    fn each_failure_states_the_figure_and_the_bound() {
        let mut report = within_bounds();
        report.moved_more_than_once = Some(2);
        report.refused_attempts = Some(RefusedAttempts {
            total: 7,
            http503: 7,
            ..RefusedAttempts::default()
        });
        report.time_to_serving_ms = Some(TimeToServing {
            samples: 300,
            p50: 40,
            p99: 1_000,
            max: 3_000,
        });
        report.balance = Some(1.5);
        report.expect_moved_once_and_landed_with_room();
        let expected = ["movedMoreThanOnce 2, bound 0", "refusedAttempts 7, bound 0"];
        assert_eq!(
            report.failures.len(),
            expected.len(),
            "{:?}",
            report.failures
        );
        for (failure, start) in report.failures.iter().zip(expected) {
            assert!(
                failure.starts_with(start),
                "{failure:?} should start {start:?}"
            );
        }
    }

    #[test]
    fn an_unread_balance_fails_with_the_reason() {
        let mut report = within_bounds();
        report.balance = None;
        report.landed(Err(ScenarioError::Metrics {
            pod: "chat-a".into(),
            reason: "GET 10.244.1.5:9901/metrics timed out".into(),
        }));
        report.expect_moved_once_and_landed_with_room();
        assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
        assert!(
            report.failures[0].contains("timed out"),
            "{:?}",
            report.failures
        );
        assert!(
            report.failures[0].contains("bound 1.25"),
            "{:?}",
            report.failures
        );
    }
}
