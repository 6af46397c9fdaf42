//! `keel policy check|apply|explain`, `keel actions`, `keel action approve`.

use crate::ControllerAt;
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
    /// Refuse a planned action: it is never sent
    Reject {
        /// The action's key, or a prefix of it that names only one action
        key: String,
        /// Why (kept in the audit trail)
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        at: ControllerAt,
    },
    /// Withdraw a planned or approved action before it is sent; a fault
    /// injection (`keel chaos inject`) that acts already is reverted
    Cancel {
        /// The action's key, or a prefix of it that names only one action
        key: String,
        /// Why (kept in the audit trail)
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        at: ControllerAt,
    },
}

/// `keel pause` / `keel resume`: all automation, committed so that every
/// leader obeys.
pub(crate) fn brake(at: &ControllerAt, pause: Option<String>) -> Result<()> {
    let command = match &pause {
        Some(reason) => serde_json::json!({"pause": {"reason": reason, "ts": now()}}),
        None => serde_json::json!({"resume": {"ts": now()}}),
    };
    propose(at, command)?;
    match pause {
        Some(_) => println!("paused: no leader sends anything until `keel resume`"),
        None => println!("resumed; the circuit breaker, if tripped, is reset"),
    }
    Ok(())
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
    let (key, at, from, to, verb, reason): (String, ControllerAt, &[&str], &str, &str, String) =
        match cmd {
            ActionCommand::Approve { key, at } => {
                (key, at, &["planned"], "approved", "approved", String::new())
            }
            ActionCommand::Reject { key, reason, at } => {
                (key, at, &["planned"], "rejected", "rejected", reason)
            }
            ActionCommand::Cancel { key, reason, at } => (
                key,
                at,
                &["planned", "approved"],
                "cancelled",
                "cancelled",
                reason,
            ),
        };
    let v = crate::queries::actions(&crate::queries::connect(&at)?, None)?;
    // An acting injection may be cancelled too: the ledger turns that into
    // its revert.
    let cancel = to == "cancelled";
    let keys: Vec<String> = v["ledger"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            from.iter().any(|s| e["status"] == *s)
                || (cancel && e["action"] == "inject_fault" && e["status"] == "acknowledged")
        })
        .filter_map(|e| e["key"].as_str().map(String::from))
        .collect();
    let key = match keys
        .iter()
        .filter(|k| k.starts_with(&key))
        .collect::<Vec<_>>()[..]
    {
        [one] => one.clone(),
        [] => bail!(
            "no action in state {} under {key:?} (see `keel actions`)",
            from.join(" or ")
        ),
        ref many => bail!("{key:?} names {} actions: {:?}", many.len(), many),
    };
    // Who asked is the certificate the controller saw (the audit's `by`).
    let mut detail = verb.to_string();
    if !reason.is_empty() {
        detail.push_str(&format!(": {reason}"));
    }
    let command = serde_json::json!({"transition": {
        "key": key,
        "to": to,
        "ts": now(),
        "detail": detail,
    }});
    propose(&at, command)?;
    println!("{verb} {key}");
    Ok(())
}

/// `keel actions`: the ledger, then its audit trail (every page; with
/// `since`, what moved since then, the history included).
pub(crate) fn actions(at: &ControllerAt, json: bool, since: Option<&str>) -> Result<()> {
    let v = crate::queries::actions(&crate::queries::connect(at)?, since)?;
    if json {
        println!("{v}");
    } else {
        println!("{}", crate::tables::actions(&v, now()));
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
    crate::queries::ask_body(at, topic, params)
}

/// Proposes one command under a client id of its own: a retry of this very
/// call would reuse it with the same seq.
pub(crate) fn propose(at: &ControllerAt, command: serde_json::Value) -> Result<String> {
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

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
