//! `pagedrt serve`: the OpenAI-compatible server.

use clap::Args;

use crate::choices::{LogFormat, ToolCallParser};

use super::engine_args::{with_engine, EngineArgs};
use engine::backend::Backend;
use std::sync::Arc;

use engine::handle::Rebuild;
use engine::{EngineCore, EngineError};
use models::tokenizer::Tokenizer;
use server::{serve_with, state_with, ConnLimits, ServeOptions, ServerOptions};

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    engine: EngineArgs,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The model name clients must send (default: the --model argument, or the default
    /// model's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on /v1 and tokenizer endpoints.
    #[arg(long, env = "PAGEDRT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Log lines as text or as one JSON object per line (level from RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Seconds in-flight requests may run after SIGINT/SIGTERM before they are aborted.
    #[arg(long, default_value_t = 20.0)]
    shutdown_grace_s: f64,
    /// Record every engine step's shape and duration (JSON lines) for
    /// `pagedrt bench calibrate --from-steps`.
    #[arg(long)]
    pub step_log: Option<std::path::PathBuf>,
    /// When the engine thread panics, rebuild the engine (reloading the model) and keep
    /// serving; without it the server answers 503 on /health, ends the requests in flight
    /// with a 500 and exits non-zero, for a supervisor to restart it.
    #[arg(long)]
    restart_engine: bool,
    /// Open connections at most; one more is answered 503 (Retry-After) and closed.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Seconds a client has to send a request's head (request line and headers), counted
    /// from when the server waits for it: idle and slowloris connections are closed after it.
    #[arg(long, default_value_t = 10.0)]
    header_timeout_s: f64,
    /// Seconds a client has to send a request's body once its head has arrived (408 after).
    #[arg(long, default_value_t = 30.0)]
    body_timeout_s: f64,
    /// The tool-call format `tool_choice: auto` parses: auto (what the chat template shows:
    /// Hermes `<tool_call>` blocks), hermes (always; for a template without tools the
    /// system-message rendering asks for it), or none (auto is refused). `required` and named
    /// tool choices work whatever this says.
    #[arg(long, value_enum, default_value_t = ToolCallParser::Auto)]
    tool_call_parser: ToolCallParser,
}

/// Opens the step log for appending (a rebuilt engine continues the same file).
fn open_step_log(path: &std::path::Path) -> anyhow::Result<Box<dyn std::io::Write + Send>> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Box::new(std::io::BufWriter::new(f)))
}

/// Installs the global log subscriber.
fn init_logging(format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let res = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    res.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    init_logging(a.log_format)?;
    let (any, tok) = a.engine.build()?;
    with_engine!(any, core => run_on(a, core, tok))
}

fn run_on<B>(a: ServeArgs, mut core: EngineCore<B>, tok: Arc<Tokenizer>) -> anyhow::Result<()>
where
    B: Backend + Send + 'static,
    B::Buf: Send,
{
    let name = a.served_model_name.clone().unwrap_or_else(|| {
        a.engine
            .model
            .clone()
            .unwrap_or_else(|| models::pull::DEFAULT_MODEL.to_string())
    });
    if let Some(path) = &a.step_log {
        // A fresh log per server run; a rebuilt engine appends to it.
        std::fs::File::create(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        core.set_step_log(open_step_log(path)?);
    }
    let kv = core.scheduler().kv_stats();
    tracing::info!(
        "{} KV pages of {} tokens ({} tokens in all); serving `{name}` on http://{}:{}",
        kv.device.total_blocks,
        kv.block_size,
        kv.device.total_blocks * kv.block_size,
        a.host,
        a.port
    );
    let rebuild = a.restart_engine.then(|| {
        let (args, step_log) = (a.engine.clone(), a.step_log.clone());
        let rebuild: Rebuild<B> = Box::new(move || {
            let fail = |e: anyhow::Error| EngineError::Config(format!("rebuilding: {e:#}"));
            let (any, _) = args.build().map_err(fail)?;
            let mut core = any
                .into_core::<B>()
                .ok_or_else(|| EngineError::Config("rebuilt on another device".into()))?;
            if let Some(path) = &step_log {
                core.set_step_log(open_step_log(path).map_err(fail)?);
            }
            Ok(core)
        });
        rebuild
    });
    let options = ServerOptions {
        tool_call_parser: a.tool_call_parser.server(),
    };
    let state = state_with(core, rebuild, tok, name, a.api_key.clone(), options);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let secs = |v: f64, flag: &str| {
            std::time::Duration::try_from_secs_f64(v).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
        };
        let opts = ServeOptions {
            grace: secs(a.shutdown_grace_s, "--shutdown-grace-s")?,
            limits: ConnLimits {
                max_connections: a.max_connections.max(1),
                header_timeout: secs(a.header_timeout_s, "--header-timeout-s")?,
                body_timeout: secs(a.body_timeout_s, "--body-timeout-s")?,
                ..ConnLimits::default()
            },
        };
        Ok(serve_with(listener, state, opts).await?)
    })
}
