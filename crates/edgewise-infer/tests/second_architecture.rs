//! A second architecture (Gemma 3) loads and generates, and sentence embeddings behave.

mod common;

use edgewise_infer::{Embedder, Engine};

#[test]
fn gemma3_base_model_completes_text() {
    let mut cfg = common::config("gemma-3-270m");
    cfg.kv_cells = 2048;
    cfg.slots = 2;
    let e = Engine::load(cfg).unwrap();
    assert_eq!(e.info().architecture, "gemma3");
    let c = e
        .generate_blocking(common::greedy("1, 2, 3, 4, 5, 6,".into(), 6), |_| {})
        .unwrap();
    assert!(c.text.trim_start().starts_with("7, 8"), "{:?}", c.text);
}

#[test]
fn embeddings_are_unit_384_vectors_that_rank_by_meaning() {
    let e = Embedder::load(&common::model_path("all-minilm-l6-v2")).unwrap();
    assert_eq!(e.dimension(), 384);
    let texts: Vec<String> = [
        "The pump pressure is too high",
        "Pressure in the pump exceeds the limit",
        "I like strawberry cake",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let v = e.embed(&texts).unwrap();
    assert!(v.iter().all(|x| x.len() == 384));
    for x in &v {
        let norm: f32 = x.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    assert!(
        dot(&v[0], &v[1]) > dot(&v[0], &v[2]) + 0.2,
        "similar sentences must be closer"
    );
    // Batching does not change results.
    let single = e.embed(&texts[..1]).unwrap();
    assert!(dot(&single[0], &v[0]) > 0.9999);
}
