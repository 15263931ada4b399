//! The sandbox against the real guest components in `components/` (built for wasm32-wasip2 by
//! `make components`): tools work, limits stop misbehaviour, grants deny by default, and an
//! incompatible WIT version is refused.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgewise_core::{FileGrant, Grants, HostInterface};
use edgewise_sandbox::{
    ChatMessage, HostServices, InferenceOptions, LoadedComponent, NoServices, Sandbox,
    SandboxConfig, SandboxError,
};

fn wasm(name: &str) -> PathBuf {
    edgewise_sandbox::built_guest(name).unwrap_or_else(|e| panic!("{e}"))
}

fn sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig {
        max_instances: 8,
        max_memory: 1 << 30,
        ..SandboxConfig::default()
    })
    .unwrap()
}

fn load(sb: &Sandbox, name: &str, grants: Grants) -> LoadedComponent {
    sb.load(name, &wasm(name), grants, None, &|_| true)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn call(c: &LoadedComponent, tool: &str, args: &str) -> Result<String, SandboxError> {
    c.invoke(tool, args, Arc::new(NoServices))
}

#[test]
fn calc_and_text_tools_describe_and_answer() {
    let sb = sandbox();
    let calc = load(&sb, "calc", Grants::default());
    assert_eq!(calc.tools[0].name, "calculate");
    assert_eq!(calc.tools[0].parameters["required"][0], "expression");
    assert_eq!(
        call(
            &calc,
            "calculate",
            r#"{"expression": "(12.5 + 7) * 3 / 2"}"#
        )
        .unwrap(),
        "29.25"
    );
    let err = call(&calc, "calculate", r#"{"expression": "2 +"}"#).unwrap_err();
    assert!(matches!(err, SandboxError::ToolFailed { .. }), "{err}");
    assert!(err.to_string().contains("at the end"), "{err}");
    let err = call(&calc, "nope", "{}").unwrap_err();
    assert!(err.to_string().contains("offers: calculate"), "{err}");

    let text = load(&sb, "text_tools", Grants::default());
    assert_eq!(
        call(
            &text,
            "regex_extract",
            r#"{"text": "zone 1: 7.5 bar, zone 2: 8.9 bar", "pattern": "([0-9]+\\.[0-9]+) bar"}"#
        )
        .unwrap(),
        r#"["7.5","8.9"]"#
    );
    assert_eq!(
        call(
            &text,
            "json_query",
            r#"{"json": "{\"zones\": [{\"p\": 8.1}]}", "pointer": "/zones/0/p"}"#
        )
        .unwrap(),
        "8.1"
    );
    let counts: serde_json::Value = serde_json::from_str(
        &call(
            &text,
            "word_count",
            r#"{"text": "two words\nthree more words"}"#,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        counts,
        serde_json::json!({"words": 5, "lines": 2, "characters": 26})
    );
}

#[test]
fn misbehaviour_is_stopped_and_other_calls_go_on_meanwhile() {
    let sb = Arc::new(sandbox());
    let grants = Grants {
        time_limit: Some(Duration::from_millis(200)),
        memory_limit: Some(bytesize::ByteSize::mib(64)),
        ..Grants::default()
    };
    let bad = Arc::new(load(&sb, "misbehave", grants));
    let calc = Arc::new(load(&sb, "calc", Grants::default()));

    // The infinite loop, while another component keeps answering on another thread.
    let spinner = {
        let bad = bad.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            (call(&bad, "spin", "{}"), t.elapsed())
        })
    };
    let mut answered = 0;
    while !spinner.is_finished() && answered < 10_000 {
        assert_eq!(
            call(&calc, "calculate", r#"{"expression": "6*7"}"#).unwrap(),
            "42"
        );
        answered += 1;
    }
    let (spun, took) = spinner.join().unwrap();
    let err = spun.unwrap_err();
    assert!(
        matches!(err, SandboxError::Timeout { limit_ms: 200, .. }),
        "{err}"
    );
    assert!(took < Duration::from_secs(2), "stopped after {took:?}");
    assert!(
        answered > 0,
        "no other call was answered while the loop ran"
    );
    eprintln!(
        "spin stopped after {} ms; {answered} calc calls meanwhile",
        took.as_millis()
    );

    let err = call(&bad, "allocate", "{}").unwrap_err();
    assert!(matches!(err, SandboxError::MemoryLimit { .. }), "{err}");
    assert!(
        err.to_string().contains("64.0 MiB") || err.to_string().contains("MiB"),
        "{err}"
    );

    let err = call(&bad, "read_file", r#"{"target": "/etc/hostname"}"#).unwrap_err();
    assert!(err.to_string().contains("denied"), "{err}");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let err = call(&bad, "connect", &format!(r#"{{"target": "{addr}"}}"#)).unwrap_err();
    assert!(err.to_string().contains("denied"), "{err}");

    // A trap ended only its call: the next one gets a fresh instance.
    assert_eq!(
        call(&bad, "echo", r#"{"target": "still here"}"#).unwrap(),
        "still here"
    );
}

#[test]
fn granted_files_and_addresses_are_reachable_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "twelve bytes").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sb = sandbox();
    let bad = load(
        &sb,
        "misbehave",
        Grants {
            files: vec![FileGrant {
                path: dir.path().to_path_buf(),
                guest: Some("/data".into()),
                writable: false,
            }],
            network: vec![format!("127.0.0.1:{port}")],
            ..Grants::default()
        },
    );
    assert_eq!(
        call(&bad, "read_file", r#"{"target": "/data/notes.txt"}"#).unwrap(),
        "read 12 bytes"
    );
    assert!(call(&bad, "read_file", r#"{"target": "/data/../etc/hostname"}"#).is_err());
    assert_eq!(
        call(
            &bad,
            "connect",
            &format!(r#"{{"target": "127.0.0.1:{port}"}}"#)
        )
        .unwrap(),
        format!("connected to 127.0.0.1:{port}")
    );
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = other.local_addr().unwrap();
    assert!(call(&bad, "connect", &format!(r#"{{"target": "{other}"}}"#)).is_err());

    // The egress policy removes granted addresses it forbids.
    let strict = sb
        .load(
            "misbehave",
            &wasm("misbehave"),
            Grants {
                network: vec![format!("127.0.0.1:{port}")],
                ..Grants::default()
            },
            None,
            &|_| false,
        )
        .unwrap();
    assert!(call(
        &strict,
        "connect",
        &format!(r#"{{"target": "127.0.0.1:{port}"}}"#)
    )
    .is_err());
}

#[test]
fn repeated_traps_open_the_breaker() {
    let sb = sandbox();
    let bad = load(
        &sb,
        "misbehave",
        Grants {
            time_limit: Some(Duration::from_millis(20)),
            ..Grants::default()
        },
    );
    for _ in 0..3 {
        assert!(matches!(
            call(&bad, "spin", "{}"),
            Err(SandboxError::Timeout { .. })
        ));
    }
    let err = call(&bad, "echo", r#"{"target": "x"}"#).unwrap_err();
    assert!(
        matches!(err, SandboxError::BreakerOpen { failures: 3, .. }),
        "{err}"
    );
}

#[test]
fn a_component_built_against_another_wit_version_is_refused_by_name() {
    let sb = sandbox();
    let err = sb
        .load(
            "future",
            &wasm("future_tool"),
            Grants::default(),
            None,
            &|_| true,
        )
        .err()
        .expect("an incompatible component must be refused");
    let msg = err.to_string();
    assert!(msg.contains("edgewise:agent/"), "{msg}");
    assert!(msg.contains("0.2.0") && msg.contains("0.1.0"), "{msg}");
}

#[test]
fn compiled_artifacts_are_cached_by_content_hash() {
    let cache = tempfile::tempdir().unwrap();
    let config = SandboxConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        max_instances: 4,
        max_memory: 1 << 30,
        ..SandboxConfig::default()
    };
    let first = Sandbox::new(config.clone()).unwrap();
    let calc = load(&first, "calc", Grants::default());
    let artifacts: Vec<_> = std::fs::read_dir(cache.path()).unwrap().flatten().collect();
    assert_eq!(artifacts.len(), 1);
    let name = artifacts[0].file_name().to_string_lossy().into_owned();
    assert!(name.starts_with(&calc.sha256), "{name}");
    // A second node start loads the artifact (and it works).
    let second = Sandbox::new(config).unwrap();
    let again = load(&second, "calc", Grants::default());
    assert_eq!(
        call(&again, "calculate", r#"{"expression": "1+1"}"#).unwrap(),
        "2"
    );
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 1);
}

/// A node whose `tools` service answers after `delay` (a cold model load, a slow tool); every
/// other service says it has none.
struct SlowTools {
    delay: Duration,
}

impl HostServices for SlowTools {
    fn call_tool(&self, name: &str, _: &str) -> Result<String, String> {
        std::thread::sleep(self.delay);
        Ok(format!("{name} answered"))
    }
    fn kv_get(&self, n: &str, k: &str) -> Result<Option<Vec<u8>>, String> {
        NoServices.kv_get(n, k)
    }
    fn kv_set(&self, n: &str, k: &str, v: &[u8]) -> Result<(), String> {
        NoServices.kv_set(n, k, v)
    }
    fn kv_delete(&self, n: &str, k: &str) -> Result<(), String> {
        NoServices.kv_delete(n, k)
    }
    fn kv_keys(&self, n: &str) -> Result<Vec<String>, String> {
        NoServices.kv_keys(n)
    }
    fn doc_get(&self, d: &str, k: &str) -> Result<Option<serde_json::Value>, String> {
        NoServices.doc_get(d, k)
    }
    fn doc_set(&self, d: &str, k: &str, v: &serde_json::Value) -> Result<(), String> {
        NoServices.doc_set(d, k, v)
    }
    fn doc_delete(&self, d: &str, k: &str) -> Result<(), String> {
        NoServices.doc_delete(d, k)
    }
    fn doc_keys(&self, d: &str) -> Result<Vec<String>, String> {
        NoServices.doc_keys(d)
    }
    fn chat(&self, m: &[ChatMessage], o: &InferenceOptions) -> Result<String, String> {
        NoServices.chat(m, o)
    }
    fn generate(&self, p: &str, o: &InferenceOptions) -> Result<String, String> {
        NoServices.generate(p, o)
    }
    fn embed(&self, t: &str) -> Result<Vec<f32>, String> {
        NoServices.embed(t)
    }
    fn publish(&self, t: &str, p: &[u8]) -> Result<(), String> {
        NoServices.publish(t, p)
    }
}

/// The time limit counts the component's own work: a host call that takes three times the
/// limit still finishes, while spinning past the limit is stopped; a host call that hangs past
/// the host-call limit ends the call with an error naming the service.
#[test]
fn host_call_time_is_not_the_components_and_has_a_bound_of_its_own() {
    let sb = Sandbox::new(SandboxConfig {
        max_instances: 8,
        max_memory: 1 << 30,
        host_call_limit: Duration::from_millis(1500),
        ..SandboxConfig::default()
    })
    .unwrap();
    let grants = Grants {
        interfaces: [HostInterface::Tools].into(),
        time_limit: Some(Duration::from_millis(200)),
        ..Grants::default()
    };
    let c = load(&sb, "misbehave", grants);
    let slow = Arc::new(SlowTools {
        delay: Duration::from_millis(600),
    });
    let t = Instant::now();
    let out = c
        .invoke("relay", r#"{"target": "slow_tool"}"#, slow.clone())
        .unwrap_or_else(|e| panic!("a slow host call stopped the component: {e}"));
    assert_eq!(out, "slow_tool answered");
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );

    // Its own loop is still stopped at its limit.
    let t = Instant::now();
    let err = c.invoke("spin", "{}", slow).unwrap_err();
    assert!(
        matches!(err, SandboxError::Timeout { limit_ms: 200, .. }),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // A service that hangs: the call ends at the host-call limit, not never.
    let hung = Arc::new(SlowTools {
        delay: Duration::from_secs(30),
    });
    let t = Instant::now();
    let err = c
        .invoke("relay", r#"{"target": "hung_tool"}"#, hung)
        .unwrap_err();
    let took = t.elapsed();
    assert!(
        matches!(err, SandboxError::HostCallTimeout { limit_ms: 1500, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("tools.call"), "{err}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "{took:?}"
    );
}
