//! Inputs on which keel was once seen to fail (`../shared/data/cases`), each
//! with the label of what really happened: replayed and scored as an
//! operator would, on the whole trace and as a live cluster detects.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn keel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keel"))
}

/// Real data lives in `../shared` beside the repository (as in CI).
fn case(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/cases")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: the shared data folder must sit beside the repository",
        p.display()
    );
    p
}

fn replay(dir: &Path, edge: bool) -> Vec<Value> {
    let mut cmd = keel();
    cmd.args(["replay", "--quiet"]).arg(dir.join("trace.jsonl"));
    if edge {
        cmd.arg("--edge");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each output line is a JSON finding"))
        .collect()
}

fn eval(dir: &Path, edge: bool) -> Value {
    let mut cmd = keel();
    cmd.args(["eval", "--json", "--trace"])
        .arg(dir.join("trace.jsonl"))
        .arg("--labels")
        .arg(dir.join("labels.jsonl"));
    if edge {
        cmd.arg("--edge");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_straggler_on_a_saturated_pcie_bus_is_attributed_to_pcie() {
    let dir = case("pcie-saturated-bus");
    for edge in [false, true] {
        let f = replay(&dir, edge);
        assert_eq!(f.len(), 1, "edge {edge}: {f:#?}");
        let f = &f[0];
        assert_eq!(
            (&f["kind"], &f["node"], &f["rank"], &f["gpu"]),
            (
                &Value::from("tp_straggler"),
                &Value::from("gpu-502"),
                &Value::from(3),
                &Value::from(7)
            ),
            "edge {edge}: {f:#}"
        );
        assert_eq!(f["cause"], "pcie", "edge {edge}: {f:#}");
        // The bus is judged against its capacity, and the doorbell gaps
        // count for it rather than for the host.
        let evidence: Vec<&str> = f["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(
            evidence[1].contains("of capacity"),
            "edge {edge}: {evidence:#?}"
        );
        assert!(
            evidence
                .iter()
                .any(|e| e.contains("doorbell gap") && e.contains("the bus is saturated")),
            "edge {edge}: {evidence:#?}"
        );

        let v = eval(&dir, edge);
        let k = &v["kinds"]["tp_straggler"];
        assert_eq!(
            (&k["recall"], &k["precision"], &k["cause_accuracy"]),
            (&Value::from(1.0), &Value::from(1.0), &Value::from(1.0)),
            "edge {edge}: {k}"
        );
    }
}
