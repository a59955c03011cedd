//! One simulated engine: the real scheduler and block manager, stepped on a virtual clock.
//!
//! A step is split as the engine runs it: [`Replica::begin_step`] schedules (pages are
//! allocated, the step's cost is known), [`Replica::finish_step`] applies its outcome when it
//! ends (tokens sampled, pages cached, finished requests freed). Between the two, the
//! replica's state is what a router sees mid-step: the single-replica simulator steps one
//! replica back to back; the fleet simulator interleaves many with a router's arrivals.
//! What happens to each request is told to an [`Observer`], so neither simulator keeps more
//! per request than it wants.

use block_manager::{BlockManager, BlockManagerConfig};
use rustc_hash::FxHashMap;

use super::cost_model::CostModel;
use super::error::SimError;
use crate::plan::StepPlan;
use crate::{policy, FinishReason, Request, Scheduler, SchedulerConfig, StepResult};

/// How a replica is built: its scheduler, its cache, its step times.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub scheduler: SchedulerConfig,
    pub policy: String,
    pub block_size: usize,
    pub num_blocks: usize,
    pub num_host_blocks: usize,
    pub watermark: f64,
    pub enable_prefix_caching: bool,
    pub cost_model: CostModel,
}

/// What happens to requests, as it happens (request ids are the caller's).
pub trait Observer {
    /// The request's sequences ran in a step that started at `start` (called every step).
    fn scheduled(&mut self, req: u64, start: f64);
    /// One token of the request at `t`: its first (`first`), or one `itl` after the last of
    /// its sequence (`None` for a forked sample's first).
    fn token(&mut self, req: u64, t: f64, first: bool, itl: Option<f64>);
    /// `k` more tokens at once (the other samples of an `n > 1` request that wants one token).
    fn extra_tokens(&mut self, req: u64, k: usize);
    /// Its last sequence finished at `t`.
    fn finished(&mut self, req: u64, t: f64);
    fn preempted(&mut self, req: u64);
}

struct SeqProgress {
    req: u64,
    /// Tokens this sequence produced.
    out: usize,
    last: f64,
}

struct ReqProgress {
    want: usize,
    n: usize,
    live: usize,
    got_first: bool,
}

/// The step in flight: its plan, when it started and when it ends.
struct Pending {
    plan: StepPlan,
    start: f64,
    end: f64,
}

pub struct Replica {
    sched: Scheduler,
    cost: CostModel,
    block_size: usize,
    /// Sequence ids from here up are forked samples (request ids stay below).
    child_base: u64,
    next_child: u64,
    seqs: FxHashMap<u64, SeqProgress>,
    reqs: FxHashMap<u64, ReqProgress>,
    pending: Option<Pending>,
    steps: u64,
}

