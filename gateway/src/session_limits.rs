//! Per-session rate limits: how many data messages and how many payload bytes each WebSocket
//! client may send per second, and what happens to one that sends faster.
//!
//! Each session with limits gets a [`Throttle`]: two token buckets (messages and bytes), each
//! refilled at its rate up to its burst. The client-to-app relay asks it before every data frame
//! (through the frame scanner's [`Gate`]): a frame that starts a message takes a message token, and
//! every data frame takes as many byte tokens as its payload has bytes. Control frames (ping, pong,
//! close) take nothing and are never held back. A frame larger than the byte burst would never
//! fit: it passes once the byte bucket is full and leaves it in debt, which the next frames wait
//! out, so the rate over time stays the configured one.
//!
//! What happens to a frame that does not fit, by [`LimitAction`]:
//! - **Backpressure** (the default): the frames before it are relayed, the rest of what was read
//!   is kept in the throttle, and the client's socket is not read again until the bucket holds
//!   enough; TCP's flow control then slows the client down. A client kept back without a break for
//!   longer than the heartbeat timeout (it never catches up: it keeps sending faster than its
//!   limit) is closed with 1008.
//! - **Close**: the frames before it are relayed, then the client gets close 1008 with the
//!   reason `message rate limit` or `byte rate limit`, and the session ends.
//!
//! Backpressure is the default because a client over its limit is more often a legitimate one
//! catching up (a burst after a reconnect, a queue flushed after a network stall) than an abusive
//! one: delaying its messages loses nothing, where closing would cut a session the gateway exists
//! to keep, and the abusive client is still closed once it has flooded for the heartbeat timeout.
//! `close` suits apps that would rather see a client fail fast than receive its messages late.
//!
//! The buckets are written here rather than taken from a crate such as `governor`: a frame must
//! be admitted by two buckets at once or by neither (governor's limiters are separate, and one
//! cannot give back what the other took), a frame larger than the burst must still pass
//! (governor refuses it as `InsufficientCapacity`), and the session's single timer needs the
//! instant the next frame fits. What is needed fits in a few lines and in no more memory than a
//! session with limits already has; a session without limits holds only an empty pointer.

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::frame::{FrameError, FrameScanner, Gate, Scanned};

/// What the gateway does to a client over its session limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, ValueEnum)]
pub enum LimitAction {
    /// Stop reading the client until its frames fit; close 1008 if it never catches up.
    #[default]
    Backpressure,
    /// Close 1008 at the first frame that does not fit.
    Close,
}

impl LimitAction {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitAction::Backpressure => "backpressure",
            LimitAction::Close => "close",
        }
    }
}

impl EncodeLabelValue for LimitAction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Flags of the per-session limits, flattened into `run`'s.
#[derive(Clone, Debug, Args)]
pub struct SessionLimitArgs {
    /// Data messages per second each WebSocket client may send (token bucket refill); 0: no limit.
    #[arg(
        long,
        env = "LONGCONN_GATEWAY_SESSION_MESSAGES_PER_SECOND",
        default_value_t = 0
    )]
    pub session_messages_per_second: u32,
    /// Messages a client may send at once; 0: one second's worth.
    #[arg(
        long,
        env = "LONGCONN_GATEWAY_SESSION_MESSAGE_BURST",
        default_value_t = 0
    )]
    pub session_message_burst: u32,
    /// Payload bytes of data messages per second each WebSocket client may send; 0: no limit.
    #[arg(
        long,
        env = "LONGCONN_GATEWAY_SESSION_BYTES_PER_SECOND",
        default_value_t = 0
    )]
    pub session_bytes_per_second: u64,
    /// Payload bytes a client may send at once; 0: one second's worth.
    #[arg(
        long,
        env = "LONGCONN_GATEWAY_SESSION_BYTES_BURST",
        default_value_t = 0
    )]
    pub session_bytes_burst: u64,
    /// What a client over its limits gets: backpressure (its socket is not read until its
    /// messages fit; close 1008 when held back longer than --heartbeat-timeout) or close (1008).
    #[arg(long, env = "LONGCONN_GATEWAY_SESSION_LIMIT_ACTION", value_enum, default_value_t = LimitAction::Backpressure)]
    pub session_limit_action: LimitAction,
}

/// One token bucket's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

/// The validated per-session limits.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SessionRates {
    pub messages: Option<Rate>,
    pub bytes: Option<Rate>,
    pub action: LimitAction,
}

impl SessionRates {
    /// True when sessions have limits.
    pub fn any(&self) -> bool {
        self.messages.is_some() || self.bytes.is_some()
    }
}

