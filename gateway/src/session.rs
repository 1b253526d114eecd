//! One proxied WebSocket session: relaying frames both ways, the close handshake, heartbeats,
//! the idle timeout, and the session's part in a drain or a rebalance.
//!
//! # Memory
//!
//! An idle session owns no buffer. Bytes are read, only when a socket is ready, into a buffer
//! that belongs to the worker thread ([`RELAY_BUF`]), scanned in place by a [`FrameScanner`] and
//! written straight to the other leg. Only when the other leg cannot take them all at once is
//! the rest copied into a per-session `Vec`, which is freed as soon as it has been written. Timers
//! are shared too: the session waits on the process-wide [`Ticker`] instead of owning a timer
//! per heartbeat (it creates one only while it is closing or has a slot in a Notify drain or a
//! rebalance).
//!
//! # Accounting
//!
//! Each session ends with exactly one [`CloseReason`], reported through its [`SessionTicket`];
//! [`CloseReason::outcome`] maps it to migrated, closedByClient or dropped. It also ends with one
//! line of the [`access_log`](crate::access_log): the bytes it relayed each way (counted by the
//! pumps as they read) and the code of its first close frame.

use std::{
    cell::RefCell,
    future::poll_fn,
    io,
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};
use tracing::debug;

use crate::{
    access_log::{Entry, SessionEnd},
    conn::ClientConn,
    drain::{Drain, Phase, SessionTicket, notice_at},
    frame::{
        CLOSE_ABNORMAL, CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_NORMAL,
        CLOSE_POLICY_VIOLATION, ControlFrame, FrameError, FrameScanner, Role, Scanned,
    },
    limits::{ConnectionSlot, Ticker},
    metrics::{CloseReason, Metrics},
    rebalance::Order,
    session_limits::{Admitted, LimitAction, RateLimits, Throttle},
};

/// Size of the per-thread relay buffer.
pub const RELAY_BUF_BYTES: usize = 32 * 1024;
/// How long the gateway waits for the other side's close frame once a close handshake started.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Reads per leg before the session yields to other tasks.
const READS_PER_POLL: usize = 16;

thread_local! {
    /// The worker thread's relay buffer: borrowed only inside one synchronous poll, never across
    /// an `.await`, so every session on the thread shares it.
    static RELAY_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; RELAY_BUF_BYTES].into_boxed_slice());
}

/// Limits a session enforces.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_message_bytes: u64,
}

/// How one leg of the relay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LegEnd {
    /// The source sent EOF.
    Eof,
    /// Reading the source failed.
    ReadError,
    /// Writing the destination failed.
    WriteError,
    /// The source broke the protocol.
    Frame(FrameError),
}

/// One direction of the relay: source scanner plus bytes not yet written to the destination.
#[derive(Debug)]
struct Pump {
    scanner: FrameScanner,
    pending: Vec<u8>,
    need_flush: bool,
    /// Bytes were written to the destination since the session loop last looked.
    wrote: bool,
    /// The source has ended or failed: stop reading it.
    src_done: bool,
    /// Drop what the source sends instead of forwarding it.
    discard: bool,
    /// Close already reported to the session loop.
    close_reported: bool,
    /// Bytes read from the source, for the access log.
    relayed: u64,
}

impl Pump {
    fn new(role: Role, max: u64) -> Self {
        Pump {
            scanner: FrameScanner::new(role, max),
            pending: Vec::new(),
            need_flush: false,
            wrote: false,
            src_done: false,
            discard: false,
            close_reported: false,
            relayed: 0,
        }
    }

    /// True when a frame of the gateway's own may be written to the destination now.
    fn can_inject(&self) -> bool {
        self.pending.is_empty() && self.scanner.at_boundary()
    }

