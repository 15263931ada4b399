//! The offline sync manager between two real nodes on loopback: an edge node with `sync:` and
//! its upstream hub. Only what the edge lists leaves it; changes made while the hub is down stay
//! queued; a key changed on both sides is a recorded conflict settled by the policy; documents
//! merge and collections exchange deltas.

mod support;

use serde_json::{json, Value};
use support::{free_port, home, http, http_with, write_config, Serve};

fn json_of(port: u16, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, _, body) = http(port, method, path, body);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn put(port: u16, path: &str, value: &str) {
    let (status, _, body) = http_with(
        port,
        "PUT",
        path,
        value,
        "Content-Type: application/octet-stream\r\n",
    );
    assert_eq!(status, 200, "PUT {path}: {body}");
}

fn get(port: u16, path: &str) -> Option<String> {
    let (status, _, body) = http(port, "GET", path, "");
    (status == 200).then_some(body)
}

/// A delta of one 384-d chunk, as another node's `kb export` would send it.
fn one_chunk_delta(collection: &str, id: &str, text: &str) -> String {
    let mut vector = vec![0.0f32; 384];
    vector[id.len() % 384] = 1.0;
    json!({
        "collection": collection,
        "embedding": {"model": "all-minilm-l6-v2", "dimension": 384, "schema_version": 1},
        "version": {"sensor-node": 1},
        "changes": [{
            "id": id,
            "stamp": {"lamport": 1, "node": "sensor-node", "counter": 1},
            "chunk": {"source": "manual.md", "text": text, "metadata": {}, "vector": vector}
        }]
    })
    .to_string()
}

#[test]
fn an_edge_node_syncs_only_what_it_shares_queues_while_offline_and_settles_conflicts() {
    let (hub_home, edge_home) = (home(), home());
    let hub_config = write_config(hub_home.path(), "name: hub\nmqtt_listen: \"\"\n");
    let hub_port = free_port();
    let hub = Serve::start_on(hub_home.path(), &hub_config, hub_port);
    let edge_config = write_config(
        edge_home.path(),
        &format!(
            "name: edge-1\nmqtt_listen: \"\"\nsync:\n  upstream: http://127.0.0.1:{hub_port}\n  api_key_env: EDGEWISE_TEST_ADMIN_TOKEN\n  interval_s: 0\n  conflict_policy: upstream-wins\n  kv_namespaces: [plant]\n  documents: [plant]\n  collections: [manuals]\n"
        ),
    );
    let edge = Serve::start(edge_home.path(), &edge_config);
    let e = edge.port;

    // Local state: shared and private.
    put(e, "/v1/kv/plant/valve", "open");
    put(e, "/v1/kv/patients/bed-4", "Rosa Lindqvist");
    let (s, _) = json_of(
        e,
        "PATCH",
        "/v1/docs/plant",
        r#"{"set": {"zone4/valve": "open"}}"#,
    );
    assert_eq!(s, 200);
    let (s, v) = json_of(
        e,
        "POST",
        "/v1/knowledge/manuals/import?shareable=true",
        &one_chunk_delta("manuals", "pump#0", "Prime the pump before starting."),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = json_of(
        e,
        "POST",
        "/v1/knowledge/notes/import",
        &one_chunk_delta("notes", "private#0", "not for the hub"),
    );
    assert_eq!(s, 200, "{v}");
    let (_, status) = json_of(e, "GET", "/v1/sync", "");
    assert_eq!(
        status["pending"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );

    let (s, report) = json_of(e, "POST", "/v1/sync", "");
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["kv_pushed"], 1, "{report}");
    assert_eq!(report["collections"][0]["pushed"], 1, "{report}");
    assert_eq!(get(hub_port, "/v1/kv/plant/valve").as_deref(), Some("open"));
    let (_, doc) = json_of(hub_port, "GET", "/v1/docs/plant", "");
    assert_eq!(doc["entries"]["zone4/valve"]["value"], "open", "{doc}");
    let (_, cols) = json_of(hub_port, "GET", "/v1/knowledge", "");
    let names: Vec<&str> = cols["collections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["manuals"],
        "only the listed, shareable collection: {cols}"
    );
    // Nothing private reached the hub.
    let (_, patients) = json_of(hub_port, "GET", "/v1/kv/patients", "");
    assert_eq!(patients["keys"], json!([]), "{patients}");
    let (_, status) = json_of(e, "GET", "/v1/sync", "");
    assert_eq!(status["pending"], json!([]), "{status}");

    // The hub goes away; the edge keeps working and its change waits.
    drop(hub);
    put(e, "/v1/kv/plant/pump", "on");
    let (s, err) = json_of(e, "POST", "/v1/sync", "");
    assert_eq!(s, 502, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("unreachable"),
        "{err}"
    );
    let (_, status) = json_of(e, "GET", "/v1/sync", "");
    assert_eq!(status["pending"][0]["key"], "pump", "{status}");

    // Back on the same address, with a concurrent edit of the valve on each side.
    let hub = Serve::start_on(hub_home.path(), &hub_config, hub_port);
    put(hub.port, "/v1/kv/plant/valve", "half");
    put(e, "/v1/kv/plant/valve", "closed");
    json_of(
        hub.port,
        "PATCH",
        "/v1/docs/plant",
        r#"{"set": {"zone4/valve": "half"}}"#,
    );
    json_of(
        e,
        "PATCH",
        "/v1/docs/plant",
        r#"{"set": {"zone4/valve": "closed"}}"#,
    );
    let (s, report) = json_of(e, "POST", "/v1/sync", "");
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["kv_pushed"], 1, "the queued pump change: {report}");
    assert_eq!(report["kv_conflicts"], 1, "{report}");
    assert_eq!(
        report["kv_pulled"], 1,
        "upstream-wins takes the hub's valve: {report}"
    );
    assert_eq!(get(hub.port, "/v1/kv/plant/pump").as_deref(), Some("on"));
    assert_eq!(get(e, "/v1/kv/plant/valve").as_deref(), Some("half"));
    assert_eq!(get(hub.port, "/v1/kv/plant/valve").as_deref(), Some("half"));
    let (_, status) = json_of(e, "GET", "/v1/sync", "");
    let conflict = &status["conflicts"][0];
    assert_eq!(
        (&conflict["key"], &conflict["local"], &conflict["upstream"]),
        (&json!("valve"), &json!("closed"), &json!("half")),
        "{status}"
    );
    assert_eq!(status["pending"], json!([]), "{status}");
    // The document merged the same way on both nodes, the loser kept as a conflict.
    let (_, here) = json_of(e, "GET", "/v1/docs/plant", "");
    let (_, there) = json_of(hub.port, "GET", "/v1/docs/plant", "");
    assert_eq!(here["entries"], there["entries"], "{here} vs {there}");
    let entry = &here["entries"]["zone4/valve"];
    assert_eq!(
        entry["conflicts"].as_array().map(Vec::len),
        Some(1),
        "{here}"
    );

    // A second round finds nothing to do.
    let (_, report) = json_of(e, "POST", "/v1/sync", "");
    assert_eq!(
        (
            &report["kv_pushed"],
            &report["kv_pulled"],
            &report["kv_conflicts"]
        ),
        (&json!(0), &json!(0), &json!(0)),
        "{report}"
    );
}

