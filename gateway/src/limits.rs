//! Admission limits checked before a connection may become a session: at accept, the
//! per-process connection cap, the per-IP token bucket and the handshakes in progress (in total
//! and per IP; the per-IP ones after the PROXY header when the client's address comes from
//! one); after the request head, the plain HTTP cap and the origin allow-list. Also the
//! shared heartbeat clock that wakes sessions to check their timers.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    beacon::{Beacon, Listener},
    config::Limits,
    metrics::Metrics,
};

/// The most clients the rate limiter remembers at once (two generations of half as many).
pub const RATE_TABLE_KEYS: usize = 1 << 16;

/// Per-client token buckets (`rate` tokens per second up to `burst`).
///
/// A client is an IPv4 address or an IPv6 /64 (one host gets a whole /64, so counting single IPv6
/// addresses would give it endless buckets). The buckets live in two generations: lookups move a
/// bucket into the current one, and the current one becomes the previous (the previous one
/// forgotten) when it holds half of [`RATE_TABLE_KEYS`] or when a bucket's refill time has
/// passed since the last turn. A bucket untouched for two turns has refilled completely, so
/// forgetting it changes nothing; only under a flood of new clients (half the table within one
/// refill time) is a bucket forgotten early, and that client gets its burst again. Memory stays
/// bounded and no request scans the table.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    /// How long an empty bucket takes to refill: the longest a generation lasts.
    refill: Duration,
    tables: Mutex<Tables>,
}

/// A client as the rate limiter counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Client {
    V4(u32),
    /// The upper 64 bits.
    V6(u64),
}

impl Client {
    fn of(ip: IpAddr) -> Client {
        match ip {
            IpAddr::V4(v4) => Client::V4(v4.to_bits()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Client::V4(v4.to_bits()),
                None => Client::V6((v6.to_bits() >> 64) as u64),
            },
        }
    }
}

type Bucket = (f64, Instant);

#[derive(Debug)]
struct Tables {
    current: HashMap<Client, Bucket>,
    previous: HashMap<Client, Bucket>,
    turned: Instant,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: u32) -> Self {
        let refill = if rate > 0.0 {
            Duration::try_from_secs_f64(f64::from(burst) / rate).unwrap_or(Duration::MAX)
        } else {
            Duration::MAX
        };
        RateLimiter {
            rate,
            burst: f64::from(burst),
            refill,
            tables: Mutex::new(Tables {
                current: HashMap::new(),
                previous: HashMap::new(),
                turned: Instant::now(),
            }),
        }
    }

    /// Takes a token for `ip` at `now`; on refusal returns the seconds until one is available.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let client = Client::of(ip);
        let mut t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if t.current.len() >= RATE_TABLE_KEYS / 2
            || now.saturating_duration_since(t.turned) >= self.refill
        {
            // Dropping a map of plain values frees its memory without visiting its entries.
            t.previous = std::mem::take(&mut t.current);
            t.turned = now;
        }
        let Tables {
            current, previous, ..
        } = &mut *t;
        let (tokens, last) = current
            .entry(client)
            .or_insert_with(|| previous.remove(&client).unwrap_or((self.burst, now)));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * self.rate;
        *tokens = (*tokens + refill).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            // At least one second; the rate is positive here.
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }

    /// Number of clients remembered.
    pub fn tracked(&self) -> usize {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        t.current.len() + t.previous.len()
    }
}

/// The connection caps, rate limiter, handshake bounds and origin list.
#[derive(Debug)]
pub struct Admission {
    pub limits: Limits,
    pub rate: RateLimiter,
    connections: AtomicU64,
    http_connections: AtomicU64,
    handshakes: Mutex<Handshakes>,
    metrics: Metrics,
}

/// Connections in their handshake phase, in total and per client. A client's entry lives only
/// while it has a handshake in progress, so the map holds at most `max_handshakes` entries.
#[derive(Debug, Default)]
struct Handshakes {
    total: u64,
    per_client: HashMap<Client, u32>,
}

/// Why a connection is refused at accept, before any byte of it is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    /// With the seconds until the client's next token.
    RateLimited(u64),
    Handshakes,
}

/// What a connection holds from accept on: its connection slot, and its place among the
/// handshakes in progress until [`Admitted::handshake_done`].
#[derive(Debug)]
pub struct Admitted {
    /// When it was accepted.
    pub accepted: Instant,
    pub slot: ConnectionSlot,
    handshake: Option<HandshakePermit>,
}

