//! Crash safety of the redb store, with real processes.
//!
//! The parent re-runs this binary as a child (`ARKLINE_CRASH_CHILD=<data dir>`).
//! The child hammers the store with concurrent writers and prints one line per
//! acknowledged write, flushed. The parent SIGKILLs it at a random point, then
//! opens the store and checks that every acknowledged write is there. Rounds share
//! the data dir, so each round also recovers the previous round's crash.
//! (`harness = false`: this file is its own `main`.)

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use arkline::model::{API_VERSION, DynamicObject, ObjectMeta};
use arkline::store::{ListQuery, ObjectRef, RedbOptions, RedbStore, Retention, Store};

const CHILD_ENV: &str = "ARKLINE_CRASH_CHILD";
const ROUND_ENV: &str = "ARKLINE_CRASH_ROUND";
const ROUNDS: u32 = 20;
const WRITERS: usize = 24;

fn main() {
    match std::env::var(CHILD_ENV) {
        Ok(dir) => child(&dir),
        Err(_) => parent(),
    }
}

fn object(kind: &str, name: &str, n: u64) -> DynamicObject {
    DynamicObject {
        api_version: API_VERSION.into(),
        kind: kind.into(),
        metadata: ObjectMeta {
            name: name.into(),
            engine: "crash".into(),
            ..Default::default()
        },
        spec: serde_json::json!({ "n": n, "pad": "x".repeat(200) }),
        status: serde_json::Value::Null,
    }
}

fn ack(line: &str) {
    let mut out = std::io::stdout().lock();
    // The parent reads these; if the pipe is gone we are being killed anyway.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Writes until killed.
fn child(dir: &str) {
    let round: u32 = std::env::var(ROUND_ENV)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        // Small retention, so compaction runs while we are killed too; odd rounds
        // commit with quick repair, so both recovery paths are exercised.
        let options = RedbOptions::default()
            .retention(Retention::default().revisions(500))
            .quick_repair(round % 2 == 1);
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open_with(dir, options).expect("child opens the store"));
        ack("READY");
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let counter = ObjectRef::new("Counter", "crash", format!("w{w}"));
                for i in 0.. {
                    let name = format!("r{round}-w{w}-{i}");
                    store
                        .create(object("Item", &name, i))
                        .await
                        .expect("create");
                    ack(&format!("ITEM {name}"));
                    // A CAS update of this writer's counter.
                    let next = match store.get(&counter).await.expect("get") {
                        None => {
                            store
                                .create(object("Counter", &counter.name, 1))
                                .await
                                .expect("create counter");
                            1
                        }
                        Some(mut obj) => {
                            let n = obj.spec["n"].as_u64().expect("counter n") + 1;
                            obj.spec = object("Counter", &counter.name, n).spec;
                            store.update(obj).await.expect("update counter");
                            n
                        }
                    };
                    ack(&format!("COUNTER {} {next}", counter.name));
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer");
        }
    });
}

/// A small deterministic PRNG (xorshift64*), seeded per run and printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
    }
}

fn parent() {
    let seed = std::env::var("ARKLINE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("crash_safety: seed {seed} (rerun with ARKLINE_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("own executable");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    let mut items: Vec<String> = Vec::new();
    let mut counters: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..ROUNDS {
        let stderr_path = dir.path().join(format!("child-{round}.stderr"));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = Command::new(&exe)
            .env(CHILD_ENV, dir.path().join("data"))
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn child");
        let mut out = BufReader::new(child.stdout.take().expect("child stdout"));
        let kill_after = 1 + rng.next(600);
        let mut acks = 0u64;
        let mut killed = false;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = out.read_until(b'\n', &mut line).expect("read child stdout");
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                // A fragment cut by the kill was never fully acknowledged.
                break;
            }
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            let mut parts = text.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("ITEM"), Some(name), None) => items.push(name.to_string()),
                (Some("COUNTER"), Some(name), Some(n)) => {
                    let n: u64 = n.parse().expect("counter value");
                    let entry = counters.entry(name.to_string()).or_insert(0);
                    *entry = (*entry).max(n);
                }
                (Some("READY"), None, None) => continue,
                _ => continue,
            }
            acks += 1;
            if acks == kill_after && !killed {
                // std's Child::kill sends SIGKILL on Unix.
                child.kill().expect("SIGKILL the child");
                killed = true;
            }
        }
        let status = child.wait().expect("wait for child");
        assert!(
            killed,
            "round {round}: the child exited on its own ({status}) after {acks} acks; stderr:\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );

        // Reopen and check every acknowledged write.
        runtime.block_on(async {
            let store = RedbStore::open(dir.path().join("data")).unwrap_or_else(|e| {
                panic!("round {round}: the store does not open after SIGKILL: {e}")
            });
            let listed = store
                .list(&ListQuery::kind("Item").engine("crash"))
                .await
                .expect("list items");
            let present: std::collections::HashSet<_> =
                listed.items.iter().map(|o| o.metadata.name.clone()).collect();
            for name in &items {
                assert!(
                    present.contains(name),
                    "round {round}: acknowledged item {name} was lost (seed {seed})"
                );
            }
            for (name, acked) in &counters {
                let obj = store
                    .get(&ObjectRef::new("Counter", "crash", name))
                    .await
                    .expect("get counter")
                    .unwrap_or_else(|| panic!("round {round}: counter {name} lost"));
                let stored = obj.spec["n"].as_u64().expect("counter n");
                assert!(
                    stored >= *acked,
                    "round {round}: counter {name} is {stored} but {acked} was acknowledged (seed {seed})"
                );
            }
            let revision = store.revision().await.expect("revision");
            assert!(revision >= items.len() as u64);
            store.close().await.expect("close");
        });
        println!(
            "crash_safety: round {round}: killed after {acks} acks; {} items and {} counters intact",
            items.len(),
            counters.len()
        );
    }
    assert!(!items.is_empty());
    println!("crash_safety: ok ({ROUNDS} rounds)");
}
