//! The client listener: admits each connection at accept (connection cap, rate limit,
//! handshakes in progress) before reading any of it, runs the handshake phase under the
//! handshake timeout (PROXY header, after which the per-client limits are checked when the
//! header names the client; TLS; request head), applies the rest of admission (drain, origin, the
//! plain HTTP cap and body limit), and hands each connection to a WebSocket
//! [`session`](crate::session) or to the plain [`http_proxy`](crate::http_proxy).

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, debug_span, warn};

use crate::{
    access_log::{Entry, Tally},
    conn::ClientConn,
    drain::Drain,
    forwarded::ClientAddresses,
    http::{self, Head, HeadError},
    http_proxy,
    limits::{Admission, Admitted, ConnectionSlot, Refusal},
    metrics::{Metrics, RejectReason},
    proxy_protocol::{self, ProxyProtocol},
    reqid::RequestIds,
    session::{self, Leftovers, SessionContext},
};

/// The most refusals answered at once; past it a refused connection is closed unanswered. Their
/// descriptors are part of [`fds::RESERVED`](crate::fds::RESERVED).
pub const MAX_ANSWERED_REFUSALS: usize = 32;

/// How long a connection refused at accept is kept to deliver its answer: the request the client
/// sent meanwhile is read and discarded, so that closing does not reset the connection and lose
/// the answer.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// How long a short answer (an error, a 101) may take to be written: a client that does not read
/// it gets no longer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything the proxy shares between connections.
pub struct Proxy {
    pub upstream: SocketAddr,
    pub tls: Option<TlsAcceptor>,
    pub admission: Arc<Admission>,
    pub addresses: ClientAddresses,
    pub session: Arc<SessionContext>,
    pub next_id: AtomicU64,
    /// Refusals being answered now (at most [`MAX_ANSWERED_REFUSALS`]).
    pub refusals: AtomicUsize,
}

