//! The engine against the real default model: answers, batching, prefix cache, KV snapshots,
//! constraints with fast-forward, stop sequences, cancellation, backpressure and context limits.

mod common;

use common::{chat_prompt, config, engine, greedy, CHAT_MODEL};
use edgewise_infer::{
    tool_call_grammar, Constraint, Engine, Event, FinishReason, InferError, ToolChoice, ToolSpec,
};
use serde_json::{json, Value};

#[test]
fn answers_simple_arithmetic_with_just_the_number() {
    let e = engine();
    let c = e
        .generate_blocking(
            greedy(
                chat_prompt(e, None, "What is 17 + 25? Reply with just the number."),
                16,
            ),
            |_| {},
        )
        .unwrap();
    assert_eq!(c.text.trim(), "42");
    assert_eq!(c.finish_reason, FinishReason::Stop);
}

#[test]
fn concurrent_requests_are_batched_and_all_answered_correctly() {
    let e = engine();
    // Questions whose answer has a clear logit margin: near-ties (e.g. "100 + 1": "0" 19.99 vs "1" 19.93)
    // legitimately flip with batch shape, which is float reordering, not a batching bug.
    let questions: Vec<(u32, u32)> = vec![(2, 3), (10, 20), (7, 8), (17, 25), (1, 1), (6, 6)];
    let rxs: Vec<_> = questions
        .iter()
        .map(|(a, b)| {
            e.submit(greedy(
                chat_prompt(
                    e,
                    None,
                    &format!("What is {a} + {b}? Reply with just the number."),
                ),
                16,
            ))
            .unwrap()
        })
        .collect();
    for ((a, b), mut rx) in questions.into_iter().zip(rxs) {
        let mut streamed = String::new();
        let done = loop {
            match rx.blocking_recv().expect("engine alive") {
                Event::Delta(d) => streamed.push_str(&d),
                Event::Done(c) => break c,
                Event::Error(err) => panic!("{err}"),
            }
        };
        assert_eq!(
            streamed, done.text,
            "streamed deltas add up to the final text"
        );
        assert_eq!(done.text.trim(), (a + b).to_string(), "{a} + {b}");
    }
}

#[test]
fn shared_prefix_is_prefilled_once() {
    let e = engine();
    let system = "You are the monitoring assistant of plant 7. ".repeat(30);
    let first = e
        .generate_blocking(greedy(chat_prompt(e, Some(&system), "Say OK."), 4), |_| {})
        .unwrap();
    let second = e
        .generate_blocking(greedy(chat_prompt(e, Some(&system), "Say YES."), 4), |_| {})
        .unwrap();
    let system_tokens = e.count_tokens(&system).unwrap() as u32;
    assert!(first.usage.prompt_tokens > system_tokens);
    assert!(
        second.usage.cached_tokens >= system_tokens,
        "second request reused {} cached tokens, system prompt is {system_tokens}",
        second.usage.cached_tokens
    );
}

#[test]
fn restored_kv_snapshot_continues_exactly_like_the_live_cache() {
    let e = Engine::load(config(CHAT_MODEL)).unwrap();
    let prompt = chat_prompt(
        &e,
        Some("You answer in one short sentence."),
        "Why is the sky blue?",
    );
    let fresh = e
        .generate_blocking(greedy(prompt.clone(), 24), |_| {})
        .unwrap();
    let live = e
        .generate_blocking(greedy(prompt.clone(), 24), |_| {})
        .unwrap();
    assert!(live.usage.cached_tokens > 0);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session.kv");
    let saved = e.save_session(&prompt, &file).unwrap();
    assert!(saved >= live.usage.prompt_tokens as usize);
    e.clear_cache().unwrap();
    let restored_tokens = e.restore_session(&file).unwrap();
    assert_eq!(restored_tokens, saved);
    let restored = e.generate_blocking(greedy(prompt, 24), |_| {}).unwrap();
    assert_eq!(
        restored.usage.cached_tokens, live.usage.cached_tokens,
        "restore puts the prefix back in the cache"
    );
    assert_eq!(
        restored.text, live.text,
        "restored KV must give the same continuation as the live cache"
    );
    assert!(!fresh.text.is_empty());
    // A corrupt snapshot is refused with an error, not a crash.
    std::fs::write(&file, b"not a snapshot").unwrap();
    assert!(matches!(
        e.restore_session(&file),
        Err(InferError::Session { .. })
    ));
}

