//! The bytes of a KV-event batch, as vLLM's subscribers read them.
//!
//! vLLM (`vllm/distributed/kv_events.py`) packs an `EventBatch(ts, events)` with msgspec's
//! msgpack encoder; each event is a tagged struct (`BlockStored`, `BlockRemoved`,
//! `AllBlocksCleared`). Two layouts of the events are in use:
//!
//! - [`EventEncoding::Map`] (the default): each event a map with its tag under `"type"`, the
//!   batch a 2-element array `[ts, events]`. This is what `vllm-router` 0.1.17 parses (its
//!   `kv_index/decode.rs` refuses an event that is not a tagged map, and a batch that is not
//!   an array), and what vLLM's newer tagged structs give per event.
//! - [`EventEncoding::Array`]: msgspec's `array_like=True` structs of earlier vLLM releases,
//!   each event an array whose first element is its tag; for subscribers written against
//!   those.
//!
//! Fields, in vLLM's order: `BlockStored{block_hashes, parent_block_hash, token_ids,
//! block_size, lora_id, medium, lora_name}`, `BlockRemoved{block_hashes, medium}`,
//! `AllBlocksCleared{}`. Hashes are pagedrt's chained 64-bit page hashes as unsigned
//! integers (vLLM sends ints or bytes; a router uses them only to chain a store to its parent
//! and to find what a removal names: it matches prompts by its own hash of the token ids).
//! `medium` is `"GPU"`: these are the engine's device pages, the tier a router credits fully.
//! LoRA fields are nil (no adapters).

use std::convert::Infallible;

use block_manager::KvEvent;
use rmp::encode::{self as mp, ByteBuf, ValueWriteError};

/// How events are laid out in a batch (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventEncoding {
    #[default]
    Map,
    Array,
}

/// The medium of every announced page.
pub const MEDIUM: &str = "GPU";

/// A write into a growing buffer cannot fail.
fn ok<T>(r: Result<T, ValueWriteError<Infallible>>) -> T {
    match r {
        Ok(v) => v,
        Err(ValueWriteError::InvalidMarkerWrite(e) | ValueWriteError::InvalidDataWrite(e)) => {
            match e {}
        }
    }
}

fn len(n: usize) -> u32 {
    // A batch is drained every step: far below msgpack's 2^32 elements.
    u32::try_from(n).unwrap_or(u32::MAX)
}

struct Writer {
    buf: ByteBuf,
    encoding: EventEncoding,
}

impl Writer {
    fn str(&mut self, s: &str) {
        ok(mp::write_str(&mut self.buf, s));
    }
    fn uint(&mut self, v: u64) {
        ok(mp::write_uint(&mut self.buf, v));
    }
    fn nil(&mut self) {
        let Ok(()) = mp::write_nil(&mut self.buf);
    }
    fn array(&mut self, n: usize) {
        ok(mp::write_array_len(&mut self.buf, len(n)));
    }
    fn uints(&mut self, vs: impl ExactSizeIterator<Item = u64>) {
        self.array(vs.len());
        for v in vs {
            self.uint(v);
        }
    }

    /// A struct's header: its tag and `fields` (the names of its fields, in order) follow.
    fn begin(&mut self, tag: &str, fields: usize) {
        match self.encoding {
            EventEncoding::Map => {
                ok(mp::write_map_len(&mut self.buf, len(fields + 1)));
                self.str("type");
            }
            EventEncoding::Array => self.array(fields + 1),
        }
        self.str(tag);
    }

    /// A field's name (maps only; arrays are positional).
    fn field(&mut self, name: &str) {
        if self.encoding == EventEncoding::Map {
            self.str(name);
        }
    }

    fn event(&mut self, e: &KvEvent, block_size: usize) {
        match e {
            KvEvent::Stored {
                hashes,
                parent,
                tokens,
            } => {
                self.begin("BlockStored", 7);
                self.field("block_hashes");
                self.uints(hashes.iter().copied());
                self.field("parent_block_hash");
                match parent {
                    Some(p) => self.uint(*p),
                    None => self.nil(),
                }
                self.field("token_ids");
                self.uints(tokens.iter().map(|&t| t as u64));
                self.field("block_size");
                self.uint(block_size as u64);
                self.field("lora_id");
                self.nil();
                self.field("medium");
                self.str(MEDIUM);
                self.field("lora_name");
                self.nil();
            }
            KvEvent::Removed { hashes } => {
                self.begin("BlockRemoved", 2);
                self.field("block_hashes");
                self.uints(hashes.iter().copied());
                self.field("medium");
                self.str(MEDIUM);
            }
            KvEvent::AllCleared => self.begin("AllBlocksCleared", 0),
        }
    }
}

/// The msgpack payload of one batch: `[ts, [event, ...]]`, `ts` in seconds since the epoch.
pub fn encode_batch(
    ts: f64,
    events: &[KvEvent],
    block_size: usize,
    encoding: EventEncoding,
) -> Vec<u8> {
    let mut w = Writer {
        buf: ByteBuf::new(),
        encoding,
    };
    w.array(2);
    ok(mp::write_f64(&mut w.buf, ts));
    w.array(events.len());
    for e in events {
        w.event(e, block_size);
    }
    w.buf.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// msgpack written out by hand from the format's specification.
    fn fixstr(s: &str) -> Vec<u8> {
        let mut v = vec![0xa0 | s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn a_batch_is_ts_then_tagged_maps_or_tagged_arrays() {
        let events = [
            KvEvent::Stored {
                hashes: vec![1 << 63, 7],
                parent: None,
                tokens: vec![1, 300],
            },
            KvEvent::Removed { hashes: vec![5] },
            KvEvent::AllCleared,
        ];
        let got = encode_batch(1.5, &events, 1, EventEncoding::Map);
        let mut want = vec![0x92, 0xcb];
        want.extend_from_slice(&1.5f64.to_be_bytes());
        want.push(0x93);
        want.push(0x88); // map of 8: type + 7 fields
        for (k, v) in [
            ("type", fixstr("BlockStored")),
            ("block_hashes", {
                let mut v = vec![0x92, 0xcf];
                v.extend_from_slice(&(1u64 << 63).to_be_bytes());
                v.push(7);
                v
            }),
            ("parent_block_hash", vec![0xc0]),
            ("token_ids", vec![0x92, 1, 0xcd, 0x01, 0x2c]),
            ("block_size", vec![1]),
            ("lora_id", vec![0xc0]),
            ("medium", fixstr("GPU")),
            ("lora_name", vec![0xc0]),
        ] {
            want.extend(fixstr(k));
            want.extend(v);
        }
        want.push(0x83);
        for (k, v) in [
            ("type", fixstr("BlockRemoved")),
            ("block_hashes", vec![0x91, 5]),
            ("medium", fixstr("GPU")),
        ] {
            want.extend(fixstr(k));
            want.extend(v);
        }
        want.push(0x81);
        want.extend(fixstr("type"));
        want.extend(fixstr("AllBlocksCleared"));
        assert_eq!(got, want);

        let got = encode_batch(1.5, &events[1..], 16, EventEncoding::Array);
        let mut want = vec![0x92, 0xcb];
        want.extend_from_slice(&1.5f64.to_be_bytes());
        want.push(0x92);
        want.push(0x93);
        want.extend(fixstr("BlockRemoved"));
        want.extend([0x91, 5]);
        want.extend(fixstr("GPU"));
        want.push(0x91);
        want.extend(fixstr("AllBlocksCleared"));
        assert_eq!(got, want);
    }
}
