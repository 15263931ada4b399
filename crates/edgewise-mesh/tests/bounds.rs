//! A neighbour cannot make a node answer more mesh calls at once than `MAX_CALLS_IN_FLIGHT`: two
//! real members on loopback (mTLS), one holding every call it gets until the test lets go.

mod common;
use common::{free_port, member};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgewise_mesh::{init_ca, Advert, CallHandler, CallRequest, CallResponse, MAX_CALLS_IN_FLIGHT};
use futures::StreamExt;

/// Answers `/fast` at once; holds `/slow` until `release` is closed.
struct Holding {
    held: AtomicUsize,
    release: tokio::sync::Semaphore,
}

#[async_trait::async_trait]
impl CallHandler for Holding {
    async fn call(&self, request: CallRequest) -> CallResponse {
        if request.path == "/slow" {
            self.held.fetch_add(1, Ordering::SeqCst);
            let _ = self.release.acquire().await;
        }
        CallResponse {
            status: 200,
            content_type: "text/plain".into(),
            body: futures::stream::empty().boxed(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_in_flight_bound_are_refused_at_once() {
    let pki = tempfile::tempdir().unwrap();
    init_ca(&pki.path().join("ca"), "plant").unwrap();
    let (pa, pb) = (free_port(), free_port());
    let holding = Arc::new(Holding {
        held: AtomicUsize::new(0),
        release: tokio::sync::Semaphore::new(0),
    });
    let _b = member(pki.path(), "b", pb, &[], Advert::default(), holding.clone()).await;
    let a = member(
        pki.path(),
        "a",
        pa,
        &[pb],
        Advert::default(),
        holding.clone(),
    )
    .await;
    let a = Arc::new(a);
    let call = |path: &'static str| {
        let a = a.clone();
        async move { a.call("b", "GET", path, &[], Duration::from_secs(60)).await }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while call("/fast").await.is_err() {
        assert!(Instant::now() < deadline, "a never reached b");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let held: Vec<_> = (0..MAX_CALLS_IN_FLIGHT)
        .map(|_| tokio::spawn(call("/slow")))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while holding.held.load(Ordering::SeqCst) < MAX_CALLS_IN_FLIGHT {
        assert!(
            Instant::now() < deadline,
            "only {} calls arrived",
            holding.held.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let refused = call("/fast").await;
    let message = match refused {
        Ok(r) => panic!("call {} was answered {}", MAX_CALLS_IN_FLIGHT + 1, r.status),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("busy"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused only after {:?}",
        started.elapsed()
    );
    assert_eq!(holding.held.load(Ordering::SeqCst), MAX_CALLS_IN_FLIGHT);

    // Once the held calls end, the node answers again.
    holding.release.close();
    for h in held {
        assert_eq!(h.await.unwrap().unwrap().status, 200);
    }
    assert_eq!(call("/fast").await.unwrap().status, 200);
}
