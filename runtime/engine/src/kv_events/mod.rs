//! KV-cache events leave the process: the block manager records which pages became findable
//! and which stopped being (`block_manager::KvEvent`), the engine drains them after every
//! step and hands them to a [`KvEventPublisher`], which sends them in vLLM's wire format
//! ([`wire`]) on a ZeroMQ PUB socket, so that a router (`vllm-router --policy kv_aware`)
//! routes by what each replica really has cached.

mod publisher;
pub mod wire;

pub use publisher::{KvEventPublisher, KvEventsConfig, KvEventsError};
pub use wire::EventEncoding;