impl Admitted {
    /// Checks the limits of one client, `ip`, for a connection admitted with
    /// [`Admission::admit_any`]: its rate, and its handshakes in progress. Once per connection.
    pub fn admit_client(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        match self.handshake.as_mut() {
            Some(permit) if permit.client.is_none() => {
                let admission = Arc::clone(&permit.admission);
                admission.admit_client(permit, ip, now)
            }
            _ => Ok(()),
        }
    }

    /// The TLS handshake and the request head are done: the place is given back.
    pub fn handshake_done(&mut self) {
        self.handshake = None;
    }
}

/// A held connection slot, released on drop.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<Admission>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.connections_active.dec();
    }
}

/// A held plain HTTP slot, released on drop.
#[derive(Debug)]
pub struct HttpSlot(Arc<Admission>);

impl Drop for HttpSlot {
    fn drop(&mut self) {
        self.0.http_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A place among the handshakes in progress, given back on drop.
#[derive(Debug)]
struct HandshakePermit {
    admission: Arc<Admission>,
    /// Counted among its client's handshakes once the client is known.
    client: Option<Client>,
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        let mut h = self.admission.handshakes();
        h.total -= 1;
        if let Some(client) = self.client
            && let Some(n) = h.per_client.get_mut(&client)
        {
            *n -= 1;
            if *n == 0 {
                h.per_client.remove(&client);
            }
        }
    }
}

/// Adds one to `counter` unless it is at `max`.
fn take(counter: &AtomicU64, max: u64) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl Admission {
    pub fn new(limits: Limits, metrics: Metrics) -> Arc<Self> {
        Arc::new(Admission {
            rate: RateLimiter::new(limits.rate_per_second, limits.rate_burst),
            limits,
            connections: AtomicU64::new(0),
            http_connections: AtomicU64::new(0),
            handshakes: Mutex::new(Handshakes::default()),
            metrics,
        })
    }

    fn handshakes(&self) -> std::sync::MutexGuard<'_, Handshakes> {
        self.handshakes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection accepted at `now` from `ip`, or says why not: at `--max-connections`,
    /// over the client's rate, or with too many handshakes in progress (in total or from the
    /// client). Constant time: nothing here reads from the connection or scans a table.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Admitted, Refusal> {
        let mut admitted = self.admit_any(now)?;
        admitted.admit_client(ip, now)?;
        Ok(admitted)
    }

    /// The part of [`Admission::admit`] that does not depend on the client: the connection cap
    /// and the handshakes in progress in total. For a connection whose client is known only
    /// later (from its PROXY header), which then calls [`Admitted::admit_client`].
    pub fn admit_any(self: &Arc<Self>, now: Instant) -> Result<Admitted, Refusal> {
        let slot = self.try_connect().ok_or(Refusal::MaxConnections)?;
        let mut h = self.handshakes();
        if h.total >= self.limits.max_handshakes {
            return Err(Refusal::Handshakes);
        }
        h.total += 1;
        drop(h);
        Ok(Admitted {
            accepted: now,
            slot,
            handshake: Some(HandshakePermit {
                admission: Arc::clone(self),
                client: None,
            }),
        })
    }

    /// Takes a token of `ip`'s rate and a place among its handshakes in progress.
    fn admit_client(
        &self,
        permit: &mut HandshakePermit,
        ip: IpAddr,
        now: Instant,
    ) -> Result<(), Refusal> {
        self.rate.check(ip, now).map_err(Refusal::RateLimited)?;
        let client = Client::of(ip);
        let mut h = self.handshakes();
        let per_ip = self.limits.max_handshakes_per_ip;
        let from_client = h.per_client.get(&client).copied().unwrap_or(0);
        if per_ip > 0 && from_client >= per_ip {
            return Err(Refusal::Handshakes);
        }
        *h.per_client.entry(client).or_insert(0) += 1;
        permit.client = Some(client);
        Ok(())
    }

    /// Handshakes in progress now, and the clients they come from.
    pub fn handshakes_in_progress(&self) -> (u64, usize) {
        let h = self.handshakes();
        (h.total, h.per_client.len())
    }

    /// Takes a connection slot, or `None` at `--max-connections`.
    pub fn try_connect(self: &Arc<Self>) -> Option<ConnectionSlot> {
        if !take(&self.connections, self.limits.max_connections) {
            return None;
        }
        self.metrics.connections_active.inc();
        Some(ConnectionSlot(Arc::clone(self)))
    }

    /// Takes a plain HTTP slot, or `None` at `--max-http-connections`.
    pub fn try_http(self: &Arc<Self>) -> Option<HttpSlot> {
        take(&self.http_connections, self.limits.http.max_connections)
            .then(|| HttpSlot(Arc::clone(self)))
    }

