//! The OpenAI request shapes pagedrt accepts (plus vLLM's extra sampling fields).
//!
//! Each derives [`ToSchema`]: the OpenAPI document (`openapi`) is made from these very types,
//! so what it says a request may hold is what the server parses. The numeric bounds in the
//! `#[schema]` attributes are the ones `validate` enforces (a test in `openapi` holds them
//! together).

use serde::Deserialize;
use serde_json::Value as Json;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// `prompt`: a string, a list of strings, a list of token ids, or a list of such lists.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `logprobs`: completions give how many alternatives (0-20), chat completions `true` (with
/// `top_logprobs`) or `false`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum Logprobs {
    Flag(bool),
    Count(u32),
}

// The untagged enums' schemas are written out: utoipa's derive takes no bounds on a variant,
// and written here they use `validate`'s own limits.

fn string(min_length: usize) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(min_length))
}

fn token_ids() -> ArrayBuilder {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0)),
        )
        .min_items(Some(1))
}

impl PartialSchema for Prompt {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(string(0))
            .item(ArrayBuilder::new().items(string(0)).min_items(Some(1)))
            .item(token_ids())
            .item(ArrayBuilder::new().items(token_ids()).min_items(Some(1)))
            .into()
    }
}
impl ToSchema for Prompt {}

impl PartialSchema for Stop {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(string(1))
            .item(
                ArrayBuilder::new()
                    .items(string(1))
                    .max_items(Some(crate::caps::MAX_STOPS)),
            )
            .into()
    }
}
impl ToSchema for Stop {}

impl PartialSchema for Logprobs {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Boolean))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
                    .maximum(Some(crate::caps::MAX_LOGPROBS as f64)),
            )
            .into()
    }
}
impl ToSchema for Logprobs {}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// A last chunk with the token counts.
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by completions and chat completions.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct Sampling {
    #[schema(minimum = 1)]
    pub max_tokens: Option<i64>,
    /// Chat's newer name for `max_tokens` (wins when both are given).
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<i64>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    /// Samples per prompt.
    #[schema(minimum = 1, maximum = 64)]
    pub n: Option<i64>,
    /// Accepted when it equals `n` (nothing ranks extra samples).
    #[schema(minimum = 1, maximum = 64)]
    pub best_of: Option<i64>,
    pub stop: Option<Stop>,
    pub seed: Option<u64>,
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f64>,
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f64>,
    /// 0 or -1: no top-k cut.
    #[schema(minimum = -1)]
    pub top_k: Option<i64>,
    #[schema(minimum = 0, maximum = 1)]
    pub min_p: Option<f64>,
    #[schema(exclusive_minimum = 0, maximum = 10)]
    pub repetition_penalty: Option<f64>,
    #[serde(default)]
    pub ignore_eos: bool,
    /// Lower runs first (with `--policy priority`).
    pub priority: Option<i32>,
    /// Requests with different salts share no prefix-cache pages.
    pub cache_salt: Option<String>,
    /// Answer with server-sent events (`text/event-stream`).
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Accepted for compatibility; pagedrt does not use it.
    #[allow(dead_code)]
    pub user: Option<String>,
    pub logprobs: Option<Logprobs>,
    /// With `logprobs: true`: how many alternatives per token.
    #[schema(minimum = 0, maximum = 20)]
    pub top_logprobs: Option<i64>,
}

/// The structured-output fields of completions and chat completions: OpenAI's
/// `response_format`, vLLM's `structured_outputs` and its older `guided_*` fields
/// (`structured::spec_of` reads them).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct StructuredFields {
    #[schema(schema_with = crate::structured::response_format_schema)]
    pub response_format: Option<Json>,
    /// vLLM's: one of `json`, `regex`, `choice`, `grammar`, `json_object`.
    #[schema(value_type = Option<Object>)]
    pub structured_outputs: Option<Json>,
    /// A JSON schema (an object, or a string holding one).
    #[schema(value_type = Option<Value>)]
    pub guided_json: Option<Json>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    /// A Lark grammar.
    pub guided_grammar: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CompletionRequest {
    /// The served model's name (`GET /v1/models`).
    pub model: String,
    pub prompt: Prompt,
    #[serde(flatten)]
    pub sampling: Sampling,
    #[serde(flatten)]
    pub structured: StructuredFields,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatMessageIn {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// A string, a list of `{"type": "text", "text": ...}` parts, or null (an assistant
    /// message that only calls tools).
    #[serde(default)]
    #[schema(value_type = Value)]
    pub content: Json,
    /// An assistant message's calls: `{"id", "type": "function", "function": {"name",
    /// "arguments"}}`, the arguments a JSON string.
    #[schema(value_type = Option<Vec<Object>>)]
    pub tool_calls: Option<Vec<Json>>,
    /// A `tool` message: the call it answers.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatRequest {
    /// The served model's name (`GET /v1/models`).
    pub model: String,
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessageIn>,
    #[serde(flatten)]
    pub sampling: Sampling,
    #[serde(flatten)]
    pub structured: StructuredFields,
    /// `[{"type": "function", "function": {"name", "description", "parameters"}}]`.
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Json>,
    /// `none`, `auto`, `required` or `{"type": "function", "function": {"name"}}`.
    #[schema(value_type = Option<Value>)]
    pub tool_choice: Option<Json>,
    pub parallel_tool_calls: Option<bool>,
}

/// Exactly one of `prompt` and `messages`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct TokenizeRequest {
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessageIn>>,
    /// With `messages`: end the rendered conversation with the assistant's turn.
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub add_generation_prompt: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct DetokenizeRequest {
    pub tokens: Vec<u32>,
}
