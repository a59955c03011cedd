//! Scheduling policies: who goes first, and who is preempted.
//!
//! A policy gives each request a *static key* when it arrives (smaller runs first). Static
//! keys let the queues stay sorted without re-sorting every step, and they put a preempted
//! request back at its old place in line. Aging fits in a static key: an effective priority
//! `p - rate * (now - arrival)` orders requests exactly as `p + rate * arrival` does, since
//! `rate * now` is common to all.
//!
//! The preemption victim is always the running sequence with the *largest* key among those
//! not yet scheduled in the step (the least urgent), or the sequence itself if none is left.
//!
//! A policy may also re-rank a window at the head of the waiting queue by what the cache holds
//! now ([`Policy::waiting_window`], [`Policy::dynamic_key`]); the prefix-aware policy does.

use crate::sequence::Sequence;

pub trait Policy: Send {
    fn name(&self) -> &str;
    /// Smaller runs first; the largest running key is preempted first.
    fn key(&self, seq: &Sequence) -> f64;
    /// How many waiting requests (from the head, in key order) to re-rank each step.
    fn waiting_window(&self) -> usize {
        0
    }
    /// The key used inside the waiting window, given the tokens the prefix cache holds for it.
    fn dynamic_key(&self, seq: &Sequence, _cached_tokens: usize, _now: f64) -> f64 {
        self.key(seq)
    }
}

/// First come, first served. Victim: the latest arrival.
#[derive(Debug, Clone, Default)]
pub struct Fcfs;

impl Policy for Fcfs {
    fn name(&self) -> &str {
        "fcfs"
    }
    fn key(&self, seq: &Sequence) -> f64 {
        seq.arrival_s
    }
}

/// Request priority (smaller = more urgent), aged by `aging_per_s` priority levels per second
/// of waiting so low priority cannot starve forever. Victim: the lowest effective priority.
#[derive(Debug, Clone)]
pub struct Priority {
    pub aging_per_s: f64,
}

impl Default for Priority {
    fn default() -> Self {
        Priority { aging_per_s: 0.1 }
    }
}

impl Policy for Priority {
    fn name(&self) -> &str {
        "priority"
    }
    fn key(&self, seq: &Sequence) -> f64 {
        seq.priority as f64 + self.aging_per_s * seq.arrival_s
    }
}

/// Shortest job first by predicted work (prompt + max tokens), aged by `aging_tokens_per_s`
/// tokens of credit per second of waiting. Victim: the largest predicted work.
#[derive(Debug, Clone)]
pub struct ShortestJobFirst {
    pub aging_tokens_per_s: f64,
}

impl Default for ShortestJobFirst {
    fn default() -> Self {
        ShortestJobFirst {
            aging_tokens_per_s: 100.0,
        }
    }
}

impl Policy for ShortestJobFirst {
    fn name(&self) -> &str {
        "sjf"
    }
    fn key(&self, seq: &Sequence) -> f64 {
        (seq.prompt_len + seq.max_tokens) as f64 + self.aging_tokens_per_s * seq.arrival_s
    }
}

/// Longest cached prefix first among the `window` oldest waiting requests, aged by
/// `aging_tokens_per_s` tokens of credit per second of waiting (so a request with no cached
/// prefix still gets its turn). Victim: the latest arrival.
#[derive(Debug, Clone)]
pub struct PrefixAware {
    pub aging_tokens_per_s: f64,
    pub window: usize,
}

impl Default for PrefixAware {
    fn default() -> Self {
        PrefixAware {
            aging_tokens_per_s: 100.0,
            window: 32,
        }
    }
}

impl Policy for PrefixAware {
    fn name(&self) -> &str {
        "prefix-aware"
    }
    fn key(&self, seq: &Sequence) -> f64 {
        seq.arrival_s
    }
    fn waiting_window(&self) -> usize {
        self.window
    }
    fn dynamic_key(&self, seq: &Sequence, cached_tokens: usize, now: f64) -> f64 {
        -(cached_tokens as f64 + self.aging_tokens_per_s * (now - seq.arrival_s))
    }
}

/// The built-in policy of this name: `fcfs`, `priority`, `sjf`, `prefix-aware`.
pub fn by_name(name: &str) -> Option<Box<dyn Policy>> {
    match name {
        "fcfs" => Some(Box::new(Fcfs)),
        "priority" => Some(Box::new(Priority::default())),
        "sjf" => Some(Box::new(ShortestJobFirst::default())),
        "prefix-aware" => Some(Box::new(PrefixAware::default())),
        _ => None,
    }
}

/// Names accepted by [`by_name`].
pub const POLICY_NAMES: [&str; 4] = ["fcfs", "priority", "sjf", "prefix-aware"];
