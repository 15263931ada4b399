//! Shared by the model tests: where the pulled models are, and one engine per test binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use edgewise_core::DataDir;
use edgewise_infer::{Engine, EngineConfig, GenerateRequest};
use serde_json::json;

pub const CHAT_MODEL: &str = "qwen2.5-coder-0.5b-instruct";

/// The installed model's path; the suite fails (not skips) when `make models` has not run.
pub fn model_path(name: &str) -> PathBuf {
    let store = edgewise_models::ModelStore::open(DataDir::from_env()).expect("open model store");
    match store.resolve(name) {
        Ok(m) => m.path,
        Err(e) => panic!(
            "model tests need the pulled models ({e}); run `make models` (EDGEWISE_HOME={})",
            DataDir::from_env().root().display()
        ),
    }
}

pub fn config(name: &str) -> EngineConfig {
    let mut cfg = EngineConfig::new(model_path(name), name);
    cfg.kv_cells = 8192;
    cfg.context_per_request = 2048;
    cfg.slots = 8;
    cfg
}

pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::load(config(CHAT_MODEL)).expect("load the default model"))
}

pub fn chat_prompt(engine: &Engine, system: Option<&str>, user: &str) -> String {
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(json!({"role": "system", "content": s}));
    }
    messages.push(json!({"role": "user", "content": user}));
    engine
        .template()
        .render(&messages, None, true)
        .expect("render")
}

pub fn greedy(prompt: String, max_tokens: u32) -> GenerateRequest {
    let mut r = GenerateRequest::new(prompt);
    r.sampling.temperature = 0.0;
    r.max_tokens = max_tokens;
    r
}