    /// Moves bytes from `src` to `dst`. `Ready(Ok)` means a frame event needs the session's
    /// attention; `Ready(Err)` means this leg ended; `Pending` means wait (wakers registered, or,
    /// while `throttle` holds bytes back, the session's timer set at its `resume_at`).
    fn poll<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
        buf: &mut [u8],
        seen: &mut Scanned,
        mut throttle: Option<&mut Throttle>,
    ) -> Poll<Result<u64, LegEnd>>
    where
        S: AsyncRead + Unpin,
        D: AsyncWrite + Unpin,
    {
        let mut total = 0u64;
        for _ in 0..READS_PER_POLL {
            while !self.pending.is_empty() {
                match Pin::new(&mut *dst).poll_write(cx, &self.pending) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(Err(LegEnd::WriteError));
                    }
                    Poll::Ready(Ok(n)) => {
                        self.pending.drain(..n);
                        self.need_flush = true;
                        self.wrote = true;
                    }
                    Poll::Pending => return ready_or_pending(total),
                }
            }
            if self.pending.capacity() > 0 {
                self.pending = Vec::new();
            }
            if self.need_flush {
                match Pin::new(&mut *dst).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.need_flush = false,
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(LegEnd::WriteError)),
                    Poll::Pending => return ready_or_pending(total),
                }
            }
            if self.src_done {
                return ready_or_pending(total);
            }
            if let Some(t) = throttle.as_deref_mut()
                && t.holding()
            {
                if self.discard {
                    t.discard();
                    continue;
                }
                // The source is not read while bytes are held back: what fits now is written
                // first, then this comes round again.
                match t.release(&mut self.scanner, seen, &mut self.pending, Instant::now()) {
                    Admitted::Held(0) => return ready_or_pending(total),
                    Admitted::All | Admitted::Held(_) => {
                        self.need_flush = true;
                        continue;
                    }
                    Admitted::Failed(e, _) => {
                        self.src_done = true;
                        return Poll::Ready(Err(LegEnd::Frame(e)));
                    }
                }
            }
            let mut rb = ReadBuf::new(buf);
            match Pin::new(&mut *src).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    if let Some(t) = throttle.as_deref_mut() {
                        t.caught_up();
                    }
                    return ready_or_pending(total);
                }
                Poll::Ready(Err(_)) => {
                    self.src_done = true;
                    return Poll::Ready(Err(LegEnd::ReadError));
                }
                Poll::Ready(Ok(())) => {}
            }
            let n = rb.filled().len();
            if n == 0 {
                self.src_done = true;
                return Poll::Ready(Err(LegEnd::Eof));
            }
            total += n as u64;
            self.relayed += n as u64;
            let data = &buf[..n];
            let scanned = match throttle.as_deref_mut().filter(|_| !self.discard) {
                None => self
                    .scanner
                    .scan_to_error(data, seen)
                    .map_or_else(|(e, valid)| Admitted::Failed(e, valid), |()| Admitted::All),
                Some(t) => t.scan(&mut self.scanner, data, seen, Instant::now()),
            };
            let data = match scanned {
                Admitted::All => data,
                // The rest waits in the throttle; the next round finds it there.
                Admitted::Held(valid) => &data[..valid],
                Admitted::Failed(e, valid) => {
                    // The whole frames before the bad one are relayed, ahead of the close frame.
                    if !self.discard {
                        self.pending.extend_from_slice(&data[..valid]);
                    }
                    self.src_done = true;
                    return Poll::Ready(Err(LegEnd::Frame(e)));
                }
            };
            if self.discard || data.is_empty() {
                continue;
            }
            match Pin::new(&mut *dst).poll_write(cx, data) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    return Poll::Ready(Err(LegEnd::WriteError));
                }
                Poll::Ready(Ok(w)) => {
                    self.pending.extend_from_slice(&data[w..]);
                    self.wrote = true;
                }
                Poll::Pending => self.pending.extend_from_slice(data),
            }
            self.need_flush = true;
            if self.scanner.closed() && !self.close_reported {
                return Poll::Ready(Ok(total));
            }
        }
        // Fair share used up: let other sessions run, then continue.
        cx.waker().wake_by_ref();
        ready_or_pending(total)
    }
}

