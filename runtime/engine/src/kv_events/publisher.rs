//! The ZeroMQ PUB socket that KV-event batches leave on, off the engine thread.
//!
//! The engine thread only moves each step's events into a bounded channel
//! ([`KvEventPublisher::publish`]: never blocks, never encodes). A thread of its own encodes
//! them and sends them as vLLM's publisher does: a multipart message of three frames, the
//! topic, the batch's sequence number (8 bytes, big-endian, from 0) and the msgpack payload.
//! Nothing waits on a subscriber: when the channel is full the batch is dropped (and
//! counted), and the socket itself drops messages for a subscriber that does not keep up. The
//! sequence number is taken when the engine publishes, so every loss leaves a gap that a
//! subscriber sees (`vllm-router` then stops trusting its view of this replica until it has
//! fresh events, rather than route on a stale one).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use block_manager::KvEvent;
use tokio::sync::mpsc;
use zeromq::{Socket, SocketSend};

use super::wire::{encode_batch, EventEncoding};

/// Where and how events are published.
#[derive(Debug, Clone)]
pub struct KvEventsConfig {
    /// `tcp://HOST:PORT` (or `tcp://*:PORT` for every interface) that the PUB socket binds;
    /// subscribers connect to it.
    pub endpoint: String,
    /// The first frame of every message (vLLM's default: empty).
    pub topic: String,
    pub encoding: EventEncoding,
    /// Batches that may wait for the publisher thread before new ones are dropped.
    pub queue_batches: usize,
}

impl KvEventsConfig {
    pub fn new(endpoint: impl Into<String>) -> Self {
        KvEventsConfig {
            endpoint: endpoint.into(),
            topic: String::new(),
            encoding: EventEncoding::Map,
            queue_batches: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KvEventsError {
    #[error("--kv-events-endpoint {endpoint}: {reason}")]
    Bind { endpoint: String, reason: String },
}

struct Batch {
    seq: u64,
    ts: f64,
    events: Vec<KvEvent>,
}

struct Shared {
    next_seq: AtomicU64,
    dropped: AtomicU64,
}

/// A handle to the publisher thread; clones share it. The thread ends when every handle is
/// dropped, after sending what was queued.
#[derive(Clone)]
pub struct KvEventPublisher {
    tx: mpsc::Sender<Batch>,
    shared: Arc<Shared>,
    endpoint: String,
}

impl KvEventPublisher {
    /// Binds the PUB socket (an error if the endpoint is malformed or taken) and starts the
    /// thread that sends batches of pages of `block_size` tokens.
    pub fn bind(cfg: KvEventsConfig, block_size: usize) -> Result<Self, KvEventsError> {
        let fail = |reason: String| KvEventsError::Bind {
            endpoint: cfg.endpoint.clone(),
            reason,
        };
        let addr = match cfg.endpoint.strip_prefix("tcp://") {
            Some(rest) if rest.starts_with("*:") => format!("tcp://0.0.0.0{}", &rest[1..]),
            Some(_) => cfg.endpoint.clone(),
            None => return Err(fail("only tcp://HOST:PORT endpoints are supported".into())),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| fail(e.to_string()))?;
        // The socket spawns its tasks on the runtime it is made in.
        let mut socket = {
            let _in_runtime = rt.enter();
            zeromq::PubSocket::new()
        };
        rt.block_on(socket.bind(&addr))
            .map_err(|e| fail(e.to_string()))?;
        let (tx, mut rx) = mpsc::channel::<Batch>(cfg.queue_batches.max(1));
        let (topic, encoding) = (cfg.topic.into_bytes(), cfg.encoding);
        std::thread::Builder::new()
            .name("pagedrt-kv-events".into())
            .spawn(move || {
                rt.block_on(async move {
                    while let Some(b) = rx.recv().await {
                        let payload = encode_batch(b.ts, &b.events, block_size, encoding);
                        let mut msg = zeromq::ZmqMessage::from(topic.clone());
                        msg.push_back(b.seq.to_be_bytes().to_vec().into());
                        msg.push_back(payload.into());
                        if let Err(e) = socket.send(msg).await {
                            tracing::warn!("KV events: batch {} not sent: {e}", b.seq);
                        }
                    }
                    // Let the socket's writer tasks flush what was queued before closing.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                });
            })
            .map_err(|e| fail(e.to_string()))?;
        tracing::info!("KV events published on {}", cfg.endpoint);
        Ok(KvEventPublisher {
            tx,
            shared: Arc::new(Shared {
                next_seq: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            }),
            endpoint: cfg.endpoint,
        })
    }

    /// Queues one batch, stamped now; returns at once. Empty batches are not sent.
    pub fn publish(&self, events: Vec<KvEvent>) {
        if events.is_empty() {
            return;
        }
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let seq = self.shared.next_seq.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(Batch { seq, ts, events }).is_err()
            && self.shared.dropped.fetch_add(1, Ordering::Relaxed) == 0
        {
            tracing::warn!(
                "KV events on {}: the publisher fell behind; batches are being dropped",
                self.endpoint
            );
        }
    }

    /// Batches published so far (sent or dropped).
    pub fn published(&self) -> u64 {
        self.shared.next_seq.load(Ordering::Relaxed)
    }

    /// Batches dropped because the publisher thread fell behind.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}
