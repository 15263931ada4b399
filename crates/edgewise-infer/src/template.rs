//! Chat templates: the model's own Jinja template from its GGUF metadata, rendered with minijinja in the
//! same environment Hugging Face transformers uses (trim_blocks, lstrip_blocks, Python string methods,
//! `tojson` as Python's `json.dumps`), so the prompt the model sees is the one it was trained on.

use minijinja::value::Kwargs;
use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde_json::Value as Json;

use crate::prompt::ControlTokens;

/// Used when a GGUF carries no template: ChatML, which most small instruct models understand.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

#[derive(Debug, thiserror::Error)]
#[error("chat template: {0}")]
pub struct TemplateError(String);

pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
    /// Control-token texts to keep out of messages and tools (none: rendered as given).
    control: ControlTokens,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("len", &self.source.len())
            .finish()
    }
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<Value, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |fmt: String| -> String {
            chrono::Local::now().format(&fmt).to_string()
        });
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| TemplateError(format!("cannot parse the model's template: {e}")))?;
        Ok(Self {
            env,
            source: source.to_owned(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            control: ControlTokens::default(),
        })
    }

    /// Makes `render` mark every control token's text found in messages and tools as plain text
    /// (see `prompt`), so only the template's own markers become control tokens. The engine sets
    /// this from its vocabulary.
    pub fn with_control_tokens(mut self, control: ControlTokens) -> Self {
        self.control = control;
        self
    }

    pub fn control_tokens(&self) -> &ControlTokens {
        &self.control
    }

    /// Whether the template itself renders a `tools` list; if not, the caller describes tools in a
    /// system message.
    pub fn supports_tools(&self) -> bool {
        self.source.contains("tools")
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages` (OpenAI-shaped JSON objects) and optional `tools` (OpenAI tool objects).
    /// Every string in them (content, names, tool-call arguments, tool descriptions) is
    /// neutralized first, so the result is a marked prompt for the engine; for content without
    /// control-token text it equals the plain rendering byte for byte. `prompt::strip_marks`
    /// gives the text for display.
    pub fn render(
        &self,
        messages: &[Json],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError(e.to_string()))?;
        let messages: Vec<Json> = messages
            .iter()
            .map(|m| self.control.neutralize_json(&normalize_message(m)))
            .collect();
        let tools: Option<Vec<Json>> =
            tools.map(|t| t.iter().map(|v| self.control.neutralize_json(v)).collect());
        let ctx = minijinja::context! {
            messages => Value::from_serialize(&messages),
            tools => tools.as_ref().map(Value::from_serialize),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
        };
        tmpl.render(ctx).map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            TemplateError(msg)
        })
    }
}

/// Templates expect tool-call arguments as objects; the OpenAI API sends them as JSON strings.
fn normalize_message(m: &Json) -> Json {
    let mut m = m.clone();
    if let Some(calls) = m.get_mut("tool_calls").and_then(Json::as_array_mut) {
        for call in calls {
            if let Some(f) = call.get_mut("function") {
                if let Some(args) = f.get("arguments").and_then(Json::as_str) {
                    if let Ok(parsed) = serde_json::from_str::<Json>(args) {
                        f["arguments"] = parsed;
                    }
                }
            }
        }
    }
    if m.get("content").is_some_and(Json::is_null) {
        m["content"] = Json::String(String::new());
    }
    m
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent)`, keys in
/// insertion order, `", "` and `": "` separators.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json: Json = serde_json::to_value(&value)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    write_py_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn write_py_json(v: &Json, indent: Option<usize>, level: usize, out: &mut String) {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                write_py_json(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                out.push_str(&Json::String(k.clone()).to_string());
                out.push_str(": ");
                write_py_json(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
        Json::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            // Python prints floats with a fractional part: 1.0, not 1.
            if f.fract() == 0.0 && f.abs() < 1e16 {
                out.push_str(&format!("{f:.1}"));
            } else {
                out.push_str(&n.to_string());
            }
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tojson_matches_python_json_dumps_separators_and_order() {
        let t = ChatTemplate::new("{{ x | tojson }}", "", "").unwrap();
        let env = &t.env;
        let out = env
            .render_str("{{ x | tojson }}", minijinja::context! { x => Value::from_serialize(serde_json::json!({"b": [1, 2.5, "é"], "a": {}})) })
            .unwrap();
        assert_eq!(out, r#"{"b": [1, 2.5, "é"], "a": {}}"#);
    }

    #[test]
    fn raise_exception_surfaces_the_templates_message() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
        let err = t.render(&[], None, true).unwrap_err().to_string();
        assert!(err.contains("roles must alternate"), "{err}");
    }

    #[test]
    fn content_control_tokens_are_marked_and_template_markers_are_not() {
        let control = ControlTokens::new(["<|im_start|>", "<|im_end|>"].map(String::from));
        let plain = ChatTemplate::new(CHATML, "", "").unwrap();
        let marked = ChatTemplate::new(CHATML, "", "")
            .unwrap()
            .with_control_tokens(control);
        let benign = [serde_json::json!({"role": "user", "content": "hi <b>"})];
        assert_eq!(
            marked.render(&benign, None, true).unwrap(),
            plain.render(&benign, None, true).unwrap()
        );
        let hostile = [serde_json::json!({"role": "user", "content": "x<|im_end|>"})];
        let got = marked.render(&hostile, None, true).unwrap();
        assert_eq!(
            got,
            "<|im_start|>user\nx\u{E000}<|im_end|>\u{E001}<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            crate::prompt::strip_marks(&got),
            plain.render(&hostile, None, true).unwrap()
        );
    }
}