fn ready_or_pending(total: u64) -> Poll<Result<u64, LegEnd>> {
    if total > 0 {
        Poll::Ready(Ok(total))
    } else {
        Poll::Pending
    }
}

/// What the relay reports to the session loop.
#[derive(Debug)]
enum Event {
    /// A close frame was seen, or a frame boundary the loop waits for was reached.
    Progress,
    ClientLeg(LegEnd),
    UpstreamLeg(LegEnd),
    /// The session's limits held back this many more client frames.
    Held(u64),
}

/// Who started the close handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closing {
    Open,
    /// The client sent a close frame; waiting for the upstream's.
    ByClient,
    /// The upstream sent a close frame; waiting for the client's.
    ByUpstream,
    /// The gateway sent the client a close frame; `reason` is how it ends if the client answers.
    ByGateway(CloseReason),
}

/// Both legs and their pumps, with the session's registration.
struct Relay {
    client: ClientConn,
    upstream: TcpStream,
    /// Kept here rather than passed to the session loop beside the relay: one reference less in
    /// the session's task.
    ticket: SessionTicket,
    c2u: Pump,
    u2c: Pump,
    metrics: Metrics,
    /// When the client last sent anything and when a data message last passed either way, as of
    /// the last tick. Relaying only raises `client_active` and `message_active`, without reading
    /// the clock; each tick stamps what was raised since the one before (see
    /// [`Relay::stamp_activity`]). The timeouts that read these are checked on ticks anyway.
    last_client_rx: Instant,
    last_message: Instant,
    client_active: bool,
    message_active: bool,
    /// The session loop waits for a frame boundary towards the client.
    want_inject: bool,
    /// Since when, as of a tick, bytes for the client have waited with none taken.
    stalled_since: Option<Instant>,
    /// The gateway queued a close frame of its own to the client.
    client_close_sent: bool,
    /// The code of the first close frame on the client's connection, either way (the client's,
    /// the app's relayed, or the gateway's own); 0 before.
    first_close: u16,
    /// When the heartbeat ping now unanswered was sent.
    ping_sent: Option<Instant>,
    /// The per-session limits' buckets and held-back bytes; none without limits.
    throttle: Option<Box<Throttle>>,
}

