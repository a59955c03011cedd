//! A model-checking harness for the block manager.
//!
//! The model is deliberately simple: each sequence is just the list of tokens it holds, and
//! the KV caches are simulated as plain arrays of token ids (one per slot, device and host).
//! Every copy order the block manager returns (copy-on-write, swap out, swap in) is carried out
//! on those arrays, and every new token is written into the slot the block table names. After
//! each operation the harness reads every sequence back through its block table and demands
//! its own tokens, and it checks the manager's invariants from scratch. A page handed out while
//! still in use, a missed copy, a wrong prefix hit or a statistics drift all show up here.

use block_manager::{BlockCopy, BlockError, BlockManager, BlockManagerConfig, Location};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

/// One operation on the manager, with its random choices already made.
#[derive(Debug, Clone)]
pub enum Op {
    /// Admit a new sequence: prompt built from shared base `base` (of `base_len` tokens) and
    /// `suffix_len` tokens from `suffix_seed`; the first chunk computed is `chunk` tokens.
    Admit {
        base: u8,
        base_len: u8,
        suffix_len: u8,
        suffix_seed: u32,
        chunk: u8,
        salt: Option<u8>,
    },
    /// Compute up to `n` more tokens of the sequence at index `pick` (prompt chunk or decode).
    Append {
        pick: u16,
        n: u8,
        token: u32,
    },
    Fork {
        pick: u16,
    },
    Free {
        pick: u16,
    },
    SwapOut {
        pick: u16,
        with_next: bool,
    },
    SwapIn {
        pick: u16,
    },
    ResetPrefixCache,
}

impl Op {
    /// A random operation, weighted towards the common ones.
    pub fn random(rng: &mut StdRng) -> Op {
        let pick = rng.random::<u16>();
        match rng.random_range(0..100) {
            0..=24 => Op::Admit {
                base: rng.random_range(0..4),
                base_len: rng.random_range(0..40),
                suffix_len: rng.random_range(0..12),
                suffix_seed: rng.random(),
                chunk: rng.random_range(1..48),
                salt: (rng.random_range(0..8) == 0).then(|| rng.random_range(0..2)),
            },
            25..=64 => Op::Append {
                pick,
                n: rng.random_range(1..6),
                token: rng.random_range(0..50),
            },
            65..=71 => Op::Fork { pick },
            72..=85 => Op::Free { pick },
            86..=92 => Op::SwapOut {
                pick,
                with_next: rng.random(),
            },
            93..=98 => Op::SwapIn { pick },
            _ => Op::ResetPrefixCache,
        }
    }
}

struct ModelSeq {
    /// Prompt and generated tokens known so far.
    tokens: Vec<u32>,
    /// Tokens whose K/V have been written (== the manager's slot count).
    computed: usize,
}

/// The manager under test, the model, and the simulated caches.
pub struct Harness {
    pub bm: BlockManager,
    seqs: BTreeMap<u64, ModelSeq>,
    device: Vec<Option<u32>>,
    host: Vec<Option<u32>>,
    next_id: u64,
    bs: usize,
    /// How many operations succeeded, and how many were refused for lack of pages.
    pub ok_ops: usize,
    pub refused_ops: usize,
    pub prefix_hit_tokens: usize,
    pub cow_copies: usize,
}

fn base_tokens(base: u8, len: usize) -> impl Iterator<Item = u32> {
    (0..len as u32).map(move |i| 1000 * (base as u32 + 1) + i % 7)
}

impl Harness {
    pub fn new(cfg: BlockManagerConfig) -> Harness {
        let bs = cfg.block_size;
        Harness {
            device: vec![None; cfg.num_device_blocks * bs],
            host: vec![None; cfg.num_host_blocks * bs],
            bm: BlockManager::new(cfg).expect("valid config"),
            seqs: BTreeMap::new(),
            next_id: 0,
            bs,
            ok_ops: 0,
            refused_ops: 0,
            prefix_hit_tokens: 0,
            cow_copies: 0,
        }
    }

    fn pick(&self, pick: u16, loc: Option<Location>) -> Option<u64> {
        let ids: Vec<u64> = self
            .seqs
            .keys()
            .copied()
            .filter(|&s| loc.is_none_or(|l| self.bm.location(s).ok() == Some(l)))
            .collect();
        (!ids.is_empty()).then(|| ids[pick as usize % ids.len()])
    }

    fn copy(store: &mut [Option<u32>], from: &[Option<u32>], c: BlockCopy, bs: usize) {
        let (s, d) = (c.src as usize * bs, c.dst as usize * bs);
        store[d..d + bs].copy_from_slice(&from[s..s + bs]);
    }

