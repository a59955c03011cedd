//! The engine core: one step = schedule → copies → forward → sample → update. It owns the
//! scheduler (and so the block manager), the model, the paged KV cache and every request's
//! sampling state. Single-threaded; `handle` runs it on its own OS thread.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use block_manager::{BlockManager, BlockManagerConfig, SeqId};
use kernels::KvDtype;
use scheduler::{policy, FinishReason, Request, Scheduler, SchedulerConfig, StepResult};

use super::executor::{build_batch, run_copies, HostCache};
use super::EngineError;
use crate::backend::Backend;
use crate::detok::TokenDecoder;
use crate::kv_events::KvEventPublisher;
use crate::masks::with_masks;
use crate::model::{KvCache, Model};
use crate::report::StepReport;
use crate::request::{RequestLimits, ValidatedRequest};
use crate::sample_state::{draw_samples, emit, mask_jobs, SampleState};
use crate::sampler::sample;

/// Sizing and policy of an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub block_size: usize,
    pub num_blocks: usize,
    pub num_host_blocks: usize,
    /// How K and V are stored (`--kv-cache-dtype`).
    pub kv_dtype: KvDtype,
    pub watermark: f64,
    pub enable_prefix_caching: bool,
    pub scheduler: SchedulerConfig,
    pub policy: String,
    /// Refuse new requests while this many are already waiting (backpressure).
    pub max_queue: Option<usize>,
    /// Back every KV page with memory at start-up (`--kv-prefault`), as llama.cpp clears its
    /// KV buffer when it creates a context: the steps then never wait for the first write
    /// to a page (1-4 % of a 64 x (128 + 128) run on the VMs here), and a machine without
    /// the memory fails at start-up rather than mid-run. Costs start-up time.
    pub kv_prefault: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_size: 16,
            num_blocks: 1024,
            num_host_blocks: 0,
            kv_dtype: KvDtype::F32,
            watermark: 0.01,
            enable_prefix_caching: true,
            scheduler: SchedulerConfig::default(),
            policy: "fcfs".into(),
            max_queue: None,
            kv_prefault: false,
        }
    }
}

/// A generation request: a validated prompt and parameters, under the caller's id.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Chosen by the caller; must be below 2^62 (forked samples use the ids above).
    pub id: u64,
    pub request: ValidatedRequest,
}

/// One new token of one sample of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenOutput {
    pub request: u64,
    /// Which of the request's `n` samples.
    pub index: usize,
    pub token: u32,
    /// Text this token releases (may be empty: held back for UTF-8 or a stop string).
    pub text: String,
    pub logprob: f32,
    pub top_logprobs: Vec<(u32, f32)>,
    pub finish: Option<FinishReason>,
    /// Prompt tokens served from the prefix cache (known from the first token on).
    pub cached_prompt_tokens: usize,
}

const CHILD_BASE: u64 = 1 << 62;

pub struct EngineCore<B: Backend> {
    backend: B,
    model: Box<dyn Model<B>>,
    cache: KvCache<B>,
    host: Option<HostCache>,
    tokenizer: Option<Arc<dyn TokenDecoder>>,
    scheduler: Scheduler,
    samples: HashMap<SeqId, SampleState>,
    /// Sequence ids of each request's samples.
    requests: HashMap<u64, Vec<SeqId>>,
    next_child: u64,
    started: Instant,
    eos_ids: Vec<u32>,
    max_queue: Option<usize>,
    /// Arrival time of requests not yet scheduled once.
    unscheduled: HashMap<u64, f64>,
    /// Where each step's report goes (`pagedrt serve --step-log`), as JSON lines.
    step_log: Option<Box<dyn std::io::Write + Send>>,
    /// Where each step's KV-cache events go (`pagedrt serve --kv-events-endpoint`).
    kv_events: Option<KvEventPublisher>,
    kv_dtype: KvDtype,
}

