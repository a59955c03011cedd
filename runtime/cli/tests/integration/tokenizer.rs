//! The default model's tokenizer, as converted from its GGUF vocabulary, against the golden
//! token ids of an independent reference, and the streaming detokenizer.

use crate::common;

use common::{default_model, golden_cases, ids};
use engine::detok::IncrementalDecoder;
use models::tokenizer::{ChatMessage, Tokenizer};

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(&default_model()).unwrap()
}

#[test]
fn golden_prompts_encode_to_the_reference_ids() {
    let tok = tokenizer();
    let cases = golden_cases();
    assert!(cases.len() >= 4);
    for c in cases {
        let prompt = c["prompt"].as_str().unwrap();
        assert_eq!(
            tok.encode(prompt).unwrap(),
            ids(&c["prompt_token_ids"]),
            "{prompt:?}"
        );
        // And the generated ids decode to the reference text.
        let text = tok.decode(&ids(&c["generated_token_ids"]), false).unwrap();
        assert_eq!(text, c["generated_text"].as_str().unwrap());
    }
}

#[test]
fn hard_strings_round_trip() {
    let tok = tokenizer();
    for s in [
        "日本語のテキストと中文混合",
        "emoji 🦀🔥👩‍👩‍👧 and flags 🇫🇷",
        "runs    of     spaces\t\ttabs",
        "windows\r\nline\r\nendings\n\n\n",
        "digits 1234567890 and 3.14159e-10",
        "special tokens in text: <|im_start|>user\nhi<|im_end|>",
        " leading and trailing spaces ",
        "",
    ] {
        let ids = tok.encode(s).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), s, "{s:?}");
    }
    // Digits are split one by one (the `smollm` pre-tokenizer).
    let ids = tok.encode("2024").unwrap();
    assert_eq!(ids.len(), 4);
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.eos_ids, vec![2]);
}

#[test]
fn streaming_never_emits_a_broken_character() {
    let tok = tokenizer();
    let s = "héllo 世界 🦀🦀 naïve café — ok";
    let ids = tok.encode(s).unwrap();
    let mut dec = IncrementalDecoder::new();
    let mut out = String::new();
    for &id in &ids {
        let piece = dec.push(&tok, id).unwrap();
        assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
        out.push_str(&piece);
    }
    out.push_str(&dec.finish(&tok).unwrap());
    assert_eq!(out, s);
    // Byte-level BPE splits the crab into several byte tokens: some pushes emit nothing.
    let crab = tok.encode("🦀").unwrap();
    assert!(crab.len() > 1);
}

#[test]
fn chat_template_renders_chatml_with_the_default_system_prompt() {
    let tok = tokenizer();
    let msgs = vec![ChatMessage::new("user", "Hi!")];
    let text = tok.apply_chat_template(&msgs, true).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tok.encode(&text).unwrap();
    assert_eq!(ids[0], 1);
}
