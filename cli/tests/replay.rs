//! `keel replay` and `keel eval` as an operator runs them: on the spec's own
//! examples, on a real trace recorded on two H200 GPUs, and on bad input.

use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn keel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keel"))
}

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// Real data lives in `../shared` beside the repository (as in CI).
fn shared(path: &str) -> PathBuf {
    let p = repo("../shared").join(path);
    assert!(
        p.exists(),
        "{} is missing: the shared data folder must sit beside the repository",
        p.display()
    );
    p
}

fn findings(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each output line is a JSON finding"))
        .collect()
}

#[test]
fn the_specs_examples_yield_the_specs_example_finding() {
    let out = keel()
        .arg("replay")
        .arg(repo("tests/data/spec_examples.jsonl"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = findings(&out.stdout);
    assert_eq!(f.len(), 1, "one episode, one line: {f:?}");
    let f = &f[0];
    assert_eq!(f["kind"], "tp_straggler");
    assert_eq!(f["cause"], "pcie");
    assert_eq!(f["job"], "4242");
    assert_eq!(f["node"], "n02");
    assert_eq!(f["rank"], 5);
    let ts = f["ts"].as_f64().unwrap();
    assert!(
        (1763800030.0..1763800032.0).contains(&ts),
        "concluded at {ts}"
    );
    let evidence = f["evidence"].as_array().unwrap();
    assert!(
        evidence[0].as_str().unwrap().contains("2.1"),
        "{evidence:?}"
    );
    assert!(evidence
        .iter()
        .any(|e| e.as_str().unwrap().contains("PCIe RX")));
}

#[test]
fn the_real_h200_trace_is_read_and_every_episode_found_with_its_cause() {
    let out = keel()
        .arg("replay")
        .arg(shared("data/traces/h200x2-tp2/trace.jsonl"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let f = findings(&out.stdout);
    let summary: Vec<(String, String, Option<u64>)> = f
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["cause"].as_str().unwrap().to_string(),
                f["rank"].as_u64().or(f["gpu"].as_u64()),
            )
        })
        .collect();
    let want = [
        ("tp_straggler", "pcie", Some(0)),
        ("tp_straggler", "gpu", Some(1)),
        ("tp_straggler", "host", Some(0)),
        ("gpu_squatter", "engine", Some(0)),
    ];
    let want: Vec<(String, String, Option<u64>)> = want
        .iter()
        .map(|(k, c, r)| (k.to_string(), c.to_string(), *r))
        .collect();
    assert_eq!(summary, want);

    let eval = keel()
        .args(["eval", "--json", "--trace"])
        .arg(shared("data/traces/h200x2-tp2/trace.jsonl"))
        .arg("--labels")
        .arg(shared("data/traces/h200x2-tp2/labels.jsonl"))
        .output()
        .unwrap();
    assert!(eval.status.success());
    let v: Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(v["overall"]["recall"], 1.0);
    assert_eq!(v["overall"]["precision"], 1.0);
    assert_eq!(v["kinds"]["tp_straggler"]["cause_accuracy"], 1.0);
}

/// `keel replay ARGS` with `input` on its standard input.
fn replay_stdin(args: &[&str], input: Vec<u8>) -> std::process::Output {
    let mut child = keel()
        .arg("replay")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    out
}

#[test]
fn reads_stdin_and_reports_bad_lines_by_number_without_stopping() {
    let good = std::fs::read_to_string(repo("tests/data/spec_examples.jsonl")).unwrap();
    let mut lines: Vec<&str> = good.lines().collect();
    lines.insert(3, "{\"t\":\"metric\",\"ts\":");
    lines.insert(10, "garbage");
    lines.insert(20, "{\"t\":\"kernel\",\"ts\":1763800017.0}");
    let out = replay_stdin(&["-"], lines.join("\n").into_bytes());
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2 malformed"), "{err}");
    assert!(err.contains("line 4: bad JSON"), "{err}");
    assert!(err.contains("line 11: bad JSON"), "{err}");
    assert!(err.contains("kernel x1"), "{err}");
    assert_eq!(findings(&out.stdout).len(), 1, "the replay went on");
}

#[test]
fn a_file_that_is_no_trace_at_all_fails_instead_of_finding_nothing() {
    // What a gzip-compressed trace starts with, and more bytes like it.
    let input: Vec<u8> = [0x1f, 0x8b, 0x08, 0x00, b'\n', 0xff, 0x00, b'x', b'\n'].repeat(50);
    let out = replay_stdin(&["--quiet", "-"], input);
    assert!(!out.status.success(), "nothing readable is a failure");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no record could be read"), "{err}");
    assert!(err.contains("line 1"), "{err}");
}

#[test]
fn a_missing_trace_is_a_clear_error() {
    let out = keel()
        .args(["replay", "/nonexistent/trace.jsonl"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("/nonexistent/trace.jsonl").count(), 1, "{err}");
}

#[test]
fn a_bad_label_line_is_named_by_file_and_line() {
    let dir = std::env::temp_dir().join(format!("keel-labels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let labels = dir.join("labels.jsonl");
    std::fs::write(&labels, "{\"kind\":\"tp_straggler\",\"onset\":1,\"end\":2}\n{\"kind\":\"no_such_kind\",\"onset\":1,\"end\":2}\n").unwrap();
    let out = keel()
        .args(["eval", "--trace"])
        .arg(repo("tests/data/spec_examples.jsonl"))
        .arg("--labels")
        .arg(&labels)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("labels.jsonl:2"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
