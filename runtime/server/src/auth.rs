//! The API key. One middleware guards every route but the [`OPEN_PATHS`], so a route added
//! later is guarded without anyone remembering to: the check is not in the handlers.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::AppState;

/// Routes anyone may call without the key: liveness for load balancers, metrics for
/// Prometheus, and the API's own description (as vLLM leaves them open).
pub const OPEN_PATHS: [&str; 3] = ["/health", "/metrics", "/openapi.json"];

/// Whether the bearer token in `headers` is `key`, compared in constant time (the time does
/// not depend on where the first differing byte is, nor on the key's length beyond the
/// longer of the two).
pub fn key_matches(headers: &HeaderMap, key: &str) -> bool {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (a, b) = (given.as_bytes(), key.as_bytes());
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// Refuses a request to a guarded route without the server's key (401, OpenAI's body).
pub async fn require_key(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    match &st.api_key {
        Some(key)
            if !OPEN_PATHS.contains(&req.uri().path()) && !key_matches(req.headers(), key) =>
        {
            ApiError::unauthorized().into_response()
        }
        _ => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", v.parse().unwrap());
        h
    }

    #[test]
    fn only_the_exact_key_matches() {
        assert!(key_matches(&bearer("Bearer sekret"), "sekret"));
        for wrong in [
            "Bearer sekre",
            "Bearer sekret!",
            "Bearer Sekret",
            "sekret",
            "Bearer ",
            "",
        ] {
            assert!(!key_matches(&bearer(wrong), "sekret"), "{wrong:?}");
        }
        // Lengths that differ by a multiple of 256 are still different.
        let long = format!("Bearer {}", "a".repeat(256 + 3));
        assert!(!key_matches(&bearer(&long), "aaa"));
        assert!(!key_matches(&HeaderMap::new(), "sekret"));
    }
}
