//! How a tool result is shown to the model. Small models misread nested JSON: they take a value
//! from the wrong item of a list, or a key for a value. A structured result is shown as short
//! `key=value` lines instead, one line per item of a list, so each item's values sit together
//! on one line; anything else is shown as it came. Long results are cut with a note saying so.
//!
//! The rendering only changes layout: every key and value of the result is kept, in order.

use serde_json::Value;

/// Results longer than this (in characters) are cut: an observation must fit the context.
pub const MAX_OBSERVATION_CHARS: usize = 8000;

pub use edgewise_core::ObservationFormat;

/// The text the model sees for `result`.
pub fn render(result: &str, format: ObservationFormat) -> String {
    let text = match format {
        ObservationFormat::Raw => result.to_owned(),
        ObservationFormat::Lines => match serde_json::from_str::<Value>(result) {
            Ok(v @ (Value::Object(_) | Value::Array(_))) => lines(&v),
            _ => result.to_owned(),
        },
    };
    cut(text)
}

fn cut(text: String) -> String {
    if text.chars().count() <= MAX_OBSERVATION_CHARS {
        return text;
    }
    let kept: String = text.chars().take(MAX_OBSERVATION_CHARS).collect();
    let total = text.chars().count();
    format!("{kept}\n[result cut: {MAX_OBSERVATION_CHARS} of {total} characters shown]")
}

/// `key=value` lines: an object's scalars on one line, each list of objects as `- ` lines under
/// its key, nested objects under `key.` prefixes.
fn lines(v: &Value) -> String {
    let mut out = Vec::new();
    match v {
        Value::Array(items) => list(&mut out, items),
        Value::Object(_) => object(&mut out, v, ""),
        scalar => out.push(self::scalar(scalar)),
    }
    out.join("\n")
}

fn object(out: &mut Vec<String>, v: &Value, prefix: &str) {
    let Value::Object(map) = v else {
        return;
    };
    let mut flat = Vec::new();
    let mut nested = Vec::new();
    flatten(map, prefix, &mut flat, &mut nested);
    if !flat.is_empty() {
        out.push(flat.join(" "));
    }
    for (key, items) in nested {
        out.push(format!("{key}:"));
        list(out, items);
    }
}

/// Scalars (and scalars of nested objects, as `a.b=`) into `flat`; lists into `nested`.
fn flatten<'a>(
    map: &'a serde_json::Map<String, Value>,
    prefix: &str,
    flat: &mut Vec<String>,
    nested: &mut Vec<(String, &'a [Value])>,
) {
    for (k, v) in map {
        let key = format!("{prefix}{k}");
        match v {
            Value::Object(inner) => flatten(inner, &format!("{key}."), flat, nested),
            Value::Array(items) if items.iter().all(is_scalar) => {
                let values: Vec<_> = items.iter().map(scalar).collect();
                flat.push(format!("{key}=[{}]", values.join(", ")));
            }
            Value::Array(items) => nested.push((key, items)),
            s => flat.push(format!("{key}={}", scalar(s))),
        }
    }
}

fn list(out: &mut Vec<String>, items: &[Value]) {
    if items.is_empty() {
        out.push("(none)".into());
    }
    for item in items {
        match item {
            Value::Object(_) => {
                let mut inner = Vec::new();
                object(&mut inner, item, "");
                let mut first = true;
                for line in inner {
                    out.push(if first {
                        format!("- {line}")
                    } else {
                        format!("  {line}")
                    });
                    first = false;
                }
            }
            Value::Array(inner) => {
                let mut sub = Vec::new();
                list(&mut sub, inner);
                out.extend(sub.into_iter().map(|l| format!("  {l}")));
            }
            s => out.push(format!("- {}", scalar(s))),
        }
    }
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Object(_) | Value::Array(_))
}

/// A string with spaces or `=` is quoted so item boundaries stay clear.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) if s.is_empty() || s.contains([' ', '=', '"', '\n']) => {
            Value::String(s.clone()).to_string()
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_readings_becomes_one_line_per_item() {
        let raw = r#"{"zones": [{"zone": "zone1", "pressure_bar": 4.12, "limit_bar": 6.0, "status": "ok"}, {"zone": "zone4", "pressure_bar": 8.29, "limit_bar": 6.0, "status": "OVER LIMIT"}], "time": "2026-12-02T10:00:00Z"}"#;
        assert_eq!(
            render(raw, ObservationFormat::Lines),
            "time=2026-12-02T10:00:00Z\nzones:\n- zone=zone1 pressure_bar=4.12 limit_bar=6.0 status=ok\n- zone=zone4 pressure_bar=8.29 limit_bar=6.0 status=\"OVER LIMIT\""
        );
    }

    #[test]
    fn nested_objects_scalar_lists_and_plain_text() {
        let raw = r#"{"valve": {"id": "V-2", "state": "open"}, "tags": ["a", "b"]}"#;
        assert_eq!(
            render(raw, ObservationFormat::Lines),
            "valve.id=V-2 valve.state=open tags=[a, b]"
        );
        assert_eq!(
            render("V-2 is open", ObservationFormat::Lines),
            "V-2 is open"
        );
        assert_eq!(render("42", ObservationFormat::Lines), "42");
        assert_eq!(render(raw, ObservationFormat::Raw), raw);
    }

    #[test]
    fn long_results_are_cut_with_a_note() {
        let raw = "x".repeat(MAX_OBSERVATION_CHARS + 10);
        let shown = render(&raw, ObservationFormat::Raw);
        assert!(shown.ends_with(&format!(
            "[result cut: {MAX_OBSERVATION_CHARS} of {} characters shown]",
            MAX_OBSERVATION_CHARS + 10
        )));
    }
}
