//! The engine core on its own OS thread, driven through channels (DESIGN.md: EngineHandle).
//!
//! Requests go in with a channel for their tokens; the core thread steps while there is work
//! and sleeps on its command channel when there is none. Dropping a request's receiver aborts
//! the request within one step (the next send fails) and frees its pages. A panic on the
//! engine thread is caught: the requests in flight end with its message, and the engine is
//! either rebuilt (`spawn_restartable`) or stops, so a supervisor can restart the process.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use parking_lot::Mutex;

use tokio::sync::{mpsc as tmpsc, oneshot, watch};

use crate::backend::Backend;
use crate::{EngineCore, EngineError, GenerateRequest, RequestLimits, StepReport, TokenOutput};

enum Command {
    Add(
        Box<GenerateRequest>,
        tmpsc::UnboundedSender<TokenOutput>,
        oneshot::Sender<Result<(), EngineError>>,
    ),
    Abort(u64),
    /// Fault injection: the next step fails as an engine error would.
    FailNextStep,
    /// Fault injection: the next step panics, as a bug in the engine would.
    PanicNextStep,
    Shutdown,
}

/// Runs after every step with the core and its report (for metrics), and with `None` when
/// commands changed the state of an engine that has no step to run (an abort that emptied
/// it, or the engine failing a step).
pub type OnStep<B> = Box<dyn FnMut(&EngineCore<B>, Option<&StepReport>) + Send>;

/// Builds a fresh engine core after the running one panicked (`--restart-engine`).
pub type Rebuild<B> = Box<dyn FnMut() -> Result<EngineCore<B>, EngineError> + Send>;

/// What the engine thread and its handles share.
struct Shared {
    alive: AtomicBool,
    /// The last step failure or panic, whose requests were ended with it.
    last_error: Mutex<Option<String>>,
    /// Set (with the panic's message) when the engine thread died of a panic it could not
    /// recover from; the server shuts down on it.
    died: watch::Sender<Option<String>>,
}

/// A cheap, cloneable handle to an engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    died: watch::Receiver<Option<String>>,
    limits: RequestLimits,
}

impl EngineHandle {
    /// Moves `core` onto a new thread; `on_step` sees every step's report. A panic on the
    /// engine thread ends the requests in flight with it and stops the engine
    /// ([`Self::died`] resolves).
    pub fn spawn<B>(
        core: EngineCore<B>,
        on_step: impl FnMut(&EngineCore<B>, Option<&StepReport>) + Send + 'static,
    ) -> Self
    where
        B: Backend + Send + 'static,
        B::Buf: Send,
    {
        Self::spawn_with(core, Box::new(on_step), None)
    }

    /// [`Self::spawn`], but after a panic the engine is rebuilt by `rebuild` and serves on
    /// (the requests in flight still end with the panic's message).
    pub fn spawn_restartable<B>(
        core: EngineCore<B>,
        on_step: impl FnMut(&EngineCore<B>, Option<&StepReport>) + Send + 'static,
        rebuild: Rebuild<B>,
    ) -> Self
    where
        B: Backend + Send + 'static,
        B::Buf: Send,
    {
        Self::spawn_with(core, Box::new(on_step), Some(rebuild))
    }

