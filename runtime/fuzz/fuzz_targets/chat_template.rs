//! Chat templates are code that ships in model files, and messages come from clients: any
//! template over any conversation renders, or fails with an error, within the renderer's
//! bounds (`models::chat_template`: instruction fuel, recursion depth, output size), never a
//! hang, a crash or an unbounded prompt.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use models::chat_template::{render, MAX_RENDERED_BYTES};
use models::tokenizer::ChatMessage;

#[derive(Arbitrary, Debug)]
struct Input {
    template: String,
    messages: Vec<(String, String)>,
    add_generation_prompt: bool,
}

/// The default model's template (SmolLM2's ChatML), the start most mutations grow from.
const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fuzz_target!(|input: Input| {
    let messages: Vec<ChatMessage> = input
        .messages
        .iter()
        .take(64)
        .map(|(role, content)| ChatMessage::new(role.clone(), content.clone()))
        .collect();
    let ctx = minijinja::context! {
        messages => messages,
        add_generation_prompt => input.add_generation_prompt,
        bos_token => "<s>",
        eos_token => "</s>",
    };
    // The hostile template, and the real one over the hostile messages.
    for tpl in [input.template.as_str(), CHATML] {
        if let Ok(out) = render(tpl, ctx.clone()) {
            assert!(out.len() <= MAX_RENDERED_BYTES);
        }
    }
});
