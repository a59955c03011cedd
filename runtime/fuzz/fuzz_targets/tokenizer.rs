//! Tokenizer encode and decode of arbitrary input (the byte-level tokenizer every `dummy:`
//! model serves with, whose vocabulary covers all bytes): text round-trips exactly, and any
//! ids, in the vocabulary or not, decode to a string or an error, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use models::tokenizer::Tokenizer;

static TOK: OnceLock<Tokenizer> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let tok = TOK.get_or_init(|| Tokenizer::byte_level().expect("the byte-level tokenizer builds"));
    if let Ok(text) = std::str::from_utf8(data) {
        let ids = tok.encode(text).expect("any text encodes");
        let back = tok.decode(&ids, false).expect("encoded ids decode");
        assert_eq!(back, text);
    }
    let ids: Vec<u32> = data
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .collect();
    let _ = tok.decode(&ids, true);
    let _ = tok.decode(&ids, false);
});
