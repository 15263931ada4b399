//! Vector memory: embedding identity, search, deltas between two stores, persistence.

use edgewise_store::knowledge::{
    Delta, EmbeddingId, Filter, NewChunk, VersionVector, EXACT_SEARCH_BELOW, MAX_CLOCK,
};
use edgewise_store::{Knowledge, KnowledgeError};
use serde_json::{json, Map, Value};

const DIM: usize = 8;

fn mini() -> EmbeddingId {
    EmbeddingId::current("test-model", DIM)
}

/// A unit vector pointing mostly along axis `i`.
fn axis(i: usize, tilt: f32) -> Vec<f32> {
    let mut v = vec![tilt; DIM];
    v[i % DIM] = 1.0;
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn chunk(id: &str, text: &str, vector: Vec<f32>, meta: Value) -> NewChunk {
    NewChunk {
        id: id.into(),
        source: format!("{id}.md"),
        text: text.into(),
        metadata: meta.as_object().cloned().unwrap_or_default(),
        vector,
    }
}

fn texts(k: &Knowledge, name: &str) -> Vec<(String, String)> {
    k.chunks(name)
        .unwrap()
        .into_iter()
        .map(|(h, _)| (h.id, h.text))
        .collect()
}

#[test]
fn vectors_of_another_model_dimension_or_schema_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let k = Knowledge::open(dir.path()).unwrap();
    k.create("notes", &mini(), false).unwrap();

    let wrong_dim = k
        .upsert(
            "notes",
            &mini(),
            &[chunk("a", "x", vec![0.5; DIM + 1], json!({}))],
        )
        .unwrap_err();
    assert!(matches!(
        wrong_dim,
        KnowledgeError::EmbeddingMismatch { .. }
    ));
    assert!(
        wrong_dim.to_string().contains("9-d vector for chunk 'a'"),
        "{wrong_dim}"
    );

    let other = EmbeddingId::current("other-model", DIM);
    let wrong_model = k
        .upsert("notes", &other, &[chunk("a", "x", axis(0, 0.0), json!({}))])
        .unwrap_err()
        .to_string();
    assert!(
        wrong_model.contains("test-model (8-d, schema 1)"),
        "{wrong_model}"
    );
    assert!(
        wrong_model.contains("refusing other-model"),
        "{wrong_model}"
    );
    assert!(wrong_model.contains("edgewise kb reembed"), "{wrong_model}");

    let old_schema = EmbeddingId {
        schema_version: 0,
        ..mini()
    };
    let refused = k
        .search("notes", &old_schema, &axis(0, 0.0), 3, &Filter::new())
        .unwrap_err();
    assert!(matches!(refused, KnowledgeError::EmbeddingMismatch { .. }));
    let short_query = k
        .search("notes", &mini(), &[1.0; 3], 3, &Filter::new())
        .unwrap_err()
        .to_string();
    assert!(short_query.contains("3-d query"), "{short_query}");

    // Creating it again with another model is refused too; the same model is fine.
    assert!(matches!(
        k.create("notes", &other, false),
        Err(KnowledgeError::Exists { .. })
    ));
    k.create("notes", &mini(), false).unwrap();
    assert_eq!(
        k.collection("notes").unwrap().chunks,
        0,
        "nothing was stored"
    );
}

