//! Three real `keel controller` processes on loopback, driven the way an
//! operator would: policies committed through a follower, the leader killed
//! with SIGKILL, a new leader elected and still committing, the killed
//! replica restarted from its data folder and catching up; then a fourth
//! replica joins (3 -> 4) and one of the first leaves (4 -> 3). Nothing
//! committed is lost. And a state larger than a frame: thousands of jobs
//! registered from one file, a replica joining it (its snapshot arrives in
//! chunks) with the same state digest, then stopped with SIGTERM.

mod support;

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use support::{free_port, keel, ok};

struct Cluster {
    dir: PathBuf,
    ports: Vec<u16>,
    procs: Vec<Option<Child>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().flatten() {
            let _ = p.kill();
            let _ = p.wait();
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

impl Cluster {
    fn new(tag: &str) -> Cluster {
        let dir =
            std::env::temp_dir().join(format!("keel-controllers-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ok(keel().args(["cert", "init", "--out"]).arg(dir.join("ca")));
        for name in ["c1", "c2", "c3", "c4"] {
            ok(keel()
                .args([
                    "cert",
                    "issue",
                    "--role",
                    "controller",
                    "--name",
                    name,
                    "--ca",
                ])
                .arg(dir.join("ca"))
                .arg("--out")
                .arg(dir.join(name)));
        }
        ok(keel()
            .args([
                "cert", "issue", "--role", "operator", "--name", "op", "--ca",
            ])
            .arg(dir.join("ca"))
            .arg("--out")
            .arg(dir.join("op")));
        let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
        for i in 0..4 {
            let mut cfg = format!(
                "id = {}\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\ncredentials = \"{}\"\n",
                i + 1,
                ports[i],
                dir.join(format!("data{}", i + 1)).display(),
                dir.join(format!("c{}", i + 1)).display()
            );
            if i == 3 {
                cfg += "join = true\n";
            }
            for j in (0..3).filter(|&j| j != i) {
                cfg += &format!(
                    "[[peers]]\nid = {}\naddr = \"127.0.0.1:{}\"\nname = \"c{}\"\n",
                    j + 1,
                    ports[j],
                    j + 1
                );
            }
            std::fs::write(dir.join(format!("c{}.toml", i + 1)), cfg).unwrap();
        }
        let mut c = Cluster {
            dir,
            ports,
            procs: vec![None, None, None, None],
        };
        for i in 0..3 {
            c.start(i);
        }
        c
    }

    fn start(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(i))
            .unwrap();
        let child = keel()
            .arg("controller")
            .arg("--config")
            .arg(self.dir.join(format!("c{}.toml", i + 1)))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs[i] = Some(child);
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("c{}.log", i + 1))
    }

    fn at(&self, i: usize) -> Vec<String> {
        vec![
            "--controller".into(),
            format!("127.0.0.1:{}", self.ports[i]),
            "--name".into(),
            format!("c{}", i + 1),
            "--credentials".into(),
            self.dir.join("op").display().to_string(),
        ]
    }

    fn status(&self, i: usize) -> Option<Value> {
        let out = keel()
            .args(["status", "--json"])
            .args(self.at(i))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())?
    }

    /// Polls until `f` holds for replica `i`'s status (a generous bound,
    /// only so that a broken cluster fails instead of hanging).
    fn wait(&self, i: usize, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(s) = self.status(i) {
                if f(&s) {
                    return s;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "replica {} never {what}",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn apply(&self, i: usize, name: &str, text: &str) {
        let file = self.dir.join(format!("{name}.toml"));
        std::fs::write(&file, text).unwrap();
        ok(keel().args(["policy", "apply"]).arg(&file).args(self.at(i)));
    }
}

fn versions(s: &Value) -> u64 {
    s["policies"]
        .as_object()
        .map_or(0, |m| m.values().map(|v| v.as_u64().unwrap()).sum())
}

#[test]
fn a_killed_leader_loses_nothing_and_its_restart_catches_up() {
    let mut c = Cluster::new("kill");
    let s = c.wait(0, "saw a leader", |s| {
        s["leader"].as_u64().unwrap_or(0) != 0
    });
    let leader = s["leader"].as_u64().unwrap() as usize - 1;
    let follower = (leader + 1) % 3;
    for v in 0..5 {
        c.apply(follower, "default", &format!("# version {v}\n"));
    }

    // SIGKILL: no goodbye, no flush.
    let mut p = c.procs[leader].take().unwrap();
    p.kill().unwrap();
    p.wait().unwrap();
    let old_term = s["term"].as_u64().unwrap();
    let s = c.wait(follower, "elected a new leader", |s| {
        let l = s["leader"].as_u64().unwrap_or(0);
        l != 0 && l as usize - 1 != leader && s["term"].as_u64().unwrap() > old_term
    });
    assert_eq!(versions(&s), 5, "nothing committed was lost: {s}");
    for v in 5..10 {
        c.apply(follower, "default", &format!("# version {v}\n"));
    }

    // `keel pause` is committed: every replica, the next leader's included,
    // reads it with who and why; `keel resume` clears it.
    ok(keel()
        .args(["pause", "--reason", "maintenance window"])
        .args(c.at(follower)));
    for i in [follower, (follower + 1) % 3] {
        let s = c.wait(i, "saw the pause", |s| !s["paused"].is_null());
        assert_eq!(s["paused"]["reason"], "maintenance window", "{s}");
    }
    ok(keel().arg("resume").args(c.at(follower)));
    c.wait(follower, "saw the resume", |s| s["paused"].is_null());

    c.start(leader);
    let restarted = c.wait(leader, "caught up", |s| versions(s) == 10);
    for i in 0..3 {
        let s = c.wait(i, "applied everything", |s| versions(s) == 10);
        assert_eq!(s["policies"], restarted["policies"]);
        assert_eq!(s["members"], serde_json::json!([1, 2, 3]));
    }

    // 3 -> 4: a new replica joins and catches up from the leader's snapshot.
    c.start(3);
    let addr = format!("127.0.0.1:{}", c.ports[3]);
    ok(keel()
        .args([
            "controller",
            "join",
            "--id",
            "4",
            "--addr",
            &addr,
            "--member-name",
            "c4",
        ])
        .args(c.at(follower)));
    let four = c.wait(3, "joined and caught up", |s| {
        versions(s) == 10 && s["members"] == serde_json::json!([1, 2, 3, 4])
    });
    assert_eq!(four["policies"], restarted["policies"]);
    c.apply(follower, "extra", "# committed after the newcomer joined\n");
    c.wait(3, "applied the newcomer's first write", |s| {
        versions(s) == 11
    });

    // 4 -> 3: replica 1 leaves; the rest go on committing.
    ok(keel()
        .args(["controller", "leave", "--id", "1"])
        .args(c.at(3)));
    for i in [1usize, 2, 3] {
        c.wait(i, "saw replica 1 leave", |s| {
            s["members"] == serde_json::json!([2, 3, 4])
        });
    }
    // The removed replica stops by itself, cleanly.
    let mut gone = c.procs[0].take().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = gone.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the removed replica never stopped"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "a removed replica exits 0: {status}");
    c.apply(3, "extra", "# after the shrink\n");
    for i in [1usize, 2, 3] {
        let s = c.wait(i, "applied everything", |s| versions(s) == 12);
        assert_eq!(s["members"], serde_json::json!([2, 3, 4]));
    }
    // A linearizable read from any replica sees every committed write at once.
    for i in [1usize, 2, 3] {
        let out = ok(keel()
            .args(["status", "--consistent", "--json"])
            .args(c.at(i)));
        let s: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(versions(&s), 12, "replica {}: {s}", i + 1);
    }
}

/// A job of `ranks` ranks over nodes of 8, as one line of a `--file`.
fn job_line(i: usize, ranks: u32) -> String {
    let mut record = serde_json::json!({
        "ts": 1.0 + i as f64,
        "job": format!("a-job-with-a-rather-long-name-{i:06}"),
        "state": "RUNNING",
        "nodes": [],
        "ranks": {},
        "gpus": {},
    });
    for r in 0..ranks {
        let node = format!("node-{:04}", (i * 3 + (r / 8) as usize) % 1024);
        if r % 8 == 0 {
            record["nodes"]
                .as_array_mut()
                .unwrap()
                .push(node.clone().into());
            record["ranks"][&node] = serde_json::json!([]);
        }
        record["ranks"][&node]
            .as_array_mut()
            .unwrap()
            .push(r.into());
        record["gpus"][r.to_string()] = (r % 8).into();
    }
    record.to_string()
}

#[test]
fn a_large_state_reaches_a_joining_replica_in_chunks() {
    let mut c = Cluster::new("large");
    let s = c.wait(0, "saw a leader", |s| {
        s["leader"].as_u64().unwrap_or(0) != 0
    });
    let leader = s["leader"].as_u64().unwrap() as usize - 1;

    // A record that cannot be applied (too large a proposal) is an error
    // naming its line; the others of the file are applied.
    let file = c.dir.join("bad.jsonl");
    let huge = job_line(999_999, 8).replace(
        "\"RUNNING\"",
        &format!("\"RUNNING\",\"tenant\":\"{}\"", "x".repeat(300_000)),
    );
    std::fs::write(&file, format!("{}\n{huge}\n", job_line(999_998, 8))).unwrap();
    let out = keel()
        .args(["job", "register", "--file"])
        .arg(&file)
        .args(c.at(0))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("bad.jsonl:2:") && err.contains("too large"),
        "{err}"
    );
    assert!(!err.contains("bad.jsonl:1:"), "{err}");

    // Thousands of jobs from one process, one session: every one applied.
    let n = 3_000;
    let lines: Vec<String> = (0..n).map(|i| job_line(i, 64)).collect();
    let file = c.dir.join("jobs.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    ok(keel()
        .args(["job", "register", "--file"])
        .arg(&file)
        .args(c.at((leader + 1) % 3)));
    for i in 0..3 {
        c.wait(i, "applied every job", |s| s["jobs"] == n as u64 + 1);
    }
    let one = ok(keel()
        .args([
            "jobs",
            "--json",
            "--job",
            "a-job-with-a-rather-long-name-000017",
        ])
        .args(c.at(0)));
    let one: Value = serde_json::from_str(&one).unwrap();
    assert_eq!(one[0]["ranks"].as_object().unwrap().len(), 8, "{one}");
    let all = ok(keel().args(["jobs", "--json"]).args(c.at(1)));
    let all: Value = serde_json::from_str(&all).unwrap();
    assert_eq!(all.as_array().unwrap().len(), n + 1, "every page fetched");

    // A newcomer gets the whole state (several MiB) as one snapshot, in
    // chunks, and ends with the same digest.
    c.start(3);
    let addr = format!("127.0.0.1:{}", c.ports[3]);
    ok(keel()
        .args([
            "controller",
            "join",
            "--id",
            "4",
            "--addr",
            &addr,
            "--member-name",
            "c4",
        ])
        .args(c.at(0)));
    let four = c.wait(3, "joined and caught up", |s| {
        s["jobs"] == n as u64 + 1 && s["members"] == serde_json::json!([1, 2, 3, 4])
    });
    for i in 0..3 {
        let s = c.wait(i, "reached the newcomer's index", |s| {
            s["applied"] == four["applied"]
        });
        assert_eq!(
            s["digest"],
            four["digest"],
            "replica {}: {s}\n{four}",
            i + 1
        );
    }
    let sent = (0..3).any(|i| {
        std::fs::read_to_string(c.log(i))
            .unwrap_or_default()
            .contains("sending a raft message in chunks")
    });
    assert!(sent, "no snapshot was sent in chunks");
    let got = std::fs::read_to_string(c.log(3)).unwrap();
    assert!(got.contains("large raft message received whole"), "{got}");
    let findings = ok(keel().args(["findings", "--json"]).args(c.at(3)));
    assert_eq!(findings.trim(), "[]");
    let actions = ok(keel()
        .args(["actions", "--json", "--since", "1h"])
        .args(c.at(3)));
    let actions: Value = serde_json::from_str(&actions).unwrap();
    assert!(actions["ledger"].is_array(), "{actions}");

    // SIGTERM: the replica finishes what it holds and exits 0.
    let mut p = c.procs[3].take().unwrap();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &p.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let start = Instant::now();
    let status = loop {
        if let Some(st) = p.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "SIGTERM did not stop the replica"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit after SIGTERM: {status}");
}