impl SessionLimitArgs {
    /// The limits the flags describe, or one line per bad flag.
    pub fn rates(&self) -> Result<SessionRates, Vec<String>> {
        let mut bad = Vec::new();
        let mut rate = |per_second: u64, burst: u64, flags: (&str, &str)| {
            if per_second == 0 {
                if burst > 0 {
                    bad.push(format!(
                        "--{}: needs --{} (a burst without a rate limits nothing)",
                        flags.1, flags.0
                    ));
                }
                return None;
            }
            let burst = if burst == 0 { per_second } else { burst };
            Some(Rate {
                per_second: per_second as f64,
                burst: burst as f64,
            })
        };
        let rates = SessionRates {
            messages: rate(
                u64::from(self.session_messages_per_second),
                u64::from(self.session_message_burst),
                ("session-messages-per-second", "session-message-burst"),
            ),
            bytes: rate(
                self.session_bytes_per_second,
                self.session_bytes_burst,
                ("session-bytes-per-second", "session-bytes-burst"),
            ),
            action: self.session_limit_action,
        };
        if bad.is_empty() { Ok(rates) } else { Err(bad) }
    }
}

/// Which bucket refused a frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Refusal {
    #[default]
    Messages,
    Bytes,
}

impl Refusal {
    /// The reason text of the close frame.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Messages => "message rate limit",
            Refusal::Bytes => "byte rate limit",
        }
    }
}

/// A token bucket that may run into debt by a frame larger than its burst.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    rate: Rate,
    tokens: f64,
}

impl Bucket {
    fn full(rate: Rate) -> Bucket {
        Bucket {
            rate,
            tokens: rate.burst,
        }
    }

    fn refill(&mut self, seconds: f64) {
        self.tokens = (self.tokens + seconds * self.rate.per_second).min(self.rate.burst);
    }

    /// What a frame costing `cost` needs in the bucket to pass: all of it, or a full bucket.
    fn needs(&self, cost: f64) -> f64 {
        cost.min(self.rate.burst)
    }

    fn fits(&self, cost: f64) -> bool {
        self.tokens >= self.needs(cost)
    }

    /// Seconds until a frame costing `cost` fits.
    fn wait(&self, cost: f64) -> f64 {
        ((self.needs(cost) - self.tokens) / self.rate.per_second).max(0.0)
    }
}

/// Both buckets as of the last refill; the [`Gate`] of a limited client's frame scanner.
#[derive(Clone, Copy, Debug)]
struct Buckets {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    /// The frame refused last: whether it starts a message, its payload, which bucket.
    refused: (bool, u64, Refusal),
}

impl Buckets {
    fn costs(first: bool, payload: u64) -> (f64, f64) {
        (if first { 1.0 } else { 0.0 }, payload as f64)
    }

    /// Seconds until the frame refused last fits both buckets.
    fn wait(&self) -> f64 {
        let (first, payload, _) = self.refused;
        let (m, b) = Buckets::costs(first, payload);
        let m = self.messages.map_or(0.0, |k| k.wait(m));
        let b = self.bytes.map_or(0.0, |k| k.wait(b));
        m.max(b)
    }
}

impl Gate for Buckets {
    fn admit(&mut self, first: bool, payload: u64) -> bool {
        let (m, b) = Buckets::costs(first, payload);
        let refusal = if self.messages.is_some_and(|k| !k.fits(m)) {
            Some(Refusal::Messages)
        } else if self.bytes.is_some_and(|k| !k.fits(b)) {
            Some(Refusal::Bytes)
        } else {
            None
        };
        if let Some(which) = refusal {
            self.refused = (first, payload, which);
            return false;
        }
        if let Some(k) = &mut self.messages {
            k.tokens -= m;
        }
        if let Some(k) = &mut self.bytes {
            k.tokens -= b;
        }
        true
    }
}

/// A limited session's buckets and the client bytes it holds back. Lives on the heap, only for
/// sessions with limits; the relay reads the clock once per read of the client while it has one.
#[derive(Debug)]
pub struct Throttle {
    buckets: Buckets,
    refilled: Instant,
    action: LimitAction,
    /// Bytes read from the client and not yet admitted, from the first byte of the refused frame.
    held: Vec<u8>,
    /// Since when the client has been held back without a break.
    held_since: Option<Instant>,
    /// When the frame at the head of `held` fits.
    resume_at: Option<Instant>,
    /// Frames held back since the session loop last looked.
    delayed: u64,
}

/// How a scan through the throttle went.
#[derive(Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Everything scanned passed.
    All,
    /// The bytes before this offset passed; the rest is held back (backpressure).
    Held(usize),
    /// The client broke the protocol, or (action close) went over its limits, at this offset:
    /// the bytes before it may be relayed.
    Failed(FrameError, usize),
}

