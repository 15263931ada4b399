//! Per-call resource limits: a `ResourceLimiter` that refuses growth past the memory limit and
//! remembers that it did, so the resulting trap is reported as what it is.

use wasmtime::ResourceLimiter;

pub(crate) struct CallLimits {
    pub memory_bytes: usize,
    pub max_instances: usize,
    pub max_tables: usize,
    pub max_table_elements: usize,
    /// Set when a memory growth was refused.
    pub memory_refused: bool,
}

#[derive(Debug)]
pub(crate) struct MemoryLimitHit;

impl std::fmt::Display for MemoryLimitHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("memory limit reached")
    }
}

impl std::error::Error for MemoryLimitHit {}

impl ResourceLimiter for CallLimits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_refused = true;
            // An error (not `false`) traps at once: a guest allocator would otherwise only see a
            // failed grow and abort with a less useful message.
            return Err(wasmtime::Error::new(MemoryLimitHit));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.max_table_elements)
    }

    fn instances(&self) -> usize {
        self.max_instances
    }

    fn tables(&self) -> usize {
        self.max_tables
    }

    fn memories(&self) -> usize {
        self.max_instances
    }
}
