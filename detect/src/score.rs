//! Scoring findings against labels, as `spec/trace-format.md` defines it: a
//! label is detected by a finding of its kind and locus concluded between its
//! onset and 10 s after its end; latency is the finding's `ts` minus the
//! onset; a finding that matches no label is a false positive.

use keel_model::{Finding, FindingKind, Label, Locus};
use std::collections::BTreeMap;

/// A finding may come this long after its label ends and still count.
pub const LATE_SLACK_S: f64 = 10.0;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindScore {
    pub labels: u64,
    pub detected: u64,
    pub findings: u64,
    pub false_positives: u64,
    /// Detected labels that carry a cause, and those whose first finding agreed.
    pub caused: u64,
    pub cause_right: u64,
    pub latencies: Vec<f64>,
}

impl KindScore {
    pub fn precision(&self) -> Option<f64> {
        (self.findings > 0)
            .then(|| (self.findings - self.false_positives) as f64 / self.findings as f64)
    }

    pub fn recall(&self) -> Option<f64> {
        (self.labels > 0).then(|| self.detected as f64 / self.labels as f64)
    }

    pub fn f1(&self) -> Option<f64> {
        let (p, r) = (self.precision()?, self.recall()?);
        Some(if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        })
    }

    pub fn cause_accuracy(&self) -> Option<f64> {
        (self.caused > 0).then(|| self.cause_right as f64 / self.caused as f64)
    }

    /// Latency quantile by nearest rank (q in 0..=1).
    pub fn latency(&self, q: f64) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut v = self.latencies.clone();
        v.sort_by(f64::total_cmp);
        let idx = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        Some(v[idx])
    }

    fn merge(&mut self, o: &KindScore) {
        self.labels += o.labels;
        self.detected += o.detected;
        self.findings += o.findings;
        self.false_positives += o.false_positives;
        self.caused += o.caused;
        self.cause_right += o.cause_right;
        self.latencies.extend_from_slice(&o.latencies);
    }
}

/// Scores per kind; `overall` sums them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scorecard {
    pub kinds: BTreeMap<FindingKind, KindScore>,
    /// Labels or findings whose locus lacks a field their kind needs.
    pub unlocated: u64,
}

impl Scorecard {
    pub fn overall(&self) -> KindScore {
        let mut all = KindScore::default();
        for k in self.kinds.values() {
            all.merge(k);
        }
        all
    }

    /// Adds another trace's scores (loci of different traces never match).
    pub fn merge(&mut self, other: &Scorecard) {
        for (k, s) in &other.kinds {
            self.kinds.entry(*k).or_default().merge(s);
        }
        self.unlocated += other.unlocated;
    }
}

/// Scores one trace's findings against its labels.
pub fn score(labels: &[Label], findings: &[Finding]) -> Scorecard {
    let mut card = Scorecard::default();
    let located: Vec<(&Finding, Option<Locus>)> = findings.iter().map(|f| (f, f.locus())).collect();
    let mut matched = vec![false; findings.len()];
    for label in labels {
        let entry = card.kinds.entry(label.kind).or_default();
        entry.labels += 1;
        let Some(locus) = label.locus() else {
            card.unlocated += 1;
            continue;
        };
        let mut first: Option<&Finding> = None;
        for (i, (f, fl)) in located.iter().enumerate() {
            if f.kind == label.kind
                && fl.as_ref() == Some(&locus)
                && f.ts >= label.onset
                && f.ts <= label.end + LATE_SLACK_S
            {
                matched[i] = true;
                if first.is_none_or(|x| f.ts < x.ts) {
                    first = Some(f);
                }
            }
        }
        if let Some(f) = first {
            entry.detected += 1;
            entry.latencies.push(f.ts - label.onset);
            if let Some(cause) = label.cause {
                entry.caused += 1;
                if f.cause == cause {
                    entry.cause_right += 1;
                }
            }
        }
    }
    for (i, (f, fl)) in located.iter().enumerate() {
        let entry = card.kinds.entry(f.kind).or_default();
        entry.findings += 1;
        if fl.is_none() {
            card.unlocated += 1;
        }
        if !matched[i] {
            entry.false_positives += 1;
        }
    }
    card
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_model::{Cause, Severity};

    fn label(rank: u32, onset: f64, end: f64, cause: Cause) -> Label {
        Label {
            kind: FindingKind::TpStraggler,
            cause: Some(cause),
            job: Some("j".into()),
            node: Some("n".into()),
            rank: Some(rank),
            gpu: None,
            peer: None,
            onset,
            end,
        }
    }

    fn finding(rank: u32, ts: f64, cause: Cause) -> Finding {
        Finding {
            basis: None,
            gpu_instance: None,
            related: Vec::new(),
            ts,
            kind: FindingKind::TpStraggler,
            cause,
            severity: Severity::Warning,
            confidence: 0.9,
            job: Some("j".into()),
            node: Some("n".into()),
            rank: Some(rank),
            gpu: None,
            device: None,
            evidence: vec![],
        }
    }

    #[test]
    fn matches_by_kind_locus_and_window() {
        let labels = [
            label(1, 100.0, 150.0, Cause::Pcie),
            label(2, 200.0, 250.0, Cause::Host),
        ];
        let findings = [
            finding(1, 101.5, Cause::Pcie),    // detected, cause right
            finding(2, 259.0, Cause::Network), // detected within slack, cause wrong
            finding(3, 120.0, Cause::Pcie),    // wrong rank: false positive
            finding(1, 170.0, Cause::Pcie),    // past end + slack: false positive
        ];
        let card = score(&labels, &findings);
        let s = &card.kinds[&FindingKind::TpStraggler];
        assert_eq!(
            (s.labels, s.detected, s.findings, s.false_positives),
            (2, 2, 4, 2)
        );
        assert_eq!(s.cause_accuracy(), Some(0.5));
        assert_eq!(s.precision(), Some(0.5));
        assert_eq!(s.recall(), Some(1.0));
        assert!((s.latency(0.5).unwrap() - 1.5).abs() < 1e-9);
        assert!((s.latency(1.0).unwrap() - 59.0).abs() < 1e-9);
    }

    #[test]
    fn a_finding_before_onset_does_not_count() {
        let card = score(
            &[label(1, 100.0, 150.0, Cause::Pcie)],
            &[finding(1, 99.0, Cause::Pcie)],
        );
        let s = &card.kinds[&FindingKind::TpStraggler];
        assert_eq!((s.detected, s.false_positives), (0, 1));
    }
}
