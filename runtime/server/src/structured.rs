//! Structured outputs from request fields: OpenAI's `response_format` (`json_object`,
//! `json_schema`), vLLM's `structured_outputs` (`json`, `regex`, `choice`, `grammar`,
//! `json_object`) and its older top-level `guided_*` fields, read into one
//! [`StructuredOutput`] and compiled (once per distinct spec: `GrammarCompiler`'s cache) before
//! the request is submitted, so a spec llguidance cannot compile is a 400 naming the field.

use std::sync::Arc;

use engine::structured::{GrammarCompiler, StructuredOutput};
use engine::Constraint;
use serde_json::Value as Json;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::RefOr;

use crate::api_types::StructuredFields;
use crate::caps;
use crate::error::ApiError;

/// A spec and the request field it came from (errors name it).
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub output: StructuredOutput,
    pub param: &'static str,
}

fn bad(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::bad_request(message, Some(param))
}

/// The document's schema of `response_format` (and of the Responses API's `text.format`):
/// an object whose `type` is one of the three [`response_format`] reads.
pub fn response_format_schema() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .property(
            "type",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["text", "json_object", "json_schema"])),
        )
        .required("type")
        .description(Some(
            "`{\"type\": \"text\"}`, `{\"type\": \"json_object\"}` or `{\"type\": \"json_schema\", \
             \"json_schema\": {\"name\", \"schema\", \"strict\"}}`.",
        ))
}

/// `response_format` as OpenAI defines it (`None` for `text`).
pub fn response_format(v: &Json, param: &'static str) -> Result<Option<Spec>, ApiError> {
    let kind = v.get("type").and_then(Json::as_str).unwrap_or("");
    let output = match kind {
        "text" => return Ok(None),
        "json_object" => StructuredOutput::JsonObject {
            any_whitespace: false,
        },
        "json_schema" => {
            // Chat completions nest the schema under `json_schema`; the Responses API's
            // `text.format` has it at the top.
            let holder = v.get("json_schema").unwrap_or(v);
            match holder.get("schema") {
                Some(schema @ Json::Object(_)) => StructuredOutput::JsonSchema {
                    schema: schema.clone(),
                    any_whitespace: false,
                },
                Some(_) => return Err(bad("the JSON schema must be an object", param)),
                None => return Err(bad("json_schema needs a `schema`", param)),
            }
        }
        other => {
            return Err(bad(
                format!(
                    "unsupported {param} type `{other}` (supported: text, json_object, \
                     json_schema)"
                ),
                param,
            ))
        }
    };
    sized(Spec { output, param }).map(Some)
}

/// `spec`, if its schema, regex, grammar or choices are within [`caps::MAX_SCHEMA_BYTES`].
fn sized(spec: Spec) -> Result<Spec, ApiError> {
    let bytes = match &spec.output {
        StructuredOutput::JsonSchema { schema, .. } => caps::json_bytes(schema),
        StructuredOutput::Regex(r) | StructuredOutput::Lark(r) => r.len(),
        StructuredOutput::Choice(c) => c.iter().map(String::len).sum(),
        StructuredOutput::JsonObject { .. } => 0,
    };
    caps::schema_size(spec.param, bytes)?;
    Ok(spec)
}

/// vLLM's `structured_outputs` object (or the `guided_*` fields gathered into one).
fn vllm_params(v: &Json, param: &'static str) -> Result<Option<Spec>, ApiError> {
    let Json::Object(o) = v else {
        return Err(bad(format!("{param} must be an object"), param));
    };
    // `disable_any_whitespace: false` asks for the whitespace a model likes.
    let any_whitespace = o.get("disable_any_whitespace") == Some(&Json::Bool(false));
    let mut kinds = vec![];
    if let Some(j) = o.get("json").filter(|j| !j.is_null()) {
        let schema = match j {
            Json::String(s) => serde_json::from_str(s)
                .map_err(|e| bad(format!("{param}.json is not JSON: {e}"), param))?,
            other => other.clone(),
        };
        kinds.push(StructuredOutput::JsonSchema {
            schema,
            any_whitespace,
        });
    }
    if let Some(r) = o.get("regex").filter(|j| !j.is_null()) {
        let r = r
            .as_str()
            .ok_or_else(|| bad(format!("{param}.regex must be a string"), param))?;
        kinds.push(StructuredOutput::Regex(r.to_string()));
    }
    if let Some(c) = o.get("choice").filter(|j| !j.is_null()) {
        let c: Vec<String> = serde_json::from_value(c.clone())
            .map_err(|_| bad(format!("{param}.choice must be a list of strings"), param))?;
        kinds.push(StructuredOutput::Choice(c));
    }
    if let Some(g) = o.get("grammar").filter(|j| !j.is_null()) {
        let g = g
            .as_str()
            .ok_or_else(|| bad(format!("{param}.grammar must be a string"), param))?;
        kinds.push(StructuredOutput::Lark(g.to_string()));
    }
    if o.get("json_object") == Some(&Json::Bool(true)) {
        kinds.push(StructuredOutput::JsonObject { any_whitespace });
    }
    if o.get("structural_tag").is_some_and(|t| !t.is_null()) {
        return Err(bad(
            format!("{param}.structural_tag is not supported (json, regex, choice, grammar and json_object are)"),
            param,
        ));
    }
    match kinds.len() {
        0 => Ok(None),
        1 => kinds
            .pop()
            .map(|output| sized(Spec { output, param }))
            .transpose(),
        _ => Err(bad(
            format!(
                "give one kind of structured output in {param}, not {}",
                kinds.len()
            ),
            param,
        )),
    }
}

