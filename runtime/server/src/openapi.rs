//! `GET /openapi.json`: the OpenAPI 3.1 description of every route, derived by `utoipa` from
//! the request types (`api_types`), the response types (`api_responses`) and each handler's
//! `#[utoipa::path]` (its method, path, statuses and media types).
//!
//! What is added here rather than on each handler: the answers every route can give because
//! of the middleware in front of all of them (`listener::body_timeout`: 400 for a body that
//! cannot be read, 408, 413), and the bearer security scheme. What depends on the running
//! server is filled in per request ([`document`]): the one model name requests must give,
//! and whether the API key is required at all (`--api-key`).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use crate::api_responses::{self as out, ErrorBody};
use crate::api_types as req;
use crate::AppState;

/// The name of the security scheme the protected operations name.
pub const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "pagedrt",
        description = "The OpenAI-compatible API of a pagedrt server (plus vLLM's sampling, \
            structured-output and tokenizer extensions). Every error is an OpenAI-style body \
            (`ErrorBody`). When the server runs with `--api-key`, the `/v1` and tokenizer \
            routes need `Authorization: Bearer <key>`; `/health`, `/metrics` and \
            `/openapi.json` never do.",
    ),
    paths(
        crate::handlers::completions,
        crate::chat::chat_completions,
        crate::responses::create,
        crate::handlers::models,
        crate::handlers::tokenize,
        crate::handlers::detokenize,
        crate::handlers::health,
        crate::handlers::metrics,
        openapi_json,
    ),
    components(
        schemas(
            req::CompletionRequest,
            req::ChatRequest,
            crate::responses::ResponsesRequest,
            req::TokenizeRequest,
            req::DetokenizeRequest,
            out::CompletionResponse,
            out::ChatCompletionResponse,
            out::ResponseObject,
            out::ModelList,
            out::TokenizeResponse,
            out::DetokenizeResponse,
            ErrorBody,
        ),
    ),
    modifiers(&Common),
)]
struct ApiDoc;

/// What every route shares: the body middleware's errors, and the security scheme.
struct Common;

/// What the body middleware answers on every route (`listener::body_timeout`).
const MIDDLEWARE_ERRORS: [(u16, &str); 3] = [
    (400, "The request body could not be read."),
    (
        408,
        "The request body did not arrive in time (`--body-timeout-s`).",
    ),
    (413, "The request body is over the size limit."),
];

impl Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The key the server was started with (`--api-key`); without one, \
                         no key is needed.",
                    ))
                    .build(),
            ),
        );
        for item in doc.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                for (status, why) in MIDDLEWARE_ERRORS {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error_response(why));
                }
            }
        }
    }
}

/// An error response: `ErrorBody` as JSON.
fn error_response(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into()
}

/// One server-sent event of a completions or chat stream, as a client parses it: `data`
/// holds one chunk as JSON (the last event's is `[DONE]`); the event has no name.
pub struct DataEvent;

impl PartialSchema for DataEvent {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .property(
                "event",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["message"])),
            )
            .property(
                "data",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .content_media_type("application/json"),
            )
            .required("data")
            .description(Some(
                "`data`: a chunk (`object` `text_completion` or `chat.completion.chunk`, each \
                 choice's new text or `delta`); with `stream_options.include_usage` a last \
                 chunk with no choices and the `usage`; then `[DONE]`.",
            ))
            .into()
    }
}
impl ToSchema for DataEvent {}

/// One event of a Responses API stream: `event` names it, `data` holds it as JSON (whose
/// `type` is the same name).
pub struct ResponseEvent;

impl PartialSchema for ResponseEvent {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .property(
                "event",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(crate::responses::EVENTS)),
            )
            .property(
                "data",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .content_media_type("application/json"),
            )
            .required("event")
            .required("data")
            .into()
    }
}
impl ToSchema for ResponseEvent {}

/// The document for a server that serves `model` and requires a key or not.
pub fn document(model: &str, requires_key: bool) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    // Requests must name the served model (anything else is a 404).
    if let Some(schemas) = doc.pointer_mut("/components/schemas") {
        for name in ["CompletionRequest", "ChatRequest", "ResponsesRequest"] {
            if let Some(s) = schemas.get_mut(name) {
                pin_model(s, model);
            }
        }
    }
    if !requires_key {
        if let Some(Value::Object(paths)) = doc.get_mut("paths") {
            for op in paths.values_mut().filter_map(Value::as_object_mut) {
                for o in op.values_mut().filter_map(Value::as_object_mut) {
                    o.remove("security");
                }
            }
        }
    }
    doc
}

/// Sets `enum: [model]` on every `model` property inside `schema`.
fn pin_model(schema: &mut Value, model: &str) {
    match schema {
        Value::Object(o) => {
            if let Some(m) = o.get_mut("properties").and_then(|p| p.get_mut("model")) {
                m["enum"] = json!([model]);
            }
            o.values_mut().for_each(|v| pin_model(v, model));
        }
        Value::Array(a) => a.iter_mut().for_each(|v| pin_model(v, model)),
        _ => {}
    }
}

/// This document, open like `/health`: clients and tools read it before they have a key.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    responses((status = 200, description = "This OpenAPI 3.1 document.", body = Object)),
)]
pub async fn openapi_json(State(st): State<Arc<AppState>>) -> Response {
    Json(document(&st.served_model_name, st.api_key.is_some())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
        &doc["components"]["schemas"][name]
    }

    /// The bounds the document states are the ones `validate` enforces.
    #[test]
    fn documented_bounds_are_the_validated_ones() {
        let doc = document("m", true);
        let s = &schema(&doc, "Sampling")["properties"];
        assert_eq!(s["n"]["maximum"], json!(crate::caps::MAX_N));
        assert_eq!(
            s["top_logprobs"]["maximum"],
            json!(crate::caps::MAX_LOGPROBS)
        );
        let stop = serde_json::to_string(&schema(&doc, "Stop")).unwrap();
        assert!(
            stop.contains(&format!("\"maxItems\":{}", crate::caps::MAX_STOPS)),
            "{stop}"
        );
        let lp = serde_json::to_string(&schema(&doc, "Logprobs")).unwrap();
        assert!(
            lp.contains(&format!("\"maximum\":{}", crate::caps::MAX_LOGPROBS)),
            "{lp}"
        );
    }

    #[test]
    fn the_model_is_pinned_and_security_follows_the_key() {
        let doc = document("tiny", false);
        assert_eq!(doc["openapi"], "3.1.0");
        let text = serde_json::to_string(schema(&doc, "ChatRequest")).unwrap();
        assert!(text.contains(r#""enum":["tiny"]"#), "{text}");
        let post = &doc["paths"]["/v1/completions"]["post"];
        assert!(post.get("security").is_none());
        let keyed = document("tiny", true);
        let post = &keyed["paths"]["/v1/completions"]["post"];
        assert_eq!(post["security"], json!([{BEARER: []}]));
        assert!(keyed["paths"]["/health"]["get"].get("security").is_none());
        for status in ["400", "408", "413"] {
            assert!(post["responses"][status].is_object(), "{status}");
        }
    }
}