#[test]
fn search_filters_updates_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let k = Knowledge::open(dir.path()).unwrap();
    k.create("notes", &mini(), false).unwrap();
    k.upsert(
        "notes",
        &mini(),
        &[
            chunk("a", "alpha", axis(0, 0.0), json!({"ward": "B"})),
            chunk("b", "beta", axis(1, 0.0), json!({"ward": "A"})),
            chunk("c", "gamma", axis(0, 0.3), json!({"ward": "A"})),
        ],
    )
    .unwrap();
    let ids = |hits: Vec<edgewise_store::knowledge::Hit>| -> Vec<String> {
        hits.into_iter().map(|h| h.id).collect()
    };
    let q = axis(0, 0.0);
    assert_eq!(
        ids(k.search("notes", &mini(), &q, 2, &Filter::new()).unwrap()),
        ["a", "c"]
    );
    let ward_a: Filter = [("ward".to_string(), json!("A"))].into();
    assert_eq!(
        ids(k.search("notes", &mini(), &q, 2, &ward_a).unwrap()),
        ["c", "b"]
    );
    let by_source: Filter = [("source".to_string(), json!("b.md"))].into();
    assert_eq!(
        ids(k.search("notes", &mini(), &q, 5, &by_source).unwrap()),
        ["b"]
    );

    // Update: same id, new text and vector.
    k.upsert(
        "notes",
        &mini(),
        &[chunk("a", "alpha v2", axis(5, 0.0), json!({"ward": "B"}))],
    )
    .unwrap();
    let top = k.search("notes", &mini(), &q, 1, &Filter::new()).unwrap();
    assert_eq!(top[0].id, "c");
    let moved = k
        .search("notes", &mini(), &axis(5, 0.0), 1, &Filter::new())
        .unwrap();
    assert_eq!(
        (moved[0].id.as_str(), moved[0].text.as_str()),
        ("a", "alpha v2")
    );
    assert!(moved[0].score > 0.99);

    assert_eq!(k.delete("notes", &["c".into(), "nope".into()]).unwrap(), 1);
    let mut left = ids(k.search("notes", &mini(), &q, 5, &Filter::new()).unwrap());
    left.sort();
    assert_eq!(left, ["a", "b"]);
    assert_eq!(k.check("notes").unwrap(), 2);
    assert!(k.get("notes", "c").unwrap().is_none());
}

#[test]
fn two_stores_converge_after_concurrent_conflicting_edits() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Knowledge::open(da.path()).unwrap();
    let b = Knowledge::open(db.path()).unwrap();
    assert_ne!(a.node(), b.node());
    a.create("shared", &mini(), true).unwrap();
    a.upsert(
        "shared",
        &mini(),
        &[
            chunk("valve", "zone4 valve open", axis(0, 0.1), json!({})),
            chunk("pump", "pump 2 running", axis(1, 0.1), json!({})),
        ],
    )
    .unwrap();
    // B starts from A's state.
    let first = a.export("shared", &VersionVector::new()).unwrap();
    assert_eq!(b.import(&first, true).unwrap().applied, 2);

    // Offline, both edit: the same chunk differently, one deletes what the other updates,
    // and each adds its own.
    a.upsert(
        "shared",
        &mini(),
        &[chunk(
            "valve",
            "zone4 valve closed by A",
            axis(0, 0.2),
            json!({}),
        )],
    )
    .unwrap();
    b.upsert(
        "shared",
        &mini(),
        &[chunk(
            "valve",
            "zone4 valve half-open by B",
            axis(0, 0.3),
            json!({}),
        )],
    )
    .unwrap();
    b.upsert(
        "shared",
        &mini(),
        &[chunk(
            "valve",
            "zone4 valve half-open by B (2)",
            axis(0, 0.3),
            json!({}),
        )],
    )
    .unwrap();
    a.delete("shared", &["pump".into()]).unwrap();
    b.upsert(
        "shared",
        &mini(),
        &[chunk("pump", "pump 2 stopped", axis(1, 0.2), json!({}))],
    )
    .unwrap();
    a.upsert(
        "shared",
        &mini(),
        &[chunk("a-only", "from A", axis(2, 0.0), json!({}))],
    )
    .unwrap();
    b.upsert(
        "shared",
        &mini(),
        &[chunk("b-only", "from B", axis(3, 0.0), json!({}))],
    )
    .unwrap();

    // Exchange deltas since what each last had from the other, both ways.
    let va = a.collection("shared").unwrap().version;
    let vb = b.collection("shared").unwrap().version;
    let a_to_b = a.export("shared", &vb).unwrap();
    let b_to_a = b.export("shared", &va).unwrap();
    assert!(
        a_to_b.changes.len() < 6,
        "a delta, not the whole collection"
    );
    b.import(&a_to_b, true).unwrap();
    a.import(&b_to_a, true).unwrap();

    assert_eq!(texts(&a, "shared"), texts(&b, "shared"));
    assert_eq!(
        a.collection("shared").unwrap().version,
        b.collection("shared").unwrap().version
    );
    let got = texts(&a, "shared");
    assert!(got.iter().any(|(id, _)| id == "a-only"));
    assert!(got.iter().any(|(id, _)| id == "b-only"));
    // Idempotent: importing the same deltas again changes nothing.
    assert_eq!(b.import(&a_to_b, true).unwrap().applied, 0);
    assert_eq!(a.import(&b_to_a, true).unwrap().applied, 0);
    assert_eq!(texts(&a, "shared"), got);
    // Nothing left to send either way.
    let vb = b.collection("shared").unwrap().version;
    assert!(a.export("shared", &vb).unwrap().changes.is_empty());
    assert_eq!(a.check("shared").unwrap(), b.check("shared").unwrap());
    // Search sees the merged state on both.
    let hit_a = a
        .search("shared", &mini(), &axis(0, 0.25), 1, &Filter::new())
        .unwrap();
    let hit_b = b
        .search("shared", &mini(), &axis(0, 0.25), 1, &Filter::new())
        .unwrap();
    assert_eq!(hit_a[0].text, hit_b[0].text);

    // A delta of another model is refused with the collection untouched.
    let mut foreign = a.export("shared", &VersionVector::new()).unwrap();
    foreign.embedding = EmbeddingId::current("other-model", DIM);
    let err = b.import(&foreign, true).unwrap_err().to_string();
    assert!(err.contains("refusing other-model"), "{err}");
    assert_eq!(texts(&b, "shared"), got);
}

