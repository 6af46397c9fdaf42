//! The operator's lists as tables (the default of `keel findings`, `keel
//! jobs`, `keel routes`, `keel status`, `keel actions`); `--json` prints the
//! controller's JSON instead.

use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use serde_json::Value;

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    t
}

/// A cell: a string as it is, a number or list compact, nothing as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            a.iter().map(cell).collect::<Vec<_>>().join(", ")
        }
        Value::Object(m) if m.is_empty() => "-".into(),
        Value::Object(m) if m.values().all(|x| !x.is_object() && !x.is_array()) => m
            .iter()
            .map(|(k, v)| format!("{k}: {}", cell(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// `3 jobs`, `1 job`.
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// How long ago `t` (Unix seconds) was: `42s ago`, `5m ago`, `3h ago`, `2d ago`.
pub fn ago(t: &Value, now: f64) -> String {
    let Some(t) = t.as_f64().filter(|t| *t > 0.0) else {
        return "-".into();
    };
    let s = (now - t).max(0.0);
    let (n, unit) = match s {
        s if s < 120.0 => (s, "s"),
        s if s < 7200.0 => (s / 60.0, "m"),
        s if s < 172_800.0 => (s / 3600.0, "h"),
        s => (s / 86_400.0, "d"),
    };
    format!("{}{unit} ago", n.floor())
}

/// Where a finding is: node, rank, GPU (and MIG instance), device.
fn locus(f: &Value) -> String {
    let mut parts = Vec::new();
    for (key, label) in [
        ("node", ""),
        ("rank", "rank "),
        ("gpu", "gpu "),
        ("gpu_instance", "mig "),
        ("device", ""),
    ] {
        if !f[key].is_null() {
            parts.push(format!("{label}{}", cell(&f[key])));
        }
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

/// `keel findings`: one row per committed finding, then the counts.
pub fn findings(items: &[Value], now: f64) -> String {
    let mut t = table(&[
        "ID", "KIND", "CAUSE", "SEVERITY", "CONF", "JOB", "WHERE", "OPENED", "CLOSED",
    ]);
    for e in items {
        let f = &e["finding"];
        t.add_row(vec![
            cell(&e["id"]),
            cell(&f["kind"]),
            cell(&f["cause"]),
            cell(&f["severity"]),
            f["confidence"]
                .as_f64()
                .map_or("-".into(), |c| format!("{c:.2}")),
            cell(&f["job"]),
            locus(f),
            ago(&e["opened"], now),
            if e["closed"].is_null() {
                "open".into()
            } else {
                ago(&e["closed"], now)
            },
        ]);
    }
    let open = items.iter().filter(|e| e["closed"].is_null()).count();
    format!("{t}\n{}, {open} open", count(items.len(), "finding"))
}

/// `keel jobs`: one row per job record.
pub fn jobs(items: &[Value], now: f64) -> String {
    let mut t = table(&["JOB", "STATE", "TENANT", "NODES", "RANKS", "UPDATED"]);
    for j in items {
        let ranks: usize = j["ranks"].as_object().map_or(0, |m| {
            m.values().filter_map(Value::as_array).map(Vec::len).sum()
        });
        let nodes = match j["ranks"].as_object() {
            Some(m) if !m.is_empty() => m.keys().cloned().collect::<Vec<_>>().join(", "),
            _ => cell(&j["nodes"]),
        };
        t.add_row(vec![
            cell(&j["job"]),
            cell(&j["state"]),
            cell(&j["tenant"]),
            nodes,
            ranks.to_string(),
            ago(&j["ts"], now),
        ]);
    }
    format!("{t}\n{}", count(items.len(), "job"))
}

/// `keel routes`: which correlator host holds each job.
pub fn routes(items: &[Value]) -> String {
    let mut t = table(&["JOB", "HOST", "ADDR", "ENDED"]);
    for r in items {
        t.add_row(vec![
            cell(&r["job"]),
            cell(&r["host"]),
            cell(&r["addr"]),
            if r["ended"] == true { "yes" } else { "no" }.into(),
        ]);
    }
    format!("{t}\n{}", count(items.len(), "route"))
}

/// The fields of `keel status` first shown, in this order; any others follow.
const STATUS_ORDER: &[&str] = &[
    "id",
    "leader",
    "term",
    "commit",
    "applied",
    "members",
    "jobs",
    "running_jobs",
    "findings",
    "open_findings",
    "oldest_open_finding_opened",
    "ledger",
    "actions_failed",
    "audit",
    "paused",
    "breaker_tripped",
];

/// `keel status`: one row per field of the replica's view.
pub fn status(v: &Value, now: f64) -> String {
    let mut t = table(&["FIELD", "VALUE"]);
    let Some(m) = v.as_object() else {
        return cell(v);
    };
    let rest = m.keys().filter(|k| !STATUS_ORDER.contains(&k.as_str()));
    for k in STATUS_ORDER
        .iter()
        .copied()
        .filter(|k| m.contains_key(*k))
        .chain(rest.map(String::as_str))
    {
        let value = match k {
            "oldest_open_finding_opened" if !m[k].is_null() => ago(&m[k], now),
            "paused" if m[k].is_object() => format!("yes: {}", cell(&m[k]["reason"])),
            "paused" | "breaker_tripped" if m[k].is_null() || m[k] == false => "no".into(),
            "breaker_tripped" if m[k] == true => "yes".into(),
            "certificate" if m[k]["not_after"].is_string() => format!(
                "until {} ({} days left{})",
                cell(&m[k]["not_after"]),
                cell(&m[k]["days_left"]),
                if m[k]["expires_soon"] == true {
                    ": renew it"
                } else {
                    ""
                }
            ),
            _ => cell(&m[k]),
        };
        t.add_row(vec![k.to_string(), value]);
    }
    t.to_string()
}

/// `keel actions`: the ledger, then its audit trail.
pub fn actions(v: &Value, now: f64) -> String {
    let mut ledger = table(&["STATUS", "ACTION", "TARGET", "SENT", "SINCE", "KEY"]);
    for e in v["ledger"].as_array().into_iter().flatten() {
        ledger.add_row(vec![
            cell(&e["status"]),
            cell(&e["action"]),
            cell(&e["target"]),
            cell(&e["dispatches"]),
            ago(&e["since"], now),
            cell(&e["key"]),
        ]);
    }
    let mut audit = table(&["#", "WHEN", "FROM", "TO", "KEY", "DETAIL", "BY"]);
    for a in v["audit"].as_array().into_iter().flatten() {
        audit.add_row(vec![
            cell(&a["index"]),
            ago(&a["ts"], now),
            cell(&a["from"]),
            cell(&a["to"]),
            cell(&a["key"]),
            cell(&a["detail"]),
            cell(&a["by"]),
        ]);
    }
    format!("{ledger}\n\naudit trail:\n{audit}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(ago(&json!(100.0), 142.0), "42s ago");
        assert_eq!(ago(&json!(0.0), 142.0), "-");
        assert_eq!(ago(&Value::Null, 142.0), "-");
        assert_eq!(ago(&json!(0.5), 600.5), "10m ago");
        assert_eq!(ago(&json!(1.0), 3.0 * 3600.0 + 1.0), "3h ago");
        assert_eq!(ago(&json!(1.0), 3.0 * 86_400.0 + 1.0), "3d ago");
    }

    #[test]
    fn a_findings_table_has_a_header_a_row_each_and_counts() {
        let items = vec![
            json!({"id": 7, "opened": 90.0, "closed": null, "finding": {
                "kind": "tp_straggler", "cause": "host", "severity": "warning",
                "confidence": 0.8, "job": "j1", "node": "n01", "rank": 3}}),
            json!({"id": 8, "opened": 50.0, "closed": 95.0, "finding": {
                "kind": "gpu_squatter", "node": "n02", "gpu": 1}}),
        ];
        let out = findings(&items, 100.0);
        for want in [
            "KIND",
            "tp_straggler",
            "n01 rank 3",
            "n02 gpu 1",
            "0.80",
            "10s ago",
            "open",
            "5s ago",
            "2 findings, 1 open",
        ] {
            assert!(out.contains(want), "{want:?} missing:\n{out}");
        }
    }

    #[test]
    fn status_rows_lead_with_the_raft_view() {
        let v = json!({"applied": 9, "commit": 9, "digest": "ab", "leader": 2,
                       "members": [1, 2, 3], "term": 4, "paused": null,
                       "policies": {"default": 2}, "breaker_tripped": null,
                       "certificate": {"days_left": 20, "expires_soon": true,
                                       "not_after": "2026-12-20T00:00:00Z"}});
        let out = status(&v, 0.0);
        let pos = |k: &str| out.find(k).unwrap_or_else(|| panic!("{k} missing:\n{out}"));
        assert!(pos("leader") < pos("term") && pos("term") < pos("commit"));
        assert!(pos("applied") < pos("members") && pos("members") < pos("digest"));
        assert!(out.contains("1, 2, 3"), "{out}");
        assert!(out.contains("default: 2"), "{out}");
        assert!(out.contains("20 days left: renew it"), "{out}");
        assert!(!out.contains("null"), "{out}");
    }

    #[test]
    fn jobs_routes_and_actions_tables_show_their_fields() {
        let j = jobs(
            &[json!({"job": "j1", "state": "RUNNING", "ts": 1.0,
                     "ranks": {"n01": [0, 1], "n02": [2, 3]}})],
            2.0,
        );
        assert!(j.contains("n01, n02") && j.contains("RUNNING"), "{j}");
        assert!(j.ends_with("1 job"), "{j}");
        let r = routes(&[json!({"job": "j1", "host": "c1", "addr": "1.2.3.4:5", "ended": false})]);
        assert!(r.contains("1.2.3.4:5") && r.contains("no"), "{r}");
        let a = actions(
            &json!({"ledger": [{"status": "planned", "action": "drain_node",
                                "target": "node/n01", "dispatches": 0, "key": "k1"}],
                    "audit": [{"index": 1, "to": "planned", "key": "k1",
                               "detail": "rule r1", "by": "controller:ctl-1"}]}),
            0.0,
        );
        assert!(a.contains("node/n01") && a.contains("rule r1"), "{a}");
    }
}
