//! Output constraints: compiling a `Constraint` for llguidance, and the tool-call grammar.
//!
//! Tool calls use the Hermes/Qwen format the default model was trained on:
//! `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`. The grammar only admits names of
//! declared tools and arguments valid under each tool's JSON schema, so the runtime owns parsing.

use llguidance::api::TopLevelGrammar;
use serde_json::{json, Value};

use crate::Constraint;

pub const TOOL_CALL_OPEN: &str = "<tool_call>";
pub const TOOL_CALL_CLOSE: &str = "</tool_call>";

/// How the model may use the declared tools (OpenAI's `tool_choice`).
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// Tools are declared (the model knows them) but it must answer in text.
    None,
    /// Free text or one tool call.
    Auto,
    /// Exactly one call to any declared tool.
    Required,
    /// Exactly one call to this tool.
    Named(String),
}

/// A declared tool: name and JSON schema of its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

impl ToolSpec {
    /// Reads an OpenAI tool object (`{"type": "function", "function": {...}}`).
    pub fn from_openai(tool: &Value) -> Result<Self, String> {
        let f = tool.get("function").unwrap_or(tool);
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or("tool without a function name")?;
        if name.is_empty() {
            return Err("tool with an empty name".into());
        }
        Ok(Self {
            name: name.into(),
            description: f
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .into(),
            parameters: f
                .get("parameters")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"})),
        })
    }
}

pub(crate) fn to_grammar(c: &Constraint) -> TopLevelGrammar {
    match c {
        Constraint::JsonSchema(schema) => TopLevelGrammar::from_json_schema(schema.clone()),
        Constraint::Regex(rx) => TopLevelGrammar::from_regex(rx),
        Constraint::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
    }
}

/// Free text must open with a letter, digit, quote or Markdown mark, never the way a call attempt
/// does ('<', '{', '(', '[', a code fence, whitespace): small models often write a call as bare,
/// bracketed or fenced JSON, and this routes that intent through the validated call grammar (or,
/// under `ToolChoice::None`, away from calls entirely).
const TEXT_RULE: &str = "TEXT: /[\\p{L}\\p{N}*#\"'-](.|\\n)*/\n";

/// Text when no call is possible (`ToolChoice::None`): only what looks like a call is excluded, as
/// any other opening is a legitimate answer.
const TEXT_ONLY_RULE: &str = "TEXT: /[^<{\\[`\\s](.|\\n)*/\n";

/// A text answer for a turn the runtime decided not to call after the model had called: it opens
/// with a letter or digit and holds no `<`, braces or brackets, so it cannot be a call written as
/// text (a small model set on calling writes `({"name": ...})` under the plain text rule).
pub fn prose_answer_grammar() -> Constraint {
    Constraint::Lark("start: PROSE\nPROSE: /[\\p{L}\\p{N}][^<{}\\[\\]]*/\n".into())
}

/// A text answer whose numbers are all among `numbers` (digit runs with at most one decimal
/// point: `43.82`, `17`). For the retry of an answer that gave a value read for something else:
/// the runtime knows the values read for what the answer is about, and a small model told them
/// still tends to write the wrong one it saw nearby. A listed number must be followed by a
/// non-digit (and a `.` by a non-digit), so listed numbers never combine into others (`17.17`).
pub fn answer_with_numbers_grammar(numbers: &[String]) -> Constraint {
    Constraint::Lark(format!(
        "start: ANSWER\nANSWER: /{}/\n",
        answer_with_numbers_regex(numbers)
    ))
}

fn answer_with_numbers_regex(numbers: &[String]) -> String {
    let mut allowed: Vec<String> = numbers
        .iter()
        .filter(|n| {
            n.chars().next().is_some_and(|c| c.is_ascii_digit())
                && n.chars().all(|c| c.is_ascii_digit() || c == '.')
                && n.matches('.').count() <= 1
                && !n.ends_with('.')
        })
        .map(|n| n.replace('.', "\\."))
        .collect();
    allowed.sort();
    allowed.dedup();
    // Text between numbers: no digit, and no `.` before one.
    let text = "([^0-9.]|\\.[^0-9])";
    let first = "[^0-9.<{\\[`\\s]";
    if allowed.is_empty() {
        return format!("{first}{text}*\\.?");
    }
    let num = format!("({})", allowed.join("|"));
    format!("({first}|{num}{text})({text}|{num}{text})*{num}?\\.?")
}

/// The call-or-answer decision's default threshold (`GenerateRequest::call_threshold`): a call
/// only where the model puts at least this probability on calling. Chosen on `edgewise eval
/// tools` (see the README's figures).
pub const DEFAULT_CALL_THRESHOLD: f32 = 0.5;