    fn copy_within(store: &mut [Option<u32>], c: BlockCopy, bs: usize) {
        let (s, d) = (c.src as usize * bs, c.dst as usize * bs);
        store.copy_within(s..s + bs, d);
    }

    /// Writes tokens `from..to` of `seq` into their slots; a written page must not be shared.
    fn write(&mut self, seq: u64, from: usize, to: usize) -> Result<(), String> {
        let table = self
            .bm
            .block_table(seq)
            .map_err(|e| e.to_string())?
            .to_vec();
        let m = &self.seqs[&seq];
        for p in from..to {
            let b = table[p / self.bs];
            if self.bm.ref_count(b) != 1 {
                return Err(format!("seq {seq} writes shared page {b}"));
            }
            self.device[b as usize * self.bs + p % self.bs] = Some(m.tokens[p]);
        }
        Ok(())
    }

    fn compute(&mut self, seq: u64, n: usize) -> Result<bool, String> {
        let m = &self.seqs[&seq];
        let (from, to) = (m.computed, (m.computed + n).min(m.tokens.len()));
        let before = self.bm.stats();
        match self.bm.allocate_slots(seq, to - from) {
            Ok(a) => {
                if let Some(c) = a.cow {
                    Self::copy_within(&mut self.device, c, self.bs);
                    self.cow_copies += 1;
                }
            }
            Err(BlockError::OutOfBlocks { .. }) => {
                if self.bm.stats() != before {
                    return Err("failed allocate_slots changed the statistics".into());
                }
                return Ok(false);
            }
            Err(e) => return Err(e.to_string()),
        }
        self.write(seq, from, to)?;
        let m = self.seqs.get_mut(&seq).expect("exists");
        m.computed = to;
        let toks = m.tokens[..to].to_vec();
        self.bm
            .cache_full_blocks(seq, &toks)
            .map_err(|e| e.to_string())?;
        Ok(true)
    }

    /// Applies one operation and checks everything afterwards.
    pub fn apply(&mut self, op: &Op) -> Result<(), String> {
        let done = match *op {
            Op::Admit {
                base,
                base_len,
                suffix_len,
                suffix_seed,
                chunk,
                salt,
            } => self.admit(base, base_len, suffix_len, suffix_seed, chunk, salt)?,
            Op::Append { pick, n, token } => match self.pick(pick, Some(Location::Device)) {
                Some(seq) => {
                    let m = self.seqs.get_mut(&seq).expect("exists");
                    if m.computed == m.tokens.len() {
                        m.tokens.push(token); // decode: the sampled token
                    }
                    self.compute(seq, n as usize)?
                }
                None => true,
            },
            Op::Fork { pick } => match self.pick(pick, Some(Location::Device)) {
                Some(parent) => {
                    let child = self.next_id;
                    self.next_id += 1;
                    self.bm.fork(parent, child).map_err(|e| e.to_string())?;
                    let p = &self.seqs[&parent];
                    let c = ModelSeq {
                        tokens: p.tokens[..p.computed].to_vec(),
                        computed: p.computed,
                    };
                    self.seqs.insert(child, c);
                    true
                }
                None => true,
            },
            Op::Free { pick } => match self.pick(pick, None) {
                Some(seq) => {
                    self.bm.free(seq).map_err(|e| e.to_string())?;
                    self.seqs.remove(&seq);
                    true
                }
                None => true,
            },
            Op::SwapOut { pick, with_next } => self.swap(pick, with_next, Location::Device)?,
            Op::SwapIn { pick } => self.swap(pick, false, Location::Host)?,
            Op::ResetPrefixCache => {
                self.bm.reset_prefix_cache();
                true
            }
        };
        if done {
            self.ok_ops += 1;
        } else {
            self.refused_ops += 1;
        }
        self.check()
    }

