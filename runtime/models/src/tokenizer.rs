//! Tokenizer: Hugging Face `tokenizer.json` plus `tokenizer_config.json` (BOS, chat template)
//! and `generation_config.json` (EOS ids), chat templates rendered with minijinja, and an
//! incremental detokenizer for streaming.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::chat_template::{reads_tools, render, render_tools_into_messages};
use crate::error::ModelError;

pub use crate::chat_template::{ChatMessage, ToolCallFormat};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    /// The tokenizer.json text of a tokenizer that has no file (the dummy models').
    json: Option<String>,
    add_bos: bool,
    pub bos_id: Option<u32>,
    /// Token ids that end generation (from generation_config.json, else the EOS token).
    pub eos_ids: Vec<u32>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    chat_template: Option<String>,
    /// Whether `chat_template` reads `tools`: found once when the tokenizer loads (it takes
    /// compiling the template) instead of on every chat request.
    template_reads_tools: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .finish_non_exhaustive()
    }
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer {
        path: path.to_path_buf(),
        problem: e.to_string(),
    }
}

fn read_json(path: &Path) -> Result<Option<Json>, ModelError> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| ModelError::format(path, format!("invalid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ModelError::io(path, e)),
    }
}

/// A special token in tokenizer_config.json is a string or `{"content": ...}`.
fn token_str(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads the tokenizer of a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(tok_err(
                &path,
                "missing (a model directory needs tokenizer.json)",
            ));
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| tok_err(&path, e))?;
        let cfg = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
        let gen = read_json(&dir.join("generation_config.json"))?.unwrap_or(Json::Null);
        let bos_token = token_str(cfg.get("bos_token"));
        let eos_token = token_str(cfg.get("eos_token"));
        let bos_id = bos_token.as_deref().and_then(|t| inner.token_to_id(t));
        let mut eos_ids: Vec<u32> = match gen.get("eos_token_id") {
            Some(Json::Number(n)) => n.as_u64().map(|v| v as u32).into_iter().collect(),
            Some(Json::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect(),
            _ => vec![],
        };
        if eos_ids.is_empty() {
            eos_ids.extend(eos_token.as_deref().and_then(|t| inner.token_to_id(t)));
        }
        let chat_template = cfg
            .get("chat_template")
            .and_then(Json::as_str)
            .map(str::to_string);
        Ok(Tokenizer {
            add_bos: cfg
                .get("add_bos_token")
                .and_then(Json::as_bool)
                .unwrap_or(false),
            template_reads_tools: chat_template.as_deref().is_some_and(reads_tools),
            chat_template,
            inner,
            path,
            json: None,
            bos_id,
            eos_ids,
            bos_token,
            eos_token,
        })
    }

    /// The byte-level tokenizer of dummy models (see `model::dummy`), with ChatML specials
    /// and a ChatML template.
    pub fn byte_level() -> Result<Self, ModelError> {
        let path = PathBuf::from("dummy:tokenizer");
        let json = crate::dummy::byte_level_tokenizer_json();
        let inner =
            tokenizers::Tokenizer::from_bytes(json.as_bytes()).map_err(|e| tok_err(&path, e))?;
        let json = Some(json);
        let template = r#"{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"#;
        Ok(Tokenizer {
            bos_id: inner.token_to_id("<|im_start|>"),
            eos_ids: inner.token_to_id("<|im_end|>").into_iter().collect(),
            inner,
            path,
            json,
            add_bos: false,
            bos_token: Some("<|im_start|>".into()),
            eos_token: Some("<|im_end|>".into()),
            chat_template: Some(template.into()),
            template_reads_tools: reads_tools(template),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token ids of `text`. Special-token strings in the text (such as `<|im_start|>`) map to
    /// their ids; BOS is prepended only when `tokenizer_config.json` says `add_bos_token`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err(&self.path, e))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// How many tokens `text` is, without the BOS `encode` may add (for counting generated
    /// text).
    pub fn count_tokens(&self, text: &str) -> Result<usize, ModelError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err(&self.path, e))?;
        Ok(enc.len())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, ModelError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| tok_err(&self.path, e))
    }

    /// Every token's bytes as llguidance sees them (`toktrie_hf_tokenizers` over the same
    /// tokenizer.json), with this tokenizer's end-of-sequence ids, padded to the model's
    /// `model_vocab` logits: what `engine::structured::GrammarCompiler` compiles against.
    /// (That crate links its own copy of `tokenizers`, 0.21: no release builds on 0.22.)
    pub fn token_env(&self, model_vocab: usize) -> Result<engine::structured::TokEnv, ModelError> {
        let mut bt = match &self.json {
            Some(j) => toktrie_hf_tokenizers::ByteTokenizer::from_json_bytes(j.as_bytes()),
            None => toktrie_hf_tokenizers::ByteTokenizer::from_file(&self.path),
        }
        .map_err(|e| {
            tok_err(
                &self.path,
                format!("token bytes for structured outputs: {e}"),
            )
        })?;
        let vocab = self.vocab_size();
        let eos: Vec<u32> = self
            .eos_ids
            .iter()
            .copied()
            .filter(|&t| (t as usize) < vocab)
            .collect();
        if !eos.is_empty() {
            bt.set_eos_tokens(&eos);
        }
        bt.into_tok_env(Some(model_vocab.max(vocab))).map_err(|e| {
            tok_err(
                &self.path,
                format!("token bytes for structured outputs: {e}"),
            )
        })
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// Renders the chat template (with `add_generation_prompt`), as Hugging Face does.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        self.apply_chat_template_with_tools(messages, &[], add_generation_prompt)
    }

    /// Whether the chat template reads the `tools` variable (otherwise tools reach the model
    /// through the system-message rendering, `chat_template`).
    pub fn template_reads_tools(&self) -> bool {
        self.template_reads_tools
    }

    /// The tool-call format this model's template says it writes, if pagedrt parses it.
    pub fn tool_call_format(&self) -> Option<ToolCallFormat> {
        self.chat_template
            .as_deref()
            .and_then(ToolCallFormat::of_template)
    }

    /// Renders the chat template with tool definitions (`{"type": "function", "function":
    /// {...}}` each): through its `tools` variable if it reads one, else folded into the
    /// messages (`chat_template::render_tools_into_messages`).
    pub fn apply_chat_template_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[Json],
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        let tpl = self.chat_template.as_deref().ok_or_else(|| {
            tok_err(
                &self.path,
                "this model has no chat template (tokenizer_config.json)",
            )
        })?;
        let has_tool_turns = messages
            .iter()
            .any(|m| m.role == "tool" || m.tool_calls.is_some());
        let folded;
        let (messages, tools_var) = if self.template_reads_tools {
            (messages, (!tools.is_empty()).then_some(tools))
        } else if !tools.is_empty() || has_tool_turns {
            folded = render_tools_into_messages(messages, tools);
            (folded.as_slice(), None)
        } else {
            (messages, None)
        };
        let ctx = minijinja::context! {
            messages => messages,
            tools => tools_var,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        };
        render(tpl, ctx).map_err(|e| tok_err(&self.path, format!("chat template: {e}")))
    }
}

impl engine::detok::TokenDecoder for Tokenizer {
    fn decode(&self, ids: &[u32]) -> Result<String, engine::detok::DecodeError> {
        Tokenizer::decode(self, ids, false).map_err(|e| engine::detok::DecodeError(e.to_string()))
    }

    fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }
}
