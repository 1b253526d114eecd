//! The open sessions as the drain coordinator knows them, for a rebalance to choose from.
//!
//! A rebalance moves chosen sessions, so the coordinator keeps one small entry per open session
//! ([`Open`]: when it opened relative to the others, the moves its client declared, whether its
//! close handshake has begun, and its slot if a rebalance selected it) in a vector with a list
//! of free places. A session holds the index of its entry ([`Index`], 4 bytes that fit in the
//! padding of its ticket) and gives it back when it ends. An entry is 16 bytes; the vector keeps
//! the room of the most sessions open at once.
//!
//! When each session opened is kept coarsely, beside the entries rather than in them: a
//! checkpoint (the time, the next session's number) at most every [`CHECKPOINT_EVERY`], for
//! [`MAX_KEEP_MOVED_FOR`] (at most 3,600 checkpoints of 24 bytes). That tells a rebalance which
//! sessions opened recently ([`Registry::opened_since`]), erring towards recent by under
//! [`CHECKPOINT_EVERY`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use longconn_drain_api::MAX_KEEP_MOVED_FOR;

/// The least time between two checkpoints of the sessions' opening times.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Where a session's entry is.
pub type Index = u32;

/// One open session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Open {
    /// Its place in the order of opening: later sessions have higher numbers.
    pub seq: u64,
    /// The moves its client declared, saturated at 255.
    pub moves: u8,
    /// Its close handshake has begun (either side's, or the gateway's own).
    pub closing: bool,
    /// A rebalance selected it, with `slot`.
    selected: bool,
    /// Its slot in the rebalance that selected it (0, 1, 2, ...): the order of its close frame.
    slot: u32,
}

impl Open {
    /// Its slot in the rebalance that selected it, if one did.
    pub fn slot(&self) -> Option<u32> {
        self.selected.then_some(self.slot)
    }

    /// Marks it selected by a rebalance, with `slot`.
    pub fn select(&mut self, slot: u32) {
        (self.selected, self.slot) = (true, slot);
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Registry {
    entries: Vec<Option<Open>>,
    free: Vec<Index>,
    next_seq: u64,
    /// (when, the number of the first session opened from then on), oldest first.
    checkpoints: VecDeque<(Instant, u64)>,
}

impl Registry {
    /// Registers a session whose client declared `moves`; `None` when no index is left (more
    /// than `u32::MAX` sessions at once, which no process has the open files for).
    pub fn insert(&mut self, moves: u32) -> Option<Index> {
        self.insert_at(moves, Instant::now())
    }

    /// [`Registry::insert`] at `now`.
    fn insert_at(&mut self, moves: u32, now: Instant) -> Option<Index> {
        self.checkpoint(now);
        let open = Open {
            seq: self.next_seq,
            moves: u8::try_from(moves).unwrap_or(u8::MAX),
            closing: false,
            selected: false,
            slot: 0,
        };
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let index = Index::try_from(self.entries.len()).ok()?;
                self.entries.push(None);
                index
            }
        };
        self.next_seq += 1;
        self.entries[index as usize] = Some(open);
        Some(index)
    }

    /// Removes the entry at `index` and returns it.
    pub fn remove(&mut self, index: Index) -> Option<Open> {
        let open = self.entries.get_mut(index as usize)?.take()?;
        self.free.push(index);
        Some(open)
    }

    /// The entry at `index`, if a session holds it.
    pub fn get(&self, index: Index) -> Option<&Open> {
        self.entries.get(index as usize)?.as_ref()
    }

    /// The entry at `index`, to change, if a session holds it.
    pub fn get_mut(&mut self, index: Index) -> Option<&mut Open> {
        self.entries.get_mut(index as usize)?.as_mut()
    }

