//! Structured outputs with llguidance: a JSON schema, a regex, a list of choices or a Lark
//! grammar becomes a [`TokenConstraint`] over the model's vocabulary.
//!
//! Why here, in the engine: a constraint is a sampling rule (which tokens may come next),
//! like top-p, and the engine owns sampling; what it takes is neutral, a grammar spec and a
//! `TokEnv` (each token's bytes), which the `models` crate builds from the tokenizer. The
//! server turns request fields into a [`StructuredOutput`] and compiles it here before it
//! submits, so an unsupported schema is a 400 and the engine thread never compiles.
//!
//! Compiling is the slow part (a schema's grammar and lexer: up to tens of milliseconds); a
//! [`GrammarCompiler`] keeps the compiled parsers of the last [`CACHE_ENTRIES`] distinct specs
//! and hands each request a clone, which shares the lexer's lazily built states with every
//! other request of that spec.

use std::collections::{HashMap, VecDeque};

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::{Matcher, ParserFactory, TokenParser};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::constraint::{Constraint, ConstraintError, TokenConstraint, TokenMask};

pub use llguidance::toktrie::TokEnv;

/// Distinct specs whose compiled grammar is kept.
pub const CACHE_ENTRIES: usize = 64;

/// What a request's output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum StructuredOutput {
    /// A JSON value valid under this schema (draft 2020-12, the subset llguidance supports).
    JsonSchema {
        schema: Value,
        /// Whitespace between tokens as the model likes it; otherwise the separators of
        /// `json.dumps` (`", "` and `": "`) and no newlines, so a weak model cannot wander off
        /// into blank lines.
        any_whitespace: bool,
    },
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject { any_whitespace: bool },
    /// Text matching this regular expression (Rust `regex` syntax), whole.
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A grammar in llguidance's Lark dialect (`start: ...`).
    Lark(String),
}

impl StructuredOutput {
    /// The kind, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            StructuredOutput::JsonSchema { .. } => "json_schema",
            StructuredOutput::JsonObject { .. } => "json_object",
            StructuredOutput::Regex(_) => "regex",
            StructuredOutput::Choice(_) => "choice",
            StructuredOutput::Lark(_) => "grammar",
        }
    }

    /// The llguidance grammar of this spec.
    fn grammar(&self) -> Result<TopLevelGrammar, InvalidGrammar> {
        let json = |schema: &Value, any_whitespace: bool| {
            let Value::Object(map) = schema else {
                return Err(InvalidGrammar::new(
                    self,
                    "a JSON schema must be an object".into(),
                ));
            };
            let mut map = map.clone();
            if !map.contains_key("x-guidance") {
                let style = if any_whitespace {
                    json!({"whitespace_flexible": true})
                } else {
                    json!({"whitespace_flexible": false, "item_separator": ", ",
                           "key_separator": ": "})
                };
                map.insert("x-guidance".into(), style);
            }
            Ok(TopLevelGrammar::from_json_schema(Value::Object(map)))
        };
        match self {
            StructuredOutput::JsonSchema {
                schema,
                any_whitespace,
            } => json(schema, *any_whitespace),
            StructuredOutput::JsonObject { any_whitespace } => {
                json(&json!({"type": "object"}), *any_whitespace)
            }
            StructuredOutput::Regex(rx) => Ok(TopLevelGrammar::from_regex(rx)),
            StructuredOutput::Choice(choices) => {
                if choices.is_empty() {
                    return Err(InvalidGrammar::new(
                        self,
                        "the list of choices is empty".into(),
                    ));
                }
                let alternatives: Vec<String> = choices.iter().map(|c| escape_regex(c)).collect();
                Ok(TopLevelGrammar::from_regex(&format!(
                    "(?:{})",
                    alternatives.join("|")
                )))
            }
            StructuredOutput::Lark(g) => Ok(TopLevelGrammar::from_lark(g.clone())),
        }
    }

    /// The cache key: the spec's canonical JSON text.
    fn key(&self) -> String {
        let v = match self {
            StructuredOutput::JsonSchema {
                schema,
                any_whitespace,
            } => json!(["json_schema", schema, any_whitespace]),
            StructuredOutput::JsonObject { any_whitespace } => {
                json!(["json_object", any_whitespace])
            }
            StructuredOutput::Regex(r) => json!(["regex", r]),
            StructuredOutput::Choice(c) => json!(["choice", c]),
            StructuredOutput::Lark(g) => json!(["lark", g]),
        };
        v.to_string()
    }
}

