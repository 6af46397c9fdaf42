//! `keel chaos inject`: one bounded fault in one node or rank of a real
//! cluster, as a ledger action (`inject_fault`) like any other: committed
//! under the operator's certificate, sent by the leader to the executor
//! whose `[chaos]` opens that node to chaos, rolled back when its time is
//! up (or on `keel action cancel`), every step in the audit trail. With
//! `--wait`, it then says what keel found: the finding committed about that
//! node or rank between the fault's onset and 10 s after its end, its
//! cause, and how long after the onset it was committed.

use crate::controller::Operator;
use crate::ControllerAt;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long after a fault's end a finding still counts as its own, s.
pub const FOUND_AFTER_END_S: f64 = 10.0;

/// What `keel chaos inject` was asked.
pub struct InjectOpts {
    pub cause: String,
    /// `node/N` or `job/J/rank/R`.
    pub target: String,
    /// `30s`, `2m`, `45`.
    pub duration: String,
    pub wait: bool,
    pub json: bool,
}

fn now() -> f64 {
    keel_actors::sources::unix_now()
}

/// Seconds from `30s`, `2m` or `45`.
pub fn parse_for(s: &str) -> Result<f64> {
    let s = s.trim();
    let (num, unit) = match s.strip_suffix('m') {
        Some(n) => (n, 60.0),
        None => (s.strip_suffix('s').unwrap_or(s), 1.0),
    };
    match num.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v * unit),
        _ => bail!("--for {s:?}: expected seconds such as 30s, 2m or 45"),
    }
}

/// The ledger target (`node/N`) and parameters of `target`: a rank is
/// found on its node in the controller's job record.
fn resolve(op: &Operator, target: &str) -> Result<(String, BTreeMap<String, String>)> {
    let parts: Vec<&str> = target.split('/').collect();
    match parts.as_slice() {
        ["node", n] if !n.is_empty() => Ok((target.to_string(), BTreeMap::new())),
        ["job", job, "rank", rank] => {
            let r: u32 = rank.parse().context("--target: the rank is a number")?;
            let (items, _) = op.all_pages(
                "jobs",
                BTreeMap::from([("job".to_string(), job.to_string())]),
                "items",
                "offset",
                "next",
            )?;
            let record = items
                .first()
                .with_context(|| format!("the controller knows no job {job}"))?;
            let node = record["ranks"]
                .as_object()
                .into_iter()
                .flatten()
                .find(|(_, ranks)| {
                    ranks
                        .as_array()
                        .is_some_and(|rs| rs.iter().any(|x| x.as_u64() == Some(r as u64)))
                })
                .map(|(n, _)| n.clone())
                .with_context(|| format!("job {job} places no rank {r} on any node"))?;
            let params = BTreeMap::from([
                ("job".to_string(), job.to_string()),
                ("rank".to_string(), r.to_string()),
            ]);
            Ok((format!("node/{node}"), params))
        }
        _ => bail!("--target {target:?}: expected node/NODE or job/JOB/rank/RANK"),
    }
}

/// Commits the injection; its ledger key.
pub fn inject(at: &ControllerAt, o: &InjectOpts) -> Result<String> {
    let dur = parse_for(&o.duration)?;
    let op = crate::queries::connect(at)?;
    let (target, mut params) = resolve(&op, &o.target)?;
    params.insert("cause".into(), o.cause.clone());
    params.insert("duration_s".into(), format!("{dur}"));
    let node = target.trim_start_matches("node/");
    let key = format!("chaos/{node}/{}/{}", o.cause, (now() * 1000.0) as u64);
    let command = json!({"plan_action": {
        "key": key,
        "action": "inject_fault",
        "target": target,
        "params": params,
        "finding": null,
        "ts": now(),
        "reason": format!("keel chaos inject: a {} fault on {} for {dur} s", o.cause, o.target),
        "handling": {"rule": "operator", "mode": "auto", "verify_s": null, "on_failure": "rollback"},
    }});
    crate::policy::propose(at, command)?;
    Ok(key)
}

/// The audit events of `key`, oldest first.
fn events<'a>(actions: &'a Value, key: &str) -> Vec<&'a Value> {
    actions["audit"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["key"] == key)
        .collect()
}

/// The time of `key`'s first move to `to`.
fn moved(actions: &Value, key: &str, to: &str) -> Option<f64> {
    events(actions, key)
        .into_iter()
        .find(|a| a["to"] == to)
        .and_then(|a| a["ts"].as_f64())
}