    /// True if `origin` may open a session. An empty list allows any; a request without an
    /// `Origin` header (not a browser) is allowed, since the check guards against cross-site
    /// browser pages. Entries match exactly, or `scheme://*.domain` matches any subdomain.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        let list = &self.limits.allowed_origins;
        let Some(origin) = origin else { return true };
        list.is_empty()
            || list.iter().any(|allowed| {
                if let Some((scheme, rest)) = allowed.split_once("://*.") {
                    origin
                        .strip_prefix(scheme)
                        .and_then(|o| o.strip_prefix("://"))
                        .is_some_and(|host| host.ends_with(&format!(".{rest}")))
                } else {
                    allowed == origin
                }
            })
    }
}

/// A coarse clock shared by all sessions: one task wakes every waiting session each `period`, and
/// each session compares its own deadlines with `Instant::now()`. This replaces one timer per
/// session with one per process.
#[derive(Debug, Default)]
pub struct Ticker {
    beacon: Beacon,
}

impl Ticker {
    /// The tick period for the configured limits: a quarter of the shortest timer, between 10 ms
    /// and 1 s.
    pub fn period(limits: &Limits) -> Duration {
        let shortest = limits
            .heartbeat_interval
            .min(limits.heartbeat_timeout)
            .min(limits.idle_timeout);
        (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Listens for the ticks from now on.
    pub fn listen(&self) -> Listener<'_> {
        self.beacon.listen()
    }

    /// Runs the clock forever.
    pub async fn run(self: Arc<Self>, period: Duration) {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.beacon.fire();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_burst_then_refills_at_rate() {
        let rl = RateLimiter::new(2.0, 3);
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let t0 = Instant::now();
        for _ in 0..3 {
            rl.check(ip, t0).expect("within burst");
        }
        assert_eq!(rl.check(ip, t0), Err(1));
        rl.check(ip, t0 + Duration::from_millis(600))
            .expect("refilled one token");
        let other: IpAddr = "10.0.0.2".parse().expect("ip");
        rl.check(other, t0).expect("buckets are per IP");
    }

    #[test]
    fn an_ipv6_slash_64_is_one_client_and_a_mapped_ipv4_is_its_ipv4() {
        let rl = RateLimiter::new(1.0, 2);
        let t0 = Instant::now();
        for ip in ["2001:db8:1:2::1", "2001:db8:1:2:ffff::9"] {
            rl.check(ip.parse().expect("ip"), t0).expect("burst of two");
        }
        assert!(
            rl.check("2001:db8:1:2::77".parse().expect("ip"), t0)
                .is_err()
        );
        rl.check("2001:db8:1:3::1".parse().expect("ip"), t0)
            .expect("another /64");
        rl.check("192.0.2.1".parse().expect("ip"), t0).expect("v4");
        rl.check("::ffff:192.0.2.1".parse().expect("ip"), t0)
            .expect("v4 mapped");
        assert!(rl.check("192.0.2.1".parse().expect("ip"), t0).is_err());
        assert_eq!(rl.tracked(), 3);
    }

    #[test]
    fn a_flood_of_new_clients_keeps_the_table_bounded() {
        let rl = RateLimiter::new(1.0, 100);
        let t0 = Instant::now();
        // Three tables' worth of /64s, all within one refill time (100 s).
        for i in 0..(3 * RATE_TABLE_KEYS as u64) {
            let ip = std::net::Ipv6Addr::from_bits(u128::from(i) << 64);
            rl.check(IpAddr::V6(ip), t0)
                .expect("a new client has its burst");
            assert!(rl.tracked() <= RATE_TABLE_KEYS);
        }
        assert!(rl.tracked() >= RATE_TABLE_KEYS / 2);
    }

    #[test]
    fn clients_gone_for_two_refill_times_are_forgotten_and_the_others_kept() {
        let rl = RateLimiter::new(10.0, 10);
        let t0 = Instant::now();
        let (gone, staying): (IpAddr, IpAddr) = (
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
        );
        rl.check(gone, t0).expect("burst");
        for _ in 0..10 {
            rl.check(staying, t0).expect("burst");
        }
        // One refill time (1 s) later the table turns; `staying` is moved along, drained.
        let t1 = t0 + Duration::from_millis(1000);
        rl.check(staying, t1).expect("refilled");
        let t2 = t1 + Duration::from_millis(1000);
        rl.check(staying, t2).expect("refilled");
        assert_eq!(rl.tracked(), 1, "only the client seen in the last turn");
    }

    #[test]
    fn zero_rate_disables_the_limit() {
        let rl = RateLimiter::new(0.0, 0);
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        for _ in 0..1000 {
            rl.check(ip, Instant::now()).expect("no limit");
        }
    }

    fn admission(origins: &[&str], max: u64) -> Arc<Admission> {
        let limits = Limits {
            max_connections: max,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(1),
            max_message_bytes: 1,
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            rate_per_second: 0.0,
            rate_burst: 0,
            max_handshakes: 3,
            max_handshakes_per_ip: 2,
            http: crate::config::HttpLimits {
                max_connections: 1,
                idle_timeout: Duration::from_secs(1),
                max_body_bytes: 0,
            },
        };
        Admission::new(limits, Metrics::new().0)
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain_wildcard() {
        let a = admission(&["https://app.example.com", "https://*.example.org"], 1);
        assert!(a.origin_allowed(Some("https://app.example.com")));
        assert!(a.origin_allowed(Some("https://x.y.example.org")));
        assert!(a.origin_allowed(None));
        assert!(!a.origin_allowed(Some("http://app.example.com")));
        assert!(!a.origin_allowed(Some("https://evil-example.org")));
        assert!(!a.origin_allowed(Some("https://example.org")));
    }

    #[test]
    fn connection_slots_are_capped_and_released() {
        let a = admission(&[], 2);
        let s1 = a.try_connect().expect("slot");
        let _s2 = a.try_connect().expect("slot");
        assert!(a.try_connect().is_none());
        drop(s1);
        assert!(a.try_connect().is_some());
        let h = a.try_http().expect("http slot");
        assert!(a.try_http().is_none());
        drop(h);
        assert!(a.try_http().is_some());
    }

    #[test]
    fn handshakes_are_bounded_in_total_and_per_client_and_given_back() {
        let a = admission(&[], 100);
        let t0 = Instant::now();
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let mut first = a.admit(ip("10.0.0.1"), t0).expect("first");
        let _second = a.admit(ip("10.0.0.1"), t0).expect("second");
        assert_eq!(
            a.admit(ip("10.0.0.1"), t0).err(),
            Some(Refusal::Handshakes),
            "two per client"
        );
        // One /64 is one client.
        let _v6 = a.admit(ip("2001:db8::1"), t0).expect("v6");
        assert_eq!(
            a.admit(ip("2001:db8::2"), t0).err(),
            Some(Refusal::Handshakes),
            "three in total"
        );
        assert_eq!(a.handshakes_in_progress(), (3, 2));
        first.handshake_done();
        assert_eq!(a.handshakes_in_progress(), (2, 2));
        let admitted = a.admit(ip("10.0.0.9"), t0).expect("a place is free");
        drop(admitted);
        drop(_second);
        drop(_v6);
        assert_eq!(
            a.handshakes_in_progress(),
            (0, 0),
            "no entry outlives its handshakes"
        );
        // Refusals give their connection slot back.
        assert_eq!(
            a.connections.load(Ordering::Acquire),
            1,
            "only `first` holds one"
        );
    }

    /// An admission of `max` connections where each client may open one a second.
    fn one_a_second(max: u64) -> Arc<Admission> {
        let limits = Limits {
            rate_per_second: 1.0,
            rate_burst: 1,
            ..admission(&[], max).limits.clone()
        };
        Admission::new(limits, Metrics::new().0)
    }

    #[test]
    fn a_client_known_after_accept_is_limited_by_its_own_address() {
        let a = one_a_second(100);
        let t0 = Instant::now();
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let mut first = a.admit_any(t0).expect("below the caps");
        first
            .admit_client(ip("203.0.113.1"), t0)
            .expect("its token");
        let mut second = a.admit_any(t0).expect("below the caps");
        assert_eq!(
            second.admit_client(ip("203.0.113.1"), t0),
            Err(Refusal::RateLimited(1)),
            "same client, no token left"
        );
        let mut third = a.admit_any(t0).expect("below the caps");
        third
            .admit_client(ip("203.0.113.2"), t0)
            .expect("another client");
        assert_eq!(a.handshakes_in_progress(), (3, 2));
        drop((first, second, third));
        assert_eq!(a.handshakes_in_progress(), (0, 0));
    }

    #[test]
    fn a_refusal_at_the_connection_cap_takes_no_rate_token() {
        let a = one_a_second(1);
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let held = a.try_connect().expect("the only slot");
        assert_eq!(a.admit(ip, t0).err(), Some(Refusal::MaxConnections));
        drop(held);
        drop(a.admit(ip, t0).expect("the token is still there"));
        assert_eq!(a.admit(ip, t0).err(), Some(Refusal::RateLimited(1)));
    }
}
