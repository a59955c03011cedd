//! The continuous-batching scheduler.
//!
//! Every step, [`Scheduler::schedule`] spends a token budget under a sequence cap:
//! 1. running sequences in policy order (decodes need 1 token, unfinished prefills their next
//!    chunk); when the cache cannot grow one, the least urgent unscheduled running sequence
//!    is preempted (or the sequence itself, if it is the least urgent left);
//! 2. then swapped-out sequences, in order, while pages allow (not in a step that preempted);
//! 3. then waiting sequences, in order, with prefix-cache hits (not in a step that preempted or
//!    while anything is swapped out). A prompt that does not fit the remaining budget is
//!    chunked when chunked prefill is on; otherwise, and when pages run out, admission stops at
//!    the head of the line (no overtaking: FCFS stays FCFS).
//!
//! It is pure and deterministic: time comes in as an argument, so the simulator runs the very
//! same code as the engine.

use std::collections::BTreeSet;

use block_manager::{BlockError, BlockManager, KvEvent, KvStats, Location, SeqId};
use rustc_hash::FxHashMap;

use crate::config::{PreemptionMode, SchedulerConfig};
use crate::error::SchedulerError;
use crate::plan::{ScheduledSeq, StepPlan, StepResult};
use crate::policy::Policy;
use crate::sequence::{FinishReason, OrderKey, Request, SeqStatus, Sequence};

/// Counters since the scheduler was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerCounters {
    pub steps: u64,
    pub preemptions: u64,
    pub recomputes: u64,
    pub swaps_out: u64,
    pub swaps_in: u64,
    pub finished: u64,
    pub aborted: u64,
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    bm: BlockManager,
    policy: Box<dyn Policy>,
    seqs: FxHashMap<SeqId, Sequence>,
    waiting: BTreeSet<OrderKey>,
    /// Sorted by key: the front is the most urgent.
    running: Vec<OrderKey>,
    swapped: BTreeSet<OrderKey>,
    /// (sequence, tokens computed, samples) of the last plan, applied by `update`.
    in_flight: Vec<(SeqId, usize, bool)>,
    counters: SchedulerCounters,
}