    /// The number from which sessions opened less than `within` before `now` (at most
    /// [`MAX_KEEP_MOVED_FOR`]) are numbered: every such session has this number or a higher
    /// one, and so may a few opened up to [`CHECKPOINT_EVERY`] earlier.
    pub fn opened_since(&self, now: Instant, within: Duration) -> u64 {
        let Some(cutoff) = now.checked_sub(within) else {
            return 0;
        };
        // The last checkpoint at or before the cutoff. With none, every session opened after
        // the first checkpoint, which is after the cutoff (the oldest one kept is older than
        // the longest window once any was dropped).
        let Some(last) = self.checkpoints.iter().rposition(|(at, _)| *at <= cutoff) else {
            return 0;
        };
        let (at, seq) = self.checkpoints[last];
        // The sessions numbered from `seq` up to the next checkpoint opened within
        // CHECKPOINT_EVERY of `at`.
        if at + CHECKPOINT_EVERY > cutoff {
            return seq;
        }
        self.checkpoints
            .get(last + 1)
            .map_or(self.next_seq, |(_, next)| *next)
    }

    /// Adds a checkpoint when the last is [`CHECKPOINT_EVERY`] old, and forgets those no window
    /// needs (keeping the newest older than the longest window).
    fn checkpoint(&mut self, now: Instant) {
        let due = self
            .checkpoints
            .back()
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= CHECKPOINT_EVERY);
        if due {
            self.checkpoints.push_back((now, self.next_seq));
        }
        while self
            .checkpoints
            .get(1)
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > MAX_KEEP_MOVED_FOR)
        {
            self.checkpoints.pop_front();
        }
    }

    /// Every open session with its index.
    pub fn iter(&self) -> impl Iterator<Item = (Index, &Open)> {
        // Indices fit in `Index`: `insert` hands out no others.
        (0..)
            .zip(&self.entries)
            .filter_map(|(i, e)| Some((i, e.as_ref()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<Option<Open>>(), 16);
    }

    #[test]
    fn indices_are_reused_and_sessions_keep_their_order_of_opening() {
        let mut r = Registry::default();
        let a = r.insert(0).expect("room");
        let b = r.insert(3).expect("room");
        assert_eq!(r.remove(a).map(|o| o.seq), Some(0));
        assert_eq!(r.remove(a), None, "removed once");
        let c = r.insert(300).expect("room");
        assert_eq!(c, a, "the free place is taken again");
        let open: Vec<_> = r.iter().map(|(i, o)| (i, o.seq, o.moves)).collect();
        assert_eq!(open, [(c, 2, 255), (b, 1, 3)]);
        r.get_mut(b).expect("open").closing = true;
        assert!(r.get(b).expect("open").closing);
        assert_eq!(r.get(b).expect("open").slot(), None);
        r.get_mut(b).expect("open").select(4);
        assert_eq!(r.get(b).expect("open").slot(), Some(4));
        assert_eq!(r.get(7), None);
    }

    #[test]
    fn the_sessions_opened_within_a_window_are_those_numbered_from_where_it_starts() {
        let t0 = Instant::now();
        let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
        let mut r = Registry::default();
        assert_eq!(r.opened_since(at(0.0), Duration::from_secs(60)), 0);
        // Sessions 0..3 in the first second, 3..5 at 10 s, 5 at 100 s.
        for secs in [0.0, 0.2, 0.9, 10.0, 10.5, 100.0] {
            r.insert_at(0, at(secs)).expect("room");
        }
        let since = |now: f64, within: u64| r.opened_since(at(now), Duration::from_secs(within));
        assert_eq!(since(100.0, 200), 0, "all of them");
        assert_eq!(since(100.0, 95), 3, "from 10 s on");
        assert_eq!(since(100.5, 90), 3, "10.5 s is within");
        assert_eq!(since(100.0, 50), 5, "only the last");
        assert_eq!(since(200.0, 50), 6, "none");
        assert_eq!(
            since(10.4, 10),
            0,
            "at most a checkpoint's second early: 0.4 s falls in the first second"
        );
        assert_eq!(since(11.5, 10), 3, "the first second is over by 1.5 s");
    }

    #[test]
    fn checkpoints_older_than_the_longest_window_are_forgotten_but_one() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        let hour = MAX_KEEP_MOVED_FOR.as_secs();
        for secs in 0..(2 * hour) {
            r.insert_at(0, t0 + Duration::from_secs(secs))
                .expect("room");
        }
        let kept = usize::try_from(hour).expect("fits") + 2;
        assert!(r.checkpoints.len() <= kept, "{} kept", r.checkpoints.len());
        let now = t0 + Duration::from_secs(2 * hour);
        assert_eq!(r.opened_since(now, MAX_KEEP_MOVED_FOR), hour);
    }
}
