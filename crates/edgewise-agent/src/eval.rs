//! `edgewise eval tools`: how well the model turns a request into the right tool call, with the
//! tool grammar on and off. One model turn per task, nothing is executed; the set is data
//! (`eval/tools.yaml`) so anyone can extend it.

use std::path::Path;
use std::time::Instant;

use edgewise_core::SamplingParams;
use edgewise_infer::{
    grammar::describe_tools_for_prompt, parse_tool_calls, tool_call_grammar, Engine,
    GenerateRequest, ToolChoice, ToolSpec,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

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
    pub expect: Expected,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    pub tool: String,
    pub arguments: Value,
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
        for (i, t) in set.tasks.iter().enumerate() {
            if !set.tools.iter().any(|tool| tool.name == t.expect.tool) {
                return Err(AgentError::Other(format!(
                    "{}: task {} expects tool '{}', which the set does not declare",
                    path.display(),
                    i + 1,
                    t.expect.tool
                )));
            }
        }
        Ok(set)
    }

    fn specs(&self) -> Vec<ToolSpec> {
        self.tools
            .iter()
            .map(|t| ToolSpec {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: t.parameters.clone(),
            })
            .collect()
    }
}

/// What the model did with one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Right tool, arguments equal to the expected ones.
    Exact,
    /// Right tool, other arguments (still schema-valid).
    WrongArguments,
    /// A registered tool, not the expected one.
    WrongTool,
    /// A call whose arguments break the tool's schema.
    InvalidArguments,
    /// A call naming a tool that is not registered.
    UnknownTool,
    /// Output that tried to be a call but does not parse.
    Malformed,
    /// A text answer instead of a call.
    NoCall,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub task: usize,
    pub verdict: Verdict,
    pub output: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub constrained: bool,
    pub tasks: usize,
    /// Outputs that were, or tried to be, a tool call.
    pub attempted_calls: usize,
    /// Attempted calls that parse, name a registered tool and satisfy its schema.
    pub valid_calls: usize,
    pub right_tool: usize,
    pub exact: usize,
    pub seconds: f64,
    pub results: Vec<TaskResult>,
}

impl EvalReport {
    pub fn count(&self, v: Verdict) -> usize {
        self.results.iter().filter(|r| r.verdict == v).count()
    }
}

/// Runs every task once (temperature 0, fixed seed). The system prompt and tool declarations are
/// the same for all tasks, so after the first task only each request is prefilled.
pub async fn eval_tools(
    engine: &Engine,
    set: &EvalSet,
    constrained: bool,
    mut progress: impl FnMut(usize, &TaskResult),
) -> Result<EvalReport, AgentError> {
    let specs = set.specs();
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
    let template = engine.template();
    let mut system = String::from(
        "You are an agent on an edge node. You act only through your tools: answer each request with one tool call.",
    );
    if !template.supports_tools() {
        system.push_str("\n\n");
        system.push_str(&describe_tools_for_prompt(&specs));
    }
    let grammar = if constrained {
        Some(
            tool_call_grammar(&specs, &ToolChoice::Auto)
                .map_err(|e| AgentError::Other(format!("tool grammar: {e}")))?,
        )
    } else {
        None
    };
    let started = Instant::now();
    let mut results = Vec::with_capacity(set.tasks.len());
    for (i, task) in set.tasks.iter().enumerate() {
        let messages = [
            json!({"role": "system", "content": system}),
            json!({"role": "user", "content": task.prompt}),
        ];
        let tools = template.supports_tools().then_some(&openai_tools[..]);
        let prompt = template
            .render(&messages, tools, true)
            .map_err(|e| AgentError::Other(format!("chat template: {e}")))?;
        let mut req = GenerateRequest::new(prompt);
        req.max_tokens = 256;
        req.sampling = SamplingParams {
            temperature: 0.0,
            seed: 1,
            ..SamplingParams::default()
        };
        req.constraint = grammar.clone();
        let output = generate(engine, req).await?.text;
        let verdict = judge(&output, task, &specs, &validators);
        let result = TaskResult {
            task: i + 1,
            verdict,
            output,
        };
        progress(i + 1, &result);
        results.push(result);
    }
    let count = |f: &dyn Fn(Verdict) -> bool| results.iter().filter(|r| f(r.verdict)).count();
    Ok(EvalReport {
        constrained,
        tasks: set.tasks.len(),
        attempted_calls: count(&|v| v != Verdict::NoCall),
        valid_calls: count(&|v| {
            matches!(
                v,
                Verdict::Exact | Verdict::WrongArguments | Verdict::WrongTool
            )
        }),
        right_tool: count(&|v| matches!(v, Verdict::Exact | Verdict::WrongArguments)),
        exact: count(&|v| v == Verdict::Exact),
        seconds: started.elapsed().as_secs_f64(),
        results,
    })
}

fn judge(
    output: &str,
    task: &EvalTask,
    specs: &[ToolSpec],
    validators: &[jsonschema::Validator],
) -> Verdict {
    let (_, calls) = parse_tool_calls(output);
    let Some(call) = calls.first() else {
        let t = output.trim_start();
        return if t.contains("<tool_call>") || t.starts_with('{') {
            Verdict::Malformed
        } else {
            Verdict::NoCall
        };
    };
    let Some(i) = specs.iter().position(|s| s.name == call.name) else {
        return Verdict::UnknownTool;
    };
    if !validators[i].is_valid(&call.arguments) {
        return Verdict::InvalidArguments;
    }
    if call.name != task.expect.tool {
        Verdict::WrongTool
    } else if same(&call.arguments, &task.expect.arguments) {
        Verdict::Exact
    } else {
        Verdict::WrongArguments
    }
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

    fn task(tool: &str, args: Value) -> EvalTask {
        EvalTask {
            prompt: String::new(),
            expect: Expected {
                tool: tool.into(),
                arguments: args,
            },
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
        let t = task("set_timer", json!({"minutes": 5}));
        let v = |out: &str| judge(out, &t, &specs, &validators);
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
    }

    #[test]
    fn the_shipped_eval_set_loads_and_has_at_least_50_tasks() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../eval/tools.yaml");
        let set = EvalSet::load(&path).unwrap();
        assert!(set.tasks.len() >= 50, "{} tasks", set.tasks.len());
        let specs = set.specs();
        for (i, t) in set.tasks.iter().enumerate() {
            let tool = specs.iter().find(|s| s.name == t.expect.tool).unwrap();
            let v = jsonschema::validator_for(&tool.parameters).unwrap();
            assert!(
                v.is_valid(&t.expect.arguments),
                "task {}: expected arguments break the schema of {}",
                i + 1,
                tool.name
            );
        }
    }
}
