//! The engine core on its own OS thread, driven through channels (DESIGN.md: EngineHandle).
//!
//! Requests go in with a channel for their tokens; the core thread steps while there is work
//! and sleeps on its command channel when there is none. Dropping a request's receiver aborts
//! the request within one step (the next send fails) and frees its pages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use parking_lot::Mutex;

use tokio::sync::{mpsc as tmpsc, oneshot};

use crate::backend::Backend;
use crate::{EngineCore, EngineError, GenerateRequest, RequestLimits, TokenOutput};

enum Command {
    Add(
        GenerateRequest,
        tmpsc::UnboundedSender<TokenOutput>,
        oneshot::Sender<Result<(), EngineError>>,
    ),
    Abort(u64),
    /// Fault injection: the next step fails as an engine error would.
    FailNextStep,
    Shutdown,
}

/// A cheap, cloneable handle to an engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    alive: Arc<AtomicBool>,
    last_error: Arc<Mutex<Option<String>>>,
    limits: RequestLimits,
}

impl EngineHandle {
    /// Moves `core` onto a new thread. `on_step` runs after every step with the core and the
    /// step's outputs (for metrics), and with `None` when commands changed the state of an
    /// engine that has no step to run (an abort that emptied it).
    pub fn spawn<B>(
        mut core: EngineCore<B>,
        mut on_step: impl FnMut(&EngineCore<B>, Option<&[TokenOutput]>) + Send + 'static,
    ) -> Self
    where
        B: Backend + Send + 'static,
        B::Buf: Send,
    {
        let limits = core.request_limits();
        let (tx, rx) = mpsc::channel::<Command>();
        let alive = Arc::new(AtomicBool::new(true));
        let alive2 = alive.clone();
        let last_error = Arc::new(Mutex::new(None));
        let last_error2 = last_error.clone();
        std::thread::Builder::new()
            .name("pagedrt-engine".into())
            .spawn(move || {
                let mut streams: HashMap<u64, tmpsc::UnboundedSender<TokenOutput>> = HashMap::new();
                let mut fail_next = false;
                'outer: loop {
                    // Block for work when idle; otherwise take whatever has arrived.
                    let mut cmds = vec![];
                    if !core.has_unfinished() {
                        match rx.recv() {
                            Ok(c) => cmds.push(c),
                            Err(_) => break,
                        }
                    }
                    cmds.extend(rx.try_iter());
                    for c in cmds {
                        match c {
                            Command::Add(req, out, reply) => {
                                let id = req.id;
                                let res = core.add_request(req);
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
                            Command::Shutdown => break 'outer,
                        }
                    }
                    if !core.has_unfinished() {
                        on_step(&core, None);
                        continue;
                    }
                    let step = if std::mem::take(&mut fail_next) {
                        Err(EngineError::InjectedFault)
                    } else {
                        core.step()
                    };
                    let outputs = match step {
                        Ok(o) => o,
                        Err(e) => {
                            // The requests in flight end (their streams close with the
                            // error); their pages are freed and the engine keeps serving.
                            tracing::error!(
                                "engine step failed: {e}; aborting the requests in flight"
                            );
                            // Record the error before closing the streams: a handler that
                            // sees its stream end reads it at once.
                            *last_error2.lock() = Some(e.to_string());
                            for (id, _) in streams.drain() {
                                core.abort(id);
                            }
                            on_step(&core, None);
                            continue;
                        }
                    };
                    for o in &outputs {
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
                    on_step(&core, Some(&outputs));
                    streams.retain(|id, _| core.is_active(*id));
                }
                alive2.store(false, Ordering::SeqCst);
            })
            .expect("spawning the engine thread");
        EngineHandle {
            tx,
            alive,
            last_error,
            limits,
        }
    }

    /// What a request must satisfy to be submitted ([`RequestLimits::validate`]).
    pub fn limits(&self) -> RequestLimits {
        self.limits
    }

    /// The last step failure (whose requests were aborted), if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    /// Whether the engine loop is running.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Queues a request; returns the stream of its tokens, or why it was refused.
    pub async fn submit(
        &self,
        req: GenerateRequest,
    ) -> Result<tmpsc::UnboundedReceiver<TokenOutput>, EngineError> {
        let (out_tx, out_rx) = tmpsc::unbounded_channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx
            .send(Command::Add(req, out_tx, reply_tx))
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

    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
    }
}
