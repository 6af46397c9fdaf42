//! Durability of the controller, end to end, with three real
//! `keel controller` processes on loopback:
//!
//! 1. a policy (`deploy/policies/default.toml`) and 25,500 jobs committed
//!    from one operator certificate in one `keel job register --file` run
//!    (more than two compactions: the controller snapshots every 10,000
//!    entries); every job acknowledged is in every replica's state;
//! 2. each replica in turn SIGKILLed and restarted. While the first is down
//!    10,500 more jobs are committed, so that it is behind a compaction and
//!    must catch up from a snapshot; each restarted replica reports the
//!    cluster's state digest at the cluster's applied index;
//! 3. all three stopped (SIGTERM: each exits 0) and started again: every
//!    replica reports the same digest at the same applied index as before
//!    the stop;
//! 4. the state grown past 4 MiB, and a fourth replica joined with
//!    `keel controller join`: it catches up and reports the same digest;
//!    `keel findings` and `keel actions` still answer.
//!
//! Nothing waits longer than it must: every wait polls `keel status`, with a
//! generous limit that only bounds a failing run.

mod support;

use keel_model::{JobRecord, JobState, Name};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{wait_every, Cluster};

/// Jobs committed in the first run: entries enough for two compactions and more.
const JOBS: usize = 25_500;
/// Jobs committed while the first replica is down: more than the
/// controller keeps behind its snapshot (`COMPACT_KEEP`, 10,000).
const WHILE_DOWN: usize = 10_500;
/// Jobs committed while each other replica is down.
const WHILE_DOWN_SMALL: usize = 200;
/// Large jobs that grow the state past `STATE_BYTES`.
const BIG_JOBS: usize = 700;
/// Nodes per large job, and the length of each node's name.
const BIG_NODES: usize = 16;
const BIG_NAME_LEN: usize = 400;
/// The state size the last step must exceed.
const STATE_BYTES: usize = 4 << 20;
/// Bounds a failing run only.
const LIMIT: Duration = Duration::from_secs(180);
const POLL: Duration = Duration::from_millis(100);

/// One replica's `(applied, digest)`, as `keel status` reports them.
type View = (u64, String);

fn view(s: &Value) -> Option<View> {
    Some((s["applied"].as_u64()?, s["digest"].as_str()?.to_string()))
}

/// Jobs in a replica's state: `keel status` lists them or counts them.
fn jobs(s: &Value) -> Option<u64> {
    match &s["jobs"] {
        Value::Array(a) => Some(a.len() as u64),
        Value::Number(n) => n.as_u64(),
        Value::Object(o) => o.get("total").and_then(Value::as_u64),
        _ => None,
    }
}

