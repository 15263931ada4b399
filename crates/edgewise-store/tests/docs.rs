//! CRDT documents: two nodes edit offline, exchange automerge sync messages, and agree.

use std::sync::Arc;

use edgewise_store::{Documents, Kv};
use serde_json::json;

fn node(dir: &tempfile::TempDir) -> Documents {
    Documents::open(Arc::new(Kv::open(&dir.path().join("state.redb")).unwrap())).unwrap()
}

/// Runs the sync protocol between `a` and `b` until neither has anything to send; returns the
/// number of messages.
fn sync(a: &Documents, b: &Documents, doc: &str) -> usize {
    let mut sent = 0;
    for _ in 0..20 {
        let mut quiet = true;
        if let Some(m) = a.sync_message(doc, "b").unwrap() {
            b.receive_sync_message(doc, "a", &m).unwrap();
            sent += 1;
            quiet = false;
        }
        if let Some(m) = b.sync_message(doc, "a").unwrap() {
            a.receive_sync_message(doc, "b", &m).unwrap();
            sent += 1;
            quiet = false;
        }
        if quiet {
            return sent;
        }
    }
    panic!("sync did not settle in 20 rounds");
}

#[test]
fn concurrent_conflicting_edits_converge_the_same_way_on_both_nodes() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (node(&da), node(&db));
    a.set("plant", "zone4/valve", &json!("open")).unwrap();
    a.set("plant", "zone4/pressure_bar", &json!(5.2)).unwrap();
    a.set("plant", "pump2/running", &json!(true)).unwrap();
    assert!(sync(&a, &b, "plant") > 0);
    assert_eq!(b.entries("plant").unwrap(), a.entries("plant").unwrap());

    // Offline: both write the same key, one deletes a key the other writes, each adds its own.
    a.set("plant", "zone4/valve", &json!("closed")).unwrap();
    b.set("plant", "zone4/valve", &json!("half-open")).unwrap();
    a.remove("plant", "pump2/running").unwrap();
    b.set("plant", "pump2/running", &json!(false)).unwrap();
    a.set("plant", "zone1/valve", &json!("open")).unwrap();
    b.set("plant", "zone7/alarm", &json!(3)).unwrap();

    sync(&a, &b, "plant");
    let (ea, eb) = (a.entries("plant").unwrap(), b.entries("plant").unwrap());
    assert_eq!(ea, eb, "both nodes show the same state");
    let valve = &ea["zone4/valve"];
    let mut both = vec![valve.value.clone()];
    both.extend(valve.conflicts.clone());
    both.sort_by_key(|v| v.to_string());
    assert_eq!(both, [json!("closed"), json!("half-open")], "{valve:?}");
    assert_eq!(
        ea["pump2/running"].value,
        json!(false),
        "the concurrent write beats the delete"
    );
    assert_eq!(ea["zone1/valve"].value, json!("open"));
    assert_eq!(ea["zone7/alarm"].value, json!(3));

    // A later write resolves the conflict everywhere.
    b.set("plant", "zone4/valve", &json!("closed")).unwrap();
    sync(&a, &b, "plant");
    let v = a.get("plant", "zone4/valve").unwrap().unwrap();
    assert_eq!((v.value, v.conflicts.len()), (json!("closed"), 0));
    // Nothing more to say.
    assert_eq!(sync(&a, &b, "plant"), 0);
}

#[test]
fn documents_and_sync_state_survive_a_restart_and_bad_input_is_refused() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    {
        let (a, b) = (node(&da), node(&db));
        a.set("plant", "zone4/valve", &json!("open")).unwrap();
        sync(&a, &b, "plant");
    }
    let (a, b) = (node(&da), node(&db));
    assert_eq!(a.list().unwrap(), ["plant"]);
    a.set("plant", "zone4/valve", &json!("closed")).unwrap();
    // The sessions resume from the persisted shared heads.
    assert!(sync(&a, &b, "plant") > 0);
    assert_eq!(
        b.get("plant", "zone4/valve").unwrap().unwrap().value,
        json!("closed")
    );

    let err = a
        .set("plant", "k", &json!({"nested": 1}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("store structures as separate keys"), "{err}");
    let err = a
        .receive_sync_message("plant", "b", b"not automerge")
        .unwrap_err()
        .to_string();
    assert!(err.contains("sync message for 'plant' from b"), "{err}");
    assert_eq!(
        a.get("plant", "zone4/valve").unwrap().unwrap().value,
        json!("closed")
    );
}