impl Replica {
    /// A replica whose forked samples get ids from `child_base` on (above every request id).
    pub fn new(cfg: &ReplicaConfig, child_base: u64) -> Result<Self, SimError> {
        let bm = BlockManager::new(
            BlockManagerConfig::new(cfg.block_size, cfg.num_blocks)
                .with_host_blocks(cfg.num_host_blocks)
                .with_watermark(cfg.watermark)
                .with_prefix_caching(cfg.enable_prefix_caching),
        )?;
        let pol = policy::by_name(&cfg.policy).ok_or_else(|| {
            SimError::Config(format!(
                "unknown policy '{}' (one of {})",
                cfg.policy,
                policy::POLICY_NAMES.join(", ")
            ))
        })?;
        // `auto` preemption weighs recompute against swap with the same cost model as steps.
        let mut sched_cfg = cfg.scheduler.clone();
        sched_cfg.preemption_costs = crate::PreemptionCosts {
            recompute_s_per_token: cfg.cost_model.per_prefill_token_s,
            swap_s_per_block: 2.0
                * cfg.block_size as f64
                * cfg.cost_model.kv_bytes_per_token
                * cfg.cost_model.per_swap_byte_s,
        };
        Ok(Replica {
            sched: Scheduler::new(sched_cfg, bm, pol)?,
            cost: cfg.cost_model.clone(),
            block_size: cfg.block_size,
            child_base,
            next_child: child_base,
            seqs: FxHashMap::default(),
            reqs: FxHashMap::default(),
            pending: None,
            steps: 0,
        })
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.sched
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Whether a step is in flight.
    pub fn busy(&self) -> bool {
        self.pending.is_some()
    }

    /// When the step in flight ends.
    pub fn step_end(&self) -> Option<f64> {
        self.pending.as_ref().map(|p| p.end)
    }

    /// Queues request `id` (`prompt` its token ids), or says why it can never run here.
    pub fn add(
        &mut self,
        id: u64,
        arrival_s: f64,
        prompt: Vec<u32>,
        output_len: usize,
        n: usize,
        priority: i32,
    ) -> Result<(), crate::SchedulerError> {
        let mut req = Request::new(id, prompt, output_len);
        req.arrival_s = arrival_s;
        req.priority = priority;
        self.sched.add_request(req)?;
        self.seqs.insert(
            id,
            SeqProgress {
                req: id,
                out: 0,
                last: 0.0,
            },
        );
        self.reqs.insert(
            id,
            ReqProgress {
                want: output_len,
                n: n.max(1),
                live: 1,
                got_first: false,
            },
        );
        Ok(())
    }

    /// Schedules a step at `now`; returns its cost, or `None` if nothing can run (idle, or
    /// every waiting request is blocked).
    pub fn begin_step(&mut self, now: f64) -> Result<Option<f64>, SimError> {
        debug_assert!(self.pending.is_none());
        if !self.sched.has_unfinished() {
            return Ok(None);
        }
        let plan = self.sched.schedule(now)?;
        if plan.is_empty() {
            return Ok(None);
        }
        let dt = self.cost.step_time(&plan, self.block_size);
        self.pending = Some(Pending {
            plan,
            start: now,
            end: now + dt,
        });
        self.steps += 1;
        Ok(Some(dt))
    }

    /// Applies the step in flight as of its end; returns whether a request finished.
    pub fn finish_step(&mut self, obs: &mut dyn Observer) -> Result<bool, SimError> {
        let Some(Pending { plan, start, end }) = self.pending.take() else {
            return Ok(false);
        };
        let mut result = StepResult::default();
        let mut forks: Vec<u64> = Vec::new();
        let mut any_finished = false;
        for sc in &plan.seqs {
            let Some(p) = self.seqs.get_mut(&sc.seq) else {
                continue;
            };
            let rq = self
                .reqs
                .get_mut(&p.req)
                .expect("a live sequence's request");
            obs.scheduled(p.req, start);
            if !sc.samples {
                continue;
            }
            let first = !rq.got_first;
            rq.got_first = true;
            let itl = (!first && p.out > 0).then_some(end - p.last);
            obs.token(p.req, end, first, itl);
            p.last = end;
            p.out += 1;
            result.sampled.push((sc.seq, 1 + (sc.seq % 1000) as u32));
            if sc.seq < self.child_base && p.out == 1 && rq.n > 1 {
                if rq.want == 1 {
                    // Every sample is done with its only token: nothing to fork.
                    obs.extra_tokens(p.req, rq.n - 1);
                } else {
                    forks.push(sc.seq);
                }
            }
            if p.out >= rq.want {
                result.finished.push((sc.seq, FinishReason::Length));
                rq.live -= 1;
                if rq.live == 0 {
                    obs.finished(p.req, end);
                    any_finished = true;
                }
            }
        }
        for id in &plan.preempted {
            if let Some(p) = self.seqs.get(id) {
                obs.preempted(p.req);
            }
        }
        self.sched.update(&result)?;
        for &(seq, _) in &result.finished {
            if let Some(p) = self.seqs.remove(&seq) {
                if self.reqs.get(&p.req).is_some_and(|r| r.live == 0) {
                    self.reqs.remove(&p.req);
                }
            }
        }
        for parent in forks {
            let n = self.reqs.get(&parent).map_or(1, |r| r.n);
            for _ in 1..n {
                let child = self.next_child;
                self.next_child += 1;
                self.sched.fork(parent, child, 1 + (child % 1000) as u32)?;
                self.seqs.insert(
                    child,
                    SeqProgress {
                        req: parent,
                        out: 1,
                        last: end,
                    },
                );
                obs.extra_tokens(parent, 1);
                if let Some(r) = self.reqs.get_mut(&parent) {
                    r.live += 1;
                }
            }
        }
        Ok(any_finished)
    }

    /// The plan of the step in flight (its shape, for observers of the cache).
    pub fn pending_plan(&self) -> Option<&StepPlan> {
        self.pending.as_ref().map(|p| &p.plan)
    }
}
