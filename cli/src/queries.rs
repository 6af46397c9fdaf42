//! The operator's questions that list things: `keel findings`, `keel
//! actions`, `keel jobs`. The controller answers in pages; these fetch every
//! page and print the whole list. `--since` also reaches into the on-disk
//! history of what retention moved out of the replicated state.

use crate::controller::Operator;
use crate::ControllerAt;
use anyhow::Result;
use keel_actors::controller::history::parse_since;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub(crate) fn connect(at: &ControllerAt) -> Result<Operator> {
    Operator::connect(at.controller, &at.name, &at.credentials)
}

fn params<const N: usize>(pairs: [(&str, String); N]) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn now() -> f64 {
    keel_actors::sources::unix_now()
}

/// History records of `kind` at or after `since`, without their `kind` tag.
fn history(op: &Operator, kind: &str, since: f64) -> Result<Vec<Value>> {
    let (mut items, _) = op.all_pages(
        "history",
        params([("kind", kind.to_string()), ("since", since.to_string())]),
        "items",
        "offset",
        "next",
    )?;
    for v in &mut items {
        if let Some(m) = v.as_object_mut() {
            m.remove("kind");
        }
    }
    Ok(items)
}

/// `keel findings [--since T]`: every committed finding (open and closed),
/// as one JSON array; with `--since`, those open at or after T, from the
/// history first.
pub(crate) fn findings(at: &ControllerAt, since: Option<&str>) -> Result<()> {
    let op = connect(at)?;
    let (mut current, _) = op.all_pages("findings", BTreeMap::new(), "items", "offset", "next")?;
    let mut out = Vec::new();
    if let Some(since) = since {
        let t = parse_since(since, now())?;
        out = history(&op, "finding", t)?;
        current.retain(|f| f["closed"].as_f64().is_none_or(|c| c >= t));
    }
    out.extend(current);
    println!("{}", Value::Array(out));
    Ok(())
}

/// The whole ledger and audit trail (every page of both), as the
/// controller's `actions` answer has them; with `since`, only what moved at
/// or after it, the history's records included.
pub(crate) fn actions(op: &Operator, since: Option<&str>) -> Result<Value> {
    let (mut ledger, mut audit) = (Vec::new(), Vec::new());
    let mut last = Value::Null;
    let (mut ledger_at, mut audit_at) = (Some(0u64), Some(0u64));
    while ledger_at.is_some() || audit_at.is_some() {
        // A list already read whole is asked from its end: nothing comes.
        let page: Value = serde_json::from_str(&op.ask(
            "actions",
            params([
                (
                    "offset",
                    ledger_at.unwrap_or(ledger.len() as u64).to_string(),
                ),
                (
                    "audit_offset",
                    audit_at.unwrap_or(audit.len() as u64).to_string(),
                ),
            ]),
        )?)?;
        if ledger_at.is_some() {
            ledger.extend(page["ledger"].as_array().into_iter().flatten().cloned());
            ledger_at = page["next"].as_u64();
        }
        if audit_at.is_some() {
            audit.extend(page["audit"].as_array().into_iter().flatten().cloned());
            audit_at = page["audit_next"].as_u64();
        }
        last = page;
    }
    if let Some(since) = since {
        let t = parse_since(since, now())?;
        let after = |v: &Value, key: &str| v[key].as_f64().is_some_and(|x| x >= t);
        ledger.retain(|e| after(e, "since"));
        audit.retain(|e| after(e, "ts"));
        let mut old = history(op, "action", t)?;
        old.extend(ledger);
        ledger = old;
        let mut old = history(op, "audit", t)?;
        old.extend(audit);
        audit = old;
    }
    Ok(json!({
        "ledger": ledger,
        "audit": audit,
        "audit_dropped": last["audit_dropped"],
        "executors": last["executors"],
    }))
}

/// `keel jobs [--job NAME]`: the job records the controller knows (running
/// and recently ended), as one JSON array; with `--job`, that one (an error
/// if unknown).
pub(crate) fn jobs(at: &ControllerAt, job: Option<&str>) -> Result<()> {
    let op = connect(at)?;
    let p = match job {
        Some(j) => params([("job", j.to_string())]),
        None => BTreeMap::new(),
    };
    let (items, _) = op.all_pages("jobs", p, "items", "offset", "next")?;
    if let (Some(j), true) = (job, items.is_empty()) {
        anyhow::bail!("{}: no job {j:?} known", at.name);
    }
    println!("{}", Value::Array(items));
    Ok(())
}
