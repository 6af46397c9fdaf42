//! `keel policy check|apply|explain`, `keel actions`, `keel action approve`.

use crate::{controller, ControllerAt};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The policy the controller acts on.
const ACTIVE: &str = "default";

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Check policy files: every problem with file, line, column and a
    /// suggestion. Exits non-zero if any file has an error
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Check FILE, then commit it as the next version of the policy the
    /// controller acts on (nothing is sent if it does not check)
    Apply {
        file: PathBuf,
        /// Store it under another name instead (kept, versioned, not acted on)
        #[arg(long, default_value = ACTIVE)]
        policy: String,
        #[command(flatten)]
        at: ControllerAt,
    },
    /// Which rule of the active policy a committed finding matches, why the
    /// others do not, and what the guards would let happen now
    Explain {
        /// The finding's id (`keel findings`)
        finding: u64,
        #[command(flatten)]
        at: ControllerAt,
    },
}

#[derive(Subcommand)]
pub(crate) enum ActionCommand {
    /// Approve an action whose rule waits for approval (mode = "approve")
    Approve {
        /// The action's key, or a prefix of it that names only one action
        key: String,
        #[command(flatten)]
        at: ControllerAt,
    },
}

pub(crate) fn run(cmd: PolicyCommand) -> Result<()> {
    match cmd {
        PolicyCommand::Check { files } => check(&files),
        PolicyCommand::Apply { file, policy, at } => {
            check(std::slice::from_ref(&file))?;
            let document = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let command =
                serde_json::json!({"apply_policy": {"name": policy, "document": document}});
            let body = propose(&at, command)?;
            println!("{body}");
            Ok(())
        }
        PolicyCommand::Explain { finding, at } => {
            let body = ask(&at, "explain", [("finding", finding.to_string())])?;
            let text: String = serde_json::from_str(&body).unwrap_or(body);
            print!("{text}");
            Ok(())
        }
    }
}

fn check(files: &[PathBuf]) -> Result<()> {
    let mut errors = 0;
    for f in files {
        match keel_policies::check_file(f) {
            Ok(set) => {
                for w in set.warnings() {
                    eprintln!("{w}");
                }
                eprintln!("{}: ok, {} rules", f.display(), set.rules().len());
            }
            Err(errs) => {
                for e in &errs {
                    eprintln!("{e}");
                }
                errors += errs
                    .iter()
                    .filter(|e| e.level == keel_policies::Level::Error)
                    .count();
            }
        }
    }
    if errors > 0 {
        bail!("{errors} error(s); nothing applied");
    }
    Ok(())
}

pub(crate) fn approve(cmd: ActionCommand) -> Result<()> {
    let ActionCommand::Approve { key, at } = cmd;
    let v = crate::queries::actions(&crate::queries::connect(&at)?, None)?;
    let keys: Vec<String> = v["ledger"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["status"] == "planned")
        .filter_map(|e| e["key"].as_str().map(String::from))
        .collect();
    let key = match keys
        .iter()
        .filter(|k| k.starts_with(&key))
        .collect::<Vec<_>>()[..]
    {
        [one] => one.clone(),
        [] => bail!("no planned action waits for approval under {key:?} (see `keel actions`)"),
        ref many => bail!("{key:?} names {} actions: {:?}", many.len(), many),
    };
    let command = serde_json::json!({"transition": {
        "key": key,
        "to": "approved",
        "ts": now(),
        "detail": format!("approved by the operator `{}`", whoami(&at)),
    }});
    propose(&at, command)?;
    println!("approved {key}");
    Ok(())
}

/// `keel actions`: the ledger, then its audit trail (every page; with
/// `since`, what moved since then, the history included).
pub(crate) fn actions(at: &ControllerAt, json: bool, since: Option<&str>) -> Result<()> {
    let v = crate::queries::actions(&crate::queries::connect(at)?, since)?;
    if json {
        println!("{v}");
        return Ok(());
    }
    println!("{:<13} {:<16} {:>4}  KEY", "STATUS", "ACTION", "SENT");
    for e in v["ledger"].as_array().into_iter().flatten() {
        println!(
            "{:<13} {:<16} {:>4}  {}",
            e["status"].as_str().unwrap_or("?"),
            e["action"].as_str().unwrap_or("?"),
            e["dispatches"],
            e["key"].as_str().unwrap_or("?"),
        );
    }
    println!("\naudit trail:");
    for a in v["audit"].as_array().into_iter().flatten() {
        println!(
            "  #{:<6} {:>17.3} {:<12} -> {:<12} {}  ({}; by {})",
            a["index"],
            a["ts"].as_f64().unwrap_or(0.0),
            a["from"].as_str().unwrap_or("-"),
            a["to"].as_str().unwrap_or("?"),
            a["key"].as_str().unwrap_or("?"),
            a["detail"].as_str().unwrap_or(""),
            a["by"].as_str().unwrap_or("?"),
        );
    }
    Ok(())
}

fn ask<const N: usize>(
    at: &ControllerAt,
    topic: &str,
    params: [(&str, String); N],
) -> Result<String> {
    let params: BTreeMap<String, String> = params
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let r = controller::query(at.controller, &at.name, &at.credentials, topic, params)?;
    if !r.ok {
        bail!("{}: {}", at.name, r.body);
    }
    Ok(r.body)
}

/// Proposes one command under a client id of its own: a retry of this very
/// call would reuse it with the same seq.
fn propose(at: &ControllerAt, command: serde_json::Value) -> Result<String> {
    let client = format!("operator-{}-{}", std::process::id(), (now() * 1e9) as u128);
    ask(
        at,
        "propose",
        [
            ("client", client),
            ("seq", "1".to_string()),
            ("command", command.to_string()),
        ],
    )
}

/// Who approves: the credentials folder names the operator (its
/// certificate's name, by the layout `keel cert issue` suggests).
fn whoami(at: &ControllerAt) -> String {
    at.credentials
        .file_name()
        .map_or_else(|| "unknown".into(), |n| n.to_string_lossy().into_owned())
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
