//! Zenoh's access control as the mesh configures it, on a real mTLS link over loopback: the
//! mesh's own key expressions cross it, nothing else does.

mod common;
use common::free_port;

use std::time::{Duration, Instant};

use edgewise_core::MeshConfig;
use edgewise_mesh::{init_ca, issue, zenoh_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_mesh_key_expressions_cross_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    init_ca(&ca, "plant").unwrap();
    let tls_a = issue(&ca, "node-a", &dir.path().join("a")).unwrap();
    let tls_b = issue(&ca, "node-b", &dir.path().join("b")).unwrap();
    let port = free_port();
    let cfg = |yaml: String| -> MeshConfig { serde_yaml::from_str(&yaml).unwrap() };
    let a = cfg(format!(
        "trust_domain: plant\nlisten: [tls/127.0.0.1:{port}]"
    ));
    let b = cfg(format!(
        "trust_domain: plant\nconnect: [tls/127.0.0.1:{port}]"
    ));
    let a = zenoh::open(zenoh_config(&a, &tls_a).unwrap())
        .await
        .unwrap();
    let b = zenoh::open(zenoh_config(&b, &tls_b).unwrap())
        .await
        .unwrap();

    let adverts = a.declare_subscriber("edgewise/advert/*").await.unwrap();
    let other = a.declare_subscriber("plant/**").await.unwrap();
    let _queryable = a.declare_queryable("plant/secrets").await.unwrap();

    // Once the link is up, b's adverts reach a; its other puts never do.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut advert = None;
    while advert.is_none() {
        assert!(
            Instant::now() < deadline,
            "no advert crossed the link in 20 s"
        );
        b.put("plant/zone4/valve", "open").await.unwrap();
        b.put("edgewise/advert/node-b", "{}").await.unwrap();
        advert = tokio::time::timeout(Duration::from_millis(200), adverts.recv_async())
            .await
            .ok();
    }
    let sample = advert.unwrap().unwrap();
    assert_eq!(sample.key_expr().as_str(), "edgewise/advert/node-b");
    for _ in 0..5 {
        b.put("plant/zone4/valve", "open").await.unwrap();
    }
    let leaked = tokio::time::timeout(Duration::from_millis(500), other.recv_async()).await;
    assert!(
        leaked.is_err(),
        "a put outside edgewise/ crossed the link: {:?}",
        leaked.map(|s| s.map(|s| s.key_expr().to_string()))
    );

    // Nor does a query outside edgewise/: a's queryable is never reached.
    let replies = b
        .get("plant/secrets")
        .timeout(Duration::from_millis(500))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), replies.recv_async()).await;
    assert!(
        !matches!(got, Ok(Ok(ref r)) if r.result().is_ok()),
        "a query outside edgewise/ was answered"
    );
}
