//! The task's selection of list items. A task like "for each zone whose status is OVER LIMIT,
//! publish an alert" asks the model to pick items out of a list result, and a small model picks
//! the first item (zone1, status ok) about as often as the right one. Asked the narrower
//! question (which field and value the task selects by), the same model answers reliably; the
//! runtime then does the picking: a later call of another tool that names an item outside the
//! selection is refused, with the lines of the items the task does ask for.
//!
//! The model's answer is only a proposal. It counts when the value is one the list holds in
//! that field, splits the list (some items have it, some do not), and is written in the task
//! without a negation before it ("not ok" selects the other items; that is left alone). Anything
//! else selects nothing and checks nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::grounding::Grounding;

/// The `- key=value …` items of a tool result in the compact observation form.
#[derive(Debug, Clone)]
pub struct ItemList {
    tool: String,
    items: Vec<Item>,
}

#[derive(Debug, Clone)]
struct Item {
    /// The item's lines as shown (`- zone=zone4 pressure_bar=8.29 …`).
    text: String,
    fields: BTreeMap<String, String>,
}

/// A selection that held up: the items whose `field` is `value`.
#[derive(Debug, Clone)]
pub struct Selection {
    tool: String,
    field: String,
    value: String,
    selected: Vec<String>,
    /// Identifiers named only on items outside the selection → that item's text.
    outside: BTreeMap<String, String>,
    /// Identifiers of selected items → (the item's text, the values of `wanted` on it).
    inside: BTreeMap<String, (String, Vec<(String, String)>)>,
}

/// A call that names an item the task does not select.
#[derive(Debug, Clone, PartialEq)]
pub struct OffSelection {
    pub item: String,
    hint: String,
    reason: String,
    /// The text of every item outside the selection, and what to show in their place.
    pub outside: Vec<String>,
    pub left_out_note: String,
    /// For a call that leaves out values the task asks for: the argument that names the item,
    /// and the values it must give (`tighten`).
    pub missing: Option<(String, Vec<String>)>,
}

impl OffSelection {
    /// What the model is told: the item's line and those of the items the task asks for.
    pub fn hint(&self) -> String {
        self.hint.clone()
    }

    /// In a few words, for the audit log.
    pub fn reason(&self) -> String {
        self.reason.clone()
    }
}

impl ItemList {
    /// The items of `observation`, when it holds a list of two or more `key=value` items with a
    /// field that tells some of them apart.
    pub fn parse(tool: &str, observation: &str) -> Option<ItemList> {
        let mut items: Vec<Item> = Vec::new();
        for line in observation.lines() {
            if let Some(rest) = line.strip_prefix("- ") {
                items.push(Item {
                    text: line.trim_end().to_owned(),
                    fields: fields(rest),
                });
            } else if let (Some(item), true) = (items.last_mut(), line.starts_with("  ")) {
                item.text.push('\n');
                item.text.push_str(line.trim_end());
                item.fields.extend(fields(line.trim_start()));
            }
        }
        items.retain(|i| !i.fields.is_empty());
        let list = ItemList {
            tool: tool.to_owned(),
            items,
        };
        (list.items.len() >= 2 && !list.distinguishing_fields().is_empty()).then_some(list)
    }

    /// Fields with two or more distinct values across the items.
    fn distinguishing_fields(&self) -> Vec<String> {
        let mut values: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for item in &self.items {
            for (k, v) in &item.fields {
                values.entry(k).or_default().insert(v.to_lowercase());
            }
        }
        values
            .into_iter()
            .filter(|(_, v)| v.len() >= 2)
            .map(|(k, _)| k.to_owned())
            .collect()
    }

    /// The tool whose result this is.
    pub fn tool(&self) -> &str {
        &self.tool
    }

    /// The question for the model: the task, the result, and a grammar for the answer.
    pub fn question(&self, task: &str, observation: &str) -> (String, Value) {
        let mut fields = self.distinguishing_fields();
        fields.push("none".into());
        let text = format!(
            "Task: {task}\n\nTool result:\n{observation}\n\nThe task acts on the items whose field has a certain value. Which field and value?"
        );
        let schema = json!({
            "type": "object",
            "properties": {
                "field": {"enum": fields},
                "value": {"type": "string", "maxLength": 80},
            },
            "required": ["field", "value"],
            "additionalProperties": false,
        });
        (text, schema)
    }

