//! `deploy/prometheus/keel.rules.yml`: valid for the real `promtool`
//! (Debian package `prometheus`), and each alert fires on the series it is
//! meant for and not on others (`keel.rules.test.yml`).

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str]) -> Option<(bool, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

#[test]
fn the_alerting_rules_pass_promtool_and_their_own_tests() {
    let Some((ok, text)) = promtool(&["check", "rules", "keel.rules.yml"]) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing (Debian package prometheus)"
        );
        eprintln!("promtool not installed: skipped");
        return;
    };
    assert!(ok, "{text}");
    assert!(text.contains("SUCCESS: 6 rules found"), "{text}");
    let (ok, text) = promtool(&["test", "rules", "keel.rules.test.yml"]).unwrap();
    assert!(ok, "{text}");
}

/// `deploy/grafana/keel.json` and the alerting rules query only metrics
/// that keel's roles serve (`cli/src/probes.rs`): a renamed reading breaks
/// this test, not a dashboard in production.
#[test]
fn the_dashboard_and_the_rules_query_metrics_keel_serves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let served = std::fs::read_to_string(root.join("cli/src/probes.rs")).unwrap();
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana/keel.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut exprs: Vec<String> = v["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    exprs.push(std::fs::read_to_string(root.join("deploy/prometheus/keel.rules.yml")).unwrap());
    for e in &exprs {
        for name in e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter_map(|w| w.strip_prefix("keel_"))
        {
            assert!(
                served.contains(&format!("\"{name}\"")),
                "keel_{name} is queried but no role serves it"
            );
        }
    }
}
