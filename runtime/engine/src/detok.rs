//! From token ids back to text, as the engine streams it: the `TokenDecoder` seam (the
//! `models` crate implements it over a Hugging Face tokenizer) and the incremental decoder
//! that never splits a UTF-8 character.

/// A tokenizer failed to turn ids into text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("detokenizing: {0}")]
pub struct DecodeError(pub String);

/// What the engine needs of a tokenizer: ids to text, and which ids end generation.
pub trait TokenDecoder: Send + Sync {
    /// The text of `ids`, special tokens included.
    fn decode(&self, ids: &[u32]) -> Result<String, DecodeError>;
    /// Token ids that end generation (unless a request ignores EOS).
    fn eos_ids(&self) -> &[u32];
}

/// Turns a stream of token ids into a stream of text that never splits a UTF-8 character:
/// text is released only once the decoded window no longer ends in a replacement character.
/// (Decoding a short window rather than everything keeps each step O(1).)
#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one token; returns the text it completes (possibly empty).
    pub fn push(&mut self, tok: &dyn TokenDecoder, id: u32) -> Result<String, DecodeError> {
        self.ids.push(id);
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tok.decode(&self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            if let Some(delta) = full.get(prefix.len()..) {
                self.prefix_offset = self.read_offset;
                self.read_offset = self.ids.len();
                return Ok(delta.to_string());
            }
        }
        Ok(String::new())
    }

    /// Whatever is still held back at the end of the stream (an incomplete character comes
    /// out as a replacement character).
    pub fn finish(&mut self, tok: &dyn TokenDecoder) -> Result<String, DecodeError> {
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tok.decode(&self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(full.get(prefix.len()..).unwrap_or_default().to_string())
    }
}
