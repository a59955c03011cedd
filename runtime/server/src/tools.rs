//! A request's tools and `tool_choice`, checked, and what they mean for the prompt, the
//! output constraint and the parser (`tool_calls`).
//!
//! - `none`: no tools in the prompt, no parsing.
//! - `auto` (the default when tools are given): the tools go into the prompt and the output
//!   is parsed in the model's own format; a model without a format pagedrt parses (its
//!   chat template shows none, and the server was not told one with `--tool-call-parser`)
//!   gets a 400 saying so.
//! - `required` and a named function work on every model, as in vLLM: the output is
//!   constrained to a JSON array of calls (`[{"name", "parameters"}]`, at most one unless
//!   `parallel_tool_calls`) or to the named function's arguments, so the arguments always
//!   parse against the function's schema.

use engine::structured::StructuredOutput;
use models::tokenizer::ToolCallFormat;
use serde_json::{json, Value as Json};

use crate::caps;
use crate::error::ApiError;
use crate::tool_calls::CallShape;

/// One function tool.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionTool {
    pub name: String,
    pub description: Option<String>,
    /// The arguments' JSON schema (an empty object schema when none was given).
    pub parameters: Json,
}

impl FunctionTool {
    /// The definition as chat templates receive it (`{"type": "function", "function":
    /// {...}}`, as transformers passes `tools`).
    pub fn template_json(&self) -> Json {
        let mut f = json!({"name": self.name, "parameters": self.parameters});
        if let Some(d) = &self.description {
            f["description"] = json!(d);
        }
        json!({"type": "function", "function": f})
    }
}

/// What a request does with its tools.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolPlan {
    /// Definitions for the prompt (empty: none).
    pub prompt_tools: Vec<Json>,
    /// How the output carries calls (`None`: it does not).
    pub shape: Option<CallShape>,
    /// The output constraint that enforces the calls (`required`, named).
    pub constraint: Option<StructuredOutput>,
}

impl ToolPlan {
    pub fn none() -> Self {
        ToolPlan {
            prompt_tools: vec![],
            shape: None,
            constraint: None,
        }
    }
}

fn bad(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::bad_request(message, Some(param))
}

/// Reads `tools`: a list of function tools. `flat` is the Responses API's shape (`{"type":
/// "function", "name", "parameters"}`), otherwise chat's (`{"type": "function", "function":
/// {...}}`).
pub fn parse_tools(v: &Json, flat: bool) -> Result<Vec<FunctionTool>, ApiError> {
    let Json::Array(items) = v else {
        return Err(bad("tools must be a list", "tools"));
    };
    caps::count("tools", items.len(), caps::MAX_TOOLS, "tools")?;
    let mut out: Vec<FunctionTool> = Vec::with_capacity(items.len());
    for (i, t) in items.iter().enumerate() {
        let kind = t.get("type").and_then(Json::as_str).unwrap_or("");
        if kind != "function" {
            return Err(bad(
                format!("tools[{i}]: only function tools are supported, not `{kind}`"),
                "tools",
            ));
        }
        let f = if flat {
            t
        } else {
            t.get("function").unwrap_or(&Json::Null)
        };
        let Some(name) = f.get("name").and_then(Json::as_str) else {
            return Err(bad(format!("tools[{i}] needs a function name"), "tools"));
        };
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
        if !valid {
            return Err(bad(
                format!("tools[{i}]: `{name}` is not a valid function name (1-64 of a-z, A-Z, 0-9, _, -, .)"),
                "tools",
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(bad(format!("tools: `{name}` is defined twice"), "tools"));
        }
        let parameters = match f.get("parameters") {
            None | Some(Json::Null) => json!({"type": "object", "properties": {}}),
            Some(p @ Json::Object(_)) => {
                caps::schema_size("tools", caps::json_bytes(p))?;
                p.clone()
            }
            Some(_) => {
                return Err(bad(
                    format!("tools[{i}]: parameters must be a JSON schema object"),
                    "tools",
                ))
            }
        };
        out.push(FunctionTool {
            name: name.to_string(),
            description: f
                .get("description")
                .and_then(Json::as_str)
                .map(str::to_string),
            parameters,
        });
    }
    Ok(out)
}

/// The choice a request made.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

/// Reads `tool_choice` (`flat`: the Responses API's `{"type": "function", "name"}`).
pub fn parse_choice(v: &Json, flat: bool) -> Result<ToolChoice, ApiError> {
    Ok(match v {
        Json::String(s) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(bad(
                    format!("tool_choice `{other}`: use none, auto, required or a function"),
                    "tool_choice",
                ))
            }
        },
        Json::Object(o) if o.get("type").and_then(Json::as_str) == Some("function") => {
            let name = if flat {
                o.get("name")
            } else {
                o.get("function").and_then(|f| f.get("name"))
            };
            match name.and_then(Json::as_str) {
                Some(n) => ToolChoice::Named(n.to_string()),
                None => return Err(bad("tool_choice names no function", "tool_choice")),
            }
        }
        _ => {
            return Err(bad(
                "tool_choice must be none, auto, required or {\"type\": \"function\", ...}",
                "tool_choice",
            ))
        }
    })
}

