//! The grounding guard. A small model asked to report a reading often writes a plausible number
//! instead of the one it read (4.81 bar for a reading of 8.81). Numbers and identifiers in a tool
//! call's arguments and in the final answer must therefore appear in what the model was given:
//! the task, the spec's instructions and descriptions, or an earlier tool result. An ungrounded
//! value is refused back to the model with the nearest values it was shown.
//!
//! What counts as a value: a number with two or more digits or a decimal point (`8.81`, `42`,
//! `2026`), and an identifier (a word that starts with a letter and has digits, `V-2`, `zone4`,
//! `INC-1042`).
//! Normalisation: numbers compare by value (`8.80` is `8.8`, `1,250` is `1250`), identifiers
//! without case, `-` and `_`. Single digits and words without digits are free text.

use std::collections::BTreeSet;

use serde_json::Value;

/// Everything the model was shown that values may come from.
#[derive(Default)]
pub struct Grounding {
    /// (value, the line it was shown on)
    numbers: Vec<(f64, String)>,
    identifiers: BTreeSet<String>,
}

/// A value the model wrote that it was never shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Ungrounded {
    pub value: String,
    /// The argument it was in (`None`: the answer).
    pub argument: Option<String>,
    /// The shown values nearest to it, with the line each was shown on.
    pub nearest: Vec<String>,
}

impl Ungrounded {
    /// What the model is told: which value, and what it could have meant.
    pub fn hint(&self) -> String {
        let place = match &self.argument {
            Some(a) => format!("in the argument '{a}'"),
            None => "in your answer".into(),
        };
        let mut hint = format!(
            "Not done: {} {place} does not appear in the task or in any tool result.",
            self.value
        );
        if !self.nearest.is_empty() {
            hint.push_str(" Values that do appear, nearest first:");
            for n in &self.nearest {
                hint.push_str("\n  ");
                hint.push_str(n);
            }
        }
        hint.push_str("\nUse the exact values from the results.");
        hint
    }
}

/// A candidate value found in text.
enum Token {
    Number(f64, String),
    Identifier(String, String),
}

impl Grounding {
    /// Adds text the model was shown (the task, instructions, a tool result).
    pub fn add(&mut self, text: &str) {
        for line in text.lines() {
            let shown = shorten(line.trim());
            for token in tokens(line, true) {
                match token {
                    Token::Number(n, _) => self.numbers.push((n, shown.clone())),
                    Token::Identifier(id, _) => {
                        self.identifiers.insert(id);
                    }
                }
            }
        }
    }

    /// Checks free text (the final answer).
    pub fn check_text(&self, text: &str) -> Result<(), Ungrounded> {
        self.check_str(text, None)
    }

    /// Checks every string and number in a call's arguments, except those under `free` keys.
    pub fn check_arguments(&self, args: &Value, free: &[String]) -> Result<(), Ungrounded> {
        self.check_value(args, None, free)
    }

    fn check_value(&self, v: &Value, key: Option<&str>, free: &[String]) -> Result<(), Ungrounded> {
        if key.is_some_and(|k| free.iter().any(|f| f == k)) {
            return Ok(());
        }
        match v {
            Value::String(s) => self.check_str(s, key),
            Value::Number(n) => self.check_str(&n.to_string(), key),
            Value::Array(items) => items
                .iter()
                .try_for_each(|i| self.check_value(i, key, free)),
            Value::Object(map) => map
                .iter()
                .try_for_each(|(k, v)| self.check_value(v, Some(k), free)),
            Value::Bool(_) | Value::Null => Ok(()),
        }
    }

    fn check_str(&self, text: &str, key: Option<&str>) -> Result<(), Ungrounded> {
        for token in tokens(text, false) {
            let (grounded, written) = match &token {
                Token::Number(n, written) => (
                    self.numbers.iter().any(|(m, _)| same_number(*m, *n)),
                    written,
                ),
                Token::Identifier(id, written) => (self.identifiers.contains(id), written),
            };
            if !grounded {
                return Err(Ungrounded {
                    value: written.clone(),
                    argument: key.map(str::to_owned),
                    nearest: self.nearest(&token),
                });
            }
        }
        Ok(())
    }

    /// Up to three shown numbers nearest to a number (with their lines); for an identifier, the
    /// shown identifiers sharing its letters.
    fn nearest(&self, token: &Token) -> Vec<String> {
        match token {
            Token::Number(n, _) => {
                let mut seen: Vec<&(f64, String)> = self.numbers.iter().collect();
                seen.sort_by(|a, b| (a.0 - n).abs().total_cmp(&(b.0 - n).abs()));
                let mut out: Vec<String> = Vec::new();
                for (m, line) in seen {
                    let entry = format!("{m} (in: {line})");
                    if !out.contains(&entry) {
                        out.push(entry);
                    }
                    if out.len() == 3 {
                        break;
                    }
                }
                out
            }
            Token::Identifier(id, _) => {
                let letters: String = id.chars().filter(|c| c.is_alphabetic()).collect();
                self.identifiers
                    .iter()
                    .filter(|i| {
                        i.chars().filter(|c| c.is_alphabetic()).collect::<String>() == letters
                    })
                    .take(5)
                    .cloned()
                    .collect()
            }
        }
    }
}

