//! `edgewise eval tools`: function-calling accuracy of the model by category (simple, multiple,
//! parallel, irrelevance), with all of the runtime's tool-use features on and with each one off.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use edgewise_agent::eval::{eval_tools, Category, EvalOptions, EvalReport, EvalSet, Verdict};
use edgewise_infer::{DEFAULT_CALL_THRESHOLD, MAX_PARALLEL_CALLS};

use crate::node::Node;

/// The set shipped in the repo (`eval/tools.yaml`), built in so the command works anywhere.
const BUILTIN_SET: &str = include_str!("../../../eval/tools.yaml");

#[derive(Subcommand)]
pub enum EvalCommand {
    /// One model turn per task; compares the calls (or the text answer) with the expected ones.
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
    /// Configurations to run (repeatable) [default: all four].
    #[arg(long = "config", value_enum)]
    configs: Vec<Config>,
    /// The call-or-answer decision's threshold: the least probability of calling that becomes a
    /// call.
    #[arg(long, default_value_t = DEFAULT_CALL_THRESHOLD)]
    call_threshold: f32,
    /// Print the reports (every task's verdict and output) as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Config {
    /// Tool grammar, call decision and parallel calls on (what agents and the API use).
    All,
    /// Free decoding: no grammar, so no decision either.
    NoGrammar,
    /// Grammar and parallel calls, no call decision.
    NoDecision,
    /// Grammar and call decision, at most one call per turn.
    NoParallel,
}

impl Config {
    fn options(self, threshold: f32) -> EvalOptions {
        let (label, grammar, decision, parallel) = match self {
            Config::All => ("all on", true, true, true),
            Config::NoGrammar => ("no grammar", false, false, true),
            Config::NoDecision => ("no decision", true, false, true),
            Config::NoParallel => ("no parallel", true, true, false),
        };
        EvalOptions {
            label: label.into(),
            grammar,
            call_threshold: decision.then_some(threshold),
            max_calls: if parallel { MAX_PARALLEL_CALLS } else { 1 },
        }
    }
}

pub fn run(node: &Node, cmd: EvalCommand) -> Result<()> {
    let EvalCommand::Tools(args) = cmd;
    let set = match &args.file {
        Some(f) => EvalSet::load(f)?,
        None => EvalSet::parse(BUILTIN_SET, Path::new("eval/tools.yaml"))?,
    };
    if !(0.0..=1.0).contains(&args.call_threshold) {
        bail!(
            "--call-threshold {} is not a probability: give a number from 0 to 1",
            args.call_threshold
        );
    }
    let engine = Arc::new(node.load_engine(args.model.as_deref(), |cfg| cfg.slots = 1)?);
    let configs = if args.configs.is_empty() {
        vec![
            Config::All,
            Config::NoGrammar,
            Config::NoDecision,
            Config::NoParallel,
        ]
    } else {
        args.configs.clone()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut reports = Vec::new();
    for config in configs {
        let options = config.options(args.call_threshold);
        let report = rt.block_on(eval_tools(&engine, &set, &options, |i, r| {
            if !args.json {
                eprint!(
                    "\r{}: task {i}/{} ({:?})        ",
                    options.label,
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
        .find(|r| r.options.grammar && r.valid_calls < r.attempted_calls)
    {
        bail!(
            "{} of {} constrained calls did not parse or broke their schema: the tool grammar is broken",
            r.attempted_calls - r.valid_calls,
            r.attempted_calls
        );
    }
    Ok(())
}

fn score(r: &EvalReport, c: Category) -> String {
    match r.category(c) {
        Some(s) if s.tasks > 0 => format!(
            "{:.2} ({}/{})",
            s.right as f64 / s.tasks as f64,
            s.right,
            s.tasks
        ),
        _ => "-".into(),
    }
}

fn print_table(model: &str, reports: &[EvalReport]) {
    println!(
        "function-calling evaluation, model {model}, {} tasks",
        reports.first().map_or(0, |r| r.tasks)
    );
    println!(
        "{:<12} {:>13} {:>13} {:>13} {:>13} {:>10} {:>9} {:>8}",
        "features", "simple", "multiple", "parallel", "irrelevance", "malformed", "invalid", "time"
    );
    for r in reports {
        println!(
            "{:<12} {:>13} {:>13} {:>13} {:>13} {:>10} {:>9} {:>7.1}s",
            r.options.label,
            score(r, Category::Simple),
            score(r, Category::Multiple),
            score(r, Category::Parallel),
            score(r, Category::Irrelevance),
            r.count(Verdict::Malformed),
            r.count(Verdict::InvalidArguments) + r.count(Verdict::UnknownTool),
            r.seconds
        );
    }
    println!("right: the expected calls with exactly the expected arguments (parallel: all of them, any order); irrelevance: a text answer, no call");
}