    /// The selection the model's `answer` names, if it holds up (see the module doc).
    pub fn select(&self, task: &str, answer: &str, ground: &Grounding) -> Option<Selection> {
        let answer: Value = serde_json::from_str(answer).ok()?;
        let field = answer["field"].as_str()?;
        let value = answer["value"].as_str()?.trim().trim_matches('"');
        if value.is_empty() || !named_plainly(task, value) {
            return None;
        }
        let (selected, outside): (Vec<&Item>, Vec<&Item>) = self.items.iter().partition(|i| {
            i.fields
                .get(field)
                .is_some_and(|v| v.eq_ignore_ascii_case(value))
        });
        if selected.is_empty() || outside.is_empty() {
            return None;
        }
        // "WARNING or OVER LIMIT": a task that writes another value of the field selects by
        // more than the one answer, which would refuse the calls about the other.
        let other_named = outside.iter().any(|i| {
            i.fields
                .get(field)
                .is_some_and(|v| v.chars().any(char::is_alphabetic) && mentions(task, v))
        });
        if other_named {
            return None;
        }
        let inside_ids: BTreeSet<String> = selected
            .iter()
            .flat_map(|i| ground.identifiers_in(&i.text))
            .collect();
        let wanted = self.fields_the_task_names(task, field, value);
        let mut inside = BTreeMap::new();
        for item in &selected {
            let values: Vec<(String, String)> = wanted
                .iter()
                .filter_map(|f| Some((f.clone(), item.fields.get(f)?.clone())))
                .collect();
            for id in ground.identifiers_in(&item.text) {
                inside.insert(id, (item.text.clone(), values.clone()));
            }
        }
        let mut outside_ids = BTreeMap::new();
        for item in &outside {
            for id in ground.identifiers_in(&item.text) {
                if !inside_ids.contains(&id) {
                    outside_ids.insert(id, item.text.clone());
                }
            }
        }
        Some(Selection {
            tool: self.tool.clone(),
            field: field.to_owned(),
            value: value.to_owned(),
            selected: selected.iter().map(|i| i.text.clone()).collect(),
            outside: outside_ids,
            inside,
        })
    }

    /// Fields other than the selecting one that the task names by a word of their key
    /// (`its pressure` → `pressure_bar`). Words shared by several keys (units: `bar`) and the
    /// words of the selecting value (`OVER LIMIT` → not `limit_bar`) name nothing.
    fn fields_the_task_names(&self, task: &str, field: &str, value: &str) -> Vec<String> {
        let key_words = |k: &str| -> BTreeSet<String> {
            k.split(|c: char| !c.is_alphanumeric())
                .filter(|w| w.len() >= 3)
                .map(str::to_lowercase)
                .collect()
        };
        let keys: BTreeSet<&String> = self.items.iter().flat_map(|i| i.fields.keys()).collect();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for k in &keys {
            for w in key_words(k) {
                *seen.entry(w).or_default() += 1;
            }
        }
        let value_words = key_words(value);
        // Tool names in the task (`local_sensor_read`) name no field.
        let task_words: BTreeSet<String> = task
            .split_whitespace()
            .filter(|w| !w.contains('_'))
            .flat_map(|w| w.split(|c: char| !c.is_alphanumeric()))
            .map(str::to_lowercase)
            .filter(|w| !value_words.contains(w))
            .collect();
        keys.into_iter()
            .filter(|k| k.as_str() != field)
            .filter(|k| {
                key_words(k)
                    .iter()
                    .any(|w| seen[w] == 1 && task_words.contains(w))
            })
            .cloned()
            .collect()
    }
}

impl Selection {
    /// `field = value (n of m items, from TOOL's result)`, for the audit log.
    pub fn describe(&self) -> String {
        format!(
            "{} = {} ({} of {} items of {}'s result)",
            self.field,
            self.value,
            self.selected.len(),
            self.selected.len() + self.outside_items(),
            self.tool
        )
    }

    fn outside_items(&self) -> usize {
        self.outside.values().collect::<BTreeSet<_>>().len()
    }

