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

mod call_support;

/// Everything the model was shown that values may come from.
#[derive(Default)]
pub struct Grounding {
    /// (value, the line it was shown on)
    numbers: Vec<(f64, String)>,
    identifiers: BTreeSet<String>,
    /// Lowercase words of three or more letters, for `supports_call`.
    words: BTreeSet<String>,
    /// Shown lines with numbers: what each number was read for (`check_binding`).
    lines: Vec<ShownLine>,
}

/// A shown line's identifiers and numbers: a reading belongs to what its line names.
struct ShownLine {
    ids: BTreeSet<String>,
    numbers: Vec<f64>,
    /// `key=value` fields with a number for their value (the compact observation form): the
    /// key's words and the number.
    fields: Vec<(BTreeSet<String>, f64)>,
    text: String,
}

/// A value the model wrote that it was never shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Ungrounded {
    pub value: String,
    /// The argument it was in (`None`: the answer).
    pub argument: Option<String>,
    /// The shown values nearest to it, with the line each was shown on.
    pub nearest: Vec<String>,
    /// Set where the value was shown, but only for other things than the one it is written
    /// about (that thing, as written: `zone1`).
    pub read_for_other: Option<String>,
}

impl Ungrounded {
    /// What was wrong, in a few words (audit records, logs).
    pub fn reason(&self) -> String {
        match &self.read_for_other {
            Some(subject) => format!("{} was not read for {subject}", self.value),
            None => format!("{} was never shown", self.value),
        }
    }

    /// What the model is told: which value, and what it could have meant.
    pub fn hint(&self) -> String {
        let place = match &self.argument {
            Some(a) => format!("in the argument '{a}'"),
            None => "in your answer".into(),
        };
        let mut hint = match &self.read_for_other {
            Some(subject) => format!(
                "Not done: {} {place} was not read for {subject}. It appears only in:",
                self.value
            ),
            None => format!(
                "Not done: {} {place} does not appear in the task or in any tool result.",
                self.value
            ),
        };
        if self.read_for_other.is_some() {
            for n in &self.nearest {
                hint.push_str("\n  ");
                hint.push_str(n);
            }
            hint.push_str("\nUse the values from the line of what you write about.");
            return hint;
        }
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
        self.words.extend(words(text));
        for line in text.lines() {
            let shown = shorten(line.trim());
            let mut read = ShownLine {
                ids: BTreeSet::new(),
                numbers: Vec::new(),
                fields: numeric_fields(line),
                text: shown.clone(),
            };
            for token in tokens(line, true) {
                match token {
                    Token::Number(n, _) => {
                        self.numbers.push((n, shown.clone()));
                        read.numbers.push(n);
                    }
                    Token::Identifier(id, _) => {
                        self.identifiers.insert(id.clone());
                        read.ids.insert(id);
                    }
                }
            }
            if !read.numbers.is_empty() {
                self.lines.push(read);
            }
        }
    }

    /// Checks free text (the final answer).
    pub fn check_text(&self, text: &str) -> Result<(), Ungrounded> {
        self.check_str(text, None)?;
        self.check_binding(text, None)
    }

    /// Checks every string and number in a call's arguments, except those under `free` keys.
    pub fn check_arguments(&self, args: &Value, free: &[String]) -> Result<(), Ungrounded> {
        self.check_value(args, None, free)?;
        // Values of one call are about the same things: `{"zone": "zone1", "bar": 8.81}` binds
        // as `zone1 8.81` does.
        let mut text = String::new();
        collect_checked_text(args, None, free, &mut text);
        self.check_binding(&text, None)
    }