impl Scheduler {
    pub fn new(
        cfg: SchedulerConfig,
        bm: BlockManager,
        policy: Box<dyn Policy>,
    ) -> Result<Self, SchedulerError> {
        cfg.validate()?;
        Ok(Scheduler {
            cfg,
            bm,
            policy,
            seqs: FxHashMap::default(),
            waiting: BTreeSet::new(),
            running: Vec::new(),
            swapped: BTreeSet::new(),
            in_flight: Vec::new(),
            counters: SchedulerCounters::default(),
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }
    pub fn block_manager(&self) -> &BlockManager {
        &self.bm
    }
    pub fn kv_stats(&self) -> KvStats {
        self.bm.stats()
    }
    /// Turns the block manager's recording of KV-cache events on or off
    /// ([`BlockManager::record_events`]).
    pub fn record_kv_events(&mut self, on: bool) {
        self.bm.record_events(on);
    }
    /// The KV-cache events recorded since the last call.
    pub fn take_kv_events(&mut self) -> Vec<KvEvent> {
        self.bm.take_events()
    }
    pub fn counters(&self) -> SchedulerCounters {
        self.counters
    }
    pub fn policy_name(&self) -> &str {
        self.policy.name()
    }
    pub fn num_running(&self) -> usize {
        self.running.len()
    }
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }
    pub fn num_swapped(&self) -> usize {
        self.swapped.len()
    }
    pub fn has_unfinished(&self) -> bool {
        !self.seqs.is_empty()
    }
    pub fn sequence(&self, id: SeqId) -> Option<&Sequence> {
        self.seqs.get(&id)
    }

    /// Queues a request. Refused now if it could never be served.
    pub fn add_request(&mut self, req: Request) -> Result<(), SchedulerError> {
        if self.seqs.contains_key(&req.id) {
            return Err(SchedulerError::DuplicateRequest(req.id));
        }
        if req.prompt.is_empty() {
            return Err(SchedulerError::EmptyPrompt(req.id));
        }
        let total = req.prompt.len() + req.max_tokens;
        if let Some(max) = self.cfg.max_model_len {
            if total > max {
                return Err(SchedulerError::TooLong {
                    id: req.id,
                    tokens: total,
                    max_model_len: max,
                });
            }
        }
        // Without chunking, a prompt (or a preempted sequence's prompt + outputs) must fit one
        // step's budget.
        if !self.cfg.enable_chunked_prefill && total > self.cfg.max_num_batched_tokens {
            return Err(SchedulerError::ExceedsBudget {
                id: req.id,
                tokens: total,
                budget: self.cfg.max_num_batched_tokens,
            });
        }
        let bs = self.bm.block_size();
        let usable = self.bm.config().num_device_blocks - self.bm.watermark_blocks();
        if total.div_ceil(bs) > usable {
            return Err(SchedulerError::NeverFits {
                id: req.id,
                needed_tokens: total,
                capacity_tokens: usable * bs,
            });
        }
        let mut seq = Sequence::from_request(req);
        seq.key = OrderKey::new(self.policy.key(&seq), seq.id);
        self.waiting.insert(seq.key);
        self.seqs.insert(seq.id, seq);
        Ok(())
    }

    /// Parallel sampling (`n > 1`): starts `child` as a copy of running sequence `parent`
    /// that has just sampled its first token from the prompt, with `first_token` as the
    /// child's own first token instead. The child shares every prompt page with the parent
    /// (the block manager copies the partial last page when either writes into it) and runs
    /// from the next step on, in the parent's place in line.
    pub fn fork(
        &mut self,
        parent: SeqId,
        child: SeqId,
        first_token: block_manager::TokenId,
    ) -> Result<(), SchedulerError> {
        if self.seqs.contains_key(&child) {
            return Err(SchedulerError::DuplicateRequest(child));
        }
        let p = self
            .seqs
            .get(&parent)
            .ok_or(SchedulerError::UnknownRequest(parent))?;
        if p.status != SeqStatus::Running || p.num_uncomputed() != 1 {
            return Err(SchedulerError::NotForkable(parent));
        }
        let mut c = p.clone();
        c.id = child;
        c.tokens.truncate(c.num_computed);
        c.tokens.push(first_token);
        c.num_preemptions = 0;
        c.key = OrderKey::new(self.policy.key(&c), child);
        self.bm.fork(parent, child)?;
        self.seqs.insert(child, c);
        self.make_running(child);
        Ok(())
    }

    /// Ends a sequence outside a step's [`StepResult`] (the engine ends the first sample of
    /// an `n > 1` request this way once its siblings have forked from it); frees its pages.
    pub fn finish(&mut self, id: SeqId, reason: FinishReason) -> Result<(), SchedulerError> {
        self.remove(id, reason)
    }

    /// Removes a request in any state and frees its pages at once.
    pub fn abort(&mut self, id: SeqId) -> Result<(), SchedulerError> {
        self.remove(id, FinishReason::Abort)
    }

    fn remove(&mut self, id: SeqId, reason: FinishReason) -> Result<(), SchedulerError> {
        let seq = self
            .seqs
            .remove(&id)
            .ok_or(SchedulerError::UnknownRequest(id))?;
        match seq.status {
            SeqStatus::Waiting => {
                self.waiting.remove(&seq.key);
            }
            SeqStatus::Swapped => {
                self.swapped.remove(&seq.key);
            }
            SeqStatus::Running => {
                if let Ok(i) = self.running.binary_search(&seq.key) {
                    self.running.remove(i);
                }
            }
        }
        if self.bm.contains(id) {
            self.bm.free(id)?;
        }
        match reason {
            FinishReason::Abort => self.counters.aborted += 1,
            _ => self.counters.finished += 1,
        }
        Ok(())
    }

    /// Plans one step at time `now` (seconds on the caller's clock).
    pub fn schedule(&mut self, now: f64) -> Result<StepPlan, SchedulerError> {
        self.counters.steps += 1;
        let mut plan = StepPlan::default();
        self.in_flight.clear();
        let mut budget = self.cfg.max_num_batched_tokens;
        let preempted = self.schedule_running(&mut plan, &mut budget)?;
        if !preempted {
            self.schedule_swapped(&mut plan, &mut budget)?;
            if self.swapped.is_empty() {
                self.schedule_waiting(&mut plan, &mut budget, now)?;
            }
        }
        Ok(plan)
    }

    /// How many tokens of `seq` to compute now, within `budget`; 0 = not this step.
    fn chunk_len(&self, seq: &Sequence, budget: usize) -> usize {
        let mut n = seq.num_uncomputed();
        if let Some(t) = self.cfg.long_prefill_threshold {
            n = n.min(t);
        }
        if n > budget {
            if !self.cfg.enable_chunked_prefill {
                return 0;
            }
            n = budget;
        }
        n
    }

    fn push(&mut self, plan: &mut StepPlan, id: SeqId, len: usize, budget: &mut usize) {
        let seq = self.seqs.get_mut(&id).expect("scheduled sequences exist");
        let start = seq.num_computed;
        let samples = start + len == seq.tokens.len();
        seq.awaiting_sample = samples;
        let table = self
            .bm
            .block_table(id)
            .expect("scheduled sequences are allocated");
        plan.seqs.push(ScheduledSeq {
            seq: id,
            start,
            len,
            samples,
            table_offset: plan.block_tables.len(),
            table_len: table.len(),
        });
        plan.block_tables.extend_from_slice(table);
        plan.input_ids
            .extend_from_slice(&seq.tokens[start..start + len]);
        self.in_flight.push((id, len, samples));
        *budget -= len;
    }

    /// Returns whether anything was preempted.
    fn schedule_running(
        &mut self,
        plan: &mut StepPlan,
        budget: &mut usize,
    ) -> Result<bool, SchedulerError> {
        let mut preempted = false;
        let mut i = 0;
        while i < self.running.len() {
            if *budget == 0 || plan.seqs.len() >= self.cfg.max_num_seqs {
                break;
            }
            let id = self.running[i].id;
            let n = self.chunk_len(&self.seqs[&id], *budget);
            if n == 0 {
                i += 1;
                continue;
            }
            loop {
                match self.bm.allocate_slots(id, n) {
                    Ok(a) => {
                        plan.cow.extend(a.cow);
                        self.push(plan, id, n, budget);
                        i += 1;
                        break;
                    }
                    Err(BlockError::OutOfBlocks { .. }) => {
                        preempted = true;
                        // The least urgent running sequence not yet scheduled in this step.
                        let victim = self.running.last().expect("running is not empty").id;
                        self.preempt(victim, plan)?;
                        if victim == id {
                            break;
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(preempted)
    }

    fn preempt(&mut self, id: SeqId, plan: &mut StepPlan) -> Result<(), SchedulerError> {
        let key = self.seqs[&id].key;
        let i = self
            .running
            .binary_search(&key)
            .expect("victims are running");
        self.running.remove(i);
        let swap = match self.cfg.preemption_mode {
            PreemptionMode::Recompute => false,
            PreemptionMode::Swap => true,
            PreemptionMode::Auto => {
                let c = self.cfg.preemption_costs;
                let seq = &self.seqs[&id];
                let pages = self.bm.block_table(id)?.len();
                (c.swap_s_per_block * pages as f64)
                    < (c.recompute_s_per_token * seq.num_computed as f64)
            }
        };
        let swapped = swap && self.bm.swap_out_shortfall(&[id])? == 0;
        let seq = self.seqs.get_mut(&id).expect("exists");
        seq.num_preemptions += 1;
        self.counters.preemptions += 1;
        if swapped {
            plan.swap_out.extend(self.bm.swap_out(&[id])?);
            seq.status = SeqStatus::Swapped;
            self.swapped.insert(key);
            self.counters.swaps_out += 1;
        } else {
            self.bm.free(id)?;
            seq.num_computed = 0;
            seq.status = SeqStatus::Waiting;
            self.waiting.insert(key);
            self.counters.recomputes += 1;
        }
        plan.preempted.push(id);
        Ok(())
    }

    fn make_running(&mut self, id: SeqId) {
        let seq = self.seqs.get_mut(&id).expect("exists");
        seq.status = SeqStatus::Running;
        let i = self.running.binary_search(&seq.key).unwrap_or_else(|i| i);
        self.running.insert(i, seq.key);
    }

    fn schedule_swapped(
        &mut self,
        plan: &mut StepPlan,
        budget: &mut usize,
    ) -> Result<(), SchedulerError> {
        while let Some(&key) = self.swapped.first() {
            if *budget == 0 || plan.seqs.len() >= self.cfg.max_num_seqs {
                break;
            }
            let id = key.id;
            if self.bm.swap_in_shortfall(&[id])? > 0 {
                break;
            }
            plan.swap_in.extend(self.bm.swap_in(&[id])?);
            self.swapped.remove(&key);
            self.counters.swaps_in += 1;
            self.make_running(id);
            let n = self.chunk_len(&self.seqs[&id], *budget);
            // If its next token does not fit this step it simply runs next step.
            if n > 0 {
                if let Ok(a) = self.bm.allocate_slots(id, n) {
                    plan.cow.extend(a.cow);
                    self.push(plan, id, n, budget);
                }
            }
        }
        Ok(())
    }

    /// The waiting queue's head in the order to try this step.
    fn waiting_order(&self, now: f64) -> Vec<OrderKey> {
        let window = self.policy.waiting_window();
        if window == 0 {
            return self.waiting.iter().copied().collect();
        }
        let mut head: Vec<(OrderKey, OrderKey)> = self
            .waiting
            .iter()
            .take(window)
            .map(|&k| {
                let seq = &self.seqs[&k.id];
                let cached = self
                    .bm
                    .lookup_prefix(&seq.tokens, seq.cache_salt)
                    .num_cached_tokens;
                (
                    OrderKey::new(self.policy.dynamic_key(seq, cached, now), k.id),
                    k,
                )
            })
            .collect();
        head.sort_unstable();
        head.into_iter().map(|(_, k)| k).collect()
    }

    fn schedule_waiting(
        &mut self,
        plan: &mut StepPlan,
        budget: &mut usize,
        now: f64,
    ) -> Result<(), SchedulerError> {
        if self.waiting.is_empty() {
            return Ok(());
        }
        // Only as many candidates as could possibly be admitted this step.
        let order = if self.policy.waiting_window() == 0 {
            let room = self.cfg.max_num_seqs.saturating_sub(plan.seqs.len());
            self.waiting.iter().take(room).copied().collect()
        } else {
            self.waiting_order(now)
        };
        for key in order {
            if *budget == 0 || plan.seqs.len() >= self.cfg.max_num_seqs {
                break;
            }
            let id = key.id;
            let seq = &self.seqs[&id];
            let hit = self.bm.lookup_prefix(&seq.tokens, seq.cache_salt);
            let mut n = seq.tokens.len() - hit.num_cached_tokens;
            if let Some(t) = self.cfg.long_prefill_threshold {
                n = n.min(t);
            }
            if n > *budget {
                if !self.cfg.enable_chunked_prefill {
                    break;
                }
                n = *budget;
            }
            match self.bm.admit(id, &hit, n) {
                Ok(_) => {}
                Err(BlockError::OutOfBlocks { .. }) => break,
                Err(e) => return Err(e.into()),
            }
            self.waiting.remove(&key);
            let seq = self.seqs.get_mut(&id).expect("exists");
            seq.num_computed = hit.num_cached_tokens;
            seq.num_cached_prompt_tokens
                .get_or_insert(hit.num_cached_tokens.min(seq.prompt_len));
            self.make_running(id);
            self.push(plan, id, n, budget);
        }
        Ok(())
    }

    /// Applies a step's outcome: computed tokens enter the cache (and the prefix cache), sampled
    /// tokens are appended, finished sequences are freed.
    pub fn update(&mut self, result: &StepResult) -> Result<(), SchedulerError> {
        for &(id, len, _) in &self.in_flight {
            // A sequence aborted between schedule and update is simply gone.
            let Some(seq) = self.seqs.get_mut(&id) else {
                continue;
            };
            if self.bm.location(id) != Ok(Location::Device) {
                continue;
            }
            seq.num_computed += len;
            self.bm
                .cache_full_blocks(id, &seq.tokens[..seq.num_computed])?;
        }
        for &(id, token) in &result.sampled {
            let Some(seq) = self.seqs.get_mut(&id) else {
                continue;
            };
            if !seq.awaiting_sample {
                return Err(SchedulerError::UnexpectedSample(id));
            }
            seq.awaiting_sample = false;
            seq.tokens.push(token);
        }
        // A sequence that sampled must have got its token, unless it finished.
        let finished = |id: SeqId| result.finished.iter().any(|&(f, _)| f == id);
        let mut missing = None;
        for &(id, _, samples) in &self.in_flight {
            if let Some(seq) = self.seqs.get_mut(&id) {
                if samples && seq.awaiting_sample {
                    seq.awaiting_sample = false;
                    if missing.is_none() && !finished(id) {
                        missing = Some(id);
                    }
                }
            }
        }
        self.in_flight.clear();
        for &(id, reason) in &result.finished {
            if self.seqs.contains_key(&id) {
                self.remove(id, reason)?;
            }
        }
        match missing {
            Some(id) => Err(SchedulerError::MissingSample(id)),
            None => Ok(()),
        }
    }
}
