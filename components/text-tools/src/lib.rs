//! `text-tools`: regex extraction, JSON pointer queries and word counts — text chores a small
//! model gets wrong when it does them in its head.

wit_bindgen::generate!({ world: "tool", path: "../../wit", generate_all });

use exports::edgewise::agent::tool_api::{Guest, ToolError, ToolSpec};
use serde_json::{json, Value};

struct TextTools;

/// Longest input accepted; the model's context is smaller anyway.
const MAX_TEXT: usize = 1 << 20;
const MAX_MATCHES: usize = 100;

impl Guest for TextTools {
    fn describe() -> Vec<ToolSpec> {
        vec![
            ToolSpec {
                name: "regex_extract".into(),
                description: "Find every match of a regular expression in a text; returns the matches (or the first capture group) as a JSON list.".into(),
                parameters: r#"{"type":"object","properties":{"text":{"type":"string"},"pattern":{"type":"string","description":"A regular expression, e.g. [0-9]+\\.[0-9]+"}},"required":["text","pattern"],"additionalProperties":false}"#.into(),
            },
            ToolSpec {
                name: "json_query".into(),
                description: "Read one value out of a JSON document with a JSON pointer such as /zones/0/pressure.".into(),
                parameters: r#"{"type":"object","properties":{"json":{"type":"string","description":"The JSON document"},"pointer":{"type":"string","description":"RFC 6901 pointer, e.g. /a/0/b"}},"required":["json","pointer"],"additionalProperties":false}"#.into(),
            },
            ToolSpec {
                name: "word_count".into(),
                description: "Count the words, lines and characters of a text.".into(),
                parameters: r#"{"type":"object","properties":{"text":{"type":"string"}},"required":["text"],"additionalProperties":false}"#.into(),
            },
        ]
    }

    fn invoke(name: String, args_json: String) -> Result<String, ToolError> {
        let args: Value = serde_json::from_str(&args_json)
            .map_err(|e| ToolError::InvalidArguments(format!("arguments are not JSON: {e}")))?;
        let text = |key: &str| -> Result<&str, ToolError> {
            let s = args
                .get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| ToolError::InvalidArguments(format!("`{key}` (a string) is required")))?;
            if s.len() > MAX_TEXT {
                return Err(ToolError::InvalidArguments(format!("`{key}` is longer than {MAX_TEXT} bytes")));
            }
            Ok(s)
        };
        match name.as_str() {
            "regex_extract" => {
                let re = regex::RegexBuilder::new(text("pattern")?)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| ToolError::InvalidArguments(format!("bad pattern: {e}")))?;
                let found: Vec<&str> = re
                    .captures_iter(text("text")?)
                    .take(MAX_MATCHES)
                    .filter_map(|c| c.get(1).or_else(|| c.get(0)).map(|m| m.as_str()))
                    .collect();
                Ok(json!(found).to_string())
            }
            "json_query" => {
                let doc: Value = serde_json::from_str(text("json")?)
                    .map_err(|e| ToolError::InvalidArguments(format!("`json` is not JSON: {e}")))?;
                let pointer = text("pointer")?;
                doc.pointer(pointer)
                    .map(|v| v.to_string())
                    .ok_or_else(|| ToolError::Failed(format!("nothing at {pointer}")))
            }
            "word_count" => {
                let t = text("text")?;
                Ok(json!({
                    "words": t.split_whitespace().count(),
                    "lines": t.lines().count(),
                    "characters": t.chars().count(),
                })
                .to_string())
            }
            _ => Err(ToolError::UnknownTool(name)),
        }
    }
}

export!(TextTools);
