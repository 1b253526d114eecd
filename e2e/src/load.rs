//! Load clients: N WebSocket sessions to a Service, each checking every echo and surviving drains.
//!
//! Connections go where [`LoadOptions::route`] says: to the Service's ClusterIP, which kube-proxy
//! translates to a pod as for any client ([`Route::ClusterIp`], from a host that routes the
//! Service range to a node), or straight to a pod ([`Route::Endpoints`], for a test that must
//! know which pod served a session): the Service's EndpointSlices (label
//! `kubernetes.io/service-name`) are re-listed every second and each new connection goes
//! round-robin to one of the currently Ready, non-terminating endpoints, on the slice port named
//! [`LoadOptions::port_name`]. Either way the first connections wait for a Ready endpoint.
//! Connections are `wss`, verified against `ca.crt` of Secret `<service>-tls` with server name
//! `<service>.<namespace>.svc`. Only addresses inside [`LoadOptions::allowed`] are ever dialled.
//!
//! A session sends text messages `"<session>:<seq>"` at a fixed rate and expects them back in
//! order. A close frame with code 1012 or 1001 completes the close handshake, counts the session
//! **migrated** once per close and reconnects it (same logical session) to a Ready endpoint,
//! resending the messages not yet echoed. Anything else (a reset, EOF without a close frame,
//! another close code, a missing or reordered echo, a reconnect that fails after bounded retries)
//! ends the session as **dropped**. A message is **lost** if it was sent and never echoed.
//!
//! Every upgrade request names its logical session (`Longconn-Session-Id: <run>-<session>`, the
//! run a random prefix) and how often it was moved so far (`Longconn-Session-Moves`), so a gateway
//! can tell a session that moves again. The client counts, per logical session, the **moves**
//! (close 1012/1001 followed by a reconnect) and reports sessions by moves; **refused attempts**
//! (upgrades answered HTTP 503 or 429, connections reset during the attempt or refused at TCP
//! level); and per move the **time to serving**, from the close frame to the echo of the first
//! message sent on the new connection.
//!
//! Some sessions may be set to ignore the server's close frames
//! ([`LoadOptions::close_ignoring`]), as broken clients do: such a session stops sending, never
//! answers the close and keeps its socket open until the server cuts it (counted
//! **force-closed**, the session ends) or the run ends. What it had sent and not yet seen echoed
//! is **abandoned**, not lost. Every count is also kept per endpoint (pod IP), so a test can tell
//! what happened on the pods it drained.
//!
//! [`start`] returns a [`RunningLoad`] whose sending window can be ended early
//! ([`RunningLoad::stop`]); [`run`] sends for the whole duration.

use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Serialize;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The most sessions one run may open.
pub const MAX_SESSIONS: usize = 5_000;
/// The longest a run may send for.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// The highest message rate per session.
pub const MAX_RATE: f64 = 100.0;
/// How long a message may wait for its echo before the session counts as dropped.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after the sending window sessions wait for the last echoes.
const SETTLE: Duration = Duration::from_secs(10);
/// How long the close handshake may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection attempt that takes this long is logged with the time of each of its steps.
const SLOW_CONNECT: Duration = Duration::from_millis(500);
/// Connection attempts per (re)connect before the session counts as dropped.
const CONNECT_ATTEMPTS: u32 = 20;
/// One connection attempt (TCP, TLS and WebSocket handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnects per session (a bound, far above what drains cause).
const MAX_RECONNECTS: u64 = 1_000;
/// Time-to-serving samples kept (one per move at most; 20 moves for each of [`MAX_SESSIONS`]),
/// 400 KB; the percentiles are of the first ones kept.
const MAX_SERVING_SAMPLES: usize = 100_000;
/// The upgrade request header naming the logical session.
pub const SESSION_ID_HEADER: &str = "longconn-session-id";
/// The upgrade request header with the moves of the session so far (decimal).
pub const SESSION_MOVES_HEADER: &str = "longconn-session-moves";

/// Failures setting up a load run (what happens to sessions is in the [`LoadReport`]).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The options are out of bounds.
    #[error("invalid load options: {0}")]
    Options(String),
    /// A call to the API server failed.
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// The Service's CA certificate is missing or unusable.
    #[error("CA of Secret {secret}: {reason}")]
    Ca { secret: String, reason: String },
    /// No Ready endpoint appeared in time.
    #[error("no Ready endpoint of Service {0} within 30 s")]
    NoEndpoints(String),
}

/// What a run does.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service (its EndpointSlices and Secret `<service>-tls`).
    pub service: String,
    /// The EndpointSlice port name to connect to; the first port when no port has it.
    pub port_name: String,
    /// Sessions to open (at most [`MAX_SESSIONS`]).
    pub sessions: usize,
    /// Messages per second per session (at most [`MAX_RATE`]).
    pub rate: f64,
    /// How long sessions send (at most [`MAX_DURATION`]); echoes get [`SETTLE`] more.
    pub duration: Duration,
    /// The IPv4 networks connections may go to, as (address, prefix length).
    pub allowed: Vec<(Ipv4Addr, u8)>,
    /// Print a progress line to stderr while running.
    pub progress: bool,
    /// How many of the sessions ignore the server's close frames: the first ones started, so
    /// round-robin spreads them evenly over the endpoints. They never answer and keep the
    /// socket open.
    pub close_ignoring: usize,
    /// Where connections go.
    pub route: Route,
}

/// Where a load client connects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Route {
    /// Straight to the Service's Ready endpoints, round-robin (counts per pod IP).
    #[default]
    Endpoints,
    /// To the Service's ClusterIP and port (counts under the ClusterIP).
    ClusterIp,
}

impl LoadOptions {
    /// Defaults for `service` in `namespace`: 10 sessions, 2 msg/s, 10 s, the `client` port,
    /// connections only to 10.244.0.0/16 and 127.0.0.0/8, no progress display.
    pub fn new(namespace: impl Into<String>, service: impl Into<String>) -> Self {
        LoadOptions {
            namespace: namespace.into(),
            service: service.into(),
            port_name: "client".into(),
            sessions: 10,
            rate: 2.0,
            duration: Duration::from_secs(10),
            allowed: vec![(Ipv4Addr::new(10, 244, 0, 0), 16), (Ipv4Addr::LOCALHOST, 8)],
            progress: false,
            close_ignoring: 0,
            route: Route::Endpoints,
        }
    }

    fn validate(&self) -> Result<(), LoadError> {
        if self.sessions == 0 || self.sessions > MAX_SESSIONS {
            return Err(LoadError::Options(format!(
                "sessions {} not in 1..={MAX_SESSIONS}",
                self.sessions
            )));
        }
        if !(self.rate > 0.0 && self.rate <= MAX_RATE) {
            return Err(LoadError::Options(format!(
                "rate {} not in (0, {MAX_RATE}]",
                self.rate
            )));
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return Err(LoadError::Options(format!(
                "duration {:?} not in (0, {MAX_DURATION:?}]",
                self.duration
            )));
        }
        if self.close_ignoring > self.sessions {
            return Err(LoadError::Options(format!(
                "close-ignoring sessions {} exceed sessions {}",
                self.close_ignoring, self.sessions
            )));
        }
        Ok(())
    }

    /// Whether session `id` ignores close frames: the first `close_ignoring` sessions do. (Every
    /// k-th session would put them all on one endpoint whenever k is a multiple of the endpoint
    /// count.)
    fn ignores_close(&self, id: u64) -> bool {
        id < self.close_ignoring as u64
    }

    fn allows(&self, ip: IpAddr) -> bool {
        let IpAddr::V4(ip) = ip else { return false };
        self.allowed.iter().any(|(net, len)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(*net) & mask
        })
    }
}

