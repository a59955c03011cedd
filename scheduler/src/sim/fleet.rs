//! The fleet simulator: N replicas, each the real scheduler and block manager with its own
//! cost model, behind a router with `vllm-router`'s rules ([`super::router`]), on one
//! virtual clock.
//!
//! Events in time order: a request arrives (the router picks a replica from what it knows at
//! that instant, the replica queues it, and starts a step if it was idle), or a replica's
//! step ends (its outcome is applied, then it schedules its next step). Memory is bounded by
//! what is live, not by the run's length: requests stream in, finished ones are folded into
//! fixed-size histograms ([`LatencyHistogram`]), and the load time series is thinned to at
//! most `max_series_points`.

use rustc_hash::FxHashMap;
use serde::Serialize;

use super::error::SimError;
use super::histogram::LatencyHistogram;
use super::metrics::{Slo, Summary};
use super::replica::{Observer, Replica, ReplicaConfig};
use super::router::{CacheAwareConfig, Incoming, Router, RouterPolicy};
use super::workload::{prompt_tokens, SimRequest};

#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// One per replica (each with its own cost model, as each is calibrated).
    pub replicas: Vec<ReplicaConfig>,
    pub router: RouterPolicy,
    pub cache_aware: CacheAwareConfig,
    /// Length of the shared system prompt of requests that have a `prefix_group`.
    pub shared_prefix_len: usize,
    pub slo: Slo,
    /// Seeds the router's random choices (power-of-two).
    pub seed: u64,
    pub max_series_points: usize,
}

/// One replica's load at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReplicaLoad {
    /// Requests the router has in flight there.
    pub in_flight: usize,
    pub running: usize,
    pub waiting: usize,
    pub kv_usage: f64,
}

/// Every replica's load at `t_s`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadPoint {
    pub t_s: f64,
    pub replicas: Vec<ReplicaLoad>,
}

/// Latencies and counts of a set of requests (one replica's, or the fleet's).
#[derive(Debug, Clone, Default)]
struct Stats {
    routed: usize,
    completed: usize,
    rejected: usize,
    met_slo: usize,
    prompt_tokens: usize,
    output_tokens: usize,
    ttft: LatencyHistogram,
    tpot: LatencyHistogram,
    itl: LatencyHistogram,
    e2e: LatencyHistogram,
    queue: LatencyHistogram,
}

impl Stats {
    fn merge(&mut self, o: &Stats) {
        self.routed += o.routed;
        self.completed += o.completed;
        self.rejected += o.rejected;
        self.met_slo += o.met_slo;
        self.prompt_tokens += o.prompt_tokens;
        self.output_tokens += o.output_tokens;
        for (a, b) in [
            (&mut self.ttft, &o.ttft),
            (&mut self.tpot, &o.tpot),
            (&mut self.itl, &o.itl),
            (&mut self.e2e, &o.e2e),
            (&mut self.queue, &o.queue),
        ] {
            a.merge(b);
        }
    }
}

/// What one replica did.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaReport {
    pub replica: usize,
    pub cost_model: String,
    /// Requests the router sent here, and their share of all.
    pub requests: usize,
    pub request_share: f64,
    pub completed: usize,
    pub rejected: usize,
    /// Over the fleet's duration.
    pub request_throughput: f64,
    pub output_token_throughput: f64,
    pub steps: u64,
    pub preemptions: u64,
    pub prefix_hit_rate: f64,
    pub mean_kv_usage: f64,
    pub peak_kv_usage: f64,
    pub ttft_s: Summary,
    pub tpot_s: Summary,
    pub itl_s: Summary,
    pub e2e_s: Summary,
    pub queue_s: Summary,
}