    /// The tool whose result was selected from (its own calls are not checked: reading an item
    /// is not acting on it).
    pub fn tool(&self) -> &str {
        &self.tool
    }

    /// Refuses a call of another tool whose arguments name an item outside the selection.
    pub fn check(&self, tool: &str, args: &Value, ground: &Grounding) -> Result<(), OffSelection> {
        if tool == self.tool {
            return Ok(());
        }
        let mut text = String::new();
        crate::runner::collect_strings(args, &mut text);
        let named = ground.subjects_in(&text);
        let (field, value) = (&self.field, &self.value);
        let Some((item, line)) = self.outside.iter().find(|(id, _)| named.contains(*id)) else {
            return self.check_complete(&named, args, ground);
        };
        let mut hint = format!(
            "Not done: the task asks only for the items whose {field} is {value}, and {item} is not one of them:\n  {line}\nThe items whose {field} is {value}:"
        );
        for s in &self.selected {
            hint.push_str("\n  ");
            hint.push_str(s);
        }
        let outside: BTreeSet<String> = self.outside.values().cloned().collect();
        Err(OffSelection {
            item: item.clone(),
            left_out_note: format!(
                "({} items whose {field} is not {value} are left out: the task does not ask for them)",
                outside.len()
            ),
            outside: outside.into_iter().collect(),
            missing: None,
            reason: format!("{item} is not among the items the task selects ({field} = {value})"),
            hint,
        })
    }
}

impl Selection {
    /// A call about a selected item gives the values of the fields the task names for it
    /// ("an alert that names the zone and its pressure" needs zone4's `pressure_bar`).
    fn check_complete(
        &self,
        named: &BTreeSet<String>,
        args: &Value,
        ground: &Grounding,
    ) -> Result<(), OffSelection> {
        // Only free text is held to the fields the task names: an argument that only names the
        // item (`{"zone": "zone4"}`, a lookup) is not a report about it.
        let free_text = |s: &str| s.split_whitespace().count() >= 3;
        let Some(map) = args.as_object() else {
            return Ok(());
        };
        let Some((argument, text)) =
            map.iter()
                .filter_map(|(k, v)| Some((k, v.as_str()?)))
                .find(|(_, s)| {
                    free_text(s) && named.iter().any(|id| ground.subjects_in(s).contains(id))
                })
        else {
            return Ok(());
        };
        let named = ground.subjects_in(text);
        for id in &named {
            let Some((line, values)) = self.inside.get(id) else {
                continue;
            };
            let missing: Vec<&(String, String)> =
                values.iter().filter(|(_, v)| !written(text, v)).collect();
            if missing.is_empty() {
                continue;
            }
            let list = missing
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(OffSelection {
                item: id.clone(),
                hint: format!(
                    "Not done: the task asks for the {} of each item it acts on, and the call about {id} does not give {list}. Its line:\n  {line}",
                    missing.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ")
                ),
                reason: format!("the call about {id} leaves out {list}, which the task asks for"),
                outside: Vec::new(),
                left_out_note: String::new(),
                missing: Some((
                    argument.clone(),
                    missing.iter().map(|(_, v)| v.clone()).collect(),
                )),
            });
        }
        Ok(())
    }
}

/// `tool` with `argument` required to give `values` in that order (a JSON-schema pattern on that
/// string), for the turn after a call that left them out: the model still writes the text, the
/// grammar only keeps it from closing the string without them. `None` when the argument is not a
/// plain string property.
pub fn tighten(
    tool: &edgewise_infer::ToolSpec,
    argument: &str,
    values: &[String],
) -> Option<edgewise_infer::ToolSpec> {
    let mut tool = tool.clone();
    let prop = tool.parameters.get_mut("properties")?.get_mut(argument)?;
    let limited = [
        "pattern",
        "enum",
        "const",
        "format",
        "maxLength",
        "minLength",
    ]
    .iter()
    .any(|k| prop.get(k).is_some());
    if prop.get("type")? != "string" || limited {
        return None;
    }
    // Every value, in the order given, anywhere in the string. (A bounded gap, `.{0,80}` before
    // a value, would also end a model's loop inside the string, but llguidance's lexer runs out
    // of fuel on it mid-generation, "too many expressions constructed"; a loop is cut off by
    // max_tokens and retried instead.)
    let mut pattern = String::from(".*");
    for v in values {
        pattern.push_str(&value_pattern(v));
        pattern.push_str(".*");
    }
    prop["pattern"] = Value::String(pattern);
    Some(tool)
}