/// The outcome of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LoadReport {
    /// Logical sessions started.
    pub sessions_opened: u64,
    /// Close frames 1012/1001 answered (each followed by a reconnect of the same session).
    pub migrated: u64,
    /// Sessions that ended any other way than the client's own close at the end.
    pub dropped: u64,
    /// TCP+TLS+WebSocket connections established (first connects and reconnects).
    pub connections: u64,
    /// Distinct messages sent.
    pub messages_sent: u64,
    /// Distinct messages echoed back in order.
    pub messages_echoed: u64,
    /// Messages resent on a new connection because the old one closed before their echo.
    pub messages_resent: u64,
    /// Messages sent and never echoed.
    pub messages_lost: u64,
    /// Why sessions were dropped (first few, one line each).
    pub drop_reasons: Vec<String>,
    /// Sessions set to ignore the server's close frames.
    pub close_ignoring: u64,
    /// Close frames such sessions ignored.
    pub closes_ignored: u64,
    /// Close-ignoring sessions the server then cut (their socket ended without a handshake).
    pub force_closed: u64,
    /// Messages of close-ignoring sessions never echoed because they stopped at the close frame.
    pub messages_abandoned: u64,
    /// The longest a migrated session took to connect again, in milliseconds.
    pub slowest_reconnect_ms: u64,
    /// Connection attempts that failed (and were retried), by cause: `tcp`, `tls`, `timeout`,
    /// `handshake`, or `http <status>` (a draining gateway answers 503).
    pub connect_failures: BTreeMap<String, u64>,
    /// Logical sessions by how often they were moved (close 1012/1001, then a reconnect).
    pub sessions_by_moves: SessionsByMoves,
    /// Sessions moved twice or more.
    pub moved_more_than_once: u64,
    /// Connection attempts refused, by kind (also counted in `connect_failures` by cause).
    pub refused_attempts: RefusedAttempts,
    /// From a move's close frame to the echo of the first message sent on the new connection;
    /// `None` before the first such echo.
    pub time_to_serving_ms: Option<TimeToServing>,
    /// The same counts per endpoint (pod IP) the connections went to.
    pub endpoints: BTreeMap<String, EndpointReport>,
}

impl LoadReport {
    /// The reports of several runs against one Service as one: counts added up (per cause, per
    /// endpoint), the first 10 drop reasons, the slowest reconnect of any run. The times to
    /// serving cannot be pooled from percentiles, so each percentile is the highest of the
    /// runs' (an upper bound), with their samples added up.
    pub fn combined(reports: &[LoadReport]) -> LoadReport {
        let mut all = LoadReport::default();
        for report in reports {
            all.sessions_opened += report.sessions_opened;
            all.migrated += report.migrated;
            all.dropped += report.dropped;
            all.connections += report.connections;
            all.messages_sent += report.messages_sent;
            all.messages_echoed += report.messages_echoed;
            all.messages_resent += report.messages_resent;
            all.messages_lost += report.messages_lost;
            all.drop_reasons.extend(report.drop_reasons.iter().cloned());
            all.close_ignoring += report.close_ignoring;
            all.closes_ignored += report.closes_ignored;
            all.force_closed += report.force_closed;
            all.messages_abandoned += report.messages_abandoned;
            all.slowest_reconnect_ms = all.slowest_reconnect_ms.max(report.slowest_reconnect_ms);
            for (cause, n) in &report.connect_failures {
                *all.connect_failures.entry(cause.clone()).or_default() += n;
            }
            let moves = report.sessions_by_moves;
            all.sessions_by_moves.never += moves.never;
            all.sessions_by_moves.once += moves.once;
            all.sessions_by_moves.twice += moves.twice;
            all.sessions_by_moves.more += moves.more;
            let refused = report.refused_attempts;
            all.refused_attempts.total += refused.total;
            all.refused_attempts.http503 += refused.http503;
            all.refused_attempts.http429 += refused.http429;
            all.refused_attempts.reset += refused.reset;
            all.refused_attempts.refused += refused.refused;
            all.refused_attempts.reconnecting += refused.reconnecting;
            all.time_to_serving_ms = match (all.time_to_serving_ms, report.time_to_serving_ms) {
                (Some(a), Some(b)) => Some(TimeToServing {
                    samples: a.samples + b.samples,
                    p50: a.p50.max(b.p50),
                    p99: a.p99.max(b.p99),
                    max: a.max.max(b.max),
                }),
                (a, b) => a.or(b),
            };
            for (endpoint, counts) in &report.endpoints {
                let sum = all.endpoints.entry(endpoint.clone()).or_default();
                sum.connections += counts.connections;
                sum.migrated += counts.migrated;
                sum.dropped += counts.dropped;
                sum.closes_ignored += counts.closes_ignored;
                sum.force_closed += counts.force_closed;
            }
        }
        all.drop_reasons.truncate(10);
        all.moved_more_than_once = all.sessions_by_moves.more_than_once();
        all
    }
}

/// Logical sessions by how often they were moved so far. The JSON keys are `0`, `1`, `2` and `3+`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SessionsByMoves {
    #[serde(rename = "0")]
    pub never: u64,
    #[serde(rename = "1")]
    pub once: u64,
    #[serde(rename = "2")]
    pub twice: u64,
    #[serde(rename = "3+")]
    pub more: u64,
}

impl SessionsByMoves {
    /// Sessions moved twice or more.
    pub fn more_than_once(&self) -> u64 {
        self.twice + self.more
    }
}

/// Connection attempts the other end refused (each retried): the upgrade answered HTTP 503 (a
/// draining or full gateway) or 429 (a rate limit), the connection reset during the attempt (TCP,
/// TLS or upgrade), or refused at TCP level (nothing listening, or no endpoint behind a
/// ClusterIP). Timeouts and other failures are in [`LoadReport::connect_failures`] only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RefusedAttempts {
    pub total: u64,
    pub http503: u64,
    pub http429: u64,
    pub reset: u64,
    /// Refused at TCP level (`ECONNREFUSED`).
    pub refused: u64,
    /// Of `total`, the attempts to reconnect a session that was moved; the others opened a
    /// session (a burst of first connections from one address can meet the gateways' per-IP
    /// rate limit, which a rollout has nothing to do with).
    pub reconnecting: u64,
}

impl RefusedAttempts {
    fn count(&mut self, refusal: Refusal, reconnecting: bool) {
        self.total += 1;
        self.reconnecting += u64::from(reconnecting);
        match refusal {
            Refusal::Http503 => self.http503 += 1,
            Refusal::Http429 => self.http429 += 1,
            Refusal::Reset => self.reset += 1,
            Refusal::Refused => self.refused += 1,
        }
    }
}

/// How a connection attempt was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Http503,
    Http429,
    Reset,
    Refused,
}

impl Refusal {
    /// The refusal an I/O error of an attempt shows, if it is one.
    fn of_io(err: &std::io::Error) -> Option<Refusal> {
        use std::io::ErrorKind;
        match err.kind() {
            ErrorKind::ConnectionRefused => Some(Refusal::Refused),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
                Some(Refusal::Reset)
            }
            _ => None,
        }
    }

    /// The refusal a failed WebSocket upgrade shows, if it is one.
    fn of_upgrade(err: &tokio_tungstenite::tungstenite::Error) -> Option<Refusal> {
        use tokio_tungstenite::tungstenite::Error;
        match err {
            Error::Http(response) => match response.status().as_u16() {
                503 => Some(Refusal::Http503),
                429 => Some(Refusal::Http429),
                _ => None,
            },
            Error::Io(err) => Refusal::of_io(err),
            _ => None,
        }
    }
}

/// Percentiles of the times to serving after a move, in whole milliseconds (nearest rank).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TimeToServing {
    /// Moves measured (at most one sample per move; a move whose new connection closed again
    /// before its first echo has none of its own: the next sample counts from its close frame).
    pub samples: u64,
    pub p50: u32,
    pub p99: u32,
    pub max: u32,
}

