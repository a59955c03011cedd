//! The JSON bodies the server answers with (the non-streamed ones, and the error body).
//!
//! Why typed: the handlers serialize these structs, and the OpenAPI document (`openapi`) is
//! derived from the same structs, so the document cannot promise a field the server does not
//! send. Streamed chunks are built where they are streamed (`handlers`, `chat`, `responses`)
//! and documented as `text/event-stream`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value as Json;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;

/// A string field that always holds one value (`"object": "text_completion"`): a one-variant
/// enum, so the document says exactly that value. (Its schema is written out: utoipa's derive
/// does not see a `serde(rename)` whose value comes through a macro.)
macro_rules! constant {
    ($(#[$m:meta])* $name:ident = $value:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
        pub enum $name {
            #[default]
            #[serde(rename = $value)]
            Is,
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some([$value]))
                    .into()
            }
        }

        impl ToSchema for $name {}
    };
}

constant!(TextCompletionObject = "text_completion");
constant!(ChatCompletionObject = "chat.completion");
constant!(ListObject = "list");
constant!(ModelObject = "model");
constant!(ResponseObjectKind = "response");
constant!(AssistantRole = "assistant");
constant!(FunctionType = "function");
constant!(OutputTextType = "output_text");

/// Why a choice ended: `stop` (an end token or a stop string), `length` (`max_tokens` or the
/// context), `abort`, or `tool_calls` (a chat choice that stopped after calling tools).
pub fn finish_reason_schema() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["stop", "length", "abort", "tool_calls"]))
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `rate_limit_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// A machine-readable reason (`model_not_found`, `invalid_api_key`, `queue_full`, ...).
    pub code: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose K/V came from the prefix cache.
    pub cached_tokens: usize,
}

/// Token counts of a completion or chat completion.
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

/// The legacy completions log-probabilities: parallel lists, one entry per token.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    /// Per token, the most likely alternatives' text and log-probability.
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    /// Where each token starts in the choice's text (bytes).
    pub text_offset: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    #[schema(schema_with = finish_reason_schema)]
    pub finish_reason: Option<&'static str>,
}

/// `POST /v1/completions` without `stream`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CompletionResponse {
    pub id: String,
    pub object: TextCompletionObject,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Usage,
}

/// One alternative of a chat token.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    /// The token's UTF-8 bytes.
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

/// The chat log-probabilities: one entry per token.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments, a JSON object as a string.
    pub arguments: String,
}

/// A call the assistant made.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: FunctionType,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AssistantMessage {
    pub role: AssistantRole,
    /// Null when the message only calls tools.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub logprobs: Option<ChatLogprobs>,
    pub message: AssistantMessage,
    #[schema(schema_with = finish_reason_schema)]
    pub finish_reason: Option<&'static str>,
}

/// `POST /v1/chat/completions` without `stream`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatCompletionResponse {
    pub id: String,
    pub object: ChatCompletionObject,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

/// The served model.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    pub object: ModelObject,
    pub created: u64,
    pub owned_by: String,
    /// Prompt plus output tokens, at most.
    pub max_model_len: usize,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelList {
    pub object: ListObject,
    pub data: Vec<ModelCard>,
}

/// `POST /tokenize`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenizeResponse {
    pub count: usize,
    pub max_model_len: usize,
    pub tokens: Vec<u32>,
}

/// `POST /detokenize`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DetokenizeResponse {
    pub prompt: String,
}

/// A response's state: `completed`, `incomplete` (it hit `max_output_tokens`), `in_progress`
/// (the first streamed events) or `failed` (the engine stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResponseStatus {
    Completed,
    Incomplete,
    InProgress,
    Failed,
}

/// An output item's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    InProgress,
    Completed,
}

/// The text of an output message.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OutputText {
    #[serde(rename = "type")]
    pub kind: OutputTextType,
    pub text: String,
    /// Always empty.
    #[schema(value_type = Vec<Object>)]
    pub annotations: Vec<Json>,
}

impl OutputText {
    pub fn empty() -> Self {
        OutputText {
            kind: OutputTextType::Is,
            text: String::new(),
            annotations: vec![],
        }
    }
}

/// One item of a response's output: an assistant message or a function call.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    Message {
        id: String,
        status: ItemStatus,
        role: AssistantRole,
        content: Vec<OutputText>,
    },
    FunctionCall {
        id: String,
        call_id: String,
        name: String,
        /// The arguments, a JSON object as a string.
        arguments: String,
        status: ItemStatus,
    },
}

impl OutputItem {
    pub fn id(&self) -> &str {
        match self {
            OutputItem::Message { id, .. } | OutputItem::FunctionCall { id, .. } => id,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
pub struct InputTokensDetails {
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
pub struct OutputTokensDetails {
    /// Always 0.
    pub reasoning_tokens: usize,
}

/// Token counts of a response.
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
pub struct ResponseUsage {
    pub input_tokens: usize,
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: usize,
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: usize,
}

/// Why a response failed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResponseError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IncompleteDetails {
    /// `max_output_tokens`.
    pub reason: String,
}

/// `POST /v1/responses` without `stream` (and the `response` of its streamed events).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResponseObject {
    pub id: String,
    pub object: ResponseObjectKind,
    /// Unix seconds.
    pub created_at: u64,
    pub status: ResponseStatus,
    pub model: String,
    pub output: Vec<OutputItem>,
    pub error: Option<ResponseError>,
    pub incomplete_details: Option<IncompleteDetails>,
    pub usage: Option<ResponseUsage>,
    #[serde(flatten)]
    pub echo: ResponseEcho,
}

/// The request's settings, as the response repeats them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResponseEcho {
    pub instructions: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub temperature: f32,
    pub top_p: f32,
    pub parallel_tool_calls: bool,
    /// As the request gave it (`auto` by default).
    #[schema(value_type = Value)]
    pub tool_choice: Json,
    /// As the request gave them.
    #[schema(value_type = Vec<Object>)]
    pub tools: Json,
    /// As the request gave it (`{"format": {"type": "text"}}` by default).
    #[schema(value_type = Object)]
    pub text: Json,
    /// Always null: responses are not stored.
    #[schema(value_type = Option<String>)]
    pub previous_response_id: Option<String>,
    /// Always false.
    pub store: bool,
    /// Always `disabled`.
    pub truncation: String,
    #[schema(value_type = Object)]
    pub metadata: Json,
}
