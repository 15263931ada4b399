//! `edgewise agent run|validate` and `edgewise audit verify|show`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use edgewise_agent::{choose_model, AgentHost, RunOptions, RunStatus, StepEvent};
use edgewise_core::AgentSpec;
use edgewise_store::AuditLog;

use crate::node::Node;

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Run an agent spec on a task: prints each step and the answer (exit code 1 unless it completes).
    Run(RunArgs),
    /// Check a spec: syntax, keys, endpoints and the model it would use.
    Validate {
        /// The agent spec (YAML).
        spec: PathBuf,
    },
}

#[derive(Args)]
pub struct RunArgs {
    /// The agent spec (YAML).
    spec: PathBuf,
    /// What the agent should do.
    task: String,
    /// Print the outcome (status, answer, every step) as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Pick the model mapped to this task type (spec `task_types`, node `task_models`).
    #[arg(long)]
    task_type: Option<String>,
    /// Sampling seed for reproducible runs.
    #[arg(long)]
    seed: Option<u32>,
    /// Let the model write tool calls freely (no grammar); the runtime still validates them.
    #[arg(long)]
    no_constraints: bool,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain; names the first broken record (exit code 1 if any).
    Verify,
    /// Print audit records, optionally of one run.
    Show {
        #[arg(long)]
        run: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// The node's agent services; marks runs a dead process left `running` as interrupted.
/// The node's agent services; components may embed with the node's embedding model when it is
/// pulled (it loads on first use).
pub fn open_host(node: &Node) -> Result<AgentHost> {
    let mut host = AgentHost::open(&node.data, node.config.clone())?;
    let name = &node.config.embedding_model;
    if let Ok(m) = node.store.open_for_load(name, &node.config.trusted_keys) {
        host.embedder = Some(Arc::new(edgewise_infer::LazyEmbedder::new(
            name.clone(),
            m.path,
        )));
    }
    Ok(host)
}

pub fn run(node: &Node, cmd: AgentCommand) -> Result<()> {
    match cmd {
        AgentCommand::Validate { spec } => validate(node, &spec),
        AgentCommand::Run(args) => run_agent(node, args),
    }
}

fn validate(node: &Node, path: &Path) -> Result<()> {
    let spec = AgentSpec::load(path)?;
    let choice = choose_model(&spec, &node.config, None, |n| node.store.knows(n))
        .map_err(anyhow::Error::msg)?;
    println!("{}: valid agent spec '{}'", path.display(), spec.agent_id);
    if let Some(w) = &choice.warning {
        println!("warning: {w}");
    }
    println!("model: {}", choice.model);
    for c in &spec.capabilities {
        let kind = if c.subscribe { "trigger" } else { "tool" };
        println!("{kind} {}: {}", c.name, c.endpoint);
    }
    // A valid spec may still ask for more than this node allows; `agent run` would refuse it.
    let absolute = |p: &Path| {
        let p = if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        };
        std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
    };
    let home = absolute(node.data.root());
    let spec_dir = absolute(path.parent().unwrap_or(Path::new("")));
    let scope = edgewise_core::PolicyScope {
        home: &home,
        spec_dir: &spec_dir,
    };
    if let Err(v) = node.config.agent_policy.check(&spec, &scope) {
        println!("warning: this node would refuse it: {}", spec.refusal(v));
    }
    Ok(())
}

fn run_agent(node: &Node, args: RunArgs) -> Result<()> {
    let spec = AgentSpec::load(&args.spec)?;
    let choice = choose_model(&spec, &node.config, args.task_type.as_deref(), |n| {
        node.store.knows(n)
    })
    .map_err(anyhow::Error::msg)?;
    if let Some(w) = &choice.warning {
        eprintln!("warning: {w}");
    }
    let host = open_host(node)?;
    let spec_dir = args
        .spec
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Build (and so check) every capability before spending seconds on loading the model.
    let tools = rt.block_on(host.tools(&spec, &spec_dir))?;
    for t in edgewise_agent::triggers::triggers(&spec, &node.config) {
        eprintln!(
            "note: '{}' subscribes to '{}': triggers start runs only on a serving node (`edgewise serve`, POST /v1/agents)",
            t.capability, t.topic
        );
    }
    let context_window = spec.model_config.context_window;
    let loaded = node.load_engine(Some(&choice.model), |cfg| {
        if let Some(w) = context_window {
            cfg.context_per_request = cfg.context_per_request.max(w);
            cfg.kv_cells = cfg.kv_cells.max(w);
        }
        cfg.slots = cfg.slots.min(2);
    });
    let agent = match loaded {
        Ok(engine) => host.agent(spec, tools, Arc::new(engine)),
        // Local first, the cloud (where the policy allows it) as the last resort.
        Err(load_error) => {
            let fallback = spec.workflow_policy.fallback.clone();
            match host.cloud_agent(spec, tools) {
                Ok(agent) => {
                    eprintln!(
                        "warning: {load_error:#}\nwarning: running every step on the cloud fallback ({})",
                        agent.model_name()
                    );
                    agent
                }
                Err(no_cloud) => {
                    let mut e = load_error.context(format!(
                        "the local model cannot serve this agent, and {no_cloud}"
                    ));
                    // Offloading to a node needs the mesh; until this node has one, say so
                    // instead of failing vaguely.
                    if let Some(f) = fallback {
                        e = e.context(format!(
                            "its fallback '{f}' is unreachable: this node is not part of a mesh"
                        ));
                    }
                    return Err(e);
                }
            }
        }
    };
    let opts = RunOptions {
        constrained: !args.no_constraints,
        seed: args.seed,
        ..RunOptions::default()
    };
    let json = args.json;
    let outcome = rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let printer = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if !json {
                    print_event(&ev);
                }
            }
        });
        let outcome = agent.run(&args.task, opts, Some(tx)).await;
        let _ = printer.await;
        outcome
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    }
    if outcome.status != RunStatus::Completed {
        bail!(
            "run {} ended {:?}: {}",
            outcome.run,
            outcome.status,
            outcome.error.as_deref().unwrap_or("no answer")
        );
    }
    Ok(())
}

