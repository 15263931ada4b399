//! Turns generated token bytes into text deltas: holds back incomplete UTF-8 and any tail that could be
//! the start of a stop sequence, so a client never sees half a character or part of a stop string.

pub struct TextStream {
    pending_bytes: Vec<u8>,
    text: String,
    emitted: usize,
    stop: Vec<String>,
    max_stop: usize,
}

impl TextStream {
    pub fn new(stop: Vec<String>) -> Self {
        let stop: Vec<String> = stop.into_iter().filter(|s| !s.is_empty()).collect();
        let max_stop = stop.iter().map(String::len).max().unwrap_or(0);
        Self {
            pending_bytes: Vec::new(),
            text: String::new(),
            emitted: 0,
            stop,
            max_stop,
        }
    }

    /// Adds token bytes. Returns the delta that is safe to emit, and whether a stop sequence ended the text.
    pub fn push(&mut self, bytes: &[u8]) -> (String, bool) {
        self.pending_bytes.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending_bytes) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_some() => {
                // Invalid (not merely incomplete) bytes: replace them rather than stall.
                let s = String::from_utf8_lossy(&self.pending_bytes).into_owned();
                self.pending_bytes.clear();
                self.text.push_str(&s);
                return self.scan();
            }
            Err(e) => e.valid_up_to(),
        };
        let rest = self.pending_bytes.split_off(valid);
        // The prefix is valid UTF-8 by construction.
        self.text
            .push_str(&String::from_utf8_lossy(&self.pending_bytes));
        self.pending_bytes = rest;
        self.scan()
    }

    fn scan(&mut self) -> (String, bool) {
        let search_from = self.emitted.saturating_sub(self.max_stop);
        let search_from = floor_char_boundary(&self.text, search_from);
        let hit = self
            .stop
            .iter()
            .filter_map(|s| {
                self.text[search_from..]
                    .find(s.as_str())
                    .map(|i| search_from + i)
            })
            .min();
        if let Some(at) = hit {
            self.text.truncate(at);
            let delta = self.text.get(self.emitted..).unwrap_or("").to_owned();
            self.emitted = self.text.len();
            return (delta, true);
        }
        let hold = self.max_stop.saturating_sub(1);
        let safe =
            floor_char_boundary(&self.text, self.text.len().saturating_sub(hold)).max(self.emitted);
        let delta = self.text[self.emitted..safe].to_owned();
        self.emitted = safe;
        (delta, false)
    }

    /// Everything not yet emitted; call once when generation ends.
    pub fn finish(&mut self) -> String {
        if !self.pending_bytes.is_empty() {
            let s = String::from_utf8_lossy(&self.pending_bytes).into_owned();
            self.text.push_str(&s);
            self.pending_bytes.clear();
        }
        let delta = self.text[self.emitted..].to_owned();
        self.emitted = self.text.len();
        delta
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_utf8_is_held_until_complete() {
        let mut t = TextStream::new(vec![]);
        let e = "é".as_bytes();
        assert_eq!(t.push(&e[..1]).0, "");
        assert_eq!(t.push(&e[1..]).0, "é");
    }

    #[test]
    fn stop_sequence_across_tokens_is_cut_and_never_emitted() {
        let mut t = TextStream::new(vec!["STOP".into()]);
        let mut out = String::new();
        for piece in ["hel", "lo S", "TO", "P more"] {
            let (d, stopped) = t.push(piece.as_bytes());
            out.push_str(&d);
            if stopped {
                break;
            }
        }
        out.push_str(&t.finish());
        assert_eq!(out, "hello ");
    }
}
