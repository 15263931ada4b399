//! Run records: what each run was asked, its steps and how it ended, kept in the node's KV so a
//! crash leaves a run marked `interrupted` rather than lost.

use std::sync::Arc;

use edgewise_store::{sha256_hex, AuditRecord, Kv, StoreError};
use serde::{Deserialize, Serialize};

use crate::runner::{RunOutcome, RunStatus, StepRecord};

const RUNS: &str = "edgewise.runs";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub agent: String,
    pub run: String,
    pub task: String,
    pub status: RunStatus,
    pub model: String,
    pub started: String,
    #[serde(default)]
    pub ended: Option<String>,
    #[serde(default)]
    pub answer: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    /// Times older turns were summarised to keep the conversation within the context window.
    #[serde(default)]
    pub summaries: u32,
    /// Answered from the result cache without running.
    #[serde(default)]
    pub cached: bool,
    #[serde(default)]
    pub steps: Vec<StepRecord>,
    /// The neighbour that placed this run here, if one did. Its task and answer belong to that
    /// node: they never enter the history of this node's agent of the same id, nor the other way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_by: Option<String>,
}

impl RunRecord {
    /// What the run's caller receives once it has ended.
    pub fn outcome(&self) -> RunOutcome {
        RunOutcome {
            agent: self.agent.clone(),
            run: self.run.clone(),
            status: self.status,
            answer: self.answer.clone(),
            error: self.error.clone(),
            cached: self.cached,
            summaries: self.summaries,
            steps: self.steps.clone(),
        }
    }

    /// The `run_end` audit record of the ended run; whoever appends it names the node.
    pub fn end_audit(&self) -> AuditRecord {
        AuditRecord {
            kind: "run_end".into(),
            agent: self.agent.clone(),
            run: self.run.clone(),
            decision: serde_json::to_value(self.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            result: self.answer.clone(),
            result_sha256: self.answer.as_ref().map(|a| sha256_hex(a.as_bytes())),
            detail: self.error.clone(),
            ..Default::default()
        }
    }
}

#[derive(Clone)]
pub struct RunStore {
    kv: Arc<Kv>,
}

impl RunStore {
    pub fn new(kv: Arc<Kv>) -> Self {
        Self { kv }
    }

    fn key(agent: &str, run: &str) -> String {
        format!("{agent}/{run}")
    }

    pub fn save(&self, r: &RunRecord) -> Result<(), StoreError> {
        let json = serde_json::to_value(r).unwrap_or_default();
        self.kv.set_json(RUNS, &Self::key(&r.agent, &r.run), &json)
    }

    pub fn get(&self, agent: &str, run: &str) -> Result<Option<RunRecord>, StoreError> {
        Ok(self
            .kv
            .get_json(RUNS, &Self::key(agent, run))?
            .and_then(|v| serde_json::from_value(v).ok()))
    }

    /// Whether a record of `run` of `agent` exists, readable or not.
    pub fn contains(&self, agent: &str, run: &str) -> Result<bool, StoreError> {
        Ok(self.kv.get(RUNS, &Self::key(agent, run))?.is_some())
    }

    /// Runs of `agent` (all agents when `None`), oldest first.
    pub fn list(&self, agent: Option<&str>) -> Result<Vec<RunRecord>, StoreError> {
        let mut out: Vec<RunRecord> = self
            .kv
            .list(RUNS)?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice::<RunRecord>(&v).ok())
            .filter(|r| agent.is_none_or(|a| r.agent == a))
            .collect();
        out.sort_by(|a, b| a.started.cmp(&b.started));
        Ok(out)
    }

    pub fn delete(&self, agent: &str, run: &str) -> Result<bool, StoreError> {
        self.kv.remove(RUNS, &Self::key(agent, run))
    }

    /// At node start: runs still `running` belong to a process that died. Marks and returns them.
    pub fn mark_interrupted(&self) -> Result<Vec<RunRecord>, StoreError> {
        let mut marked = Vec::new();
        for mut r in self.list(None)? {
            if r.status == RunStatus::Running {
                r.status = RunStatus::Interrupted;
                r.ended = Some(chrono::Utc::now().to_rfc3339());
                r.error = Some("the node stopped while this run was in progress".into());
                self.save(&r)?;
                marked.push(r);
            }
        }
        Ok(marked)
    }
}
