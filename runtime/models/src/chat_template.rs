//! Chat templates (Hugging Face's Jinja, rendered with minijinja), with tools.
//!
//! A template that reads the `tools` variable gets the request's tool definitions there, as
//! transformers passes them (`[{"type": "function", "function": {...}}]`), and assistant
//! messages keep their `tool_calls` with the arguments as an object (templates print them
//! with `tojson`). A template that never reads `tools` (SmolLM2's) gets them through the
//! *system-message rendering* documented in `docs/structured-outputs-and-tools.md`: a
//! Hermes-style tools block added to the system message, assistant tool calls written back
//! as `<tool_call>` blocks and `tool` messages as `<tool_response>` blocks in a user turn, so
//! every model sees its tools and their results in one format it can follow.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// One chat message, as a template sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant message's calls: `{"id", "type": "function", "function": {"name",
    /// "arguments"}}`, the arguments as a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Json>>,
    /// A `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A `tool` message: the function's name (some templates print it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    /// A plain message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
            name: None,
        }
    }
}

/// The tool-call output formats pagedrt can parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolCallFormat {
    /// `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Hermes, Qwen 2/2.5/3 and
    /// the system-message rendering).
    Hermes,
}

impl ToolCallFormat {
    /// The format a template's own text says its model writes: a template that prints
    /// `<tool_call>` is Hermes-style.
    pub fn of_template(template: &str) -> Option<Self> {
        template
            .contains("<tool_call>")
            .then_some(ToolCallFormat::Hermes)
    }
}

/// The tools block the system-message rendering adds (Hermes's wording of it).
pub fn tools_system_prompt(tools: &[Json]) -> String {
    let mut s = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for t in tools {
        s.push('\n');
        s.push_str(&t.to_string());
    }
    s.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    s
}

/// One call as the system-message rendering writes it back into an assistant turn.
fn tool_call_block(call: &Json) -> String {
    let f = &call["function"];
    let v = serde_json::json!({"name": f["name"], "arguments": f["arguments"]});
    format!("<tool_call>\n{v}\n</tool_call>")
}

/// `messages` with `tools` folded in for a template that does not read `tools`.
pub fn render_tools_into_messages(messages: &[ChatMessage], tools: &[Json]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    let block = tools_system_prompt(tools);
    match messages.first() {
        Some(m) if m.role == "system" && !tools.is_empty() => {
            out.push(ChatMessage::new(
                "system",
                format!("{}\n\n{block}", m.content),
            ));
        }
        Some(m) if m.role == "system" => out.push(ChatMessage::new("system", &m.content)),
        _ if !tools.is_empty() => out.push(ChatMessage::new("system", block)),
        _ => {}
    }
    let skip = usize::from(messages.first().is_some_and(|m| m.role == "system"));
    for m in &messages[skip..] {
        match (m.role.as_str(), &m.tool_calls) {
            ("assistant", Some(calls)) => {
                let mut parts: Vec<String> = vec![];
                if !m.content.is_empty() {
                    parts.push(m.content.clone());
                }
                parts.extend(calls.iter().map(tool_call_block));
                out.push(ChatMessage::new("assistant", parts.join("\n")));
            }
            ("tool", _) => {
                let text = format!("<tool_response>\n{}\n</tool_response>", m.content);
                // Consecutive results of parallel calls share one user turn.
                match out.last_mut() {
                    Some(prev)
                        if prev.role == "user" && prev.content.ends_with("</tool_response>") =>
                    {
                        prev.content.push('\n');
                        prev.content.push_str(&text);
                    }
                    _ => out.push(ChatMessage::new("user", text)),
                }
            }
            _ => out.push(ChatMessage::new(m.role.clone(), m.content.clone())),
        }
    }
    out
}

/// Instructions one rendering may run. A model file's template is code from whoever made the
/// file: without a bound, `{% for i in range(10**9) %}` would hold a request (and a core)
/// forever. Real templates over a capped conversation (`server::caps::MAX_MESSAGES`) run well
/// under a million.
pub const TEMPLATE_FUEL: u64 = 20_000_000;
/// How deep macros, includes and nested blocks may recurse.
pub const TEMPLATE_RECURSION: usize = 64;
/// Bytes one rendering may write: far beyond any context window, far below the memory of
/// the machine.
pub const MAX_RENDERED_BYTES: usize = 16 << 20;