fn same_number(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn shorten(line: &str) -> String {
    if line.chars().count() <= 120 {
        return line.to_owned();
    }
    let cut: String = line.chars().take(117).collect();
    format!("{cut}...")
}

/// The values in `text`. With `all` (text the model was shown), single digits count too, so a
/// checked value that contains them (`4` of `zone 4`) is never refused for want of them.
fn tokens(text: &str, all: bool) -> Vec<Token> {
    let mut out = Vec::new();
    for word in text.split(|c: char| !(c.is_alphanumeric() || matches!(c, '.' | ',' | '-' | '_'))) {
        let word = word.trim_matches(|c: char| matches!(c, '.' | ',' | '-' | '_'));
        if word.is_empty() || !word.chars().any(|c| c.is_ascii_digit()) {
            continue;
        }
        // `V-2`, `zone4`; `8.81bar` is a number with its unit.
        if word.chars().next().is_some_and(char::is_alphabetic) {
            let id: String = word
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '.')
                .flat_map(char::to_lowercase)
                .collect();
            out.push(Token::Identifier(id, word.to_owned()));
            // `V-2` is also the number 2 to whoever writes `valve 2`.
            if !all {
                continue;
            }
        }
        for number in numbers(word) {
            let written = number.clone();
            let digits = number.chars().filter(char::is_ascii_digit).count();
            if !all && digits < 2 && !number.contains('.') {
                continue;
            }
            if let Ok(n) = number.replace(',', "").parse::<f64>() {
                out.push(Token::Number(n, written));
            }
        }
    }
    out
}

/// The numbers in a word: digit runs with at most one decimal point and `,` between groups of
/// three digits (`1,250.5`); a `-` between digits separates numbers (`2026-12-02`).
fn numbers(word: &str) -> Vec<String> {
    let chars: Vec<char> = word.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        let mut point = false;
        while i < chars.len() {
            let c = chars[i];
            let next_digit = chars.get(i + 1).is_some_and(char::is_ascii_digit);
            if c.is_ascii_digit() {
                i += 1;
            } else if c == '.' && !point && next_digit {
                point = true;
                i += 1;
            } else if c == ','
                && !point
                && chars[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .count()
                    == 3
            {
                i += 1;
            } else {
                break;
            }
        }
        out.push(chars[start..i].iter().collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shown() -> Grounding {
        let mut g = Grounding::default();
        g.add("Check the zone pressures and alert on each zone over its limit.");
        g.add("zones:\n- zone=zone1 pressure_bar=4.12 limit_bar=6.0 status=ok\n- zone=zone4 pressure_bar=8.81 limit_bar=6.0 status=\"OVER LIMIT\"\ntime=2026-12-02T10:00:00Z");
        g
    }

    #[test]
    fn values_read_are_grounded_in_any_format() {
        let g = shown();
        for ok in [
            "Zone 4 pressure 8.81 bar is over the 6.0 bar limit",
            "ZONE4: 8.810 bar",
            "zone 4 at 8.81bar (limit 6)",
            "checked at 2026-12-02 10:00",
        ] {
            assert_eq!(g.check_text(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            g.check_arguments(&json!({"message": "zone4 8.81", "level": 2}), &[]),
            Ok(())
        );
    }

    #[test]
    fn an_invented_number_is_refused_with_the_nearest_values_read() {
        let g = shown();
        let e = g
            .check_arguments(&json!({"message": "Zone 4 pressure is 4.81 bar"}), &[])
            .unwrap_err();
        assert_eq!(e.value, "4.81");
        assert_eq!(e.argument.as_deref(), Some("message"));
        assert!(
            e.nearest[0].starts_with("4.12 (in: - zone=zone1"),
            "{:?}",
            e.nearest
        );
        let hint = e.hint();
        assert!(
            hint.contains("4.81 in the argument 'message'") && hint.contains("8.81"),
            "{hint}"
        );
        // A free-text argument is not checked.
        assert_eq!(
            g.check_arguments(&json!({"message": "4.81"}), &["message".into()]),
            Ok(())
        );
    }

    #[test]
    fn an_invented_identifier_is_refused() {
        let g = shown();
        let e = g.check_text("Alert sent for zone7 and V-12.").unwrap_err();
        assert_eq!(e.value, "zone7");
        assert!(e.nearest.contains(&"zone4".to_owned()), "{:?}", e.nearest);
    }

    #[test]
    fn thousands_separators_and_dates_split_into_numbers() {
        assert_eq!(numbers("1,250.5"), vec!["1,250.5"]);
        assert_eq!(
            numbers("2026-12-02T10:00:00Z"),
            vec!["2026", "12", "02", "10", "00", "00"]
        );
        assert_eq!(numbers("1,25"), vec!["1", "25"]);
    }
}