/// The fault's onset: the executor's own time in its acknowledgement
/// (`... from T: ...`), else the dispatch (earlier: latencies are then
/// counted long, never short).
pub fn onset(actions: &Value, key: &str) -> Option<f64> {
    let ack = events(actions, key)
        .into_iter()
        .find(|a| a["to"] == "acknowledged")?;
    let detail = ack["detail"].as_str().unwrap_or("");
    detail
        .split(" from ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|t| t.trim().parse::<f64>().ok())
        .or_else(|| moved(actions, key, "dispatched"))
}

/// What keel did with injection `key` and what it found, from the ledger
/// (`keel actions --json`) and the committed findings (`keel findings`).
pub fn report(actions: &Value, findings: &[Value], key: &str) -> Value {
    let Some(e) = actions["ledger"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["key"] == key)
    else {
        return json!({"key": key, "status": "unknown"});
    };
    let params = &e["params"];
    let dur = params["duration_s"]
        .as_str()
        .and_then(|d| d.parse::<f64>().ok())
        .unwrap_or(0.0);
    let start = onset(actions, key);
    let reverted = moved(actions, key, "rolled_back");
    // The fault is off at its revert, and at the latest at its deadline.
    let end = match (start, reverted) {
        (Some(s), Some(r)) => Some(r.min(s + dur)),
        (Some(s), None) => Some(s + dur),
        _ => None,
    };
    let node = e["target"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("node/");
    let rank = params["rank"].as_str().and_then(|r| r.parse::<u64>().ok());
    let job = params["job"].as_str();
    let about = |f: &Value| match (job, rank) {
        (Some(j), Some(r)) => {
            (f["job"] == j && f["rank"].as_u64() == Some(r))
                || (f["node"] == node && f["rank"].is_null())
        }
        _ => f["node"] == node,
    };
    let found = match (start, end) {
        (Some(s), Some(t)) => findings
            .iter()
            .filter(|x| about(&x["finding"]))
            .filter(|x| {
                x["opened"]
                    .as_f64()
                    .is_some_and(|o| o >= s && o <= t + FOUND_AFTER_END_S)
            })
            .min_by(|a, b| {
                let o = |v: &Value| v["opened"].as_f64().unwrap_or(f64::MAX);
                o(a).total_cmp(&o(b))
            }),
        _ => None,
    };
    let cause = params["cause"].as_str().unwrap_or("");
    let finding = found.map(|x| {
        json!({
            "id": x["id"],
            "kind": x["finding"]["kind"],
            "cause": x["finding"]["cause"],
            "node": x["finding"]["node"],
            "rank": x["finding"]["rank"],
            "opened": x["opened"],
            "latency_s": start.and_then(|s| x["opened"].as_f64().map(|o| o - s)),
            "cause_matches": x["finding"]["cause"] == cause,
        })
    });
    json!({
        "key": key,
        "target": e["target"],
        "params": params,
        "status": e["status"],
        "detail": e["detail"],
        "onset": start,
        "end": end,
        "audit": events(actions, key).into_iter().map(|a| json!({
            "to": a["to"], "ts": a["ts"], "by": a["by"], "detail": a["detail"],
        })).collect::<Vec<_>>(),
        "found": finding.is_some(),
        "finding": finding,
    })
}

/// Reads the ledger until `key` is in one of `statuses` (or `limit`
/// passes); the ledger as last read. A connection of its own, used all
/// along (one left idle between the calls of a long wait may be gone).
pub fn wait_for(at: &ControllerAt, key: &str, statuses: &[&str], limit: Duration) -> Result<Value> {
    let op = crate::queries::connect(at)?;
    let until = Instant::now() + limit;
    loop {
        let v = crate::queries::actions(&op, None)?;
        let status = v["ledger"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["key"] == key)
            .and_then(|e| e["status"].as_str().map(String::from));
        if status.as_deref().is_some_and(|s| statuses.contains(&s)) || Instant::now() > until {
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The ledger (`keel actions --json`) and every committed finding (`keel
/// findings`), over a connection of their own.
pub fn fetch(at: &ControllerAt) -> Result<(Value, Vec<Value>)> {
    let op = crate::queries::connect(at)?;
    let actions = crate::queries::actions(&op, None)?;
    let (findings, _) = op.all_pages("findings", BTreeMap::new(), "items", "offset", "next")?;
    Ok((actions, findings))
}

/// `keel chaos inject`.
pub fn run(at: &ControllerAt, o: InjectOpts) -> Result<()> {
    let dur = parse_for(&o.duration)?;
    let key = inject(at, &o)?;
    if !o.wait {
        println!("{key}");
        return Ok(());
    }
    eprintln!("injection {key} committed; waiting for its end");
    wait_for(
        at,
        &key,
        &["rolled_back"],
        Duration::from_secs_f64(dur + 60.0),
    )?;
    // A finding may still come until 10 s after the end.
    let (v, found) = fetch(at)?;
    let mut r = report(&v, &found, &key);
    if let Some(end) = r["end"].as_f64() {
        let left = end + FOUND_AFTER_END_S - now();
        if r["found"] != true && left > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(left));
            let (v, found) = fetch(at)?;
            r = report(&v, &found, &key);
        }
    }
    if o.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_report(&r);
    }
    Ok(())
}

fn print_report(r: &Value) {
    println!(
        "{} {} ({})",
        r["key"].as_str().unwrap_or("?"),
        r["status"].as_str().unwrap_or("?"),
        r["detail"].as_str().unwrap_or("")
    );
    for a in r["audit"].as_array().into_iter().flatten() {
        println!(
            "  {:>17.3} {:<13} {} (by {})",
            a["ts"].as_f64().unwrap_or(0.0),
            a["to"].as_str().unwrap_or("?"),
            a["detail"].as_str().unwrap_or(""),
            a["by"].as_str().unwrap_or("?")
        );
    }
    match &r["finding"] {
        Value::Null => println!("not found: no finding about it was committed"),
        f => println!(
            "found: finding {} {} cause {}{}, committed {:.2} s after the onset",
            f["id"],
            f["kind"].as_str().unwrap_or("?"),
            f["cause"].as_str().unwrap_or("?"),
            if f["cause_matches"] == true {
                " (the injected one)"
            } else {
                " (not the injected one)"
            },
            f["latency_s"].as_f64().unwrap_or(f64::NAN)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_seconds() {
        assert_eq!(parse_for("30s").unwrap(), 30.0);
        assert_eq!(parse_for("2m").unwrap(), 120.0);
        assert_eq!(parse_for("4.5").unwrap(), 4.5);
        assert!(parse_for("-3s").is_err());
        assert!(parse_for("soon").is_err());
    }

    #[test]
    fn the_report_takes_the_first_finding_about_the_rank_during_the_fault() {
        let key = "chaos/n02/host/1";
        let actions = json!({
            "ledger": [{"key": key, "target": "node/n02", "status": "rolled_back", "detail": "ok",
                "params": {"cause": "host", "duration_s": "10", "job": "j", "rank": "1"}}],
            "audit": [
                {"key": key, "to": "planned", "ts": 99.0, "by": "operator:op/x", "detail": ""},
                {"key": key, "to": "dispatched", "ts": 99.5, "by": "s", "detail": ""},
                {"key": key, "to": "acknowledged", "ts": 100.2, "by": "s",
                 "detail": "exec-1: host fault on n02 for 10 s from 100.000: cpu.max"},
                {"key": key, "to": "rolled_back", "ts": 110.4, "by": "s", "detail": "reverted"},
            ]
        });
        let f = |id: u64, rank: u64, opened: f64, cause: &str| {
            json!({"id": id, "opened": opened, "finding": {
                "kind": "tp_straggler", "cause": cause, "job": "j", "node": "n02", "rank": rank}})
        };
        let findings = vec![
            f(1, 1, 90.0, "host"),     // before the onset
            f(2, 2, 101.0, "host"),    // another rank
            f(3, 1, 101.5, "host"),    // this one
            f(4, 1, 102.0, "network"), // later
        ];
        let r = report(&actions, &findings, key);
        assert_eq!(r["onset"].as_f64(), Some(100.0));
        assert_eq!(r["end"].as_f64(), Some(110.0));
        assert_eq!(r["finding"]["id"], 3);
        assert_eq!(r["finding"]["latency_s"].as_f64(), Some(1.5));
        assert_eq!(r["finding"]["cause_matches"], true);
        assert_eq!(r["audit"].as_array().unwrap().len(), 4);
        let none = report(&actions, &findings[..2], key);
        assert_eq!(none["found"], false);
    }
}