    fn admit(
        &mut self,
        base: u8,
        base_len: u8,
        suffix_len: u8,
        suffix_seed: u32,
        chunk: u8,
        salt: Option<u8>,
    ) -> Result<bool, String> {
        let mut prompt: Vec<u32> = base_tokens(base, base_len as usize).collect();
        let mut r = StdRng::seed_from_u64(suffix_seed as u64);
        prompt.extend((0..suffix_len).map(|_| r.random_range(0..50)));
        if prompt.is_empty() {
            prompt.push(1);
        }
        let salt = salt.map(u64::from);
        let hit = self.bm.lookup_prefix(&prompt, salt);
        if hit.num_cached_tokens >= prompt.len() {
            return Err("prefix hit covers the last prompt token".into());
        }
        for (i, l) in hit.blocks.iter().enumerate() {
            let want = &prompt[i * self.bs..(i + 1) * self.bs];
            if self.bm.cached_tokens(l.block) != Some(want) {
                return Err(format!("hit page {} stores other tokens", l.block));
            }
            let s = l.block as usize * self.bs;
            let held: Vec<Option<u32>> = want.iter().map(|&t| Some(t)).collect();
            if self.device[s..s + self.bs] != held[..] {
                return Err(format!("hit page {} holds other K/V", l.block));
            }
        }
        let cached = hit.num_cached_tokens;
        let first = (chunk as usize).min(prompt.len() - cached);
        let seq = self.next_id;
        let before = self.bm.stats();
        match self.bm.admit(seq, &hit, first) {
            Ok(_) => {}
            Err(BlockError::OutOfBlocks { .. }) => {
                if self.bm.stats() != before || self.bm.contains(seq) {
                    return Err("failed admit changed the state".into());
                }
                return Ok(false);
            }
            Err(e) => return Err(e.to_string()),
        }
        self.next_id += 1;
        self.prefix_hit_tokens += cached;
        self.seqs.insert(
            seq,
            ModelSeq {
                tokens: prompt,
                computed: cached,
            },
        );
        self.write(seq, cached, cached + first)?;
        let m = self.seqs.get_mut(&seq).expect("inserted");
        m.computed = cached + first;
        let toks = m.tokens[..m.computed].to_vec();
        self.bm
            .cache_full_blocks(seq, &toks)
            .map_err(|e| e.to_string())?;
        Ok(true)
    }

    fn swap(&mut self, pick: u16, with_next: bool, from: Location) -> Result<bool, String> {
        let Some(seq) = self.pick(pick, Some(from)) else {
            return Ok(true);
        };
        let mut group = vec![seq];
        if with_next {
            if let Some(other) = self.pick(pick.wrapping_add(1), Some(from)) {
                if other != seq {
                    group.push(other);
                }
            }
        }
        let before = self.bm.stats();
        let res = match from {
            Location::Device => self.bm.swap_out(&group),
            Location::Host => self.bm.swap_in(&group),
        };
        match res {
            Ok(copies) => {
                for c in copies {
                    match from {
                        Location::Device => Self::copy(&mut self.host, &self.device, c, self.bs),
                        Location::Host => Self::copy(&mut self.device, &self.host, c, self.bs),
                    }
                }
                Ok(true)
            }
            Err(BlockError::OutOfBlocks { .. } | BlockError::OutOfHostBlocks { .. }) => {
                if self.bm.stats() != before {
                    return Err("failed swap changed the statistics".into());
                }
                Ok(false)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Every sequence reads its own tokens through its table; every invariant holds.
    pub fn check(&self) -> Result<(), String> {
        self.bm.check_invariants().map_err(|e| e.to_string())?;
        for (&seq, m) in &self.seqs {
            let table = self.bm.block_table(seq).map_err(|e| e.to_string())?;
            let store = match self.bm.location(seq).map_err(|e| e.to_string())? {
                Location::Device => &self.device,
                Location::Host => &self.host,
            };
            if self.bm.num_tokens(seq).ok() != Some(m.computed) {
                return Err(format!("seq {seq}: slot count differs from the model"));
            }
            for p in 0..m.computed {
                let slot = table[p / self.bs] as usize * self.bs + p % self.bs;
                if store[slot] != Some(m.tokens[p]) {
                    return Err(format!(
                        "seq {seq} position {p}: cache holds {:?}, model {}",
                        store[slot], m.tokens[p]
                    ));
                }
            }
        }
        let logical: usize = self
            .seqs
            .iter()
            .filter(|(&s, _)| self.bm.location(s).ok() == Some(Location::Device))
            .map(|(_, m)| m.computed)
            .sum();
        if self.bm.stats().logical_tokens != logical {
            return Err("logical tokens differ from the model".into());
        }
        Ok(())
    }

    /// Frees every sequence; afterwards every page must be free.
    pub fn drain(&mut self) -> Result<(), String> {
        let ids: Vec<u64> = self.seqs.keys().copied().collect();
        for s in ids {
            self.bm.free(s).map_err(|e| e.to_string())?;
            self.seqs.remove(&s);
        }
        self.check()?;
        let st = self.bm.stats();
        if st.device.used_blocks != 0 || st.host.used_blocks != 0 || st.logical_tokens != 0 {
            return Err(format!("pages leaked: {st:?}"));
        }
        Ok(())
    }
}
