//! Which model a run uses: the run's task type, else the spec's `model_config.path`, else the
//! node's default — and a missing model file falls back to the default only with a warning.

use std::path::Path;

use edgewise_core::{AgentSpec, NodeConfig};

#[derive(Debug, Clone, PartialEq)]
pub struct ModelChoice {
    /// A catalog name or a GGUF path.
    pub model: String,
    /// Set when the spec's model could not be used; names both models.
    pub warning: Option<String>,
}

/// `is_model_name` tells whether a string names a model of the node (a catalog entry, or a
/// model installed under that name).
pub fn choose_model(
    spec: &AgentSpec,
    config: &NodeConfig,
    task_type: Option<&str>,
    is_model_name: impl Fn(&str) -> bool,
) -> Result<ModelChoice, String> {
    let plain = |model: &str| ModelChoice {
        model: model.to_owned(),
        warning: None,
    };
    if let Some(t) = task_type {
        return match spec.task_types.get(t).or_else(|| config.task_models.get(t)) {
            Some(m) => Ok(plain(m)),
            None => Err(format!(
                "task type '{t}' has no model: add it under `task_types` in the agent spec or `task_models` in the node config"
            )),
        };
    }
    let Some(wanted) = spec.model_config.path.as_deref() else {
        return Ok(plain(&config.default_model));
    };
    if is_model_name(wanted) || Path::new(wanted).is_file() {
        return Ok(plain(wanted));
    }
    Ok(ModelChoice {
        model: config.default_model.clone(),
        warning: Some(format!(
            "model '{wanted}' (model_config.path of agent '{}') is not a file or catalog entry on this node; falling back to the node's default model '{}'",
            spec.agent_id, config.default_model
        )),
    })
}

/// The model of a spec a neighbour placed here: its `model_config.path` when that names one of
/// this node's models (`is_model_name`), the node's default when it names none. Nothing is
/// looked up on this node's file system for a neighbour's spec, and nothing falls back: a name
/// this node does not know is refused.
pub fn placed_model(
    spec: &AgentSpec,
    config: &NodeConfig,
    is_model_name: impl Fn(&str) -> bool,
) -> Result<ModelChoice, String> {
    let model = match spec.model_config.path.as_deref() {
        None => config.default_model.clone(),
        Some(name) if is_model_name(name) => name.to_owned(),
        Some(name) => {
            return Err(format!(
                "model '{name}' (model_config.path of agent '{}') is not a model this node has; a placed run names its model by the catalog name this node serves it under",
                spec.agent_id
            ))
        }
    };
    Ok(ModelChoice {
        model,
        warning: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> AgentSpec {
        AgentSpec::parse(&format!("agent_id: a\n{extra}"), Path::new("a.yaml")).unwrap()
    }

    #[test]
    fn missing_file_falls_back_with_a_warning_naming_both() {
        let c = NodeConfig::default();
        let s = spec("model_config:\n  path: /models/phi-4-mini-q4.gguf\n");
        let got = choose_model(&s, &c, None, |_| false).unwrap();
        assert_eq!(got.model, c.default_model);
        let w = got.warning.unwrap();
        assert!(
            w.contains("/models/phi-4-mini-q4.gguf") && w.contains(&c.default_model),
            "{w}"
        );
    }

    /// The attack: a neighbour's spec names a file of this node as its model, to learn whether
    /// it exists (or have it loaded).
    #[test]
    fn a_placed_spec_never_has_this_node_look_at_a_file() {
        let c = NodeConfig::default();
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().display().to_string();
        let s = spec(&format!("model_config:\n  path: \"{path}\"\n"));
        // A local spec may name a file that exists; a placed one may not, exists or not.
        assert_eq!(choose_model(&s, &c, None, |_| false).unwrap().model, path);
        let err = placed_model(&s, &c, |_| false).unwrap_err();
        assert!(err.contains("catalog name"), "{err}");
        let named = spec("model_config:\n  path: gemma-3-270m\n");
        let got = placed_model(&named, &c, |n| n == "gemma-3-270m").unwrap();
        assert_eq!(got.model, "gemma-3-270m");
        assert_eq!(
            placed_model(&spec(""), &c, |_| false).unwrap().model,
            c.default_model
        );
    }

    #[test]
    fn catalog_names_and_task_types_are_used_as_given() {
        let mut c = NodeConfig::default();
        c.task_models.insert("logic".into(), "gemma-3-270m".into());
        let s = spec("model_config:\n  path: gemma-3-270m\ntask_types:\n  vision: some-vlm\n");
        assert_eq!(
            choose_model(&s, &c, None, |n| n == "gemma-3-270m")
                .unwrap()
                .model,
            "gemma-3-270m"
        );
        assert_eq!(
            choose_model(&s, &c, Some("logic"), |_| true).unwrap().model,
            "gemma-3-270m"
        );
        assert_eq!(
            choose_model(&s, &c, Some("vision"), |_| true)
                .unwrap()
                .model,
            "some-vlm"
        );
        assert!(choose_model(&s, &c, Some("audio"), |_| true)
            .unwrap_err()
            .contains("task type 'audio'"));
    }
}