/// A refusal: reason, status, status text, Retry-After seconds, body.
type Refuse = (RejectReason, u16, &'static str, Option<u64>, String);

fn unavailable(reason: RejectReason, body: &str) -> Refuse {
    (reason, 503, "Service Unavailable", Some(1), body.to_owned())
}

fn rate_limited(retry: u64) -> Refuse {
    (
        RejectReason::RateLimited,
        429,
        "Too Many Requests",
        Some(retry),
        "connection rate limit".to_owned(),
    )
}

/// The client of a connection as the request head tells it, and whether its rate allows the
/// request (checked only when a trusted proxy named it: others were checked before).
struct RequestClient {
    ip: IpAddr,
    /// On refusal, the seconds until the client's next token.
    rate: Result<(), u64>,
}

fn bad_request(why: &str) -> Refuse {
    (
        RejectReason::BadRequest,
        400,
        "Bad Request",
        None,
        why.to_owned(),
    )
}

impl Proxy {
    fn metrics(&self) -> &Metrics {
        &self.session.metrics
    }

    fn drain(&self) -> &Arc<Drain> {
        &self.session.drain
    }

    /// Counts a refused connection; one refused because of a drain counts in its report too.
    fn reject(&self, reason: RejectReason) {
        self.metrics().reject(reason);
        if reason == RejectReason::Draining {
            self.drain().refused();
        }
    }

    /// Counts a WebSocket upgrade the app refused or could not take: a refused connection, and
    /// in the health of every drain report.
    fn reject_upgrade(&self, reason: RejectReason) {
        self.reject(reason);
        self.drain().upgrade_failed(reason);
    }

    /// Accepts connections forever.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    let now = Instant::now();
                    let admitted = if self.addresses.peer_is_client_at_accept(peer.ip()) {
                        self.admission.admit(peer.ip(), now)
                    } else {
                        self.admission.admit_any(now)
                    };
                    let admitted = match admitted {
                        Ok(admitted) => admitted,
                        Err(refusal) => {
                            self.refuse_at_accept(tcp, refusal);
                            continue;
                        }
                    };
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let me = Arc::clone(&self);
                    // Every line a connection logs carries its id and peer. The lines are at
                    // debug level, and so is the span: at the default level a connection's task
                    // then enters no span on each of its many polls.
                    let span = debug_span!(
                        "session",
                        id = %format_args!("{id:x}"),
                        %peer,
                        client = tracing::field::Empty
                    );
                    tokio::spawn(me.connection(tcp, peer, id, admitted).instrument(span));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Refuses a connection before reading any of it (or none but its PROXY header, when the
    /// client it names is over its limits). A plain connection is answered (503 or
    /// 429 with Retry-After) by a small task that lasts [`REFUSAL_LINGER`] at most, while fewer
    /// than [`MAX_ANSWERED_REFUSALS`] are; a TLS connection is closed at once, since answering it
    /// would take the handshake the refusal is there to save.
    fn refuse_at_accept(self: &Arc<Self>, mut tcp: TcpStream, refusal: Refusal) {
        let (reason, status, text, retry, body) = match refusal {
            Refusal::MaxConnections => {
                unavailable(RejectReason::MaxConnections, "too many connections")
            }
            Refusal::Handshakes => unavailable(
                RejectReason::HandshakeLimit,
                "too many handshakes in progress",
            ),
            Refusal::RateLimited(retry) => rate_limited(retry),
        };
        self.reject(reason);
        if self.tls.is_some() {
            return;
        }
        if self.refusals.fetch_add(1, Ordering::AcqRel) >= MAX_ANSWERED_REFUSALS {
            self.refusals.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let answer = refusal_answer(status, text, retry, false, &body);
            let _ = tokio::time::timeout(REFUSAL_LINGER, async {
                tcp.write_all(&answer).await?;
                tcp.shutdown().await?;
                let mut sink = [0u8; 512];
                while tcp.read(&mut sink).await? > 0 {}
                std::io::Result::Ok(())
            })
            .await;
            me.refusals.fetch_sub(1, Ordering::AcqRel);
        });
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        id: u64,
        mut admitted: Admitted,
    ) {
        // Linux: inherited from the listener (see `bind`).
        #[cfg(not(target_os = "linux"))]
        let _ = tcp.set_nodelay(true);
        let limits = &self.admission.limits;
        let started = tokio::time::Instant::from_std(admitted.accepted);
        let deadline = started + limits.handshake_timeout;
        let Some((tcp, peer)) = self.proxy_header(tcp, peer, deadline, &mut admitted).await else {
            return;
        };
        let handshake = async {
            let mut conn = match &self.tls {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(s) => ClientConn::Tls(Box::new(s)),
                    Err(e) => return Err((None, RejectReason::TlsError, e.to_string())),
                },
                None => ClientConn::Plain(tcp),
            };
            match read_request(&mut conn).await {
                Ok((head, leftover)) => Ok((conn, head, leftover)),
                Err(e) => Err((Some(conn), RejectReason::BadRequest, e)),
            }
        };
        // Boxed: the TLS handshake state is large and must not stay in the task for the whole
        // life of the session.
        let handshake = Box::pin(tokio::time::timeout_at(deadline, handshake));
        let (mut conn, head, leftover) = match handshake.await {
            Err(_) => {
                self.reject(RejectReason::HandshakeTimeout);
                debug!("handshake timeout");
                return;
            }
            Ok(Err((conn, reason, msg))) => {
                self.reject(reason);
                debug!(error = %msg, "handshake failed");
                if let Some(mut conn) = conn {
                    respond(&mut conn, 400, "Bad Request", &[], &msg).await;
                }
                return;
            }
            Ok(Ok(x)) => x,
        };
        admitted.handshake_done();
        let head_read = tokio::time::Instant::now();
        let websocket = head.wants_websocket();
        let http = &limits.http;
        let content_length = head.content_length();
        let client = self.client_of(peer.ip(), &head);
        let mut http_slot = None;
        let refuse: Option<Refuse> = if self.drain().is_draining() {
            Some(unavailable(RejectReason::Draining, "draining"))
        } else if let Err(retry) = client.rate {
            Some(rate_limited(retry))
        } else if websocket && let Err(why) = head.check_websocket() {
            Some(bad_request(why))
        } else if websocket && !self.admission.origin_allowed(head.origin().as_deref()) {
            Some((
                RejectReason::OriginForbidden,
                403,
                "Forbidden",
                None,
                "origin not allowed".to_owned(),
            ))
        } else if websocket {
            None
        } else if let Err(why) = content_length {
            Some(bad_request(why))
        } else if http.max_body_bytes > 0
            && content_length.is_ok_and(|n| n.is_some_and(|n| n > http.max_body_bytes))
        {
            Some((
                RejectReason::BodyTooLarge,
                413,
                "Content Too Large",
                None,
                format!("request body over {} bytes", http.max_body_bytes),
            ))
        } else {
            http_slot = self.admission.try_http();
            http_slot.is_none().then(|| {
                unavailable(
                    RejectReason::HttpMaxConnections,
                    "too many plain HTTP connections",
                )
            })
        };
        if let Some((reason, status, text, retry, body)) = refuse {
            self.reject(reason);
            debug!(reason = reason.as_str(), "refused");
            answer(
                &mut conn,
                &refusal_answer(status, text, retry, websocket, &body),
            )
            .await;
            return;
        }
        let connecting = tokio::time::Instant::now();
        let upstream =
            match tokio::time::timeout_at(deadline, TcpStream::connect(self.upstream)).await {
                Ok(Ok(s)) => s,
                _ => {
                    // A plain HTTP request is not an upgrade: not in the health counts.
                    if websocket {
                        self.reject_upgrade(RejectReason::UpstreamUnavailable);
                    } else {
                        self.reject(RejectReason::UpstreamUnavailable);
                    }
                    respond(&mut conn, 502, "Bad Gateway", &[], "upstream unavailable").await;
                    return;
                }
            };
        let latency = &self.metrics().latency;
        latency
            .upstream_connect
            .observe(connecting.elapsed().as_secs_f64());
        let _ = upstream.set_nodelay(true);
        let ids = RequestIds::for_request(&head);
        let request = head.encode_request(peer.ip(), client.ip, conn.is_tls(), &ids);
        let body = content_length.ok().flatten();
        let log = Entry::new(id, peer, client.ip, started.into_std(), &head, ids);
        // Nothing of the handshake may stay allocated for the life of the session.
        drop(head);
        if websocket {
            let times = (started, deadline);
            self.websocket(log, admitted.slot, conn, upstream, request, leftover, times)
                .await;
        } else {
            self.metrics().http_requests.inc();
            let tally = Tally::default();
            let exchange = http_proxy::Exchange {
                request,
                body_start: leftover,
                body,
                head_read,
            };
            let context = http_proxy::Context {
                drain: self.drain(),
                metrics: self.metrics(),
                limits: http,
                tally: &tally,
            };
            Box::pin(http_proxy::serve(conn, upstream, exchange, context)).await;
            drop((admitted, http_slot));
            log.request_ended(&tally);
        }
    }

    /// Reads the PROXY header when `--proxy-protocol` asks for one (before `deadline`) and
    /// returns the connection with the peer the header names, or the socket's; then checks that
    /// client's limits if they were not checked at accept. `None`: the connection was refused,
    /// and is closed or being answered.
    async fn proxy_header(
        self: &Arc<Self>,
        mut tcp: TcpStream,
        socket_peer: SocketAddr,
        deadline: tokio::time::Instant,
        admitted: &mut Admitted,
    ) -> Option<(TcpStream, SocketAddr)> {
        let mode = self.addresses.proxy_protocol;
        if self.addresses.peer_is_client_at_accept(socket_peer.ip()) {
            return Some((tcp, socket_peer));
        }
        let peer = if mode == ProxyProtocol::Off {
            socket_peer
        } else {
            let header = proxy_protocol::read_header(&mut tcp, mode);
            match tokio::time::timeout_at(deadline, header).await {
                Err(_) => {
                    self.reject(RejectReason::HandshakeTimeout);
                    debug!("PROXY header timeout");
                    return None;
                }
                Ok(Err(e)) => {
                    self.reject(RejectReason::ProxyProtocol);
                    debug!(error = %e, "PROXY header refused");
                    return None;
                }
                Ok(Ok(named)) => named.unwrap_or(socket_peer),
            }
        };
        if peer != socket_peer {
            tracing::Span::current().record("client", tracing::field::display(peer));
        }
        if self.addresses.trusts(peer.ip()) {
            // A trusted proxy speaks for many clients: its requests are limited by the client
            // its X-Forwarded-For names, once the head is read.
            return Some((tcp, peer));
        }
        match admitted.admit_client(peer.ip(), Instant::now()) {
            Ok(()) => Some((tcp, peer)),
            Err(refusal) => {
                self.refuse_at_accept(tcp, refusal);
                None
            }
        }
    }

    /// The client behind `peer` (see [`ClientAddresses::client`]); a client named by a trusted
    /// proxy takes a token of its own rate.
    fn client_of(&self, peer: IpAddr, head: &Head) -> RequestClient {
        let ip = self
            .addresses
            .client(peer, head.header_values("x-forwarded-for"));
        let rate = if ip == peer {
            Ok(())
        } else {
            tracing::Span::current().record("client", tracing::field::display(ip));
            self.admission.rate.check(ip, Instant::now())
        };
        RequestClient { ip, rate }
    }

    /// The upgrade exchange with the app, then the session. `times` are the accept time and the
    /// handshake deadline.
    #[allow(clippy::too_many_arguments)]
    async fn websocket(
        &self,
        log: Box<Entry>,
        slot: ConnectionSlot,
        mut conn: ClientConn,
        mut upstream: TcpStream,
        request: Vec<u8>,
        from_client: Vec<u8>,
        (accepted, deadline): (tokio::time::Instant, tokio::time::Instant),
    ) {
        let asked = tokio::time::Instant::now();
        let exchange = async {
            upstream
                .write_all(&request)
                .await
                .map_err(|e| e.to_string())?;
            read_response(&mut upstream).await
        };
        let exchange = Box::pin(tokio::time::timeout_at(deadline, exchange));
        let (res, mut from_upstream) = match exchange.await {
            Ok(Ok(x)) => x,
            _ => {
                self.reject_upgrade(RejectReason::UpstreamUnavailable);
                respond(
                    &mut conn,
                    502,
                    "Bad Gateway",
                    &[],
                    "upstream did not answer the upgrade",
                )
                .await;
                return;
            }
        };
        let latency = &self.metrics().latency;
        latency
            .upstream_upgrade
            .observe(asked.elapsed().as_secs_f64());
        if res.status != 101 {
            self.reject_upgrade(RejectReason::UpstreamRefused);
            debug!(status = res.status, "upstream refused the upgrade");
            let mut out = res.encode_response();
            let head_len = out.len();
            let body_len = res
                .header("content-length")
                .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok())
                .unwrap_or(0)
                .min(64 * 1024);
            if from_upstream.len() < body_len {
                let mut rest = vec![0; body_len - from_upstream.len()];
                if tokio::time::timeout(Duration::from_secs(2), upstream.read_exact(&mut rest))
                    .await
                    .is_ok()
                {
                    from_upstream.extend_from_slice(&rest);
                }
            }
            out.extend_from_slice(&from_upstream[..from_upstream.len().min(body_len)]);
            answer(&mut conn, &out).await;
            let tally = Tally::default();
            tally.set_status(res.status);
            tally.add_to_client(out.len() - head_len);
            log.request_ended(&tally);
            return;
        }
        let Some(ticket) = self.drain().open_session(log.declared().moves_before()) else {
            self.reject(RejectReason::Draining);
            respond(
                &mut conn,
                503,
                "Service Unavailable",
                &[("Retry-After", "1".to_owned())],
                "draining",
            )
            .await;
            return;
        };
        let response = res.encode_response();
        drop(res);
        match write_bounded(&mut conn, &response).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return ticket.finish(crate::metrics::CloseReason::ClientDisconnect),
            Err(_) => return ticket.finish(crate::metrics::CloseReason::WriteStalled),
        }
        drop(response);
        latency.handshake.observe(accepted.elapsed().as_secs_f64());
        debug!("session open");
        let leftovers = Leftovers {
            from_client,
            from_upstream,
        };
        // The session runs as a task of its own, so that nothing of the handshake phase stays
        // allocated while it lasts; it holds the connection slot until it ends.
        let first = log.id() == 1;
        let task = session::start(
            Arc::clone(&self.session),
            ticket,
            slot,
            (conn, upstream),
            leftovers,
            log,
        );
        if first {
            debug!(bytes = std::mem::size_of_val(&task), "session task size");
        }
        tokio::spawn(task.instrument(tracing::Span::current()));
    }
}

