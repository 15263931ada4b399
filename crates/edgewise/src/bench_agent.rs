//! `edgewise bench agent`: one 10-step tool-calling run with the run's KV kept between steps,
//! and the same run with KV reuse disabled, on the same model and threads. Each step's prompt,
//! reused and prefilled tokens are reported; state lives in a temp dir, not the node's.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use edgewise_agent::{AgentHost, RunOptions, RunOutcome, RunStatus};
use edgewise_core::{AgentSpec, DataDir};
use serde::Serialize;

use crate::node::Node;

#[derive(Args)]
pub struct AgentBenchArgs {
    #[arg(short, long)]
    model: Option<String>,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Tool-calling steps before the answer.
    #[arg(long, default_value_t = 10)]
    steps: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

const SPEC: &str = r#"agent_id: bench-agent
version: "1"
runtime:
  type: native
capabilities:
  - name: kv_set
    endpoint: "builtin:kv_set"
  - name: kv_get
    endpoint: "builtin:kv_get"
  - name: current_time
    endpoint: "builtin:current_time"
instructions: "You are a logging agent on an edge node. You record values with kv_set, read them with kv_get, and answer briefly when done."
model_config:
  temperature: 0
  seed: 7
"#;

const TASK: &str = "Count from 1 upwards in memory: call kv_set with the key 'count' and the value '1', then again with the value '2', and so on, one call per number. When you are told to stop, answer 'done'.";

#[derive(Serialize)]
struct Run {
    kv_reuse: bool,
    seconds: f64,
    status: RunStatus,
    tool_steps: usize,
    prompt_tokens: u32,
    prefilled_tokens: u32,
    steps: Vec<Step>,
}

#[derive(Serialize)]
struct Step {
    step: u32,
    tool: Option<String>,
    prompt_tokens: u32,
    cached_tokens: u32,
    prefilled_tokens: u32,
    completion_tokens: u32,
    ms: f64,
}

#[derive(Serialize)]
struct Report {
    model: String,
    threads: usize,
    with_reuse: Run,
    without_reuse: Run,
    speedup: f64,
}

pub fn run(node: &Node, a: AgentBenchArgs) -> Result<()> {
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let mut spec = AgentSpec::parse(SPEC, Path::new("bench-agent.yaml"))?;
    spec.limits.max_steps = a.steps + 1;
    spec.limits.max_tool_calls = a.steps;
    let with_reuse = measure(node, &a, &spec, true)?;
    let without_reuse = measure(node, &a, &spec, false)?;
    let model = node
        .store
        .resolve(a.model.as_deref().unwrap_or(&node.config.default_model))?
        .name;
    let report = Report {
        model,
        threads: a.threads,
        speedup: without_reuse.seconds / with_reuse.seconds,
        with_reuse,
        without_reuse,
    };
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print(&report);
    }
    for r in [&report.with_reuse, &report.without_reuse] {
        if r.status != RunStatus::Completed || r.tool_steps != a.steps as usize {
            bail!(
                "the run with kv_reuse={} made {} tool steps and ended {:?} (expected {} steps and an answer): the figures are not comparable",
                r.kv_reuse,
                r.tool_steps,
                r.status,
                a.steps
            );
        }
    }
    Ok(())
}

/// One run on a freshly loaded engine (so the two runs share nothing) with its own state dir.
fn measure(node: &Node, a: &AgentBenchArgs, spec: &AgentSpec, kv_reuse: bool) -> Result<Run> {
    let engine = node.load_engine(a.model.as_deref(), |c| {
        c.threads = a.threads;
        c.slots = 1;
        c.prefix_cache = kv_reuse;
    })?;
    let state = tempfile::tempdir().context("temp dir for the benchmark's state")?;
    let host = AgentHost::open(&DataDir::new(state.path()), node.config.clone())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tools = rt.block_on(host.tools(spec, state.path()))?;
    let agent = host.agent(spec.clone(), tools, Arc::new(engine));
    let opts = RunOptions {
        force_tool_steps: a.steps,
        ..RunOptions::default()
    };
    let started = Instant::now();
    let outcome: RunOutcome = rt.block_on(agent.run(TASK, opts, None))?;
    let seconds = started.elapsed().as_secs_f64();
    let steps: Vec<Step> = outcome
        .steps
        .iter()
        .map(|s| Step {
            step: s.step,
            tool: s.tool.clone(),
            prompt_tokens: s.prompt_tokens,
            cached_tokens: s.cached_tokens,
            prefilled_tokens: s.prefilled_tokens,
            completion_tokens: s.completion_tokens,
            ms: s.generation_ms + s.tool_ms,
        })
        .collect();
    Ok(Run {
        kv_reuse,
        seconds,
        status: outcome.status,
        tool_steps: outcome
            .steps
            .iter()
            .filter(|s| s.decision == "call")
            .count(),
        prompt_tokens: steps.iter().map(|s| s.prompt_tokens).sum(),
        prefilled_tokens: steps.iter().map(|s| s.prefilled_tokens).sum(),
        steps,
    })
}

fn print(r: &Report) {
    println!("agent run, model {} threads {}", r.model, r.threads);
    for run in [&r.with_reuse, &r.without_reuse] {
        let label = if run.kv_reuse {
            "with KV reuse"
        } else {
            "KV reuse off"
        };
        println!(
            "{label}: {:.2} s, {} tool steps, {:?}; {} prompt tokens, {} prefilled",
            run.seconds, run.tool_steps, run.status, run.prompt_tokens, run.prefilled_tokens
        );
        println!(
            "  {:>4} {:<13} {:>7} {:>7} {:>9} {:>6} {:>8}",
            "step", "tool", "prompt", "reused", "prefilled", "gen", "ms"
        );
        for s in &run.steps {
            println!(
                "  {:>4} {:<13} {:>7} {:>7} {:>9} {:>6} {:>8.0}",
                s.step,
                s.tool.as_deref().unwrap_or("(answer)"),
                s.prompt_tokens,
                s.cached_tokens,
                s.prefilled_tokens,
                s.completion_tokens,
                s.ms
            );
        }
    }
    println!(
        "end to end: {:.2}x faster with KV reuse ({:.2} s vs {:.2} s)",
        r.speedup, r.with_reuse.seconds, r.without_reuse.seconds
    );
}
