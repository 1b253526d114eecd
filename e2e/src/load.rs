//! Load clients: N WebSocket sessions to a Service, routed the way kube-proxy routes new
//! connections, each checking every echo and surviving drains.
//!
//! The Service's EndpointSlices (label `kubernetes.io/service-name`) are re-listed every second;
//! each new connection goes round-robin to one of the currently Ready, non-terminating endpoints,
//! on the slice port named [`LoadOptions::port_name`]. Connections are `wss`, verified against
//! `ca.crt` of Secret `<service>-tls` with server name `<service>.<namespace>.svc`. Only addresses
//! inside [`LoadOptions::allowed`] (the local pod bridge and loopback) are ever dialled.
//!
//! A session sends text messages `"<session>:<seq>"` at a fixed rate and expects them back in
//! order. A close frame with code 1012 or 1001 completes the close handshake, counts the session
//! **migrated** once per close and reconnects it (same logical session) to a Ready endpoint,
//! resending the messages not yet echoed. Anything else (a reset, EOF without a close frame,
//! another close code, a missing or reordered echo, a reconnect that fails after bounded retries)
//! ends the session as **dropped**. A message is **lost** if it was sent and never echoed.

use std::collections::VecDeque;
use std::io::IsTerminal as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Serialize;
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
/// Connection attempts per (re)connect before the session counts as dropped.
const CONNECT_ATTEMPTS: u32 = 20;
/// One connection attempt (TCP, TLS and WebSocket handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnects per session (a bound, far above what drains cause).
const MAX_RECONNECTS: u64 = 1_000;

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
        Ok(())
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
    reasons: std::sync::Mutex<Vec<String>>,
}

impl Counters {
    fn report(&self) -> LoadReport {
        let sent = self.sent.load(Ordering::Relaxed);
        let echoed = self.echoed.load(Ordering::Relaxed);
        LoadReport {
            sessions_opened: self.opened.load(Ordering::Relaxed),
            migrated: self.migrated.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            messages_sent: sent,
            messages_echoed: echoed,
            messages_resent: self.resent.load(Ordering::Relaxed),
            // Echoes are counted once per message and only in order, so what was sent and never
            // echoed (including by sessions cut off at the run's hard end) is the difference.
            messages_lost: sent.saturating_sub(echoed),
            drop_reasons: self.reasons.lock().map(|r| r.clone()).unwrap_or_default(),
        }
    }

