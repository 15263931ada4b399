//! `edgewise eval tools`: how well the model turns a request into the right tool calls, or into
//! a text answer where no tool fits, with the runtime's tool-use features on and off. One model
//! turn per task (generated again where the call decision sets its calls aside), nothing is
//! executed; the set is data (`eval/tools.yaml`) so anyone can extend it.

use std::path::Path;
use std::time::Instant;

use edgewise_core::SamplingParams;
use edgewise_infer::{
    grammar::{describe_tools_for_prompt, prose_answer_grammar},
    parse_tool_calls, tool_calls_grammar, Engine, GenerateRequest, ToolCall, ToolChoice, ToolSpec,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::call_decision::{CallDecision, Retry};
use crate::grounding::Grounding;
use crate::runner::generate;
use crate::AgentError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSet {
    pub tools: Vec<EvalTool>,
    pub tasks: Vec<EvalTask>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalTool {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalTask {
    pub prompt: String,
    /// The tools offered with this task [default: all of the set's tools].
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    pub expect: Expect,
}

/// What a task expects: one call, several independent calls in one turn (any order), or the
/// word `answer` (no offered tool fits: the right response is text).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Expect {
    Call(Expected),
    Calls(Vec<Expected>),
    Answer(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    pub tool: String,
    pub arguments: Value,
}

impl EvalTask {
    /// The expected calls; empty when the task expects a text answer.
    pub fn expected_calls(&self) -> &[Expected] {
        match &self.expect {
            Expect::Call(c) => std::slice::from_ref(c),
            Expect::Calls(c) => c,
            Expect::Answer(_) => &[],
        }
    }

    fn offers(&self, tool: &str) -> bool {
        self.tools
            .as_ref()
            .is_none_or(|t| t.iter().any(|n| n == tool))
    }
}

/// The kinds of task a function-calling eval reports apart (the public benchmarks' split).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// One tool offered, one call expected.
    Simple,
    /// Several tools offered, one call expected.
    Multiple,
    /// Several independent calls expected in one turn.
    Parallel,
    /// No offered tool fits: a text answer expected.
    Irrelevance,
}

impl Category {
    pub const ALL: [Category; 4] = [
        Category::Simple,
        Category::Multiple,
        Category::Parallel,
        Category::Irrelevance,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Category::Simple => "simple",
            Category::Multiple => "multiple",
            Category::Parallel => "parallel",
            Category::Irrelevance => "irrelevance",
        }
    }
}

impl EvalSet {
    pub fn load(path: &Path) -> Result<Self, AgentError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AgentError::Other(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text, path)
    }

    /// `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, AgentError> {
        let set: Self = serde_yaml::from_str(text)
            .map_err(|e| AgentError::Other(format!("{}: {e}", path.display())))?;
        let bad = |i: usize, what: String| {
            AgentError::Other(format!("{}: task {}: {what}", path.display(), i + 1))
        };
        for (i, t) in set.tasks.iter().enumerate() {
            if let Expect::Answer(word) = &t.expect {
                if word != "answer" {
                    return Err(bad(i, format!("expect is '{word}'; write a call, a list of calls, or the word 'answer'")));
                }
            }
            for name in t.tools.iter().flatten() {
                if !set.tools.iter().any(|tool| &tool.name == name) {
                    return Err(bad(
                        i,
                        format!("offers tool '{name}', which the set does not declare"),
                    ));
                }
            }
            if t.tools.as_ref().is_some_and(|t| t.is_empty()) {
                return Err(bad(
                    i,
                    "offers no tools (leave 'tools' out to offer all)".into(),
                ));
            }
            for c in t.expected_calls() {
                if !t.offers(&c.tool) || !set.tools.iter().any(|tool| tool.name == c.tool) {
                    return Err(bad(
                        i,
                        format!("expects tool '{}', which the task does not offer", c.tool),
                    ));
                }
            }
        }
        Ok(set)
    }

    fn offered(&self, task: &EvalTask) -> Vec<ToolSpec> {
        self.tools
            .iter()
            .filter(|t| task.offers(&t.name))
            .map(|t| ToolSpec {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: t.parameters.clone(),
            })
            .collect()
    }

    pub fn category(&self, task: &EvalTask) -> Category {
        match task.expected_calls().len() {
            0 => Category::Irrelevance,
            1 if self.tools.iter().filter(|t| task.offers(&t.name)).count() == 1 => {
                Category::Simple
            }
            1 => Category::Multiple,
            _ => Category::Parallel,
        }
    }
}

/// Which of the runtime's tool-use features an eval run has on.
#[derive(Debug, Clone, Serialize)]
pub struct EvalOptions {
    pub label: String,
    /// Decode under the tool-call grammar.
    pub grammar: bool,
    /// The call-or-answer decision's threshold (`GenerateRequest::call_threshold`).
    pub call_threshold: Option<f32>,
    /// Calls one turn may hold (1: no parallel calls).
    pub max_calls: usize,
}

