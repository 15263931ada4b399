//! Helpers shared by the mesh crate's integration tests.
// Each test binary uses a part of these.
#![allow(dead_code)]

use std::sync::Arc;

use edgewise_core::MeshConfig;
use edgewise_mesh::{issue, Advert, CallHandler, MeshNode};

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A member of trust domain `plant` (CA in `<pki>/ca`) listening on `port`, linked to the members
/// on `connect`, advertising `advert` and answering calls with `handler`.
pub async fn member(
    pki: &std::path::Path,
    name: &str,
    port: u16,
    connect: &[u16],
    advert: Advert,
    handler: Arc<dyn CallHandler>,
) -> MeshNode {
    member_reporting(
        pki,
        name,
        port,
        connect,
        advert,
        handler,
        &ForgedLog::default(),
    )
    .await
}

/// `member`, reporting forged messages to `forged`.
pub async fn member_reporting(
    pki: &std::path::Path,
    name: &str,
    port: u16,
    connect: &[u16],
    advert: Advert,
    handler: Arc<dyn CallHandler>,
    forged: &ForgedLog,
) -> MeshNode {
    let tls = issue(&pki.join("ca"), name, &pki.join(name)).unwrap();
    let connect: Vec<String> = connect
        .iter()
        .map(|p| format!("tls/127.0.0.1:{p}"))
        .collect();
    let cfg: MeshConfig = serde_yaml::from_str(&format!(
        "trust_domain: plant\nlisten: [tls/127.0.0.1:{port}]\nconnect: [{}]",
        connect.join(", ")
    ))
    .unwrap();
    let advert = Arc::new(move || advert.clone());
    MeshNode::join(name, &cfg, &tls, advert, handler, forged.reporter())
        .await
        .unwrap()
}

/// The forged messages a member reported.
#[derive(Clone, Default)]
pub struct ForgedLog(pub Arc<std::sync::Mutex<Vec<edgewise_mesh::Forged>>>);

impl ForgedLog {
    pub fn reporter(&self) -> edgewise_mesh::ForgedReporter {
        let log = self.0.clone();
        Arc::new(move |f| log.lock().unwrap().push(f))
    }

    pub fn all(&self) -> Vec<edgewise_mesh::Forged> {
        self.0.lock().unwrap().clone()
    }
}
