//! The engine's one error type.

use crate::detok::DecodeError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("engine configuration: {0}")]
    Config(String),
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
    Backend(String),
}