    /// A number written next to the name of what it is about must have been read for that: on
    /// a shown line that names it (`zone4 8.81`, not `zone1 8.81` where the line with 8.81 names
    /// only zone4). Lines that name nothing (the task's own numbers) bind to anything, and text
    /// that names nothing shown is not checked.
    fn check_binding(&self, text: &str, key: Option<&str>) -> Result<(), Ungrounded> {
        let subjects = self.subjects_in(text);
        if subjects.is_empty() {
            return Ok(());
        }
        // Where the previous number ended: the words since then name the next one's field.
        let mut cursor = 0;
        for token in tokens(text, false) {
            let Token::Number(n, written) = token else {
                continue;
            };
            let at = text[cursor..].find(&written).map_or(cursor, |i| cursor + i);
            let before = &text[cursor..at];
            cursor = (at + written.len()).min(text.len());
            let on: Vec<&ShownLine> = self
                .lines
                .iter()
                .filter(|l| l.numbers.iter().any(|m| same_number(*m, n)))
                .collect();
            let about: Vec<&ShownLine> = on
                .iter()
                .copied()
                .filter(|l| l.ids.is_empty() || l.ids.iter().any(|id| subjects.contains(id)))
                .collect();
            if !on.is_empty() && about.is_empty() {
                return Err(Ungrounded {
                    value: written,
                    argument: key.map(str::to_owned),
                    nearest: on.iter().take(3).map(|l| l.text.clone()).collect(),
                    read_for_other: subjects.iter().next().cloned(),
                });
            }
            // On the lines it is about, the number must be the field the words before it name,
            // where they name one (`torque 1041` where 1041 is the line's `cycles`).
            let written_words = words(before);
            let named = |fields: &[(BTreeSet<String>, f64)]| -> Vec<f64> {
                fields
                    .iter()
                    .filter(|(k, _)| k.iter().any(|w| written_words.contains(w)))
                    .map(|(_, v)| *v)
                    .collect()
            };
            let misread = about.iter().find_map(|l| {
                let values = named(&l.fields);
                let field_of_n = l.fields.iter().any(|(_, v)| same_number(*v, n));
                (field_of_n && !values.is_empty() && !values.iter().any(|v| same_number(*v, n)))
                    .then_some(*l)
            });
            let fits_somewhere = about.iter().any(|l| {
                let values = named(&l.fields);
                values.is_empty() || values.iter().any(|v| same_number(*v, n))
            });
            if let (Some(line), false) = (misread, fits_somewhere) {
                return Err(Ungrounded {
                    value: written,
                    argument: key.map(str::to_owned),
                    nearest: vec![line.text.clone()],
                    read_for_other: Some(format!(
                        "what you name ({})",
                        line.fields
                            .iter()
                            .filter(|(k, _)| k.iter().any(|w| written_words.contains(w)))
                            .flat_map(|(k, _)| k.iter().cloned())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                });
            }
        }
        Ok(())
    }

    /// The identifiers written in `text`, normalised as shown ones are (`V-2` → `v2`).
    pub(crate) fn identifiers_in(&self, text: &str) -> BTreeSet<String> {
        tokens(text, true)
            .into_iter()
            .filter_map(|t| match t {
                Token::Identifier(id, _) => Some(id),
                Token::Number(..) => None,
            })
            .collect()
    }

    /// The shown identifiers a text names: as written (`zone4`, `S-17`) or as a word and a
    /// number (`Zone 4`).
    pub(crate) fn subjects_in(&self, text: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for token in tokens(text, false) {
            if let Token::Identifier(id, _) = token {
                if self.identifiers.contains(&id) {
                    out.insert(id);
                }
            }
        }
        let parts: Vec<&str> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        for pair in parts.windows(2) {
            if pair[0].chars().all(char::is_alphabetic)
                && pair[1].chars().all(|c| c.is_ascii_digit())
            {
                let id = format!("{}{}", pair[0].to_lowercase(), pair[1]);
                if self.identifiers.contains(&id) {
                    out.insert(id);
                }
            }
        }
        out
    }

    fn knows(&self, token: &Token) -> bool {
        match token {
            Token::Number(n, _) => self.numbers.iter().any(|(m, _)| same_number(*m, *n)),
            Token::Identifier(id, _) => self.identifiers.contains(id),
        }
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
            let written = match &token {
                Token::Number(_, w) | Token::Identifier(_, w) => w,
            };
            if !self.knows(&token) {
                return Err(Ungrounded {
                    value: written.clone(),
                    argument: key.map(str::to_owned),
                    nearest: self.nearest(&token),
                    read_for_other: None,
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

/// The `key=value` fields of a line whose value is one number, keyed by the words that set
/// the key apart from the line's other keys (`pressure_bar=8.81 limit_bar=6.0` → {pressure}
/// 8.81, {limit} 6.0: the shared unit names neither).
fn numeric_fields(line: &str) -> Vec<(BTreeSet<String>, f64)> {
    let fields: Vec<(BTreeSet<String>, f64)> = line
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.trim_start_matches('-').split_once('=')?;
            let v = v.trim_matches(|c: char| matches!(c, '"' | ',' | ';'));
            let n = v.parse::<f64>().ok()?;
            Some((words(&k.replace('_', " ")), n))
        })
        .collect();
    let shared = |w: &String| fields.iter().filter(|(k, _)| k.contains(w)).count() > 1;
    fields
        .iter()
        .map(|(k, n)| (k.iter().filter(|w| !shared(w)).cloned().collect(), *n))
        .filter(|(k, _): &(BTreeSet<String>, f64)| !k.is_empty())
        .collect()
}

/// The checked strings and numbers of a call's arguments, one per line.
fn collect_checked_text(v: &Value, key: Option<&str>, free: &[String], out: &mut String) {
    if key.is_some_and(|k| free.iter().any(|f| f == k)) {
        return;
    }
    match v {
        Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Number(n) => {
            out.push_str(&n.to_string());
            out.push('\n');
        }
        Value::Array(items) => items
            .iter()
            .for_each(|i| collect_checked_text(i, key, free, out)),
        Value::Object(map) => map
            .iter()
            .for_each(|(k, v)| collect_checked_text(v, Some(k), free, out)),
        Value::Bool(_) | Value::Null => {}
    }
}

/// The lowercase words of three or more letters in `text`.
fn words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_alphabetic())
        .filter(|w| w.chars().count() >= 3)
        .map(str::to_lowercase)
        .collect()
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
    fn a_value_read_for_another_zone_is_refused_with_the_line_it_was_read_on() {
        let g = shown();
        for ok in [
            "Zone 4 pressure 8.81 bar is over the 6.0 bar limit",
            "zone4 at 8.81; zone1 at 4.12",
            "8.81 bar over the limit",
        ] {
            assert_eq!(g.check_text(ok), Ok(()), "{ok}");
        }
        let e = g.check_text("Alert: Zone 1 pressure 8.81 bar").unwrap_err();
        assert_eq!(
            (e.value.as_str(), e.read_for_other.as_deref()),
            ("8.81", Some("zone1"))
        );
        let hint = e.hint();
        assert!(
            hint.contains("8.81 in your answer was not read for zone1"),
            "{hint}"
        );
        assert!(hint.contains("zone=zone4 pressure_bar=8.81"), "{hint}");
        // A number of the right line but another field than the one named.
        let e = g.check_text("Zone 4 pressure is 6.0 bar").unwrap_err();
        assert_eq!(e.value, "6.0");
        assert!(
            e.hint()
                .contains("was not read for what you name (pressure)"),
            "{}",
            e.hint()
        );
        assert_eq!(
            g.check_text("Zone 4 pressure 8.81 bar, limit 6.0 bar"),
            Ok(())
        );
        // Across the values of one call too.
        let e = g
            .check_arguments(&json!({"zone": "zone1", "pressure": 8.81}), &[])
            .unwrap_err();
        assert_eq!(e.read_for_other.as_deref(), Some("zone1"));
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
