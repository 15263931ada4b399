//! Whether a tool call is supported by what was shown (`Grounding::supports_call`): the looser
//! check the call decision uses to tell a weak match from a call the request asked for.

use serde_json::Value;

use super::{tokens, words, Grounding, Ungrounded};

impl Grounding {
    /// Whether a call is supported by what was shown: each free argument value (a string
    /// without an `enum` in `schema`, or a number) that holds words of three letters or more,
    /// numbers or identifiers shares at least one of them with it, and where the call has such
    /// values at all, enum choices included, at least one is supported. A call that fails is a
    /// weak match: the tool was the nearest one, not one the request asked for (`get_weather
    /// {"city": "Paris"}` for "What is the capital of France?", `read_sensor {"zone": "zone1"}`
    /// for "Weather in Nairobi"). Looser than `check_arguments` on purpose: a value may be
    /// derived from what was shown (`15 * 60` for "15 minutes in seconds").
    pub fn supports_call(&self, args: &Value, schema: &Value) -> Result<(), Ungrounded> {
        let mut values = Vec::new();
        collect_values(args, schema, None, &mut values);
        let mut first_unsupported = None;
        let mut any_supported = false;
        for v in values {
            let written = words(&v.text);
            let tokens = tokens(&v.text, false);
            if written.is_empty() && tokens.is_empty() {
                continue;
            }
            if written.iter().any(|w| self.knows_word(w)) || tokens.iter().any(|t| self.knows(t)) {
                any_supported = true;
            } else if !v.choice || first_unsupported.is_none() {
                let free = !v.choice;
                first_unsupported = Some(v);
                if free {
                    break;
                }
            }
        }
        match first_unsupported {
            Some(v) if !v.choice || !any_supported => Err(Ungrounded {
                value: v.text,
                argument: v.key,
                nearest: Vec::new(),
                read_for_other: None,
                read_there: Vec::new(),
                retry_numbers: Vec::new(),
            }),
            _ => Ok(()),
        }
    }

    /// A word was shown, as written or with another ending (`remind`, `reminder`): one is a
    /// prefix of the other and the shorter has four letters or more.
    fn knows_word(&self, w: &str) -> bool {
        if self.words.contains(w) {
            return true;
        }
        let longer_shown = self
            .words
            .range(w.to_owned()..)
            .next()
            .is_some_and(|s| s.starts_with(w) && w.len() >= 4);
        longer_shown || (4..w.len()).any(|k| w.is_char_boundary(k) && self.words.contains(&w[..k]))
    }
}

/// An argument value, for `Grounding::supports_call`.
struct ArgumentValue {
    key: Option<String>,
    text: String,
    /// One of the schema's `enum` values: a choice among offered values, not free text.
    choice: bool,
}

fn collect_values(v: &Value, schema: &Value, key: Option<&str>, out: &mut Vec<ArgumentValue>) {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => {
            let item = schema.get("items").unwrap_or(&Value::Null);
            items.iter().for_each(|i| collect_values(i, item, key, out));
            return;
        }
        Value::Object(map) => {
            for (k, v) in map {
                let sub = schema
                    .get("properties")
                    .and_then(|p| p.get(k))
                    .unwrap_or(&Value::Null);
                collect_values(v, sub, Some(k), out);
            }
            return;
        }
        Value::Bool(_) | Value::Null => return,
    };
    out.push(ArgumentValue {
        key: key.map(str::to_owned),
        text,
        choice: schema.get("enum").is_some(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_call_whose_words_were_never_shown_is_a_weak_match() {
        let mut g = Grounding::default();
        g.add("What is the capital of France?");
        let schema = json!({"type": "object", "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}});
        let e = g
            .supports_call(&json!({"city": "Paris", "unit": "celsius"}), &schema)
            .unwrap_err();
        assert_eq!(
            (e.value.as_str(), e.argument.as_deref()),
            ("Paris", Some("city"))
        );
        // Enum values and strings without words say nothing; other endings of a shown word count.
        let mut g = Grounding::default();
        g.add("Remind me about the capitals quiz in 15 minutes");
        for ok in [
            json!({"city": "capital", "unit": "fahrenheit"}),
            json!({"city": "Reminder: quiz"}),
            json!({"city": "15 * 60"}),
            json!({"city": "5"}),
        ] {
            assert_eq!(g.supports_call(&ok, &schema), Ok(()), "{ok}");
        }
        // A choice among offered values is no support on its own.
        let sensor =
            json!({"type": "object", "properties": {"zone": {"enum": ["zone1", "zone2"]}}});
        assert!(g.supports_call(&json!({"zone": "zone1"}), &sensor).is_err());
        let mut shown_zone = Grounding::default();
        shown_zone.add("Read zone 1");
        assert_eq!(
            shown_zone.supports_call(&json!({"zone": "zone1"}), &sensor),
            Ok(())
        );
        // A value of numbers none of which was shown is as weak as one of unshown words.
        for weak in [json!({"city": "2023 - 11"}), json!({"city": 42})] {
            assert!(g.supports_call(&weak, &schema).is_err(), "{weak}");
        }
    }
}