impl<B: Backend> EngineCore<B> {
    /// An engine over `model` on `backend`; `tokenizer` turns tokens into text and says
    /// which end generation (without one, outputs carry token ids only).
    pub fn new(
        backend: B,
        model: Box<dyn Model<B>>,
        tokenizer: Option<Arc<dyn TokenDecoder>>,
        cfg: EngineConfig,
    ) -> Result<Self, EngineError> {
        let bm = BlockManager::new(
            BlockManagerConfig::new(cfg.block_size, cfg.num_blocks)
                .with_host_blocks(cfg.num_host_blocks)
                .with_watermark(cfg.watermark)
                .with_prefix_caching(cfg.enable_prefix_caching),
        )?;
        let pol = policy::by_name(&cfg.policy)
            .ok_or_else(|| EngineError::Config(format!("unknown policy '{}'", cfg.policy)))?;
        let mut sched_cfg = cfg.scheduler.clone();
        let model_max = model.max_len();
        sched_cfg.max_model_len = Some(
            sched_cfg
                .max_model_len
                .map_or(model_max, |m| m.min(model_max)),
        );
        let scheduler = Scheduler::new(sched_cfg, bm, pol)?;
        let mut cache = KvCache::new(
            &backend,
            &model.kv_spec(cfg.kv_dtype),
            cfg.num_blocks,
            cfg.block_size,
        )?;
        if cfg.kv_prefault {
            for layer in &mut cache.layers {
                backend.kv_prefault(&mut layer.k)?;
                backend.kv_prefault(&mut layer.v)?;
            }
        }
        let host = (cfg.num_host_blocks > 0).then(|| {
            let mut l = cache.layout;
            l.num_blocks = cfg.num_host_blocks;
            HostCache::new(model.config().num_layers, l.elems(), cfg.kv_dtype)
        });
        let eos_ids = tokenizer
            .as_ref()
            .map(|t| t.eos_ids().to_vec())
            .unwrap_or_default();
        Ok(EngineCore {
            backend,
            model,
            cache,
            host,
            tokenizer,
            scheduler,
            samples: HashMap::new(),
            requests: HashMap::new(),
            next_child: CHILD_BASE,
            started: Instant::now(),
            eos_ids,
            max_queue: cfg.max_queue,
            unscheduled: HashMap::new(),
            step_log: None,
            kv_events: None,
            kv_dtype: cfg.kv_dtype,
        })
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// How the KV cache stores K and V.
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    pub fn model(&self) -> &dyn Model<B> {
        self.model.as_ref()
    }

    pub fn tokenizer(&self) -> Option<&Arc<dyn TokenDecoder>> {
        self.tokenizer.as_ref()
    }

    /// Whether any sample of `request` is still running or queued.
    pub fn is_active(&self, request: u64) -> bool {
        self.requests.contains_key(&request)
    }

    pub fn has_unfinished(&self) -> bool {
        self.scheduler.has_unfinished()
    }

    /// What a request must satisfy to be added ([`RequestLimits::validate`]).
    pub fn request_limits(&self) -> RequestLimits {
        RequestLimits {
            vocab_size: self.model.config().vocab_size,
            max_model_len: self
                .scheduler
                .config()
                .max_model_len
                .unwrap_or_else(|| self.model.max_len()),
        }
    }

    /// Queues a request; refused now (with the reason) if it could never run here or the
    /// queue is full. The request's content was checked when it was validated.
    pub fn add_request(&mut self, r: GenerateRequest) -> Result<(), EngineError> {
        if r.id >= CHILD_BASE || self.requests.contains_key(&r.id) {
            return Err(EngineError::BadRequest(format!(
                "request id {} is taken or too large",
                r.id
            )));
        }
        if let Some(max) = self.max_queue {
            let waiting = self.scheduler.num_waiting();
            if waiting >= max {
                return Err(EngineError::QueueFull { waiting, max });
            }
        }
        let (priority, cache_salt) = (r.request.priority(), r.request.cache_salt());
        let (prompt, params, constraint) = r.request.into_parts();
        let mut req = Request::new(r.id, prompt.clone(), params.max_tokens);
        let req_arrival = self.started.elapsed().as_secs_f64();
        req.arrival_s = req_arrival;
        req.priority = priority;
        req.cache_salt = cache_salt;
        self.scheduler.add_request(req)?;
        self.samples.insert(
            r.id,
            SampleState::new(r.id, 0, Arc::new(params), Arc::new(prompt), constraint),
        );
        self.requests.insert(r.id, vec![r.id]);
        self.unscheduled.insert(r.id, req_arrival);
        Ok(())
    }

    /// Aborts every sample of a request; its pages are freed at once.
    pub fn abort(&mut self, request: u64) {
        self.unscheduled.remove(&request);
        if let Some(seqs) = self.requests.remove(&request) {
            for s in seqs {
                self.samples.remove(&s);
                let _ = self.scheduler.abort(s);
            }
        }
    }

    /// Logs every later step's report as one JSON line ([`StepReport::log_line`]), for
    /// `pagedrt bench calibrate --from-steps`.
    pub fn set_step_log(&mut self, w: Box<dyn std::io::Write + Send>) {
        self.step_log = Some(w);
    }

    /// Publishes every later step's KV-cache events on `publisher` (the block manager records
    /// them from now on). A publisher that served an earlier engine (one rebuilt after a
    /// panic) first says that every page it announced is gone.
    pub fn set_kv_events(&mut self, publisher: KvEventPublisher) {
        if publisher.published() > 0 {
            publisher.publish(vec![block_manager::KvEvent::AllCleared]);
        }
        self.scheduler.record_kv_events(true);
        self.kv_events = Some(publisher);
    }

    /// Runs one step; reports the tokens it produced and what it did.
    pub fn step(&mut self) -> Result<StepReport, EngineError> {
        let t0 = Instant::now();
        let mut report = StepReport::default();
        let outputs = self.step_inner(&mut report);
        if let Some(p) = &self.kv_events {
            // A move into a channel: encoding and sending happen on the publisher's thread.
            p.publish(self.scheduler.take_kv_events());
        }
        report.outputs = outputs?;
        report.seconds = t0.elapsed().as_secs_f64();
        if let (Some(w), Some(line)) = (self.step_log.as_mut(), report.log_line()) {
            // A full disk must not stop serving: the log is best effort.
            let _ = writeln!(w, "{line}").and_then(|_| w.flush());
        }
        Ok(report)
    }

    fn step_inner(&mut self, report: &mut StepReport) -> Result<Vec<TokenOutput>, EngineError> {
        let now = self.started.elapsed().as_secs_f64();
        let plan = self.scheduler.schedule(now)?;
        run_copies(&self.backend, &plan, &mut self.cache, self.host.as_mut())?;
        report.num_tokens = plan.num_tokens();
        for sc in &plan.seqs {
            if let Some(arrival) = self.unscheduled.remove(&sc.seq) {
                report.queue_times_s.push(now - arrival);
            }
        }
        if plan.seqs.is_empty() {
            return Ok(vec![]);
        }
        report.counts = Some(scheduler::StepCounts::of(&plan));
        let batch = build_batch(&plan, self.cache.layout.block_size);
        let (model, backend, cache) = (&self.model, &self.backend, &mut self.cache);
        let (logits, mut masks) = with_masks(mask_jobs(&plan, &mut self.samples), || {
            backend.run_forward(|| model.forward(backend, &batch, cache))
        });
        report.masks = masks.masks.len();
        report.mask_seconds = masks.compute_seconds;
        report.mask_wait_seconds = masks.wait_seconds;
        // A device error (this step's copies or forward) fails the step with its message.
        let mut logits = logits?;
        let vocab = self.model.config().vocab_size;
        let mut result = StepResult::default();
        let mut outputs = Vec::new();
        let mut forks: Vec<(SeqId, Vec<f32>)> = Vec::new();
        let mut ended_parents = Vec::new();
        let mut drawn = draw_samples(
            &self.backend,
            &plan,
            &mut self.samples,
            &mut logits,
            vocab,
            &mut masks,
        );
        // The draws hold copies of what they keep: the logits' memory serves the next step.
        self.model.recycle_logits(logits);
        for (row, sc) in plan.seqs.iter().filter(|s| s.samples).enumerate() {
            let (Some(st), Some((s, raw, failed))) =
                (self.samples.get_mut(&sc.seq), drawn[row].take())
            else {
                continue;
            };
            let cached = self
                .scheduler
                .sequence(sc.seq)
                .and_then(|q| q.num_cached_prompt_tokens)
                .unwrap_or(0);
            let out = emit(
                st,
                &s,
                self.tokenizer.as_deref(),
                &self.eos_ids,
                cached,
                failed,
            )?;
            result.sampled.push((sc.seq, s.token));
            match (out.finish, raw) {
                // The first sample of an `n > 1` request ended on its first token (EOS, a
                // stop, `max_tokens: 1`): its siblings still start from its prompt, so it
                // leaves the scheduler only after they have forked from it.
                (Some(reason), Some(raw)) => {
                    forks.push((sc.seq, raw));
                    ended_parents.push((sc.seq, reason));
                }
                (Some(reason), None) => result.finished.push((sc.seq, reason)),
                (None, Some(raw)) => forks.push((sc.seq, raw)),
                (None, None) => {}
            }
            outputs.push(out);
        }
        self.scheduler.update(&result)?;
        for &(seq, _) in &result.finished {
            self.samples.remove(&seq);
        }
        for (parent, raw) in forks {
            self.fork_samples(parent, raw, &mut outputs)?;
        }
        for (parent, reason) in ended_parents {
            self.scheduler.finish(parent, reason)?;
            self.samples.remove(&parent);
        }
        self.requests.retain(|_, seqs| {
            seqs.retain(|s| self.samples.contains_key(s));
            !seqs.is_empty()
        });
        Ok(outputs)
    }

    /// Starts samples 1..n of a request from the logits its first token came from.
    fn fork_samples(
        &mut self,
        parent: SeqId,
        raw: Vec<f32>,
        outputs: &mut Vec<TokenOutput>,
    ) -> Result<(), EngineError> {
        let (request, params, prompt, constraint) = {
            let p = &self.samples[&parent];
            let c = p.sibling_constraint.clone();
            (p.request, p.params.clone(), p.prompt.clone(), c)
        };
        for index in 1..params.n {
            let mut st = SampleState::new(
                request,
                index,
                params.clone(),
                prompt.clone(),
                constraint.clone(),
            );
            // `raw` is already masked by the first sample's (identical) first mask.
            let s = sample(&mut raw.clone(), &params, &prompt, &[], None, &mut st.rng);
            let out = emit(
                &mut st,
                &s,
                self.tokenizer.as_deref(),
                &self.eos_ids,
                0,
                None,
            )?;
            if out.finish.is_none() {
                let child = self.next_child;
                self.next_child += 1;
                self.scheduler.fork(parent, child, s.token)?;
                self.samples.insert(child, st);
                self.requests.entry(request).or_default().push(child);
            }
            outputs.push(out);
        }
        Ok(())
    }
}