impl Throttle {
    /// A throttle for `rates`, with full buckets, or none when there are no limits.
    pub fn new(rates: &SessionRates, now: Instant) -> Option<Box<Throttle>> {
        rates.any().then(|| {
            Box::new(Throttle {
                buckets: Buckets {
                    messages: rates.messages.map(Bucket::full),
                    bytes: rates.bytes.map(Bucket::full),
                    refused: (false, 0, Refusal::Messages),
                },
                refilled: now,
                action: rates.action,
                held: Vec::new(),
                held_since: None,
                resume_at: None,
                delayed: 0,
            })
        })
    }

    fn refill(&mut self, now: Instant) {
        let seconds = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        for k in [&mut self.buckets.messages, &mut self.buckets.bytes]
            .into_iter()
            .flatten()
        {
            k.refill(seconds);
        }
    }

    /// Scans `data`, just read from the client, with the buckets as of `now`. With backpressure,
    /// what does not fit is kept here (see [`Throttle::take_held`]).
    pub fn scan(
        &mut self,
        scanner: &mut FrameScanner,
        data: &[u8],
        seen: &mut Scanned,
        now: Instant,
    ) -> Admitted {
        self.refill(now);
        match scanner.scan_gated(data, seen, &mut self.buckets) {
            Ok(()) => Admitted::All,
            Err((FrameError::OverRate, valid)) if self.action == LimitAction::Backpressure => {
                self.held.extend_from_slice(&data[valid..]);
                self.delayed += 1;
                self.schedule(now);
                Admitted::Held(valid)
            }
            Err((e, valid)) => Admitted::Failed(e, valid),
        }
    }

    /// Notes that the client is held back from `now` on, and when the frame refused fits.
    fn schedule(&mut self, now: Instant) {
        self.held_since.get_or_insert(now);
        let wait = Duration::try_from_secs_f64(self.buckets.wait()).unwrap_or(Duration::MAX);
        // A millisecond more, so that the timer never fires a rounding error early.
        self.resume_at = now
            .checked_add(wait + Duration::from_millis(1))
            .or(Some(now + Duration::from_secs(86_400)));
    }

    /// True while client bytes are held back: the client's socket is not read meanwhile.
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Admits what now fits of the bytes held back, appending it to `out`; returns how it went.
    /// `Held(n)`: `n` bytes passed, the rest still waits.
    pub fn release(
        &mut self,
        scanner: &mut FrameScanner,
        seen: &mut Scanned,
        out: &mut Vec<u8>,
        now: Instant,
    ) -> Admitted {
        if self.resume_at.is_some_and(|at| now < at) {
            return Admitted::Held(0);
        }
        self.refill(now);
        let held = std::mem::take(&mut self.held);
        let result = scanner.scan_gated(&held, seen, &mut self.buckets);
        let (passed, admitted) = match result {
            Ok(()) => (held.len(), Admitted::All),
            Err((FrameError::OverRate, valid)) => {
                // The frame at the head waits again; one further on is a new one held back.
                if valid > 0 {
                    self.delayed += 1;
                }
                self.schedule(now);
                (valid, Admitted::Held(valid))
            }
            Err((e, valid)) => (valid, Admitted::Failed(e, valid)),
        };
        out.extend_from_slice(&held[..passed]);
        if admitted == Admitted::All {
            self.resume_at = None;
        } else if matches!(admitted, Admitted::Held(_)) {
            self.held = held[passed..].to_vec();
        }
        admitted
    }

    /// The client has nothing more to send for now and nothing is held: it has caught up.
    pub fn caught_up(&mut self) {
        if self.held.is_empty() {
            self.held_since = None;
        }
    }

    /// Drops what is held back (the session is closing and discards what the client sends).
    pub fn discard(&mut self) {
        self.held = Vec::new();
        self.resume_at = None;
    }

    /// When the relay should look again, while bytes are held back.
    pub fn resume_at(&self) -> Option<Instant> {
        self.resume_at.filter(|_| self.holding())
    }

    /// How long, as of `now`, the client has been held back without a break.
    pub fn held_for(&self, now: Instant) -> Duration {
        self.held_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// Frames held back since the last call.
    pub fn take_delayed(&mut self) -> u64 {
        std::mem::take(&mut self.delayed)
    }

    /// The reason text of a close for the frame refused last.
    pub fn reason(&self) -> &'static str {
        self.buckets.refused.2.reason()
    }
}

/// What every session needs of the per-session limits: the limits and their series.
#[derive(Clone, Debug, Default)]
pub struct RateLimits {
    pub rates: SessionRates,
    pub series: LimitSeries,
}