    fn spawn_with<B>(
        core: EngineCore<B>,
        mut on_step: OnStep<B>,
        mut rebuild: Option<Rebuild<B>>,
    ) -> Self
    where
        B: Backend + Send + 'static,
        B::Buf: Send,
    {
        let limits = core.request_limits();
        let (tx, rx) = mpsc::channel::<Command>();
        let (died_tx, died) = watch::channel(None);
        let shared = Arc::new(Shared {
            alive: AtomicBool::new(true),
            last_error: Mutex::new(None),
            died: died_tx,
        });
        let sh = shared.clone();
        std::thread::Builder::new()
            .name("pagedrt-engine".into())
            .spawn(move || {
                let mut core = core;
                let mut streams = HashMap::new();
                loop {
                    let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        run_loop(&mut core, &rx, &mut on_step, &mut streams, &sh)
                    }));
                    let Err(payload) = run else { break };
                    let msg = format!("the engine thread panicked: {}", panic_message(&payload));
                    tracing::error!("{msg}; ending the requests in flight");
                    // The error first: a handler that sees its stream end reads it at once.
                    *sh.last_error.lock() = Some(msg.clone());
                    streams.clear();
                    match rebuild.as_mut().map(|r| r()) {
                        Some(Ok(fresh)) => {
                            tracing::warn!("engine rebuilt after the panic (--restart-engine)");
                            core = fresh;
                        }
                        other => {
                            if let Some(Err(e)) = other {
                                tracing::error!("rebuilding the engine failed: {e}");
                            }
                            sh.alive.store(false, Ordering::SeqCst);
                            let _ = sh.died.send(Some(msg));
                            return;
                        }
                    }
                }
                sh.alive.store(false, Ordering::SeqCst);
            })
            .expect("spawning the engine thread");
        EngineHandle {
            tx,
            shared,
            died,
            limits,
        }
    }

    /// What a request must satisfy to be submitted ([`RequestLimits::validate`]).
    pub fn limits(&self) -> RequestLimits {
        self.limits
    }

    /// The last step failure or panic (whose requests were ended with it), if any.
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error.lock().clone()
    }

    /// Whether the engine loop is running.
    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::SeqCst)
    }

    /// Resolves, with the panic's message, once the engine thread has died of a panic (and
    /// was not rebuilt); never resolves while it serves.
    pub async fn died(&self) -> String {
        let mut rx = self.died.clone();
        loop {
            if let Some(msg) = rx.borrow_and_update().clone() {
                return msg;
            }
            if rx.changed().await.is_err() {
                // The engine thread ended normally (shut down): it will never die now.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Queues a request; returns the stream of its tokens, or why it was refused.
    pub async fn submit(
        &self,
        req: GenerateRequest,
    ) -> Result<tmpsc::UnboundedReceiver<TokenOutput>, EngineError> {
        let (out_tx, out_rx) = tmpsc::unbounded_channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx
            .send(Command::Add(Box::new(req), out_tx, reply_tx))
            .map_err(|_| EngineError::Stopped)?;
        reply_rx.await.map_err(|_| EngineError::Stopped)??;
        Ok(out_rx)
    }

    pub fn abort(&self, request: u64) {
        let _ = self.tx.send(Command::Abort(request));
    }

    /// Makes the next step fail as an engine error would (for fault-injection tests): the
    /// requests in flight end with the error, the engine keeps serving.
    pub fn fail_next_step(&self) {
        let _ = self.tx.send(Command::FailNextStep);
    }

    /// Makes the next step panic, as a bug in the engine would (for tests of what a panic
    /// does: in-flight requests end with a 500, /health turns 503, the process exits).
    pub fn panic_next_step(&self) {
        let _ = self.tx.send(Command::PanicNextStep);
    }

    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
    }
}

/// The engine loop: block for commands when idle, step while there is work. Returns on
/// shutdown or when every handle is gone.
fn run_loop<B: Backend>(
    core: &mut EngineCore<B>,
    rx: &mpsc::Receiver<Command>,
    on_step: &mut OnStep<B>,
    streams: &mut HashMap<u64, tmpsc::UnboundedSender<TokenOutput>>,
    shared: &Shared,
) {
    let (mut fail_next, mut panic_next) = (false, false);
    loop {
        // Block for work when idle; otherwise take whatever has arrived.
        let mut cmds = vec![];
        if !core.has_unfinished() {
            match rx.recv() {
                Ok(c) => cmds.push(c),
                Err(_) => return,
            }
        }
        cmds.extend(rx.try_iter());
        for c in cmds {
            match c {
                Command::Add(req, out, reply) => {
                    let id = req.id;
                    let res = core.add_request(*req);
                    if res.is_ok() {
                        streams.insert(id, out);
                    }
                    let _ = reply.send(res);
                }
                Command::Abort(id) => {
                    core.abort(id);
                    streams.remove(&id);
                }
                Command::FailNextStep => fail_next = true,
                Command::PanicNextStep => panic_next = true,
                Command::Shutdown => return,
            }
        }
        if !core.has_unfinished() {
            on_step(core, None);
            continue;
        }
        if std::mem::take(&mut panic_next) {
            panic!("injected panic (EngineHandle::panic_next_step)");
        }
        let step = if std::mem::take(&mut fail_next) {
            Err(EngineError::InjectedFault)
        } else {
            core.step()
        };
        let report = match step {
            Ok(r) => r,
            Err(e) => {
                // The requests in flight end (their streams close with the error); their
                // pages are freed and the engine keeps serving.
                tracing::error!("engine step failed: {e}; aborting the requests in flight");
                // Record the error before closing the streams: a handler that sees its
                // stream end reads it at once.
                *shared.last_error.lock() = Some(e.to_string());
                for (id, _) in streams.drain() {
                    core.abort(id);
                }
                on_step(core, None);
                continue;
            }
        };
        for o in &report.outputs {
            let gone = match streams.get(&o.request) {
                Some(s) => s.send(o.clone()).is_err(),
                None => true,
            };
            if gone {
                core.abort(o.request);
                streams.remove(&o.request);
            }
        }
        // Metrics first, so a client that sees its stream end also sees them.
        on_step(core, Some(&report));
        streams.retain(|id, _| core.is_active(*id));
    }
}

/// The message a panic carried (`panic!("...")` gives a `&str` or a `String`).
fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