/// A regex that matches `s` literally.
fn escape_regex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A spec llguidance cannot compile: the message says what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported {kind}: {problem}")]
pub struct InvalidGrammar {
    pub kind: &'static str,
    pub problem: String,
}

impl InvalidGrammar {
    fn new(spec: &StructuredOutput, problem: String) -> Self {
        InvalidGrammar {
            kind: spec.kind(),
            problem,
        }
    }
}

/// The most recently compiled parsers, by spec.
#[derive(Default)]
struct ParserCache {
    parsers: HashMap<String, TokenParser>,
    order: VecDeque<String>,
    hits: u64,
    misses: u64,
}

/// Compiles specs into constraints over one tokenizer's vocabulary, caching the results.
pub struct GrammarCompiler {
    factory: ParserFactory,
    vocab_size: usize,
    cache: Mutex<ParserCache>,
}

impl GrammarCompiler {
    /// A compiler over `tok_env` (its end-of-sequence tokens are the model's) for a model of
    /// `vocab_size` logits (at least the tokenizer's vocabulary).
    pub fn new(tok_env: TokEnv, vocab_size: usize) -> Result<Self, ConstraintError> {
        let mut factory =
            ParserFactory::new_simple(&tok_env).map_err(|e| ConstraintError(e.to_string()))?;
        factory.quiet();
        // Errors name the problem, not the parser's whole state.
        *factory.limits_mut() = ParserLimits {
            verbose_errors: false,
            ..ParserLimits::default()
        };
        Ok(GrammarCompiler {
            factory,
            vocab_size,
            cache: Mutex::new(ParserCache::default()),
        })
    }

    /// A fresh constraint for `spec` (compiled, or cloned from the cache).
    pub fn compile(&self, spec: &StructuredOutput) -> Result<Constraint, InvalidGrammar> {
        let key = spec.key();
        let cached = {
            let mut c = self.cache.lock();
            let hit = c.parsers.get(&key).cloned();
            if hit.is_some() {
                c.hits += 1;
            } else {
                c.misses += 1;
            }
            hit
        };
        let parser = match cached {
            Some(p) => p,
            None => {
                let grammar = spec.grammar()?;
                let parser = self
                    .factory
                    .create_parser(grammar)
                    .map_err(|e| InvalidGrammar::new(spec, e.to_string()))?;
                let mut c = self.cache.lock();
                if !c.parsers.contains_key(&key) {
                    if c.order.len() >= CACHE_ENTRIES {
                        if let Some(old) = c.order.pop_front() {
                            c.parsers.remove(&old);
                        }
                    }
                    c.order.push_back(key.clone());
                    c.parsers.insert(key, parser.clone());
                }
                parser
            }
        };
        let mut matcher = Matcher::new(Ok(parser));
        // A grammar that cannot produce anything fails here rather than on the engine thread.
        if let Err(e) = matcher.compute_mask() {
            return Err(InvalidGrammar::new(spec, e.to_string()));
        }
        Ok(Constraint(Box::new(LlgConstraint {
            matcher,
            vocab_size: self.vocab_size,
            kind: spec.kind(),
        })))
    }

    /// (cache hits, compilations) so far.
    pub fn cache_stats(&self) -> (u64, u64) {
        let c = self.cache.lock();
        (c.hits, c.misses)
    }
}

/// One sample's llguidance matcher.
struct LlgConstraint {
    matcher: Matcher,
    vocab_size: usize,
    kind: &'static str,
}

