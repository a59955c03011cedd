//! Releasing generated text while honouring stop strings: text that could still become the
//! start of a stop string is held back, and a matched stop string is never emitted, even when
//! it spans several tokens.

/// Tracks one sequence's text and how much of it has been released.
#[derive(Debug, Clone, Default)]
pub struct StopText {
    text: String,
    emitted: usize,
}

impl StopText {
    /// Appends decoded text; returns (text safe to release now, whether a stop string matched).
    pub fn push(&mut self, delta: &str, stops: &[String]) -> (String, bool) {
        self.text.push_str(delta);
        if stops.is_empty() {
            return (self.release(self.text.len()), false);
        }
        // A match can only start late enough to involve new text.
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        let from = floor_char(&self.text, self.emitted.saturating_sub(longest));
        let found = stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = found {
            let out = self.release(at.max(self.emitted));
            self.text.truncate(at.max(self.emitted));
            return (out, true);
        }
        // Hold back the longest tail that is a prefix of some stop string.
        let mut keep = self.text.len();
        for s in stops {
            for cut in (1..s.len().min(self.text.len() + 1)).rev() {
                if s.is_char_boundary(cut) && self.text.ends_with(&s[..cut]) {
                    keep = keep.min(self.text.len() - cut);
                    break;
                }
            }
        }
        (self.release(keep.max(self.emitted)), false)
    }

    /// Everything not yet released (at the end of generation).
    pub fn flush(&mut self) -> String {
        self.release(self.text.len())
    }

    fn release(&mut self, upto: usize) -> String {
        let out = self.text[self.emitted..upto].to_string();
        self.emitted = upto;
        out
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&str], stops: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut st = StopText::default();
        let mut out = String::new();
        for p in pieces {
            let (s, hit) = st.push(p, &stops);
            out.push_str(&s);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&st.flush());
        (out, false)
    }

    #[test]
    fn a_stop_string_across_tokens_is_never_emitted() {
        assert_eq!(
            run(&["Hello", " wo", "rld", "!"], &["world"]),
            ("Hello ".into(), true)
        );
        assert_eq!(
            run(&["Hello", " wo", "rld"], &["worm"]),
            ("Hello world".into(), false)
        );
        assert_eq!(run(&["a\n", "\nb"], &["\n\n"]), ("a".into(), true));
        assert_eq!(run(&["no stops"], &[]), ("no stops".into(), false));
        assert_eq!(run(&["héé", "llo"], &["él"]), ("hé".into(), true));
    }

    #[test]
    fn held_back_text_is_released_once_it_cannot_match() {
        let stops = vec!["STOP".to_string()];
        let mut st = StopText::default();
        assert_eq!(st.push("abc ST", &stops), ("abc ".into(), false));
        assert_eq!(st.push("ART", &stops), ("START".into(), false));
    }
}
