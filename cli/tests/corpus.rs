//! The detection bar of `docs/detection.md`, checked on every run: the whole
//! generated corpus is replayed and scored, and each kind must meet it.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn keel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keel"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("keel-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn the_corpus_meets_the_detection_bar() {
    let dir = tmp("corpus");
    let gen = keel()
        .args(["chaos", "corpus", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let scenarios = std::fs::read_dir(&dir).unwrap().count();
    assert!(scenarios >= 20, "{scenarios} scenarios");

    let out = keel()
        .args(["eval", "--json", "--per-trace", "--corpus"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let overall = &v["overall"];
    assert!(overall["labels"].as_u64().unwrap() >= 40, "{overall}");

    let kinds = [
        "tp_straggler",
        "gpu_squatter",
        "kv_cache_saturation",
        "engine_stall",
        "retransmit_storm",
        "nic_saturation",
        "pcie_saturation",
        "host_cpu_bottleneck",
        "intra_node_gpu_skew",
        "swap_thrashing",
        "oom_kill",
        "tail_latency",
        "ingress_burst_backlog",
    ];
    for kind in kinds {
        let k = &v["kinds"][kind];
        assert!(
            k["labels"].as_u64().unwrap_or(0) > 0,
            "{kind}: no labels in the corpus"
        );
        let recall = k["recall"].as_f64().unwrap();
        let precision = k["precision"].as_f64().unwrap_or(0.0);
        assert!(recall >= 0.95, "{kind}: recall {recall}: {k}");
        assert!(precision >= 0.95, "{kind}: precision {precision}: {k}");
    }
    for kind in FABRIC {
        let k = &v["kinds"][kind];
        assert!(k["labels"].as_u64().unwrap_or(0) > 0, "{kind}: no labels");
        assert!(k["recall"].as_f64().unwrap() >= 0.97, "{kind}: {k}");
        assert!(
            k["precision"].as_f64().unwrap_or(0.0) >= 0.97,
            "{kind}: {k}"
        );
    }
    let straggler = &v["kinds"]["tp_straggler"];
    let cause = straggler["cause_accuracy"].as_f64().unwrap();
    assert!(
        cause >= 0.90,
        "tp_straggler cause accuracy {cause}: {straggler}"
    );
    let p50 = overall["latency_p50"].as_f64().unwrap();
    assert!(p50 <= 2.0, "latency p50 {p50} s");

    for (name, case) in v["cases"].as_object().unwrap() {
        if ["healthy", "whole-job-slowdown", "spikes"]
            .iter()
            .any(|h| name.starts_with(&format!("{h}-")))
        {
            assert_eq!(
                case["overall"]["findings"], 0,
                "{name} is healthy yet produced findings: {case}"
            );
        }
        // Late doorbells on a saturated bus are the bus; on a bus with room,
        // the host.
        if name.starts_with("straggler-pcie-saturated-")
            || name.starts_with("straggler-host-launch-")
        {
            let k = &case["kinds"]["tp_straggler"];
            assert_eq!(k["cause_accuracy"], 1.0, "{name}: {k}");
        }
    }
    // Where neither the GPU nor its bus is seen, no cause can be told: the
    // labels say what really happened, and keel says `unknown`.
    let mut undecidable = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("straggler-no-gpu-signal-") {
            continue;
        }
        let out = keel()
            .args(["replay", "--quiet"])
            .arg(path.join("trace.jsonl"))
            .output()
            .unwrap();
        assert!(out.status.success());
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Value = serde_json::from_str(line).unwrap();
            if f["kind"] == "tp_straggler" {
                assert_eq!(f["cause"], "unknown", "{name}: {f}");
                undecidable += 1;
            }
        }
    }
    assert!(
        undecidable > 0,
        "no straggler without GPU signals in the corpus"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `keel eval --json` with `args`; its scores.
fn eval(args: &[&str], paths: &[&std::path::Path]) -> Value {
    let mut cmd = keel();
    cmd.args(["eval", "--json"]).args(args);
    for p in paths {
        cmd.arg(p);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The live path (collectives summarised per window at each node's edge,
/// as sensors do) held to the bar of docs/detection.md on the corpus, the
/// real H200 trace and every case of `shared/data/cases`.
/// The fabric's kinds (`detect/src/fabric.rs`), held to 0.97 on both paths.
const FABRIC: [&str; 3] = [
    "network_congestion",
    "rdma_credit_starvation",
    "egress_backlog",
];

#[test]
fn the_live_path_meets_the_bar_everywhere() {
    let dir = tmp("corpus-edge");
    let gen = keel()
        .args(["chaos", "corpus", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(gen.status.success());
    let v = eval(&["--edge", "--per-trace", "--corpus"], &[&dir]);
    let overall = &v["overall"];
    assert_eq!(overall["false_positives"], 0, "a false alarm: {overall}");
    for (kind, k) in v["kinds"].as_object().unwrap() {
        let recall = k["recall"].as_f64().unwrap_or(0.0);
        let precision = k["precision"].as_f64().unwrap_or(0.0);
        assert!(recall >= 0.97, "{kind}: recall {recall}: {k}");
        assert!(precision >= 0.97, "{kind}: precision {precision}: {k}");
    }
    // The bus detectors' kinds are in the corpus and held to the bar above.
    for kind in [
        "pcie_saturation",
        "host_cpu_bottleneck",
        "intra_node_gpu_skew",
        "noisy_neighbor",
    ] {
        let k = &v["kinds"][kind];
        assert!(k["labels"].as_u64().unwrap_or(0) > 0, "{kind}: no labels");
        assert_eq!(k["cause_accuracy"], 1.0, "{kind}: {k}");
    }
    for kind in FABRIC {
        let k = &v["kinds"][kind];
        assert!(k["labels"].as_u64().unwrap_or(0) > 0, "{kind}: no labels");
    }
    let s = &v["kinds"]["tp_straggler"];
    assert!(s["cause_accuracy"].as_f64().unwrap() >= 0.95, "{s}");
    // The serving kinds are in the corpus and found through the live path.
    for kind in [
        "swap_thrashing",
        "oom_kill",
        "tail_latency",
        "ingress_burst_backlog",
    ] {
        let k = &v["kinds"][kind];
        assert!(k["labels"].as_u64().unwrap_or(0) > 0, "{kind}: no labels");
        assert!(k["recall"].as_f64().unwrap_or(0.0) >= 0.97, "{kind}: {k}");
        assert!(
            k["precision"].as_f64().unwrap_or(0.0) >= 0.97,
            "{kind}: {k}"
        );
    }
    // The generator scrapes vLLM once a second and labels the moment the
    // cache pins: concluded within two scrapes of it.
    let kv = &v["kinds"]["kv_cache_saturation"];
    assert!(kv["latency_max"].as_f64().unwrap() <= 2.0, "{kv}");
    assert!(s["latency_p50"].as_f64().unwrap() <= 1.0, "{s}");
    for (name, case) in v["cases"].as_object().unwrap() {
        let Some(max) = case["kinds"]["tp_straggler"]["latency_max"].as_f64() else {
            continue;
        };
        // A second episode found only by elimination (its predecessor's
        // cause ruled out for a review span) waits for that: docs/detection.md.
        let bar = if name.starts_with("straggler-back-to-back-") {
            5.0
        } else {
            2.0
        };
        assert!(
            max <= bar,
            "{name}: a straggler found {max} s after its onset"
        );
    }
    std::fs::remove_dir_all(&dir).ok();

    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    let mut traces = vec![shared.join("traces/h200x2-tp2")];
    for entry in std::fs::read_dir(shared.join("cases")).unwrap() {
        let p = entry.unwrap().path();
        if p.join("labels.jsonl").exists() {
            traces.push(p);
        }
    }
    for t in traces {
        let v = eval(
            &["--edge", "--trace"],
            &[
                &t.join("trace.jsonl"),
                std::path::Path::new("--labels"),
                &t.join("labels.jsonl"),
            ],
        );
        let o = &v["overall"];
        assert_eq!(o["recall"], 1.0, "{}: {o}", t.display());
        assert_eq!(o["precision"], 1.0, "{}: {o}", t.display());
        assert_eq!(o["false_positives"], 0, "{}: {o}", t.display());
        let s = &v["kinds"]["tp_straggler"];
        if !s.is_null() {
            assert_eq!(s["cause_accuracy"], 1.0, "{}: {s}", t.display());
            assert!(
                s["latency_max"].as_f64().unwrap() <= 2.0,
                "{}: {s}",
                t.display()
            );
        }
    }
}
