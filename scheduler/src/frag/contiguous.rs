//! The contiguous allocators of pre-paging systems, replayed on the simulator's clock.
//!
//! Each sequence gets one run of token slots in a linear [`Arena`] when it is admitted, sized
//! by its [`Reservation`] rule, and keeps it until it finishes. Because the whole run is
//! reserved up front, such a system never preempts: a request that does not fit waits.
//!
//! Scheduling mirrors the paged scheduler's FCFS policy so that only the allocator differs:
//! each step runs every decode first, then continues unfinished prefills, then admits waiting
//! requests in arrival order while a reservation, a sequence slot and token budget remain
//! (chunked prefill splits a prompt across steps, as the paged scheduler does). A request with
//! `n` samples reserves `n` runs at once; its prompt is computed once and copied into the
//! other runs when it completes (no sharing: every run holds its own copy). Step times come
//! from the same [`CostModel`].

use super::arena::{Arena, Fit};
use super::breakdown::Breakdown;
use super::{FragConfig, Moment, Outcome};
use crate::sim::{RequestRecord, SimError, SimRequest};
use crate::{ScheduledSeq, StepPlan};
use std::collections::VecDeque;

/// How many slots a contiguous allocator reserves for a sequence of prompt `p`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// `max_model_len` slots (FasterTransformer).
    MaxModelLen,
    /// `p + max_tokens − 1` slots: room for the longest answer allowed (Orca "Max").
    MaxTokens,
    /// `p + o − 1` slots for the actual output length `o` (Orca "Oracle"; no real system
    /// knows `o` in advance).
    Oracle,
}

impl Reservation {
    pub fn name(self) -> &'static str {
        match self {
            Reservation::MaxModelLen => "max-len",
            Reservation::MaxTokens => "max-tokens",
            Reservation::Oracle => "oracle",
        }
    }
}

impl Reservation {
    /// Slots each of a request's sequences reserves. The last sampled token is never fed
    /// back, so a request of `p` prompt and `o` output tokens stores `p + o − 1` states.
    pub fn len(self, cfg: &FragConfig, r: &SimRequest) -> usize {
        match self {
            Reservation::MaxModelLen => cfg.max_model_len,
            Reservation::MaxTokens => r.prompt_len + cfg.max_tokens - 1,
            Reservation::Oracle => final_len(r),
        }
    }
}

/// Token states a request's sequence holds when it finishes.
pub fn final_len(r: &SimRequest) -> usize {
    r.prompt_len + r.output_len - 1
}

/// A request that holds its reservations.
struct Running {
    req: usize,
    /// Arena offsets of its `n` runs.
    runs: Vec<usize>,
    reservation: usize,
    /// Prompt tokens computed so far (all of them once prefill is done).
    computed: usize,
    /// Output tokens whose K/V each run holds (fed back after being sampled).
    decoded: usize,
    /// Tokens sampled per sample.
    generated: usize,
}

