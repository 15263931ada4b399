//! A run's conversation and its memory manager: when the next prompt would not fit the context
//! window, the older turns are summarised by the model and the summary takes their place, so a
//! long run goes on instead of failing.
//!
//! Layout: system, earlier runs (`memory.history_window`), the task (with the summary of what is
//! no longer shown appended), then this run's turns (assistant output, tool observation). The
//! system prompt and the task are never summarised: they say what the agent is and what it must
//! do.

use serde_json::{json, Value};

pub struct Conversation {
    system: String,
    /// Earlier runs, as user/assistant messages.
    history: Vec<Value>,
    task: String,
    /// What the older turns said, once some were folded away.
    summary: Option<String>,
    /// This run's turns, oldest first: pairs of assistant output and tool observation.
    turns: Vec<Value>,
}

/// What a compaction would fold into the summary.
pub struct Fold {
    /// The transcript to summarise (the previous summary first, when there is one).
    pub transcript: Vec<(String, String)>,
    /// Messages of this run's turns folded; the rest stay verbatim.
    turn_messages: usize,
    /// Messages folded (for the audit record).
    pub messages: usize,
}

impl Conversation {
    pub fn new(system: String, history: Vec<Value>, task: String) -> Self {
        Self {
            system,
            history,
            task,
            summary: None,
            turns: Vec::new(),
        }
    }

    /// The model's turn that held `calls`, then each call's observation in order. The model's
    /// own text is kept verbatim so the next prompt extends this one token for token and the KV
    /// cache of the whole conversation is reused.
    pub fn push_calls(&mut self, output: &str, calls: &[(String, String)]) {
        self.turns
            .push(json!({"role": "assistant", "content": output}));
        for (tool, observation) in calls {
            self.turns
                .push(json!({"role": "tool", "name": tool, "content": observation}));
        }
    }

    /// The model's turn, then what the runtime says about it (an answer it refused).
    pub fn push_feedback(&mut self, output: &str, note: &str) {
        self.turns
            .push(json!({"role": "assistant", "content": output}));
        self.turns.push(json!({"role": "user", "content": note}));
    }

    /// A note from the runtime in place of a refused turn. The refused turn itself is not shown:
    /// shown its wrong answer, a small model writes it again.
    pub fn push_note(&mut self, note: &str) {
        self.turns.push(json!({"role": "user", "content": note}));
    }

    /// Takes `items` (whole lines of earlier tool results) out of every tool result shown, with
    /// `note` in their place once per result. After a call that acted on items the task does not
    /// ask for, the model retries from results without them: shown its refused call instead, a
    /// small model writes it again verbatim.
    pub fn leave_out(&mut self, items: &[String], note: &str) {
        for turn in &mut self.turns {
            if turn["role"] != "tool" {
                continue;
            }
            let Some(content) = turn["content"].as_str() else {
                continue;
            };
            // Whole item blocks only: an item's first line, then its own continuation lines.
            let lines: Vec<&str> = content.split('\n').collect();
            let mut kept = Vec::with_capacity(lines.len());
            let mut i = 0;
            while i < lines.len() {
                let block = items.iter().find_map(|item| {
                    let block: Vec<&str> = item.split('\n').collect();
                    let here = lines.get(i..i + block.len())?;
                    here.iter()
                        .zip(&block)
                        .all(|(a, b)| a.trim_end() == b.trim_end())
                        .then_some(block.len())
                });
                match block {
                    Some(n) => i += n,
                    None => {
                        kept.push(lines[i]);
                        i += 1;
                    }
                }
            }
            if kept.len() < lines.len() {
                turn["content"] = Value::String(format!("{}\n{note}", kept.join("\n")));
            }
        }
    }

    pub fn task(&self) -> &str {
        &self.task
    }

    pub fn messages(&self) -> Vec<Value> {
        let mut out = Vec::with_capacity(self.history.len() + self.turns.len() + 2);
        out.push(json!({"role": "system", "content": self.system}));
        out.extend(self.history.iter().cloned());
        let task = match &self.summary {
            None => self.task.clone(),
            Some(s) => format!(
                "{}\n\nWhat happened so far (a summary of the earlier conversation, which is no longer shown):\n{s}",
                self.task
            ),
        };
        out.push(json!({"role": "user", "content": task}));
        out.extend(self.turns.iter().cloned());
        out
    }

    /// The older part to summarise: earlier runs and every turn but the last (the model needs
    /// the latest observation verbatim); with `keep_last` false, the last turn too. `None` when
    /// there is nothing left to fold.
    pub fn fold(&self, keep_last: bool) -> Option<Fold> {
        let keep = if keep_last {
            2.min(self.turns.len())
        } else {
            0
        };
        let turns = self.turns.len() - keep;
        if self.history.is_empty() && turns == 0 {
            return None;
        }
        let mut transcript = Vec::new();
        if let Some(s) = &self.summary {
            transcript.push(("summary so far".to_owned(), s.clone()));
        }
        for m in self.history.iter().chain(&self.turns[..turns]) {
            let role = m["role"].as_str().unwrap_or("message");
            let who = match (role, m["name"].as_str()) {
                ("tool", Some(name)) => format!("tool {name} returned"),
                ("user", _) => "earlier task".into(),
                ("assistant", _) => "agent".into(),
                _ => role.to_owned(),
            };
            transcript.push((who, m["content"].as_str().unwrap_or_default().to_owned()));
        }
        Some(Fold {
            transcript,
            turn_messages: turns,
            messages: self.history.len() + turns,
        })
    }