/// The series of the per-session limits. Shared by every session through its context, so a
/// session pays nothing for them.
#[derive(Clone, Debug, Default)]
pub struct LimitSeries {
    /// Sessions the limits acted on, by action.
    pub sessions: Family<ActionLabel, Counter>,
    /// Data frames held back.
    pub frames_delayed: Counter,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: LimitAction,
}

impl LimitSeries {
    /// Creates the series and registers them in `reg`.
    pub fn register(reg: &mut Registry) -> LimitSeries {
        let s = LimitSeries::default();
        for action in [LimitAction::Backpressure, LimitAction::Close] {
            let _ = s.sessions.get_or_create(&ActionLabel { action });
        }
        reg.register(
            "longconn_gateway_sessions_rate_limited",
            "WebSocket sessions over their per-session limits: held back at least once (backpressure) or closed with 1008 (close)",
            s.sessions.clone(),
        );
        reg.register(
            "longconn_gateway_frames_delayed",
            "Client data frames held back by the per-session limits until they fit",
            s.frames_delayed.clone(),
        );
        s
    }

    /// Counts a session the limits acted on with `action`.
    pub fn limited(&self, action: LimitAction) {
        self.sessions.get_or_create(&ActionLabel { action }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Role;

    fn rates(messages: Option<(f64, f64)>, bytes: Option<(f64, f64)>) -> SessionRates {
        let rate = |(per_second, burst)| Rate { per_second, burst };
        SessionRates {
            messages: messages.map(rate),
            bytes: bytes.map(rate),
            action: LimitAction::Backpressure,
        }
    }

    /// A masked client frame with `payload` bytes (their values do not matter here).
    fn masked(opcode: u8, fin: bool, payload: usize) -> Vec<u8> {
        let mut v = vec![u8::from(fin) << 7 | opcode];
        match payload {
            0..126 => v.push(0x80 | payload as u8),
            _ => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(payload as u16).to_be_bytes());
            }
        }
        v.extend_from_slice(&[1, 2, 3, 4]);
        v.resize(v.len() + payload, 7);
        v
    }

    #[test]
    fn no_limits_no_throttle_and_a_throttle_stays_small() {
        assert!(Throttle::new(&SessionRates::default(), Instant::now()).is_none());
        // The README's figure for a limited session's heap.
        assert!(std::mem::size_of::<Throttle>() < 200);
    }

    #[test]
    fn the_burst_passes_then_frames_wait_for_their_tokens() {
        let t0 = Instant::now();
        let mut t = Throttle::new(&rates(Some((10.0, 3.0)), None), t0).expect("limits");
        let mut scanner = FrameScanner::new(Role::Client, 1 << 20);
        let frames: Vec<u8> = (0..5).flat_map(|_| masked(0x1, true, 10)).collect();
        let one = frames.len() / 5;
        let mut seen = Scanned::default();
        assert_eq!(
            t.scan(&mut scanner, &frames, &mut seen, t0),
            Admitted::Held(3 * one)
        );
        assert_eq!(seen.messages, 3);
        assert!(t.holding());
        assert_eq!(t.take_delayed(), 1);
        // One token comes every 100 ms; the timer is set for it.
        let at = t.resume_at().expect("a timer");
        assert!(at >= t0 + Duration::from_millis(100) && at <= t0 + Duration::from_millis(102));
        let mut out = Vec::new();
        assert_eq!(
            t.release(
                &mut scanner,
                &mut seen,
                &mut out,
                t0 + Duration::from_millis(50)
            ),
            Admitted::Held(0),
            "not before its time"
        );
        assert_eq!(
            t.release(&mut scanner, &mut seen, &mut out, at),
            Admitted::Held(one)
        );
        assert_eq!(
            t.take_delayed(),
            1,
            "the fifth frame is a new one held back"
        );
        assert_eq!(out.len(), one);
        let later = t.resume_at().expect("a timer");
        assert_eq!(
            t.release(&mut scanner, &mut seen, &mut out, later),
            Admitted::All
        );
        assert_eq!(out, frames[3 * one..]);
        assert_eq!(seen.messages, 5);
        assert!(!t.holding() && t.resume_at().is_none());
        assert_eq!(t.held_for(later), later - t0, "held without a break");
        t.caught_up();
        assert_eq!(t.held_for(later), Duration::ZERO);
    }

