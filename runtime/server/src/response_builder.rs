//! The output items of a Responses API response, built as the tool-call parser's pieces
//! arrive, and the named events that build them when streamed (`responses.rs` serves them):
//! one builder for both, so a stream always adds up to the non-streamed response.

use axum::response::sse::Event;
use serde_json::{json, Value as Json};

use crate::api_responses::{
    AssistantRole, IncompleteDetails, InputTokensDetails, ItemStatus, OutputItem, OutputText,
    OutputTokensDetails, ResponseEcho, ResponseObject, ResponseObjectKind, ResponseStatus,
    ResponseUsage,
};
use crate::generation::Usage;
use crate::tool_calls::Piece;

/// Every event a streamed response sends (the OpenAPI document lists them; `emit` checks
/// it sends no other).
pub(crate) const EVENTS: [&str; 13] = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
    "response.incomplete",
    "response.failed",
];

/// The output items of a response as its text is parsed, and the events that build them.
pub(crate) struct ResponseBuilder {
    id: String,
    pub(crate) items: Vec<OutputItem>,
    /// The item still growing (a message or a function call), by index into `items`.
    open: Option<usize>,
    seq: u64,
    pub(crate) events: Vec<(String, Json)>,
}

/// An item as an event carries it.
pub(crate) fn item_json(item: &OutputItem) -> Json {
    json!(item)
}

impl ResponseBuilder {
    pub(crate) fn new(id: String) -> Self {
        ResponseBuilder {
            id,
            items: vec![],
            open: None,
            seq: 0,
            events: vec![],
        }
    }

    pub(crate) fn emit(&mut self, kind: &str, mut body: Json) {
        debug_assert!(EVENTS.contains(&kind), "{kind} is not in EVENTS");
        body["type"] = json!(kind);
        body["sequence_number"] = json!(self.seq);
        self.seq += 1;
        self.events.push((kind.to_string(), body));
    }

    /// Ends the growing item (its `done` events).
    pub(crate) fn close(&mut self) {
        let Some(i) = self.open.take() else { return };
        let item_id = self.items[i].id().to_string();
        let done = match &mut self.items[i] {
            OutputItem::Message {
                status, content, ..
            } => {
                *status = ItemStatus::Completed;
                let part = content.first().cloned().unwrap_or_else(OutputText::empty);
                [
                    (
                        "response.output_text.done",
                        json!({"item_id": item_id, "output_index": i, "content_index": 0,
                               "text": part.text, "logprobs": []}),
                    ),
                    (
                        "response.content_part.done",
                        json!({"item_id": item_id, "output_index": i, "content_index": 0,
                               "part": part}),
                    ),
                ]
                .to_vec()
            }
            OutputItem::FunctionCall {
                status, arguments, ..
            } => {
                *status = ItemStatus::Completed;
                vec![(
                    "response.function_call_arguments.done",
                    json!({"item_id": item_id, "output_index": i, "arguments": arguments}),
                )]
            }
        };
        for (kind, body) in done {
            self.emit(kind, body);
        }
        let item = item_json(&self.items[i]);
        self.emit(
            "response.output_item.done",
            json!({"output_index": i, "item": item}),
        );
    }

    pub(crate) fn open_item(&mut self, item: OutputItem) -> usize {
        self.close();
        let i = self.items.len();
        let body = json!({"output_index": i, "item": item_json(&item)});
        self.items.push(item);
        self.open = Some(i);
        self.emit("response.output_item.added", body);
        i
    }

    /// The open message's index, opening one (and its text part) if none is open.
    pub(crate) fn open_message(&mut self) -> usize {
        if let Some(i) = self.open {
            if matches!(self.items[i], OutputItem::Message { .. }) {
                return i;
            }
        }
        let item_id = format!("msg_{}_{}", self.id, self.items.len());
        let i = self.open_item(OutputItem::Message {
            id: item_id.clone(),
            status: ItemStatus::InProgress,
            role: AssistantRole::Is,
            content: vec![],
        });
        let part = OutputText::empty();
        self.emit(
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": i, "content_index": 0, "part": part}),
        );
        if let OutputItem::Message { content, .. } = &mut self.items[i] {
            content.push(part);
        }
        i
    }

    pub(crate) fn add(&mut self, pieces: &[Piece]) {
        for p in pieces {
            match p {
                Piece::Content(s) if s.is_empty() => {}
                Piece::Content(s) => {
                    let i = self.open_message();
                    if let OutputItem::Message { content, .. } = &mut self.items[i] {
                        if let Some(part) = content.first_mut() {
                            part.text.push_str(s);
                        }
                    }
                    let item_id = self.items[i].id().to_string();
                    self.emit(
                        "response.output_text.delta",
                        json!({"item_id": item_id,
                        "output_index": i, "content_index": 0, "delta": s, "logprobs": []}),
                    );
                }
                Piece::Call { id, name, .. } => {
                    self.open_item(OutputItem::FunctionCall {
                        id: format!("fc_{}_{}", self.id, self.items.len()),
                        call_id: id.clone(),
                        name: name.clone(),
                        arguments: String::new(),
                        status: ItemStatus::InProgress,
                    });
                }
                Piece::Args { args, .. } => {
                    let Some(i) = self.open else { continue };
                    let OutputItem::FunctionCall { id, arguments, .. } = &mut self.items[i] else {
                        continue;
                    };
                    arguments.push_str(args);
                    let item_id = id.clone();
                    self.emit(
                        "response.function_call_arguments.delta",
                        json!({"item_id": item_id,
                        "output_index": i, "delta": args}),
                    );
                }
            }
        }
    }
}

/// The fixed parts of the response object.
pub(crate) struct ResponseHead {
    pub(crate) id: String,
    pub(crate) created_at: u64,
    pub(crate) model: String,
    pub(crate) echo: ResponseEcho,
}

impl ResponseHead {
    pub(crate) fn object(
        &self,
        status: ResponseStatus,
        output: &[OutputItem],
        usage: Option<&Usage>,
    ) -> ResponseObject {
        ResponseObject {
            id: self.id.clone(),
            object: ResponseObjectKind::Is,
            created_at: self.created_at,
            status,
            model: self.model.clone(),
            output: output.to_vec(),
            error: None,
            incomplete_details: (status == ResponseStatus::Incomplete).then(|| IncompleteDetails {
                reason: "max_output_tokens".into(),
            }),
            usage: usage.map(|u| ResponseUsage {
                input_tokens: u.prompt,
                input_tokens_details: InputTokensDetails {
                    cached_tokens: u.cached,
                },
                output_tokens: u.completion,
                output_tokens_details: OutputTokensDetails::default(),
                total_tokens: u.prompt + u.completion,
            }),
            echo: self.echo.clone(),
        }
    }
}

pub(crate) fn sse(kind: &str, body: &Json) -> Event {
    Event::default().event(kind).data(body.to_string())
}
