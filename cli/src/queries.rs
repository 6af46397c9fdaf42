//! The operator's questions: `keel findings`, `keel actions`, `keel jobs`,
//! `keel routes`, `keel status`, and the one-answer questions of the other
//! commands. The controller answers lists in pages; these fetch every page
//! and print the whole list, as a table or (`--json`) as the controller's
//! JSON. `--since` also reaches into the on-disk history of what retention
//! moved out of the replicated state.

use crate::controller::Operator;
use crate::filters::FindingFilter;
use crate::{tables, ControllerAt};
use anyhow::{bail, Context, Result};
use keel_actors::controller::history::parse_since;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// A connection to the first replica of the context that can be reached.
pub(crate) fn connect(at: &ControllerAt) -> Result<Operator> {
    let t = at.target()?;
    Ok(Operator::connect_first(&t.replicas, &t.credentials, at.verbose)?.0)
}

/// Asks the controller one question; the body of its answer. A refusal is
/// an error naming the replica that refused.
pub(crate) fn ask_body(
    at: &ControllerAt,
    topic: &str,
    params: BTreeMap<String, String>,
) -> Result<String> {
    let (name, r) = crate::controller::query(&at.target()?, at.verbose, topic, params)?;
    if !r.ok {
        bail!("{name}: {}", r.body);
    }
    Ok(r.body)
}

/// Asks the controller and prints its answer; a refusal is an error.
pub(crate) fn ask(at: &ControllerAt, topic: &str, params: BTreeMap<String, String>) -> Result<()> {
    println!("{}", ask_body(at, topic, params)?);
    Ok(())
}

/// `keel status [--consistent]`: the replica's view, one row per field.
pub(crate) fn status(at: &ControllerAt, consistent: bool, json: bool) -> Result<()> {
    let body = ask_body(
        at,
        "status",
        params([("consistent", consistent.to_string())]),
    )?;
    if json {
        println!("{body}");
    } else {
        let v: Value = serde_json::from_str(&body).context("the controller's status")?;
        println!("{}", tables::status(&v, now()));
    }
    Ok(())
}

/// `keel routes`: which correlator host holds each job.
pub(crate) fn routes(at: &ControllerAt, json: bool) -> Result<()> {
    let body = ask_body(at, "routes", BTreeMap::new())?;
    if json {
        println!("{body}");
    } else {
        let v: Value = serde_json::from_str(&body).context("the controller's routes")?;
        let items = v.as_array().cloned().unwrap_or_default();
        println!("{}", tables::routes(&items));
    }
    Ok(())
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

/// `keel findings [--since T] [filters]`: every committed finding (open and
/// closed) that passes `filter`, as a table or one JSON array; with
/// `--since`, those open at or after T, from the history first.
pub(crate) fn findings(
    at: &ControllerAt,
    since: Option<&str>,
    filter: &FindingFilter,
    json: bool,
) -> Result<()> {
    let op = connect(at)?;
    let (mut current, _) = op.all_pages("findings", BTreeMap::new(), "items", "offset", "next")?;
    let mut out = Vec::new();
    if let Some(since) = since {
        let t = parse_since(since, now())?;
        out = history(&op, "finding", t)?;
        current.retain(|f| f["closed"].as_f64().is_none_or(|c| c >= t));
    }
    out.extend(current);
    let out = filter.apply(out);
    if json {
        println!("{}", Value::Array(out));
    } else {
        println!("{}", tables::findings(&out, now()));
    }
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
/// and recently ended), as a table or one JSON array; with `--job`, that
/// one (an error if unknown).
pub(crate) fn jobs(at: &ControllerAt, job: Option<&str>, json: bool) -> Result<()> {
    let op = connect(at)?;
    let p = match job {
        Some(j) => params([("job", j.to_string())]),
        None => BTreeMap::new(),
    };
    let (items, _) = op.all_pages("jobs", p, "items", "offset", "next")?;
    if let (Some(j), true) = (job, items.is_empty()) {
        bail!("{}: no job {j:?} known", op.name());
    }
    if json {
        println!("{}", Value::Array(items));
    } else {
        println!("{}", tables::jobs(&items, now()));
    }
    Ok(())
}
