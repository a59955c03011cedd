//! The routing policies of `vllm-router` (0.1.17, `src/policies/`), as the fleet simulator
//! applies them. Load is what the router itself counts: requests it sent to a replica that
//! have not finished.
//!
//! - round-robin: replicas in turn.
//! - power-of-two: two distinct replicas at random, the less loaded (the first on a tie).
//! - least-loaded: the least loaded replica (the first on a tie).
//! - cache-aware: an approximate prefix tree of what the router sent where. When the load is
//!   imbalanced (`max - min > balance_abs_threshold` and `max > balance_rel_threshold * min`)
//!   the least loaded replica; otherwise, if the best prefix match rate exceeds
//!   `cache_threshold`, the least loaded of the replicas with that rate; otherwise the least
//!   loaded. The chosen replica's tree gets the prompt. The tree is approximated by the set
//!   of the prompt's chained prefix hashes at `TREE_GRANULARITY` tokens (the router's is per
//!   token: a match here is up to `TREE_GRANULARITY - 1` tokens shorter), each replica's
//!   trimmed to `max_tree_tokens` least recently used every `eviction_interval_s`.
//! - kv-aware: the replicas' actual cached pages (what their KV events announce, which is
//!   exactly what their block manager's lookup finds) and the router's load: the cost of a
//!   replica is `(new prefill tokens + prefill tokens it already has in flight) x (requests in
//!   flight + 1)`, where a prompt's cached full pages (never its last token) are not new; the
//!   cheapest replica wins, the first on a tie. A request's prefill tokens stop counting at
//!   its first token.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustc_hash::FxHashMap;
use serde::Serialize;

use super::error::SimError;
use block_manager::{chain_hash, ROOT_HASH};

/// Tokens per entry of the cache-aware router's approximate tree.
pub const TREE_GRANULARITY: usize = 16;

/// The routing policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouterPolicy {
    RoundRobin,
    PowerOfTwo,
    LeastLoaded,
    CacheAware,
    KvAware,
}

impl RouterPolicy {
    pub const NAMES: [&str; 5] = [
        "round-robin",
        "power-of-two",
        "least-loaded",
        "cache-aware",
        "kv-aware",
    ];

