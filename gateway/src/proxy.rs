//! The client listener: accepts connections, runs the handshake phase under the handshake
//! timeout (TLS, request head), applies admission (drain, connection cap, rate limit, origin),
//! and hands each connection to a WebSocket [`session`](crate::session) or to the plain
//! [`http_proxy`](crate::http_proxy).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, debug_span, warn};

use crate::{
    access_log::{Entry, Tally},
    conn::ClientConn,
    drain::Drain,
    http::{self, Head, HeadError},
    http_proxy,
    limits::{Admission, ConnectionSlot},
    metrics::{Metrics, RejectReason},
    reqid::RequestIds,
    session::{self, Leftovers, SessionContext},
};

/// Everything the proxy shares between connections.
pub struct Proxy {
    pub upstream: SocketAddr,
    pub tls: Option<TlsAcceptor>,
    pub admission: Arc<Admission>,
    pub session: Arc<SessionContext>,
    pub next_id: AtomicU64,
}

impl Proxy {
    fn metrics(&self) -> &Metrics {
        &self.session.metrics
    }

    fn drain(&self) -> &Arc<Drain> {
        &self.session.drain
    }

    /// Accepts connections forever.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let me = Arc::clone(&self);
                    // Every line a connection logs carries its id and peer. The lines are at
                    // debug level, and so is the span: at the default level a connection's task
                    // then enters no span on each of its many polls.
                    let span = debug_span!("session", id = %format_args!("{id:x}"), %peer);
                    tokio::spawn(me.connection(tcp, peer, id).instrument(span));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, id: u64) {
        // Linux: inherited from the listener (see `bind`).
        #[cfg(not(target_os = "linux"))]
        let _ = tcp.set_nodelay(true);
        let slot = self.admission.try_connect();
        let rate = self.admission.rate.check(peer.ip(), Instant::now());
        let limits = &self.admission.limits;
        let started = tokio::time::Instant::now();
        let deadline = started + limits.handshake_timeout;
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
                self.metrics().reject(RejectReason::HandshakeTimeout);
                debug!("handshake timeout");
                return;
            }
            Ok(Err((conn, reason, msg))) => {
                self.metrics().reject(reason);
                debug!(error = %msg, "handshake failed");
                if let Some(mut conn) = conn {
                    respond(&mut conn, 400, "Bad Request", &[], &msg).await;
                }
                return;
            }
            Ok(Ok(x)) => x,
        };
        let websocket = head.wants_websocket();
        let refuse = if self.drain().is_draining() {
            Some((
                RejectReason::Draining,
                503,
                "Service Unavailable",
                Some(1),
                "draining".to_owned(),
            ))
        } else if slot.is_none() {
            Some((
                RejectReason::MaxConnections,
                503,
                "Service Unavailable",
                Some(1),
                "too many connections".to_owned(),
            ))
        } else if let Err(retry) = rate {
            Some((
                RejectReason::RateLimited,
                429,
                "Too Many Requests",
                Some(retry),
                "connection rate limit".to_owned(),
            ))
        } else if websocket && let Err(why) = head.check_websocket() {
            Some((
                RejectReason::BadRequest,
                400,
                "Bad Request",
                None,
                why.to_owned(),
            ))
        } else if websocket && !self.admission.origin_allowed(head.origin().as_deref()) {
            Some((
                RejectReason::OriginForbidden,
                403,
                "Forbidden",
                None,
                "origin not allowed".to_owned(),
            ))
        } else {
            None
        };
        if let Some((reason, status, text, retry, body)) = refuse {
            self.metrics().reject(reason);
            debug!(reason = reason.as_str(), "refused");
            let extra: Vec<(&str, String)> = match (retry, websocket) {
                (Some(s), _) => vec![("Retry-After", s.to_string())],
                (None, true) => vec![("Sec-WebSocket-Version", "13".to_owned())],
                _ => vec![],
            };
            respond(&mut conn, status, text, &extra, &body).await;
            return;
        }
        let upstream =
            match tokio::time::timeout_at(deadline, TcpStream::connect(self.upstream)).await {
                Ok(Ok(s)) => s,
                _ => {
                    self.metrics().reject(RejectReason::UpstreamUnavailable);
                    respond(&mut conn, 502, "Bad Gateway", &[], "upstream unavailable").await;
                    return;
                }
            };
        let _ = upstream.set_nodelay(true);
        let ids = RequestIds::for_request(&head);
        let request = head.encode_request(peer.ip(), conn.is_tls(), &ids);
        let log = Entry::new(id, peer, started.into_std(), &head, ids);
        // Nothing of the handshake may stay allocated for the life of the session.
        drop(head);
        if websocket {
            self.websocket(log, slot, conn, upstream, request, leftover, deadline)
                .await;
        } else {
            self.metrics().http_requests.inc();
            let tally = Tally::default();
            Box::pin(http_proxy::serve(
                conn,
                upstream,
                request,
                leftover,
                self.drain(),
                &tally,
            ))
            .await;
            drop(slot);
            log.request_ended(&tally);
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn websocket(
        &self,
        log: Box<Entry>,
        slot: Option<ConnectionSlot>,
        mut conn: ClientConn,
        mut upstream: TcpStream,
        request: Vec<u8>,
        from_client: Vec<u8>,
        deadline: tokio::time::Instant,
    ) {
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
                self.metrics().reject(RejectReason::UpstreamUnavailable);
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
        if res.status != 101 {
            self.metrics().reject(RejectReason::UpstreamRefused);
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
            let _ = conn.write_all(&out).await;
            let _ = conn.shutdown().await;
            let tally = Tally::default();
            tally.set_status(res.status);
            tally.add_to_client(out.len() - head_len);
            log.request_ended(&tally);
            return;
        }
        let Some(ticket) = self.drain().open_session() else {
            self.metrics().reject(RejectReason::Draining);
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
        if conn.write_all(&response).await.is_err() {
            ticket.finish(crate::metrics::CloseReason::ClientDisconnect);
            return;
        }
        drop(response);
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
    let bytes = http::simple_response(status, text, extra, body);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        conn.write_all(&bytes).await?;
        conn.shutdown().await
    })
    .await;
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
    use std::sync::atomic::{AtomicUsize, Ordering};

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

    static PARSES: AtomicUsize = AtomicUsize::new(0);

    fn counted(buf: &[u8]) -> Result<Option<Head>, HeadError> {
        PARSES.fetch_add(1, Ordering::Relaxed);
        http::parse_request(buf)
    }

    #[tokio::test]
    async fn a_head_sent_a_byte_at_a_time_is_parsed_three_times_at_most() {
        let pad = "a".repeat(http::MAX_HEAD_BYTES - 200);
        let head = format!("\r\nGET /chat HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\n\r\nbody");
        PARSES.store(0, Ordering::Relaxed);
        let (parsed, rest) = read_head(&mut byte_by_byte(head), counted)
            .await
            .expect("a valid head");
        assert_eq!(parsed.header("host"), Some(&b"x"[..]));
        // The bytes are read one at a time: nothing past the head was read yet.
        assert!(rest.is_empty(), "{rest:?}");
        let parses = PARSES.load(Ordering::Relaxed);
        assert!(parses <= 3, "{parses} parses of a {}-byte head", parsed.len);
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
