//! `keel findings --open --job J --kind K --node N`: which committed
//! findings to show, over the controller's JSON (each an entry with its
//! `finding`, `opened` and `closed`).

use anyhow::{bail, Result};
use keel_model::FindingKind;
use serde_json::Value;

/// What `keel findings` keeps; every condition given must hold.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FindingFilter {
    /// Only those not closed.
    pub open: bool,
    pub job: Option<String>,
    pub kind: Option<FindingKind>,
    pub node: Option<String>,
}

impl FindingFilter {
    /// The filter of the flags; an unknown `--kind` is an error naming the
    /// known ones.
    pub fn new(
        open: bool,
        job: Option<String>,
        kind: Option<&str>,
        node: Option<String>,
    ) -> Result<FindingFilter> {
        let kind = match kind {
            None => None,
            Some(k) => match FindingKind::from_wire(k) {
                Some(k) => Some(k),
                None => {
                    let known: Vec<&str> = FindingKind::ALL.iter().map(|k| k.wire()).collect();
                    bail!("--kind {k:?}: no such kind; known: {}", known.join(", "));
                }
            },
        };
        Ok(FindingFilter {
            open,
            job,
            kind,
            node,
        })
    }

    /// Whether a committed finding (the controller's entry) passes.
    pub fn keeps(&self, entry: &Value) -> bool {
        let f = &entry["finding"];
        let is = |v: &Value, want: &Option<String>| want.as_deref().is_none_or(|w| v == w);
        (!self.open || entry["closed"].is_null())
            && is(&f["job"], &self.job)
            && is(&f["node"], &self.node)
            && self.kind.is_none_or(|k| f["kind"] == k.wire())
    }

    /// The entries that pass, in their order.
    pub fn apply(&self, entries: Vec<Value>) -> Vec<Value> {
        entries.into_iter().filter(|e| self.keeps(e)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entries() -> Vec<Value> {
        vec![
            json!({"id": 1, "opened": 10.0, "closed": null,
                   "finding": {"kind": "tp_straggler", "job": "a", "node": "n01", "rank": 3}}),
            json!({"id": 2, "opened": 11.0, "closed": 20.0,
                   "finding": {"kind": "tp_straggler", "job": "b", "node": "n02"}}),
            json!({"id": 3, "opened": 12.0,
                   "finding": {"kind": "gpu_squatter", "node": "n01", "gpu": 0}}),
        ]
    }

    fn ids(f: &FindingFilter) -> Vec<u64> {
        f.apply(entries())
            .iter()
            .map(|e| e["id"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn no_filter_keeps_everything() {
        assert_eq!(ids(&FindingFilter::default()), vec![1, 2, 3]);
    }

    #[test]
    fn each_condition_narrows_and_they_combine() {
        let f = |open, job: Option<&str>, kind: Option<&str>, node: Option<&str>| {
            FindingFilter::new(open, job.map(Into::into), kind, node.map(Into::into)).unwrap()
        };
        // A missing `closed` is open too.
        assert_eq!(ids(&f(true, None, None, None)), vec![1, 3]);
        assert_eq!(ids(&f(false, Some("b"), None, None)), vec![2]);
        assert_eq!(ids(&f(false, None, Some("tp_straggler"), None)), vec![1, 2]);
        assert_eq!(ids(&f(false, None, None, Some("n01"))), vec![1, 3]);
        assert_eq!(
            ids(&f(true, None, Some("tp_straggler"), Some("n01"))),
            vec![1]
        );
        // A finding without a job is not any job's.
        assert_eq!(ids(&f(false, Some("x"), None, None)), Vec::<u64>::new());
    }

    #[test]
    fn an_unknown_kind_names_the_known_ones() {
        let e = FindingFilter::new(false, None, Some("not_a_kind"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not_a_kind"), "{e}");
        for k in FindingKind::ALL {
            assert!(e.contains(k.wire()), "{} missing: {e}", k.wire());
        }
    }
}
