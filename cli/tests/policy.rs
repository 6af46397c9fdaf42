//! `keel policy check` and `keel policy apply` on broken policy files: every
//! problem is reported as FILE:LINE:COL with the line and column the file's
//! `# expect:` comments give, the exit status says so, and nothing is sent
//! to a controller.

mod support;

use std::path::{Path, PathBuf};
use support::keel;

fn broken() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/policies/broken");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    files
}

/// The `LINE:COL` of each error the file expects.
fn expected(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .filter(|e| !e.contains("[warning]"))
        .map(|e| e.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn check_reports_every_error_with_line_and_column() {
    for file in broken() {
        let out = keel()
            .args(["policy", "check"])
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: accepted\n{err}", file.display());
        let want = expected(&file);
        assert!(!want.is_empty(), "{}: no expectations", file.display());
        for pos in want {
            let head = format!("{}:{pos}: error:", file.display());
            assert!(
                err.contains(&head),
                "{}: no `{head}` in\n{err}",
                file.display()
            );
        }
        assert!(err.contains("nothing applied"), "{err}");
    }
}

#[test]
fn the_default_policy_checks() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policies/default.toml");
    let out = keel()
        .args(["policy", "check"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(": ok, "), "{err}");
}

#[test]
fn apply_refuses_a_broken_file_before_reaching_any_controller() {
    let file = &broken()[0];
    // Port 9 (discard) on loopback: nothing answers there. Had apply tried
    // to reach it, the error would be about connecting or credentials.
    let out = keel()
        .args(["policy", "apply"])
        .arg(file)
        .args([
            "--controller",
            "127.0.0.1:9",
            "--name",
            "ctl-1",
            "--credentials",
        ])
        .arg("/nonexistent")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("nothing applied"), "{err}");
    assert!(!err.contains("credentials"), "{err}");
    assert!(!err.contains("connecting"), "{err}");
}
