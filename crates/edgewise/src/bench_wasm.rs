//! `edgewise bench wasm`: the latency of one component call as the node makes it (a fresh
//! instance from the pre-linked `calc` component, then `calculate`), against spawning a native
//! process that does the same arithmetic (`expr`), which is what a process-per-tool design pays.
//! Also the load time with and without the compiled-artifact cache.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use edgewise_core::Grants;
use edgewise_sandbox::{NoServices, Sandbox, SandboxConfig};
use serde::Serialize;

use crate::node::Node;

#[derive(Args)]
pub struct WasmBenchArgs {
    /// The calc component [default: the installed `calc`, else the one `make components` built].
    #[arg(long)]
    component: Option<PathBuf>,
    /// Calls to time, after 100 warm-up calls.
    #[arg(long, default_value_t = 10_000)]
    calls: u32,
    /// Native processes to spawn for the comparison (0 skips it).
    #[arg(long, default_value_t = 500)]
    spawns: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

const EXPRESSION: &str = "1234*5678";
const ANSWER: &str = "7006652";

#[derive(Serialize)]
pub(crate) struct Latency {
    pub calls: u32,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

impl Latency {
    pub(crate) fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let at = |q: f64| {
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples[i].as_secs_f64() * 1e6
        };
        let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / samples.len() as f64;
        Self {
            calls: samples.len() as u32,
            p50_us: at(0.50),
            p99_us: at(0.99),
            mean_us: mean * 1e6,
        }
    }
}

#[derive(Serialize)]
struct Report {
    component: String,
    compile_ms: f64,
    cached_load_ms: f64,
    wasm: Latency,
    native_process: Option<Latency>,
    /// Native p50 / wasm p50.
    speedup_p50: Option<f64>,
}

fn find_calc(node: &Node, given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let installed = node.data.components().join("calc").join("component.wasm");
    if installed.exists() {
        return Ok(installed);
    }
    edgewise_sandbox::built_guest("calc").map_err(|built| {
        anyhow::anyhow!("no calc component found: pass --component PATH, install one with `edgewise component add calc.wasm`, or build it ({built})")
    })
}

pub fn run(node: &Node, a: WasmBenchArgs) -> Result<()> {
    if a.calls == 0 {
        bail!("--calls must be at least 1");
    }
    let path = find_calc(node, a.component)?;
    // A cache of its own, so the first load compiles and the second is a cache hit.
    let cache = tempfile::tempdir()?;
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        max_instances: 4,
        ..SandboxConfig::default()
    })?;
    let local_only = &edgewise_agent::egress::is_local;
    let started = Instant::now();
    sandbox.load("calc", &path, Grants::default(), None, local_only)?;
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let calc = sandbox.load("calc", &path, Grants::default(), None, local_only)?;
    let cached_load_ms = started.elapsed().as_secs_f64() * 1e3;
    if !calc.tools.iter().any(|t| t.name == "calculate") {
        bail!(
            "{} has no `calculate` tool: not a calc component",
            path.display()
        );
    }

    let args = format!(r#"{{"expression": "{EXPRESSION}"}}"#);
    let services = Arc::new(NoServices);
    let mut samples = Vec::with_capacity(a.calls as usize);
    for i in 0..a.calls + 100 {
        let started = Instant::now();
        let out = calc.invoke("calculate", &args, services.clone())?;
        let took = started.elapsed();
        if out != ANSWER {
            bail!("calc answered {out} for {EXPRESSION}, expected {ANSWER}");
        }
        if i >= 100 {
            samples.push(took);
        }
    }
    let wasm = Latency::of(samples);

    let native_process = if a.spawns == 0 {
        None
    } else {
        let (x, y) = EXPRESSION.split_once('*').unwrap_or(("1234", "5678"));
        let mut samples = Vec::with_capacity(a.spawns as usize);
        for _ in 0..a.spawns {
            let started = Instant::now();
            let out = Command::new("expr").args([x, "*", y]).output().context(
                "cannot run `expr` for the native comparison (pass --spawns 0 to skip it)",
            )?;
            samples.push(started.elapsed());
            if String::from_utf8_lossy(&out.stdout).trim() != ANSWER {
                bail!("`expr {x} * {y}` did not answer {ANSWER}");
            }
        }
        Some(Latency::of(samples))
    };
    let speedup_p50 = native_process.as_ref().map(|n| n.p50_us / wasm.p50_us);
    let report = Report {
        component: path.display().to_string(),
        compile_ms,
        cached_load_ms,
        wasm,
        native_process,
        speedup_p50,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("component: {}", report.component);
    println!(
        "load: {:.1} ms compiling, {:.1} ms from the artifact cache",
        report.compile_ms, report.cached_load_ms
    );
    println!(
        "{:<34} {:>8} {:>10} {:>10} {:>10}",
        "per call", "calls", "p50 µs", "p99 µs", "mean µs"
    );
    let row = |name: &str, l: &Latency| {
        println!(
            "{name:<34} {:>8} {:>10.1} {:>10.1} {:>10.1}",
            l.calls, l.p50_us, l.p99_us, l.mean_us
        )
    };
    row("wasm: instantiate + calculate", &report.wasm);
    if let Some(n) = &report.native_process {
        row("native: spawn `expr` + wait", n);
    }
    if let Some(s) = report.speedup_p50 {
        println!("wasm call vs native process (p50): {s:.1}x faster");
    }
    Ok(())
}