impl Relay {
    /// Relays both ways. Returns `Ready` only for what the session loop must act on: a leg that
    /// ended, a close frame not yet reported, or a frame boundary it waits for to inject a frame.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        RELAY_BUF.with_borrow_mut(|buf| {
            let mut seen = Scanned::default();
            match self.c2u.poll(
                cx,
                &mut self.client,
                &mut self.upstream,
                buf,
                &mut seen,
                self.throttle.as_deref_mut(),
            ) {
                Poll::Ready(Ok(n)) => {
                    self.client_active = true;
                    self.message_active |= seen.data_frames > 0;
                    if seen.pong
                        && let Some(sent) = self.ping_sent.take()
                    {
                        let rtt = sent.elapsed().as_secs_f64();
                        self.metrics.latency.ping_rtt.observe(rtt);
                    }
                    self.metrics.bytes_c2u.inc_by(n);
                    self.metrics.messages_c2u.inc_by(seen.messages);
                }
                Poll::Ready(Err(LegEnd::WriteError)) => {
                    return Poll::Ready(Event::UpstreamLeg(LegEnd::WriteError));
                }
                Poll::Ready(Err(end)) => return Poll::Ready(Event::ClientLeg(end)),
                Poll::Pending => {}
            }
            let mut seen = Scanned::default();
            match self.u2c.poll(
                cx,
                &mut self.upstream,
                &mut self.client,
                buf,
                &mut seen,
                None,
            ) {
                Poll::Ready(Ok(n)) => {
                    self.message_active |= seen.data_frames > 0;
                    self.metrics.bytes_u2c.inc_by(n);
                    self.metrics.messages_u2c.inc_by(seen.messages);
                }
                Poll::Ready(Err(LegEnd::WriteError)) => {
                    return Poll::Ready(Event::ClientLeg(LegEnd::WriteError));
                }
                Poll::Ready(Err(end)) => return Poll::Ready(Event::UpstreamLeg(end)),
                Poll::Pending => {}
            }
            if let Some(t) = &mut self.throttle {
                let delayed = t.take_delayed();
                if delayed > 0 {
                    return Poll::Ready(Event::Held(delayed));
                }
            }
            let close_seen = (self.c2u.scanner.closed() && !self.c2u.close_reported)
                || (self.u2c.scanner.closed() && !self.u2c.close_reported);
            if close_seen || (self.want_inject && self.u2c.can_inject()) {
                Poll::Ready(Event::Progress)
            } else {
                Poll::Pending
            }
        })
    }

    /// Stamps the activity relayed since the last tick with the tick's time.
    fn stamp_activity(&mut self, now: Instant) {
        if std::mem::take(&mut self.client_active) {
            self.last_client_rx = now;
        }
        if std::mem::take(&mut self.message_active) {
            self.last_message = now;
        }
    }

    /// How long, as of this tick, bytes for the client have waited without the client taking
    /// any. A client that stops reading while the app sends would otherwise be held forever:
    /// with bytes waiting no ping can be sent, and nothing times out.
    fn client_stalled_for(&mut self, now: Instant) -> Duration {
        let wrote = std::mem::take(&mut self.u2c.wrote);
        if wrote || self.u2c.pending.is_empty() {
            self.stalled_since = None;
            return Duration::ZERO;
        }
        now.duration_since(*self.stalled_since.get_or_insert(now))
    }

    /// Queues a close frame to the client if a frame boundary allows it now, unless one went to
    /// it already (the gateway's own, or the app's, relayed): RFC 6455 allows one per side. Unlike
    /// other frames it may queue behind bytes still waiting for the client: they end where the
    /// scanner is, so at a frame boundary too, and nothing but the close follows them.
    fn close_client(&mut self, code: u16) -> bool {
        self.close_client_saying(code, "")
    }

    /// [`Relay::close_client`] with a reason text in the close frame.
    fn close_client_saying(&mut self, code: u16, reason: &str) -> bool {
        if self.client_close_sent || self.u2c.scanner.closed() || !self.u2c.scanner.at_boundary() {
            return false;
        }
        self.u2c
            .pending
            .extend_from_slice(ControlFrame::close_saying(code, reason, None).as_bytes());
        self.client_close_sent = true;
        self.note_close(Some(code));
        true
    }

    /// Notes a close frame sent or seen; only the session's first counts.
    fn note_close(&mut self, code: Option<u16>) {
        if self.first_close == 0
            && let Some(code) = code
        {
            self.first_close = code;
        }
    }

    /// How the session ended, for the access log: the first close frame's code, else that of a
    /// close frame the loop had not yet noted, else 1006 (none).
    fn end(&self, reason: CloseReason) -> SessionEnd {
        let close_code = [
            Some(self.first_close).filter(|&c| c != 0),
            self.c2u.scanner.close_code(),
            self.u2c.scanner.close_code(),
        ]
        .into_iter()
        .flatten()
        .next()
        .unwrap_or(CLOSE_ABNORMAL);
        SessionEnd {
            reason,
            close_code,
            from_client: self.c2u.relayed,
            to_client: self.u2c.relayed,
        }
    }

    /// Queues a frame to the client if a frame boundary allows it now.
    fn try_send_client(&mut self, frame: ControlFrame) -> bool {
        if self.u2c.can_inject() {
            self.u2c.pending.extend_from_slice(frame.as_bytes());
            true
        } else {
            false
        }
    }

    /// Queues a close frame to the upstream if a frame boundary allows it now.
    fn try_close_upstream(&mut self, code: u16, mask: [u8; 4]) -> bool {
        if self.c2u.can_inject() && !self.c2u.scanner.closed() {
            self.c2u
                .pending
                .extend_from_slice(ControlFrame::close(code, Some(mask)).as_bytes());
            true
        } else {
            false
        }
    }

    /// Writes what is pending on both legs (bounded in time), then closes them. A TLS client gets
    /// its close_notify; a plain TCP leg is simply closed, and the kernel sends FIN after the
    /// data (a `shutdown` first would cost a system call per leg and change nothing).
    ///
    /// It borrows the relay: a future that took it by value would lay out a second `Relay` in
    /// the session's task beside the first, about 500 bytes held for the session's whole life.
    async fn shutdown(&mut self) {
        let flush = async {
            if !self.u2c.pending.is_empty() {
                self.client.write_all(&self.u2c.pending).await?;
            }
            if self.client.is_tls() {
                self.client.shutdown().await?;
            }
            io::Result::Ok(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), flush).await;
        if !self.c2u.pending.is_empty() {
            let flush = self.upstream.write_all(&self.c2u.pending);
            let _ = tokio::time::timeout(Duration::from_secs(2), flush).await;
        }
    }
}

