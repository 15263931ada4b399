//! The Qwen2.5 chat template rendered by our minijinja environment must equal Python jinja2's
//! rendering in Hugging Face's environment (fixtures from tests/fixtures/gen_template_fixtures.py).

use edgewise_infer::ChatTemplate;
use serde_json::Value;

#[test]
fn qwen_template_renders_exactly_like_reference_jinja2() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let source = std::fs::read_to_string(format!("{dir}/qwen2.5-chat-template.jinja")).unwrap();
    let cases: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}/qwen2.5-template-cases.json")).unwrap(),
    )
    .unwrap();
    let template = ChatTemplate::new(&source, "", "<|im_end|>").unwrap();
    assert!(template.supports_tools());
    assert_eq!(cases.len(), 8);
    for case in cases {
        let messages = case["messages"].as_array().unwrap();
        let tools = case["tools"].as_array().map(|t| t.as_slice());
        let got = template
            .render(
                messages,
                tools,
                case["add_generation_prompt"].as_bool().unwrap(),
            )
            .unwrap();
        assert_eq!(
            got,
            case["expected"].as_str().unwrap(),
            "case '{}' (generation prompt {})",
            case["name"],
            case["add_generation_prompt"]
        );
    }
}