/// What the fleet did.
#[derive(Debug, Clone, Serialize)]
pub struct FleetResult {
    pub router: RouterPolicy,
    pub replicas: usize,
    pub requests: usize,
    pub completed: usize,
    pub rejected: usize,
    pub duration_s: f64,
    pub request_throughput: f64,
    pub output_token_throughput: f64,
    pub total_token_throughput: f64,
    pub goodput: Option<f64>,
    /// Prompt tokens found cached over prompt tokens looked up, all replicas together.
    pub prefix_hit_rate: f64,
    pub ttft_s: Summary,
    pub tpot_s: Summary,
    pub itl_s: Summary,
    pub e2e_s: Summary,
    pub queue_s: Summary,
    pub per_replica: Vec<ReplicaReport>,
    #[serde(skip)]
    pub series: Vec<LoadPoint>,
}

/// A request in flight.
struct Live {
    replica: usize,
    arrival_s: f64,
    new_prefill: u64,
    first_scheduled_s: Option<f64>,
    first_token_s: Option<f64>,
    output_len: usize,
    n: usize,
}

/// The per-step observer: what happens to one replica's requests goes to its stats and to
/// the router's counts.
struct Fold<'a> {
    live: &'a mut FxHashMap<u64, Live>,
    stats: &'a mut Stats,
    router: &'a mut Router,
    slo: &'a Slo,
    done: &'a mut usize,
}

impl Observer for Fold<'_> {
    fn scheduled(&mut self, req: u64, start: f64) {
        if let Some(l) = self.live.get_mut(&req) {
            l.first_scheduled_s.get_or_insert(start);
        }
    }
    fn token(&mut self, req: u64, t: f64, first: bool, itl: Option<f64>) {
        let Some(l) = self.live.get_mut(&req) else {
            return;
        };
        if first {
            l.first_token_s = Some(t);
            self.router.first_token(l.replica, l.new_prefill);
        }
        if let Some(d) = itl {
            self.stats.itl.record(d);
        }
        l.output_len += 1;
    }
    fn extra_tokens(&mut self, req: u64, k: usize) {
        if let Some(l) = self.live.get_mut(&req) {
            l.output_len += k;
        }
    }
    fn finished(&mut self, req: u64, t: f64) {
        let Some(l) = self.live.remove(&req) else {
            return;
        };
        self.router.finished(l.replica);
        *self.done += 1;
        let s = &mut *self.stats;
        s.completed += 1;
        s.output_tokens += l.output_len;
        let ttft = l.first_token_s.map(|f| f - l.arrival_s);
        let e2e = t - l.arrival_s;
        let per_seq = l.output_len / l.n.max(1);
        let tpot = l
            .first_token_s
            .filter(|_| per_seq > 1)
            .map(|f| (t - f) / (per_seq - 1) as f64);
        if let Some(v) = ttft {
            s.ttft.record(v);
        }
        if let Some(v) = tpot {
            s.tpot.record(v);
        }
        if let Some(q) = l.first_scheduled_s {
            s.queue.record(q - l.arrival_s);
        }
        s.e2e.record(e2e);
        let ok =
            |limit: Option<f64>, v: Option<f64>| limit.is_none_or(|m| v.is_some_and(|v| v <= m));
        if self.slo.is_set()
            && ok(self.slo.ttft_s, ttft)
            && ok(self.slo.tpot_s, tpot)
            && ok(self.slo.e2e_s, Some(e2e))
        {
            s.met_slo += 1;
        }
    }
    fn preempted(&mut self, _req: u64) {}
}

/// A replica with what is accounted to it.
struct Slot {
    rep: Replica,
    stats: Stats,
    usage_sum: f64,
    usage_time: f64,
    usage_peak: f64,
    cost_model: String,
}

/// Sequence ids of forked samples start here, above every request id.
const CHILD_BASE: u64 = 1 << 62;