/// What `tools` and `tool_choice` mean for this request on a model whose output format is
/// `format` (`None`: none pagedrt can parse).
pub fn plan(
    tools: &[FunctionTool],
    choice: Option<ToolChoice>,
    parallel: bool,
    format: Option<ToolCallFormat>,
) -> Result<ToolPlan, ApiError> {
    let choice = match (choice, tools.is_empty()) {
        (None, true) | (Some(ToolChoice::None), _) => return Ok(ToolPlan::none()),
        (Some(_), true) => {
            return Err(bad(
                "tool_choice is only allowed when tools are given",
                "tool_choice",
            ))
        }
        (None, false) => ToolChoice::Auto,
        (Some(c), false) => c,
    };
    let prompt_tools: Vec<Json> = tools.iter().map(FunctionTool::template_json).collect();
    let (shape, constraint) = match choice {
        ToolChoice::None => unreachable!("returned above"),
        ToolChoice::Auto => match format {
            Some(ToolCallFormat::Hermes) => (
                CallShape::Hermes {
                    names: tools.iter().map(|t| t.name.clone()).collect(),
                },
                None,
            ),
            None => {
                return Err(bad(
                    "tool_choice `auto` needs a model whose tool-call format pagedrt can \
                     parse, and this model's chat template shows none (pagedrt parses \
                     Hermes-style <tool_call> blocks). Use tool_choice `required` or a named \
                     function (these work on every model), or start the server with \
                     --tool-call-parser hermes",
                    "tool_choice",
                ))
            }
        },
        ToolChoice::Required => {
            let alternatives: Vec<Json> = tools
                .iter()
                .map(|t| {
                    json!({"type": "object",
                           "properties": {"name": {"const": t.name}, "parameters": t.parameters},
                           "required": ["name", "parameters"], "additionalProperties": false})
                })
                .collect();
            let mut schema = json!({"type": "array", "minItems": 1,
                                    "items": {"anyOf": alternatives}});
            if !parallel {
                schema["maxItems"] = json!(1);
            }
            (
                CallShape::Array,
                Some(StructuredOutput::JsonSchema {
                    schema,
                    any_whitespace: false,
                }),
            )
        }
        ToolChoice::Named(name) => {
            let Some(t) = tools.iter().find(|t| t.name == name) else {
                let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
                return Err(bad(
                    format!(
                        "tool_choice names `{name}`, which is not among the tools ({})",
                        names.join(", ")
                    ),
                    "tool_choice",
                ));
            };
            (
                CallShape::Named(name),
                Some(StructuredOutput::JsonSchema {
                    schema: t.parameters.clone(),
                    any_whitespace: false,
                }),
            )
        }
    };
    Ok(ToolPlan {
        prompt_tools,
        shape: Some(shape),
        constraint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Vec<FunctionTool> {
        parse_tools(
            &json!([{"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                    {"type": "function", "function": {"name": "now"}}]),
            false,
        )
        .unwrap()
    }

    #[test]
    fn choices_plan_their_shape_and_constraint() {
        let t = tools();
        assert_eq!(t[1].parameters["type"], "object");
        assert_eq!(
            plan(&t, Some(ToolChoice::None), true, None).unwrap(),
            ToolPlan::none()
        );
        let auto = plan(&t, None, true, Some(ToolCallFormat::Hermes)).unwrap();
        assert!(matches!(auto.shape, Some(CallShape::Hermes { .. })) && auto.constraint.is_none());
        let e = plan(&t, None, true, None).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.param.as_deref()),
            (400, Some("tool_choice"))
        );
        let req = plan(&t, Some(ToolChoice::Required), false, None).unwrap();
        let Some(StructuredOutput::JsonSchema { schema, .. }) = req.constraint else {
            panic!("{req:?}")
        };
        assert_eq!(schema["maxItems"], 1);
        assert_eq!(
            schema["items"]["anyOf"][0]["properties"]["name"]["const"],
            "get_weather"
        );
        let named = plan(&t, Some(ToolChoice::Named("now".into())), true, None).unwrap();
        assert_eq!(named.shape, Some(CallShape::Named("now".into())));
        let e = plan(&t, Some(ToolChoice::Named("nope".into())), true, None).unwrap_err();
        assert!(e.message.contains("nope"), "{}", e.message);
        assert!(plan(&[], Some(ToolChoice::Auto), true, None).is_err());
    }

    #[test]
    fn bad_tools_and_choices_are_refused() {
        for v in [
            json!({"type": "function"}),
            json!([{"type": "code_interpreter"}]),
            json!([{"type": "function", "function": {"name": "has space"}}]),
            json!([{"type": "function", "function": {"name": "f", "parameters": 3}}]),
            json!([{"type": "function", "function": {"name": "f"}},
                   {"type": "function", "function": {"name": "f"}}]),
        ] {
            assert!(parse_tools(&v, false).is_err(), "{v}");
        }
        assert!(parse_choice(&json!("sometimes"), false).is_err());
        assert_eq!(
            parse_choice(&json!({"type": "function", "name": "f"}), true).unwrap(),
            ToolChoice::Named("f".into())
        );
    }
}