    /// The progress line; while running, messages not yet echoed are "in flight", at the end
    /// they are "lost".
    fn line(&self, elapsed: Duration, done: bool) -> String {
        let r = self.report();
        format!(
            "load {:>5.1}s  sessions {}  connections {}  migrated {}  dropped {}  sent {}  echoed {}  {} {}",
            elapsed.as_secs_f64(),
            r.sessions_opened,
            r.connections,
            r.migrated,
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

async fn ready_endpoints(
    slices: &Api<EndpointSlice>,
    options: &LoadOptions,
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
                    && options.allows(ip)
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
    options.validate()?;
    let connector = tls_connector(&client, &options).await?;
    let server_name =
        ServerName::try_from(format!("{}.{}.svc", options.service, options.namespace))
            .map_err(|e| LoadError::Options(format!("server name: {e}")))?;
    let slices: Api<EndpointSlice> = Api::namespaced(client, &options.namespace);
    let first_deadline = Instant::now() + Duration::from_secs(30);
    let initial = loop {
        let addrs = ready_endpoints(&slices, &options).await?;
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
    let send_until = start + options.duration;
    let hard_end = send_until + SETTLE + CLOSE_TIMEOUT + CONNECT_TIMEOUT;

    // Refresh the endpoints every second until the run ends (bounded by `hard_end`).
    let refresher = {
        let endpoints = endpoints.clone();
        let options = options.clone();
        tokio::spawn(async move {
            while Instant::now() < hard_end {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match ready_endpoints(&slices, &options).await {
                    Ok(addrs) => {
                        if let Ok(mut current) = endpoints.addrs.write() {
                            *current = addrs;
                        }
                    }
                    Err(err) => tracing::warn!(%err, "refreshing endpoints"),
                }
            }
        })
    };
    let progress = options.progress.then(|| {
        let counters = counters.clone();
        tokio::spawn(async move {
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
        })
    });

    let shared = Arc::new(Shared {
        endpoints,
        counters: counters.clone(),
        connector,
        server_name,
        interval: Duration::from_secs_f64(1.0 / options.rate),
        send_until,
    });
    let mut sessions = tokio::task::JoinSet::new();
    // Spread the first connections over at most one second.
    let stagger = Duration::from_secs(1) / u32::try_from(options.sessions).unwrap_or(1).max(1);
    for id in 0..options.sessions as u64 {
        let shared = shared.clone();
        sessions.spawn(async move {
            let outcome = tokio::time::timeout_at(hard_end, session(id, &shared)).await;
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
    refresher.abort();
    if let Some(progress) = progress {
        progress.abort();
        let line = counters.line(start.elapsed(), true);
        if std::io::stderr().is_terminal() {
            eprintln!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }
    Ok(counters.report())
}

struct Shared {
    endpoints: Arc<Endpoints>,
    counters: Arc<Counters>,
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    interval: Duration,
    send_until: Instant,
}

type Socket = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

async fn connect_once(shared: &Shared, addr: SocketAddr) -> Result<Socket, String> {
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let tls = shared
            .connector
            .connect(shared.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS to {addr}: {e}"))?;
        let url = format!("wss://{}/", server_host(&shared.server_name));
        let (socket, _) = tokio_tungstenite::client_async(url, tls)
            .await
            .map_err(|e| format!("WebSocket handshake with {addr}: {e}"))?;
        Ok(socket)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("connect to {addr} timed out")))
}

fn server_host(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        other => format!("{other:?}"),
    }
}

/// Connects to a Ready endpoint, retrying up to [`CONNECT_ATTEMPTS`] times with backoff.
async fn connect(shared: &Shared) -> Result<Socket, String> {
    let mut backoff = Duration::from_millis(100);
    let mut last = String::from("no Ready endpoint");
    for _ in 0..CONNECT_ATTEMPTS {
        if let Some(addr) = shared.endpoints.pick() {
            match connect_once(shared, addr).await {
                Ok(socket) => {
                    shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                    return Ok(socket);
                }
                Err(err) => last = err,
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
    /// The client closed at the end of the run.
    Done,
    /// The server asked the client to reconnect (1012/1001), handshake completed.
    Migrate,
}

/// One logical session: connects, sends, checks echoes, reconnects on 1012/1001.
async fn session(id: u64, shared: &Shared) -> Result<(), String> {
    shared.counters.opened.fetch_add(1, Ordering::Relaxed);
    let mut state = SessionState {
        id,
        next_seq: 0,
        unacked: VecDeque::new(),
    };
    for _ in 0..MAX_RECONNECTS {
        let mut socket = connect(shared).await?;
        match connection(&mut socket, &mut state, shared).await? {
            ConnectionEnd::Done => return Ok(()),
            ConnectionEnd::Migrate => {
                shared.counters.migrated.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Err(format!("more than {MAX_RECONNECTS} reconnects"))
}

struct SessionState {
    id: u64,
    next_seq: u64,
    /// Sent and not yet echoed: (seq, first sent at).
    unacked: VecDeque<(u64, Instant)>,
}

impl SessionState {
    fn text(&self, seq: u64) -> String {
        format!("{}:{seq}", self.id)
    }
}

async fn connection(
    socket: &mut Socket,
    state: &mut SessionState,
    shared: &Shared,
) -> Result<ConnectionEnd, String> {
    // Resend what the previous connection never echoed.
    let pending: Vec<u64> = state.unacked.iter().map(|(seq, _)| *seq).collect();
    for seq in pending {
        if socket.send(Message::text(state.text(seq))).await.is_err() {
            return finish_after_send_error(socket).await;
        }
        shared.counters.resent.fetch_add(1, Ordering::Relaxed);
    }
    let mut ticker = tokio::time::interval(shared.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let settle_until = shared.send_until + SETTLE;
    loop {
        let now = Instant::now();
        if now >= shared.send_until && state.unacked.is_empty() {
            return close(socket).await.map(|()| ConnectionEnd::Done);
        }
        if now >= settle_until {
            return Err(format!(
                "{} echoes missing at the end of the run",
                state.unacked.len()
            ));
        }
        if let Some((seq, at)) = state.unacked.front()
            && now.duration_since(*at) > ECHO_TIMEOUT
        {
            return Err(format!("no echo of {seq} within {ECHO_TIMEOUT:?}"));
        }
        tokio::select! {
            _ = ticker.tick(), if now < shared.send_until => {
                let seq = state.next_seq;
                state.next_seq += 1;
                state.unacked.push_back((seq, Instant::now()));
                shared.counters.sent.fetch_add(1, Ordering::Relaxed);
                if socket.send(Message::text(state.text(seq))).await.is_err() {
                    return finish_after_send_error(socket).await;
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

/// The server's close frame arrived: answer it (tungstenite queues the reply; polling flushes it
/// and ends the stream) and decide.
async fn after_close(
    socket: &mut Socket,
    code: Option<CloseCode>,
) -> Result<ConnectionEnd, String> {
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
        Some(CloseCode::Restart | CloseCode::Away) => Ok(ConnectionEnd::Migrate),
        other => Err(format!("closed by the server with {other:?}")),
    }
}

/// A send failed: the server may have closed first; read what it sent to tell.
async fn finish_after_send_error(socket: &mut Socket) -> Result<ConnectionEnd, String> {
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

    /// A TLS WebSocket server on 127.0.0.1 whose first connection echoes 3 messages, then
    /// answers the 4th with close 1012 instead of its echo; later connections echo everything.
    async fn drain_once_server() -> (SocketAddr, tokio_rustls::TlsConnector) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;

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
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            for connection in 0..2 {
                let (tcp, _) = listener.accept().await.expect("accept");
                let tls = acceptor.accept(tcp).await.expect("tls");
                let mut ws = tokio_tungstenite::accept_async(tls).await.expect("ws");
                let mut texts = 0;
                while let Some(Ok(message)) = ws.next().await {
                    if !message.is_text() {
                        continue;
                    }
                    texts += 1;
                    if connection == 0 && texts == 4 {
                        let frame = CloseFrame {
                            code: CloseCode::Restart,
                            reason: "".into(),
                        };
                        ws.close(Some(frame)).await.expect("close");
                    } else if ws.send(message).await.is_err() {
                        break;
                    }
                }
            }
        });
        (
            addr,
            connector_from_pem(ca.pem().as_bytes()).expect("connector"),
        )
    }

    #[tokio::test]
    async fn a_1012_close_migrates_the_session_and_resends_what_was_not_echoed() {
        let (addr, connector) = drain_once_server().await;
        let shared = Shared {
            endpoints: Arc::new(Endpoints {
                addrs: RwLock::new(vec![addr]),
                next: AtomicUsize::new(0),
            }),
            counters: Arc::new(Counters::default()),
            connector,
            server_name: ServerName::try_from("chat.default.svc").expect("name"),
            interval: Duration::from_millis(50),
            send_until: Instant::now() + Duration::from_secs(1),
        };
        session(7, &shared).await.expect("the session ends cleanly");
        let report = shared.counters.report();
        assert_eq!(report.connections, 2, "{report:?}");
        assert_eq!(report.migrated, 1, "{report:?}");
        assert!(report.messages_resent >= 1, "{report:?}");
        assert!(report.messages_sent >= 10, "{report:?}");
        assert_eq!(report.messages_echoed, report.messages_sent, "{report:?}");
        assert_eq!(report.messages_lost, 0, "{report:?}");
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