/// A sender `a` with two shareable chunks and a receiver `b` with one local chunk of its own.
fn sender_and_receiver() -> (tempfile::TempDir, Knowledge, tempfile::TempDir, Knowledge) {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Knowledge::open(da.path()).unwrap();
    let b = Knowledge::open(db.path()).unwrap();
    a.create("shared", &mini(), true).unwrap();
    a.upsert(
        "shared",
        &mini(),
        &[
            chunk("good", "an honest change", axis(0, 0.0), json!({})),
            chunk(
                "forged",
                "a change from a corrupt clock",
                axis(1, 0.0),
                json!({}),
            ),
        ],
    )
    .unwrap();
    b.create("shared", &mini(), true).unwrap();
    b.upsert(
        "shared",
        &mini(),
        &[chunk("b-1", "from B", axis(2, 0.0), json!({}))],
    )
    .unwrap();
    (da, a, db, b)
}

/// `import` refuses `delta` with a clock error naming `names`, and `b` is as it was; a local
/// change afterwards is stamped one past b's own clocks and exports.
fn refused_whole_and_local_changes_go_on(b: &Knowledge, delta: &Delta, names: &str) {
    let before = b.collection("shared").unwrap();
    let texts_before = texts(b, "shared");
    let err = b.import(delta, true).unwrap_err();
    assert!(
        matches!(err, KnowledgeError::ClockOutOfRange { .. }),
        "{err}"
    );
    let message = err.to_string();
    for part in [
        "collection 'shared'",
        names,
        "18446744073709551614",
        "corrupt or forged",
        "not applied",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    let after = b.collection("shared").unwrap();
    assert_eq!(
        (after.lamport, &after.version, after.chunks),
        (before.lamport, &before.version, before.chunks)
    );
    assert_eq!(
        texts(b, "shared"),
        texts_before,
        "not even the honest change"
    );

    let id = format!("b-{}", before.lamport + 1);
    b.upsert(
        "shared",
        &mini(),
        &[chunk(&id, "from B, later", axis(3, 0.0), json!({}))],
    )
    .unwrap();
    let export = b.export("shared", &VersionVector::new()).unwrap();
    let new = export.changes.iter().find(|c| c.id == id).unwrap();
    let mine = before.version.get(b.node()).copied().unwrap_or(0);
    assert_eq!(
        (
            new.stamp.lamport,
            new.stamp.node.as_str(),
            new.stamp.counter
        ),
        (before.lamport + 1, b.node(), mine + 1)
    );
    assert_eq!(b.check("shared").unwrap(), before.chunks + 1);
}

#[test]
fn a_delta_with_a_lamport_time_near_u64_max_is_refused_whole() {
    let (_da, a, _db, b) = sender_and_receiver();
    let mut delta = a.export("shared", &VersionVector::new()).unwrap();
    let forged = delta.changes.iter_mut().find(|c| c.id == "forged").unwrap();
    forged.stamp.lamport = u64::MAX - 1;
    refused_whole_and_local_changes_go_on(&b, &delta, "the lamport time of change 'forged'");

    // A store that lacks the collection does not even create it.
    let dc = tempfile::tempdir().unwrap();
    let c = Knowledge::open(dc.path()).unwrap();
    assert!(c.import(&delta, true).is_err());
    assert!(c.collections().unwrap().is_empty());

    // The same delta with an honest clock applies.
    let honest = a.export("shared", &VersionVector::new()).unwrap();
    assert_eq!(b.import(&honest, true).unwrap().applied, 2);
}

#[test]
fn a_delta_with_a_change_counter_or_version_entry_near_u64_max_is_refused_whole() {
    let (_da, a, _db, b) = sender_and_receiver();
    let mut delta = a.export("shared", &VersionVector::new()).unwrap();
    let forged = delta.changes.iter_mut().find(|c| c.id == "forged").unwrap();
    forged.stamp.counter = u64::MAX - 1;
    refused_whole_and_local_changes_go_on(&b, &delta, "the counter of change 'forged'");

    // The receiver's own entry is the one whose next increment would wrap.
    let mut delta = a.export("shared", &VersionVector::new()).unwrap();
    delta.version.insert(b.node().to_owned(), u64::MAX - 1);
    let entry = format!("the version vector entry of node '{}'", b.node());
    refused_whole_and_local_changes_go_on(&b, &delta, &entry);
}

#[test]
fn clocks_at_the_ceiling_are_accepted_and_one_above_it_is_refused() {
    let (_da, a, _db, b) = sender_and_receiver();
    let with_clocks = |lamport: u64, counter: u64, entry: u64| {
        let mut delta = a.export("shared", &VersionVector::new()).unwrap();
        let forged = delta.changes.iter_mut().find(|c| c.id == "forged").unwrap();
        forged.stamp.lamport = lamport;
        forged.stamp.counter = counter;
        delta.version.insert("far-node".into(), entry);
        delta
    };
    for (lamport, counter, entry) in [
        (MAX_CLOCK + 1, 1, 1),
        (1, MAX_CLOCK + 1, 1),
        (1, 1, MAX_CLOCK + 1),
    ] {
        let err = b
            .import(&with_clocks(lamport, counter, entry), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&(MAX_CLOCK + 1).to_string()), "{err}");
    }
    assert_eq!(
        b.collection("shared").unwrap().lamport,
        1,
        "nothing applied"
    );

    let report = b
        .import(&with_clocks(MAX_CLOCK, MAX_CLOCK, MAX_CLOCK), true)
        .unwrap();
    assert_eq!(report.applied, 2);
    let info = b.collection("shared").unwrap();
    assert_eq!(info.lamport, MAX_CLOCK);
    assert_eq!(info.version["far-node"], MAX_CLOCK);
    // The next local change still gets a stamp: the ceiling leaves room for the increment.
    b.upsert(
        "shared",
        &mini(),
        &[chunk("b-2", "from B, later", axis(3, 0.0), json!({}))],
    )
    .unwrap();
    assert_eq!(b.collection("shared").unwrap().lamport, MAX_CLOCK + 1);
}