/// Writes a short response and closes the connection (bounded in time).
async fn respond(
    conn: &mut ClientConn,
    status: u16,
    text: &str,
    extra: &[(&str, String)],
    body: &str,
) {
    answer(conn, &http::simple_response(status, text, extra, body)).await;
}

/// A refusal's answer: `Retry-After` when the client may come back, else for a WebSocket
/// upgrade the version the gateway speaks.
fn refusal_answer(
    status: u16,
    text: &str,
    retry: Option<u64>,
    websocket: bool,
    body: &str,
) -> Vec<u8> {
    let extra = match (retry, websocket) {
        (Some(s), _) => Some(("Retry-After", s.to_string())),
        (None, true) => Some(("Sec-WebSocket-Version", "13".to_owned())),
        (None, false) => None,
    };
    http::simple_response(status, text, extra.as_slice(), body)
}

/// Writes `bytes` and closes the connection, in [`ANSWER_TIMEOUT`] at most.
async fn answer<W: AsyncWrite + Unpin>(conn: &mut W, bytes: &[u8]) {
    if let Ok(Ok(())) = write_bounded(conn, bytes).await {
        let _ = tokio::time::timeout(ANSWER_TIMEOUT, conn.shutdown()).await;
    }
}

/// Writes `bytes`, giving up after [`ANSWER_TIMEOUT`] (the outer error).
async fn write_bounded<W: AsyncWrite + Unpin>(
    conn: &mut W,
    bytes: &[u8],
) -> Result<std::io::Result<()>, tokio::time::error::Elapsed> {
    tokio::time::timeout(ANSWER_TIMEOUT, conn.write_all(bytes)).await
}