/// Replays `requests` (sorted by arrival) through a contiguous allocator.
pub fn run(
    cfg: &FragConfig,
    reservation: Reservation,
    fit: Fit,
    requests: &[SimRequest],
    progress: &mut dyn FnMut(usize),
    observe: &mut dyn FnMut(&Moment),
) -> Result<Outcome, SimError> {
    let mut arena = Arena::new(cfg.budget_tokens, fit);
    let mut records: Vec<RequestRecord> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| RequestRecord::new(i as u64, r))
        .collect();
    let mut waiting: VecDeque<usize> = VecDeque::new();
    let mut running: Vec<Running> = Vec::new();
    let (mut now, mut next, mut done) = (0.0f64, 0usize, 0usize);
    let mut max_concurrency = 0;
    loop {
        while next < requests.len() && requests[next].arrival_s <= now {
            let r = &requests[next];
            if reservation.len(cfg, r) * r.n.max(1) > cfg.budget_tokens || r.n > cfg.max_num_seqs {
                records[next].rejected = Some("its reservation exceeds the budget".into());
                done += 1;
            } else {
                waiting.push_back(next);
            }
            next += 1;
        }
        if running.is_empty() && waiting.is_empty() {
            if next == requests.len() {
                break;
            }
            now = requests[next].arrival_s;
            continue;
        }
        let mut plan = StepPlan::default();
        let mut budget = cfg.max_num_batched_tokens;
        // 1. Decodes: every sample of every request past its prompt.
        for (i, rr) in running.iter().enumerate() {
            let r = &requests[rr.req];
            if rr.computed == r.prompt_len && budget >= rr.runs.len() {
                for _ in &rr.runs {
                    plan.seqs
                        .push(scheduled(i, r.prompt_len + rr.decoded, 1, true));
                }
                budget -= rr.runs.len();
            }
        }
        // 2. Prefills already under way, then 3. admissions, in arrival order.
        for (i, rr) in running.iter().enumerate() {
            let left = requests[rr.req].prompt_len - rr.computed;
            if left > 0 {
                if let Some(chunk) = prefill_chunk(cfg, left, budget) {
                    plan.seqs
                        .push(scheduled(i, rr.computed, chunk, chunk == left));
                    budget -= chunk;
                }
            }
        }
        let num_seqs = |running: &[Running]| running.iter().map(|r| r.runs.len()).sum::<usize>();
        while let Some(&head) = waiting.front() {
            let r = &requests[head];
            let n = r.n.max(1);
            if num_seqs(&running) + n > cfg.max_num_seqs {
                break;
            }
            let Some(chunk) = prefill_chunk(cfg, r.prompt_len, budget) else {
                break;
            };
            let len = reservation.len(cfg, r);
            let mut runs = Vec::with_capacity(n);
            for _ in 0..n {
                match arena.alloc(len) {
                    Some(start) => runs.push(start),
                    None => break,
                }
            }
            if runs.len() < n {
                for s in runs {
                    arena.release(s);
                }
                break;
            }
            waiting.pop_front();
            records[head].first_scheduled_s = Some(now);
            plan.seqs
                .push(scheduled(running.len(), 0, chunk, chunk == r.prompt_len));
            budget -= chunk;
            running.push(Running {
                req: head,
                runs,
                reservation: len,
                computed: 0,
                decoded: 0,
                generated: 0,
            });
        }
        if plan.seqs.is_empty() {
            return Err(SimError::Stalled {
                at_s: now,
                why: format!(
                    "nothing fits a step of {} tokens",
                    cfg.max_num_batched_tokens
                ),
            });
        }
        let dt = cfg.cost_model.step_time(&plan, 1);
        now += dt;
        // The step's tokens are written into the runs during the step; which requests sample.
        let mut samples = vec![false; running.len()];
        for s in &plan.seqs {
            let rr = &mut running[s.seq as usize];
            if rr.computed < requests[rr.req].prompt_len {
                rr.computed += s.len;
            } else if !samples[s.seq as usize] {
                rr.decoded += 1;
            }
            samples[s.seq as usize] |= s.samples;
        }
        let head_need = waiting.front().map(|&h| reservation.len(cfg, &requests[h]));
        let b = breakdown(&running, requests, &arena, head_need);
        max_concurrency = max_concurrency.max(num_seqs(&running));
        observe(&Moment {
            t_s: now,
            dt_s: dt,
            breakdown: b,
        });
        // A finished prefill yields every sample's first token; a decode one more each.
        let mut finished = false;
        for i in (0..running.len()).rev() {
            if !samples[i] {
                continue;
            }
            let rr = &mut running[i];
            let rec = &mut records[rr.req];
            if rr.generated == 0 {
                rec.first_token_s = Some(now);
            }
            rr.generated += 1;
            rec.output_len = rr.generated * rr.runs.len();
            if rr.generated >= requests[rr.req].output_len {
                let rr = running.remove(i);
                for s in rr.runs {
                    arena.release(s);
                }
                records[rr.req].finish_s = Some(now);
                done += 1;
                finished = true;
            }
        }
        if finished {
            progress(done);
        }
    }
    progress(done);
    Ok(Outcome {
        records,
        duration_s: now,
        max_concurrency,
        preemptions: 0,
    })
}

fn scheduled(running_index: usize, start: usize, len: usize, samples: bool) -> ScheduledSeq {
    ScheduledSeq {
        seq: running_index as u64,
        start,
        len,
        samples,
        table_offset: 0,
        table_len: 0,
    }
}

/// How much of a prompt with `left` tokens to compute with `budget` tokens left, if any.
fn prefill_chunk(cfg: &FragConfig, left: usize, budget: usize) -> Option<usize> {
    if budget == 0 || (!cfg.enable_chunked_prefill && left > budget) {
        None
    } else {
        Some(left.min(budget))
    }
}

/// The budget's partition during a step (see [`Breakdown`]).
fn breakdown(
    running: &[Running],
    requests: &[SimRequest],
    arena: &Arena,
    head_need: Option<usize>,
) -> Breakdown {
    let mut b = Breakdown::default();
    for rr in running {
        let r = &requests[rr.req];
        let n = rr.runs.len();
        let fin = final_len(r).min(rr.reservation);
        // Until the prompt is complete only the first run holds it; then every run does.
        let holds = if rr.computed == r.prompt_len {
            n * (r.prompt_len + rr.decoded)
        } else {
            rr.computed
        };
        b.useful += holds;
        b.reserved += n * fin - holds;
        b.internal += n * (rr.reservation - fin);
    }
    b.external = head_need.map_or(0, |need| arena.free_in_holes_smaller_than(need));
    b.free = arena.free() - b.external;
    b
}