/// The most calls one turn may hold (OpenAI `parallel_tool_calls`).
pub const MAX_PARALLEL_CALLS: usize = 8;

/// The Lark grammar for tool use under `choice`: at most one call per turn.
pub fn tool_call_grammar(tools: &[ToolSpec], choice: &ToolChoice) -> Result<Constraint, String> {
    tool_calls_grammar(tools, choice, 1)
}

/// The Lark grammar for tool use under `choice`, with up to `max_calls` (at most
/// [`MAX_PARALLEL_CALLS`]) `<tool_call>` blocks in one turn, one per line, as Qwen's template
/// writes several calls.
pub fn tool_calls_grammar(
    tools: &[ToolSpec],
    choice: &ToolChoice,
    max_calls: usize,
) -> Result<Constraint, String> {
    if *choice == ToolChoice::None {
        return Ok(Constraint::Lark(format!("start: TEXT\n{TEXT_ONLY_RULE}")));
    }
    let allowed: Vec<&ToolSpec> = match choice {
        ToolChoice::Named(n) => {
            let t = tools.iter().find(|t| &t.name == n).ok_or_else(|| {
                format!("tool_choice names '{n}', which is not among the declared tools")
            })?;
            vec![t]
        }
        _ => tools.iter().collect(),
    };
    if allowed.is_empty() {
        return Err("tool_choice requires a tool but no tools were declared".into());
    }
    let variants: Vec<Value> = allowed
        .iter()
        .map(|t| {
            json!({
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": closed(&t.parameters)},
                "required": ["name", "arguments"],
                "additionalProperties": false
            })
        })
        .collect();
    let schema = if variants.len() == 1 {
        variants[0].clone()
    } else {
        json!({"anyOf": variants})
    };
    // A call is the trained `<tool_call>` block or the bare JSON object small models tend to write
    // instead; both are held to the same schema, and `parse_tool_calls` reads both. More calls
    // are more blocks, each on its own line.
    let (mut more_blocks, mut more_bodies) = (String::new(), String::new());
    for _ in 1..max_calls.clamp(1, MAX_PARALLEL_CALLS) {
        more_blocks = format!("(\"\\n\" block {more_blocks})?");
        more_bodies = format!("(\"\\n\" body {more_bodies})?");
    }
    let call = format!(
        "call: block {more_blocks} | body {more_bodies}\nblock: \"{open}\\n\" body \"\\n{close}\"\nbody: %json {schema}\n",
        open = TOOL_CALL_OPEN,
        close = TOOL_CALL_CLOSE,
        schema = schema
    );
    let start = match choice {
        ToolChoice::Auto => format!("start: TEXT | call\n{TEXT_RULE}"),
        _ => "start: call\n".to_owned(),
    };
    Ok(Constraint::Lark(format!("{start}{call}")))
}

/// Arguments as the grammar admits them: a schema that lists its properties and says nothing
/// of others admits no others (a small model otherwise packs a second call's arguments into
/// the first as `city2`; no tool understands a property it did not declare).
fn closed(parameters: &Value) -> Value {
    let mut p = parameters.clone();
    if let Some(o) = p.as_object_mut() {
        if o.contains_key("properties") && !o.contains_key("additionalProperties") {
            o.insert("additionalProperties".into(), Value::Bool(false));
        }
    }
    p
}

/// A parsed call found in generated text.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Value,
}

/// Splits generated text into leading content and tool calls. Malformed blocks stay in the content.
/// A call that repeats an earlier one of the same turn (same name, same arguments) is dropped:
/// small models often write a parallel turn's first call again, and a repeat is never independent
/// work.
pub fn parse_tool_calls(text: &str) -> (String, Vec<ToolCall>) {
    let (content, mut calls) = split_tool_calls(text);
    let mut i = 0;
    while i < calls.len() {
        if calls[..i].contains(&calls[i]) {
            calls.remove(i);
        } else {
            i += 1;
        }
    }
    (content, calls)
}

fn split_tool_calls(text: &str) -> (String, Vec<ToolCall>) {
    let bare = bare_calls(text);
    if !bare.is_empty() {
        return (String::new(), bare);
    }
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(TOOL_CALL_OPEN) {
        content.push_str(&rest[..start]);
        let after = &rest[start + TOOL_CALL_OPEN.len()..];
        let (body, next) = match after.find(TOOL_CALL_CLOSE) {
            Some(end) => (&after[..end], &after[end + TOOL_CALL_CLOSE.len()..]),
            None => (after, ""),
        };
        match serde_json::from_str::<Value>(body.trim()) {
            Ok(v) if v.get("name").and_then(Value::as_str).is_some() => calls.push(ToolCall {
                name: v["name"].as_str().unwrap_or_default().to_owned(),
                arguments: v.get("arguments").cloned().unwrap_or_else(|| json!({})),
            }),
            _ => content.push_str(&rest[start..rest.len() - next.len()]),
        }
        rest = next;
    }
    content.push_str(rest);
    (content.trim().to_owned(), calls)
}

