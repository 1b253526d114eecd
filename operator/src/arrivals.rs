//! New LongConnServices that arrive in a burst are set up once the burst is over.
//!
//! When many LongConnServices are created at once (`kubectl apply` of a directory, a GitOps
//! sync), setting each up as it arrives sends the operator's writes, and the controllers'
//! reactions to what it makes (ReplicaSets, pods, EndpointSlices), into the API server while it
//! is still taking the creates: measured, a thousand creates took about 1.8 times as long with
//! the operator setting them up as with none (operator/README.md, "New services in a burst").
//! So a new LongConnService (one with no status yet) that arrives within [`IDLE`] of another
//! waits until the arrivals pause for [`IDLE`], and at most [`MAX_WAIT`] after it arrived: the
//! batching Karpenter applies to pending pods (its batch idle and batch max durations, 1 s and
//! 10 s by default). A LongConnService created alone is set up at once, and so is the first
//! of a burst.
//!
//! Only the first setup waits: a LongConnService with a status (set up before, or by an
//! earlier leader) never does, so rollouts, scale-downs and drains elsewhere go on during a
//! burst.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A burst is over once no new LongConnService has arrived for this long.
pub const IDLE: Duration = Duration::from_secs(1);
/// No new LongConnService waits longer than this after it arrived.
pub const MAX_WAIT: Duration = Duration::from_secs(10);
/// How long an arrival is remembered: well past [`MAX_WAIT`], so that a LongConnService whose
/// first status is slow to show in the cache is not taken for a new arrival.
const REMEMBER: Duration = Duration::from_secs(60);

/// The new LongConnServices seen, keyed by `K` (an `ObjectRef` in the operator).
#[derive(Debug)]
pub struct Arrivals<K> {
    seen: HashMap<K, Seen>,
    /// When the latest new LongConnService arrived.
    last: Option<Instant>,
    /// New LongConnServices in the burst the latest belongs to.
    burst: usize,
    /// When `seen` was last pruned.
    pruned: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    at: Instant,
    released: bool,
}

impl<K> Default for Arrivals<K> {
    fn default() -> Self {
        Self {
            seen: HashMap::new(),
            last: None,
            burst: 0,
            pruned: None,
        }
    }
}

/// What a new LongConnService's reconcile does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Set it up now.
    Now,
    /// Look again `after` this long: new LongConnServices are still arriving. `began`: this is
    /// the burst's first service to wait (its second arrival).
    Wait { after: Duration, began: bool },
}

impl<K: Hash + Eq + Clone> Arrivals<K> {
    /// Whether the new LongConnService `key`, reconciled at `now`, is set up now. Once told
    /// [`Admission::Now`], it always is.
    pub fn admit(&mut self, key: &K, now: Instant) -> Admission {
        self.prune(now);
        let mut began = false;
        let seen = self.seen.entry(key.clone()).or_insert_with(|| {
            let alone = self
                .last
                .is_none_or(|last| now.saturating_duration_since(last) >= IDLE);
            self.burst = if alone { 1 } else { self.burst + 1 };
            began = self.burst == 2;
            self.last = Some(now);
            Seen {
                at: now,
                released: alone,
            }
        });
        let quiet_at = self.last.unwrap_or(now) + IDLE;
        let deadline = seen.at + MAX_WAIT;
        if seen.released || now >= quiet_at || now >= deadline {
            seen.released = true;
            return Admission::Now;
        }
        Admission::Wait {
            after: quiet_at.min(deadline) - now,
            began,
        }
    }

