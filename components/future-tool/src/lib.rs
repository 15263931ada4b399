//! Test fixture: the same shape of tool against `edgewise:agent@0.2.0`.

wit_bindgen::generate!({ world: "tool", path: "wit" });

use exports::edgewise::agent::tool_api::{Guest, ToolError, ToolSpec};

struct Future;

impl Guest for Future {
    fn describe() -> Vec<ToolSpec> {
        vec![ToolSpec { name: "future".into(), description: "From the future.".into(), parameters: "{}".into(), cost: 1 }]
    }
    fn invoke(_name: String, _args: String) -> Result<String, ToolError> {
        Ok("from the future".into())
    }
}

export!(Future);
