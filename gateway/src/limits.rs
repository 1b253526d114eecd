//! Admission limits checked before a connection may become a session: the per-process connection
//! cap, the per-IP token bucket and the origin allow-list. Also the shared heartbeat clock that
//! wakes sessions to check their timers.

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

/// Per-IP token buckets (`rate` tokens per second up to `burst`).
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: u32) -> Self {
        RateLimiter {
            rate,
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `ip` at `now`; on refusal returns the seconds until one is available.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = map.entry(ip).or_insert((self.burst, now));
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

    /// Forgets buckets that have refilled completely, so the map only holds recent clients.
    pub fn prune(&self, now: Instant) {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (rate, burst) = (self.rate, self.burst);
        map.retain(|_, (tokens, last)| {
            *tokens + now.saturating_duration_since(*last).as_secs_f64() * rate < burst
        });
    }

    /// Number of IPs tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The connection cap and origin list.
#[derive(Debug)]
pub struct Admission {
    pub limits: Limits,
    pub rate: RateLimiter,
    connections: AtomicU64,
    metrics: Metrics,
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

impl Admission {
    pub fn new(limits: Limits, metrics: Metrics) -> Arc<Self> {
        Arc::new(Admission {
            rate: RateLimiter::new(limits.rate_per_second, limits.rate_burst),
            limits,
            connections: AtomicU64::new(0),
            metrics,
        })
    }

    /// Takes a connection slot, or `None` at `--max-connections`.
    pub fn try_connect(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let max = self.limits.max_connections;
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.metrics.connections_active.inc();
        Some(ConnectionSlot(Arc::clone(self)))
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

    /// Runs the clock forever; also prunes the rate limiter every minute.
    pub async fn run(self: Arc<Self>, period: Duration, admission: Arc<Admission>) {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune = Instant::now();
        loop {
            interval.tick().await;
            self.beacon.fire();
            if last_prune.elapsed() > Duration::from_secs(60) {
                admission.rate.prune(Instant::now());
                last_prune = Instant::now();
            }
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
        rl.prune(t0 + Duration::from_secs(10));
        assert_eq!(rl.tracked(), 0);
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
    }
}
