//! `edgewise run` and `edgewise chat`.

use std::io::{BufRead, Write};
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use edgewise_core::SamplingParams;
use edgewise_infer::{Engine, GenerateRequest};
use serde_json::{json, Value};

use crate::node::Node;

#[derive(Args)]
pub struct SamplingArgs {
    /// Chat model name or GGUF path [default: the config's default_model].
    #[arg(short, long)]
    model: Option<String>,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 40)]
    top_k: i32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long)]
    seed: Option<u32>,
    #[arg(long, default_value_t = 512)]
    max_tokens: u32,
    /// Stop sequence (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// System prompt.
    #[arg(long)]
    system: Option<String>,
}

impl SamplingArgs {
    fn params(&self) -> SamplingParams {
        let mut p = SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            ..SamplingParams::default()
        };
        if let Some(s) = self.seed {
            p.seed = s;
        }
        p
    }
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print token counts and tokens/s to stderr.
    #[arg(long)]
    verbose: bool,
    /// The prompt.
    prompt: String,
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    sampling: SamplingArgs,
}

fn load(node: &Node, s: &SamplingArgs, slots: u32) -> Result<Engine> {
    node.load_engine(s.model.as_deref(), |c| {
        // One user: a couple of sequences keep history cached without reserving idle KV.
        c.slots = slots;
    })
}

fn reply(engine: &Engine, s: &SamplingArgs, messages: &[Value], verbose: bool) -> Result<String> {
    let prompt = engine.template().render(messages, None, true)?;
    let mut req = GenerateRequest::new(prompt);
    req.sampling = s.params();
    req.max_tokens = s.max_tokens;
    req.stop = s.stop.clone();
    let start = Instant::now();
    let mut out = std::io::stdout().lock();
    let c = engine.generate_blocking(req, |d| {
        let _ = out.write_all(d.as_bytes());
        let _ = out.flush();
    })?;
    let _ = writeln!(out);
    let _ = out.flush();
    if verbose {
        let u = &c.usage;
        let decode_s = (u.generation_ms - u.time_to_first_token_ms).max(1e-3) / 1000.0;
        eprintln!(
            "prompt {} tokens ({} cached), first token {:.0} ms, {} tokens at {:.1} tokens/s, total {:.2} s, finish {:?}",
            u.prompt_tokens,
            u.cached_tokens,
            u.time_to_first_token_ms,
            u.completion_tokens,
            (u.completion_tokens.saturating_sub(1)) as f64 / decode_s,
            start.elapsed().as_secs_f64(),
            c.finish_reason
        );
    }
    Ok(c.text)
}

pub fn run(node: &Node, args: RunArgs) -> Result<()> {
    if args.prompt.trim().is_empty() {
        bail!("the prompt is empty; pass the question as an argument, e.g. edgewise run \"What is 2 + 2?\"");
    }
    let engine = load(node, &args.sampling, 1)?;
    let mut messages = Vec::new();
    if let Some(s) = &args.sampling.system {
        messages.push(json!({"role": "system", "content": s}));
    }
    messages.push(json!({"role": "user", "content": args.prompt}));
    reply(&engine, &args.sampling, &messages, args.verbose)?;
    Ok(())
}

pub fn chat(node: &Node, args: ChatArgs) -> Result<()> {
    let engine = load(node, &args.sampling, 2)?;
    let mut messages = Vec::new();
    if let Some(s) = &args.sampling.system {
        messages.push(json!({"role": "system", "content": s}));
    }
    eprintln!(
        "chatting with {} — /clear forgets the conversation, /exit or Ctrl-D quits",
        engine.info().name
    );
    let stdin = std::io::stdin();
    loop {
        eprint!(">>> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/bye" => return Ok(()),
            "/clear" => {
                messages.retain(|m: &Value| m["role"] == "system");
                engine.clear_cache()?;
                continue;
            }
            _ => {}
        }
        if let Some(cmd) = line.strip_prefix('/') {
            let (verb, name) = cmd.split_once(' ').unwrap_or((cmd, ""));
            let result = match verb {
                "save" => save_session(node, &engine, &messages, name.trim()),
                "load" => load_session(node, &engine, name.trim()).map(|m| {
                    let n = m.len();
                    messages = m;
                    format!("restored {n} messages")
                }),
                _ => Err(anyhow::anyhow!(
                    "unknown command /{verb}: use /save NAME, /load NAME, /clear or /exit"
                )),
            };
            match result {
                Ok(msg) => eprintln!("{msg}"),
                Err(e) => eprintln!("error: {e:#}"),
            }
            continue;
        }
        messages.push(json!({"role": "user", "content": line}));
        match reply(&engine, &args.sampling, &messages, false) {
            Ok(text) => messages.push(json!({"role": "assistant", "content": text})),
            Err(e) => {
                messages.pop();
                eprintln!("error: {e:#}");
            }
        }
    }
}

fn session_paths(node: &Node, name: &str) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        || name.starts_with('.')
    {
        bail!("session name '{name}': use letters, digits, '.', '-' and '_'");
    }
    let dir = node.data.sessions();
    Ok((
        dir.join(format!("{name}.kv")),
        dir.join(format!("{name}.json")),
    ))
}

/// Saves the conversation and its KV state, so `/load` resumes without prefilling the history again.
fn save_session(node: &Node, engine: &Engine, messages: &[Value], name: &str) -> Result<String> {
    let (kv, history) = session_paths(node, name)?;
    if messages.is_empty() {
        bail!("nothing to save yet");
    }
    let prompt = engine.template().render(messages, None, false)?;
    let tokens = engine.save_session(&prompt, &kv)?;
    std::fs::write(&history, serde_json::to_string_pretty(messages)?)?;
    Ok(format!(
        "saved {} messages and {tokens} tokens of KV to {}",
        messages.len(),
        kv.display()
    ))
}

fn load_session(node: &Node, engine: &Engine, name: &str) -> Result<Vec<Value>> {
    let (kv, history) = session_paths(node, name)?;
    let text = std::fs::read_to_string(&history)
        .map_err(|e| anyhow::anyhow!("no saved session '{name}' ({}: {e})", history.display()))?;
    let messages: Vec<Value> = serde_json::from_str(&text)?;
    engine.restore_session(&kv)?;
    Ok(messages)
}
