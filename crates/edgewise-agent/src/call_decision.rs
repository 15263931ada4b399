//! Deciding whether a turn calls a tool (`tool_choice: auto`), after the model has spoken.
//!
//! The scheduler makes the first cut: the call opens only where the model puts at least the
//! threshold's probability on it (`GenerateRequest::call_threshold`). A small model still reaches
//! for the nearest tool when none fits (`get_weather {"city": "Paris"}` for "What is the capital
//! of France?") and, once a tool's result is in, calls it again instead of answering. This module
//! reviews the calls of a turn against what the model was shown and, where they are a weak match,
//! names the constraint to generate the turn again under:
//! - a call that repeats one whose result is already in the conversation: the turn is answered
//!   in prose (`Retry::Answer`);
//! - a call whose arguments are not supported by what was shown (`Grounding::supports_call`):
//!   its tool is left out and the turn decided again among the rest, or answered when none is
//!   left.
//!
//! Each review leaves out at least one tool, and after `MAX_REVIEWS` the turn is answered, so a
//! turn is generated at most `MAX_REVIEWS + 1` times. The prompt never changes, so a new attempt
//! prefills nothing (prefix reuse).

use std::collections::BTreeSet;

use edgewise_infer::{tool_calls_grammar, Constraint, ToolCall, ToolChoice, ToolSpec};
use serde_json::Value;

use crate::grounding::Grounding;

/// Generations of one turn beyond the first, at most.
pub const MAX_REVIEWS: usize = 3;

/// How a set-aside turn is generated again.
#[derive(Debug, Clone, PartialEq)]
pub enum Retry {
    /// Decided again among the tools left, under this constraint.
    Decide(Constraint),
    /// Answered in prose (`prose_answer_grammar`), from the conversation rendered without the
    /// tool menu: a small model shown the menu right after a tool's result keeps calling.
    Answer,
}

/// Why a turn's calls were set aside (for logs, audit and the eval).
#[derive(Debug, Clone, PartialEq)]
pub enum SetAside {
    /// The call repeats one whose result the conversation already holds.
    Repeated(String),
    /// The call's argument has a value or words the model was never shown.
    WeakMatch {
        tool: String,
        argument: String,
        value: String,
    },
}

pub struct CallDecision {
    shown: Grounding,
    tools: Vec<ToolSpec>,
    max_calls: usize,
    /// Calls whose results the conversation holds.
    answered: Vec<ToolCall>,
    left_out: BTreeSet<String>,
    reviews: usize,
}

impl CallDecision {
    /// `shown`: everything the model was shown as conversation (not the tool descriptions, which
    /// name every value the tools accept).
    pub fn new(shown: Grounding, tools: Vec<ToolSpec>, max_calls: usize) -> Self {
        CallDecision {
            shown,
            tools,
            max_calls,
            answered: Vec::new(),
            left_out: BTreeSet::new(),
            reviews: 0,
        }
    }