/// The template's environment, with Hugging Face's helpers (`raise_exception`, Python string
/// methods), and the bounds above.
pub fn environment(template: &str) -> Result<minijinja::Environment<'_>, minijinja::Error> {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_recursion_limit(TEMPLATE_RECURSION);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", template)?;
    Ok(env)
}

/// A writer that refuses to grow past `cap` bytes.
struct Capped {
    out: Vec<u8>,
    cap: usize,
    overflowed: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + b.len() > self.cap {
            self.overflowed = true;
            return Err(std::io::Error::other("output cap"));
        }
        self.out.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders `template` over `ctx` within [`TEMPLATE_FUEL`], [`TEMPLATE_RECURSION`] and
/// [`MAX_RENDERED_BYTES`]: a hostile or broken template is an error, never a hang or an
/// unbounded string.
pub fn render(template: &str, ctx: minijinja::Value) -> Result<String, minijinja::Error> {
    let env = environment(template)?;
    let mut w = Capped {
        out: Vec::new(),
        cap: MAX_RENDERED_BYTES,
        overflowed: false,
    };
    let rendered = env.get_template("chat")?.render_captured_to(ctx, &mut w);
    if w.overflowed {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("the rendered prompt exceeds {MAX_RENDERED_BYTES} bytes"),
        ));
    }
    rendered?;
    String::from_utf8(w.out).map_err(|e| {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("the template wrote invalid UTF-8: {e}"),
        )
    })
}

/// Whether a template reads the `tools` variable.
pub fn reads_tools(template: &str) -> bool {
    environment(template)
        .ok()
        .and_then(|env| {
            env.get_template("chat")
                .ok()
                .map(|t| t.undeclared_variables(false).contains("tools"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hostile_templates_are_errors_not_hangs() {
        let ctx = minijinja::context! { messages => Vec::<ChatMessage>::new() };
        let endless =
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let deep = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
        let huge = "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}";
        for (what, tpl, needle) in [
            ("endless loop", endless, "fuel"),
            ("unbounded recursion", deep, "recursion"),
            ("unbounded output", huge, "exceeds"),
        ] {
            let started = std::time::Instant::now();
            let err = render(tpl, ctx.clone()).expect_err(what).to_string();
            assert!(err.contains(needle), "{what}: {err}");
            assert!(
                started.elapsed().as_secs() < 60,
                "{what} ran {:?}",
                started.elapsed()
            );
        }
        assert_eq!(render("{{ 'a' ~ 'b' }}", ctx).unwrap(), "ab");
    }

    #[test]
    fn tools_fold_into_the_system_message_and_results_into_user_turns() {
        let tools = vec![json!({"type": "function", "function": {"name": "f"}})];
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(vec![json!({"id": "c1", "type": "function",
            "function": {"name": "f", "arguments": {"x": 1}}})]);
        let mut r1 = ChatMessage::new("tool", "42");
        r1.tool_call_id = Some("c1".into());
        let msgs = vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "go"),
            call,
            r1.clone(),
            r1,
        ];
        let out = render_tools_into_messages(&msgs, &tools);
        assert_eq!(out.len(), 4);
        assert!(out[0].content.starts_with("Be brief.\n\n# Tools"));
        assert!(out[0]
            .content
            .contains(r#"{"type":"function","function":{"name":"f"}}"#));
        assert_eq!(
            out[2].content,
            "<tool_call>\n{\"name\":\"f\",\"arguments\":{\"x\":1}}\n</tool_call>"
        );
        assert_eq!(out[3].role, "user");
        assert_eq!(
            out[3]
                .content
                .matches("<tool_response>\n42\n</tool_response>")
                .count(),
            2
        );
        let no_system = render_tools_into_messages(&msgs[1..2], &tools);
        assert_eq!(no_system[0].role, "system");
        assert!(reads_tools("{% for t in tools %}{{ t }}{% endfor %}"));
        assert!(!reads_tools("{{ messages[0]['content'] }}"));
        assert_eq!(
            ToolCallFormat::of_template("...<tool_call>..."),
            Some(ToolCallFormat::Hermes)
        );
    }
}