/// A regex for `value` as `written` accepts it: a number exactly, words without case and with an
/// optional separator where letters meet digits (`zone4` as `Zone 4`, `zone_4`).
fn value_pattern(value: &str) -> String {
    let numeric = value.parse::<f64>().is_ok();
    let mut out = String::new();
    let mut last: Option<char> = None;
    for c in value.chars() {
        if let Some(l) = last {
            if !numeric
                && (l.is_alphabetic() && c.is_ascii_digit()
                    || l.is_ascii_digit() && c.is_alphabetic())
            {
                out.push_str("[ _-]?");
            }
        }
        let (lower, upper) = (
            c.to_lowercase().collect::<String>(),
            c.to_uppercase().collect::<String>(),
        );
        if !numeric && lower != upper && lower.chars().count() == 1 && upper.chars().count() == 1 {
            out.push_str(&format!("[{lower}{upper}]"));
        } else if r"\.+*?()|[]{}^$-/".contains(c) {
            out.push('\\');
            out.push(c);
        } else {
            out.push(c);
        }
        last = Some(c);
    }
    out
}

/// Whether `text` gives `value`: as a number (`8.90` gives `8.9`) or as words, without case.
fn written(text: &str, value: &str) -> bool {
    let numeric = value.strip_prefix('-').unwrap_or(value);
    let numeric = !numeric.is_empty()
        && numeric.chars().all(|c| c.is_ascii_digit() || c == '.')
        && numeric.chars().any(|c| c.is_ascii_digit());
    if let (true, Ok(n)) = (numeric, value.parse::<f64>()) {
        return text
            .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
            .flat_map(|w| {
                // `-18.2` is a negative number; `2026-12-03` is three.
                let signed = w.trim_matches('.').parse::<f64>().ok();
                let parts = w
                    .split('-')
                    .filter_map(|p| p.trim_matches('.').parse::<f64>().ok());
                signed.into_iter().chain(parts)
            })
            .any(|m| (m - n).abs() < 1e-9);
    }
    // `Zone 4` gives `zone4`.
    let plain = |t: &str| -> String {
        t.chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect()
    };
    plain(text).contains(&plain(value))
}

/// `key=value` pairs of one line; values may be JSON-quoted (`status="OVER LIMIT"`).
fn fields(line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = line.trim();
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim();
        let after = &rest[eq + 1..];
        let (value, tail) = if after.starts_with('"') {
            let mut stream = serde_json::Deserializer::from_str(after).into_iter::<String>();
            match stream.next() {
                Some(Ok(s)) => (s, after.get(stream.byte_offset()..).unwrap_or("")),
                _ => break,
            }
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        if key.is_empty() || key.contains(char::is_whitespace) {
            break;
        }
        out.insert(key.to_owned(), value);
        rest = tail.trim_start();
    }
    out
}