/// Runs `requests` (in arrival order) through the fleet. `progress` is told the number of
/// requests finished now and then.
pub fn simulate_fleet(
    cfg: &FleetConfig,
    requests: impl Iterator<Item = SimRequest>,
    progress: &mut dyn FnMut(usize),
) -> Result<FleetResult, SimError> {
    if cfg.replicas.is_empty() {
        return Err(SimError::Config(
            "a fleet needs at least one replica".into(),
        ));
    }
    let mut slots = cfg
        .replicas
        .iter()
        .map(|rc| {
            Ok(Slot {
                rep: Replica::new(rc, CHILD_BASE)?,
                stats: Stats::default(),
                usage_sum: 0.0,
                usage_time: 0.0,
                usage_peak: 0.0,
                cost_model: rc.cost_model.name.clone(),
            })
        })
        .collect::<Result<Vec<_>, SimError>>()?;
    let mut router = Router::new(cfg.router, slots.len(), cfg.cache_aware, cfg.seed);
    let mut live: FxHashMap<u64, Live> = FxHashMap::default();
    let mut series = Series::new(cfg.max_series_points);
    let mut arrivals = requests.peekable();
    let (mut index, mut done, mut last_arrival, mut now) = (0u64, 0usize, f64::NEG_INFINITY, 0.0);
    loop {
        let next_end = slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.rep.step_end().map(|t| (i, t)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let arrival = arrivals.peek().map(|r| r.arrival_s);
        let arrives_first = match (arrival, next_end) {
            (None, None) => break,
            (Some(a), Some((_, e))) => a <= e,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if arrives_first {
            let r = arrivals.next().expect("peeked");
            if r.arrival_s < last_arrival || r.arrival_s.is_nan() {
                return Err(SimError::BadSpec(format!(
                    "request {index} arrives at {} s, before the one before it",
                    r.arrival_s
                )));
            }
            last_arrival = r.arrival_s;
            now = r.arrival_s;
            series.sample(now, &slots, &router);
            let tokens = prompt_tokens(&r, index, cfg.shared_prefix_len);
            let cached = |i: usize| {
                slots[i]
                    .rep
                    .scheduler()
                    .block_manager()
                    .lookup_prefix(&tokens, None)
                    .num_cached_tokens
            };
            let (pick, new_prefill) = router.route(
                now,
                &Incoming {
                    tokens: &tokens,
                    cached: &cached,
                },
            );
            let slot = &mut slots[pick];
            slot.stats.routed += 1;
            slot.stats.prompt_tokens += r.prompt_len;
            match slot
                .rep
                .add(index, now, tokens, r.output_len, r.n, r.priority)
            {
                Ok(()) => {
                    live.insert(
                        index,
                        Live {
                            replica: pick,
                            arrival_s: now,
                            new_prefill,
                            first_scheduled_s: None,
                            first_token_s: None,
                            output_len: 0,
                            n: r.n.max(1),
                        },
                    );
                    if !slot.rep.busy() {
                        slot.rep.begin_step(now)?;
                    }
                }
                Err(_) => {
                    slot.stats.rejected += 1;
                    router.finished(pick);
                    done += 1;
                }
            }
            index += 1;
        } else if let Some((i, end)) = next_end {
            now = end;
            series.sample(now, &slots, &router);
            let slot = &mut slots[i];
            let mut fold = Fold {
                live: &mut live,
                stats: &mut slot.stats,
                router: &mut router,
                slo: &cfg.slo,
                done: &mut done,
            };
            let start = now;
            if slot.rep.finish_step(&mut fold)? {
                progress(done);
            }
            if let Some(dt) = slot.rep.begin_step(start)? {
                let usage = slot.rep.scheduler().kv_stats().usage();
                slot.usage_sum += usage * dt;
                slot.usage_time += dt;
                slot.usage_peak = slot.usage_peak.max(usage);
            }
        }
    }
    progress(done);
    if let Some((i, s)) = slots
        .iter()
        .enumerate()
        .find(|(_, s)| s.rep.scheduler().has_unfinished())
    {
        return Err(SimError::Stalled {
            at_s: now,
            why: format!(
                "replica {i}: {} waiting requests cannot be admitted",
                s.rep.scheduler().num_waiting()
            ),
        });
    }
    Ok(report(cfg, slots, series.points, now, index as usize))
}

fn report(
    cfg: &FleetConfig,
    slots: Vec<Slot>,
    series: Vec<LoadPoint>,
    duration: f64,
    requests: usize,
) -> FleetResult {
    let d = duration.max(f64::MIN_POSITIVE);
    let mut all = Stats::default();
    let (mut hits, mut queries) = (0u64, 0u64);
    let per_replica = slots
        .iter()
        .enumerate()
        .map(|(i, s)| {
            all.merge(&s.stats);
            let kv = s.rep.scheduler().kv_stats();
            hits += kv.prefix_hits;
            queries += kv.prefix_queries;
            ReplicaReport {
                replica: i,
                cost_model: s.cost_model.clone(),
                requests: s.stats.routed,
                request_share: s.stats.routed as f64 / requests.max(1) as f64,
                completed: s.stats.completed,
                rejected: s.stats.rejected,
                request_throughput: s.stats.completed as f64 / d,
                output_token_throughput: s.stats.output_tokens as f64 / d,
                steps: s.rep.steps(),
                preemptions: s.rep.scheduler().counters().preemptions,
                prefix_hit_rate: kv.prefix_hit_rate(),
                mean_kv_usage: if s.usage_time > 0.0 {
                    s.usage_sum / s.usage_time
                } else {
                    0.0
                },
                peak_kv_usage: s.usage_peak,
                ttft_s: s.stats.ttft.summary(),
                tpot_s: s.stats.tpot.summary(),
                itl_s: s.stats.itl.summary(),
                e2e_s: s.stats.e2e.summary(),
                queue_s: s.stats.queue.summary(),
            }
        })
        .collect();
    let in_tokens = all.prompt_tokens;
    FleetResult {
        router: cfg.router,
        replicas: slots.len(),
        requests,
        completed: all.completed,
        rejected: all.rejected,
        duration_s: duration,
        request_throughput: all.completed as f64 / d,
        output_token_throughput: all.output_tokens as f64 / d,
        total_token_throughput: (all.output_tokens + in_tokens) as f64 / d,
        goodput: cfg.slo.is_set().then(|| all.met_slo as f64 / d),
        prefix_hit_rate: if queries == 0 {
            0.0
        } else {
            hits as f64 / queries as f64
        },
        ttft_s: all.ttft.summary(),
        tpot_s: all.tpot.summary(),
        itl_s: all.itl.summary(),
        e2e_s: all.e2e.summary(),
        queue_s: all.queue.summary(),
        per_replica,
        series,
    }
}

/// The load time series: a point every `every_s` of simulated time; when there would be more
/// than `max` points, every other one is dropped and the interval doubles.
struct Series {
    points: Vec<LoadPoint>,
    every_s: f64,
    next_s: f64,
    max: usize,
}

impl Series {
    fn new(max: usize) -> Self {
        Series {
            points: Vec::new(),
            every_s: 0.01,
            next_s: 0.0,
            max: max.max(2),
        }
    }

    fn sample(&mut self, now: f64, slots: &[Slot], router: &Router) {
        if now < self.next_s {
            return;
        }
        while self.next_s <= now {
            self.next_s += self.every_s;
        }
        self.points.push(LoadPoint {
            t_s: now,
            replicas: slots
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let sc = s.rep.scheduler();
                    ReplicaLoad {
                        in_flight: router.in_flight(i),
                        running: sc.num_running(),
                        waiting: sc.num_waiting(),
                        kv_usage: sc.kv_stats().usage(),
                    }
                })
                .collect(),
        });
        if self.points.len() > self.max {
            let mut keep = false;
            self.points.retain(|_| {
                keep = !keep;
                keep
            });
            self.every_s *= 2.0;
        }
    }
}