/// The one structured output a request asks for, if any.
pub fn spec_of(f: &StructuredFields) -> Result<Option<Spec>, ApiError> {
    let mut specs = vec![];
    if let Some(rf) = &f.response_format {
        specs.extend(response_format(rf, "response_format")?);
    }
    if let Some(so) = &f.structured_outputs {
        specs.extend(vllm_params(so, "structured_outputs")?);
    }
    let mut guided = serde_json::Map::new();
    if let Some(j) = &f.guided_json {
        guided.insert("json".into(), j.clone());
    }
    if let Some(r) = &f.guided_regex {
        guided.insert("regex".into(), Json::String(r.clone()));
    }
    if let Some(c) = &f.guided_choice {
        guided.insert("choice".into(), serde_json::json!(c));
    }
    if let Some(g) = &f.guided_grammar {
        guided.insert("grammar".into(), Json::String(g.clone()));
    }
    if !guided.is_empty() {
        specs.extend(vllm_params(&Json::Object(guided), "guided_json")?);
    }
    if specs.len() > 1 {
        return Err(bad(
            "give one of response_format and structured_outputs (or guided_*), not both",
            "response_format",
        ));
    }
    Ok(specs.pop())
}

/// Compiles `spec` (on a blocking thread: a large schema takes milliseconds) into a fresh
/// constraint; a spec that does not compile is a 400 naming its field.
pub async fn compile(
    compiler: &Result<Arc<GrammarCompiler>, String>,
    spec: Option<Spec>,
) -> Result<Option<Constraint>, ApiError> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let compiler = compiler.as_ref().map_err(|why| {
        bad(
            format!("structured outputs are unavailable for this model: {why}"),
            spec.param,
        )
    })?;
    let c = compiler.clone();
    let output = spec.output.clone();
    let res = tokio::task::spawn_blocking(move || c.compile(&output))
        .await
        .map_err(|e| ApiError::internal(format!("compiling the grammar: {e}")))?;
    res.map(Some)
        .map_err(|e| bad(format!("{}: {e}", spec.param), spec.param))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Json) -> StructuredFields {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn each_field_gives_its_spec() {
        let s = spec_of(&fields(json!({"response_format": {"type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": true}}})))
        .unwrap()
        .unwrap();
        assert_eq!(s.param, "response_format");
        assert!(matches!(s.output, StructuredOutput::JsonSchema { .. }));
        let s = spec_of(&fields(
            json!({"structured_outputs": {"choice": ["a", "b"]}}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            s.output,
            StructuredOutput::Choice(vec!["a".into(), "b".into()])
        );
        let s = spec_of(&fields(json!({"guided_regex": "[0-9]+"})))
            .unwrap()
            .unwrap();
        assert_eq!(s.output, StructuredOutput::Regex("[0-9]+".into()));
        let s = spec_of(&fields(
            json!({"structured_outputs": {"json": "{\"type\": \"integer\"}"}}),
        ))
        .unwrap()
        .unwrap();
        assert!(
            matches!(s.output, StructuredOutput::JsonSchema { schema, .. } if schema["type"] == "integer")
        );
        assert!(
            spec_of(&fields(json!({"response_format": {"type": "text"}})))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn conflicting_or_unknown_fields_are_refused() {
        for v in [
            json!({"response_format": {"type": "yaml"}}),
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
            json!({"structured_outputs": {"regex": "a", "choice": ["a"]}}),
            json!({"structured_outputs": {"structural_tag": "{}"}}),
            json!({"response_format": {"type": "json_object"}, "guided_regex": "a"}),
            json!({"structured_outputs": {"json": "{not json"}}),
        ] {
            let e = spec_of(&fields(v.clone())).unwrap_err();
            assert_eq!(e.status, 400, "{v}");
        }
    }
}