    /// From OpenAI-style messages: their text is what was shown; an assistant's `tool_calls`
    /// followed by a `tool` message with the same id are answered calls.
    pub fn from_messages(messages: &[Value], tools: Vec<ToolSpec>, max_calls: usize) -> Self {
        let mut shown = Grounding::default();
        let mut answered = Vec::new();
        // One pass for the answered ids: a request may hold many calls and results, and pairing
        // them by scanning would be quadratic in what a client sends.
        let results: std::collections::HashSet<&str> = messages
            .iter()
            .filter(|r| r.get("role").and_then(Value::as_str) == Some("tool"))
            .filter_map(|r| r.get("tool_call_id").and_then(Value::as_str))
            .collect();
        for m in messages {
            match m.get("content") {
                Some(Value::String(s)) => shown.add(s),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .for_each(|t| shown.add(t)),
                _ => {}
            }
            for call in m
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let answered_later = call
                    .get("id")
                    .and_then(Value::as_str)
                    .is_some_and(|id| results.contains(id));
                let f = &call["function"];
                let arguments = match &f["arguments"] {
                    Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
                    v => v.clone(),
                };
                shown.add(&arguments.to_string());
                if let (true, Some(name)) = (answered_later, f["name"].as_str()) {
                    answered.push(ToolCall {
                        name: name.to_owned(),
                        arguments,
                    });
                }
            }
        }
        let mut d = CallDecision::new(shown, tools, max_calls);
        d.answered = answered;
        d
    }

    /// Reviews a turn's calls. `None`: they stand (or there are none). `Some`: the turn is to be
    /// generated again under the constraint, for the reason given.
    pub fn review(&mut self, calls: &[ToolCall]) -> Option<(Retry, SetAside)> {
        let reason = calls.iter().find_map(|c| self.set_aside(c))?;
        self.reviews += 1;
        match &reason {
            SetAside::Repeated(_) => self
                .left_out
                .extend(self.tools.iter().map(|t| t.name.clone())),
            SetAside::WeakMatch { tool, .. } => {
                self.left_out.insert(tool.clone());
            }
        }
        let rest: Vec<ToolSpec> = self
            .tools
            .iter()
            .filter(|t| !self.left_out.contains(&t.name))
            .cloned()
            .collect();
        if rest.is_empty() || self.reviews >= MAX_REVIEWS {
            return Some((Retry::Answer, reason));
        }
        // A tool list from a validated request compiles; should it not, the turn is answered.
        let retry = match tool_calls_grammar(&rest, &ToolChoice::Auto, self.max_calls) {
            Ok(c) => Retry::Decide(c),
            Err(_) => Retry::Answer,
        };
        Some((retry, reason))
    }

    fn set_aside(&self, call: &ToolCall) -> Option<SetAside> {
        if self
            .answered
            .iter()
            .any(|a| a.name == call.name && a.arguments == call.arguments)
        {
            return Some(SetAside::Repeated(call.name.clone()));
        }
        let schema = self
            .tools
            .iter()
            .find(|t| t.name == call.name)
            .map(|t| &t.parameters)?;
        let weak = self.shown.supports_call(&call.arguments, schema).err()?;
        Some(SetAside::WeakMatch {
            tool: call.name.clone(),
            argument: weak.argument.unwrap_or_default(),
            value: weak.value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn weather() -> ToolSpec {
        ToolSpec {
            name: "get_weather".into(),
            description: "Current weather for a city".into(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
        }
    }

    fn call(city: &str) -> ToolCall {
        ToolCall {
            name: "get_weather".into(),
            arguments: json!({ "city": city }),
        }
    }

    #[test]
    fn a_supported_call_stands_and_a_weak_one_is_decided_again_without_its_tool() {
        let messages = [json!({"role": "user", "content": "What is the capital of France?"})];
        let mut d = CallDecision::from_messages(&messages, vec![weather()], 8);
        let (retry, why) = d.review(&[call("Paris")]).unwrap();
        assert!(matches!(why, SetAside::WeakMatch { ref value, .. } if value == "Paris"));
        // No tool is left: the turn is answered in text.
        assert_eq!(retry, Retry::Answer);
        let messages = [json!({"role": "user", "content": "Weather in Paris?"})];
        let mut d = CallDecision::from_messages(&messages, vec![weather()], 8);
        assert_eq!(d.review(&[call("Paris")]), None);
        assert_eq!(d.review(&[]), None);
    }

    #[test]
    fn a_call_whose_result_is_in_is_answered_not_repeated() {
        let messages = [
            json!({"role": "user", "content": "Weather in Paris?"}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}),
            json!({"role": "tool", "tool_call_id": "c1", "content": "{\"temp_c\": 21}"}),
        ];
        let mut d = CallDecision::from_messages(&messages, vec![weather()], 8);
        let (retry, why) = d.review(&[call("Paris")]).unwrap();
        assert_eq!(
            (retry, why),
            (Retry::Answer, SetAside::Repeated("get_weather".into()))
        );
        // Other arguments make another call, which stands where it is supported.
        let mut d = CallDecision::from_messages(&messages, vec![weather()], 8);
        assert_eq!(d.review(&[call("Paris, France")]), None);
    }
}