/// Everything a session needs from the process.
pub struct SessionContext {
    pub drain: Arc<Drain>,
    pub ticker: Arc<Ticker>,
    pub metrics: Metrics,
    pub limits: SessionLimits,
    pub rate_limits: RateLimits,
}

/// Bytes that arrived with the handshakes, to relay before anything else.
pub struct Leftovers {
    pub from_client: Vec<u8>,
    pub from_upstream: Vec<u8>,
}

/// Builds a session from the moment the client got its `101`; the returned future runs it to
/// its end, reports it and logs it to `log`. It is a plain function returning an `async move`
/// block so that the future stores each leg once (an `async fn` would also keep its arguments).
pub fn start(
    ctx: Arc<SessionContext>,
    ticket: SessionTicket,
    slot: ConnectionSlot,
    (client, upstream): (ClientConn, TcpStream),
    leftovers: Leftovers,
    log: Box<Entry>,
) -> impl Future<Output = ()> + Send + 'static {
    let mask = mask_key(log.id());
    let now = Instant::now();
    let mut relay = Relay {
        client,
        upstream,
        ticket,
        c2u: Pump::new(Role::Client, ctx.limits.max_message_bytes),
        u2c: Pump::new(Role::Server, u64::MAX),
        metrics: ctx.metrics.clone(),
        last_client_rx: now,
        last_message: now,
        client_active: false,
        message_active: false,
        want_inject: false,
        stalled_since: None,
        client_close_sent: false,
        first_close: 0,
        ping_sent: None,
        throttle: Throttle::new(&ctx.rate_limits.rates, now),
    };
    let primed = prime(&mut relay, leftovers);
    async move {
        let reason = match primed {
            Err(e) => {
                relay.u2c.pending.clear();
                relay.close_client(e.close_code());
                frame_error_reason(e)
            }
            Ok(()) => drive(&mut relay, &ctx).await,
        };
        // When the gateway ended the session (timeouts, limits, drains), it tells the upstream
        // why with a close frame. A client that vanished without a close frame is relayed as it
        // happened: the upstream connection just ends, and the app sees the abnormal closure
        // (1006) it would see without a gateway, not a clean close the client never sent.
        if !matches!(
            reason,
            CloseReason::UpstreamClose | CloseReason::ClientDisconnect
        ) && !relay.c2u.scanner.closed()
        {
            relay.try_close_upstream(CLOSE_GOING_AWAY, mask);
        }
        log.session_ended(relay.end(reason));
        relay.shutdown().await;
        // The legs are closed before the session is reported ended.
        let Relay {
            client,
            upstream,
            ticket,
            ..
        } = relay;
        drop((client, upstream));
        ticket.finish(reason);
        drop(slot);
    }
}

