//! The seam between the sampler and whatever restricts a sequence's next token (a grammar, a
//! JSON schema): a [`TokenConstraint`] says which tokens may come next, as a [`TokenMask`],
//! and is told which one came.
//!
//! Why a trait: the engine samples and steps; it must not know how a schema becomes a set of
//! allowed tokens. `structured` implements it with llguidance; a test can implement it with a
//! few lines. The engine computes each constrained sequence's mask on a helper thread while
//! the forward pass runs (`core.rs`), so the trait object must be `Send`.

/// Which token ids may be sampled next: one bit per id of the model's vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMask {
    words: Vec<u32>,
    len: usize,
}

impl TokenMask {
    /// A mask of `len` ids that allows none.
    pub fn none(len: usize) -> Self {
        TokenMask {
            words: vec![0; len.div_ceil(32)],
            len,
        }
    }

    /// A mask whose bits are `words` (bit `i % 32` of word `i / 32` is id `i`); ids at or
    /// above `len` are dropped, missing words allow nothing.
    pub fn from_words(words: &[u32], len: usize) -> Self {
        let mut m = Self::none(len);
        let n = m.words.len().min(words.len());
        m.words[..n].copy_from_slice(&words[..n]);
        if !len.is_multiple_of(32) {
            if let Some(last) = m.words.get_mut(len / 32) {
                *last &= (1u32 << (len % 32)) - 1;
            }
        }
        m
    }

    pub fn allow(&mut self, id: u32) {
        if (id as usize) < self.len {
            self.words[id as usize / 32] |= 1 << (id % 32);
        }
    }

    pub fn allows(&self, id: u32) -> bool {
        (id as usize) < self.len && self.words[id as usize / 32] & (1 << (id % 32)) != 0
    }

    /// How many ids are allowed.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Sets every disallowed logit (and every logit past the mask) to minus infinity.
    pub fn apply(&self, logits: &mut [f32]) {
        for (wi, chunk) in logits.chunks_mut(32).enumerate() {
            let w = self.words.get(wi).copied().unwrap_or(0);
            if w == u32::MAX {
                continue;
            }
            for (bit, l) in chunk.iter_mut().enumerate() {
                if w & (1 << bit) == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// A constraint could not go on (its grammar hit a limit, or a token it never allowed came).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("structured output: {0}")]
pub struct ConstraintError(pub String);

/// What restricts one sample's tokens, step by step.
pub trait TokenConstraint: Send {
    /// The tokens allowed next (end-of-sequence ids among them once the output may end).
    fn compute_mask(&mut self) -> Result<TokenMask, ConstraintError>;
    /// Advances past `token` (one the last mask allowed, other than end of sequence).
    fn commit(&mut self, token: u32) -> Result<(), ConstraintError>;
    /// Whether the output is complete: nothing but end of sequence may follow.
    fn is_finished(&self) -> bool;
    /// An independent copy in the same state (each of a request's `n` samples needs one).
    fn fork(&self) -> Box<dyn TokenConstraint>;
    /// What the constraint is, for logs and `Debug` (e.g. `json_schema`).
    fn describe(&self) -> String;
}

/// A boxed constraint that clones by forking, so requests holding one stay `Clone`.
pub struct Constraint(pub Box<dyn TokenConstraint>);

impl Clone for Constraint {
    fn clone(&self) -> Self {
        Constraint(self.0.fork())
    }
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Constraint({})", self.0.describe())
    }
}

impl PartialEq for Constraint {
    /// Two constraints are equal when they describe the same thing (requests compare equal
    /// in tests; a constraint's state is not part of a request's identity).
    fn eq(&self, other: &Self) -> bool {
        self.0.describe() == other.0.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_keeps_only_its_tokens() {
        let mut m = TokenMask::none(70);
        for id in [0, 31, 32, 69, 70, 1000] {
            m.allow(id);
        }
        assert_eq!(m.count(), 4);
        assert!(m.allows(69) && !m.allows(70) && !m.allows(1));
        let mut logits = vec![1.0f32; 75];
        m.apply(&mut logits);
        let kept: Vec<usize> = (0..75).filter(|&i| logits[i].is_finite()).collect();
        assert_eq!(kept, vec![0, 31, 32, 69]);
        let w = TokenMask::from_words(&[u32::MAX, u32::MAX, u32::MAX], 40);
        assert_eq!(w.count(), 40);
    }
}
