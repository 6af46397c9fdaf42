//! Node-level network conditions: `retransmit_storm` (TCP retransmits jump
//! far above the node's habit and become a real share of what it sends) and
//! `nic_saturation` (a NIC at line rate with its queue building).

use crate::config::NetworkConfig;
use crate::episode::{Episode, Reported, Step};
use crate::signals::{SignalStore, Sub};
use keel_model::{Cause, Dir, Finding, FindingKind, MetricName, MetricSample, Name, Timestamp};
use rustc_hash::FxHashMap as HashMap;

#[derive(Debug)]
pub struct NetworkDetector {
    cfg: NetworkConfig,
    storms: HashMap<Name, (Episode, Reported)>,
    saturation: HashMap<(Name, Name, Option<Dir>), (Episode, Reported)>,
}

impl NetworkDetector {
    pub fn new(cfg: NetworkConfig) -> Self {
        NetworkDetector {
            cfg,
            storms: HashMap::default(),
            saturation: HashMap::default(),
        }
    }

    /// Called after `signals` took the sample, with the rate or value it
    /// derived. Findings concluded go to `out`; the clearings of findings
    /// whose condition has cleared go to `cleared`.
    pub fn push(
        &mut self,
        s: &MetricSample,
        derived: f64,
        signals: &SignalStore,
        now: Timestamp,
        out: &mut Vec<Finding>,
        cleared: &mut Vec<Finding>,
    ) {
        match s.name {
            MetricName::TcpRetransSegs => self.retransmits(s, derived, signals, now, out, cleared),
            MetricName::DpuNicLinkUtil => self.link(s, derived, signals, now, out, cleared),
            _ => {}
        }
    }

    fn retransmits(
        &mut self,
        s: &MetricSample,
        rate: f64,
        signals: &SignalStore,
        now: Timestamp,
        out: &mut Vec<Finding>,
        cleared: &mut Vec<Finding>,
    ) {
        let cfg = &self.cfg;
        let (episode, reported) = self.storms.entry(s.node.clone()).or_default();
        let out_rate = signals
            .get(&s.node, MetricName::TcpOutSegs, &Sub::Node)
            .and_then(|x| x.latest())
            .filter(|(ts, _)| s.ts - ts <= 5.0)
            .map(|p| p.1);
        let before = episode.suspect_since().unwrap_or(s.ts) - 2.0;
        let baseline = signals
            .get(&s.node, MetricName::TcpRetransSegs, &Sub::Node)
            .and_then(|x| x.baseline(before));
        let min_rate = if episode.is_open() {
            cfg.retrans_min_per_s / 2.0
        } else {
            cfg.retrans_min_per_s
        };
        let share_ok = out_rate.is_none_or(|o| o <= 0.0 || rate / o >= cfg.retrans_share);
        let base_ok = episode.is_open()
            || baseline.is_none_or(|b| rate >= cfg.retrans_over_baseline * b.max(1.0));
        let holds = rate >= min_rate && share_ok && base_ok;
        let since = match episode.observe(holds, s.ts, cfg.sustain_s, cfg.clear_s) {
            Step::Concluded { since } => since,
            Step::Closed => {
                cleared.extend(reported.clear(now));
                return;
            }
            Step::Nothing => return,
        };
        let mut evidence = vec![format!(
            "{}: {rate:.0} TCP retransmits/s since {since_at}",
            s.node,
            since_at = keel_model::Clock(since)
        )];
        if let Some(o) = out_rate {
            evidence.push(format!(
                "{:.2}% of {o:.0} segments/s sent",
                100.0 * rate / o.max(1.0)
            ));
        }
        if let Some(b) = baseline {
            evidence.push(format!("node's usual rate {b:.1}/s"));
        }
        let f = Finding {
            confidence: if out_rate.is_some() && baseline.is_some() {
                0.9
            } else {
                0.7
            },
            evidence,
            ..Finding::on_node(FindingKind::RetransmitStorm, Cause::Network, now, &s.node)
        };
        reported.set(&f);
        out.push(f);
    }

    fn link(
        &mut self,
        s: &MetricSample,
        util: f64,
        signals: &SignalStore,
        now: Timestamp,
        out: &mut Vec<Finding>,
        cleared: &mut Vec<Finding>,
    ) {
        let cfg = &self.cfg;
        let Some(device) = s.labels.device.clone() else {
            return;
        };
        let (episode, reported) = self
            .saturation
            .entry((s.node.clone(), device.clone(), s.labels.dir))
            .or_default();
        let queue = signals
            .get(
                &s.node,
                MetricName::DpuNicQueueDepth,
                &Sub::Device(device.clone(), s.labels.dir),
            )
            .and_then(|x| x.latest())
            .filter(|(ts, _)| s.ts - ts <= 5.0)
            .map(|p| p.1);
        let holds = if episode.is_open() {
            util >= cfg.nic_util_clear
        } else {
            util >= cfg.nic_util && queue.is_none_or(|q| q >= cfg.nic_queue)
        };
        let since = match episode.observe(holds, s.ts, cfg.sustain_s, cfg.clear_s) {
            Step::Concluded { since } => since,
            Step::Closed => {
                cleared.extend(reported.clear(now));
                return;
            }
            Step::Nothing => return,
        };
        let dir = match s.labels.dir {
            Some(Dir::Rx) => " RX",
            Some(Dir::Tx) => " TX",
            None => "",
        };
        let mut evidence = vec![format!(
            "{} {device}{dir} at {:.0}% of line rate since {since_at}",
            s.node,
            util * 100.0,
            since_at = keel_model::Clock(since)
        )];
        if let Some(q) = queue {
            evidence.push(format!("queue depth {q:.0} packets"));
        }
        let f = Finding {
            confidence: if queue.is_some() { 0.9 } else { 0.7 },
            device: Some(device),
            evidence,
            ..Finding::on_node(FindingKind::NicSaturation, Cause::Network, now, &s.node)
        };
        reported.set(&f);
        out.push(f);
    }
}
