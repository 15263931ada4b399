//! What the runtime decides about a turn's calls before running them, and the helpers it
//! decides with.

use serde_json::Value;

/// What the runtime decided about one call of a turn, before running any.
pub(super) enum Verdict {
    /// Identical to an earlier successful call: its result is shown again.
    Repeat(String),
    /// A value in the arguments was never shown to the model.
    Ungrounded(crate::grounding::Ungrounded),
    /// The arguments name a list item the task does not select.
    OffSelection(crate::selection::OffSelection),
    /// The run's or the tool's call budget is spent.
    OverBudget,
    Run,
}

/// An earlier result shown again for a repeated call, bounded: a long one (a whole file) shown
/// at every repeat would crowd the context window.
pub(super) fn shown_again(earlier: &str) -> String {
    const MAX: usize = 600;
    if earlier.chars().count() <= MAX {
        return earlier.to_owned();
    }
    let head: String = earlier.chars().take(MAX).collect();
    format!(
        "{head}\n[the same result as before; {} more characters not shown again]",
        earlier.chars().count() - MAX
    )
}

/// Whether the text of `args` is mostly words of `own` (a tool's result and description).
pub(super) fn echoes(args: &Value, own: &str) -> bool {
    fn words(text: &str) -> Vec<String> {
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    }
    let mut text = String::new();
    collect_strings(args, &mut text);
    let said = words(&text);
    let shown = words(own);
    if said.len() < 2 {
        return false;
    }
    let echoed = said.iter().filter(|w| shown.contains(w)).count();
    echoed * 10 >= said.len() * 6
}

/// Every string in `v`, space-separated (numbers and other scalars left out).
pub(crate) fn collect_strings(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            out.push_str(s);
            out.push(' ');
        }
        Value::Array(items) => items.iter().for_each(|i| collect_strings(i, out)),
        Value::Object(map) => map.values().for_each(|i| collect_strings(i, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ALERTS: &str = "delivered to 'alerts' alert_system: publish one message to the MQTT topic 'alerts'. Readers see only the message, so it must state the facts itself, with their names and values.";

    #[test]
    fn a_call_restating_the_tools_own_words_is_an_echo() {
        let echo = json!({"message": "Delivered to the MQTT topic 'alerts'."});
        assert!(echoes(&echo, ALERTS));
        // Without the description, only half its words are the result's.
        assert!(!echoes(&echo, "delivered to 'alerts'"));
        let alert =
            json!({"message": "Alert: zone4 pressure is 8.29 bar, over its limit of 6.0 bar."});
        assert!(!echoes(&alert, ALERTS));
        assert!(!echoes(&json!({"message": "alerts"}), ALERTS));
    }
}