/// Whether `task` writes `value` as words of its own (not inside another word).
fn mentions(task: &str, value: &str) -> bool {
    let lower = task.to_lowercase();
    let value = value.to_lowercase();
    !value.is_empty()
        && lower.match_indices(&value).any(|(at, _)| {
            let before = lower[..at].chars().next_back();
            let after = lower[at + value.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
        })
}

/// Whether `task` writes `value` as words of its own, with no negation in the clause before it.
fn named_plainly(task: &str, value: &str) -> bool {
    const NEGATIONS: [&str; 16] = [
        "not",
        "no",
        "non",
        "isn't",
        "aren't",
        "except",
        "without",
        "never",
        "than",
        "unless",
        "skip",
        "ignore",
        "ignoring",
        "excluding",
        "apart",
        "but",
    ];
    // The clause before the value (back to `,` `;` `.` `:`), at most this many bytes of it.
    const CLAUSE: usize = 200;
    let lower = task.to_lowercase();
    let value = value.to_lowercase();
    let mut found = false;
    for (at, _) in lower.match_indices(&value) {
        let before = lower[..at].chars().next_back();
        let after = lower[at + value.len()..].chars().next();
        if before.is_some_and(char::is_alphanumeric) || after.is_some_and(char::is_alphanumeric) {
            continue;
        }
        let mut from = at.saturating_sub(CLAUSE);
        while !lower.is_char_boundary(from) {
            from += 1;
        }
        let clause = lower[from..at]
            .rsplit([',', ';', '.', ':'])
            .next()
            .unwrap_or_default();
        let negated = clause.split_whitespace().any(|w| {
            NEGATIONS.contains(&w.trim_matches(|c: char| !c.is_alphanumeric() && c != '\''))
        });
        if negated {
            return false;
        }
        found = true;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: &str = "Check the zone pressures with local_sensor_read. For each zone whose status is OVER LIMIT, publish an alert with alert_system that names the zone and its pressure.";
    const READ: &str = "time=2026-12-03T10:00:00Z\nzones:\n- zone=zone1 pressure_bar=4.39 limit_bar=6.0 status=ok\n- zone=zone2 pressure_bar=4.61 limit_bar=6.0 status=ok\n- zone=zone4 pressure_bar=8.29 limit_bar=6.0 status=\"OVER LIMIT\"";

    fn shown() -> Grounding {
        let mut g = Grounding::default();
        g.add(TASK);
        g.add(READ);
        g
    }

    fn selection(answer: &str) -> Option<Selection> {
        let list = ItemList::parse("local_sensor_read", READ).unwrap();
        list.select(TASK, answer, &shown())
    }

    #[test]
    fn the_question_offers_the_fields_that_tell_items_apart() {
        let list = ItemList::parse("local_sensor_read", READ).unwrap();
        let (text, schema) = list.question(TASK, READ);
        assert!(text.contains("status=\"OVER LIMIT\""), "{text}");
        assert_eq!(
            schema["properties"]["field"]["enum"],
            json!(["pressure_bar", "status", "zone", "none"])
        );
        assert!(
            ItemList::parse("t", "- zone=zone1 status=ok").is_none(),
            "one item"
        );
        assert!(ItemList::parse("t", "all fine").is_none());
    }

    #[test]
    fn a_call_naming_an_item_outside_the_selection_is_refused_with_the_right_lines() {
        let sel = selection(r#"{"field": "status", "value": "OVER LIMIT"}"#).unwrap();
        assert_eq!(
            sel.describe(),
            "status = OVER LIMIT (1 of 3 items of local_sensor_read's result)"
        );
        let g = shown();
        let wrong = json!({"message": "Zone pressure limit exceeded: zone1, pressure_bar=4.39"});
        let refused = sel.check("alert_system", &wrong, &g).unwrap_err();
        assert_eq!(refused.item, "zone1");
        assert_eq!(refused.outside.len(), 2);
        assert_eq!(
            refused.left_out_note,
            "(2 items whose status is not OVER LIMIT are left out: the task does not ask for them)"
        );
        assert!(refused.hint().contains("status=ok"), "{}", refused.hint());
        assert!(
            refused.hint().ends_with(
                "\n  - zone=zone4 pressure_bar=8.29 limit_bar=6.0 status=\"OVER LIMIT\""
            ),
            "{}",
            refused.hint()
        );
        // Written as words too, and among right ones.
        let all = json!({"message": "Over limit: Zone 4 (8.29 bar) and Zone 2 (4.61 bar)"});
        assert_eq!(
            sel.check("alert_system", &all, &g).unwrap_err().item,
            "zone2"
        );
        let right = json!({"message": "Zone 4 pressure 8.29 bar is over its limit"});
        assert_eq!(sel.check("alert_system", &right, &g), Ok(()));
        // The task asks for the zone's pressure: an alert without it is not done.
        let bare = json!({"message": "Zone 4 pressure is over limit."});
        let refused = sel.check("alert_system", &bare, &g).unwrap_err();
        assert_eq!(
            refused.reason(),
            "the call about zone4 leaves out pressure_bar 8.29, which the task asks for"
        );
        assert!(refused.outside.is_empty());
        // A lookup that only names the item is not a report about it.
        let lookup = json!({"zone": "zone4"});
        assert_eq!(sel.check("zone_history", &lookup, &g), Ok(()));
        assert!(written("it reads -18.2 now", "-18.2"));
        assert!(!written("it reads 18.2 now", "-18.2"));
        assert!(written("on 2026-12-03", "12"));
        // Reading an item again is not acting on it.
        let read = json!({"zone": "zone1"});
        assert_eq!(sel.check("local_sensor_read", &read, &g), Ok(()));
    }

    #[test]
    fn a_proposal_that_does_not_hold_up_selects_nothing() {
        // Not written in the task, not a value of the field, negated, or selecting everything.
        assert!(selection(r#"{"field": "pressure_bar", "value": "4.39"}"#).is_none());
        assert!(selection(r#"{"field": "zone", "value": "OVER LIMIT"}"#).is_none());
        assert!(selection(r#"{"field": "none", "value": ""}"#).is_none());
        assert!(selection("not json").is_none());
        let list = ItemList::parse("local_sensor_read", READ).unwrap();
        let negated = "For each zone whose status is not ok, publish an alert.";
        assert!(list
            .select(negated, r#"{"field": "status", "value": "ok"}"#, &shown())
            .is_none());
        let plain = "For every zone with status ok, log it as healthy.";
        assert!(list
            .select(plain, r#"{"field": "status", "value": "ok"}"#, &shown())
            .is_some());
        // A negation anywhere in the clause, and a second value of the field named.
        let except = "Alert on every zone except those whose status is ok.";
        assert!(list
            .select(except, r#"{"field": "status", "value": "ok"}"#, &shown())
            .is_none());
        let both = "Alert on each zone whose status is ok or OVER LIMIT.";
        assert!(list
            .select(
                both,
                r#"{"field": "status", "value": "OVER LIMIT"}"#,
                &shown()
            )
            .is_none());
        // "ok" inside another word is not the value written.
        let inside = "Took the readings; alert where needed.";
        assert!(list
            .select(inside, r#"{"field": "status", "value": "ok"}"#, &shown())
            .is_none());
    }

    #[test]
    fn a_tightened_tool_requires_the_values_left_out() {
        let sel = selection(r#"{"field": "status", "value": "OVER LIMIT"}"#).unwrap();
        let bare = json!({"message": "Zone 4 pressure is over limit."});
        let refused = sel.check("alert_system", &bare, &shown()).unwrap_err();
        let (arg, values) = refused.missing.unwrap();
        assert_eq!((arg.as_str(), values), ("message", vec!["8.29".to_owned()]));
        let tool = edgewise_infer::ToolSpec {
            name: "alert_system".into(),
            description: String::new(),
            parameters: json!({"type": "object", "properties": {"message": {"type": "string"}}}),
        };
        let tight = tighten(&tool, "message", &["8.29".into()]).unwrap();
        let pattern = tight.parameters["properties"]["message"]["pattern"]
            .as_str()
            .unwrap();
        assert_eq!(pattern, ".*8\\.29.*");
        let re = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
        assert!(re.is_match("Alert: Zone 4 is at 8.29 bar, over its limit."));
        assert!(!re.is_match("Alert: Zone 4 pressure is over limit."));
        // Words are matched as `written` reads them.
        let words = regex::Regex::new(&format!("^(?:{})$", value_pattern("zone4"))).unwrap();
        assert!(words.is_match("Zone 4") && words.is_match("zone_4") && !words.is_match("zone 5"));
        assert!(tighten(&tool, "other", &["1".into()]).is_none());
    }

    #[test]
    fn quoted_values_and_continuation_lines_are_fields() {
        let f = fields(r#"zone=zone4 status="OVER LIMIT" note="a \"b\" c" n=3"#);
        assert_eq!(f["status"], "OVER LIMIT");
        assert_eq!(f["note"], "a \"b\" c");
        assert_eq!(f["n"], "3");
        let list = ItemList::parse(
            "t",
            "- id=V-1 state=open\n  site.name=north\n- id=V-2 state=closed\n  site.name=south",
        )
        .unwrap();
        assert_eq!(list.items[0].fields["site.name"], "north");
    }
}
