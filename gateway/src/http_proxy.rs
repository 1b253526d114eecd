//! Plain HTTP/1.1 reverse proxying: one request per client connection, relayed to the upstream
//! with `Connection: close`, the response streamed back as it arrives (so server-sent events and
//! long polls work), and the client told `Connection: close` too.
//!
//! Plain requests are not WebSocket sessions: they are not counted in the drain report. A drain
//! refuses new ones with 503 and cuts the ones still streaming when its deadline passes; until
//! then they keep the process at SIGTERM as sessions do.
//!
//! An exchange in which no byte moves either way for `--http-idle-timeout` is ended: a request
//! whose announced body does not come is answered 408, an app that does not start its response
//! 504, and a response nobody reads (or a stream with no event) is cut. A request body over
//! `--http-max-body-bytes` is refused with 413 when its `Content-Length` says so, and cut where
//! it passes the limit otherwise.

use std::{
    io,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context as TaskContext, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, copy},
    net::TcpStream,
    time::Instant,
};
use tracing::debug;

use crate::{
    access_log::Tally,
    config::HttpLimits,
    conn::ClientConn,
    drain::{Drain, Phase},
    http,
    metrics::{Metrics, RejectReason},
    proxy::read_response,
};

/// One request, as the proxy hands it over.
#[derive(Debug)]
pub struct Exchange {
    /// The request head to send to the app.
    pub request: Vec<u8>,
    /// Bytes read past the head: the start of the body.
    pub body_start: Vec<u8>,
    /// The body length the request announced, if it did.
    pub body: Option<u64>,
    /// When the request head was complete.
    pub head_read: Instant,
}

/// What every exchange shares, and where this one counts what it moved.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    pub drain: &'a Arc<Drain>,
    pub metrics: &'a Metrics,
    pub limits: &'a HttpLimits,
    pub tally: &'a Tally,
}

/// How an exchange ended early.
#[derive(Debug)]
enum Cut {
    Idle,
    BodyTooLarge,
    DrainDeadline,
}

/// The last time a byte moved, in milliseconds since `origin`.
#[derive(Debug)]
struct Activity {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.origin + std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A reader or writer that notes each byte moved in an [`Activity`], and (for the client's
/// side) counts the bytes read against a limit.
struct Watched<'a, T> {
    inner: T,
    activity: &'a Activity,
    read: u64,
    /// 0: no limit.
    limit: u64,
}

impl<'a, T> Watched<'a, T> {
    fn new(inner: T, activity: &'a Activity, limit: u64) -> Self {
        Watched {
            inner,
            activity,
            read: 0,
            limit,
        }
    }

    fn over_limit(&self) -> bool {
        self.limit > 0 && self.read > self.limit
    }
}

/// The error a reader returns past its limit.
fn over_limit() -> io::Error {
    io::Error::new(io::ErrorKind::FileTooLarge, "request body over the limit")
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut me.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            me.activity.touch();
            me.read += n;
            if me.over_limit() {
                return Poll::Ready(Err(over_limit()));
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            me.activity.touch();
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Relays one request and its response.
pub async fn serve(client: ClientConn, upstream: TcpStream, exchange: Exchange, cx: Context<'_>) {
    let _stream = cx.drain.open_stream();
    let activity = Activity::new();
    let (cr, cw) = tokio::io::split(client);
    let (ur, uw) = upstream.into_split();
    let tally = cx.tally;
    let mut cr = Watched::new(
        tally.count_from_client(cr),
        &activity,
        cx.limits.max_body_bytes,
    );
    // The body bytes read with the head count against the limit too.
    cr.read = exchange.body_start.len() as u64;
    let mut cw = Watched::new(cw, &activity, 0);
    let mut ur = Watched::new(ur, &activity, 0);
    let mut uw = Watched::new(uw, &activity, 0);
    let cut = {
        let up = async {
            if cr.over_limit() {
                return Err(over_limit());
            }
            uw.write_all(&exchange.request).await?;
            uw.write_all(&exchange.body_start).await?;
            tally.add_from_client(exchange.body_start.len());
            copy(&mut cr, &mut uw).await?;
            uw.shutdown().await?;
            io::Result::Ok(())
        };
        let down = async {
            // The first head is rewritten; anything after it (the body, or the final response
            // after a `100 Continue`) passes through as is.
            let (head, rest) = read_response(&mut ur).await.map_err(io::Error::other)?;
            cx.metrics
                .latency
                .http_first_byte
                .observe(exchange.head_read.elapsed().as_secs_f64());
            // Set before the head is written: an exchange cut during the write has started its
            // response, and gets no answer of the gateway's after it.
            tally.set_status(head.status);
            cw.write_all(&head.encode_response()).await?;
            cw.write_all(&rest).await?;
            tally.add_to_client(rest.len());
            copy(&mut tally.count_to_client(&mut ur), &mut cw).await?;
            cw.shutdown().await?;
            io::Result::Ok(())
        };
        let deadline = async {
            let mut changes = pin!(cx.drain.listen());
            while !matches!(cx.drain.phase(), Phase::Deadline { .. }) {
                changes.as_mut().fired().await;
            }
        };
        let idle = async {
            loop {
                let until = activity.last() + cx.limits.idle_timeout;
                if Instant::now() >= until {
                    return;
                }
                tokio::time::sleep_until(until).await;
            }
        };
        tokio::pin!(up, down, deadline, idle);
        let mut up_done = false;
        loop {
            tokio::select! {
                r = &mut up, if !up_done => {
                    up_done = true;
                    match r {
                        Err(e) if e.kind() == io::ErrorKind::FileTooLarge => {
                            break Some(Cut::BodyTooLarge);
                        }
                        Err(e) => debug!(error = %e, "request relay ended"),
                        Ok(()) => {}
                    }
                }
                r = &mut down => {
                    if let Err(e) = r { debug!(error = %e, "response relay ended"); }
                    break None;
                }
                _ = &mut deadline => break Some(Cut::DrainDeadline),
                _ = &mut idle => break Some(Cut::Idle),
            }
        }
    };
    let Some(cut) = cut else { return };
    let started = tally.status().is_some();
    let answer = match cut {
        Cut::DrainDeadline => {
            debug!("drain deadline: cutting the HTTP exchange");
            None
        }
        Cut::BodyTooLarge => {
            cx.metrics.reject(RejectReason::BodyTooLarge);
            debug!("request body over the limit");
            Some((413, "Content Too Large", "request body over the limit"))
        }
        Cut::Idle => {
            cx.metrics.http_idle_timeouts.inc();
            debug!(responded = started, "HTTP exchange idle: ending it");
            let body_missing = exchange.body.is_some_and(|n| cr.read < n);
            Some(if body_missing {
                (408, "Request Timeout", "request body not received in time")
            } else {
                (504, "Gateway Timeout", "upstream did not respond in time")
            })
        }
    };
    if let Some((status, text, body)) = answer.filter(|_| !started) {
        tally.set_status(status);
        let bytes = http::simple_response(status, text, &[], body);
        let _ = tokio::time::timeout(crate::proxy::ANSWER_TIMEOUT, async {
            cw.write_all(&bytes).await?;
            cw.shutdown().await
        })
        .await;
    }
}
