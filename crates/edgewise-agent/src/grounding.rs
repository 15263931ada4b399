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
    /// `key=value` fields with a number for their value (the compact observation form).
    fields: Vec<Field>,
    text: String,
}

/// A `key=value` field of a shown line whose value is one number.
struct Field {
    /// As shown: `torque_nm=43.82`.
    shown: String,
    /// The words that set the key apart from the line's other keys (`pressure_bar` among
    /// `limit_bar`: {pressure}).
    words: BTreeSet<String>,
    value: f64,
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
    /// What was read for the thing written about: the value of the field the words name on
    /// its line (`torque_nm=43.82`), else its lines. A small model refused without it tends to
    /// write the same wrong value again.
    pub read_there: Vec<String>,
    /// The numbers a retry may write (as shown): those of `read_there` and those of the names
    /// of what the answer is about (`17` of `S-17`). Empty where `read_there` is.
    pub retry_numbers: Vec<String>,
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
            if !self.read_there.is_empty() {
                hint.push_str("\nWhat was read for what you write about:");
                for n in &self.read_there {
                    hint.push_str("\n  ");
                    hint.push_str(n);
                }
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

impl Ungrounded {
    /// What the model is told in place of a refused answer that wrote a value read for something
    /// else: what was read for what it writes about, without the wrong value (a small model shown
    /// its wrong value writes it again). `None` where nothing was read for it.
    pub fn retry_note(&self) -> Option<String> {
        if self.read_there.is_empty() {
            return None;
        }
        let mut note = String::from(
            "Not done: your answer gives a value that was not read for what it names. What was read for what you write about:",
        );
        for n in &self.read_there {
            note.push_str("\n  ");
            note.push_str(n);
        }
        note.push_str("\nAnswer again with exactly these values.");
        Some(note)
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

    /// Checks free text (the final answer). The numbers of a numbered list's items (`10. `)
    /// are free text.
    pub fn check_text(&self, text: &str) -> Result<(), Ungrounded> {
        let text = &without_list_numbers(text);
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
        // The shown lines that name what the text is about.
        let subject_lines: Vec<&ShownLine> = self
            .lines
            .iter()
            .filter(|l| l.ids.iter().any(|id| subjects.contains(id)))
            .collect();
        // Where the previous number ended: the words since then name the next one's field.
        let mut cursor = 0;
        for token in tokens(text, false) {
            let Token::Number(n, written) = token else {
                continue;
            };
            let at = text[cursor..].find(&written).map_or(cursor, |i| cursor + i);
            let before = &text[cursor..at];
            cursor = (at + written.len()).min(text.len());
            let written_words = words(before);
            // What was read there: the named fields' values on the subject's lines, else the
            // lines themselves.
            let read_there = || -> Vec<String> {
                let values: Vec<String> = subject_lines
                    .iter()
                    .flat_map(|l| named_fields(l, &written_words))
                    .map(|f| f.shown.clone())
                    .collect();
                let mut out: Vec<String> = if values.is_empty() {
                    subject_lines.iter().map(|l| l.text.clone()).collect()
                } else {
                    values
                };
                // The same line may have been shown twice (two reads).
                let mut seen = BTreeSet::new();
                out.retain(|v| seen.insert(v.clone()));
                out.truncate(3);
                out
            };
            let retry_numbers = |read: &[String]| -> Vec<String> {
                let mut out: Vec<String> = read.iter().flat_map(|r| written_numbers(r)).collect();
                for token in tokens(text, false) {
                    if let Token::Identifier(id, as_written) = token {
                        if subjects.contains(&id) {
                            out.extend(numbers(&as_written));
                        }
                    }
                }
                out.sort();
                out.dedup();
                out
            };
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
                    retry_numbers: retry_numbers(&read_there()),
                    read_there: read_there(),
                });
            }
            // On the lines it is about, the number must be the field the words before it name,
            // where they name one (`torque 1041` where 1041 is the line's `cycles`).
            let misread = about.iter().find_map(|l| {
                let values = named_fields(l, &written_words);
                let field_of_n = l.fields.iter().any(|f| same_number(f.value, n));
                (field_of_n
                    && !values.is_empty()
                    && !values.iter().any(|f| same_number(f.value, n)))
                .then_some(*l)
            });
            let fits_somewhere = about.iter().any(|l| {
                let values = named_fields(l, &written_words);
                values.is_empty() || values.iter().any(|f| same_number(f.value, n))
            });
            if let (Some(line), false) = (misread, fits_somewhere) {
                let names: Vec<&str> = named_fields(line, &written_words)
                    .iter()
                    .flat_map(|f| f.words.iter().map(String::as_str))
                    .collect();
                return Err(Ungrounded {
                    value: written,
                    argument: key.map(str::to_owned),
                    nearest: vec![line.text.clone()],
                    read_for_other: Some(format!("what you name ({})", names.join(", "))),
                    retry_numbers: retry_numbers(&read_there()),
                    read_there: read_there(),
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
                    read_there: Vec::new(),
                    retry_numbers: Vec::new(),
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
fn numeric_fields(line: &str) -> Vec<Field> {
    let fields: Vec<Field> = line
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.trim_start_matches('-').split_once('=')?;
            let v = v.trim_matches(|c: char| matches!(c, '"' | ',' | ';'));
            let value = v.parse::<f64>().ok()?;
            Some(Field {
                shown: format!("{k}={v}"),
                words: words(&k.replace('_', " ")),
                value,
            })
        })
        .collect();
    let shared = |w: &String| fields.iter().filter(|f| f.words.contains(w)).count() > 1;
    let distinct: Vec<BTreeSet<String>> = fields
        .iter()
        .map(|f| f.words.iter().filter(|w| !shared(w)).cloned().collect())
        .collect();
    fields
        .into_iter()
        .zip(distinct)
        .map(|(f, words)| Field { words, ..f })
        .filter(|f| !f.words.is_empty())
        .collect()
}

/// The numbers written in `text`, as written (`torque_nm=43.82` → `43.82`).
fn written_numbers(text: &str) -> Vec<String> {
    tokens(text, true)
        .into_iter()
        .filter_map(|t| match t {
            Token::Number(_, w) => Some(w),
            Token::Identifier(..) => None,
        })
        .collect()
}

/// The fields of `line` that `written` names.
fn named_fields<'a>(line: &'a ShownLine, written: &BTreeSet<String>) -> Vec<&'a Field> {
    line.fields
        .iter()
        .filter(|f| f.words.iter().any(|w| written.contains(w)))
        .collect()
}

/// `text` with the numbers that open numbered-list items (`1. `, `10) ` at a line's start)
/// blanked out.
fn without_list_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let indent = line.len() - line.trim_start().len();
        let rest = &line[indent..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let marker = (1..=3).contains(&digits)
            && matches!(rest.as_bytes().get(digits), Some(b'.' | b')'))
            && rest[digits + 1..].starts_with(char::is_whitespace);
        if marker {
            out.push_str(&line[..indent]);
            out.push_str(&" ".repeat(digits));
            out.push_str(&rest[digits..]);
        } else {
            out.push_str(line);
        }
    }
    out
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

    fn stations() -> Grounding {
        let mut g = Grounding::default();
        g.add("Report the torque of station S-17 in Nm.");
        g.add("line=7\nstations:\n- station=S-16 torque_nm=41.97 spec_nm=42.0 cycles=2210\n- station=S-17 torque_nm=43.82 spec_nm=42.0 cycles=1041\n- station=S-18 torque_nm=40.72 spec_nm=42.0 cycles=5120");
        g
    }

    #[test]
    fn a_refusal_says_what_was_read_for_the_field_and_thing_named() {
        let g = stations();
        assert_eq!(
            g.check_text("The torque of station S-17 was 43.82 Nm."),
            Ok(())
        );
        // Another field of the same line: the hint gives the named field's value there.
        for wrong in [
            "The torque of station S-17 was 1041 Nm.",
            "The torque of station S-17 was 42.0 Nm.",
        ] {
            let e = g.check_text(wrong).unwrap_err();
            assert!(
                e.hint().contains("\n  torque_nm=43.82\n"),
                "{wrong}: {}",
                e.hint()
            );
        }
        // Another station's reading: likewise.
        let e = g
            .check_text("The torque of station S-17 was 41.97 Nm.")
            .unwrap_err();
        assert_eq!(e.read_for_other.as_deref(), Some("s17"));
        let hint = e.hint();
        assert!(hint.contains("station=S-16 torque_nm=41.97"), "{hint}");
        assert!(hint.contains("\n  torque_nm=43.82\n"), "{hint}");
        // Naming no field: the lines of the thing named.
        let e = g.check_text("S-17: 2210").unwrap_err();
        assert!(
            e.hint().contains("\n  - station=S-17 torque_nm=43.82"),
            "{}",
            e.hint()
        );
    }

    #[test]
    fn the_numbers_of_a_numbered_list_are_free_text() {
        let g = stations();
        let list = "S-17:\n1. torque 43.82 Nm\n  10. cycles 1041\n11) done";
        assert_eq!(g.check_text(list), Ok(()));
        // Only at a line's start and before a space: values elsewhere are still checked.
        assert!(g.check_text("S-17 torque was 12. Then 43.82").is_err());
        assert!(g.check_text("12.5 Nm").is_err());
        assert_eq!(
            without_list_numbers("10. a\n 2) b\n1234. c"),
            "  . a\n  ) b\n1234. c"
        );
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