impl TokenConstraint for LlgConstraint {
    fn compute_mask(&mut self) -> Result<TokenMask, ConstraintError> {
        let v = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| ConstraintError(e.to_string()))?;
        Ok(TokenMask::from_words(v.as_slice(), self.vocab_size))
    }

    fn commit(&mut self, token: u32) -> Result<(), ConstraintError> {
        self.matcher
            .consume_token(token)
            .map_err(|e| ConstraintError(e.to_string()))
    }

    fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    fn fork(&self) -> Box<dyn TokenConstraint> {
        Box::new(LlgConstraint {
            matcher: self.matcher.clone(),
            vocab_size: self.vocab_size,
            kind: self.kind,
        })
    }

    fn describe(&self) -> String {
        self.kind.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llguidance::toktrie::ApproximateTokEnv;
    use rand::{Rng, SeedableRng};

    /// A byte-level vocabulary (ids 0-255 are the bytes) with end of sequence 261.
    fn compiler() -> GrammarCompiler {
        GrammarCompiler::new(ApproximateTokEnv::single_byte_env(), 262).unwrap()
    }

    /// Draws uniformly among the allowed tokens until the constraint ends (or `max` tokens):
    /// the output of a model that knows nothing, which the constraint alone keeps valid.
    fn random_walk(c: &mut Constraint, seed: u64, max: usize) -> Option<String> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut out = vec![];
        for _ in 0..max {
            let m = c.0.compute_mask().unwrap();
            let allowed: Vec<u32> = (0..262).filter(|&t| m.allows(t)).collect();
            let t = allowed[rng.random_range(0..allowed.len())];
            if t == 261 {
                return String::from_utf8(out).ok();
            }
            out.push(t as u8);
            c.0.commit(t).unwrap();
            if c.0.is_finished() {
                return String::from_utf8(out).ok();
            }
        }
        None
    }

    #[test]
    fn random_walks_under_a_schema_give_valid_json() {
        let schema = json!({"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 5},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
        }, "required": ["name", "age", "tags"], "additionalProperties": false});
        let c = compiler();
        let spec = StructuredOutput::JsonSchema {
            schema,
            any_whitespace: false,
        };
        for seed in 0..20 {
            let mut k = c.compile(&spec).unwrap();
            let text = random_walk(&mut k, seed, 200).expect("finishes");
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(v["name"].as_str().unwrap().chars().count() <= 5, "{text}");
            assert!((0..=120).contains(&v["age"].as_i64().unwrap()), "{text}");
            let tags = v["tags"].as_array().unwrap();
            assert!(
                tags.len() <= 3 && tags.iter().all(|t| t == "a" || t == "b"),
                "{text}"
            );
            assert_eq!(v.as_object().unwrap().len(), 3, "{text}");
        }
        // One compilation, then the cache.
        assert_eq!(c.cache_stats(), (19, 1));
    }

    #[test]
    fn choices_regexes_and_grammars_hold() {
        let c = compiler();
        let choice = StructuredOutput::Choice(vec!["yes".into(), "no (maybe)".into()]);
        let rx = StructuredOutput::Regex("[0-9]{3}-[a-z]{2}".into());
        let lark =
            StructuredOutput::Lark("start: \"(\" num (\",\" num)* \")\"\nnum: /[0-9]/".into());
        for seed in 0..10 {
            let t = random_walk(&mut c.compile(&choice).unwrap(), seed, 50).unwrap();
            assert!(t == "yes" || t == "no (maybe)", "{t}");
            let t = random_walk(&mut c.compile(&rx).unwrap(), seed, 50).unwrap();
            assert!(t.len() == 6 && t.as_bytes()[3] == b'-', "{t}");
            if let Some(t) = random_walk(&mut c.compile(&lark).unwrap(), seed, 50) {
                assert!(t.starts_with('(') && t.ends_with(')'), "{t}");
            }
        }
    }

    #[test]
    fn bad_specs_are_refused_with_the_problem() {
        let c = compiler();
        let bad = [
            StructuredOutput::JsonSchema {
                schema: json!({"type": "no-such-type"}),
                any_whitespace: false,
            },
            StructuredOutput::JsonSchema {
                schema: json!([1, 2]),
                any_whitespace: false,
            },
            StructuredOutput::Regex("(unclosed".into()),
            StructuredOutput::Choice(vec![]),
            StructuredOutput::Lark("start: undefined_rule".into()),
        ];
        for spec in bad {
            let e = c
                .compile(&spec)
                .err()
                .unwrap_or_else(|| panic!("{spec:?} compiled"));
            assert_eq!(e.kind, spec.kind());
            assert!(!e.problem.is_empty());
        }
    }

    #[test]
    fn choices_are_escaped_literally() {
        assert_eq!(escape_regex("a.b(c)"), r"a\.b\(c\)");
        assert_eq!(escape_regex("plain"), "plain");
    }
}
