//! An intrusive doubly linked list of free pages, threaded through the pool's flat arrays.
//!
//! Why intrusive: allocate (pop the head), free (push the tail) and "touch" (unlink a cached page
//! from the middle when a prefix hit revives it) are all O(1) and never allocate. The list order
//! is the eviction order: the head is the least recently freed page, so cached pages that were
//! freed long ago are reused first (LRU).

use crate::BlockId;

/// Link value meaning "no neighbour".
pub(crate) const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub(crate) struct FreeList {
    prev: Vec<u32>,
    next: Vec<u32>,
    in_list: Vec<bool>,
    head: u32,
    tail: u32,
    len: usize,
}

impl FreeList {
    /// A list holding every page `0..n` in ascending order.
    pub(crate) fn full(n: usize) -> Self {
        let mut list = FreeList {
            prev: vec![NIL; n],
            next: vec![NIL; n],
            in_list: vec![false; n],
            head: NIL,
            tail: NIL,
            len: 0,
        };
        for b in 0..n as u32 {
            list.push_back(b);
        }
        list
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn contains(&self, b: BlockId) -> bool {
        self.in_list[b as usize]
    }

    pub(crate) fn head(&self) -> Option<BlockId> {
        (self.head != NIL).then_some(self.head)
    }

    pub(crate) fn next_of(&self, b: BlockId) -> Option<BlockId> {
        let n = self.next[b as usize];
        (n != NIL).then_some(n)
    }

    pub(crate) fn push_back(&mut self, b: BlockId) {
        debug_assert!(!self.in_list[b as usize]);
        let i = b as usize;
        self.prev[i] = self.tail;
        self.next[i] = NIL;
        if self.tail == NIL {
            self.head = b;
        } else {
            self.next[self.tail as usize] = b;
        }
        self.tail = b;
        self.in_list[i] = true;
        self.len += 1;
    }

    pub(crate) fn pop_front(&mut self) -> Option<BlockId> {
        let b = self.head()?;
        self.remove(b);
        Some(b)
    }

    /// Unlinks `b`, which must be in the list.
    pub(crate) fn remove(&mut self, b: BlockId) {
        debug_assert!(self.in_list[b as usize]);
        let i = b as usize;
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[i] = NIL;
        self.next[i] = NIL;
        self.in_list[i] = false;
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(l: &FreeList) -> Vec<u32> {
        let mut out = vec![];
        let mut cur = l.head();
        while let Some(b) = cur {
            out.push(b);
            cur = l.next_of(b);
        }
        out
    }

    #[test]
    fn pop_front_push_back_and_remove_keep_order() {
        let mut l = FreeList::full(5);
        assert_eq!(order(&l), vec![0, 1, 2, 3, 4]);
        assert_eq!(l.pop_front(), Some(0));
        l.remove(2);
        l.push_back(0);
        assert_eq!(order(&l), vec![1, 3, 4, 0]);
        l.remove(0);
        l.remove(1);
        assert_eq!(order(&l), vec![3, 4]);
        assert_eq!(l.len(), 2);
        assert!(!l.contains(1) && l.contains(4));
        l.remove(3);
        l.remove(4);
        assert_eq!(l.pop_front(), None);
        l.push_back(2);
        assert_eq!(order(&l), vec![2]);
    }
}
