//! Every broken policy file in `tests/policies/broken/` must be refused with
//! each of its problems at the exact line and column its `# expect:`
//! comments give, and nothing else reported.
//!
//! An expectation reads `# expect: LINE:COL [warning] MESSAGE-PART | HELP-PART`
//! (the level defaults to error; the help part is optional); expectations
//! are listed in file order, as problems are reported.

use keel_policies::{check_file, Level, PolicyError};
use std::path::{Path, PathBuf};

struct Expect {
    line: usize,
    column: usize,
    level: Level,
    message: String,
    help: Option<String>,
}

fn broken_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/policies/broken")
}

fn expectations(text: &str, file: &Path) -> Vec<Expect> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(|e| {
            let (pos, rest) = e.split_once(' ').expect("expect: LINE:COL MESSAGE");
            let (line, column) = pos.split_once(':').expect("LINE:COL");
            let (level, rest) = match rest.strip_prefix("[warning] ") {
                Some(r) => (Level::Warning, r),
                None => (Level::Error, rest),
            };
            let (message, help) = match rest.split_once(" | ") {
                Some((m, h)) => (m.to_string(), Some(h.to_string())),
                None => (rest.to_string(), None),
            };
            Expect {
                line: line
                    .parse()
                    .unwrap_or_else(|_| panic!("{}: {pos}", file.display())),
                column: column
                    .parse()
                    .unwrap_or_else(|_| panic!("{}: {pos}", file.display())),
                level,
                message,
                help,
            }
        })
        .collect()
}

fn agrees(e: &Expect, p: &PolicyError) -> bool {
    e.line == p.line
        && e.column == p.column
        && e.level == p.level
        && p.message.contains(&e.message)
        && e.help.as_ref().is_none_or(|h| {
            p.suggestion
                .as_deref()
                .is_some_and(|s| s.contains(h.as_str()))
        })
}

#[test]
fn each_broken_file_reports_every_problem_at_its_line_and_column() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(broken_dir())
        .expect("tests/policies/broken exists")
        .map(|e| e.expect("readable").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 9, "the broken set shrank: {files:?}");
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        let expected = expectations(&text, file);
        assert!(
            !expected.is_empty(),
            "{}: no # expect: lines",
            file.display()
        );
        let problems = match check_file(file) {
            Ok(_) => {
                failures.push(format!("{}: checked clean", file.display()));
                continue;
            }
            Err(p) => p,
        };
        let same = problems.len() == expected.len()
            && expected.iter().zip(&problems).all(|(e, p)| agrees(e, p));
        if !same {
            let got: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
            failures.push(format!(
                "{}: expected {} problems as in its # expect: lines, got:\n{}",
                file.display(),
                expected.len(),
                got.join("\n")
            ));
        }
        for p in &problems {
            assert!(p.line >= 1 && p.column >= 1);
            let shown = p.to_string();
            let head = format!(
                "{}:{}:{}: {}: ",
                file.display(),
                p.line,
                p.column,
                p.level.wire()
            );
            assert!(shown.starts_with(&head), "{shown}");
            if let Some(s) = &p.suggestion {
                assert!(shown.ends_with(&format!(" (help: {s})")), "{shown}");
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn errors_display_as_file_line_column() {
    let errs = keel_policies::check(
        "p.toml",
        "[[rule]]\nname = \"a\"\naction = \"notfy\"\n[rule.match]\n",
    )
    .expect_err("unknown action");
    assert_eq!(
        errs.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        ["p.toml:3:10: error: unknown action `notfy` (help: did you mean `notify`?)"]
    );
}

/// Any prefix of a policy file (an editor saving half a line, a truncated
/// upload) is reported, never a panic.
#[test]
fn truncated_files_are_reported_not_panicked_on() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(broken_dir())
        .expect("tests/policies/broken exists")
        .map(|e| e.expect("readable").path())
        .collect();
    files.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policies/default.toml"));
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        for cut in (0..=text.len()).filter(|i| text.is_char_boundary(*i)) {
            let _ = keel_policies::check("cut.toml", &text[..cut]);
        }
    }
}

/// Notes that do not make a policy wrong are warnings: the set still
/// checks, and each warning has its position.
#[test]
fn warnings_do_not_stop_a_policy() {
    let text = r#"[[rule]]
name = "nic"
action = "retune_nic"
[rule.match]
kind = ["nic_saturation", "pp_bubble"]
when = 'finding.job.startsWith("llm-")'
[rule.params]
channels = 8

[[rule]]
name = "spare"
escalation_only = true
action = "notify"
"#;
    let set = keel_policies::check("w.toml", text).expect("only warnings");
    let shown: Vec<String> = set.warnings().iter().map(|w| w.to_string()).collect();
    assert_eq!(shown.len(), 3, "{shown:#?}");
    assert!(
        shown[0].starts_with("w.toml:5:27: warning: `retune_nic` needs a node"),
        "{}",
        shown[0]
    );
    assert!(
        shown[1].starts_with("w.toml:6:9: warning: `when` fails on findings without"),
        "{}",
        shown[1]
    );
    assert!(
        shown[2].starts_with("w.toml:11:8: warning: `spare` is escalation_only"),
        "{}",
        shown[2]
    );
}