/// Versions of every policy the replica holds.
fn versions(s: &Value) -> u64 {
    s["policies"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

fn members(s: &Value) -> Vec<u64> {
    s["members"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

/// A running job of 8 ranks on one of 1,024 nodes.
fn small_job(i: usize) -> JobRecord {
    let mut r = JobRecord::state_only(&format!("j{i}"), JobState::Running, 1.8e9);
    let node: Name = format!("n{}", i % 1024).as_str().into();
    r.nodes.push(node.clone());
    r.ranks.insert(node, (0..8).collect());
    r.gpus = (0..8).map(|k| (k, k)).collect();
    r.tp = Some(8);
    r
}

/// A running job of 8 ranks on each of `BIG_NODES` nodes with long names.
fn big_job(i: usize) -> JobRecord {
    let mut r = JobRecord::state_only(&format!("big{i}"), JobState::Running, 1.8e9);
    for n in 0..BIG_NODES {
        let prefix = format!("node-{i}-{n}-");
        let name = format!("{prefix}{}", "x".repeat(BIG_NAME_LEN - prefix.len()));
        let node: Name = name.as_str().into();
        let first = (n * 8) as u32;
        r.nodes.push(node.clone());
        r.ranks.insert(node, (first..first + 8).collect());
    }
    r.gpus = (0..(BIG_NODES * 8) as u32).map(|k| (k, k % 8)).collect();
    r.tp = Some(8);
    r.pp = Some(BIG_NODES as u32);
    r
}

/// Writes the records as JSON Lines (what `keel job register --file` reads).
fn write_jobs(path: &Path, records: impl Iterator<Item = JobRecord>) {
    let mut text = String::new();
    for r in records {
        text += &serde_json::to_string(&r).unwrap();
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

struct Test {
    c: Cluster,
    /// Jobs acknowledged so far (each a distinct job).
    jobs: u64,
    /// Their names.
    names: BTreeSet<String>,
    files: usize,
}

impl Test {
    fn fail(&self, what: &str) -> ! {
        panic!("{what}\n{}", self.c.logs())
    }

    fn status(&self, i: usize) -> Option<Value> {
        self.c.ask(i, &["status", "--json"])
    }

    /// A leader among `alive` that one of them names.
    fn leader(&self, alive: &[usize]) -> usize {
        wait_every(LIMIT, POLL, || {
            let l = self.c.leader(alive)? as usize - 1;
            alive.contains(&l).then_some(l)
        })
        .unwrap_or_else(|| self.fail(&format!("no leader among {alive:?}")))
    }

    /// Registers `records` through replica `via` in one CLI run; every line
    /// must be acknowledged.
    fn register(&mut self, via: usize, records: Vec<JobRecord>) {
        self.files += 1;
        let path: PathBuf = self.c.dir.join(format!("jobs-{}.jsonl", self.files));
        let n = records.len() as u64;
        let names: Vec<String> = records.iter().map(|r| r.job.to_string()).collect();
        write_jobs(&path, records.into_iter());
        let t = Instant::now();
        let (ok, _, err) = self
            .c
            .run_at(via, &["job", "register", "--file", path.to_str().unwrap()]);
        if !ok {
            self.fail(&format!(
                "keel job register --file ({n} jobs) through ctl-{} failed: {err}",
                via + 1
            ));
        }
        self.jobs += n;
        self.names.extend(names);
        eprintln!(
            "{n} jobs registered through ctl-{} in {:.1} s",
            via + 1,
            t.elapsed().as_secs_f64()
        );
    }

    /// Every acknowledged job, by name, in what replica `i` lists (`keel jobs`).
    fn all_listed(&self, i: usize) {
        let (ok, out, err) = self.c.run_at(i, &["jobs", "--json"]);
        assert!(ok, "keel jobs on ctl-{}: {err}", i + 1);
        let jobs: Vec<Value> = serde_json::from_str(&out).expect("keel jobs prints a JSON array");
        let listed: BTreeSet<String> = jobs
            .iter()
            .filter_map(|j| j["job"].as_str().map(String::from))
            .collect();
        let missing: Vec<&String> = self.names.difference(&listed).take(5).collect();
        assert!(
            missing.is_empty() && listed.len() == self.names.len(),
            "ctl-{} lists {} jobs, {} acknowledged; missing e.g. {missing:?}",
            i + 1,
            listed.len(),
            self.names.len()
        );
    }

    /// Waits until replicas `idx` report one applied index and one digest,
    /// with every acknowledged job and the policy; returns that view.
    fn agreed(&self, idx: &[usize], what: &str) -> View {
        let mut last = Vec::new();
        wait_every(LIMIT, POLL, || {
            last = idx.iter().map(|&i| self.status(i)).collect::<Vec<_>>();
            let views: Vec<View> = last.iter().map(|s| view(s.as_ref()?)).collect::<Option<_>>()?;
            let all_in = last.iter().flatten().all(|s| {
                jobs(s) == Some(self.jobs) && versions(s) == 1
            });
            (all_in && views.windows(2).all(|w| w[0] == w[1])).then(|| views[0].clone())
        })
        .unwrap_or_else(|| {
            let seen: Vec<String> = last
                .iter()
                .map(|s| match s {
                    Some(s) => format!(
                        "applied {} digest {} jobs {:?} policies {}",
                        s["applied"],
                        s["digest"],
                        jobs(s),
                        s["policies"]
                    ),
                    None => "no answer".into(),
                })
                .collect();
            self.fail(&format!(
                "replicas {idx:?} never agreed {what} (expected {} jobs, 1 policy version): {seen:#?}",
                self.jobs
            ))
        })
    }

    /// Waits until replica `i` reports exactly `want`; an applied index past
    /// it is a failure at once (nothing was committed meanwhile).
    fn reaches(&mut self, i: usize, want: &View, what: &str) {
        let mut last = None;
        let mut exit = None;
        let name = format!("ctl-{}", i + 1);
        let got = wait_every(LIMIT, POLL, || {
            if let Some(e) = self.c.exited(&name) {
                exit = Some(e);
                return Some(None);
            }
            let s = self.status(i)?;
            let v = view(&s)?;
            last = Some(s.clone());
            (v.0 >= want.0).then_some(Some((v, s)))
        });
        if let Some(e) = exit {
            self.fail(&format!("{name} exited ({e}) before it {what}"));
        }
        match got.flatten() {
            Some((v, s)) if &v == want => {
                assert_eq!(jobs(&s), Some(self.jobs), "ctl-{} {what}: {s}", i + 1);
                assert_eq!(versions(&s), 1, "ctl-{} {what}: {s}", i + 1);
            }
            Some((v, _)) => self.fail(&format!(
                "ctl-{} {what}: reports applied {} digest {}, the cluster had applied {} digest {}",
                i + 1,
                v.0,
                v.1,
                want.0,
                want.1
            )),
            None => self.fail(&format!(
                "ctl-{} never {what} (applied {}, digest {}); last status: {last:?}",
                i + 1,
                want.0,
                want.1
            )),
        }
    }
}

#[test]
fn every_acknowledged_entry_survives_kills_restarts_and_a_join() {
    let dir = std::env::temp_dir().join(format!("keel-durability-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut t = Test {
        c: Cluster::start(&dir, 3),
        jobs: 0,
        names: BTreeSet::new(),
        files: 0,
    };
    let all = [0usize, 1, 2];
    let leader = t.leader(&all);

    // 1. A policy, then 25,500 jobs from one certificate, one session.
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policies/default.toml");
    let (ok, _, err) =
        t.c.run_at(leader, &["policy", "apply", policy.to_str().unwrap()]);
    assert!(ok, "keel policy apply: {err}");
    t.register(leader, (0..JOBS).map(small_job).collect());
    let mut before = t.agreed(&all, "on the first 25,500 jobs");
    assert!(
        before.0 >= JOBS as u64,
        "applied {} < {JOBS}: fewer entries than jobs",
        before.0
    );
    eprintln!("all three at applied {} digest {}", before.0, before.1);

    // 2. Each replica SIGKILLed and restarted in turn; the cluster commits
    // while it is down.
    let mut next = JOBS;
    for i in all {
        let name = format!("ctl-{}", i + 1);
        t.c.kill(&name);
        let alive: Vec<usize> = all.iter().copied().filter(|&j| j != i).collect();
        let l = t.leader(&alive);
        let n = if i == 0 { WHILE_DOWN } else { WHILE_DOWN_SMALL };
        t.register(l, (next..next + n).map(small_job).collect());
        next += n;
        before = t.agreed(&alive, &format!("while {name} was down"));
        t.c.restart(&name, "controller");
        t.reaches(i, &before, "caught up after its SIGKILL");
        eprintln!(
            "{name} restarted and caught up: applied {} digest {}",
            before.0, before.1
        );
    }
    assert_eq!(t.agreed(&all, "after the restarts"), before);

    // 3. All three stopped and started again: the same state at the same index.
    for i in all {
        let name = format!("ctl-{}", i + 1);
        let exit = t.c.terminate(&name);
        if !exit.success() {
            t.fail(&format!("{name} did not exit 0 on SIGTERM: {exit}"));
        }
    }
    for i in all {
        t.c.restart(&format!("ctl-{}", i + 1), "controller");
    }
    for i in all {
        t.reaches(i, &before, "restored its state after a full stop");
    }
    t.all_listed(0);
    eprintln!(
        "full stop and start: all three at applied {} digest {}, every job listed",
        before.0, before.1
    );

    // 4. The state past 4 MiB, then a fourth replica joins and catches up.
    let big: Vec<JobRecord> = (0..BIG_JOBS).map(big_job).collect();
    let names: usize = big
        .iter()
        .map(|r| r.job.len() + r.nodes.iter().map(|n| n.len()).sum::<usize>())
        .sum();
    assert!(
        names > STATE_BYTES,
        "the large jobs' names alone ({names} bytes) must exceed {STATE_BYTES}"
    );
    let l = t.leader(&all);
    t.register(l, big);
    let grown = t.agreed(&all, "on the large jobs");
    let joiner = t.c.start_joiner();
    let args = t.c.join_args(joiner, l);
    let out = support::keel().args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "keel controller join: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let four = [0usize, 1, 2, joiner];
    let joined = t.agreed(&four, "after the fourth replica joined");
    assert!(joined.0 > grown.0, "the membership change is an entry");
    for i in four {
        let s = t.status(i).unwrap();
        assert_eq!(members(&s), vec![1, 2, 3, 4], "ctl-{}: {s}", i + 1);
    }
    eprintln!(
        "ctl-4 joined and caught up: applied {} digest {}",
        joined.0, joined.1
    );

    t.all_listed(joiner);

    // The operator's other questions still answer, on the newcomer too.
    for i in [joiner, l] {
        for args in [&["findings", "--json"][..], &["actions", "--json"][..]] {
            let (ok, out, err) = t.c.run_at(i, args);
            assert!(ok, "keel {} on ctl-{}: {err}", args.join(" "), i + 1);
            assert!(
                !out.trim().is_empty(),
                "keel {} printed nothing",
                args.join(" ")
            );
        }
    }
}