/// Reads until a complete head (`parse` is [`http::parse_request`] or [`http::parse_response`]);
/// returns it with the bytes read past it.
///
/// The head is parsed at most three times, however it arrives: once its first line is complete
/// (a malformed start is refused at once), once a blank line ends it, and once it reaches
/// [`http::MAX_HEAD_BYTES`]. Between those only the new bytes are searched for the blank line, so
/// a head sent a byte at a time costs linear time, not a parse per byte.
pub async fn read_head<R: AsyncRead + Unpin>(
    src: &mut R,
    parse: fn(&[u8]) -> Result<Option<Head>, HeadError>,
) -> Result<(Head, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(1024);
    let mut scan = HeadScan::default();
    loop {
        // Bounded: each round adds at least one byte and the head is capped at MAX_HEAD_BYTES.
        let n = src.read_buf(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the head was complete".into());
        }
        if !scan.worth_parsing(&buf) {
            continue;
        }
        match parse(&buf) {
            Ok(Some(head)) => {
                let rest = buf.split_off(head.len);
                return Ok((head, rest));
            }
            Ok(None) => {
                if buf.capacity() - buf.len() < 512 {
                    buf.reserve(4096.min(http::MAX_HEAD_BYTES + 1 - buf.len()).max(512));
                }
            }
            Err(HeadError::TooLarge) => return Err("request head too large".into()),
            Err(HeadError::Malformed) => return Err("malformed HTTP head".into()),
        }
    }
}

