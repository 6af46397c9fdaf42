//! Three real `keel controller` processes on loopback, driven the way an
//! operator would: policies committed through a follower, the leader killed
//! with SIGKILL, a new leader elected and still committing, the killed
//! replica restarted from its data folder and catching up; then a fourth
//! replica joins (3 -> 4) and one of the first leaves (4 -> 3). Nothing
//! committed is lost.

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
    fn new() -> Cluster {
        let dir = std::env::temp_dir().join(format!("keel-controllers-{}", std::process::id()));
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
        let child = keel()
            .arg("controller")
            .arg("--config")
            .arg(self.dir.join(format!("c{}.toml", i + 1)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.procs[i] = Some(child);
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
        let out = keel().arg("status").args(self.at(i)).output().ok()?;
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
    let mut c = Cluster::new();
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
    c.apply(3, "extra", "# after the shrink\n");
    for i in [1usize, 2, 3] {
        let s = c.wait(i, "applied everything", |s| versions(s) == 12);
        assert_eq!(s["members"], serde_json::json!([2, 3, 4]));
    }
    // A linearizable read from any replica sees every committed write at once.
    for i in [1usize, 2, 3] {
        let out = ok(keel().args(["status", "--consistent"]).args(c.at(i)));
        let s: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(versions(&s), 12, "replica {}: {s}", i + 1);
    }
}