#[test]
fn json_schema_output_is_valid_and_uses_fast_forward() {
    let e = engine();
    let schema = json!({
        "type": "object",
        "properties": {"city": {"type": "string"}, "population_millions": {"type": "number"}, "is_capital": {"type": "boolean"}},
        "required": ["city", "population_millions", "is_capital"],
        "additionalProperties": false
    });
    let mut req = greedy(chat_prompt(e, None, "Describe Paris as JSON."), 80);
    req.constraint = Some(Constraint::JsonSchema(schema));
    let c = e.generate_blocking(req, |_| {}).unwrap();
    let v: Value =
        serde_json::from_str(&c.text).unwrap_or_else(|err| panic!("not JSON ({err}): {}", c.text));
    assert!(
        v["city"].is_string()
            && v["population_millions"].is_number()
            && v["is_capital"].is_boolean(),
        "{v}"
    );
    assert_eq!(v.as_object().unwrap().len(), 3);
    assert!(
        c.usage.forced_tokens > 0,
        "the grammar forces the key names; they should be fast-forwarded"
    );
}

#[test]
fn regex_and_lark_constraints_hold() {
    let e = engine();
    let mut req = greedy(chat_prompt(e, None, "Is water wet? Answer yes or no."), 8);
    req.constraint = Some(Constraint::Regex("(yes|no)".into()));
    let c = e.generate_blocking(req, |_| {}).unwrap();
    assert!(c.text == "yes" || c.text == "no", "{:?}", c.text);

    let mut req = greedy(chat_prompt(e, None, "Give a zone id."), 16);
    req.constraint = Some(Constraint::Lark(
        "start: \"zone-\" DIGIT DIGIT\nDIGIT: /[0-9]/".into(),
    ));
    let c = e.generate_blocking(req, |_| {}).unwrap();
    assert!(
        c.text.len() == 7
            && c.text.starts_with("zone-")
            && c.text[5..].chars().all(|ch| ch.is_ascii_digit()),
        "{:?}",
        c.text
    );

    let mut req = greedy("x".into(), 4);
    req.constraint = Some(Constraint::Lark("start: broken(".into()));
    assert!(matches!(
        e.generate_blocking(req, |_| {}),
        Err(InferError::Grammar(_))
    ));
}

#[test]
fn required_tool_call_names_a_declared_tool_with_schema_valid_arguments() {
    let e = engine();
    let tools = vec![ToolSpec {
        name: "read_sensor".into(),
        description: "Read a pressure sensor".into(),
        parameters: json!({"type": "object", "properties": {"zone": {"type": "integer"}}, "required": ["zone"], "additionalProperties": false}),
    }];
    let openai_tools = vec![
        json!({"type": "function", "function": {"name": "read_sensor", "description": "Read a pressure sensor", "parameters": tools[0].parameters}}),
    ];
    let prompt = e
        .template()
        .render(
            &[json!({"role": "user", "content": "Check zone 4."})],
            Some(&openai_tools),
            true,
        )
        .unwrap();
    let mut req = greedy(prompt, 64);
    req.constraint = Some(tool_call_grammar(&tools, &ToolChoice::Required).unwrap());
    let c = e.generate_blocking(req, |_| {}).unwrap();
    let (_, calls) = edgewise_infer::parse_tool_calls(&c.text);
    assert_eq!(calls.len(), 1, "{}", c.text);
    assert_eq!(calls[0].name, "read_sensor");
    assert!(
        calls[0].arguments["zone"].is_i64(),
        "{}",
        calls[0].arguments
    );
}

#[test]
fn stop_sequence_ends_generation_before_it() {
    let e = engine();
    let mut req = greedy(
        chat_prompt(e, None, "Count from 1 to 10, separated by commas."),
        64,
    );
    req.stop = vec!["5".into()];
    let c = e.generate_blocking(req, |_| {}).unwrap();
    assert_eq!(c.finish_reason, FinishReason::Stop);
    assert!(
        c.text.contains('4') && !c.text.contains('5'),
        "{:?}",
        c.text
    );
}

