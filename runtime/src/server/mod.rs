//! The OpenAI-compatible HTTP server (axum on tokio) over an [`EngineHandle`].

mod api_types;
mod error;
mod handlers;
pub mod metrics;
mod validate;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::engine::handle::EngineHandle;
use crate::model::tokenizer::Tokenizer;

pub use error::ApiError;

/// What every handler shares.
pub struct AppState {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub served_model_name: String,
    pub api_key: Option<String>,
    pub max_model_len: usize,
    pub vocab_size: usize,
    pub next_id: AtomicU64,
}

/// Request bodies above this size are refused (413).
pub const MAX_BODY_BYTES: usize = 4 << 20;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/models", get(handlers::models))
        .route("/tokenize", post(handlers::tokenize))
        .route("/detokenize", post(handlers::detokenize))
        .route("/health", get(handlers::health))
        .route("/metrics", get(handlers::metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Builds the shared state for a CPU engine core and starts its engine thread.
pub fn state_for<B>(
    core: crate::engine::EngineCore<B>,
    served_model_name: String,
    api_key: Option<String>,
) -> Result<Arc<AppState>, String>
where
    B: crate::backend::Backend + Send + 'static,
    B::Buf: Send,
{
    let tokenizer = core
        .tokenizer()
        .cloned()
        .ok_or("this model has no tokenizer")?;
    let max_model_len = core
        .scheduler()
        .config()
        .max_model_len
        .unwrap_or_else(|| core.model().max_len());
    let vocab_size = core.model().config.vocab_size;
    let _ = metrics::handle();
    let engine = EngineHandle::spawn(core, |c, o| metrics::record_step(c, o));
    Ok(Arc::new(AppState {
        engine,
        tokenizer,
        served_model_name,
        api_key,
        max_model_len,
        vocab_size,
        next_id: AtomicU64::new(0),
    }))
}

/// Serves until SIGINT/SIGTERM, then stops accepting and lets in-flight requests finish.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>) -> std::io::Result<()> {
    let engine = state.engine.clone();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("installing a SIGTERM handler");
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            #[cfg(not(unix))]
            let _ = ctrl_c.await;
        })
        .await?;
    engine.shutdown();
    Ok(())
}
