//! `edgewise eval tools`: tool-call accuracy of the model, grammar on and off.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use edgewise_agent::eval::{eval_tools, EvalReport, EvalSet, Verdict};

use crate::node::Node;

/// The set shipped in the repo (`eval/tools.yaml`), built in so the command works anywhere.
const BUILTIN_SET: &str = include_str!("../../../eval/tools.yaml");

#[derive(Subcommand)]
pub enum EvalCommand {
    /// One model turn per task with every tool offered; compares the call with the expected one.
    /// Exit code 1 if a grammar-constrained call fails to parse or names an unknown tool.
    Tools(ToolsArgs),
}

#[derive(Args)]
pub struct ToolsArgs {
    /// Evaluation set (YAML: tools and tasks) [default: the built-in eval/tools.yaml].
    #[arg(long)]
    file: Option<PathBuf>,
    /// Model to evaluate [default: the config's default_model].
    #[arg(short, long)]
    model: Option<String>,
    /// Which decoding to evaluate.
    #[arg(long, value_enum, default_value = "both")]
    constraints: Constraints,
    /// Print the reports (every task's verdict and output) as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Constraints {
    On,
    Off,
    Both,
}

pub fn run(node: &Node, cmd: EvalCommand) -> Result<()> {
    let EvalCommand::Tools(args) = cmd;
    let set = match &args.file {
        Some(f) => EvalSet::load(f)?,
        None => EvalSet::parse(BUILTIN_SET, Path::new("eval/tools.yaml"))?,
    };
    let engine = Arc::new(node.load_engine(args.model.as_deref(), |cfg| cfg.slots = 1)?);
    let modes: &[bool] = match args.constraints {
        Constraints::On => &[true],
        Constraints::Off => &[false],
        Constraints::Both => &[true, false],
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut reports = Vec::new();
    for &constrained in modes {
        let label = mode(constrained);
        let report = rt.block_on(eval_tools(&engine, &set, constrained, |i, r| {
            if !args.json {
                eprint!(
                    "\r{label}: task {i}/{} ({:?})        ",
                    set.tasks.len(),
                    r.verdict
                );
            }
        }))?;
        if !args.json {
            eprintln!();
        }
        reports.push(report);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print_table(&engine.info().name, &reports);
    }
    if let Some(r) = reports
        .iter()
        .find(|r| r.constrained && r.valid_calls < r.attempted_calls)
    {
        bail!(
            "{} of {} constrained calls did not parse or broke their schema: the tool grammar is broken",
            r.attempted_calls - r.valid_calls,
            r.attempted_calls
        );
    }
    Ok(())
}

fn mode(constrained: bool) -> &'static str {
    if constrained {
        "constrained"
    } else {
        "free"
    }
}

fn pct(n: usize, of: usize) -> String {
    if of == 0 {
        return "-".into();
    }
    format!("{:.1}%", 100.0 * n as f64 / of as f64)
}

fn print_table(model: &str, reports: &[EvalReport]) {
    println!(
        "tool-call evaluation, model {model}, {} tasks",
        reports.first().map_or(0, |r| r.tasks)
    );
    println!(
        "{:<12} {:>9} {:>12} {:>11} {:>11} {:>8} {:>10} {:>9} {:>8}",
        "decoding",
        "calls",
        "valid calls",
        "right tool",
        "exact",
        "no call",
        "malformed",
        "unknown",
        "time"
    );
    for r in reports {
        println!(
            "{:<12} {:>9} {:>12} {:>11} {:>11} {:>8} {:>10} {:>9} {:>7.1}s",
            mode(r.constrained),
            r.attempted_calls,
            pct(r.valid_calls, r.attempted_calls),
            pct(r.right_tool, r.tasks),
            pct(r.exact, r.tasks),
            r.count(Verdict::NoCall),
            r.count(Verdict::Malformed),
            r.count(Verdict::UnknownTool),
            r.seconds
        );
    }
    println!("valid calls: of the emitted calls, those that parse, name a registered tool and satisfy its schema");
}
