//! Server-sent events, fed incrementally: bytes in (split anywhere), `data:` payloads out, each
//! stamped with the arrival time of the bytes that completed it.

use std::time::Instant;

#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Adds bytes that arrived at `at`; returns the `data:` payloads completed by them.
    pub fn feed(&mut self, bytes: &[u8], at: Instant) -> Vec<(Instant, String)> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(data) = line.strip_prefix("data:") {
                out.push((at, data.strip_prefix(' ').unwrap_or(data).to_string()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_split_across_frames_are_reassembled() {
        let mut p = SseParser::default();
        let t = Instant::now();
        assert!(p.feed(b"data: {\"a\"", t).is_empty());
        let got = p.feed(b": 1}\n\n: comment\ndata:[DONE]\r\n", t);
        let texts: Vec<&str> = got.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(texts, vec!["{\"a\": 1}", "[DONE]"]);
    }
}