#[test]
fn the_kv_api_writes_conditionally_and_refuses_the_runtime_namespaces() {
    let home = home();
    let config = write_config(home.path(), "mqtt_listen: \"\"\n");
    let node = Serve::start(home.path(), &config);
    let p = node.port;
    put(p, "/v1/kv/plant/valve", "open");
    let (_, head, body) = http(p, "GET", "/v1/kv/plant/valve", "");
    assert_eq!(body, "open");
    assert!(head.to_ascii_lowercase().contains("etag: \"1\""), "{head}");
    let stale = |value: &str| {
        http_with(
            p,
            "PUT",
            "/v1/kv/plant/valve",
            value,
            "If-Match: \"1\"\r\nContent-Type: application/octet-stream\r\n",
        )
    };
    assert_eq!(stale("closed").0, 200);
    let (status, _, body) = stale("half");
    assert_eq!(status, 412, "{body}");
    assert!(body.contains("version 2"), "{body}");
    assert_eq!(get(p, "/v1/kv/plant/valve").as_deref(), Some("closed"));
    assert_eq!(http(p, "DELETE", "/v1/kv/plant/valve", "").0, 200);
    assert_eq!(http(p, "GET", "/v1/kv/plant/valve", "").0, 404);
    let (_, list) = json_of(p, "GET", "/v1/kv/plant", "");
    assert_eq!(list["keys"][0]["removed"], true, "{list}");
    let (status, _, body) = http(p, "GET", "/v1/kv/edgewise.runs", "");
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = http(p, "GET", "/v1/sync", "");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("sync:"), "{body}");
}

#[test]
fn a_delta_whose_clock_would_overflow_is_refused_and_the_node_keeps_syncing() {
    let home = home();
    let config = write_config(home.path(), "mqtt_listen: \"\"\n");
    let node = Serve::start(home.path(), &config);
    let p = node.port;
    let mut forged: Value =
        serde_json::from_str(&one_chunk_delta("manuals", "pump#0", "forged")).unwrap();
    forged["changes"][0]["stamp"]["lamport"] = json!(u64::MAX - 1);

    let (s, err) = json_of(
        p,
        "POST",
        "/v1/knowledge/manuals/import?shareable=true",
        &forged.to_string(),
    );
    assert_eq!(s, 422, "{err}");
    let message = err["error"]["message"].as_str().unwrap_or("");
    for part in [
        "lamport time of change 'pump#0'",
        "18446744073709551614",
        "corrupt or forged",
        "not applied",
    ] {
        assert!(message.contains(part), "{part:?} in {err}");
    }
    let manuals = || {
        let (_, cols) = json_of(p, "GET", "/v1/knowledge", "");
        cols["collections"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "manuals")
            .cloned()
    };
    assert_eq!(manuals(), None, "the refused delta created nothing");

    // An honest delta afterwards applies, and the node exports it with its own clock intact.
    let (s, report) = json_of(
        p,
        "POST",
        "/v1/knowledge/manuals/import?shareable=true",
        &one_chunk_delta("manuals", "pump#0", "Prime the pump before starting."),
    );
    assert_eq!((s, &report["applied"]), (200, &json!(1)), "{report}");
    let (s, delta) = json_of(p, "POST", "/v1/knowledge/manuals/export", "{}");
    assert_eq!(s, 200, "{delta}");
    let change = &delta["changes"][0];
    assert_eq!(change["id"], "pump#0", "{delta}");
    assert_eq!(change["stamp"]["lamport"], 1, "{delta}");
    let info = manuals().unwrap();
    assert_eq!(info["lamport"], 1, "{info}");
}
