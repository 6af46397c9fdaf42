//! `keel eval`: replay traces and score the findings against their labels
//! (the table of `spec/trace-format.md` "Scoring").

use crate::replay::{replay_all, summary};
use anyhow::{bail, Context, Result};
use keel_detect::score::{score, KindScore, Scorecard};
use keel_model::{Finding, Label};
use serde::de::DeserializeOwned;
use serde_json::json;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// Reads a JSON Lines file of `T`; a bad line is an error naming file and line.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut items = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: read error", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        items.push(
            serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: not a valid record", path.display(), i + 1))?,
        );
    }
    Ok(items)
}

/// One trace to score: the trace, its labels, and optionally findings that
/// another tool already produced (otherwise keel replays the trace).
pub struct Case {
    pub name: String,
    pub trace: PathBuf,
    pub labels: PathBuf,
    pub findings: Option<PathBuf>,
}

/// Every `DIR/*/trace.jsonl` with a `labels.jsonl` beside it.
pub fn corpus_cases(dir: &Path) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let (trace, labels) = (path.join("trace.jsonl"), path.join("labels.jsonl"));
        if trace.is_file() && labels.is_file() {
            cases.push(Case {
                name: path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into(),
                trace,
                labels,
                findings: None,
            });
        }
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    if cases.is_empty() {
        bail!(
            "{}: no scenario folders (each with trace.jsonl and labels.jsonl)",
            dir.display()
        );
    }
    Ok(cases)
}

/// Scores every case; returns the card and the per-case cards.
pub fn evaluate(
    cases: &[Case],
    verbose: bool,
    edge: bool,
) -> Result<(Scorecard, Vec<(String, Scorecard)>)> {
    let mut total = Scorecard::default();
    let mut each = Vec::new();
    for case in cases {
        let labels: Vec<Label> = read_jsonl(&case.labels)?;
        let findings: Vec<Finding> = match &case.findings {
            Some(f) => read_jsonl(f)?,
            None => {
                let (findings, report) = replay_all(&case.trace, edge)?;
                if verbose {
                    eprintln!("{}:\n{}", case.name, summary(&report));
                } else if let Some(e) = report.read.errors.first() {
                    // Scores over a trace that was partly unreadable say
                    // less than they seem to: always said.
                    eprintln!(
                        "{}: {} of {} lines malformed and skipped (first: {e}); --verbose lists them",
                        case.name, report.read.malformed, report.read.lines
                    );
                }
                findings
            }
        };
        let card = score(&labels, &findings);
        total.merge(&card);
        each.push((case.name.clone(), card));
    }
    Ok((total, each))
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

fn secs(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.2}s"))
}

/// The scoring table as text.
pub fn table(card: &Scorecard) -> String {
    let mut s = format!(
        "{:<22} {:>6} {:>8} {:>8} {:>4} {:>9} {:>6} {:>6} {:>9} {:>7} {:>7} {:>7}\n",
        "kind",
        "labels",
        "detected",
        "findings",
        "FP",
        "precision",
        "recall",
        "F1",
        "cause_acc",
        "p50",
        "p90",
        "max"
    );
    let row = |name: &str, k: &KindScore| {
        format!(
            "{:<22} {:>6} {:>8} {:>8} {:>4} {:>9} {:>6} {:>6} {:>9} {:>7} {:>7} {:>7}\n",
            name,
            k.labels,
            k.detected,
            k.findings,
            k.false_positives,
            opt(k.precision(), 3),
            opt(k.recall(), 3),
            opt(k.f1(), 3),
            opt(k.cause_accuracy(), 3),
            secs(k.latency(0.5)),
            secs(k.latency(0.9)),
            secs(k.latency(1.0)),
        )
    };
    for (kind, k) in &card.kinds {
        s.push_str(&row(kind.wire(), k));
    }
    s.push_str(&row("overall", &card.overall()));
    if card.unlocated > 0 {
        s.push_str(&format!(
            "{} labels or findings lack a field their kind's locus needs\n",
            card.unlocated
        ));
    }
    s
}

fn kind_json(k: &KindScore) -> serde_json::Value {
    json!({
        "labels": k.labels, "detected": k.detected, "findings": k.findings,
        "false_positives": k.false_positives, "precision": k.precision(), "recall": k.recall(),
        "f1": k.f1(), "cause_accuracy": k.cause_accuracy(),
        "latency_p50": k.latency(0.5), "latency_p90": k.latency(0.9), "latency_max": k.latency(1.0),
    })
}

pub fn to_json(card: &Scorecard) -> serde_json::Value {
    let kinds: serde_json::Map<String, serde_json::Value> = card
        .kinds
        .iter()
        .map(|(k, v)| (k.wire().to_string(), kind_json(v)))
        .collect();
    json!({ "kinds": kinds, "overall": kind_json(&card.overall()), "unlocated": card.unlocated })
}

pub fn run(
    cases: Vec<Case>,
    as_json: bool,
    per_case: bool,
    verbose: bool,
    edge: bool,
) -> Result<()> {
    let (total, each) = evaluate(&cases, verbose, edge)?;
    if as_json {
        let mut v = to_json(&total);
        if per_case {
            v["cases"] = each
                .iter()
                .map(|(n, c)| (n.clone(), to_json(c)))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if per_case {
            for (name, card) in &each {
                println!("== {name}\n{}", table(card));
            }
            println!("== all {} traces", each.len());
        }
        print!("{}", table(&total));
    }
    Ok(())
}
