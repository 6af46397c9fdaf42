//! Answers that could outgrow a frame, cut into pages: `status` reports
//! counts, never lists; `findings`, `actions` and `jobs` hand out a page at
//! a time (params `offset` and `limit`; the reply's `next` is the offset to
//! ask for next, `null` after the last page); `history` pages through the
//! on-disk history by byte offset. A page stops at [`PAGE_BYTES`] of items,
//! so a reply fits a frame whatever the items hold.

use super::ControllerState;
use anyhow::{Context, Result};
use keel_consensus::node::{LogStore, Node};
use keel_model::Query;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Bytes of items in one page at most (JSON): a quarter of a frame.
pub const PAGE_BYTES: usize = 256 * 1024;
/// Items in one page at most, whatever `limit` asks.
pub const PAGE_ITEMS: usize = 10_000;

/// `offset` and `limit` of a paged query (0 and [`PAGE_ITEMS`] when absent).
pub fn window(q: &Query) -> Result<(usize, usize)> {
    let num = |k: &str, default: usize| -> Result<usize> {
        q.params.get(k).map_or(Ok(default), |v| {
            v.parse().with_context(|| format!("param `{k}`"))
        })
    };
    Ok((
        num("offset", 0)?,
        num("limit", PAGE_ITEMS)?.clamp(1, PAGE_ITEMS),
    ))
}

/// Items from `offset` on, at most `limit` and about `max_bytes` of them
/// (at least one when any is left), and the offset of the next page.
pub fn page<T: Serialize>(
    items: impl Iterator<Item = T>,
    offset: usize,
    limit: usize,
    max_bytes: usize,
) -> (Vec<Value>, Option<usize>) {
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut items = items.skip(offset).peekable();
    for item in items.by_ref() {
        let v = serde_json::to_value(item).unwrap_or(Value::Null);
        bytes += v.to_string().len();
        out.push(v);
        if out.len() >= limit || bytes >= max_bytes {
            break;
        }
    }
    let next = items.peek().is_some().then_some(offset + out.len());
    (out, next)
}

/// A replica's view, as `keel status` prints it: counts, not lists, so the
/// answer stays small whatever the state holds.
pub fn status<S: LogStore + Clone>(node: &Node<S>) -> String {
    status_with(node, &node.state.digest())
}

/// [`status`] with the state's digest already computed.
pub fn status_with<S: LogStore + Clone>(node: &Node<S>, digest: &str) -> String {
    let s = &node.state;
    let running = s.jobs.values().filter(|j| !j.state.is_finished()).count();
    let policies: BTreeMap<&String, usize> = s.policies.iter().map(|(k, v)| (k, v.len())).collect();
    let failed = s
        .ledger
        .values()
        .filter(|e| e.status == keel_model::ActionStatus::Failed)
        .count();
    // Counts by label, for /metrics: kinds x causes x open/closed, and
    // actions x statuses x the policy's rules (bounded by the policy).
    let mut findings_by: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
    for f in s.findings.values() {
        let state = if f.closed.is_some() { "closed" } else { "open" };
        *findings_by
            .entry((f.finding.kind.wire(), f.finding.cause.wire(), state))
            .or_default() += 1;
    }
    let mut actions_by: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
    for e in s.ledger.values() {
        *actions_by
            .entry((e.action.wire(), e.status.wire(), e.handling.rule.as_str()))
            .or_default() += 1;
    }
    let findings_by: Vec<_> = findings_by
        .into_iter()
        .map(|((kind, cause, state), n)| json!({"kind": kind, "cause": cause, "state": state, "n": n}))
        .collect();
    let actions_by: Vec<_> = actions_by
        .into_iter()
        .map(|((action, status, rule), n)| json!({"action": action, "status": status, "rule": rule, "n": n}))
        .collect();
    let oldest_open = s
        .open_findings()
        .map(|f| f.opened)
        .filter(|t| t.is_finite())
        .min_by(f64::total_cmp);
    json!({
        "id": node.id(),
        "leader": node.leader_id(),
        "term": node.term(),
        "commit": node.commit_index(),
        "applied": s.applied,
        "digest": digest,
        "members": node.voters(),
        "jobs": s.jobs.len(),
        "running_jobs": running,
        "findings": s.findings.len(),
        "open_findings": s.open_findings().count(),
        "ledger": s.ledger.len(),
        "actions_failed": failed,
        "oldest_open_finding_opened": oldest_open,
        "audit": s.audit.len(),
        "policies": policies,
        "sessions": s.sessions(),
        "paused": s.brakes.paused,
        "breaker_tripped": s.brakes.tripped,
        "findings_by": findings_by,
        "actions_by": actions_by,
    })
    .to_string()
}