#[test]
fn private_collections_do_not_export() {
    let dir = tempfile::tempdir().unwrap();
    let k = Knowledge::open(dir.path()).unwrap();
    k.create("patients", &mini(), false).unwrap();
    let err = k
        .export("patients", &VersionVector::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("private to this node"), "{err}");
}

#[test]
fn large_collections_use_the_saved_hnsw_index_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let n = EXACT_SEARCH_BELOW + 500;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    };
    let vectors: Vec<Vec<f32>> = (0..n).map(|_| (0..DIM).map(|_| next()).collect()).collect();
    {
        let k = Knowledge::open(dir.path()).unwrap();
        k.create("big", &mini(), false).unwrap();
        for (part, vs) in vectors.chunks(1000).enumerate() {
            let chunks: Vec<NewChunk> = vs
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    chunk(
                        &format!("c{:05}", part * 1000 + i),
                        "t",
                        v.clone(),
                        json!({}),
                    )
                })
                .collect();
            k.upsert("big", &mini(), &chunks).unwrap();
        }
        k.save_index("big").unwrap();
    }
    let k = Knowledge::open(dir.path()).unwrap();
    assert_eq!(k.check("big").unwrap(), n as u64);
    // Each stored vector finds itself first.
    let mut found = 0;
    for i in (0..n).step_by(97) {
        let hits = k
            .search("big", &mini(), &vectors[i], 1, &Filter::new())
            .unwrap();
        found += usize::from(hits[0].id == format!("c{i:05}"));
    }
    let asked = (0..n).step_by(97).count();
    assert!(found * 100 >= asked * 95, "{found}/{asked}");
    // Filters on a large collection.
    let only: Filter = [("source".to_string(), json!("c00007.md"))].into();
    let hits = k.search("big", &mini(), &vectors[3], 3, &only).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].id, "c00007");
    let _: Map<String, Value> = hits[0].metadata.clone();
}
