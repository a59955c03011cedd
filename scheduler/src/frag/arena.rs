//! A linear memory arena for the contiguous allocators: each reservation is one run of token
//! slots, placed first-fit or best-fit among the free holes, and freed holes merge with their
//! neighbours. External fragmentation is whatever this placement leaves behind, not a model.

use std::collections::BTreeMap;

/// How a reservation picks its hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// The lowest-addressed hole that is large enough.
    First,
    /// The smallest hole that is large enough (lowest address among equals).
    Best,
}

impl Fit {
    pub fn name(self) -> &'static str {
        match self {
            Fit::First => "first-fit",
            Fit::Best => "best-fit",
        }
    }
}

/// Token slots `0..capacity`, holes kept by start offset.
#[derive(Debug, Clone)]
pub struct Arena {
    capacity: usize,
    fit: Fit,
    /// Free holes: start → length. Never two adjacent holes (they are merged).
    holes: BTreeMap<usize, usize>,
    /// Live reservations: start → length.
    taken: BTreeMap<usize, usize>,
    free: usize,
}

impl Arena {
    pub fn new(capacity: usize, fit: Fit) -> Self {
        let mut holes = BTreeMap::new();
        if capacity > 0 {
            holes.insert(0, capacity);
        }
        Arena {
            capacity,
            fit,
            holes,
            taken: BTreeMap::new(),
            free: capacity,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Free slots, in holes of any size.
    pub fn free(&self) -> usize {
        self.free
    }

    /// Reserves `len` contiguous slots and returns their start, or `None` when no hole is
    /// large enough (even if enough slots are free in total).
    pub fn alloc(&mut self, len: usize) -> Option<usize> {
        if len == 0 {
            return None;
        }
        let fits = self.holes.iter().filter(|(_, &l)| l >= len);
        let (start, hole_len) = match self.fit {
            Fit::First => fits.map(|(&s, &l)| (s, l)).next()?,
            Fit::Best => fits.map(|(&s, &l)| (s, l)).min_by_key(|&(s, l)| (l, s))?,
        };
        self.holes.remove(&start);
        if hole_len > len {
            self.holes.insert(start + len, hole_len - len);
        }
        self.taken.insert(start, len);
        self.free -= len;
        Some(start)
    }

    /// Frees the reservation that starts at `start`, merging it with adjacent holes.
    /// Returns false (and changes nothing) if no reservation starts there.
    pub fn release(&mut self, start: usize) -> bool {
        let Some(len) = self.taken.remove(&start) else {
            return false;
        };
        self.free += len;
        let (mut s, mut l) = (start, len);
        if let Some((&ps, &pl)) = self.holes.range(..start).next_back() {
            if ps + pl == start {
                self.holes.remove(&ps);
                s = ps;
                l += pl;
            }
        }
        if let Some(&nl) = self.holes.get(&(start + len)) {
            self.holes.remove(&(start + len));
            l += nl;
        }
        self.holes.insert(s, l);
        true
    }

    /// The free holes as (start, length), by address.
    pub fn holes(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.holes.iter().map(|(&s, &l)| (s, l))
    }

    /// Free slots in holes shorter than `len`: memory that is free but cannot hold a
    /// reservation of `len` (external fragmentation with respect to that request).
    pub fn free_in_holes_smaller_than(&self, len: usize) -> usize {
        self.holes.values().filter(|&&l| l < len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_merges_both_neighbours() {
        let mut a = Arena::new(30, Fit::First);
        let x = a.alloc(10).unwrap();
        let y = a.alloc(10).unwrap();
        let z = a.alloc(10).unwrap();
        assert_eq!((x, y, z), (0, 10, 20));
        assert!(a.release(x));
        assert!(a.release(z));
        assert_eq!(a.holes().collect::<Vec<_>>(), vec![(0, 10), (20, 10)]);
        assert!(a.release(y));
        assert_eq!(a.holes().collect::<Vec<_>>(), vec![(0, 30)]);
        assert!(!a.release(y), "double free is refused");
        assert_eq!(a.free(), 30);
    }
}
