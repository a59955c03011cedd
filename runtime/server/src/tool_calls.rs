//! Tool calls out of generated text, as it streams: a [`ToolCallStream`] takes each text
//! delta and says what it is (content, the start of a call, a piece of a call's arguments).
//!
//! Why one parser for both shapes: the non-streamed message is what the same parser makes of
//! the whole text, so streamed `delta.tool_calls` always reassemble to `message.tool_calls`.
//! The formats (`docs/structured-outputs-and-tools.md`):
//! - `auto` on a Hermes-format model: `<tool_call>{"name", "arguments"}</tool_call>` blocks
//!   anywhere in the text; the rest is content. A block that does not parse, or names no
//!   tool of the request, stays content.
//! - `required`: the constrained output is a JSON array of `{"name", "parameters"}` (as in
//!   vLLM); each element is a call, emitted once it is complete.
//! - a named function: the constrained output is the arguments object itself, streamed as
//!   it comes.

use serde_json::{json, Value};

use crate::api_responses::{FunctionCall, FunctionType, ToolCall};

/// What a piece of generated text turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Content(String),
    /// Call `index` begins (arguments follow as [`Piece::Args`]).
    Call {
        index: usize,
        id: String,
        name: String,
    },
    Args {
        index: usize,
        args: String,
    },
}

/// How the request's output carries tool calls.
#[derive(Debug, Clone, PartialEq)]
pub enum CallShape {
    /// Hermes `<tool_call>` blocks among content; `names` are the request's tools.
    Hermes { names: Vec<String> },
    /// A JSON array of `{"name", "parameters"}` (tool_choice `required`).
    Array,
    /// The arguments of this function, alone (a named tool_choice).
    Named(String),
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// One choice's parser.
#[derive(Debug, Clone)]
pub struct ToolCallStream {
    shape: CallShape,
    /// The id of every call begins with this (unique per response) and ends with its index.
    id_prefix: String,
    buf: String,
    in_block: bool,
    calls: usize,
    /// `Array`: nesting depth and string state of the text so far.
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl ToolCallStream {
    pub fn new(shape: CallShape, id_prefix: String) -> Self {
        ToolCallStream {
            shape,
            id_prefix,
            buf: String::new(),
            in_block: false,
            calls: 0,
            depth: 0,
            in_string: false,
            escaped: false,
        }
    }

    /// Whether any call was found so far.
    pub fn called(&self) -> bool {
        self.calls > 0
    }

    fn start_call(&mut self, name: String, out: &mut Vec<Piece>) -> usize {
        let index = self.calls;
        self.calls += 1;
        out.push(Piece::Call {
            index,
            id: format!("{}{index}", self.id_prefix),
            name,
        });
        index
    }

    /// The pieces `delta` completes.
    pub fn push(&mut self, delta: &str) -> Vec<Piece> {
        let mut out = vec![];
        match self.shape.clone() {
            CallShape::Named(name) => {
                if self.calls == 0 {
                    self.start_call(name, &mut out);
                }
                if !delta.is_empty() {
                    out.push(Piece::Args {
                        index: 0,
                        args: delta.to_string(),
                    });
                }
            }
            CallShape::Array => self.push_array(delta, &mut out),
            CallShape::Hermes { names } => {
                self.buf.push_str(delta);
                self.drain_hermes(&names, &mut out);
            }
        }
        out
    }

    /// What is left at the end of the text: an unfinished block is content after all.
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.buf);
        match self.shape {
            CallShape::Hermes { .. } if !rest.is_empty() => {
                let text = if self.in_block {
                    format!("{OPEN}{rest}")
                } else {
                    rest
                };
                self.in_block = false;
                vec![Piece::Content(text)]
            }
            _ => vec![],
        }
    }

    fn drain_hermes(&mut self, names: &[String], out: &mut Vec<Piece>) {
        loop {
            if self.in_block {
                let Some(end) = self.buf.find(CLOSE) else {
                    return;
                };
                let body: String = self.buf[..end].to_string();
                self.buf.drain(..end + CLOSE.len());
                self.in_block = false;
                match parse_call(&body, "arguments") {
                    Some((name, args)) if names.contains(&name) => {
                        let index = self.start_call(name, out);
                        out.push(Piece::Args { index, args });
                    }
                    _ => out.push(Piece::Content(format!("{OPEN}{body}{CLOSE}"))),
                }
                continue;
            }
            if let Some(start) = self.buf.find(OPEN) {
                if start > 0 {
                    out.push(Piece::Content(self.buf[..start].to_string()));
                }
                self.buf.drain(..start + OPEN.len());
                self.in_block = true;
                continue;
            }
            // Hold back a tail that may still become `<tool_call>`.
            let keep = (1..OPEN.len())
                .rev()
                .find(|&k| self.buf.ends_with(&OPEN[..k]))
                .unwrap_or(0);
            let cut = self.buf.len() - keep;
            if cut > 0 {
                out.push(Piece::Content(self.buf[..cut].to_string()));
                self.buf.drain(..cut);
            }
            return;
        }
    }