impl TimeToServing {
    /// The percentiles of `samples_ms` (`None` when empty); `measured` is how many moves were
    /// measured, kept or not.
    fn of(samples_ms: &[u32], measured: u64) -> Option<Self> {
        let mut sorted = samples_ms.to_vec();
        sorted.sort_unstable();
        let rank = |p: usize| {
            let index = (sorted.len() * p).div_ceil(100).saturating_sub(1);
            sorted.get(index).copied()
        };
        Some(TimeToServing {
            samples: measured,
            p50: rank(50)?,
            p99: rank(99)?,
            max: *sorted.last()?,
        })
    }
}

/// What happened on the connections to one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EndpointReport {
    /// Connections established to it.
    pub connections: u64,
    /// Sessions it asked to move (close 1012/1001, handshake completed).
    pub migrated: u64,
    /// Sessions dropped while connected to it.
    pub dropped: u64,
    /// Close frames it sent that close-ignoring sessions ignored.
    pub closes_ignored: u64,
    /// Close-ignoring sessions it cut.
    pub force_closed: u64,
}

#[derive(Default)]
struct Counters {
    opened: AtomicU64,
    migrated: AtomicU64,
    dropped: AtomicU64,
    connections: AtomicU64,
    sent: AtomicU64,
    echoed: AtomicU64,
    resent: AtomicU64,
    abandoned: AtomicU64,
    close_ignoring: AtomicU64,
    closes_ignored: AtomicU64,
    force_closed: AtomicU64,
    slowest_reconnect_ms: AtomicU64,
    connect_failures: Mutex<BTreeMap<String, u64>>,
    refused: Mutex<RefusedAttempts>,
    /// Sessions moved 0, 1, 2, 3 or more times so far.
    by_moves: [AtomicU64; 4],
    /// Moves whose time to serving was measured.
    serving_measured: AtomicU64,
    /// The first [`MAX_SERVING_SAMPLES`] times to serving, in milliseconds.
    serving_ms: Mutex<Vec<u32>>,
    reasons: Mutex<Vec<String>>,
    endpoints: Mutex<BTreeMap<IpAddr, EndpointReport>>,
}