    #[test]
    fn control_frames_and_continuations_take_no_message_token() {
        let t0 = Instant::now();
        let mut t = Throttle::new(&rates(Some((1.0, 1.0)), None), t0).expect("limits");
        let mut scanner = FrameScanner::new(Role::Client, 1 << 20);
        let mut stream = masked(0x1, false, 5);
        stream.extend(masked(0x9, true, 3));
        stream.extend(masked(0x0, false, 5));
        stream.extend(masked(0xA, true, 0));
        stream.extend(masked(0x0, true, 5));
        let mut seen = Scanned::default();
        assert_eq!(t.scan(&mut scanner, &stream, &mut seen, t0), Admitted::All);
        assert_eq!(seen.messages, 1);
        assert!(seen.pong);
    }

    #[test]
    fn a_frame_larger_than_the_byte_burst_passes_on_a_full_bucket_and_the_next_waits_its_debt() {
        let t0 = Instant::now();
        let mut t = Throttle::new(&rates(None, Some((1000.0, 1000.0))), t0).expect("limits");
        let mut scanner = FrameScanner::new(Role::Client, 1 << 20);
        let big = masked(0x2, true, 3000);
        let small = masked(0x2, true, 10);
        let stream = [big.clone(), small].concat();
        let mut seen = Scanned::default();
        assert_eq!(
            t.scan(&mut scanner, &stream, &mut seen, t0),
            Admitted::Held(big.len())
        );
        assert_eq!(t.reason(), "byte rate limit");
        // 2,000 bytes of debt plus the 10 of the next frame, at 1,000 a second.
        let wait = t.resume_at().expect("a timer") - t0;
        assert!(
            wait >= Duration::from_millis(2010) && wait <= Duration::from_millis(2012),
            "{wait:?}"
        );
    }

    #[test]
    fn a_header_split_across_reads_is_refused_and_admitted_whole() {
        let t0 = Instant::now();
        let mut t = Throttle::new(&rates(Some((10.0, 1.0)), None), t0).expect("limits");
        let mut scanner = FrameScanner::new(Role::Client, 1 << 20);
        let first = masked(0x1, true, 4);
        let second = masked(0x1, true, 4);
        let mut seen = Scanned::default();
        // The first frame and three bytes of the second's header, then the rest.
        let split = first.len() + 3;
        let stream = [first.clone(), second].concat();
        assert_eq!(
            t.scan(&mut scanner, &stream[..split], &mut seen, t0),
            Admitted::All
        );
        assert_eq!(
            t.scan(&mut scanner, &stream[split..], &mut seen, t0),
            Admitted::Held(0)
        );
        let mut out = Vec::new();
        let at = t.resume_at().expect("a timer");
        assert_eq!(
            t.release(&mut scanner, &mut seen, &mut out, at),
            Admitted::All
        );
        assert_eq!(out, stream[split..]);
        assert_eq!(seen.messages, 2);
        assert!(scanner.at_boundary());
    }

    #[test]
    fn close_refuses_at_the_frame_over_the_limit_naming_the_bucket() {
        let t0 = Instant::now();
        let mut r = rates(Some((5.0, 2.0)), None);
        r.action = LimitAction::Close;
        let mut t = Throttle::new(&r, t0).expect("limits");
        let mut scanner = FrameScanner::new(Role::Client, 1 << 20);
        let one = masked(0x1, true, 1);
        let stream = one.repeat(3);
        let mut seen = Scanned::default();
        assert_eq!(
            t.scan(&mut scanner, &stream, &mut seen, t0),
            Admitted::Failed(FrameError::OverRate, 2 * one.len())
        );
        assert_eq!(t.reason(), "message rate limit");
        assert!(!t.holding());
    }

    #[test]
    fn a_burst_defaults_to_one_seconds_worth_and_needs_its_rate() {
        let args = |m: u32, mb: u32, b: u64, bb: u64| SessionLimitArgs {
            session_messages_per_second: m,
            session_message_burst: mb,
            session_bytes_per_second: b,
            session_bytes_burst: bb,
            session_limit_action: LimitAction::Close,
        };
        let r = args(20, 0, 4096, 100).rates().expect("valid");
        assert_eq!(
            r.messages,
            Some(Rate {
                per_second: 20.0,
                burst: 20.0
            })
        );
        assert_eq!(
            r.bytes,
            Some(Rate {
                per_second: 4096.0,
                burst: 100.0
            })
        );
        assert!(!args(0, 0, 0, 0).rates().expect("off").any());
        let bad = args(0, 5, 0, 9).rates().expect_err("bursts without rates");
        assert_eq!(bad.len(), 2);
        assert!(bad[0].starts_with("--session-message-burst: needs --session-messages-per-second"));
        assert!(bad[1].starts_with("--session-bytes-burst: needs --session-bytes-per-second"));
    }
}
