//! The OpenAI-compatible HTTP server (axum on tokio) over an [`EngineHandle`].
//!
//! Owns: the HTTP API (request types, validation, handlers, SSE streaming, logprobs), its
//! error bodies, Prometheus metrics, auth and graceful shutdown. Knows nothing of: the CLI,
//! the tools; of the engine it sees only `EngineHandle` and the types it exchanges.

mod api_responses;
mod api_types;
pub mod auth;
mod caps;
mod chat;
mod error;
mod generation;
mod handlers;
pub mod listener;
mod logprobs;
pub mod metrics;
pub mod openapi;
mod response_builder;
mod responses;
mod structured;
mod tool_calls;
mod tools;
mod validate;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use engine::handle::{EngineHandle, Rebuild};
use engine::structured::GrammarCompiler;
use engine::RequestLimits;
use models::tokenizer::{Tokenizer, ToolCallFormat};

pub use error::ApiError;
pub use listener::ConnLimits;

/// What every handler shares.
pub struct AppState {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub served_model_name: String,
    pub api_key: Option<String>,
    /// The engine's request limits (vocabulary, longest sequence).
    pub limits: RequestLimits,
    pub next_id: AtomicU64,
    /// Compiles structured outputs over this model's vocabulary (or why it cannot).
    pub grammars: Result<Arc<GrammarCompiler>, String>,
    /// The tool-call format `tool_choice: auto` parses (`None`: auto is refused).
    pub tool_format: Option<ToolCallFormat>,
}

/// Which tool-call format the server parses (`--tool-call-parser`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToolCallParser {
    /// The format the model's chat template shows, if pagedrt parses it.
    #[default]
    Auto,
    /// Hermes `<tool_call>` blocks, whatever the template (with a template that has no
    /// tools, the system-message rendering asks for exactly this).
    Hermes,
    /// None: `tool_choice: auto` is refused.
    None,
}

/// How the server treats requests, beyond the engine.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    pub tool_call_parser: ToolCallParser,
}

/// Request bodies above this size are refused (413).
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// Declares the routes once: [`ROUTES`] (what the OpenAPI document must describe; its test
/// checks it does) and the router's table are made from the same list.
macro_rules! routes {
    ($($method:ident $path:literal => $handler:path),* $(,)?) => {
        /// Every route the server offers: (method, path).
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        fn routes() -> Router<Arc<AppState>> {
            Router::new()$(.route($path, $method($handler)))*
                .fallback(handlers::no_route)
                .method_not_allowed_fallback(handlers::method_not_allowed)
        }
    };
}

routes! {
    post "/v1/completions" => handlers::completions,
    post "/v1/chat/completions" => chat::chat_completions,
    post "/v1/responses" => responses::create,
    get "/v1/models" => handlers::models,
    post "/tokenize" => handlers::tokenize,
    post "/detokenize" => handlers::detokenize,
    get "/health" => handlers::health,
    get "/metrics" => handlers::metrics,
    get "/openapi.json" => openapi::openapi_json,
}

