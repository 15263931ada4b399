//! `builtin:search_knowledge`: nearest chunks of one collection, each with the id answers cite.

use std::sync::Arc;

use async_trait::async_trait;
use edgewise_infer::{LazyEmbedder, ToolSpec};
use serde_json::Value;

use super::{Tool, ToolError};
use crate::knowledge::KnowledgeSlot;

const DEFAULT_K: usize = 2;
const MAX_K: usize = 10;

pub(super) struct SearchKnowledgeTool {
    pub spec: ToolSpec,
    pub collection: String,
    pub knowledge: Arc<KnowledgeSlot>,
    pub embedder: Option<Arc<LazyEmbedder>>,
}

#[async_trait]
impl Tool for SearchKnowledgeTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, args: Value) -> Result<String, ToolError> {
        let query = args
            .get("query")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .trim()
            .to_owned();
        if query.is_empty() {
            return Err(ToolError::Refused("`query` is empty".into()));
        }
        let k = args
            .get("k")
            .and_then(Value::as_u64)
            .map(|k| (k as usize).clamp(1, MAX_K))
            .unwrap_or(DEFAULT_K);
        let hits = crate::knowledge::search(
            self.knowledge.clone(),
            self.embedder.clone(),
            &self.collection,
            &query,
            k,
            Default::default(),
        )
        .await
        .map_err(ToolError::Failed)?;
        if hits.is_empty() {
            return Ok(format!("No passages in '{}'.", self.collection));
        }
        let passages: Vec<Value> = hits
            .into_iter()
            .map(|h| serde_json::json!({"id": h.id, "source": h.source, "text": h.text}))
            .collect();
        let out =
            serde_json::to_string(&serde_json::json!({ "passages": passages })).unwrap_or_default();
        Ok(out)
    }
}
