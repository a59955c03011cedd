//! The engine's one error type.

use crate::backend::BackendError;
use crate::detok::DecodeError;
use crate::request::InvalidRequest;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A request that failed validation ([`crate::RequestLimits::validate`]).
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// The engine was configured with something it cannot run (an unknown policy).
    #[error("engine configuration: {0}")]
    Config(String),
    /// The engine thread is gone (shut down, or it panicked).
    #[error("the engine has stopped")]
    Stopped,
    /// A fault injected for tests (`EngineHandle::fail_next_step`).
    #[error("injected fault (EngineHandle::fail_next_step)")]
    InjectedFault,
    #[error("the queue is full ({waiting} requests waiting, --max-queue {max})")]
    QueueFull { waiting: usize, max: usize },
    #[error(transparent)]
    Scheduler(#[from] scheduler::SchedulerError),
    #[error(transparent)]
    Block(#[from] block_manager::BlockError),
    #[error(transparent)]
    Detokenize(#[from] DecodeError),
    /// The device failed (a CUDA error); the step's requests end with this message.
    #[error("device error: {0}")]
    Backend(#[from] BackendError),
}
