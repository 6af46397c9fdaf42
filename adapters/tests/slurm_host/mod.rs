//! The one-node Slurm on this host that the executor tests share: munge,
//! slurmctld and slurmd, configured and started by
//! `tests/setup/slurm-one-node.sh`, and the helpers the tests drive it with.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(90);

pub fn setup_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/setup/slurm-one-node.sh")
}

pub fn sh(program: &str, args: &[&str]) -> (bool, String, String) {
    match Command::new(program).args(args).env("LC_ALL", "C").output() {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ),
        Err(e) => panic!("cannot run {program}: {e} (install slurm-wlm and munge: apt-get install -y slurm-wlm munge)"),
    }
}

pub fn require_root() {
    let (_, uid, _) = sh("id", &["-u"]);
    assert_eq!(
        uid.trim(),
        "0",
        "this test starts munged, slurmctld and slurmd and writes /etc/slurm: it needs root, and this machine runs it as uid {}",
        uid.trim()
    );
}

/// Until `f` says yes, or fail with what it last saw.
pub fn wait_for(what: &str, mut f: impl FnMut() -> (bool, String)) {
    let end = Instant::now() + DEADLINE;
    loop {
        let (ok, seen) = f();
        if ok {
            return;
        }
        assert!(
            Instant::now() < end,
            "{what}: not after {DEADLINE:?}; last seen: {seen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Cleans up however the test ends: cancels its jobs, gives the node back,
/// stops the daemons the setup started, and drops the lock.
pub struct Cluster {
    pub node: String,
    pub jobs: Vec<u64>,
    started: Vec<String>,
    _lock: std::fs::File,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for j in &self.jobs {
            let _ = Command::new("scancel").arg(j.to_string()).output();
        }
        let (_, state, _) = sh("scontrol", &["show", "node", "-o", &self.node]);
        if state.contains("DRAIN") {
            let _ = Command::new("scontrol")
                .args(["update", &format!("NodeName={}", self.node), "State=RESUME"])
                .output();
        }
        if !self.started.is_empty() {
            let mut args = vec![setup_script().display().to_string(), "stop".into()];
            args.extend(self.started.iter().cloned());
            let _ = Command::new("sh").args(&args).output();
        }
    }
}

pub fn start() -> Cluster {
    require_root();
    let lock = std::fs::File::create("/tmp/keel-slurm-test.lock")
        .expect("creating /tmp/keel-slurm-test.lock");
    lock.lock().expect("locking /tmp/keel-slurm-test.lock");
    let script = setup_script();
    let (ok, out, err) = sh("sh", &[&script.display().to_string(), "start"]);
    assert!(ok, "{} failed:\n{out}{err}", script.display());
    let started = out
        .lines()
        .find_map(|l| l.strip_prefix("started:"))
        .unwrap_or("")
        .split_whitespace()
        .map(String::from)
        .collect();
    let (_, node, _) = sh("hostname", &["-s"]);
    Cluster {
        node: node.trim().to_string(),
        jobs: Vec::new(),
        started,
        _lock: lock,
    }
}