#[test]
fn max_tokens_ends_with_length() {
    let e = engine();
    let c = e
        .generate_blocking(
            greedy(chat_prompt(e, None, "Write a long story about a robot."), 5),
            |_| {},
        )
        .unwrap();
    assert_eq!(c.finish_reason, FinishReason::Length);
    assert_eq!(c.usage.completion_tokens, 5);
}

#[test]
fn dropping_the_receiver_cancels_the_request() {
    let e = Engine::load(config(CHAT_MODEL)).unwrap();
    // The schema forces at least 1000 numbers, so the request cannot end early on its own.
    let mut long = greedy(chat_prompt(&e, None, "List numbers."), 2000);
    long.constraint = Some(Constraint::JsonSchema(
        json!({"type": "array", "items": {"type": "integer"}, "minItems": 1000}),
    ));
    let mut rx = e.submit(long).unwrap();
    assert!(matches!(rx.blocking_recv(), Some(Event::Delta(_))));
    drop(rx);
    // The engine keeps serving, and the cancelled sequence (~40 s of work) is gone once this short
    // request is done.
    let c = e
        .generate_blocking(greedy(chat_prompt(&e, None, "Say hi."), 8), |_| {})
        .unwrap();
    assert!(!c.text.is_empty());
    let stats = e.stats();
    assert_eq!(stats.active, 0, "cancelled request still active");
}

#[test]
fn full_queue_is_refused_immediately() {
    let mut cfg = config(CHAT_MODEL);
    cfg.slots = 1;
    cfg.queue_depth = 1;
    cfg.kv_cells = 2048;
    let e = Engine::load(cfg).unwrap();
    let prompt = chat_prompt(&e, None, "Write a long story.");
    let _a = e.submit(greedy(prompt.clone(), 200)).unwrap();
    let _b = e.submit(greedy(prompt.clone(), 200)).unwrap();
    match e.submit(greedy(prompt, 200)) {
        Err(InferError::QueueFull { limit }) => assert_eq!(limit, 2),
        other => panic!("expected QueueFull, got {other:?}"),
    }
}

#[test]
fn a_request_context_limit_tighter_than_the_node_is_enforced() {
    let e = engine();
    let prompt = "pressure reading ".repeat(100);
    let mut req = greedy(prompt.clone(), 4);
    req.context_limit = Some(64);
    match e.generate_blocking(req, |_| {}) {
        Err(InferError::ContextOverflow {
            prompt_tokens,
            limit,
        }) => assert!(
            limit == 64 && prompt_tokens >= 64,
            "{prompt_tokens} vs {limit}"
        ),
        other => panic!("expected ContextOverflow at 64, got {other:?}"),
    }
    // The same prompt fits the node's own limit, and a loose request limit changes nothing.
    let mut req = greedy(prompt, 4);
    req.context_limit = Some(1_000_000);
    assert!(e.generate_blocking(req, |_| {}).is_ok());
}

#[test]
fn a_prompt_no_tokenization_could_fit_is_refused_before_tokenizing() {
    let e = engine();
    let longest = e.info().longest_token_bytes;
    assert!(
        (8..4096).contains(&longest),
        "longest token {longest} bytes"
    );
    let bytes = e.context_per_request() as usize * longest + 1;
    match e.submit(greedy("x".repeat(bytes), 4)) {
        Err(InferError::PromptTooLong { bytes: b, limit }) => {
            assert_eq!((b, limit), (bytes, e.context_per_request() as usize))
        }
        other => panic!(
            "expected PromptTooLong, got {:?}",
            other.map(|_| "a receiver")
        ),
    }
}

#[test]
fn prompt_over_the_context_limit_is_an_error_event() {
    let e = engine();
    let long = "pressure reading ".repeat(3000);
    match e.generate_blocking(greedy(long, 4), |_| {}) {
        Err(InferError::ContextOverflow {
            prompt_tokens,
            limit,
        }) => assert!(prompt_tokens >= limit, "{prompt_tokens} < {limit}"),
        other => panic!("expected ContextOverflow, got {other:?}"),
    }
    assert!(matches!(
        e.generate_blocking(greedy(String::new(), 4), |_| {}),
        Err(InferError::EmptyPrompt)
    ));
}
