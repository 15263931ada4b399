//! A member is who its certificate says. Three processes' worth of members on loopback (mTLS):
//! node-a, node-b, and an impostor holding a valid certificate for node-x that claims to be
//! node-b in every way it can (presence, adverts, answering node-b's calls, calling as node-b,
//! replaying a call it overheard). Callers still reach the real node-b, the impostor reads no
//! request, and every forgery is reported by the node that dropped it.

mod common;
use common::{free_port, member_reporting, ForgedLog};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgewise_core::MeshConfig;
use edgewise_mesh::identity::{self, Kind};
use edgewise_mesh::wire::{self, RequestHead, ResponseHead};
use edgewise_mesh::{
    init_ca, issue, zenoh_config, Advert, CallHandler, CallRequest, CallResponse, Signer,
};
use futures::StreamExt;

/// Answers with who it is, who called and what it was sent; records the callers it saw.
struct Echo {
    me: &'static str,
    callers: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl CallHandler for Echo {
    async fn call(&self, request: CallRequest) -> CallResponse {
        self.callers.lock().unwrap().push(request.from.clone());
        let text = format!(
            "{} got from {}: {}",
            self.me,
            request.from,
            String::from_utf8_lossy(&request.body)
        );
        CallResponse {
            status: 200,
            content_type: "text/plain".into(),
            body: futures::stream::iter(
                text.into_bytes()
                    .chunks(7)
                    .map(<[u8]>::to_vec)
                    .collect::<Vec<_>>(),
            )
            .boxed(),
        }
    }
}

fn echo(me: &'static str) -> Arc<Echo> {
    Arc::new(Echo {
        me,
        callers: Mutex::default(),
    })
}

async fn read_all(mut r: edgewise_mesh::RemoteResponse) -> String {
    let mut out = Vec::new();
    while let Some(chunk) = r.body.recv().await {
        out.extend(chunk.unwrap());
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_with_a_valid_certificate_cannot_be_another_node() {
    let pki = tempfile::tempdir().unwrap();
    let ca = pki.path().join("ca");
    init_ca(&ca, "plant").unwrap();
    let (pa, pb, px) = (free_port(), free_port(), free_port());
    let (forged_a, forged_b) = (ForgedLog::default(), ForgedLog::default());
    let (echo_a, echo_b) = (echo("node-a"), echo("node-b"));
    let busy_b = Advert {
        models: vec!["m".into()],
        tier: 1,
        waiting: 5,
        ..Advert::default()
    };
    let a = member_reporting(
        pki.path(),
        "node-a",
        pa,
        &[],
        Advert::default(),
        echo_a.clone(),
        &forged_a,
    )
    .await;
    let _b = member_reporting(
        pki.path(),
        "node-b",
        pb,
        &[pa],
        busy_b,
        echo_b.clone(),
        &forged_b,
    )
    .await;

    // The impostor: a raw session with node-x's certificate, linked to both.
    let tls_x = issue(&ca, "node-x", &pki.path().join("node-x")).unwrap();
    let cfg: MeshConfig = serde_yaml::from_str(&format!(
        "trust_domain: plant\nlisten: [tls/127.0.0.1:{px}]\nconnect: [tls/127.0.0.1:{pa}, tls/127.0.0.1:{pb}]"
    ))
    .unwrap();
    let x = zenoh::open(zenoh_config(&cfg, &tls_x).unwrap())
        .await
        .unwrap();
    let signer_x = Arc::new(Signer::load(&tls_x).unwrap());
    let _token = x
        .liveliness()
        .declare_token("edgewise/node/node-b")
        .await
        .unwrap();
    // It answers node-b's calls: sealed by its own certificate, for the nonce it read.
    let overheard: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let queryable = x.declare_queryable("edgewise/call/node-b").await.unwrap();
    {
        let (overheard, signer_x) = (overheard.clone(), signer_x.clone());
        tokio::spawn(async move {
            while let Ok(query) = queryable.recv_async().await {
                let payload = query
                    .payload()
                    .map(|p| p.to_bytes().to_vec())
                    .unwrap_or_default();
                overheard.lock().unwrap().push(payload.clone());
                let Ok((_, head)) = wire::open_request(&payload) else {
                    continue;
                };
                let reply = wire::seal_head(
                    &signer_x,
                    &ResponseHead {
                        status: 200,
                        content_type: "text/plain".into(),
                        nonce: head.nonce,
                        call: hex::encode(wire::call_hash(&payload)),
                    },
                );
                let _ = query.reply(query.key_expr().clone(), reply).await;
                let _ = query
                    .reply(
                        query.key_expr().clone(),
                        wire::chunk_frame(b"impostor's answer".to_vec()),
                    )
                    .await;
            }
        });
    }
    // It advertises itself as node-b: idle, tier 0; sealed with its own key, and unsealed.
    {
        let (x, signer_x) = (x.clone(), signer_x.clone());
        tokio::spawn(async move {
            loop {
                let fake = Advert {
                    node: "node-b".into(),
                    models: vec!["m".into()],
                    tier: 0,
                    waiting: 0,
                    sent_ms: identity::now_ms(),
                    ..Advert::default()
                };
                let json = serde_json::to_vec(&fake).unwrap();
                let _ = x
                    .put(
                        "edgewise/advert/node-b",
                        signer_x.seal(Kind::Advert, &json, &[]),
                    )
                    .await;
                let _ = x.put("edgewise/advert/node-b", json).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    // node-a sees node-b as node-b advertises itself, never as the impostor does.
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.nodes_serving("m", &[]).is_empty() {
        assert!(
            Instant::now() < deadline,
            "a never saw node-b: {:?}",
            a.peers()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b_seen = a.peers().into_iter().find(|p| p.node == "node-b").unwrap();
    let advert = b_seen.advert.unwrap();
    assert_eq!((advert.tier, advert.waiting), (1, 5), "{advert:?}");

    // Calls to node-b reach node-b, every time, and their bodies reach no one else.
    for i in 0..5 {
        let r = a
            .call(
                "node-b",
                "POST",
                "/echo",
                format!("secret prompt {i}").as_bytes(),
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            read_all(r).await,
            format!("node-b got from node-a: secret prompt {i}")
        );
    }
    let heard = overheard.lock().unwrap().clone();
    assert!(
        !heard.is_empty(),
        "the impostor's queryable was never asked: the test proves nothing"
    );
    for payload in &heard {
        assert!(
            !payload.windows(13).any(|w| w == b"secret prompt"),
            "the impostor read a request"
        );
    }

    // Calling as node-b: sealed with node-x's key, refused before any handler runs.
    let head = RequestHead {
        from: "node-b".into(),
        to: "node-a".into(),
        method: "POST".into(),
        path: "/echo".into(),
        nonce: "feed".repeat(8),
        sent_ms: identity::now_ms(),
        eph: hex::encode([9u8; 32]),
    };
    let replies = x
        .get("edgewise/call/node-a")
        .payload(wire::seal_request(
            &signer_x,
            &wire::head_bytes(&head),
            b"open the valve",
        ))
        .timeout(Duration::from_secs(5))
        .await
        .unwrap();
    let reply = replies.recv_async().await.unwrap();
    let refused = reply
        .result()
        .err()
        .map(|e| String::from_utf8_lossy(&e.payload().to_bytes()).into_owned());
    assert!(
        refused
            .as_deref()
            .is_some_and(|r| r.contains("sealed by node-x")),
        "{refused:?}"
    );
    // Re-sealing an overheard call under its own name (same nonce, key and body): node-b refuses
    // it, as the body is bound to the head it was sent with.
    let (env, overheard_head) = wire::open_request(&heard[0]).unwrap();
    let resealed = RequestHead {
        from: "node-x".into(),
        ..overheard_head
    };
    let replies = x
        .get("edgewise/call/node-b")
        .payload(wire::seal_request(
            &signer_x,
            &wire::head_bytes(&resealed),
            env.payload,
        ))
        .timeout(Duration::from_secs(5))
        .await
        .unwrap();
    let mut refusals = Vec::new();
    while let Ok(reply) = replies.recv_async().await {
        if let Err(e) = reply.result() {
            refusals.push(String::from_utf8_lossy(&e.payload().to_bytes()).into_owned());
        }
    }
    assert!(
        refusals.iter().any(|r| r.contains("under this head")),
        "{refusals:?}"
    );
    // Replaying a call it overheard (node-a's, sealed for node-b) to node-b: refused too.
    let replay = x
        .get("edgewise/call/node-b")
        .payload(heard[0].clone())
        .timeout(Duration::from_secs(5))
        .await
        .unwrap();
    while replay.recv_async().await.is_ok() {}
    assert!(!echo_a.callers.lock().unwrap().iter().any(|c| c == "node-b"));
    assert_eq!(
        echo_b.callers.lock().unwrap().len(),
        5,
        "node-b ran a call twice"
    );

    // Every forgery is reported by the node that dropped it, naming the sealing certificate.
    let deadline = Instant::now() + Duration::from_secs(5);
    let wanted = |log: &ForgedLog, what: &str, needle: &str| {
        log.all()
            .iter()
            .any(|f| f.what == what && f.claimed == "node-b" && f.reason.contains(needle))
    };
    loop {
        let seen_a = [
            wanted(&forged_a, "advert", "sealed by node-x"),
            wanted(&forged_a, "advert", "not a sealed message"),
            wanted(&forged_a, "reply", "not by the called node"),
            wanted(&forged_a, "call", "sealed by node-x"),
        ];
        let seen_b = wanted(&forged_b, "call", "")
            || forged_b.all().iter().any(|f| f.reason.contains("replayed"));
        if seen_a.iter().all(|s| *s) && seen_b {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing reports {seen_a:?} {seen_b}: a {:?}\nb {:?}",
            forged_a.all(),
            forged_b.all()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let by_x = forged_a
        .all()
        .iter()
        .filter(|f| f.sealed_by.as_deref() == Some("node-x"))
        .count();
    assert!(by_x > 0, "{:?}", forged_a.all());
}

#[test]
fn certificates_expire_and_name_one_node() {
    let pki = tempfile::tempdir().unwrap();
    let ca = pki.path().join("ca");
    init_ca(&ca, "plant").unwrap();
    let tls = edgewise_mesh::issue_for_days(&ca, "node-a", &pki.path().join("a"), 30).unwrap();
    let verifier = edgewise_mesh::Verifier::load(&tls).unwrap();
    let signer = Signer::load(&tls).unwrap();
    let now = std::time::SystemTime::now();
    assert_eq!(
        verifier.certificate_name(signer.cert_der(), now).unwrap(),
        "node-a"
    );
    let later = now + Duration::from_secs(31 * 86_400);
    let fresh = edgewise_mesh::Verifier::load(&tls).unwrap();
    let err = fresh
        .certificate_name(signer.cert_der(), later)
        .unwrap_err();
    assert!(err.contains("expired"), "{err}");
    // Once verified and cached, expiry still applies.
    assert!(verifier
        .certificate_name(signer.cert_der(), later)
        .unwrap_err()
        .contains("expired"));
    for bad in [0, 3651] {
        let err =
            edgewise_mesh::issue_for_days(&ca, "node-b", &pki.path().join("b"), bad).unwrap_err();
        assert!(err.to_string().contains("1 to 3650 days"), "{err}");
    }
    // Another domain's CA does not vouch for it.
    let other = pki.path().join("other");
    init_ca(&other, "elsewhere").unwrap();
    let stranger = issue(&other, "node-a", &pki.path().join("stranger")).unwrap();
    let err = verifier
        .certificate_name(Signer::load(&stranger).unwrap().cert_der(), now)
        .unwrap_err();
    assert!(err.contains("not one of this trust domain's"), "{err}");
}
