//! The prompts of a load test: random text of a given length, ShareGPT-like lengths, shared
//! prefixes, a trace in the simulator's format, or a ShareGPT JSON file.
//!
//! Prompts are plain text (every OpenAI-compatible server takes text) made of common English
//! words, each about one token in BPE vocabularies; lengths are therefore approximate unless
//! the server reports `usage`, which the report prefers.

use std::path::Path;

use crate::error::ToolError;
use crate::sim_inputs::load_trace;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scheduler::sim::LenDist;

/// One request to send.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRequest {
    pub prompt: String,
    /// Prompt length in words (≈ tokens).
    pub prompt_len: usize,
    pub output_len: usize,
    /// `prefix-sharing`: which shared prefix the prompt starts with (kept in the saved
    /// trace, so the simulator replays the same sharing).
    pub prefix_group: Option<u32>,
}

const WORDS: [&str; 48] = [
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at",
    "from", "it", "this", "be", "are", "or", "an", "which", "one", "all", "time", "year", "new",
    "people", "world", "city", "water", "house", "school", "story", "music", "light", "river",
    "number", "family", "country", "system", "night", "paper", "market", "game", "law", "book",
    "road",
];

/// `n` words drawn from `rng`, each with a leading space.
pub(crate) fn words(rng: &mut StdRng, n: usize) -> String {
    let mut s = String::with_capacity(n * 6);
    for _ in 0..n {
        s.push(' ');
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    s
}

/// What `--dataset` names, with its parameters.
#[derive(Debug, Clone)]
pub struct DatasetSpec {
    pub name: String,
    pub num_prompts: usize,
    pub input_len: LenDist,
    pub output_len: LenDist,
    pub prefix_groups: u32,
    pub prefix_len: usize,
    pub seed: u64,
}

fn sample(d: &LenDist, rng: &mut StdRng) -> usize {
    d.sample(rng).unwrap_or(1)
}

/// Builds the prompts.
pub fn build(spec: &DatasetSpec) -> Result<Vec<BenchRequest>, ToolError> {
    let mut check = StdRng::seed_from_u64(0);
    spec.input_len.sample(&mut check)?;
    spec.output_len.sample(&mut check)?;
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut synth = |input: &LenDist, output: &LenDist, prefixes: &[String]| {
        (0..spec.num_prompts)
            .map(|_| {
                let (prefix, plen, group) = if prefixes.is_empty() {
                    (String::new(), 0, None)
                } else {
                    let g = rng.random_range(0..prefixes.len());
                    (prefixes[g].clone(), spec.prefix_len, Some(g as u32))
                };
                let own = sample(input, &mut rng).max(1);
                BenchRequest {
                    prompt: prefix + &words(&mut rng, own),
                    prompt_len: plen + own,
                    output_len: sample(output, &mut rng).max(1),
                    prefix_group: group,
                }
            })
            .collect::<Vec<_>>()
    };
    match spec.name.as_str() {
        "random" => Ok(synth(&spec.input_len, &spec.output_len, &[])),
        "sharegpt-like" => Ok(synth(
            &LenDist::SHAREGPT_PROMPT,
            &LenDist::SHAREGPT_OUTPUT,
            &[],
        )),
        "prefix-sharing" => {
            let mut prng = StdRng::seed_from_u64(spec.seed ^ 0x5EED);
            let prefixes: Vec<String> = (0..spec.prefix_groups.max(1))
                .map(|_| words(&mut prng, spec.prefix_len))
                .collect();
            Ok(synth(&spec.input_len, &spec.output_len, &prefixes))
        }
        // `trace:PATH` as `simulate --workload` names it, or the path itself.
        path => from_file(Path::new(path.strip_prefix("trace:").unwrap_or(path)), spec),
    }
}

/// A `.jsonl`/`.csv` trace of the simulator (lengths used, prompts synthesised), or a
/// ShareGPT `.json` file (first human turn as the prompt, the reply's length as output).
fn from_file(path: &Path, spec: &DatasetSpec) -> Result<Vec<BenchRequest>, ToolError> {
    if !path.is_file() {
        return Err(ToolError::Input(format!(
            "--dataset {}: not random, sharegpt-like, prefix-sharing or a file",
            path.display()
        )));
    }
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let is_sharegpt = path.extension().is_some_and(|e| e == "json");
    let mut out = if is_sharegpt {
        sharegpt(path)?
    } else {
        load_trace(path)?
            .into_iter()
            .map(|r| BenchRequest {
                prompt: words(&mut rng, r.prompt_len),
                prompt_len: r.prompt_len,
                output_len: r.output_len,
                prefix_group: None,
            })
            .collect()
    };
    if out.is_empty() {
        return Err(ToolError::Input(format!("{}: no requests", path.display())));
    }
    // Cycle through the file if it is shorter than --num-prompts.
    let n = out.len();
    out = (0..spec.num_prompts).map(|i| out[i % n].clone()).collect();
    Ok(out)
}

fn sharegpt(path: &Path) -> Result<Vec<BenchRequest>, ToolError> {
    let text = std::fs::read_to_string(path).map_err(|e| ToolError::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ToolError::Input(format!("{}: {e}", path.display())))?;
    let convs = v.as_array().ok_or_else(|| {
        ToolError::Input(format!(
            "{}: expected a JSON array of conversations",
            path.display()
        ))
    })?;
    let mut out = Vec::new();
    for c in convs {
        let turns = c["conversations"].as_array();
        let Some(turns) = turns.filter(|t| t.len() >= 2) else {
            continue;
        };
        let (Some(q), Some(a)) = (turns[0]["value"].as_str(), turns[1]["value"].as_str()) else {
            continue;
        };
        let (ql, al) = (q.split_whitespace().count(), a.split_whitespace().count());
        if ql > 0 && al > 0 {
            out.push(BenchRequest {
                prompt: q.to_string(),
                prompt_len: ql,
                output_len: al,
                prefix_group: None,
            });
        }
    }
    Ok(out)
}
