//! `edgewise bench mesh`: three real nodes on loopback (their own data dirs and certificates
//! from a throwaway CA, this node's models). The front node serves another model, so requests
//! for the benchmarked one run on a neighbour. Measures what offload adds to a request over
//! running it where it arrives, and how long after a kill -9 of the node running a request the
//! caller gets its answer from the other one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::{json, Value};

use crate::node::Node;

#[derive(Args)]
pub struct MeshBenchArgs {
    /// The model requests ask for; the two back nodes serve it.
    #[arg(short, long, default_value = "qwen2.5-coder-0.5b-instruct")]
    model: String,
    /// The front node's own model (it must differ from --model).
    #[arg(long, default_value = "gemma-3-270m")]
    front_model: String,
    /// Requests each way for the overhead figure.
    #[arg(long, default_value_t = 30)]
    requests: u32,
    /// Inference threads per node.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    model: String,
    requests: u32,
    /// One-token completions run where they arrive (sent to a back node).
    local_p50_ms: f64,
    local_p99_ms: f64,
    /// The same sent to the front node, which offloads them.
    offloaded_p50_ms: f64,
    offloaded_p99_ms: f64,
    added_p50_ms: f64,
    /// A longer request run on the second back node alone.
    failover_request_ms: f64,
    /// From the kill -9 of the node running it to the answer, through the front node.
    answer_after_kill_ms: f64,
    /// `answer_after_kill_ms` minus the time the survivor needs for the request anyway.
    failover_ms: f64,
    failover_served_by: String,
}

/// Kills the node on drop.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct BenchNode {
    name: String,
    home: PathBuf,
    http: u16,
    proc: Option<Proc>,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn run(node: &Node, a: MeshBenchArgs) -> Result<()> {
    if a.model == a.front_model {
        bail!("--front-model must differ from --model: the front node must lack the model to offload it");
    }
    let models = node.data.root().join("models");
    for m in [&a.model, &a.front_model] {
        if !models.join(m).exists() {
            bail!(
                "model '{m}' is not installed in {}: run `edgewise pull {m}`",
                models.display()
            );
        }
    }
    let root = tempfile::tempdir()?;
    let ca = root.path().join("ca");
    edgewise_mesh::init_ca(&ca, "bench")?;
    let names = ["front", "back-1", "back-2"];
    let mesh_ports = [free_port()?, free_port()?, free_port()?];
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let home = root.path().join(name);
        std::fs::create_dir_all(&home)?;
        std::os::unix::fs::symlink(&models, home.join("models"))?;
        edgewise_mesh::issue(&ca, name, &home.join("mesh"))?;
        let connect: Vec<String> = (0..3)
            .filter(|&j| j != i)
            .map(|j| format!("tls/127.0.0.1:{}", mesh_ports[j]))
            .collect();
        let model = if i == 0 { &a.front_model } else { &a.model };
        let config = format!(
            "name: {name}\ndefault_model: {model}\nthreads: {}\nkv_cells: 4096\nmqtt_listen: \"\"\nmesh:\n  trust_domain: bench\n  listen: [tls/127.0.0.1:{}]\n  connect: [{}]\n",
            a.threads,
            mesh_ports[i],
            connect.join(", ")
        );
        std::fs::write(home.join("config.yaml"), config)?;
        nodes.push(BenchNode {
            name: (*name).to_owned(),
            home,
            http: free_port()?,
            proc: None,
        });
    }
    for n in &mut nodes {
        n.proc = Some(start(n)?);
    }
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    for n in &nodes {
        wait_healthy(&client, n)?;
    }
    wait_linked(&client, &nodes[0], &names[1..])?;
    eprintln!("3 nodes up and linked; measuring");

    // Overhead: the same one-token completion, sent to back-1 (runs there) and to the front
    // (offloaded to back-1, the first of equal neighbours by name), alternating.
    let one_token = json!({"model": a.model, "prompt": "The capital of France is", "max_tokens": 1, "temperature": 0});
    for _ in 0..3 {
        request(&client, &nodes[1], &one_token)?;
        request(&client, &nodes[0], &one_token)?;
    }
    let (mut local, mut offloaded) = (Vec::new(), Vec::new());
    for _ in 0..a.requests {
        local.push(request(&client, &nodes[1], &one_token)?.0);
        let (ms, by) = request(&client, &nodes[0], &one_token)?;
        if by != "back-1" {
            bail!("the front node offloaded to '{by}', expected back-1");
        }
        offloaded.push(ms);
    }

    // Failover: a longer request through the front lands on back-1, which is killed while it
    // generates; the front gets no answer from it and runs the request on back-2.
    let longer = json!({"model": a.model, "prompt": "Write a long story about a lighthouse keeper.", "max_tokens": 48, "temperature": 0});
    request(&client, &nodes[2], &longer)?;
    let alone = request(&client, &nodes[2], &longer)?.0;
    let front = nodes[0].http;
    let body = longer.clone();
    let c = client.clone();
    let pending = std::thread::spawn(move || -> Result<(Instant, String)> {
        let resp = post(&c, front, &body)?;
        Ok((Instant::now(), resp.1))
    });
    std::thread::sleep(Duration::from_millis((alone / 3.0) as u64));
    let killed = Instant::now();
    drop(nodes[1].proc.take());
    let (answered, by) = pending
        .join()
        .map_err(|_| anyhow::anyhow!("request thread panicked"))??;
    let after_kill = answered.duration_since(killed).as_secs_f64() * 1e3;

    let report = Report {
        model: a.model.clone(),
        requests: a.requests,
        local_p50_ms: percentile(&mut local, 0.5),
        local_p99_ms: percentile(&mut local, 0.99),
        offloaded_p50_ms: percentile(&mut offloaded, 0.5),
        offloaded_p99_ms: percentile(&mut offloaded, 0.99),
        added_p50_ms: percentile(&mut offloaded, 0.5) - percentile(&mut local, 0.5),
        failover_request_ms: alone,
        answer_after_kill_ms: after_kill,
        failover_ms: after_kill - alone,
        failover_served_by: by,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "model {}, {} requests each way, 3 nodes on loopback (mTLS)",
        report.model, report.requests
    );
    println!(
        "{:<34} {:>9} {:>9}",
        "one-token completion", "p50 ms", "p99 ms"
    );
    println!(
        "{:<34} {:>9.2} {:>9.2}",
        "run where it arrives", report.local_p50_ms, report.local_p99_ms
    );
    println!(
        "{:<34} {:>9.2} {:>9.2}",
        "offloaded to a neighbour", report.offloaded_p50_ms, report.offloaded_p99_ms
    );
    println!(
        "offload adds {:.2} ms at p50 (goal ≤ 5 ms)",
        report.added_p50_ms
    );
    println!(
        "failover: answer {:.0} ms after kill -9 of the node running it, served by {}; that request takes {:.0} ms there alone → {:.0} ms lost to the failover (goal ≤ 1000 ms)",
        report.answer_after_kill_ms, report.failover_served_by, report.failover_request_ms, report.failover_ms
    );
    Ok(())
}