    pub fn parse(s: &str) -> Result<RouterPolicy, SimError> {
        Ok(match s {
            "round-robin" => RouterPolicy::RoundRobin,
            "power-of-two" => RouterPolicy::PowerOfTwo,
            "least-loaded" => RouterPolicy::LeastLoaded,
            "cache-aware" => RouterPolicy::CacheAware,
            "kv-aware" => RouterPolicy::KvAware,
            _ => {
                return Err(SimError::Config(format!(
                    "unknown router '{s}' (one of {})",
                    Self::NAMES.join(", ")
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// `vllm-router`'s cache-aware settings (its defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CacheAwareConfig {
    pub cache_threshold: f64,
    pub balance_abs_threshold: usize,
    pub balance_rel_threshold: f64,
    pub eviction_interval_s: f64,
    /// The router's `max_tree_size` (2^25 characters) at its 8 characters per token.
    pub max_tree_tokens: usize,
}

impl Default for CacheAwareConfig {
    fn default() -> Self {
        CacheAwareConfig {
            cache_threshold: 0.3,
            balance_abs_threshold: 64,
            balance_rel_threshold: 1.5,
            eviction_interval_s: 120.0,
            max_tree_tokens: (1 << 25) / 8,
        }
    }
}

/// What the router knows of one replica.
#[derive(Debug, Clone, Default)]
struct ReplicaView {
    in_flight: usize,
    /// kv-aware: new prefill tokens of requests sent here that have no token yet.
    active_prefill: u64,
    /// cache-aware: prefix hashes sent here, with when they were last sent.
    tree: FxHashMap<u64, f64>,
}

/// A request as the router sees it.
pub struct Incoming<'a> {
    pub tokens: &'a [u32],
    /// kv-aware: for each replica, the prompt's tokens in its cache (full pages, never the
    /// last token).
    pub cached: &'a dyn Fn(usize) -> usize,
}

pub struct Router {
    policy: RouterPolicy,
    cache: CacheAwareConfig,
    views: Vec<ReplicaView>,
    next: usize,
    rng: StdRng,
    next_eviction_s: f64,
}

impl Router {
    pub fn new(policy: RouterPolicy, replicas: usize, cache: CacheAwareConfig, seed: u64) -> Self {
        Router {
            policy,
            cache,
            views: vec![ReplicaView::default(); replicas],
            next: 0,
            rng: StdRng::seed_from_u64(seed ^ 0x5257_5445),
            next_eviction_s: cache.eviction_interval_s,
        }
    }

    pub fn policy(&self) -> RouterPolicy {
        self.policy
    }

    pub fn in_flight(&self, replica: usize) -> usize {
        self.views[replica].in_flight
    }

    fn least_loaded(&self, among: impl Iterator<Item = usize>) -> usize {
        among.min_by_key(|&i| self.views[i].in_flight).unwrap_or(0)
    }

    /// Picks the replica for a request arriving at `now`, and counts it there. Returns the
    /// replica and, for kv-aware, the request's new prefill tokens there (what it is charged
    /// until its first token; 0 for the other policies).
    pub fn route(&mut self, now: f64, req: &Incoming) -> (usize, u64) {
        let n = self.views.len();
        let pick = match self.policy {
            RouterPolicy::RoundRobin => {
                let i = self.next % n;
                self.next += 1;
                i
            }
            RouterPolicy::PowerOfTwo if n > 1 => {
                let a = self.rng.random_range(0..n);
                let mut b = self.rng.random_range(0..n);
                while b == a {
                    b = self.rng.random_range(0..n);
                }
                if self.views[a].in_flight <= self.views[b].in_flight {
                    a
                } else {
                    b
                }
            }
            RouterPolicy::PowerOfTwo | RouterPolicy::LeastLoaded => self.least_loaded(0..n),
            RouterPolicy::CacheAware => self.cache_aware(now, req.tokens),
            RouterPolicy::KvAware => {
                let (i, new_prefill) = self.kv_aware(req);
                let v = &mut self.views[i];
                v.in_flight += 1;
                v.active_prefill += new_prefill;
                return (i, new_prefill);
            }
        };
        self.views[pick].in_flight += 1;
        (pick, 0)
    }

    /// The cheapest replica and the request's new prefill tokens there.
    fn kv_aware(&self, req: &Incoming) -> (usize, u64) {
        let mut best = (0, u64::MAX, f64::INFINITY);
        for (i, v) in self.views.iter().enumerate() {
            let new = (req.tokens.len() - (req.cached)(i)) as u64;
            let cost = (new + v.active_prefill) as f64 * (v.in_flight + 1) as f64;
            if cost < best.2 {
                best = (i, new, cost);
            }
        }
        (best.0, best.1)
    }

    /// The chained hashes of the prompt's whole `TREE_GRANULARITY`-token pieces.
    fn tree_keys(tokens: &[u32]) -> impl Iterator<Item = u64> + '_ {
        tokens
            .chunks_exact(TREE_GRANULARITY)
            .scan(ROOT_HASH, |h, piece| {
                *h = chain_hash(*h, piece, None);
                Some(*h)
            })
    }

    fn cache_aware(&mut self, now: f64, tokens: &[u32]) -> usize {
        if now >= self.next_eviction_s {
            self.evict();
            self.next_eviction_s = now + self.cache.eviction_interval_s;
        }
        let n = self.views.len();
        let loads = self.views.iter().map(|v| v.in_flight);
        let (min, max) = (loads.clone().min().unwrap_or(0), loads.max().unwrap_or(0));
        let imbalanced = max.saturating_sub(min) > self.cache.balance_abs_threshold
            && max as f64 > min as f64 * self.cache.balance_rel_threshold;
        let pick = if imbalanced {
            self.least_loaded(0..n)
        } else {
            let rates: Vec<f64> = self
                .views
                .iter()
                .map(|v| {
                    let matched = Self::tree_keys(tokens)
                        .take_while(|k| v.tree.contains_key(k))
                        .count();
                    (matched * TREE_GRANULARITY) as f64 / tokens.len().max(1) as f64
                })
                .collect();
            let best = rates.iter().copied().fold(0.0, f64::max);
            if best > self.cache.cache_threshold {
                self.least_loaded((0..n).filter(|&i| rates[i] == best))
            } else {
                self.least_loaded(0..n)
            }
        };
        let tree = &mut self.views[pick].tree;
        for k in Self::tree_keys(tokens) {
            tree.insert(k, now);
        }
        pick
    }

    /// Trims every replica's tree to its budget, least recently sent first.
    fn evict(&mut self) {
        let cap = self.cache.max_tree_tokens / TREE_GRANULARITY;
        for v in &mut self.views {
            if v.tree.len() <= cap {
                continue;
            }
            let mut times: Vec<f64> = v.tree.values().copied().collect();
            let cut = times.len() - cap;
            let (_, &mut oldest_kept, _) = times.select_nth_unstable_by(cut, f64::total_cmp);
            v.tree.retain(|_, t| *t >= oldest_kept);
        }
    }

    /// The request's first token came out: its prefill no longer counts.
    pub fn first_token(&mut self, replica: usize, new_prefill: u64) {
        let v = &mut self.views[replica];
        v.active_prefill = v.active_prefill.saturating_sub(new_prefill);
    }

    /// The request finished (or was refused).
    pub fn finished(&mut self, replica: usize) {
        let v = &mut self.views[replica];
        v.in_flight = v.in_flight.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_cache(_: usize) -> usize {
        0
    }

    #[test]
    fn round_robin_least_loaded_and_power_of_two_follow_their_rules() {
        let tokens = [1u32; 20];
        let req = Incoming {
            tokens: &tokens,
            cached: &no_cache,
        };
        let mut rr = Router::new(RouterPolicy::RoundRobin, 3, CacheAwareConfig::default(), 0);
        let picks: Vec<usize> = (0..6).map(|_| rr.route(0.0, &req).0).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let mut ll = Router::new(RouterPolicy::LeastLoaded, 3, CacheAwareConfig::default(), 0);
        assert_eq!(ll.route(0.0, &req).0, 0);
        assert_eq!(ll.route(0.0, &req).0, 1);
        ll.finished(0);
        assert_eq!(ll.route(0.0, &req).0, 0, "0 is idle again");
        let mut p2 = Router::new(RouterPolicy::PowerOfTwo, 2, CacheAwareConfig::default(), 0);
        // With two replicas it compares both: it alternates as load builds.
        let picks: Vec<usize> = (0..4).map(|_| p2.route(0.0, &req).0).collect();
        assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 2, "{picks:?}");
    }

    #[test]
    fn kv_aware_prefers_the_cache_until_load_outweighs_it() {
        let tokens = [7u32; 100];
        let on_1 = |i: usize| if i == 1 { 96 } else { 0 };
        let req = Incoming {
            tokens: &tokens,
            cached: &on_1,
        };
        let mut r = Router::new(RouterPolicy::KvAware, 2, CacheAwareConfig::default(), 0);
        // Replica 1 holds 96 of the 100 tokens: 4 x 1 against 100 x 1.
        assert_eq!(r.route(0.0, &req), (1, 4));
        // Now (4 + 4) x 2 = 16 < 100: still replica 1, until its in-flight prefill and
        // requests make it dearer than a cold replica.
        let mut picks = vec![];
        for _ in 0..6 {
            picks.push(r.route(0.0, &req).0);
        }
        // (4 + 4k) x (k + 1) against 100 x 1: 16, 36, 64, then 100 is a tie (the first
        // replica wins); after that replica 0 costs (100 + 100) x 2, so 1 again (100, 144).
        assert_eq!(picks, [1, 1, 1, 0, 1, 1], "{picks:?}");
        r.first_token(1, 4);
        r.finished(1);
    }

    #[test]
    fn cache_aware_follows_the_prefix_it_sent_unless_load_is_imbalanced() {
        let cfg = CacheAwareConfig {
            balance_abs_threshold: 2,
            ..CacheAwareConfig::default()
        };
        let mut r = Router::new(RouterPolicy::CacheAware, 2, cfg, 0);
        let a: Vec<u32> = (0..64).collect();
        let b: Vec<u32> = (100..164).collect();
        let req = |t| Incoming {
            tokens: t,
            cached: &no_cache,
        };
        assert_eq!(r.route(0.0, &req(&a)).0, 0);
        // b matches nothing: the least loaded replica.
        assert_eq!(r.route(0.0, &req(&b)).0, 1);
        // a matches replica 0 fully: it goes there although both carry one request.
        assert_eq!(r.route(0.0, &req(&a)).0, 0);
        assert_eq!(r.route(0.0, &req(&a)).0, 0);
        // Loads 3 and 1: not imbalanced (3 - 1 = 2, not above 2); at 4 and 1 they are.
        assert_eq!(r.route(0.0, &req(&a)).0, 0);
        assert_eq!(r.route(0.0, &req(&a)).0, 1, "imbalanced: least loaded");
    }
}
