//! The `[chaos]` executor: applies, reverts (rollback, deadline, exit,
//! restart) and refuses with reasons.

use super::*;

fn exec(dir: &Path) -> ChaosExecutor {
    let mut nodes = BTreeMap::new();
    nodes.insert(
        "n02".to_string(),
        ChaosNode {
            cgroup: Some(dir.join("cg")),
            ..Default::default()
        },
    );
    ChaosExecutor::new(
        ChaosConfig {
            nodes,
            max_s: 600.0,
            host_cpu_share: 0.1,
            net_rate: net_rate(),
        },
        Some(dir),
    )
}

fn cmd(target: &str, cause: &str, dur: &str) -> ExecCommand {
    ExecCommand::new(Action::InjectFault, target, "chaos/k1")
        .param("cause", cause)
        .param("duration_s", dur)
}

#[test]
fn a_host_fault_throttles_the_cgroup_and_every_revert_puts_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let cg = dir.path().join("cg");
    std::fs::create_dir_all(&cg).unwrap();
    std::fs::write(cg.join("cpu.max"), "max 100000\n").unwrap();
    let mut e = exec(dir.path());
    let a = e.apply(&cmd("node/n02", "host", "30")).unwrap();
    assert_eq!(a.outcome, Outcome::Done, "{a}");
    assert_eq!(
        std::fs::read_to_string(cg.join("cpu.max")).unwrap(),
        "1000 10000"
    );
    assert_eq!(
        e.apply(&cmd("node/n02", "host", "30")).unwrap().outcome,
        Outcome::AlreadyDone
    );
    let r = e.rollback(&cmd("node/n02", "host", "30")).unwrap();
    assert_eq!(r.outcome, Outcome::RolledBack, "{r}");
    assert_eq!(
        std::fs::read_to_string(cg.join("cpu.max")).unwrap(),
        "max 100000"
    );
    let again = e.rollback(&cmd("node/n02", "host", "30")).unwrap();
    assert_eq!(again.outcome, Outcome::AlreadyDone);

    // At its deadline, with no rollback.
    let mut k2 = cmd("node/n02", "host", "0.3");
    k2.idempotency_key = "chaos/k2".into();
    e.apply(&k2).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        std::fs::read_to_string(cg.join("cpu.max")).unwrap(),
        "max 100000"
    );
    assert!(e.rollback(&k2).unwrap().detail.contains("deadline"));

    // When the executor stops.
    let mut k3 = cmd("node/n02", "host", "60");
    k3.idempotency_key = "chaos/k3".into();
    e.apply(&k3).unwrap();
    drop(e);
    assert_eq!(
        std::fs::read_to_string(cg.join("cpu.max")).unwrap(),
        "max 100000"
    );
}

#[test]
fn a_fault_left_by_a_killed_executor_is_reverted_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let cg = dir.path().join("cg");
    std::fs::create_dir_all(&cg).unwrap();
    std::fs::write(cg.join("cpu.max"), "max 100000").unwrap();
    let mut e = exec(dir.path());
    e.apply(&cmd("node/n02", "host", "60")).unwrap();
    std::mem::forget(e); // a SIGKILL: no Drop
    assert_eq!(
        std::fs::read_to_string(cg.join("cpu.max")).unwrap(),
        "1000 10000"
    );
    let _e = exec(dir.path());
    assert_eq!(
        std::fs::read_to_string(cg.join("cpu.max")).unwrap(),
        "max 100000"
    );
}

#[test]
fn injections_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = exec(dir.path());
    let why = |r: Result<Applied, ExecError>| r.unwrap_err().to_string();
    assert!(why(e.apply(&cmd("node/n01", "host", "5"))).contains("not open to chaos"));
    assert!(why(e.apply(&cmd("node/n02", "host", "601"))).contains("at most"));
    assert!(why(e.apply(&cmd("node/n02", "gpu", "5"))).contains("needs a GPU"));
    // The cgroup is checked where it lives, now: none here.
    assert!(why(e.apply(&cmd("node/n02", "host", "5"))).contains("checked now"));
    assert!(why(e.apply(&cmd("node/n02", "network", "5"))).contains("no `link`"));
    // Nothing applied: its rollback has nothing to do, and says so.
    let r = e.rollback(&cmd("node/n02", "host", "5")).unwrap();
    assert!(r.detail.contains("nothing to revert"), "{r}");
}

/// A `network` fault on a real link (a veth in a namespace of its own):
/// the `tbf` is there while it acts and gone after the rollback; a root
/// qdisc already there is left alone. Root only (skipped otherwise).
#[test]
fn a_network_fault_shapes_the_link_and_its_rollback_removes_it() {
    let ip = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let ns = format!("keel-exec-test-{}", std::process::id());
    if !ip(&["netns", "add", &ns]) {
        eprintln!("skipped: needs root and iproute2 (ip netns add failed)");
        return;
    }
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _gone = Gone(ns.clone());
    // A veth pair (the dummy driver is not everywhere).
    assert!(ip(&[
        "-n", &ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1"
    ]));
    assert!(ip(&["-n", &ns, "link", "set", "d0", "up"]));
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = BTreeMap::new();
    nodes.insert(
        "n02".to_string(),
        ChaosNode {
            link: Some("d0".into()),
            netns: Some(ns.clone()),
            ..Default::default()
        },
    );
    let mut e = ChaosExecutor::new(
        ChaosConfig {
            nodes,
            max_s: 600.0,
            host_cpu_share: 0.1,
            net_rate: net_rate(),
        },
        Some(dir.path()),
    );
    let qdisc = || {
        let o = Command::new("ip")
            .args(["netns", "exec", &ns, "tc", "qdisc", "show", "dev", "d0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let a = e.apply(&cmd("node/n02", "network", "30")).unwrap();
    assert!(a.detail.contains("tbf 100mbit"), "{a}");
    assert!(qdisc().contains("tbf"), "{}", qdisc());
    // A second fault on the same link finds the root qdisc taken.
    let mut k2 = cmd("node/n02", "network", "30");
    k2.idempotency_key = "chaos/k2".into();
    let why = e.apply(&k2).unwrap_err().to_string();
    assert!(why.contains("tc qdisc add"), "{why}");
    let r = e.rollback(&cmd("node/n02", "network", "30")).unwrap();
    assert_eq!(r.outcome, Outcome::RolledBack, "{r}");
    assert!(!qdisc().contains("tbf"), "{}", qdisc());
}