fn start(n: &BenchNode) -> Result<Proc> {
    let exe = std::env::current_exe().context("locate the edgewise binary")?;
    let log = std::fs::File::create(n.home.join("serve.log"))?;
    let child = Command::new(exe)
        .args(["serve", "--no-embeddings", "--no-agents", "--listen"])
        .arg(format!("127.0.0.1:{}", n.http))
        .env("EDGEWISE_HOME", &n.home)
        .env_remove("EDGEWISE_CONFIG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("start node {}", n.name))?;
    Ok(Proc(child))
}

fn log_tail(home: &Path) -> String {
    let text = std::fs::read_to_string(home.join("serve.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

fn wait_healthy(client: &reqwest::blocking::Client, n: &BenchNode) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let url = format!("http://127.0.0.1:{}/health", n.http);
        if client
            .get(&url)
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("node {} did not come up:\n{}", n.name, log_tail(&n.home));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_linked(
    client: &reqwest::blocking::Client,
    front: &BenchNode,
    backs: &[&str],
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let url = format!("http://127.0.0.1:{}/v1/mesh", front.http);
        // An admin route: the node made its token when it started.
        let token =
            edgewise_core::admin_token::read(&front.home.join("admin.token"))?.unwrap_or_default();
        let mesh: Value = client.get(&url).bearer_auth(token).send()?.json()?;
        let ready =
            backs.iter().all(|b| {
                mesh["peers"].as_array().into_iter().flatten().any(|p| {
                    p["node"] == *b && p["alive"] == true && p["advert"]["models"].is_array()
                })
            });
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the front node does not see both back nodes: {mesh}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Milliseconds and the node that served it.
fn request(
    client: &reqwest::blocking::Client,
    n: &BenchNode,
    body: &Value,
) -> Result<(f64, String)> {
    let start = Instant::now();
    let (_, by) = post(client, n.http, body)?;
    let by = if by.is_empty() { n.name.clone() } else { by };
    Ok((start.elapsed().as_secs_f64() * 1e3, by))
}

/// The answer and the `x-edgewise-node` that produced it (empty when the node answered itself).
fn post(client: &reqwest::blocking::Client, port: u16, body: &Value) -> Result<(Value, String)> {
    let resp = client
        .post(format!("http://127.0.0.1:{port}/v1/completions"))
        .json(body)
        .send()?;
    let status = resp.status();
    let by = resp
        .headers()
        .get("x-edgewise-node")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let answer: Value = resp.json()?;
    if !status.is_success() {
        bail!("{status}: {answer}");
    }
    Ok((answer, by))
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}