impl Counters {
    fn report(&self) -> LoadReport {
        let sent = self.sent.load(Ordering::Relaxed);
        let echoed = self.echoed.load(Ordering::Relaxed);
        let abandoned = self.abandoned.load(Ordering::Relaxed);
        let [never, once, twice, more] =
            self.by_moves.each_ref().map(|n| n.load(Ordering::Relaxed));
        let by_moves = SessionsByMoves {
            never,
            once,
            twice,
            more,
        };
        let time_to_serving = self.serving_ms.lock().ok().and_then(|samples| {
            TimeToServing::of(&samples, self.serving_measured.load(Ordering::Relaxed))
        });
        LoadReport {
            sessions_opened: self.opened.load(Ordering::Relaxed),
            migrated: self.migrated.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            messages_sent: sent,
            messages_echoed: echoed,
            messages_resent: self.resent.load(Ordering::Relaxed),
            // Echoes are counted once per message and only in order, so what was sent and never
            // echoed (including by sessions cut off at the run's hard end) is the difference,
            // less what close-ignoring sessions abandoned on purpose.
            messages_lost: sent.saturating_sub(echoed).saturating_sub(abandoned),
            drop_reasons: self.reasons.lock().map(|r| r.clone()).unwrap_or_default(),
            close_ignoring: self.close_ignoring.load(Ordering::Relaxed),
            closes_ignored: self.closes_ignored.load(Ordering::Relaxed),
            force_closed: self.force_closed.load(Ordering::Relaxed),
            messages_abandoned: abandoned,
            slowest_reconnect_ms: self.slowest_reconnect_ms.load(Ordering::Relaxed),
            connect_failures: self
                .connect_failures
                .lock()
                .map(|f| f.clone())
                .unwrap_or_default(),
            sessions_by_moves: by_moves,
            moved_more_than_once: by_moves.more_than_once(),
            refused_attempts: self.refused.lock().map(|r| *r).unwrap_or_default(),
            time_to_serving_ms: time_to_serving,
            endpoints: self
                .endpoints
                .lock()
                .map(|e| {
                    e.iter()
                        .map(|(ip, r)| (ip.to_string(), r.clone()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// A logical session started (moved 0 times).
    fn on_open(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.by_moves[0].fetch_add(1, Ordering::Relaxed);
    }

    /// A session moved `before` times moved once more: it changes bucket unless it was already
    /// in the last one.
    fn on_move(&self, before: u32) {
        let bucket = |moves: u32| usize::try_from(moves).map_or(3, |m| m.min(3));
        let (from, to) = (bucket(before), bucket(before.saturating_add(1)));
        if from != to {
            self.by_moves[to].fetch_add(1, Ordering::Relaxed);
            self.by_moves[from].fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A connection attempt failed: counted by cause, and by kind when it was refused (and
    /// whether it reconnected a moved session).
    fn on_failed_attempt(&self, failure: &ConnectFailure, reconnecting: bool) {
        if let Ok(mut failures) = self.connect_failures.lock() {
            *failures.entry(failure.category.clone()).or_default() += 1;
        }
        if let Some(refusal) = failure.refusal
            && let Ok(mut refused) = self.refused.lock()
        {
            refused.count(refusal, reconnecting);
        }
    }

    /// A moved session is served again, `took` after the close frame that moved it.
    fn on_served(&self, took: Duration) {
        self.serving_measured.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut samples) = self.serving_ms.lock()
            && samples.len() < MAX_SERVING_SAMPLES
        {
            samples.push(u32::try_from(took.as_millis()).unwrap_or(u32::MAX));
        }
    }

    /// Counts one event on the connection to `addr`.
    fn on_endpoint(&self, addr: SocketAddr, count: impl FnOnce(&mut EndpointReport)) {
        if let Ok(mut endpoints) = self.endpoints.lock() {
            count(endpoints.entry(addr.ip()).or_default());
        }
    }

    /// The progress line; while running, messages not yet echoed are "in flight", at the end
    /// they are "lost".
    fn line(&self, elapsed: Duration, done: bool) -> String {
        let r = self.report();
        let ignoring = if r.close_ignoring > 0 {
            format!(
                "  closes ignored {}  force-closed {}",
                r.closes_ignored, r.force_closed
            )
        } else {
            String::new()
        };
        format!(
            "load {:>5.1}s  sessions {}  connections {}  migrated {}  moved>1 {}  refused {}  dropped {}  sent {}  echoed {}  {} {}{ignoring}",
            elapsed.as_secs_f64(),
            r.sessions_opened,
            r.connections,
            r.migrated,
            r.moved_more_than_once,
            r.refused_attempts.total,
            r.dropped,
            r.messages_sent,
            r.messages_echoed,
            if done { "lost" } else { "in flight" },
            r.messages_lost
        )
    }
}

/// The Ready endpoints, kept fresh by a re-list every second, handed out round-robin.
struct Endpoints {
    addrs: RwLock<Vec<SocketAddr>>,
    next: AtomicUsize,
}

impl Endpoints {
    fn pick(&self) -> Option<SocketAddr> {
        let addrs = self.addrs.read().ok()?;
        if addrs.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        addrs.get(n % addrs.len()).copied()
    }
}

/// Where new connections may go now: the Ready endpoints, or, with [`Route::ClusterIp`], the
/// ClusterIP while the Service has a Ready endpoint.
async fn targets(
    slices: &Api<EndpointSlice>,
    services: &Api<Service>,
    options: &LoadOptions,
) -> Result<Vec<SocketAddr>, LoadError> {
    // Through the ClusterIP the pods are never dialled, so any Ready endpoint counts.
    let only_allowed = options.route == Route::Endpoints;
    let ready = ready_endpoints(slices, options, only_allowed).await?;
    if options.route == Route::Endpoints || ready.is_empty() {
        return Ok(ready);
    }
    let service = services
        .get(&options.service)
        .await
        .map_err(|source| LoadError::Kube {
            action: format!("get Service {}/{}", options.namespace, options.service),
            source,
        })?;
    let spec = service.spec.unwrap_or_default();
    let port = spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(options.port_name.as_str()))
        .or(spec.ports.iter().flatten().next())
        .and_then(|p| u16::try_from(p.port).ok());
    let ip = spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse::<IpAddr>().ok())
        .filter(|ip| options.allows(*ip));
    Ok(match (ip, port) {
        (Some(ip), Some(port)) => vec![SocketAddr::new(ip, port)],
        _ => Vec::new(),
    })
}

/// The Service's Ready, non-terminating endpoints; with `only_allowed`, only those inside
/// [`LoadOptions::allowed`].
async fn ready_endpoints(
    slices: &Api<EndpointSlice>,
    options: &LoadOptions,
    only_allowed: bool,
) -> Result<Vec<SocketAddr>, LoadError> {
    let list = slices
        .list(
            &ListParams::default()
                .labels(&format!("kubernetes.io/service-name={}", options.service)),
        )
        .await
        .map_err(|source| LoadError::Kube {
            action: format!(
                "list EndpointSlices of {}/{}",
                options.namespace, options.service
            ),
            source,
        })?;
    let mut addrs = Vec::new();
    for slice in list.items {
        let ports = slice.ports.unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| p.name.as_deref() == Some(options.port_name.as_str()))
            .or(ports.first())
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else { continue };
        for endpoint in slice.endpoints.into_iter().flatten() {
            let conditions = endpoint.conditions.unwrap_or_default();
            // A missing `ready` means ready (discovery/v1); terminating endpoints get no new
            // connections, as with kube-proxy.
            if conditions.ready == Some(false) || conditions.terminating == Some(true) {
                continue;
            }
            for address in endpoint.addresses {
                if let Ok(ip) = address.parse::<IpAddr>()
                    && (!only_allowed || options.allows(ip))
                {
                    addrs.push(SocketAddr::new(ip, port));
                }
            }
        }
    }
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

async fn tls_connector(
    client: &kube::Client,
    options: &LoadOptions,
) -> Result<tokio_rustls::TlsConnector, LoadError> {
    let name = format!("{}-tls", options.service);
    let secret = Api::<Secret>::namespaced(client.clone(), &options.namespace)
        .get(&name)
        .await
        .map_err(|source| LoadError::Kube {
            action: format!("get Secret {}/{name}", options.namespace),
            source,
        })?;
    let ca_err = |reason: String| LoadError::Ca {
        secret: format!("{}/{name}", options.namespace),
        reason,
    };
    let ca = secret
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .ok_or_else(|| ca_err("no key ca.crt".into()))?;
    connector_from_pem(&ca.0).map_err(ca_err)
}

/// A TLS client trusting only the certificates in `pem`.
fn connector_from_pem(pem: &[u8]) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| e.to_string())?;
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no certificate in ca.crt".into());
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Runs the load described by `options` and reports what happened to its sessions. Returns an
/// error only when the run could not start (bad options, no CA, no Ready endpoint in 30 s).
pub async fn run(client: kube::Client, options: LoadOptions) -> Result<LoadReport, LoadError> {
    Ok(start(client, options).await?.finish().await)
}

/// A load run under way: sessions send until [`RunningLoad::stop`] or the end of the duration,
/// whichever comes first. Dropping it ends every session at once.
pub struct RunningLoad {
    window: Arc<SendWindow>,
    counters: Arc<Counters>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningLoad {
    /// Ends the sending window now: sessions wait for their last echoes (at most 10 s), close
    /// and the run ends.
    pub fn stop(&self) {
        self.window.stop();
    }

    /// The counts so far (messages not yet echoed count as lost in it).
    pub fn report(&self) -> LoadReport {
        self.counters.report()
    }

    /// Waits for the run to end (within the duration plus about 20 s; sooner after
    /// [`RunningLoad::stop`]) and reports it.
    pub async fn finish(mut self) -> LoadReport {
        if let Some(task) = self.task.take()
            && let Err(err) = task.await
        {
            tracing::error!(%err, "the load task failed");
        }
        self.counters.report()
    }
}

impl Drop for RunningLoad {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// When sessions stop sending: the end of the duration, or earlier once stopped.
struct SendWindow {
    start: Instant,
    until_ms: AtomicU64,
}

impl SendWindow {
    fn new(start: Instant, duration: Duration) -> Self {
        Self {
            start,
            until_ms: AtomicU64::new(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    fn until(&self) -> Instant {
        self.start + Duration::from_millis(self.until_ms.load(Ordering::Relaxed))
    }

    fn stop(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.until_ms.fetch_min(now, Ordering::Relaxed);
    }
}

/// Starts the load described by `options`: returns once the CA is read and a Ready endpoint is
/// known, with the sessions starting in the background. Errors as [`run`].
pub async fn start(client: kube::Client, options: LoadOptions) -> Result<RunningLoad, LoadError> {
    options.validate()?;
    let connector = tls_connector(&client, &options).await?;
    let server_name =
        ServerName::try_from(format!("{}.{}.svc", options.service, options.namespace))
            .map_err(|e| LoadError::Options(format!("server name: {e}")))?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &options.namespace);
    let services: Api<Service> = Api::namespaced(client, &options.namespace);
    let first_deadline = Instant::now() + Duration::from_secs(30);
    let initial = loop {
        let addrs = targets(&slices, &services, &options).await?;
        if !addrs.is_empty() {
            break addrs;
        }
        if Instant::now() >= first_deadline {
            return Err(LoadError::NoEndpoints(format!(
                "{}/{}",
                options.namespace, options.service
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let endpoints = Arc::new(Endpoints {
        addrs: RwLock::new(initial),
        next: AtomicUsize::new(0),
    });
    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let window = Arc::new(SendWindow::new(start, options.duration));
    let shared = Arc::new(Shared {
        endpoints,
        counters: counters.clone(),
        connector,
        server_name,
        interval: Duration::from_secs_f64(1.0 / options.rate),
        window: window.clone(),
        run: run_prefix(),
    });
    let task = tokio::spawn(drive(shared, (slices, services), options, start));
    Ok(RunningLoad {
        window,
        counters,
        task: Some(task),
    })
}

/// Keeps the endpoints fresh, shows progress, and runs every session to its end (bounded by the
/// full duration plus the settle, close and connect timeouts).
async fn drive(
    shared: Arc<Shared>,
    (slices, services): (Api<EndpointSlice>, Api<Service>),
    options: LoadOptions,
    start: Instant,
) {
    let counters = shared.counters.clone();
    let hard_end = start + options.duration + SETTLE + CLOSE_TIMEOUT + CONNECT_TIMEOUT;

    // Refresh the endpoints every second until the run ends (bounded by `hard_end`).
    let refresher = {
        let endpoints = shared.endpoints.clone();
        let options = options.clone();
        AbortOnDrop(tokio::spawn(async move {
            while Instant::now() < hard_end {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match targets(&slices, &services, &options).await {
                    Ok(addrs) => {
                        if let Ok(mut current) = endpoints.addrs.write() {
                            *current = addrs;
                        }
                    }
                    Err(err) => tracing::warn!(%err, "refreshing endpoints"),
                }
            }
        }))
    };
    let progress = options.progress.then(|| {
        let counters = counters.clone();
        AbortOnDrop(tokio::spawn(async move {
            let terminal = std::io::stderr().is_terminal();
            let every = if terminal {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(5)
            };
            while Instant::now() < hard_end {
                tokio::time::sleep(every).await;
                let line = counters.line(start.elapsed(), false);
                if terminal {
                    eprint!("\r{line}\x1b[K");
                } else {
                    eprintln!("{line}");
                }
            }
        }))
    });

    let mut sessions = tokio::task::JoinSet::new();
    // Spread the first connections over at most one second.
    let stagger = Duration::from_secs(1) / u32::try_from(options.sessions).unwrap_or(1).max(1);
    for id in 0..options.sessions as u64 {
        let shared = shared.clone();
        let ignores_close = options.ignores_close(id);
        if ignores_close {
            counters.close_ignoring.fetch_add(1, Ordering::Relaxed);
        }
        sessions.spawn(async move {
            let outcome =
                tokio::time::timeout_at(hard_end, session(id, ignores_close, &shared)).await;
            let result = outcome.unwrap_or_else(|_| Err("did not end in time".to_owned()));
            if let Err(reason) = result {
                shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut reasons) = shared.counters.reasons.lock()
                    && reasons.len() < 10
                {
                    reasons.push(format!("session {id}: {reason}"));
                }
            }
        });
        tokio::time::sleep(stagger).await;
    }
    while sessions.join_next().await.is_some() {}
    drop(refresher);
    if let Some(progress) = progress {
        drop(progress);
        let line = counters.line(start.elapsed(), true);
        if std::io::stderr().is_terminal() {
            eprintln!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Shared {
    endpoints: Arc<Endpoints>,
    counters: Arc<Counters>,
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    interval: Duration,
    window: Arc<SendWindow>,
    /// The run's random prefix of session ids.
    run: String,
}

/// A random prefix for the session ids of one run, 8 hex digits.
fn run_prefix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

type Socket = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// Why a connection attempt failed: a short category for the report, whether the other end
/// refused it, and the whole message.
struct ConnectFailure {
    category: String,
    refusal: Option<Refusal>,
    message: String,
}

async fn connect_once(
    shared: &Shared,
    addr: SocketAddr,
    state: &SessionState,
) -> Result<Socket, ConnectFailure> {
    let fail = |category: &str, refusal: Option<Refusal>, message: String| ConnectFailure {
        category: category.to_owned(),
        refusal,
        message,
    };
    let attempt = async {
        let request = upgrade_request(shared, state)
            .map_err(|e| fail("handshake", None, format!("upgrade request: {e}")))?;
        let started = Instant::now();
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| fail("tcp", Refusal::of_io(&e), format!("connect {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().ok();
        let tcp_done = Instant::now();
        let tls = shared
            .connector
            .connect(shared.server_name.clone(), tcp)
            .await
            .map_err(|e| fail("tls", Refusal::of_io(&e), format!("TLS to {addr}: {e}")))?;
        let tls_done = Instant::now();
        let upgraded = tokio_tungstenite::client_async(request, tls).await;
        if started.elapsed() >= SLOW_CONNECT {
            // Where a slow connection spent its time, to tell the network from the gateway.
            tracing::info!(
                session = state.id,
                %addr,
                ?local,
                tcp_ms = (tcp_done - started).as_millis(),
                tls_ms = (tls_done - tcp_done).as_millis(),
                upgrade_ms = tls_done.elapsed().as_millis(),
                "slow connection"
            );
        }
        let (socket, _) = upgraded.map_err(|e| {
            let category = match &e {
                tokio_tungstenite::tungstenite::Error::Http(response) => {
                    format!("http {}", response.status().as_u16())
                }
                _ => "handshake".to_owned(),
            };
            let refusal = Refusal::of_upgrade(&e);
            fail(
                &category,
                refusal,
                format!("WebSocket handshake with {addr}: {e}"),
            )
        })?;
        Ok(socket)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(fail(
                "timeout",
                None,
                format!("connect to {addr} timed out"),
            ))
        })
}

/// The upgrade request of `state`'s session: it names the session and its moves so far.
fn upgrade_request(
    shared: &Shared,
    state: &SessionState,
) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    let url = format!("wss://{}/", server_host(&shared.server_name));
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    let id = format!("{}-{}", shared.run, state.id);
    let headers = request.headers_mut();
    for (name, value) in [
        (SESSION_ID_HEADER, id),
        (SESSION_MOVES_HEADER, state.moves.to_string()),
    ] {
        let value = http::HeaderValue::from_str(&value).map_err(|e| e.to_string())?;
        headers.insert(http::HeaderName::from_static(name), value);
    }
    Ok(request)
}

fn server_host(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        other => format!("{other:?}"),
    }
}

/// Connects `state`'s session to a Ready endpoint, retrying up to [`CONNECT_ATTEMPTS`] times
/// with backoff.
async fn connect(shared: &Shared, state: &SessionState) -> Result<(Socket, SocketAddr), String> {
    let mut backoff = Duration::from_millis(100);
    let mut last = String::from("no Ready endpoint");
    for _ in 0..CONNECT_ATTEMPTS {
        if let Some(addr) = shared.endpoints.pick() {
            match connect_once(shared, addr, state).await {
                Ok(socket) => {
                    shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                    shared.counters.on_endpoint(addr, |e| e.connections += 1);
                    return Ok((socket, addr));
                }
                Err(failure) => {
                    shared.counters.on_failed_attempt(&failure, state.moves > 0);
                    last = failure.message;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
    Err(format!(
        "reconnect failed after {CONNECT_ATTEMPTS} attempts: {last}"
    ))
}

/// How one connection of a session ended.
enum ConnectionEnd {
    /// The client closed at the end of the run (or gave up waiting on an ignored close).
    Done,
    /// The server asked the client to reconnect (1012/1001; its close frame arrived at
    /// `close_seen`), handshake completed.
    Migrate { close_seen: Instant },
    /// A close-ignoring session's socket was cut by the server.
    ForceClosed,
}

/// One logical session: connects, sends, checks echoes, reconnects on 1012/1001.
async fn session(id: u64, ignores_close: bool, shared: &Shared) -> Result<(), String> {
    shared.counters.on_open();
    let mut state = SessionState {
        id,
        ignores_close,
        next_seq: 0,
        unacked: VecDeque::new(),
        moves: 0,
        serving_since: None,
    };
    let mut reconnecting: Option<Instant> = None;
    for _ in 0..MAX_RECONNECTS {
        let (mut socket, addr) = connect(shared, &state).await?;
        if let Some(since) = reconnecting.take() {
            let took = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
            shared
                .counters
                .slowest_reconnect_ms
                .fetch_max(took, Ordering::Relaxed);
        }
        match connection(&mut socket, addr, &mut state, shared).await {
            Ok(ConnectionEnd::Done) => return Ok(()),
            Ok(ConnectionEnd::ForceClosed) => {
                shared.counters.force_closed.fetch_add(1, Ordering::Relaxed);
                shared.counters.on_endpoint(addr, |e| e.force_closed += 1);
                return Ok(());
            }
            Ok(ConnectionEnd::Migrate { close_seen }) => {
                shared.counters.migrated.fetch_add(1, Ordering::Relaxed);
                shared.counters.on_endpoint(addr, |e| e.migrated += 1);
                shared.counters.on_move(state.moves);
                state.moves = state.moves.saturating_add(1);
                state.serving_since.get_or_insert(close_seen);
                reconnecting = Some(Instant::now());
            }
            Err(reason) => {
                shared.counters.on_endpoint(addr, |e| e.dropped += 1);
                return Err(format!("{reason} (on {addr})"));
            }
        }
    }
    Err(format!("more than {MAX_RECONNECTS} reconnects"))
}

struct SessionState {
    id: u64,
    /// Never answers the server's close frames.
    ignores_close: bool,
    next_seq: u64,
    /// Sent and not yet echoed: (seq, last sent at).
    unacked: VecDeque<(u64, Instant)>,
    /// Times the session was moved so far.
    moves: u32,
    /// The close frame of a move not yet served again (no echo on a new connection since).
    serving_since: Option<Instant>,
}

impl SessionState {
    fn text(&self, seq: u64) -> String {
        format!("{}:{seq}", self.id)
    }
}

async fn connection(
    socket: &mut Socket,
    addr: SocketAddr,
    state: &mut SessionState,
    shared: &Shared,
) -> Result<ConnectionEnd, String> {
    let connected = Instant::now();
    // Resend what the previous connection never echoed; the echo timeout counts from now, as
    // the time spent reconnecting is bounded on its own.
    let pending: Vec<u64> = state.unacked.iter().map(|(seq, _)| *seq).collect();
    for entry in state.unacked.iter_mut() {
        entry.1 = connected;
    }
    for seq in pending {
        if socket.send(Message::text(state.text(seq))).await.is_err() {
            return finish_after_send_error(socket, addr, state, shared).await;
        }
        shared.counters.resent.fetch_add(1, Ordering::Relaxed);
    }
    let mut ticker = tokio::time::interval(shared.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let now = Instant::now();
        let send_until = shared.window.until();
        if now >= send_until && state.unacked.is_empty() {
            return close(socket).await.map(|()| ConnectionEnd::Done);
        }
        if now >= send_until + SETTLE {
            return Err(format!(
                "{} echoes missing at the end of the run",
                state.unacked.len()
            ));
        }
        if let Some((seq, at)) = state.unacked.front()
            && now.duration_since(*at) > ECHO_TIMEOUT
        {
            return Err(format!(
                "no echo of {seq} within {ECHO_TIMEOUT:?} ({} unechoed, connected {:.1} s ago)",
                state.unacked.len(),
                connected.elapsed().as_secs_f64()
            ));
        }
        tokio::select! {
            _ = ticker.tick(), if now < send_until => {
                let seq = state.next_seq;
                state.next_seq += 1;
                state.unacked.push_back((seq, Instant::now()));
                shared.counters.sent.fetch_add(1, Ordering::Relaxed);
                if socket.send(Message::text(state.text(seq))).await.is_err() {
                    return finish_after_send_error(socket, addr, state, shared).await;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            frame = socket.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let expected = state.unacked.front().map(|(seq, _)| state.text(*seq));
                    if expected.as_deref() != Some(text.as_str()) {
                        return Err(format!("echo {text:?} where {expected:?} was due"));
                    }
                    state.unacked.pop_front();
                    shared.counters.echoed.fetch_add(1, Ordering::Relaxed);
                    // The first echo on this connection is that of the first message sent on it.
                    if let Some(since) = state.serving_since.take() {
                        shared.counters.on_served(since.elapsed());
                    }
                }
                Some(Ok(Message::Close(frame))) if state.ignores_close => {
                    return ignore_close(socket, addr, state, shared, frame.map(|f| f.code)).await;
                }
                Some(Ok(Message::Close(frame))) => return after_close(socket, frame.map(|f| f.code)).await,
                Some(Ok(Message::Binary(_))) => return Err("unexpected binary message".into()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("connection error: {e}")),
                None => return Err("EOF without a close frame".into()),
            },
        }
    }
}

/// A close-ignoring session got the server's close frame: it stops sending and never answers
/// (the WebSocket layer queued a reply, but is not polled again, so the reply never leaves), and
/// reads the raw stream until the server cuts it or the run ends.
async fn ignore_close(
    socket: &mut Socket,
    addr: SocketAddr,
    state: &mut SessionState,
    shared: &Shared,
    code: Option<CloseCode>,
) -> Result<ConnectionEnd, String> {
    tracing::debug!(session = state.id, %addr, ?code, "ignoring the server's close frame");
    shared
        .counters
        .closes_ignored
        .fetch_add(1, Ordering::Relaxed);
    shared.counters.on_endpoint(addr, |e| e.closes_ignored += 1);
    let abandoned = state.unacked.len() as u64;
    shared
        .counters
        .abandoned
        .fetch_add(abandoned, Ordering::Relaxed);
    state.unacked.clear();
    let stream = socket.get_mut();
    let mut buffer = [0u8; 4096];
    // Bounded: at most one read per byte-carrying segment, and the run's end ends the wait.
    for _ in 0..100_000 {
        let end = shared.window.until() + SETTLE;
        tokio::select! {
            read = stream.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return Ok(ConnectionEnd::ForceClosed),
                Ok(_) => {}
            },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if Instant::now() >= end {
                    return Ok(ConnectionEnd::Done);
                }
            }
        }
    }
    Ok(ConnectionEnd::Done)
}

/// The server's close frame arrived (just now): answer it (tungstenite queues the reply; polling
/// flushes it and ends the stream) and decide.
async fn after_close(
    socket: &mut Socket,
    code: Option<CloseCode>,
) -> Result<ConnectionEnd, String> {
    let close_seen = Instant::now();
    let handshake = async {
        let mut frames = 0;
        while let Some(Ok(_)) = socket.next().await {
            frames += 1;
            if frames > 1_000 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, handshake).await;
    match code {
        Some(CloseCode::Restart | CloseCode::Away) => Ok(ConnectionEnd::Migrate { close_seen }),
        other => Err(format!("closed by the server with {other:?}")),
    }
}

/// A send failed: the server may have closed first; read what it sent to tell.
async fn finish_after_send_error(
    socket: &mut Socket,
    addr: SocketAddr,
    state: &mut SessionState,
    shared: &Shared,
) -> Result<ConnectionEnd, String> {
    let read = async {
        for _ in 0..1_000 {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return Some(frame.map(|f| f.code)),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
        None
    };
    match tokio::time::timeout(CLOSE_TIMEOUT, read).await {
        Ok(Some(code)) if state.ignores_close => {
            ignore_close(socket, addr, state, shared, code).await
        }
        Ok(Some(code)) => after_close(socket, code).await,
        _ => Err("send failed without a close frame".into()),
    }
}

/// The client's own close at the end of the run.
async fn close(socket: &mut Socket) -> Result<(), String> {
    let handshake = async {
        socket
            .close(None)
            .await
            .map_err(|e| format!("close: {e}"))?;
        for _ in 0..1_000 {
            match socket.next().await {
                Some(Ok(_)) => {}
                _ => return Ok(()),
            }
        }
        Ok(())
    };
    tokio::time::timeout(CLOSE_TIMEOUT, handshake)
        .await
        .unwrap_or_else(|_| Err("close handshake timed out".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_networks_are_dialled() {
        let options = LoadOptions::new("default", "chat");
        assert!(options.allows("10.244.3.7".parse().expect("ip")));
        assert!(options.allows("127.0.0.1".parse().expect("ip")));
        assert!(!options.allows("10.245.0.1".parse().expect("ip")));
        assert!(!options.allows("192.168.1.1".parse().expect("ip")));
        assert!(!options.allows("::1".parse().expect("ip")));
    }

    /// A TLS acceptor for `chat.default.svc` and a connector trusting its CA.
    fn test_tls() -> (tokio_rustls::TlsAcceptor, tokio_rustls::TlsConnector) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("ca key");
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["chat.default.svc".to_owned()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("cert");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
        (
            tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            connector_from_pem(ca.pem().as_bytes()).expect("connector"),
        )
    }

    /// What a test server does with one connection.
    #[derive(Clone, Copy, Debug)]
    enum Serve {
        /// Answers the upgrade request with this HTTP status.
        Refuse(u16),
        /// Reads the TLS ClientHello, then resets the TCP connection.
        Reset,
        /// Echoes 3 messages, then answers the 4th with close 1012 instead of its echo.
        Close,
        /// As [`Serve::Close`], then counts what the client sends for this long and drops the
        /// TCP connection (a drain deadline).
        CloseThenCut(Duration),
        /// Echoes every message, holding the first echo back this long.
        Echo { first_after: Duration },
    }

    /// An upgrade request as the test server saw it.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Upgrade {
        session: Option<String>,
        moves: Option<String>,
    }

    /// What a test server saw.
    #[derive(Debug, Default)]
    struct ServerSaw {
        /// Frames (close replies included) the client sent after a close of
        /// [`Serve::CloseThenCut`].
        frames_after_close: AtomicU64,
        /// Every upgrade request, refused ones included, in order.
        upgrades: Mutex<Vec<Upgrade>>,
    }

    impl ServerSaw {
        fn upgrades(&self) -> Vec<Upgrade> {
            self.upgrades.lock().expect("upgrades").clone()
        }
    }

    /// A TLS WebSocket server on 127.0.0.1 that serves its connections one after the other as
    /// `script` says, and echoes everything on the connections after those (two more at most).
    async fn scripted_server(
        script: Vec<Serve>,
    ) -> (SocketAddr, tokio_rustls::TlsConnector, Arc<ServerSaw>) {
        let (acceptor, connector) = test_tls();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let saw = Arc::new(ServerSaw::default());
        let seen = saw.clone();
        tokio::spawn(async move {
            let rest = Serve::Echo {
                first_after: Duration::ZERO,
            };
            for n in 0..script.len() + 2 {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                let serve = script.get(n).copied().unwrap_or(rest);
                if let Serve::Reset = serve {
                    let mut hello = [0u8; 512];
                    let _ = tcp.read(&mut hello).await;
                    tcp.set_zero_linger().expect("linger");
                    continue;
                }
                let tls = acceptor.accept(tcp).await.expect("tls");
                serve_one(tls, serve, &seen).await;
            }
        });
        (addr, connector, saw)
    }

    /// Serves one accepted TLS connection as `serve` says (anything but [`Serve::Reset`]).
    async fn serve_one(
        tls: tokio_rustls::server::TlsStream<TcpStream>,
        serve: Serve,
        seen: &ServerSaw,
    ) {
        use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;

        #[allow(
            clippy::result_large_err,
            reason = "the refusal is tungstenite's own response type"
        )]
        let record = |request: &Request, response: Response| {
            let header = |name: &str| {
                request
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            seen.upgrades.lock().expect("upgrades").push(Upgrade {
                session: header(SESSION_ID_HEADER),
                moves: header(SESSION_MOVES_HEADER),
            });
            match serve {
                Serve::Refuse(status) => {
                    let mut refusal = ErrorResponse::new(None);
                    *refusal.status_mut() = http::StatusCode::from_u16(status).expect("status");
                    Err(refusal)
                }
                _ => Ok(response),
            }
        };
        let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tls, record).await else {
            return;
        };
        let mut texts = 0;
        while let Some(Ok(message)) = ws.next().await {
            if !message.is_text() {
                continue;
            }
            texts += 1;
            match serve {
                Serve::Close | Serve::CloseThenCut(_) if texts == 4 => {
                    let frame = CloseFrame {
                        code: CloseCode::Restart,
                        reason: "".into(),
                    };
                    ws.send(Message::Close(Some(frame))).await.expect("close");
                    if let Serve::CloseThenCut(wait) = serve {
                        let count = async {
                            while let Some(Ok(_)) = ws.next().await {
                                seen.frames_after_close.fetch_add(1, Ordering::Relaxed);
                            }
                        };
                        let _ = tokio::time::timeout(wait, count).await;
                        return;
                    }
                }
                Serve::Echo { first_after } if texts == 1 => {
                    tokio::time::sleep(first_after).await;
                    if ws.send(message).await.is_err() {
                        return;
                    }
                }
                _ => {
                    if ws.send(message).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    fn one_endpoint(
        addr: SocketAddr,
        connector: tokio_rustls::TlsConnector,
        send_for: Duration,
    ) -> Shared {
        endpoints(vec![addr], connector, send_for)
    }

    fn endpoints(
        addrs: Vec<SocketAddr>,
        connector: tokio_rustls::TlsConnector,
        send_for: Duration,
    ) -> Shared {
        Shared {
            endpoints: Arc::new(Endpoints {
                addrs: RwLock::new(addrs),
                next: AtomicUsize::new(0),
            }),
            counters: Arc::new(Counters::default()),
            connector,
            server_name: ServerName::try_from("chat.default.svc").expect("name"),
            interval: Duration::from_millis(50),
            window: Arc::new(SendWindow::new(Instant::now(), send_for)),
            run: "test".into(),
        }
    }

    /// Runs session 7 against a server following `script`, sending for `send_for`; it must end
    /// cleanly. Its report, the server's address and what the server saw.
    async fn scripted_session(
        script: Vec<Serve>,
        send_for: Duration,
    ) -> (LoadReport, SocketAddr, Arc<ServerSaw>) {
        let (addr, connector, saw) = scripted_server(script).await;
        let shared = one_endpoint(addr, connector, send_for);
        session(7, false, &shared)
            .await
            .expect("the session ends cleanly");
        (shared.counters.report(), addr, saw)
    }

    /// Sessions moved 0, 1, 2, 3+ times.
    fn by_moves([never, once, twice, more]: [u64; 4]) -> SessionsByMoves {
        SessionsByMoves {
            never,
            once,
            twice,
            more,
        }
    }

    #[tokio::test]
    async fn a_1012_close_migrates_the_session_and_resends_what_was_not_echoed() {
        let (report, addr, _) = scripted_session(vec![Serve::Close], Duration::from_secs(1)).await;
        assert_eq!(report.connections, 2, "{report:?}");
        assert_eq!(report.migrated, 1, "{report:?}");
        assert!(report.messages_resent >= 1, "{report:?}");
        assert!(report.messages_sent >= 10, "{report:?}");
        assert_eq!(report.messages_echoed, report.messages_sent, "{report:?}");
        assert_eq!(report.messages_lost, 0, "{report:?}");
        let endpoint = &report.endpoints[&addr.ip().to_string()];
        assert_eq!(endpoint.migrated, 1, "{report:?}");
        assert_eq!(endpoint.connections, 2, "{report:?}");
        assert_eq!(report.sessions_by_moves, by_moves([0, 1, 0, 0]));
        assert_eq!(report.moved_more_than_once, 0, "{report:?}");
    }

    #[tokio::test]
    async fn a_session_moved_twice_counts_as_moved_more_than_once() {
        let script = vec![Serve::Close, Serve::Close];
        let (report, _, _) = scripted_session(script, Duration::from_secs(1)).await;
        assert_eq!(report.migrated, 2, "{report:?}");
        assert_eq!(report.sessions_by_moves, by_moves([0, 0, 1, 0]));
        assert_eq!(report.moved_more_than_once, 1, "{report:?}");
    }

    #[test]
    fn sessions_move_from_bucket_to_bucket_and_stay_in_the_last() {
        let counters = Counters::default();
        counters.on_open();
        counters.on_open();
        for before in 0..5 {
            counters.on_move(before);
        }
        let report = counters.report();
        assert_eq!(report.sessions_by_moves, by_moves([1, 0, 0, 1]));
        assert_eq!(report.moved_more_than_once, 1);
    }

    #[tokio::test]
    async fn every_upgrade_names_the_session_and_the_moves_it_made_so_far() {
        let script = vec![Serve::Close, Serve::Close];
        let (_, _, saw) = scripted_session(script, Duration::from_secs(1)).await;
        let upgrade = |moves: &str| Upgrade {
            session: Some("test-7".into()),
            moves: Some(moves.into()),
        };
        assert_eq!(saw.upgrades(), [upgrade("0"), upgrade("1"), upgrade("2")]);
    }

    #[tokio::test]
    async fn a_503_answer_counts_as_a_refused_attempt_and_the_session_retries() {
        let script = vec![Serve::Refuse(503)];
        let (report, _, saw) = scripted_session(script, Duration::from_millis(500)).await;
        assert_eq!(
            report.refused_attempts,
            RefusedAttempts {
                total: 1,
                http503: 1,
                ..RefusedAttempts::default()
            }
        );
        assert_eq!(
            report.connect_failures.get("http 503"),
            Some(&1),
            "{report:?}"
        );
        assert_eq!(report.connections, 1, "{report:?}");
        assert_eq!(report.migrated, 0, "{report:?}");
        // A refused attempt is no move: the retry still says 0 moves.
        let moves: Vec<Option<String>> = saw.upgrades().into_iter().map(|u| u.moves).collect();
        assert_eq!(moves, [Some("0".into()), Some("0".into())]);
    }

    #[tokio::test]
    async fn refusals_of_a_moved_sessions_reconnect_are_told_apart_from_those_of_its_opening() {
        let script = vec![Serve::Refuse(503), Serve::Close, Serve::Refuse(429)];
        let (report, _, _) = scripted_session(script, Duration::from_secs(1)).await;
        assert_eq!(
            report.refused_attempts,
            RefusedAttempts {
                total: 2,
                http503: 1,
                http429: 1,
                reconnecting: 1,
                ..RefusedAttempts::default()
            },
            "{report:?}"
        );
        assert_eq!(report.migrated, 1, "{report:?}");
    }

    #[tokio::test]
    async fn a_429_a_reset_and_a_tcp_refusal_count_as_refused_attempts_by_kind() {
        let (addr, connector, _) = scripted_server(vec![Serve::Refuse(429), Serve::Reset]).await;
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr")
        };
        // Round-robin: closed, 429, closed, reset, closed, accepted.
        let shared = endpoints(vec![closed, addr], connector, Duration::from_millis(500));
        session(2, false, &shared)
            .await
            .expect("the session ends cleanly");
        let report = shared.counters.report();
        assert_eq!(
            report.refused_attempts,
            RefusedAttempts {
                total: 5,
                http503: 0,
                http429: 1,
                reset: 1,
                refused: 3,
                reconnecting: 0,
            },
            "{report:?}"
        );
        assert_eq!(report.connections, 1, "{report:?}");
    }

    #[tokio::test]
    async fn time_to_serving_runs_from_the_close_frame_to_the_first_echo_on_the_new_connection() {
        let held = Duration::from_millis(300);
        let script = vec![Serve::Close, Serve::Echo { first_after: held }];
        let (report, _, _) = scripted_session(script, Duration::from_secs(1)).await;
        let serving = report.time_to_serving_ms.expect("one sample");
        assert_eq!(serving.samples, 1, "{report:?}");
        assert_eq!((serving.p50, serving.p99), (serving.max, serving.max));
        // At least the held-back echo; far below the echo timeout (a unit mistake would show).
        assert!(serving.max >= 300, "{report:?}");
        assert!(serving.max < 5_000, "{report:?}");
    }

    #[test]
    fn time_to_serving_percentiles_are_nearest_rank() {
        let samples: Vec<u32> = (1..=100).rev().collect();
        let serving = TimeToServing::of(&samples, 120).expect("samples");
        assert_eq!(
            serving,
            TimeToServing {
                samples: 120,
                p50: 50,
                p99: 99,
                max: 100
            }
        );
        assert_eq!(
            TimeToServing::of(&[7], 1).map(|s| (s.p50, s.p99)),
            Some((7, 7))
        );
        assert_eq!(TimeToServing::of(&[], 0), None);
    }

    #[tokio::test]
    async fn a_close_ignoring_session_never_answers_and_counts_the_cut_as_force_closed() {
        let (addr, connector, saw) =
            scripted_server(vec![Serve::CloseThenCut(Duration::from_millis(700))]).await;
        let shared = one_endpoint(addr, connector, Duration::from_secs(3));
        session(3, true, &shared)
            .await
            .expect("a force-closed session is not a dropped one");
        let report = shared.counters.report();
        assert_eq!(
            saw.frames_after_close.load(Ordering::Relaxed),
            0,
            "{report:?}"
        );
        assert_eq!(report.connections, 1, "{report:?}");
        assert_eq!(report.migrated, 0, "{report:?}");
        assert_eq!(report.closes_ignored, 1, "{report:?}");
        assert_eq!(report.force_closed, 1, "{report:?}");
        // The 4th message got the close frame instead of its echo; one more may have left before
        // the close arrived. Both are abandoned, not lost.
        assert_eq!(report.messages_echoed, 3, "{report:?}");
        assert!(report.messages_sent >= 4, "{report:?}");
        assert_eq!(
            report.messages_abandoned,
            report.messages_sent - 3,
            "{report:?}"
        );
        assert_eq!(report.messages_lost, 0, "{report:?}");
        assert_eq!(report.endpoints[&addr.ip().to_string()].force_closed, 1);
        assert_eq!(report.sessions_by_moves.never, 1, "{report:?}");
    }

    #[test]
    fn the_first_sessions_ignore_close_frames_so_round_robin_spreads_them() {
        let mut options = LoadOptions::new("default", "chat");
        options.sessions = 10;
        options.close_ignoring = 3;
        let ignoring: Vec<u64> = (0..10).filter(|&id| options.ignores_close(id)).collect();
        assert_eq!(ignoring, [0, 1, 2]);
        options.close_ignoring = 10;
        assert_eq!((0..10).filter(|&id| options.ignores_close(id)).count(), 10);
        options.close_ignoring = 11;
        assert!(options.validate().is_err());
    }

    #[test]
    fn combined_reports_add_up_and_bound_the_times_to_serving_from_above() {
        let one = LoadReport {
            sessions_opened: 100,
            migrated: 40,
            messages_sent: 1_000,
            messages_echoed: 1_000,
            connect_failures: BTreeMap::from([("http 503".to_owned(), 2)]),
            sessions_by_moves: SessionsByMoves {
                never: 60,
                once: 40,
                twice: 0,
                more: 0,
            },
            refused_attempts: RefusedAttempts {
                total: 2,
                http503: 2,
                ..RefusedAttempts::default()
            },
            time_to_serving_ms: Some(TimeToServing {
                samples: 40,
                p50: 5,
                p99: 900,
                max: 1_000,
            }),
            endpoints: BTreeMap::from([(
                "10.244.1.5".to_owned(),
                EndpointReport {
                    connections: 100,
                    migrated: 40,
                    ..EndpointReport::default()
                },
            )]),
            ..LoadReport::default()
        };
        let other = LoadReport {
            sessions_opened: 50,
            dropped: 1,
            messages_sent: 500,
            messages_echoed: 499,
            messages_lost: 1,
            drop_reasons: vec!["session 3: reset".to_owned()],
            slowest_reconnect_ms: 70,
            sessions_by_moves: SessionsByMoves {
                never: 48,
                once: 0,
                twice: 2,
                more: 0,
            },
            moved_more_than_once: 2,
            time_to_serving_ms: Some(TimeToServing {
                samples: 4,
                p50: 8,
                p99: 30,
                max: 40,
            }),
            endpoints: BTreeMap::from([(
                "10.244.1.5".to_owned(),
                EndpointReport {
                    connections: 50,
                    dropped: 1,
                    ..EndpointReport::default()
                },
            )]),
            ..LoadReport::default()
        };
        let all = LoadReport::combined(&[one.clone(), other]);
        assert_eq!(all.sessions_opened, 150);
        assert_eq!((all.migrated, all.dropped, all.messages_lost), (40, 1, 1));
        assert_eq!((all.messages_sent, all.messages_echoed), (1_500, 1_499));
        assert_eq!(all.drop_reasons, ["session 3: reset"]);
        assert_eq!(all.slowest_reconnect_ms, 70);
        assert_eq!(all.connect_failures.get("http 503"), Some(&2));
        assert_eq!(all.refused_attempts.total, 2);
        assert_eq!(
            (all.sessions_by_moves.never, all.sessions_by_moves.twice),
            (108, 2)
        );
        assert_eq!(all.moved_more_than_once, 2);
        assert_eq!(
            all.time_to_serving_ms,
            Some(TimeToServing {
                samples: 44,
                p50: 8,
                p99: 900,
                max: 1_000
            })
        );
        let endpoint = &all.endpoints["10.244.1.5"];
        assert_eq!((endpoint.connections, endpoint.dropped), (150, 1));
        assert_eq!(LoadReport::combined(std::slice::from_ref(&one)), one);
        assert_eq!(LoadReport::combined(&[]), LoadReport::default());
    }

    #[test]
    fn options_out_of_bounds_are_refused() {
        let mut options = LoadOptions::new("default", "chat");
        options.sessions = MAX_SESSIONS + 1;
        assert!(options.validate().is_err());
        let mut options = LoadOptions::new("default", "chat");
        options.duration = MAX_DURATION + Duration::from_secs(1);
        assert!(options.validate().is_err());
        let mut options = LoadOptions::new("default", "chat");
        options.rate = 0.0;
        assert!(options.validate().is_err());
    }
}