/// What the model did with one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The expected calls (any order), arguments equal to the expected ones.
    Exact,
    /// A text answer, where no offered tool fits.
    Answered,
    /// The right tools, other arguments (still schema-valid).
    WrongArguments,
    /// Registered tools, not the expected ones.
    WrongTool,
    /// Valid calls, but more or fewer than expected.
    WrongCallCount,
    /// A call where no offered tool fits.
    UnwantedCall,
    /// A call whose arguments break the tool's schema.
    InvalidArguments,
    /// A call naming a tool that is not offered.
    UnknownTool,
    /// Output that tried to be a call but does not parse.
    Malformed,
    /// A text answer instead of a call.
    NoCall,
}

impl Verdict {
    pub fn is_right(self) -> bool {
        matches!(self, Verdict::Exact | Verdict::Answered)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub task: usize,
    pub category: Category,
    pub verdict: Verdict,
    /// The decision's score for calling, where it made one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_probability: Option<f32>,
    /// Calls the decision set aside before the output, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub set_aside: Vec<String>,
    pub output: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CategoryScore {
    pub category: Category,
    pub tasks: usize,
    pub right: usize,
}

impl CategoryScore {
    /// Fraction right; `None` without tasks.
    pub fn score(&self) -> Option<f64> {
        (self.tasks > 0).then(|| self.right as f64 / self.tasks as f64)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub options: EvalOptions,
    pub tasks: usize,
    /// Outputs that were, or tried to be, tool calls.
    pub attempted_calls: usize,
    /// Attempted calls that parse, name an offered tool and satisfy its schema.
    pub valid_calls: usize,
    pub right: usize,
    pub by_category: Vec<CategoryScore>,
    pub seconds: f64,
    pub results: Vec<TaskResult>,
}

impl EvalReport {
    pub fn count(&self, v: Verdict) -> usize {
        self.results.iter().filter(|r| r.verdict == v).count()
    }

    pub fn category(&self, c: Category) -> Option<&CategoryScore> {
        self.by_category.iter().find(|s| s.category == c)
    }
}

/// What the eval tells the model: the same for every task and configuration, so only the tools
/// and the request differ and the comparison is the runtime's features alone.
const EVAL_SYSTEM_PROMPT: &str = "You are an assistant on an edge node. When a tool fits the request, call it; for several independent requests make one call each. When no tool fits, answer in text.";

/// Runs every task once (temperature 0, fixed seed). The system prompt is the same for all
/// tasks, so consecutive tasks offering the same tools prefill only the request.
pub async fn eval_tools(
    engine: &Engine,
    set: &EvalSet,
    options: &EvalOptions,
    mut progress: impl FnMut(usize, &TaskResult),
) -> Result<EvalReport, AgentError> {
    let template = engine.template();
    let started = Instant::now();
    let mut results = Vec::with_capacity(set.tasks.len());
    for (i, task) in set.tasks.iter().enumerate() {
        let specs = set.offered(task);
        let validators = specs
            .iter()
            .map(|t| {
                jsonschema::validator_for(&t.parameters)
                    .map_err(|e| AgentError::Other(format!("tool '{}': bad schema: {e}", t.name)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let openai_tools: Vec<Value> = specs
            .iter()
            .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}))
            .collect();
        let mut system = String::from(EVAL_SYSTEM_PROMPT);
        if !template.supports_tools() {
            system.push_str("\n\n");
            system.push_str(&describe_tools_for_prompt(&specs));
        }
        let messages = [
            json!({"role": "system", "content": system}),
            json!({"role": "user", "content": task.prompt}),
        ];
        let tools = template.supports_tools().then_some(&openai_tools[..]);
        let prompt = template
            .render(&messages, tools, true)
            .map_err(|e| AgentError::Other(format!("chat template: {e}")))?;
        let mut req = GenerateRequest::new(prompt);
        req.max_tokens = 256 * options.max_calls.max(1) as u32;
        req.sampling = SamplingParams {
            temperature: 0.0,
            seed: 1,
            ..SamplingParams::default()
        };
        let mut decision = None;
        if options.grammar {
            req.constraint = Some(
                tool_calls_grammar(&specs, &ToolChoice::Auto, options.max_calls)
                    .map_err(|e| AgentError::Other(format!("tool grammar: {e}")))?,
            );
            req.call_threshold = options.call_threshold;
            if options.call_threshold.is_some() {
                let mut shown = Grounding::default();
                shown.add(&system);
                shown.add(&task.prompt);
                decision = Some(CallDecision::new(shown, specs.clone(), options.max_calls));
            }
        }
        let mut set_aside = Vec::new();
        let mut completion = generate(engine, req.clone()).await?;
        let call_probability = completion.usage.call_probability;
        while let Some(d) = decision.as_mut() {
            let Some((retry, why)) = d.review(&parse_tool_calls(&completion.text).1) else {
                break;
            };
            set_aside.push(format!("{why:?}: {}", completion.text.trim()));
            match retry {
                Retry::Decide(c) => req.constraint = Some(c),
                Retry::Answer => {
                    let plain = [
                        json!({"role": "system", "content": EVAL_SYSTEM_PROMPT}),
                        json!({"role": "user", "content": task.prompt}),
                    ];
                    req.prompt = template
                        .render(&plain, None, true)
                        .map_err(|e| AgentError::Other(format!("chat template: {e}")))?;
                    req.constraint = Some(prose_answer_grammar());
                }
            }
            completion = generate(engine, req.clone()).await?;
        }
        let verdict = judge(&completion.text, task.expected_calls(), &specs, &validators);
        let result = TaskResult {
            task: i + 1,
            category: set.category(task),
            verdict,
            call_probability,
            set_aside,
            output: completion.text,
        };
        progress(i + 1, &result);
        results.push(result);
    }
    let count = |f: &dyn Fn(Verdict) -> bool| results.iter().filter(|r| f(r.verdict)).count();
    let by_category = Category::ALL
        .iter()
        .map(|&c| {
            let of: Vec<&TaskResult> = results.iter().filter(|r| r.category == c).collect();
            CategoryScore {
                category: c,
                tasks: of.len(),
                right: of.iter().filter(|r| r.verdict.is_right()).count(),
            }
        })
        .collect();
    Ok(EvalReport {
        options: options.clone(),
        tasks: set.tasks.len(),
        attempted_calls: count(&|v| !matches!(v, Verdict::NoCall | Verdict::Answered)),
        valid_calls: count(&|v| {
            matches!(
                v,
                Verdict::Exact
                    | Verdict::WrongArguments
                    | Verdict::WrongTool
                    | Verdict::WrongCallCount
                    | Verdict::UnwantedCall
            )
        }),
        right: count(&|v| v.is_right()),
        by_category,
        seconds: started.elapsed().as_secs_f64(),
        results,
    })
}

fn judge(
    output: &str,
    expected: &[Expected],
    specs: &[ToolSpec],
    validators: &[jsonschema::Validator],
) -> Verdict {
    let (_, calls) = parse_tool_calls(output);
    if calls.is_empty() {
        let t = output.trim_start();
        return if t.contains("<tool_call>") || t.starts_with('{') {
            Verdict::Malformed
        } else if expected.is_empty() {
            Verdict::Answered
        } else {
            Verdict::NoCall
        };
    }
    for call in &calls {
        let Some(i) = specs.iter().position(|s| s.name == call.name) else {
            return Verdict::UnknownTool;
        };
        if !validators[i].is_valid(&call.arguments) {
            return Verdict::InvalidArguments;
        }
    }
    if expected.is_empty() {
        return Verdict::UnwantedCall;
    }
    if calls.len() != expected.len() {
        return Verdict::WrongCallCount;
    }
    let mut called: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
    let mut wanted: Vec<&str> = expected.iter().map(|e| e.tool.as_str()).collect();
    called.sort_unstable();
    wanted.sort_unstable();
    if called != wanted {
        return Verdict::WrongTool;
    }
    if matches_in_any_order(&calls, expected) {
        Verdict::Exact
    } else {
        Verdict::WrongArguments
    }
}

/// Every expected call is matched by its own emitted call (same tool, same arguments).
fn matches_in_any_order(calls: &[ToolCall], expected: &[Expected]) -> bool {
    let mut used = vec![false; calls.len()];
    expected.iter().all(|e| {
        let hit = calls
            .iter()
            .enumerate()
            .position(|(j, c)| !used[j] && c.name == e.tool && same(&c.arguments, &e.arguments));
        hit.map(|j| used[j] = true).is_some()
    })
}

/// JSON equality where numbers compare by value (`5` = `5.0`) and strings after trimming.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::String(x), Value::String(y)) => x.trim() == y.trim(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgewise_infer::MAX_PARALLEL_CALLS;

    fn expected(tool: &str, args: Value) -> Expected {
        Expected {
            tool: tool.into(),
            arguments: args,
        }
    }

    #[test]
    fn verdicts_tell_apart_every_way_a_call_can_go_wrong() {
        let specs = vec![
            ToolSpec {
                name: "set_timer".into(),
                description: String::new(),
                parameters: json!({"type": "object", "properties": {"minutes": {"type": "integer"}}, "required": ["minutes"]}),
            },
            ToolSpec {
                name: "kv_get".into(),
                description: String::new(),
                parameters: json!({"type": "object"}),
            },
        ];
        let validators: Vec<_> = specs
            .iter()
            .map(|s| jsonschema::validator_for(&s.parameters).unwrap())
            .collect();
        let one = [expected("set_timer", json!({"minutes": 5}))];
        let v = |out: &str| judge(out, &one, &specs, &validators);
        assert_eq!(
            v(r#"{"name": "set_timer", "arguments": {"minutes": 5.0}}"#),
            Verdict::Exact
        );
        assert_eq!(
            v("<tool_call>\n{\"name\": \"set_timer\", \"arguments\": {\"minutes\": 6}}\n</tool_call>"),
            Verdict::WrongArguments
        );
        assert_eq!(
            v(r#"{"name": "kv_get", "arguments": {}}"#),
            Verdict::WrongTool
        );
        assert_eq!(
            v(r#"{"name": "set_timer", "arguments": {"minutes": "five"}}"#),
            Verdict::InvalidArguments
        );
        assert_eq!(
            v(r#"{"name": "reboot", "arguments": {}}"#),
            Verdict::UnknownTool
        );
        assert_eq!(
            v(r#"{"name": "set_timer", "arguments": {"#),
            Verdict::Malformed
        );
        assert_eq!(v("Sure, five minutes."), Verdict::NoCall);
        let two = [
            expected("set_timer", json!({"minutes": 5})),
            expected("set_timer", json!({"minutes": 9})),
        ];
        let v2 = |out: &str| judge(out, &two, &specs, &validators);
        let call = |m: u32| {
            format!("<tool_call>\n{{\"name\": \"set_timer\", \"arguments\": {{\"minutes\": {m}}}}}\n</tool_call>")
        };
        assert_eq!(v2(&format!("{}\n{}", call(9), call(5))), Verdict::Exact);
        assert_eq!(
            v2(&format!("{}\n{}", call(5), call(6))),
            Verdict::WrongArguments
        );
        // A repeat of a call in the same turn counts once.
        assert_eq!(
            v2(&format!("{}\n{}", call(5), call(5))),
            Verdict::WrongCallCount
        );
        assert_eq!(v2(&call(5)), Verdict::WrongCallCount);
        let v0 = |out: &str| judge(out, &[], &specs, &validators);
        assert_eq!(v0("Paris is the capital of France."), Verdict::Answered);
        assert_eq!(v0(&call(5)), Verdict::UnwantedCall);
        assert!(Verdict::Answered.is_right() && !Verdict::UnwantedCall.is_right());
    }

    #[test]
    fn sets_name_what_is_wrong_with_a_task() {
        let tools = "tools:\n  - {name: a, description: x, parameters: {type: object}}\n";
        let err = |tasks: &str| {
            EvalSet::parse(&format!("{tools}tasks:\n{tasks}"), Path::new("t.yaml"))
                .unwrap_err()
                .to_string()
        };
        assert!(err("  - {prompt: p, expect: nothing}\n").contains("task 1: expect is 'nothing'"));
        assert!(err("  - {prompt: p, tools: [b], expect: answer}\n").contains("offers tool 'b'"));
        assert!(
            err("  - {prompt: p, expect: {tool: b, arguments: {}}}\n").contains("expects tool 'b'")
        );
        assert!(err("  - {prompt: p, tools: [], expect: answer}\n").contains("offers no tools"));
    }

    #[test]
    fn the_shipped_eval_set_loads_and_covers_every_category() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../eval/tools.yaml");
        let set = EvalSet::load(&path).unwrap();
        assert!(set.tasks.len() >= 80, "{} tasks", set.tasks.len());
        for c in Category::ALL {
            let n = set.tasks.iter().filter(|t| set.category(t) == c).count();
            assert!(n >= 10, "{} tasks of category {}", n, c.name());
        }
        for (i, t) in set.tasks.iter().enumerate() {
            // The decision lets every expected call stand: what it sets aside is never right.
            let mut shown = Grounding::default();
            shown.add(EVAL_SYSTEM_PROMPT);
            shown.add(&t.prompt);
            let calls: Vec<ToolCall> = t
                .expected_calls()
                .iter()
                .map(|e| ToolCall {
                    name: e.tool.clone(),
                    arguments: e.arguments.clone(),
                })
                .collect();
            let mut d = CallDecision::new(shown, set.offered(t), MAX_PARALLEL_CALLS);
            assert_eq!(d.review(&calls).map(|r| r.1), None, "task {}", i + 1);
            for e in t.expected_calls() {
                let tool = set.tools.iter().find(|s| s.name == e.tool).unwrap();
                let v = jsonschema::validator_for(&tool.parameters).unwrap();
                assert!(
                    v.is_valid(&e.arguments),
                    "task {}: expected arguments break the schema of {}",
                    i + 1,
                    tool.name
                );
            }
        }
    }
}
