//! The gateway's Prometheus metrics, served as OpenMetrics text on the admin port.
//!
//! Names follow `longconn_gateway_<what>_<unit>`; every `reason`, `direction`, `state` and
//! `outcome` label takes its values from a closed enum in this module, so no series can be
//! created from input.

use std::fmt::Write as _;

use longconn_drain_api::{DrainState, RebalanceState};
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Why a session ended (label `reason` of `longconn_gateway_sessions_closed_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client started the close handshake.
    ClientClose,
    /// The upstream app started the close handshake and the client completed it.
    UpstreamClose,
    /// The client's connection ended without a close frame.
    ClientDisconnect,
    /// The client did not answer pings in time.
    HeartbeatTimeout,
    /// The client took none of the bytes sent to it for the heartbeat interval plus timeout.
    WriteStalled,
    /// No data message for the idle timeout.
    IdleTimeout,
    /// The client broke the protocol (close 1002).
    ProtocolError,
    /// The client sent a message over the limit (close 1009).
    MessageTooBig,
    /// The client sent faster than its session limits allow (close 1008).
    RateLimited,
    /// Asked to move (a drain's Notify or a rebalance): the client completed the close handshake.
    Migrated,
    /// The drain deadline passed with the session still open.
    DrainDeadline,
    /// The deadline of the rebalance that selected the session passed with the session still
    /// open.
    RebalanceDeadline,
    /// The upstream failed or ended without a completed close handshake.
    UpstreamError,
}

impl CloseReason {
    /// Every reason, for pre-creating series.
    pub const ALL: [CloseReason; 13] = [
        CloseReason::ClientClose,
        CloseReason::UpstreamClose,
        CloseReason::ClientDisconnect,
        CloseReason::HeartbeatTimeout,
        CloseReason::WriteStalled,
        CloseReason::IdleTimeout,
        CloseReason::ProtocolError,
        CloseReason::MessageTooBig,
        CloseReason::RateLimited,
        CloseReason::Migrated,
        CloseReason::DrainDeadline,
        CloseReason::RebalanceDeadline,
        CloseReason::UpstreamError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClose => "client_close",
            CloseReason::UpstreamClose => "upstream_close",
            CloseReason::ClientDisconnect => "client_disconnect",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::WriteStalled => "write_stalled",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::MessageTooBig => "message_too_big",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::Migrated => "migrated",
            CloseReason::DrainDeadline => "drain_deadline",
            CloseReason::RebalanceDeadline => "rebalance_deadline",
            CloseReason::UpstreamError => "upstream_error",
        }
    }
}

/// Why a connection was refused before it became a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    Draining,
    MaxConnections,
    RateLimited,
    OriginForbidden,
    BadRequest,
    HandshakeTimeout,
    TlsError,
    UpstreamUnavailable,
    UpstreamRefused,
    /// Too many handshakes in progress, in total or from the client's address.
    HandshakeLimit,
    /// A plain HTTP request over `--max-http-connections`.
    HttpMaxConnections,
    /// A plain HTTP request body over `--http-max-body-bytes`.
    BodyTooLarge,
    /// A connection without the PROXY header `--proxy-protocol` asks for, or with a bad one.
    ProxyProtocol,
}

impl RejectReason {
    pub const ALL: [RejectReason; 13] = [
        RejectReason::Draining,
        RejectReason::MaxConnections,
        RejectReason::RateLimited,
        RejectReason::OriginForbidden,
        RejectReason::BadRequest,
        RejectReason::HandshakeTimeout,
        RejectReason::TlsError,
        RejectReason::UpstreamUnavailable,
        RejectReason::UpstreamRefused,
        RejectReason::HandshakeLimit,
        RejectReason::HttpMaxConnections,
        RejectReason::BodyTooLarge,
        RejectReason::ProxyProtocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Draining => "draining",
            RejectReason::MaxConnections => "max_connections",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::OriginForbidden => "origin_forbidden",
            RejectReason::BadRequest => "bad_request",
            RejectReason::HandshakeTimeout => "handshake_timeout",
            RejectReason::TlsError => "tls_error",
            RejectReason::UpstreamUnavailable => "upstream_unavailable",
            RejectReason::UpstreamRefused => "upstream_refused",
            RejectReason::HandshakeLimit => "handshake_limit",
            RejectReason::HttpMaxConnections => "http_max_connections",
            RejectReason::BodyTooLarge => "body_too_large",
            RejectReason::ProxyProtocol => "proxy_protocol",
        }
    }
}

/// Direction of relayed traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    ClientToUpstream,
    UpstreamToClient,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::ClientToUpstream => "client_to_upstream",
            Direction::UpstreamToClient => "upstream_to_client",
        }
    }
}

macro_rules! label_value {
    ($($t:ty),*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
                encoder.write_str(self.as_str())
            }
        }
    )*};
}

/// Drain state as a label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StateValue(pub DrainState);

impl StateValue {
    fn as_str(self) -> &'static str {
        match self.0 {
            DrainState::Serving => "serving",
            DrainState::Draining => "draining",
            DrainState::Drained => "drained",
        }
    }
}

/// Rebalance state as a label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RebalanceStateValue(pub RebalanceState);

impl RebalanceStateValue {
    fn as_str(self) -> &'static str {
        match self.0 {
            RebalanceState::Idle => "idle",
            RebalanceState::Moving => "moving",
            RebalanceState::Done => "done",
        }
    }
}

/// How a session a rebalance selected left it (label `outcome` of
/// `longconn_gateway_sessions_rebalanced_total`): the buckets of the rebalance report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RebalanceOutcome {
    Moved,
    ClosedByClient,
    Dropped,
    TakenByDrain,
}

impl RebalanceOutcome {
    pub const ALL: [RebalanceOutcome; 4] = [
        RebalanceOutcome::Moved,
        RebalanceOutcome::ClosedByClient,
        RebalanceOutcome::Dropped,
        RebalanceOutcome::TakenByDrain,
    ];

    fn as_str(self) -> &'static str {
        match self {
            RebalanceOutcome::Moved => "moved",
            RebalanceOutcome::ClosedByClient => "closed_by_client",
            RebalanceOutcome::Dropped => "dropped",
            RebalanceOutcome::TakenByDrain => "taken_by_drain",
        }
    }
}

/// Result of a TLS reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReloadResult {
    Success,
    Error,
}

impl ReloadResult {
    fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Error => "error",
        }
    }
}

label_value!(
    CloseReason,
    RejectReason,
    Direction,
    StateValue,
    RebalanceStateValue,
    RebalanceOutcome,
    ReloadResult
);

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: CloseReason,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RejectLabel {
    pub reason: RejectReason,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: Direction,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StateLabel {
    pub state: StateValue,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RebalanceStateLabel {
    pub state: RebalanceStateValue,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: RebalanceOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: ReloadResult,
}

/// Handles to every metric, cheap to clone (each is an `Arc` inside).
#[derive(Clone, Debug)]
pub struct Metrics {
    pub sessions_active: Gauge,
    pub sessions_opened: Counter,
    pub sessions_closed: Family<ReasonLabel, Counter>,
    pub connections_active: Gauge,
    pub messages_c2u: Counter,
    pub messages_u2c: Counter,
    pub bytes_c2u: Counter,
    pub bytes_u2c: Counter,
    pub handshake_rejections: Family<RejectLabel, Counter>,
    pub http_requests: Counter,
    pub session_duration: Histogram,
    pub drain_state: Family<StateLabel, Gauge>,
    pub cert_expiry: Gauge,
    pub tls_reloads: Family<ResultLabel, Counter>,
    pub latency: Latency,
    pub http_idle_timeouts: Counter,
}

/// Latency histograms, in seconds.
#[derive(Clone, Debug)]
pub struct Latency {
    /// From accept to the 101 sent, TLS included, for each session opened.
    pub handshake: Histogram,
    /// Connecting to the app.
    pub upstream_connect: Histogram,
    /// From the upgrade request sent to the app until its response head.
    pub upstream_upgrade: Histogram,
    /// From a heartbeat ping sent until its pong.
    pub ping_rtt: Histogram,
    /// Plain HTTP: from the request head read until the app's response head.
    pub http_first_byte: Histogram,
}

/// Bucket bounds of the latency histograms: 0.5 ms to 60 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

impl Latency {
    fn new() -> Latency {
        let h = || Histogram::new(LATENCY_BUCKETS);
        Latency {
            handshake: h(),
            upstream_connect: h(),
            upstream_upgrade: h(),
            ping_rtt: h(),
            http_first_byte: h(),
        }
    }

    fn register(&self, reg: &mut Registry) {
        let g = "longconn_gateway";
        for (name, help, h) in [
            (
                format!("{g}_handshake_duration_seconds"),
                "From accept to the 101 sent (TLS handshake included), per session opened",
                &self.handshake,
            ),
            (
                format!("{g}_upstream_connect_duration_seconds"),
                "Time to connect to the app",
                &self.upstream_connect,
            ),
            (
                format!("{g}_upstream_upgrade_duration_seconds"),
                "From the upgrade request sent to the app until its response head",
                &self.upstream_upgrade,
            ),
            (
                format!("{g}_ping_rtt_seconds"),
                "From a heartbeat ping sent to a client until its pong",
                &self.ping_rtt,
            ),
            (
                format!("{g}_http_first_byte_seconds"),
                "Plain HTTP: from the request head read until the app's response head",
                &self.http_first_byte,
            ),
        ] {
            reg.register(name, help, h.clone());
        }
    }
}

impl Metrics {
    /// Creates the metrics and registers them in a new registry.
    pub fn new() -> (Metrics, Registry) {
        let mut reg = Registry::default();
        let messages = Family::<DirectionLabel, Counter>::default();
        let bytes = Family::<DirectionLabel, Counter>::default();
        // One statement per series: a `get_or_create` guard lives until the end of its statement,
        // and a second call for a new key in the same statement would wait for it forever.
        let counter = |family: &Family<DirectionLabel, Counter>, direction| {
            family.get_or_create(&DirectionLabel { direction }).clone()
        };
        let messages_c2u = counter(&messages, Direction::ClientToUpstream);
        let messages_u2c = counter(&messages, Direction::UpstreamToClient);
        let bytes_c2u = counter(&bytes, Direction::ClientToUpstream);
        let bytes_u2c = counter(&bytes, Direction::UpstreamToClient);
        let m = Metrics {
            sessions_active: Gauge::default(),
            sessions_opened: Counter::default(),
            sessions_closed: Family::default(),
            connections_active: Gauge::default(),
            messages_c2u,
            messages_u2c,
            bytes_c2u,
            bytes_u2c,
            handshake_rejections: Family::default(),
            http_requests: Counter::default(),
            session_duration: Histogram::new([
                0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
            ]),
            drain_state: Family::default(),
            cert_expiry: Gauge::default(),
            tls_reloads: Family::default(),
            latency: Latency::new(),
            http_idle_timeouts: Counter::default(),
        };
        for reason in CloseReason::ALL {
            let _ = m.sessions_closed.get_or_create(&ReasonLabel { reason });
        }
        for reason in RejectReason::ALL {
            let _ = m
                .handshake_rejections
                .get_or_create(&RejectLabel { reason });
        }
        m.set_drain_state(DrainState::Serving);
        let g = "longconn_gateway";
        reg.register(
            format!("{g}_sessions_active"),
            "WebSocket sessions open now",
            m.sessions_active.clone(),
        );
        reg.register(
            format!("{g}_sessions_opened"),
            "WebSocket sessions opened",
            m.sessions_opened.clone(),
        );
        reg.register(
            format!("{g}_sessions_closed"),
            "WebSocket sessions closed, by reason",
            m.sessions_closed.clone(),
        );
        reg.register(
            format!("{g}_connections_active"),
            "Client connections open now, sessions and handshakes included",
            m.connections_active.clone(),
        );
        reg.register(
            format!("{g}_messages"),
            "WebSocket data messages relayed, by direction",
            messages,
        );
        reg.register(
            format!("{g}_relayed_bytes"),
            "WebSocket bytes relayed, by direction",
            bytes,
        );
        reg.register(
            format!("{g}_handshake_rejections"),
            "Connections refused before a session started, by reason",
            m.handshake_rejections.clone(),
        );
        reg.register(
            format!("{g}_http_requests"),
            "Plain HTTP requests proxied",
            m.http_requests.clone(),
        );
        reg.register(
            format!("{g}_session_duration_seconds"),
            "Duration of ended WebSocket sessions",
            m.session_duration.clone(),
        );
        reg.register(
            format!("{g}_drain_state"),
            "1 for the current drain state",
            m.drain_state.clone(),
        );
        reg.register(
            format!("{g}_certificate_expiry_timestamp_seconds"),
            "notAfter of the serving certificate, Unix seconds (0 without TLS)",
            m.cert_expiry.clone(),
        );
        reg.register(
            format!("{g}_tls_reloads"),
            "Certificate reload attempts, by result",
            m.tls_reloads.clone(),
        );
        reg.register(
            format!("{g}_http_idle_timeouts"),
            "Plain HTTP exchanges ended by --http-idle-timeout",
            m.http_idle_timeouts.clone(),
        );
        m.latency.register(&mut reg);
        reg.register_collector(Box::new(crate::fds::ProcessCollector::started_now()));
        (m, reg)
    }

    /// Counts a refused connection.
    pub fn reject(&self, reason: RejectReason) {
        self.handshake_rejections
            .get_or_create(&RejectLabel { reason })
            .inc();
    }

    /// Counts an ended session.
    pub fn closed(&self, reason: CloseReason, seconds: f64) {
        self.sessions_closed
            .get_or_create(&ReasonLabel { reason })
            .inc();
        self.session_duration.observe(seconds);
    }

    /// Marks `state` as the current drain state.
    pub fn set_drain_state(&self, state: DrainState) {
        let all = [
            DrainState::Serving,
            DrainState::Draining,
            DrainState::Drained,
        ];
        mark_current(&self.drain_state, all, state, |s| StateLabel {
            state: StateValue(s),
        });
    }
}

/// Sets the series of `current` in `family` to 1 and those of the other states in `all` to 0.
fn mark_current<S: Copy + PartialEq, L: Clone + Eq + std::hash::Hash>(
    family: &Family<L, Gauge>,
    all: impl IntoIterator<Item = S>,
    current: S,
    label: impl Fn(S) -> L,
) {
    for s in all {
        family.get_or_create(&label(s)).set(i64::from(s == current));
    }
}

/// Series that only the drain coordinator updates, kept out of [`Metrics`]: every session's relay
/// holds a copy of that, where one more handle would cost every session 8 bytes.
#[derive(Clone, Debug, Default)]
pub struct DrainSeries {
    /// Sessions closed `migrated` whose client had declared an earlier move.
    pub sessions_moved_again: Counter,
    /// Sessions a rebalance selected, by how they left it.
    pub sessions_rebalanced: Family<OutcomeLabel, Counter>,
    /// 1 for the state of the last rebalance.
    pub rebalance_state: Family<RebalanceStateLabel, Gauge>,
}

impl DrainSeries {
    /// Creates the series and registers them in `reg`, beside those of [`Metrics::new`].
    pub fn register(reg: &mut Registry) -> DrainSeries {
        let s = DrainSeries::default();
        for outcome in RebalanceOutcome::ALL {
            let _ = s
                .sessions_rebalanced
                .get_or_create(&OutcomeLabel { outcome });
        }
        s.set_rebalance_state(RebalanceState::Idle);
        reg.register(
            "longconn_gateway_sessions_moved_again",
            "WebSocket sessions a drain or a rebalance moved (closed migrated) whose client declared an earlier move (Longconn-Session-Moves of 1 or more)",
            s.sessions_moved_again.clone(),
        );
        reg.register(
            "longconn_gateway_sessions_rebalanced",
            "WebSocket sessions a rebalance selected, by how they left it",
            s.sessions_rebalanced.clone(),
        );
        reg.register(
            "longconn_gateway_rebalance_state",
            "1 for the state of the last rebalance",
            s.rebalance_state.clone(),
        );
        s
    }

    /// Counts `n` selected sessions that left a rebalance by `outcome`.
    pub fn rebalanced(&self, outcome: RebalanceOutcome, n: u64) {
        self.sessions_rebalanced
            .get_or_create(&OutcomeLabel { outcome })
            .inc_by(n);
    }

    /// Marks `state` as the state of the last rebalance.
    pub fn set_rebalance_state(&self, state: RebalanceState) {
        let all = [
            RebalanceState::Idle,
            RebalanceState::Moving,
            RebalanceState::Done,
        ];
        mark_current(&self.rebalance_state, all, state, |s| RebalanceStateLabel {
            state: RebalanceStateValue(s),
        });
    }
}

/// Renders the registry as OpenMetrics text.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_named_after_the_gateway_but_the_standard_process_ones() {
        let (m, mut reg) = Metrics::new();
        DrainSeries::register(&mut reg);
        m.closed(CloseReason::Migrated, 2.0);
        m.reject(RejectReason::RateLimited);
        let text = render(&reg);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.starts_with("longconn_gateway_")
                    || [
                        "process_open_fds ",
                        "process_max_fds ",
                        "process_resident_memory_bytes ",
                        "process_start_time_seconds ",
                    ]
                    .iter()
                    .any(|p| line.starts_with(p)),
                "{line}"
            );
        }
        assert!(text.contains("process_open_fds "), "{text}");
        assert!(
            text.contains(r#"longconn_gateway_sessions_closed_total{reason="migrated"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("longconn_gateway_sessions_moved_again_total 0"),
            "{text}"
        );
        assert!(
            text.contains(r#"longconn_gateway_drain_state{state="serving"} 1"#),
            "{text}"
        );
        for series in [
            r#"longconn_gateway_sessions_rebalanced_total{outcome="moved"} 0"#,
            r#"longconn_gateway_sessions_rebalanced_total{outcome="taken_by_drain"} 0"#,
            r#"longconn_gateway_rebalance_state{state="idle"} 1"#,
            r#"longconn_gateway_rebalance_state{state="moving"} 0"#,
        ] {
            assert!(text.contains(series), "{series} in {text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn the_start_time_is_when_the_metrics_were_made_and_holds_across_scrapes() {
        let unix_now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_secs_f64()
        };
        let start_time = |text: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix("process_start_time_seconds "))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no process_start_time_seconds in {text}"))
        };
        let before = unix_now();
        let (_, reg) = Metrics::new();
        let after = unix_now();
        let first = start_time(&render(&reg));
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(start_time(&render(&reg)), first);
        assert!(
            before <= first && first <= after,
            "{before} <= {first} <= {after}"
        );
    }
}