    /// Splits a JSON array into its elements as they complete (depth 1 is inside the array).
    fn push_array(&mut self, delta: &str, out: &mut Vec<Piece>) {
        for c in delta.chars() {
            if self.depth >= 2 {
                self.buf.push(c);
            }
            if self.in_string {
                match (self.escaped, c) {
                    (true, _) => self.escaped = false,
                    (false, '\\') => self.escaped = true,
                    (false, '"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => self.in_string = true,
                '[' | '{' => {
                    self.depth += 1;
                    if self.depth == 2 {
                        self.buf = c.to_string();
                    }
                }
                ']' | '}' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 1 {
                        let element = std::mem::take(&mut self.buf);
                        if let Some((name, args)) = parse_call(&element, "parameters") {
                            let index = self.start_call(name, out);
                            out.push(Piece::Args { index, args });
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// `{"name": ..., <args_key>: {...}}` → (name, arguments as compact JSON text). Arguments
/// given as a JSON string are taken as they are.
fn parse_call(text: &str, args_key: &str) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(text.trim()).ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let args = match v.get(args_key).or_else(|| v.get("arguments")) {
        Some(Value::String(s)) => s.clone(),
        Some(a) => a.to_string(),
        None => "{}".into(),
    };
    Some((name, args))
}

/// A whole choice: its content and its calls (`{"id", "type", "function": {"name",
/// "arguments"}}`), from the pieces of its text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedMessage {
    pub content: String,
    pub calls: Vec<ToolCall>,
}

impl ParsedMessage {
    pub fn add(&mut self, pieces: &[Piece]) {
        for p in pieces {
            match p {
                Piece::Content(s) => self.content.push_str(s),
                Piece::Call { id, name, .. } => self.calls.push(ToolCall {
                    id: id.clone(),
                    kind: FunctionType::Is,
                    function: FunctionCall {
                        name: name.clone(),
                        arguments: String::new(),
                    },
                }),
                Piece::Args { index, args } => {
                    if let Some(c) = self.calls.get_mut(*index) {
                        c.function.arguments.push_str(args);
                    }
                }
            }
        }
    }

    /// Parses all of `text` at once.
    pub fn of(stream: &mut ToolCallStream, text: &str) -> Self {
        let mut m = ParsedMessage::default();
        m.add(&stream.push(text));
        m.add(&stream.finish());
        m
    }
}

/// The chat-completion chunk `delta`s of `pieces` (OpenAI's shapes: a call's first delta has
/// its id, type and name with empty arguments; later ones only argument text).
pub fn deltas(pieces: &[Piece]) -> Vec<Value> {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Content(s) => json!({"content": s}),
            Piece::Call { index, id, name } => json!({"tool_calls": [{
                "index": index, "id": id, "type": "function",
                "function": {"name": name, "arguments": ""},
            }]}),
            Piece::Args { index, args } => json!({"tool_calls": [{
                "index": index, "function": {"arguments": args},
            }]}),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hermes() -> ToolCallStream {
        ToolCallStream::new(
            CallShape::Hermes {
                names: vec!["get_weather".into()],
            },
            "call_".into(),
        )
    }

    /// The message the pieces of `text` split at every byte boundary make.
    fn streamed(mut s: ToolCallStream, text: &str) -> ParsedMessage {
        let mut m = ParsedMessage::default();
        for (i, c) in text.char_indices() {
            m.add(&s.push(&text[i..i + c.len_utf8()]));
        }
        m.add(&s.finish());
        m
    }

    #[test]
    fn hermes_blocks_become_calls_and_the_rest_content() {
        let text = "Let me check.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": \
                    {\"city\": \"Paris\"}}\n</tool_call><tool_call>{\"name\": \"nope\"}</tool_call> <tool";
        let whole = ParsedMessage::of(&mut hermes(), text);
        assert_eq!(
            whole.content,
            "Let me check.<tool_call>{\"name\": \"nope\"}</tool_call> <tool"
        );
        assert_eq!(whole.calls.len(), 1);
        assert_eq!(whole.calls[0].function.name, "get_weather");
        assert_eq!(whole.calls[0].function.arguments, "{\"city\":\"Paris\"}");
        assert_eq!(whole.calls[0].id, "call_0");
        assert_eq!(streamed(hermes(), text), whole);
        let open = ParsedMessage::of(&mut hermes(), "<tool_call>{\"name\"");
        assert_eq!(open.content, "<tool_call>{\"name\"");
    }

    #[test]
    fn arrays_and_named_calls_parse_as_they_stream() {
        let text =
            r#"[{"name": "a", "parameters": {"s": "x]}\"{"}}, {"name": "b", "parameters": {}}]"#;
        let s = ToolCallStream::new(CallShape::Array, "c".into());
        let m = streamed(s.clone(), text);
        assert_eq!(m.calls.len(), 2);
        assert_eq!(m.calls[0].function.arguments, r#"{"s":"x]}\"{"}"#);
        assert_eq!(m.calls[1].function.name, "b");
        assert_eq!(m, ParsedMessage::of(&mut s.clone(), text));
        let named = ToolCallStream::new(CallShape::Named("f".into()), "c".into());
        let m = streamed(named, r#"{"x": 1}"#);
        assert_eq!(m.calls[0].function.arguments, r#"{"x": 1}"#);
        assert_eq!(m.content, "");
    }
}