/// The whole text is one or more `{"name": ..., "arguments": ...}` objects (one per line when
/// a turn holds several calls); empty unless every object is a call.
fn bare_calls(text: &str) -> Vec<ToolCall> {
    let t = text.trim();
    if !t.starts_with('{') {
        return Vec::new();
    }
    let mut calls = Vec::new();
    for value in serde_json::Deserializer::from_str(t).into_iter::<Value>() {
        let Ok(v) = value else {
            return Vec::new();
        };
        let Some(name) = v.get("name").and_then(Value::as_str) else {
            return Vec::new();
        };
        calls.push(ToolCall {
            name: name.to_owned(),
            arguments: v.get("arguments").cloned().unwrap_or_else(|| json!({})),
        });
    }
    calls
}

/// A system-prompt description of tools for templates that do not render `tools` themselves.
pub fn describe_tools_for_prompt(tools: &[ToolSpec]) -> String {
    let mut s = String::from("You may call functions. Available functions:\n<tools>\n");
    for t in tools {
        s.push_str(&json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}).to_string());
        s.push('\n');
    }
    s.push_str("</tools>\nTo call one, reply with <tool_call>\n{\"name\": <name>, \"arguments\": <args-json>}\n</tool_call>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_held_to_numbers_writes_no_others() {
        let rx = answer_with_numbers_regex(&["43.82".into(), "17".into(), "1..2".into()]);
        assert_eq!(
            rx,
            "([^0-9.<{\\[`\\s]|(17|43\\.82)([^0-9.]|\\.[^0-9]))(([^0-9.]|\\.[^0-9])|(17|43\\.82)([^0-9.]|\\.[^0-9]))*(17|43\\.82)?\\.?"
        );
    }

    #[test]
    fn parses_one_call_and_keeps_text_before_it() {
        let (c, calls) = parse_tool_calls(
            "Sure.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>",
        );
        assert_eq!(c, "Sure.");
        assert_eq!(
            calls,
            vec![ToolCall {
                name: "f".into(),
                arguments: json!({"x": 1})
            }]
        );
    }

    #[test]
    fn parses_several_calls_of_one_turn_in_both_forms() {
        let names = |text: &str| {
            parse_tool_calls(text)
                .1
                .into_iter()
                .map(|c| c.arguments["city"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let two = ["Paris", "Tokyo"];
        assert_eq!(
            names("{\"name\": \"w\", \"arguments\": {\"city\": \"Paris\"}}\n{\"name\": \"w\", \"arguments\": {\"city\": \"Tokyo\"}}"),
            two
        );
        assert_eq!(
            names("<tool_call>\n{\"name\": \"w\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"w\", \"arguments\": {\"city\": \"Tokyo\"}}\n</tool_call>"),
            two
        );
        // Text after a bare object is not a call list.
        assert!(parse_tool_calls("{\"name\": \"w\"} and more").1.is_empty());
        // The first call written again (other spacing) is one call.
        assert_eq!(
            names("<tool_call>\n{\"name\": \"w\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\n  \"name\": \"w\",\n  \"arguments\": {\"city\": \"Paris\"}\n}\n</tool_call>\n<tool_call>\n{\"name\": \"w\", \"arguments\": {\"city\": \"Tokyo\"}}\n</tool_call>"),
            two
        );
    }

    #[test]
    fn parses_a_bare_json_call() {
        let (c, calls) = parse_tool_calls("{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n");
        assert_eq!(c, "");
        assert_eq!(calls[0].name, "f");
        let (c, calls) = parse_tool_calls("{\"not\": \"a call\"}");
        assert!(calls.is_empty());
        assert!(c.contains("not"));
    }

    #[test]
    fn malformed_call_stays_as_content() {
        let (c, calls) = parse_tool_calls("<tool_call>{nope</tool_call>");
        assert!(calls.is_empty());
        assert!(c.contains("{nope"));
    }

    #[test]
    fn named_choice_must_be_declared() {
        let tools = vec![ToolSpec {
            name: "a".into(),
            description: String::new(),
            parameters: json!({"type": "object"}),
        }];
        assert!(tool_call_grammar(&tools, &ToolChoice::Named("b".into())).is_err());
        assert!(tool_call_grammar(&tools, &ToolChoice::Required).is_ok());
    }
}
