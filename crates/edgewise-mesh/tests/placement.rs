//! Placement as a node sees it, with three real members on loopback (mTLS links): candidates
//! must advertise the model and the components, then come in order of tier, load and round trip.

mod common;
use common::free_port;

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgewise_mesh::{init_ca, Advert, CallHandler, CallRequest, CallResponse, MeshNode};
use futures::StreamExt;

struct NoCalls;

#[async_trait::async_trait]
impl CallHandler for NoCalls {
    async fn call(&self, _: CallRequest) -> CallResponse {
        CallResponse {
            status: 404,
            content_type: "text/plain".into(),
            body: futures::stream::empty().boxed(),
        }
    }
}

async fn member(
    pki: &std::path::Path,
    name: &str,
    port: u16,
    connect: &[u16],
    advert: Advert,
) -> MeshNode {
    common::member(pki, name, port, connect, advert, Arc::new(NoCalls)).await
}

fn advert(node: &str, components: &[&str], waiting: u64) -> Advert {
    Advert {
        node: node.into(),
        tier: 1,
        trust_domain: "plant".into(),
        models: vec!["m".into()],
        components: components.iter().map(|c| (*c).to_owned()).collect(),
        waiting,
        ..Advert::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_match_model_and_components_then_load_and_round_trip() {
    let pki = tempfile::tempdir().unwrap();
    init_ca(&pki.path().join("ca"), "plant").unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let a = member(pki.path(), "a", ports[0], &[], Advert::default()).await;
    // b carries the component but is busier; c is idle without it.
    let _b = member(
        pki.path(),
        "b",
        ports[1],
        &ports[..1],
        advert("b", &["ocr"], 3),
    )
    .await;
    let embeds = Advert {
        embedding_model: Some("e".into()),
        ..advert("c", &[], 0)
    };
    let _c = member(pki.path(), "c", ports[2], &ports[..1], embeds).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    while a.nodes_serving("m", &[]).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "a never saw b and c: {:?}",
            a.peers()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.nodes_serving("m", &[]), ["c", "b"], "the idle node first");
    assert_eq!(a.nodes_serving("m", &["ocr".into()]), ["b"]);
    assert!(a
        .nodes_serving("m", &["ocr".into(), "asr".into()])
        .is_empty());
    assert!(a.nodes_serving("other-model", &[]).is_empty());
    // Embedding requests go to the nodes whose embedding model it is, not to chat models.
    assert_eq!(a.nodes_embedding("e"), ["c"]);
    assert!(a.nodes_embedding("m").is_empty());
    assert!(a.nodes_serving("e", &[]).is_empty());

    // Round trips are measured by the mesh's own ping.
    assert!(a.peers().iter().all(|p| p.rtt_ms.is_none()));
    a.probe(Duration::from_secs(2)).await;
    for p in a.peers() {
        let rtt = p
            .rtt_ms
            .unwrap_or_else(|| panic!("no round trip to {}", p.node));
        assert!(rtt > 0.0 && rtt < 2000.0, "{}: {rtt} ms", p.node);
    }
}