    /// Replaces what `fold` selected with `summary`.
    pub fn apply(&mut self, fold: Fold, summary: String) {
        self.history.clear();
        self.turns.drain(..fold.turn_messages);
        self.summary = Some(summary);
    }
}

pub const SUMMARISER: &str = "You condense the working notes of an AI agent so that it can finish its task with less context. Keep every fact it will need: names, numbers, identifiers, tool results and what it has already done. Drop greetings, repetition and formatting. Write short plain sentences.";

/// The summariser's request: the task for context, then the transcript, each message cut to
/// at most `max_chars` characters (a long tool result must not stop its own summary).
pub fn summary_request(task: &str, fold: &Fold, max_chars: usize, max_words: u32) -> Vec<Value> {
    let mut body = format!(
        "The agent's task: {}\n\nNotes to condense:\n",
        cut(task, max_chars)
    );
    for (who, text) in &fold.transcript {
        body.push_str(&format!("- {who}: {}\n", cut(text, max_chars)));
    }
    body.push_str(&format!(
        "\nWrite the condensed notes (at most {max_words} words)."
    ));
    vec![
        json!({"role": "system", "content": SUMMARISER}),
        json!({"role": "user", "content": body}),
    ]
}

/// `text` on one line, at most `max_chars` characters.
fn cut(text: &str, max_chars: usize) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation(turns: usize) -> Conversation {
        let history = vec![
            json!({"role": "user", "content": "earlier task"}),
            json!({"role": "assistant", "content": "earlier answer"}),
        ];
        let mut c = Conversation::new("sys".into(), history, "the task".into());
        for i in 0..turns {
            c.push_calls(
                &format!("call {i}"),
                &[("read_file".to_owned(), format!("result {i}"))],
            );
        }
        c
    }

    #[test]
    fn items_left_out_leave_the_rest_of_each_result() {
        let mut c = Conversation::new("sys".into(), Vec::new(), "task".into());
        let read = "zones:\n- zone=zone1 status=ok\n- zone=zone4 status=over";
        c.push_calls("<call 1>", &[("read".into(), read.into())]);
        c.push_calls("<call 2>", &[("read".into(), "delivered".into())]);
        c.leave_out(&["- zone=zone1 status=ok".into()], "(1 item left out)");
        let m = c.messages();
        assert_eq!(
            m[3]["content"],
            "zones:\n- zone=zone4 status=over\n(1 item left out)"
        );
        assert_eq!(m[5]["content"], "delivered");
    }

    #[test]
    fn folding_keeps_system_task_and_the_last_turn() {
        let mut c = conversation(3);
        let fold = c.fold(true).expect("something to fold");
        assert_eq!(fold.messages, 2 + 4);
        assert_eq!(fold.transcript[0].0, "earlier task");
        assert_eq!(
            fold.transcript.last().map(|t| t.1.as_str()),
            Some("result 1")
        );
        c.apply(fold, "read two files".into());
        let m = c.messages();
        assert_eq!(m.len(), 4);
        assert_eq!(m[0]["content"], "sys");
        let task = m[1]["content"].as_str().unwrap_or_default();
        assert!(task.starts_with("the task") && task.ends_with("read two files"));
        assert_eq!(m[2]["content"], "call 2");
        assert_eq!(m[3]["content"], "result 2");
    }

    #[test]
    fn a_second_fold_carries_the_previous_summary_and_can_take_the_last_turn() {
        let mut c = conversation(1);
        let first = c.fold(true).expect("history to fold");
        assert_eq!(first.messages, 2);
        c.apply(first, "s1".into());
        assert!(c.fold(true).is_none(), "only the last turn is left");
        let second = c.fold(false).expect("the last turn");
        assert_eq!(second.transcript[0], ("summary so far".into(), "s1".into()));
        c.apply(second, "s2".into());
        assert_eq!(c.messages().len(), 2);
        assert!(c.fold(false).is_none());
    }

    #[test]
    fn long_messages_are_cut_in_the_request() {
        let mut c = conversation(0);
        c.push_calls("x", &[("read_file".to_owned(), "word ".repeat(1000))]);
        c.push_calls("y", &[("read_file".to_owned(), "short".to_owned())]);
        let fold = c.fold(true).expect("fold");
        let req = summary_request("t", &fold, 50, 100);
        let body = req[1]["content"].as_str().unwrap_or_default();
        assert!(body.contains("word word") && body.contains('…'));
        assert!(body.len() < 400, "{body}");
    }
}