/// Where [`read_head`] stands in the bytes of a head it has read so far.
#[derive(Debug, Default)]
struct HeadScan {
    /// The first byte of the start line (blank lines before it are allowed and skipped).
    start: Option<usize>,
    /// The start line was complete at the last parse.
    line_parsed: bool,
    /// Bytes searched so far.
    searched: usize,
}

impl HeadScan {
    /// True when `buf`, grown since the last call, should be parsed: its start line has just
    /// become complete, a blank line ends it, or it is as long as a head may be.
    fn worth_parsing(&mut self, buf: &[u8]) -> bool {
        let from = self.searched;
        self.searched = buf.len();
        if buf.len() >= http::MAX_HEAD_BYTES {
            return true;
        }
        let start = match self.start {
            Some(start) => start,
            None => match buf[from..].iter().position(|b| !matches!(b, b'\r' | b'\n')) {
                Some(i) => *self.start.insert(from + i),
                None => return false,
            },
        };
        // A line end at `i` followed by an empty line (LF, or CR LF) ends the head; a line end
        // already searched may pair with the new bytes, so look back two.
        let look = from.saturating_sub(2).max(start);
        let ends = (look..buf.len()).any(|i| {
            buf[i] == b'\n'
                && match buf.get(i + 1) {
                    Some(b'\n') => true,
                    Some(b'\r') => buf.get(i + 2) == Some(&b'\n'),
                    _ => false,
                }
        });
        if ends {
            return true;
        }
        if !self.line_parsed && buf[look..].contains(&b'\n') {
            self.line_parsed = true;
            return true;
        }
        false
    }
}

async fn read_request(conn: &mut ClientConn) -> Result<(Head, Vec<u8>), String> {
    read_head(conn, http::parse_request).await
}