fn print_event(ev: &StepEvent) {
    match ev {
        StepEvent::Started { run, model } => println!("run {run} (model {model})"),
        StepEvent::Step(s) => {
            let timing = format!(
                "[{} prompt tokens, {} prefilled, {:.0} ms]",
                s.prompt_tokens, s.prefilled_tokens, s.generation_ms
            );
            match s.tool.as_deref() {
                Some(tool) => println!(
                    "step {}: {} {} {}\n  → {}: {}",
                    s.step,
                    tool,
                    s.arguments
                        .as_ref()
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    timing,
                    s.decision,
                    one_line(&s.observation, 300)
                ),
                None => println!("step {}: answer {timing}", s.step),
            }
        }
        StepEvent::Finished(o) => match &o.answer {
            Some(a) if o.status == RunStatus::Completed => {
                let cached = if o.cached { " (cached)" } else { "" };
                println!("answer{cached}: {a}")
            }
            _ => println!(
                "run ended {:?}: {}",
                o.status,
                o.error.as_deref().unwrap_or("")
            ),
        },
    }
}

fn one_line(s: &str, max: usize) -> String {
    let flat = s.replace('\n', " ");
    if flat.chars().count() <= max {
        return flat;
    }
    let cut: String = flat.chars().take(max).collect();
    format!("{cut}…")
}

pub fn audit(node: &Node, cmd: AuditCommand) -> Result<()> {
    let log = AuditLog::open(&node.data.audit_log())?;
    match cmd {
        AuditCommand::Verify => match log.verify()? {
            Ok(n) => {
                println!(
                    "audit log {}: {n} records, chain intact",
                    log.path().display()
                );
                Ok(())
            }
            Err(brk) => bail!("{}: {brk}", log.path().display()),
        },
        AuditCommand::Show { run, json } => {
            let entries = log.entries(run.as_deref())?;
            if let Some(r) = &run {
                if entries.is_empty() {
                    bail!("no audit records for run '{r}' in {}", log.path().display());
                }
            }
            for e in entries {
                if json {
                    println!("{}", serde_json::to_string(&e).context("serialise")?);
                    continue;
                }
                let r = &e.record;
                let mut line = format!(
                    "#{} {} {} {}/{} {}",
                    e.seq, e.time, r.node, r.agent, r.run, r.kind
                );
                if let Some(p) = &r.placed_by {
                    line.push_str(&format!(" placed_by={p}"));
                }
                if let Some(s) = r.step {
                    line.push_str(&format!(" step={s}"));
                }
                if let Some(t) = &r.tool {
                    line.push_str(&format!(" tool={t}"));
                }
                line.push_str(&format!(" decision={}", r.decision));
                if let Some(a) = &r.arguments {
                    line.push_str(&format!(" args={}", one_line(&a.to_string(), 200)));
                }
                if let Some(res) = &r.result {
                    line.push_str(&format!(" result={}", one_line(res, 200)));
                }
                if let Some(d) = &r.detail {
                    line.push_str(&format!(" detail={}", one_line(d, 200)));
                }
                println!("{line}");
            }
            Ok(())
        }
    }
}