    /// Forgets arrivals older than [`REMEMBER`], at most once per [`IDLE`].
    fn prune(&mut self, now: Instant) {
        if self
            .pruned
            .is_some_and(|at| now.saturating_duration_since(at) < IDLE)
        {
            return;
        }
        self.pruned = Some(now);
        self.seen
            .retain(|_, seen| now.saturating_duration_since(seen.at) < REMEMBER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Told to wait `n` ms; `began`: the burst's first service to wait.
    fn wait(n: u64, began: bool) -> Admission {
        Admission::Wait {
            after: ms(n),
            began,
        }
    }

    impl<K> Arrivals<K> {
        /// New LongConnServices waiting now.
        fn waiting(&self) -> usize {
            self.seen.values().filter(|seen| !seen.released).count()
        }
    }

    #[test]
    fn a_service_created_alone_is_set_up_at_once() {
        let mut arrivals = Arrivals::default();
        let t0 = Instant::now();
        assert_eq!(arrivals.admit(&"a", t0), Admission::Now);
        // Another, well after the first: alone too.
        assert_eq!(arrivals.admit(&"b", t0 + ms(1500)), Admission::Now);
        assert_eq!(arrivals.waiting(), 0);
    }

    #[test]
    fn a_burst_waits_until_the_arrivals_pause() {
        let mut arrivals = Arrivals::default();
        let t0 = Instant::now();
        // The first of a burst cannot know one follows: it is set up at once.
        assert_eq!(arrivals.admit(&"a", t0), Admission::Now);
        assert_eq!(arrivals.admit(&"b", t0 + ms(100)), wait(1000, true));
        assert_eq!(arrivals.admit(&"c", t0 + ms(300)), wait(1000, false));
        // "b" looks again while "c" is the latest arrival: it waits for the pause after "c".
        assert_eq!(arrivals.admit(&"b", t0 + ms(1100)), wait(200, false));
        assert_eq!(arrivals.waiting(), 2);
        // The arrivals paused: both go, and stay released whatever arrives next.
        assert_eq!(arrivals.admit(&"b", t0 + ms(1300)), Admission::Now);
        assert_eq!(arrivals.admit(&"c", t0 + ms(1300)), Admission::Now);
        // The next arrival, over a second after "c", is alone again; one right after it waits,
        // the first of a new burst.
        assert_eq!(arrivals.admit(&"d", t0 + ms(1400)), Admission::Now);
        assert_eq!(arrivals.admit(&"e", t0 + ms(1500)), wait(1000, true));
        assert_eq!(arrivals.admit(&"c", t0 + ms(1600)), Admission::Now);
        assert_eq!(arrivals.waiting(), 1);
        assert_eq!(arrivals.admit(&"e", t0 + ms(2500)), Admission::Now);
        assert_eq!(arrivals.waiting(), 0);
    }

    #[test]
    fn no_service_waits_past_max_wait_while_arrivals_go_on() {
        let mut arrivals = Arrivals::default();
        let t0 = Instant::now();
        arrivals.admit(&0, t0);
        assert_eq!(arrivals.admit(&1, t0 + ms(10)), wait(1000, true));
        // One new service every half second: the arrivals never pause.
        let mut released_at = None;
        for i in 2..40_u64 {
            let now = t0 + ms(500 * i);
            arrivals.admit(&i, now);
            if arrivals.admit(&1, now) == Admission::Now {
                released_at = Some(now);
                break;
            }
        }
        assert_eq!(released_at, Some(t0 + ms(10) + MAX_WAIT + ms(490)));
        // The wait it was told never reaches past its deadline.
        let late = t0 + ms(10) + MAX_WAIT - ms(300);
        let mut fresh = Arrivals::default();
        fresh.admit(&0, t0);
        fresh.admit(&1, t0 + ms(10));
        fresh.admit(&2, late - ms(100));
        assert_eq!(fresh.admit(&1, late), wait(300, false));
    }

    #[test]
    fn arrivals_are_forgotten_after_a_minute() {
        let mut arrivals = Arrivals::default();
        let t0 = Instant::now();
        arrivals.admit(&"a", t0);
        arrivals.admit(&"b", t0 + ms(10));
        assert_eq!(arrivals.seen.len(), 2);
        arrivals.admit(&"c", t0 + REMEMBER + ms(20));
        assert_eq!(arrivals.seen.len(), 1);
    }
}