/// Reads the upstream's response head.
pub async fn read_response<R: AsyncRead + Unpin>(src: &mut R) -> Result<(Head, Vec<u8>), String> {
    read_head(src, http::parse_response).await
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// Hands out its bytes one per read, as a slow client would.
    struct ByteByByte {
        data: Vec<u8>,
        at: usize,
    }

    impl AsyncRead for ByteByByte {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some(&b) = self.data.get(self.at) {
                buf.put_slice(&[b]);
                self.at += 1;
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn byte_by_byte(data: impl Into<Vec<u8>>) -> ByteByByte {
        ByteByByte {
            data: data.into(),
            at: 0,
        }
    }

    thread_local! {
        /// Parses of the current test's heads, and the bytes they covered (each test runs on a
        /// thread of its own, with a current-thread runtime).
        static PARSED: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    }

    fn counted(buf: &[u8]) -> Result<Option<Head>, HeadError> {
        PARSED.with(|p| p.set((p.get().0 + 1, p.get().1 + buf.len())));
        http::parse_request(buf)
    }

    /// Reads `head` a byte at a time with [`counted`] parses: the result, the parses and the
    /// bytes they covered.
    async fn read_counted(head: &str) -> (Result<(Head, Vec<u8>), String>, usize, usize) {
        PARSED.with(|p| p.set((0, 0)));
        let got = read_head(&mut byte_by_byte(head), counted).await;
        let (parses, bytes) = PARSED.with(Cell::get);
        (got, parses, bytes)
    }

    /// The first line of the heads below, with a blank line before it (which is allowed).
    const START: &str = "\r\nGET /chat HTTP/1.1\r\n";

    #[tokio::test]
    async fn a_head_sent_a_byte_at_a_time_is_parsed_whole_once_and_its_start_line_once() {
        let pad = "a".repeat(http::MAX_HEAD_BYTES - 200);
        let head = format!("{START}Host: x\r\nX-Pad: {pad}\r\n\r\nbody");
        let (got, parses, bytes) = read_counted(&head).await;
        let (parsed, rest) = got.expect("a valid head");
        assert_eq!(parsed.header("host"), Some(&b"x"[..]));
        // The bytes are read one at a time: nothing past the head was read yet.
        assert!(rest.is_empty(), "{rest:?}");
        // The bound: linear in the head's length. A parse per read would be about 16,000
        // parses over 130 MB.
        assert!(parses <= 2, "{parses} parses of a {}-byte head", parsed.len);
        assert!(
            bytes <= START.len() + parsed.len,
            "{bytes} bytes parsed for a {}-byte head",
            parsed.len
        );
    }

    #[tokio::test]
    async fn a_head_without_an_end_sent_a_byte_at_a_time_is_parsed_once_at_its_limit() {
        let pad = "a".repeat(2 * http::MAX_HEAD_BYTES);
        let (got, parses, bytes) = read_counted(&format!("{START}Host: x\r\nX-Pad: {pad}")).await;
        assert_eq!(got.expect_err("too large"), "request head too large");
        // The start line once, then the 16 KiB a head may have, once.
        assert!(parses <= 2, "{parses} parses");
        assert!(
            bytes <= START.len() + http::MAX_HEAD_BYTES,
            "{bytes} bytes parsed"
        );
    }

    /// Takes no byte, ever: a client whose receive window stays closed.
    struct NeverWritable;

    impl AsyncWrite for NeverWritable {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Pending
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Pending
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn answers_and_the_101_to_a_client_that_takes_nothing_give_up_in_bounded_time() {
        let started = tokio::time::Instant::now();
        answer(&mut NeverWritable, b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
        assert_eq!(started.elapsed(), ANSWER_TIMEOUT);
        let written = write_bounded(&mut NeverWritable, b"HTTP/1.1 101\r\n\r\n").await;
        assert!(written.is_err(), "timed out");
        assert_eq!(started.elapsed(), 2 * ANSWER_TIMEOUT);
    }

    #[tokio::test]
    async fn a_malformed_start_line_is_refused_before_the_head_ends() {
        let err = read_head(
            &mut byte_by_byte(&b"\x01\x02 garbage HTTP/1.1\r\nHost: x\r\n"[..]),
            http::parse_request,
        )
        .await
        .expect_err("malformed");
        assert_eq!(err, "malformed HTTP head");
    }

    #[tokio::test]
    async fn heads_ending_in_bare_line_feeds_or_split_anywhere_are_found() {
        for head in [
            &b"GET / HTTP/1.1\nHost: x\n\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
        ] {
            let (parsed, _) = read_head(&mut byte_by_byte(head), http::parse_request)
                .await
                .expect("complete");
            assert_eq!(parsed.len, head.len());
        }
    }
}
