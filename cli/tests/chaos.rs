//! `keel chaos run --json` on its default scenario, as an operator runs
//! it: four network-namespace nodes, each with its `keel sensor`, three
//! controllers, a correlator host and an executor as real processes, a real
//! MPI job (Debian's OpenMPI and mpi4py) with one rank per node, and real
//! faults: a CPU quota on one rank's cgroup, injected as an operator would
//! with `keel chaos inject` (a ledger action carried out by the executor's
//! `[chaos]`, rolled back by the controller at its end), then `tbf` and
//! random TCP loss on another node's link. Every episode must be committed by the
//! controller while it lasts, with the right cause, half of them within
//! 2 s of the onset, nothing else committed, and nothing left on the
//! machine afterwards (namespaces, links, qdiscs, nftables tables, cgroups,
//! processes).
//!
//! Needs root, and the Debian packages openmpi-bin, python3-mpi4py,
//! python3-numpy, nftables and iproute2; without them it fails saying what
//! is missing.

mod support;

use serde_json::Value;
use support::keel;

#[test]
fn the_default_scenario_commits_every_real_fault_live_with_its_cause_and_leaves_nothing() {
    // One run at a time on this machine: the namespaces' names are fixed.
    let lock = std::fs::File::create("/tmp/keel-chaos-test.lock").unwrap();
    lock.lock().unwrap();
    let dir = std::env::temp_dir().join(format!("keel-chaos-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = keel()
        .args(["chaos", "run", "--json", "--dir"])
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "keel chaos run failed:\n{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)));

    // The shape of `keel eval --json`.
    for key in ["kinds", "overall", "unlocated"] {
        assert!(v.get(key).is_some(), "no {key}: {v}");
    }
    let episodes = v["chaos"]["episodes"].as_array().expect("episodes");
    let has = |kind: &str, cause: &str| {
        episodes
            .iter()
            .any(|e| e["label"]["kind"] == kind && e["label"]["cause"] == cause)
    };
    assert!(has("tp_straggler", "host"), "{episodes:?}");
    assert!(has("tp_straggler", "network"), "{episodes:?}");
    assert!(has("retransmit_storm", "network"), "{episodes:?}");
    assert!(
        v["chaos"]["dir"].as_str().is_some_and(|d| !d.is_empty()),
        "{v}"
    );

    // Every episode committed while it lasted (or just after), with the
    // cause of the fault that made it.
    for e in episodes {
        let l = &e["label"];
        assert_eq!(e["committed"], true, "not committed: {l}\n{v:#}\n{stderr}");
        assert_eq!(e["cause"], l["cause"], "wrong cause: {e}");
    }
    let overall = &v["overall"];
    assert_eq!(overall["detected"], overall["labels"], "{overall}");
    assert_eq!(
        overall["false_positives"], 0,
        "false alarms: {:#}",
        v["chaos"]["findings"]
    );
    assert_eq!(overall["cause_accuracy"].as_f64(), Some(1.0), "{overall}");
    let p50 = overall["latency_p50"].as_f64().expect("latency p50");
    assert!(p50 <= 2.0, "onset -> committed p50 {p50:.2} s: {v:#}");

    // The host fault went through the ledger: committed under the
    // operator's certificate, acknowledged by the executor, rolled back at
    // its end (the CPU quota really gone), and found by keel: a
    // tp_straggler of that rank, cause host, committed while it acted.
    let inj = v["chaos"]["injections"].as_array().expect("injections");
    assert_eq!(inj.len(), 1, "{inj:?}");
    let r = &inj[0];
    assert_eq!(r["status"], "rolled_back", "{r:#}");
    assert_eq!(r["params"]["cause"], "host", "{r:#}");
    // (A new leader may dispatch it again under the same key.)
    let mut steps: Vec<&str> = r["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["to"].as_str())
        .collect();
    steps.dedup();
    assert_eq!(
        steps,
        ["planned", "dispatched", "acknowledged", "rolled_back"],
        "{r:#}"
    );
    assert!(
        r["audit"][0]["by"]
            .as_str()
            .unwrap_or("")
            .starts_with("operator:op/"),
        "{r:#}"
    );
    let after = r["cpu_after_revert"].as_str().unwrap_or("");
    assert!(
        after.starts_with("max") || after == "-1",
        "quota left: {r:#}"
    );
    let f = &r["finding"];
    assert_eq!(f["kind"], "tp_straggler", "{r:#}");
    assert_eq!(f["cause"], "host", "{r:#}");
    assert_eq!(
        f["rank"].as_u64(),
        r["params"]["rank"].as_str().and_then(|x| x.parse().ok())
    );
    let opened = f["opened"].as_f64().unwrap();
    assert!(
        opened <= r["end"].as_f64().unwrap(),
        "found after its end: {r:#}"
    );

    // Nothing left: the harness checked, and so does the test.
    assert_eq!(v["chaos"]["leftovers"], Value::Array(vec![]), "{v:#}");
    let left = keel_chaos::testbed::leftovers();
    assert!(left.is_empty(), "left on the machine: {left:?}");
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains("kc-"),
        "namespaces left"
    );
    // No process of the run: every role's command line names its config in `dir`.
    let needle = dir.display().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        assert!(!cmd.contains(&needle), "process {pid} left: {cmd}");
    }
    // What an operator keeps: labels and the committed findings.
    for f in ["labels.jsonl", "findings.jsonl"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(!text.trim().is_empty(), "{f} is empty");
    }
    if std::env::var_os("KEEL_KEEP_TEST_DIR").is_none() {
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// Where the machine lacks them, the GPU run names each missing piece and
/// starts nothing.
#[test]
fn the_gpu_scenario_refuses_naming_what_the_machine_lacks() {
    let has_gpu = std::process::Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
    if has_gpu {
        eprintln!("a GPU is here: the refusal is not what happens");
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["chaos", "run", "gpu"])
        .env("KEEL_PYTHON", "python3")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("scenario gpu cannot run on this machine"),
        "{err}"
    );
    assert!(err.contains("GPUs: 0 found"), "{err}");
}