/// The API's routes over `state`, with request logging and the body size limit (the
/// listener adds the body timeout, [`serve_with`]).
pub fn router(state: Arc<AppState>) -> Router {
    routes()
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

/// One log line per request: method, path, status and time to the response head (a stream's
/// body continues after it).
async fn log_request(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if status >= 500 {
        tracing::error!(%method, path, status, ms, "request");
    } else if status >= 400 {
        tracing::warn!(%method, path, status, ms, "request");
    } else {
        tracing::info!(%method, path, status, ms, "request");
    }
    res
}

/// Builds the shared state for an engine core and its tokenizer (the one the core decodes
/// with), and starts the core's engine thread. With `rebuild`, a panic on the engine thread
/// rebuilds the engine in place (`--restart-engine`); without, it stops the server.
pub fn state_for<B>(
    core: engine::EngineCore<B>,
    rebuild: Option<Rebuild<B>>,
    tokenizer: Arc<Tokenizer>,
    served_model_name: String,
    api_key: Option<String>,
) -> Arc<AppState>
where
    B: engine::backend::Backend + Send + 'static,
    B::Buf: Send,
{
    state_with(
        core,
        rebuild,
        tokenizer,
        served_model_name,
        api_key,
        ServerOptions::default(),
    )
}

/// [`state_for`] with [`ServerOptions`].
pub fn state_with<B>(
    core: engine::EngineCore<B>,
    rebuild: Option<Rebuild<B>>,
    tokenizer: Arc<Tokenizer>,
    served_model_name: String,
    api_key: Option<String>,
    options: ServerOptions,
) -> Arc<AppState>
where
    B: engine::backend::Backend + Send + 'static,
    B::Buf: Send,
{
    let _ = metrics::handle();
    let on_step =
        |c: &engine::EngineCore<B>, r: Option<&engine::StepReport>| metrics::record_step(c, r);
    let engine = match rebuild {
        Some(rebuild) => EngineHandle::spawn_restartable(core, on_step, rebuild),
        None => EngineHandle::spawn(core, on_step),
    };
    let limits = engine.limits();
    let grammars = tokenizer
        .token_env(limits.vocab_size)
        .map_err(|e| e.to_string())
        .and_then(|env| GrammarCompiler::new(env, limits.vocab_size).map_err(|e| e.to_string()))
        .map(Arc::new);
    if let Err(e) = &grammars {
        tracing::warn!("structured outputs are unavailable: {e}");
    }
    let tool_format = match options.tool_call_parser {
        ToolCallParser::Auto => tokenizer.tool_call_format(),
        ToolCallParser::Hermes => Some(ToolCallFormat::Hermes),
        ToolCallParser::None => None,
    };
    Arc::new(AppState {
        limits,
        engine,
        tokenizer,
        served_model_name,
        api_key,
        next_id: AtomicU64::new(0),
        grammars,
        tool_format,
    })
}

/// How long the server keeps answering after its engine died, before it stops.
pub const DEATH_NOTICE: std::time::Duration = std::time::Duration::from_secs(2);

/// How long in-flight requests may run after SIGINT/SIGTERM before they are cut off.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Why serving ended other than by a signal.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The engine thread panicked and was not rebuilt: the process should exit non-zero so
    /// that a supervisor restarts it.
    #[error("{0}; the server stopped (run with --restart-engine to rebuild the engine instead)")]
    EngineDied(String),
}

/// How a server runs: the shutdown grace period and the connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    pub grace: std::time::Duration,
    pub limits: ConnLimits,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            grace: SHUTDOWN_GRACE,
            limits: ConnLimits::default(),
        }
    }
}

/// [`serve_with`] with the default connection limits and `grace`.
pub async fn serve_with_grace(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    grace: std::time::Duration,
) -> Result<(), ServeError> {
    let opts = ServeOptions {
        grace,
        ..ServeOptions::default()
    };
    serve_with(listener, state, opts).await
}

/// Serves until SIGINT/SIGTERM, then stops accepting and lets in-flight requests finish for
/// up to `opts.grace`; whatever still runs then is aborted (its pages freed) and the call
/// returns. If the engine thread dies of a panic, serving stops the same way and the error
/// says so. Connections are served under `opts.limits` ([`listener`]).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    opts: ServeOptions,
) -> Result<(), ServeError> {
    let grace = opts.grace;
    let engine = state.engine.clone();
    let stopping = Arc::new(tokio::sync::Notify::new());
    let notify = stopping.clone();
    let died = Arc::new(parking_lot::Mutex::new(None));
    let (watch, died2) = (engine.clone(), died.clone());
    let body_limit = opts.limits.body_timeout;
    let app = router(state).layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            listener::body_timeout(body_limit, req, next)
        },
    ));
    let stop = async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            msg = watch.died() => {
                tracing::error!("{msg}: shutting down in {DEATH_NOTICE:?}");
                *died2.lock() = Some(msg);
                // Keep answering (503 on /health, the in-flight requests' 500s) long enough
                // for a load balancer's health check to see the engine is gone.
                tokio::time::sleep(DEATH_NOTICE).await;
            }
        }
        tracing::info!("shutting down: no new connections; in-flight requests have {grace:?}");
        notify.notify_one();
    };
    let server = listener::serve_connections(listener, app, opts.limits, stop);
    let deadline = async {
        stopping.notified().await;
        tokio::time::sleep(grace).await;
    };
    let res = tokio::select! {
        r = server => r,
        _ = deadline => {
            tracing::warn!("grace period over: aborting the requests still running");
            Ok(())
        }
    };
    engine.shutdown();
    res?;
    let died = died.lock().take();
    died.map_or(Ok(()), |msg| Err(ServeError::EngineDied(msg)))
}

/// [`serve_with_grace`] with [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
) -> Result<(), ServeError> {
    serve_with_grace(listener, state, SHUTDOWN_GRACE).await
}