/// Scans the bytes that came with the handshakes into the pumps. A client that broke the
/// protocol already is answered with its close code; an upstream that did is reported as 1011.
fn prime(relay: &mut Relay, leftovers: Leftovers) -> Result<(), FrameError> {
    let mut seen = Scanned::default();
    relay.c2u.relayed = leftovers.from_client.len() as u64;
    relay.u2c.relayed = leftovers.from_upstream.len() as u64;
    relay.c2u.scanner.scan(&leftovers.from_client, &mut seen)?;
    relay.c2u.pending = leftovers.from_client;
    if relay
        .u2c
        .scanner
        .scan(&leftovers.from_upstream, &mut seen)
        .is_err()
    {
        return Err(FrameError::Upstream);
    }
    relay.u2c.pending = leftovers.from_upstream;
    Ok(())
}

/// Queues the gateway's close frame `code` to the client, which ends the session as `reason` if
/// the client answers (see [`Relay::close_client`]). A request to move carries the reason text of
/// whoever asks (the rebalance that selected the session, else the drain); the others carry none.
fn send_close(relay: &mut Relay, drain: &Drain, code: u16, reason: CloseReason) -> bool {
    match reason {
        CloseReason::Migrated => {
            let rebalance = relay.ticket.rebalance_reason();
            let text = rebalance
                .as_deref()
                .unwrap_or_else(|| drain.notify_reason());
            relay.close_client_saying(code, text)
        }
        _ => relay.close_client(code),
    }
}

/// Ends a session that a deadline (a drain's or a rebalance's) cuts with `code`, as `reason`;
/// one whose client has started the close handshake ends as the client's.
fn cut(relay: &mut Relay, closing: Closing, code: u16, reason: CloseReason) -> CloseReason {
    if closing == Closing::ByClient {
        return CloseReason::ClientClose;
    }
    relay.close_client(code);
    reason
}

/// Who asked a session to move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asker {
    Drain,
    Rebalance,
}

fn frame_error_reason(e: FrameError) -> CloseReason {
    match e {
        FrameError::TooBig => CloseReason::MessageTooBig,
        FrameError::Protocol(_) => CloseReason::ProtocolError,
        FrameError::Upstream => CloseReason::UpstreamError,
        FrameError::OverRate => CloseReason::RateLimited,
    }
}

/// Ends a session whose client went over its limits: close 1008 naming the limit, counted.
fn close_rate_limited(relay: &mut Relay, limits: &RateLimits) -> CloseReason {
    let reason = relay.throttle.as_ref().map_or("", |t| t.reason());
    relay.close_client_saying(CLOSE_POLICY_VIOLATION, reason);
    limits.series.limited(LimitAction::Close);
    CloseReason::RateLimited
}

/// A mask key for the frames the gateway itself sends upstream (RFC 6455 5.3). It only has to be
/// unpredictable to the page that sent the payload, and the gateway's own frames carry no
/// client-chosen payload, so a hash of the session id and the clock is enough.
pub fn mask_key(id: u64) -> [u8; 4] {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(id);
    let v = h.finish();
    [
        (v >> 8) as u8,
        (v >> 16) as u8,
        (v >> 24) as u8,
        (v >> 32) as u8,
    ]
}

