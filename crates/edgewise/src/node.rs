//! What every command needs: the data dir, the node config, the model store, and a loaded engine.

use std::path::PathBuf;

use anyhow::{Context, Result};
use edgewise_core::{DataDir, NodeConfig};
use edgewise_infer::{Engine, EngineConfig};
use edgewise_models::{ModelError, ModelStore};

pub struct Node {
    pub data: DataDir,
    pub config: NodeConfig,
    pub store: ModelStore,
}

impl Node {
    pub fn open(home: Option<PathBuf>, config: Option<PathBuf>) -> Result<Self> {
        let data = home.map(DataDir::new).unwrap_or_else(DataDir::from_env);
        let config_path = config.unwrap_or_else(|| data.config_file());
        let config = NodeConfig::load(&config_path)?;
        let store = ModelStore::open(data.clone())?;
        Ok(Self {
            data,
            config,
            store,
        })
    }

    /// Pulls the model first if it is a catalog entry that is not installed yet.
    pub fn ensure_model(&self, name: &str) -> Result<()> {
        match self.store.resolve(name) {
            Err(ModelError::NotInstalled { .. }) => {
                let entry = self
                    .store
                    .catalog()
                    .get(name)
                    .context("catalog entry vanished")?;
                eprintln!("pulling {name} (first use)");
                edgewise_models::pull(&self.store, entry, &crate::progress::Bar::new())?;
                Ok(())
            }
            Err(e) => Err(e.into()),
            Ok(_) => Ok(()),
        }
    }

    /// Resolves, checks (hash, header, signature) and loads a chat model.
    pub fn load_engine(
        &self,
        model: Option<&str>,
        tune: impl FnOnce(&mut EngineConfig),
    ) -> Result<Engine> {
        let name = model.unwrap_or(&self.config.default_model);
        self.ensure_model(name)?;
        let resolved = self.store.open_for_load(name, &self.config.trusted_keys)?;
        let c = &self.config;
        let mut cfg = EngineConfig::new(&resolved.path, &resolved.name);
        cfg.threads = c.effective_threads();
        cfg.kv_cells = c.kv_cells;
        cfg.context_per_request = c.context_per_request;
        cfg.slots = c.parallel;
        cfg.queue_depth = c.queue_depth;
        cfg.batch_tokens = c.batch_tokens;
        cfg.gpu_layers = c.gpu_layers;
        tune(&mut cfg);
        Ok(Engine::load(cfg)?)
    }
}
