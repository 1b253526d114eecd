//! The open sessions as the drain coordinator knows them, for a rebalance to choose from.
//!
//! A rebalance moves chosen sessions, so the coordinator keeps one small entry per open session
//! ([`Open`]: when it opened relative to the others, the moves its client declared, whether its
//! close handshake has begun, and its slot if a rebalance selected it) in a vector with a list
//! of free places. A session holds the index of its entry ([`Index`], 4 bytes that fit in the
//! padding of its ticket) and gives it back when it ends. An entry is 16 bytes; the vector keeps
//! the room of the most sessions open at once.

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
}

impl Registry {
    /// Registers a session whose client declared `moves`; `None` when no index is left (more
    /// than `u32::MAX` sessions at once, which no process has the open files for).
    pub fn insert(&mut self, moves: u32) -> Option<Index> {
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
}