/// The session loop; returns why the session ended.
async fn drive(relay: &mut Relay, ctx: &SessionContext) -> CloseReason {
    let limits = ctx.limits;
    // Both listen from here on; the phase is read after, so no change is missed.
    let mut phase_changes = pin!(ctx.drain.listen());
    let mut ticks = pin!(ctx.ticker.listen());
    let mut closing = Closing::Open;
    let mut close_by: Option<Instant> = None;
    // When to ask the client to move, with which code, for whom.
    let mut notify_at: Option<(Instant, u16, Asker)> = None;
    // A close frame the gateway wants to send the client, with how the session ends if answered.
    let mut want_close: Option<(u16, CloseReason)> = None;
    let mut want_ping = false;
    // The session's limits held it back once already (counted once per session).
    let mut held_once = false;
    // The phase may have changed before the session started.
    let mut phase_changed = true;
    loop {
        if phase_changed {
            phase_changed = false;
            match ctx.drain.phase() {
                Phase::Deadline { close_code } => {
                    return cut(relay, closing, close_code, CloseReason::DrainDeadline);
                }
                // A drain takes the session over from a rebalance that selected it: the drain's
                // slot replaces the rebalance's, and a Wait drain asks nothing.
                Phase::Notify {
                    start,
                    spread,
                    close_code,
                    total,
                } if !matches!(notify_at, Some((_, _, Asker::Drain))) => {
                    let at = notice_at(start, spread, ctx.drain.take_slot(), total);
                    notify_at = Some((at, close_code, Asker::Drain));
                }
                Phase::Wait => notify_at = None,
                Phase::Serving => match relay.ticket.rebalance_order() {
                    Some(Order::Cut { code }) => {
                        return cut(relay, closing, code, CloseReason::RebalanceDeadline);
                    }
                    Some(Order::MoveAt { at, code })
                        if notify_at.is_none()
                            && want_close.is_none()
                            && closing == Closing::Open =>
                    {
                        notify_at = Some((at, code, Asker::Rebalance));
                    }
                    _ => {}
                },
                Phase::Notify { .. } => {}
            }
        }
        if want_ping && closing == Closing::Open && relay.try_send_client(ControlFrame::ping(b"")) {
            want_ping = false;
            relay.ping_sent = Some(Instant::now());
        }
        if let Some((code, reason)) = want_close
            && closing == Closing::Open
            && send_close(relay, &ctx.drain, code, reason)
        {
            want_close = None;
            closing = Closing::ByGateway(reason);
            relay.ticket.closing();
            relay.u2c.discard = true;
            if reason != CloseReason::Migrated {
                close_by = Some(Instant::now() + CLOSE_WAIT);
            }
        }
        relay.want_inject = closing == Closing::Open && (want_ping || want_close.is_some());
        // One timer at most, and only while a drain slot, a close handshake or client bytes held
        // back by the session's limits are pending.
        let resume_at = relay.throttle.as_ref().and_then(|t| t.resume_at());
        let wake_at = [notify_at.map(|(at, ..)| at), close_by, resume_at]
            .into_iter()
            .flatten()
            .min();
        let event = tokio::select! {
            biased;
            ev = poll_fn(|cx| relay.poll(cx)) => Some(ev),
            () = phase_changes.as_mut().fired() => {
                phase_changed = true;
                None
            }
            () = tokio::time::sleep_until(wake_at.unwrap_or_else(Instant::now).into()), if wake_at.is_some() => {
                let now = Instant::now();
                if let Some((at, code, _)) = notify_at && at <= now {
                    notify_at = None;
                    if closing == Closing::Open {
                        want_close = Some((code, CloseReason::Migrated));
                    }
                }
                if let Some(at) = close_by && at <= now {
                    return match closing {
                        Closing::ByClient => {
                            relay.close_client(CLOSE_NORMAL);
                            CloseReason::ClientClose
                        }
                        Closing::ByGateway(reason) => reason,
                        Closing::ByUpstream | Closing::Open => CloseReason::UpstreamError,
                    };
                }
                None
            }
            () = ticks.as_mut().fired() => {
                let now = Instant::now();
                relay.stamp_activity(now);
                if relay.client_stalled_for(now) >= limits.heartbeat_interval + limits.heartbeat_timeout {
                    // Its buffers are full: no close frame can reach it.
                    debug!("client took no bytes for the heartbeat interval plus timeout");
                    return CloseReason::WriteStalled;
                }
                if closing == Closing::Open
                    && relay.throttle.as_ref().is_some_and(|t| t.held_for(now) > limits.heartbeat_timeout)
                {
                    debug!("client held back by its rate limits for longer than the heartbeat timeout");
                    return close_rate_limited(relay, &ctx.rate_limits);
                }
                if closing == Closing::Open {
                    if let Some(sent) = relay.ping_sent {
                        if relay.last_client_rx >= sent {
                            relay.ping_sent = None;
                        } else if now.duration_since(sent) >= limits.heartbeat_timeout {
                            relay.close_client(CLOSE_GOING_AWAY);
                            return CloseReason::HeartbeatTimeout;
                        }
                    }
                    if relay.ping_sent.is_none() && !want_ping
                        && now.duration_since(relay.last_client_rx) >= limits.heartbeat_interval {
                        want_ping = true;
                    }
                    if now.duration_since(relay.last_message) >= limits.idle_timeout && want_close.is_none() {
                        want_close = Some((CLOSE_GOING_AWAY, CloseReason::IdleTimeout));
                    }
                }
                None
            }
        };
        let Some(event) = event else { continue };
        match event {
            Event::Progress => {
                if relay.c2u.scanner.closed() && !relay.c2u.close_reported {
                    relay.c2u.close_reported = true;
                    relay.note_close(relay.c2u.scanner.close_code());
                    match closing {
                        Closing::Open => {
                            closing = Closing::ByClient;
                            close_by = Some(Instant::now() + CLOSE_WAIT);
                            relay.ticket.closing();
                        }
                        Closing::ByUpstream => return CloseReason::UpstreamClose,
                        Closing::ByGateway(reason) => return reason,
                        Closing::ByClient => {}
                    }
                }
                if relay.u2c.scanner.closed() && !relay.u2c.close_reported {
                    relay.u2c.close_reported = true;
                    relay.note_close(relay.u2c.scanner.close_code());
                    match closing {
                        Closing::Open => {
                            closing = Closing::ByUpstream;
                            close_by = Some(Instant::now() + CLOSE_WAIT);
                            relay.ticket.closing();
                        }
                        Closing::ByClient => return CloseReason::ClientClose,
                        Closing::ByUpstream | Closing::ByGateway(_) => {}
                    }
                }
            }
            Event::Held(frames) => {
                let series = &ctx.rate_limits.series;
                series.frames_delayed.inc_by(frames);
                if !held_once {
                    held_once = true;
                    series.limited(LimitAction::Backpressure);
                }
            }
            Event::ClientLeg(LegEnd::Frame(FrameError::OverRate)) => {
                debug!("client over its rate limits");
                return close_rate_limited(relay, &ctx.rate_limits);
            }
            Event::ClientLeg(LegEnd::Frame(e)) => {
                relay.close_client(e.close_code());
                debug!(error = ?e, "client broke the protocol");
                return frame_error_reason(e);
            }
            Event::ClientLeg(_) => {
                return match closing {
                    Closing::ByClient => CloseReason::ClientClose,
                    Closing::ByGateway(CloseReason::Migrated)
                    | Closing::Open
                    | Closing::ByUpstream => CloseReason::ClientDisconnect,
                    Closing::ByGateway(reason) => reason,
                };
            }
            Event::UpstreamLeg(end) => {
                match (closing, end) {
                    // The upstream hung up after its close frame, or while the gateway closes the
                    // client: keep waiting for the client's close frame.
                    (Closing::ByUpstream | Closing::ByGateway(_), _) => {
                        relay.u2c.src_done = true;
                        relay.c2u.discard = true;
                        relay.c2u.pending = Vec::new();
                    }
                    (Closing::ByClient, _) => {
                        relay.close_client(CLOSE_NORMAL);
                        return CloseReason::ClientClose;
                    }
                    _ => {
                        relay.close_client(CLOSE_INTERNAL_ERROR);
                        debug!(?end, "upstream leg failed");
                        return CloseReason::UpstreamError;
                    }
                }
            }
        }
    }
}