/// This replica's own certificate (as last loaded, SIGHUP included): when
/// it ends, the days left, and whether that is within the warning period.
pub(super) fn certificate(
    creds: &keel_transport::Credentials,
    now: keel_transport::expiry::OffsetDateTime,
) -> serde_json::Value {
    match keel_transport::reload::latest(creds).expiry() {
        Ok(e) => serde_json::json!({
            "not_after": e.not_after_rfc3339(),
            "days_left": e.days_left(now),
            "expires_soon": e.should_warn(now),
        }),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    }
}

/// `findings`: one page of the committed findings, by id.
pub fn findings(s: &ControllerState, offset: usize, limit: usize) -> String {
    let st = &s.node.state;
    let (items, next) = page(st.findings.values(), offset, limit, PAGE_BYTES);
    json!({"items": items, "next": next, "total": st.findings.len()}).to_string()
}

/// `jobs`: one page of the job records (or the one named by `job`).
pub fn jobs(s: &ControllerState, job: Option<&str>, offset: usize, limit: usize) -> String {
    let st = &s.node.state;
    let (items, next) = match job {
        Some(name) => (
            st.jobs
                .get(name)
                .map(|j| serde_json::to_value(j).unwrap_or(Value::Null))
                .into_iter()
                .collect(),
            None,
        ),
        None => page(st.jobs.values(), offset, limit, PAGE_BYTES),
    };
    json!({"items": items, "next": next, "total": st.jobs.len()}).to_string()
}

/// `actions`: a page of the ledger (from `offset`) and one of the audit
/// trail (from `audit_offset`), each with its own `next`.
pub fn actions(s: &mut ControllerState, q: &Query) -> Result<String> {
    let (offset, limit) = window(q)?;
    let audit_offset: usize = q
        .params
        .get("audit_offset")
        .map_or(Ok(0), |v| v.parse())
        .context("param `audit_offset`")?;
    let st = &s.node.state;
    let (ledger, ledger_next) = page(st.ledger.values(), offset, limit, PAGE_BYTES / 2);
    let (audit, audit_next) = page(st.audit.iter(), audit_offset, limit, PAGE_BYTES / 2);
    Ok(json!({
        "ledger": ledger,
        "next": ledger_next,
        "audit": audit,
        "audit_next": audit_next,
        "audit_dropped": st.audit_dropped,
        "executors": s.steward.executors(),
    })
    .to_string())
}

/// The time of a history line, read as the record it is.
pub fn history_ts(v: &Value) -> Option<f64> {
    serde_json::from_value::<keel_consensus::history::HistoryRecord>(v.clone())
        .ok()
        .map(|r| r.ts())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_everything_once() {
        let items: Vec<u32> = (0..1000).collect();
        let mut got = Vec::new();
        let mut offset = 0;
        loop {
            let (p, next) = page(items.iter(), offset, 300, usize::MAX);
            got.extend(p.into_iter().map(|v| v.as_u64().unwrap() as u32));
            match next {
                Some(n) => offset = n,
                None => break,
            }
        }
        assert_eq!(got, items);
    }

    #[test]
    fn a_page_stops_at_its_byte_budget() {
        let items: Vec<String> = (0..100).map(|i| format!("{i:0>1000}")).collect();
        let (p, next) = page(items.iter(), 0, PAGE_ITEMS, 10_000);
        assert!(p.len() <= 10, "{} items", p.len());
        assert_eq!(next, Some(p.len()));
        // An item larger than the budget still goes, alone.
        let (p, _) = page(items.iter(), 5, PAGE_ITEMS, 10);
        assert_eq!(p.len(), 1);
        let (p, next) = page(items.iter(), 100, 10, 10);
        assert!(p.is_empty() && next.is_none());
    }
}
