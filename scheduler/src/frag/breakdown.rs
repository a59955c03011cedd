//! Where every token slot of the KV budget is at one moment, and its average over time.
//!
//! The five categories partition the budget exactly (they are counted in whole token slots):
//! - *useful*: slots holding a token state some running sequence will attend to;
//! - *reserved*: slots set aside for tokens the request will still produce (contiguous
//!   allocators reserve ahead; paged ones allocate a page when the tokens arrive);
//! - *internal*: slots reserved that will never hold a token: the slack of a paged
//!   sequence's last page, or a contiguous reservation's excess over the request's final
//!   length;
//! - *external*: free slots that cannot serve the next request: holes shorter than the
//!   waiting request's reservation, or a budget remainder too small for one page;
//! - *free*: the rest.
//!
//! Sharing (prefix caching, `n > 1`) is reported beside the partition: token states that
//! one physical slot serves to several sequences.

use serde::Serialize;

/// One moment's partition of the budget, in token slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Breakdown {
    pub useful: usize,
    pub reserved: usize,
    pub internal: usize,
    pub external: usize,
    pub free: usize,
    /// Token states served from a slot another sequence also holds (not part of the sum).
    pub shared: usize,
}

impl Breakdown {
    /// Σ of the five categories: always the budget.
    pub fn total(&self) -> usize {
        self.useful + self.reserved + self.internal + self.external + self.free
    }
    /// Slots taken by some sequence (useful + reserved + internal).
    pub fn allocated(&self) -> usize {
        self.useful + self.reserved + self.internal
    }
}

/// The categories as fractions of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Fractions {
    pub useful_frac: f64,
    pub reserved_frac: f64,
    pub internal_frac: f64,
    pub external_frac: f64,
    pub free_frac: f64,
    /// Sharing savings, as a fraction of the budget.
    pub shared_frac: f64,
    /// useful / (useful + reserved + internal): the share of allocated memory that holds
    /// token states (the PagedAttention paper's Figure 2 measure).
    pub useful_of_allocated: f64,
}

/// Time-weighted averages of [`Breakdown`]s, and the moment of peak allocation.
#[derive(Debug, Clone, Default)]
pub struct Averager {
    sums: [f64; 6],
    time: f64,
    peak: Breakdown,
}

impl Averager {
    /// Adds a moment that lasted `dt` seconds.
    pub fn add(&mut self, b: &Breakdown, dt: f64) {
        let v = [
            b.useful, b.reserved, b.internal, b.external, b.free, b.shared,
        ];
        for (s, x) in self.sums.iter_mut().zip(v) {
            *s += x as f64 * dt;
        }
        self.time += dt;
        if b.allocated() > self.peak.allocated() || self.peak.total() == 0 {
            self.peak = *b;
        }
    }

    /// Time averages as fractions of `budget` (they add up to 1).
    pub fn mean(&self, budget: usize) -> Fractions {
        if self.time <= 0.0 || budget == 0 {
            return Fractions {
                free_frac: 1.0,
                ..Fractions::default()
            };
        }
        let f = |i: usize| self.sums[i] / self.time / budget as f64;
        let allocated = self.sums[0] + self.sums[1] + self.sums[2];
        Fractions {
            useful_frac: f(0),
            reserved_frac: f(1),
            internal_frac: f(2),
            external_frac: f(3),
            free_frac: f(4),
            shared_frac: f(5),
            useful_of_allocated: if allocated > 0.0 {
                self.sums[0] / allocated
            } else {
                0.0
            },
        }
    }

    /// The moment with the most memory allocated.
    pub fn peak(&self) -> Breakdown {
        self.peak
    }
}

impl Fractions {
    /// One moment as fractions of `budget`.
    pub fn of(b: &Breakdown, budget: usize) -> Fractions {
        let mut a = Averager::default();
        a.add(b, 1.0);
        a.mean(budget)
    }
}
