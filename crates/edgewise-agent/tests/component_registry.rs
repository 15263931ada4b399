//! The component registry with real guest components (`make components`): a version a call holds
//! keeps working after it was replaced twice and its files are gone, while new lookups get the
//! newest version.

use std::sync::Arc;

use edgewise_agent::components::{ComponentRegistry, ComponentSource};
use edgewise_core::{ComponentManifest, DataDir};
use edgewise_sandbox::NoServices;

fn guest(name: &str) -> std::path::PathBuf {
    let path = edgewise_sandbox::built_guest(name);
    assert!(
        path.exists(),
        "{} is missing: run `make components`",
        path.display()
    );
    path
}

#[test]
fn a_held_version_finishes_after_replacements_and_new_lookups_get_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = ComponentRegistry::new(&DataDir::new(tmp.path()), Vec::new());
    let m = ComponentManifest::default();
    let source = ComponentSource::installed("tools");

    let (_, first) = registry.install("tools", &guest("calc"), &m, None).unwrap();
    let in_flight = registry.current(&source).unwrap();
    assert!(Arc::ptr_eq(&first, &in_flight));

    // Replaced twice: the first version's directory is pruned by the second replacement.
    registry
        .install("tools", &guest("text_tools"), &m, None)
        .unwrap();
    let (_, third) = registry
        .install("tools", &guest("misbehave"), &m, None)
        .unwrap();
    let versions = tmp.path().join("components/.versions/tools");
    assert_eq!(std::fs::read_dir(&versions).unwrap().count(), 2);

    let out = in_flight
        .invoke(
            "calculate",
            r#"{"expression": "6*7"}"#,
            Arc::new(NoServices),
        )
        .unwrap();
    assert_eq!(out, "42");
    let now = registry.current(&source).unwrap();
    assert_eq!(now.sha256, third.sha256);
    assert!(
        now.tools.iter().any(|t| t.name == "echo"),
        "{:?}",
        now.tools
    );
    // Unchanged files: the same loaded version, not a reload.
    assert!(Arc::ptr_eq(&now, &registry.current(&source).unwrap()));

    registry.remove("tools").unwrap();
    let err = registry.current(&source).unwrap_err().to_string();
    assert!(err.contains("no component named 'tools'"), "{err}");
}
