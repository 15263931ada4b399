//! The WebAssembly component host: tools and agent logic as components against the WIT contract
//! in `wit/` (`edgewise:agent@0.1.0`), run by wasmtime under grants and limits.
//!
//! Invariants:
//! - Default deny: a component sees no file, socket, host interface, bucket or topic it was not
//!   granted (`edgewise_core::Grants`).
//! - Every call runs in a fresh instance (from an `InstancePre`, pooled memory), so a trap ends
//!   that call only and no state leaks between calls; state lives in the node's KV.
//! - A call never spends longer than its time limit in the component's own code (epoch
//!   interruption; time in the node's services does not count) nor grows memory beyond its
//!   limit; each node service call is bounded by the host-call limit. All end the call with an
//!   error the caller sees.
//! - A component whose `edgewise:agent` interfaces are another version than this host's is
//!   refused at load, naming the interface and both versions.

mod component;
mod error;
mod host;
mod limits;
pub mod store;

pub use component::{ComponentKind, LoadedComponent, Sandbox, SandboxConfig, ToolInfo};
pub use error::SandboxError;
pub use host::{ChatMessage, HostServices, InferenceOptions, NoServices};

/// The WIT package version this host implements.
pub const WIT_VERSION: &str = "0.1.0";
/// The package every host interface and export belongs to.
pub const WIT_PACKAGE: &str = "edgewise:agent";

/// Where `make components` put the guest component `name` (`calc`, `sensor_handler`, …):
/// `$EDGEWISE_COMPONENTS`, else this source tree's `components/target/wasm32-wasip2/release`.
/// For tests and `edgewise bench wasm`; the error says how to build it.
pub fn built_guest(name: &str) -> Result<std::path::PathBuf, String> {
    let dir = std::env::var_os("EDGEWISE_COMPONENTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../components/target/wasm32-wasip2/release")
        });
    let path = dir.join(format!("{name}.wasm"));
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: run `make components`",
            path.display()
        ))
    }
}

/// Host bindings generated from `wit/`.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "edgewise:agent/agent",
        with: {
            "wasi:keyvalue/store.bucket": crate::host::Bucket,
        },
        imports: { default: trappable },
    });

    pub mod tool {
        wasmtime::component::bindgen!({
            path: "../../wit",
            world: "edgewise:agent/tool",
            with: {
                "wasi:keyvalue/store": super::wasi::keyvalue::store,
                "wasi:logging/logging": super::wasi::logging::logging,
                "edgewise:agent/inference": super::edgewise::agent::inference,
                "edgewise:agent/tools": super::edgewise::agent::tools,
                "edgewise:agent/types": super::edgewise::agent::types,
            },
            imports: { default: trappable },
        });
    }
}
