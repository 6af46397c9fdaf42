//! The fabric beyond one NIC: `rdma_credit_starvation` (a NIC that waits for
//! the far end's flow-control credits a real share of every second),
//! `egress_backlog` (packets pile up in a NIC's transmit queue while its link
//! still has room) and `network_congestion` (several nodes' network signals
//! worsening at once: the fabric between them, not one node).
//!
//! `network_congestion` is concluded over the nodes the engine sees: every
//! node on `keel replay` and `keel eval` (with or without `--edge`), the
//! job's own nodes in a live job's correlator. A live cluster therefore
//! concludes it only in correlators whose job spans at least
//! [`FabricConfig::congestion_min_nodes`] nodes; congestion among nodes that
//! share no such job is seen as the per-node findings alone.

use crate::episode::{Episode, Reported, Step};
use crate::signals::{SignalStore, Sub};
use keel_model::{
    Cause, Dir, Finding, FindingKind, MetricName, MetricSample, Name, Severity, Timestamp,
};
use rustc_hash::FxHashMap as HashMap;

/// Devices (NICs) remembered for the per-NIC findings, at most: a node has a
/// handful, a cluster of thousands of nodes some tens of thousands. A sample
/// of one more is not judged.
pub const NICS_MAX: usize = 65_536;
/// Nodes whose strain the congestion watch remembers, at most.
pub const NODES_MAX: usize = 16_384;
/// Readings one node's strain keeps (one per series: a metric, a device, a
/// direction); a node with more has the rest ignored.
pub const READINGS_PER_NODE_MAX: usize = 64;
/// Congested nodes named in a finding's evidence, at most.
const NODES_NAMED: usize = 8;

/// Thresholds of the fabric detectors, with the reason for each.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FabricConfig {
    /// Share of wall time a NIC's sends wait for credits
    /// (`dpu_rdma_credit_stall_us_total` per second / 1e6) that is credit
    /// starvation: 0.02, 20 ms of every second. A healthy lossless link
    /// waits microseconds a second (the real traces in `data/` read 0.005%);
    /// 2% is the straggler's own bar (`late_share`, 2.5% of a step), so a
    /// NIC stalled this long delays the collectives it carries by about as
    /// much as makes a rank a straggler.
    pub credit_stall_share: f64,
    /// An open starvation episode holds while the share stays above this
    /// (hysteresis against flapping around the bar).
    pub credit_clear_share: f64,
    /// Transmit queue depth (packets, `dpu_nic_queue_depth{dir="tx"}`) that
    /// is a backlog: the bar `nic_saturation` uses for a queue behind a
    /// link. A link below line rate drains a queue in microseconds, so a
    /// 1 Hz reading of a healthy NIC finds a handful of packets; a hundred
    /// on consecutive readings means the NIC is not sending what it has.
    pub egress_queue: f64,
    /// An open backlog holds while the queue stays above this.
    pub egress_queue_clear: f64,
    /// Transmit drops per second (`node_network_transmit_drop_total`) that
    /// show the transmit queue overflowing, without a DPU's queue gauge: a
    /// healthy NIC drops nothing on transmit (the node-exporter dumps in
    /// `data/` read 0); ten a second is a queue that fills every second.
    pub tx_drops_per_s: f64,
    /// Share of line rate at which a backlog is the link's own capacity
    /// (`nic_saturation`), not a backlog behind a link with room:
    /// `NetworkConfig::nic_util`.
    pub line_rate_share: f64,
    /// The per-NIC conditions must hold on three consecutive 1 Hz readings
    /// (just under 2 s): a burst of a second is not starvation nor backlog.
    pub sustain_s: f64,
    pub clear_s: f64,
    /// A node is strained (for congestion) when its TCP retransmits are at
    /// least this share of the segments it sends: 0.1%, ten times a healthy
    /// datacenter's ~0.01%, a tenth of a `retransmit_storm` (1%).
    pub strain_retrans_share: f64,
    /// ...at least this many per second (a quiet node's few retransmits are
    /// not a share worth judging)...
    pub strain_retrans_min_per_s: f64,
    /// ...and this many times the node's own rate before the strain began.
    pub strain_over_baseline: f64,
    /// Or when a NIC direction queues this many packets (`dpu_nic_queue_depth`):
    /// a third of a backlog, several times the handful a healthy NIC shows.
    pub strain_queue: f64,
    /// Or when a NIC waits for credits this share of the time: an eighth of
    /// starvation, fifty times a healthy link's stall.
    pub strain_credit_share: f64,
    /// Readings older than this (s) no longer say whether a node is strained:
    /// two missed 1 Hz scrapes.
    pub strain_fresh_s: f64,
    /// A node that sent network telemetry within this long (s) counts among
    /// the nodes seen.
    pub seen_s: f64,
    /// Congestion needs at least this many strained nodes at once ("many
    /// links"): two nodes' troubles at once are as often two troubles.
    pub congestion_min_nodes: usize,
    /// ...and at least this share of the nodes seen.
    pub congestion_share: f64,
    /// The strain must hold across the cluster this long: longer than a
    /// microburst or an incast of a second or two.
    pub congestion_sustain_s: f64,
    pub congestion_clear_s: f64,
    /// How often (s of trace time) the cluster is judged.
    pub check_every_s: f64,
}

impl Default for FabricConfig {
    fn default() -> Self {
        FabricConfig {
            credit_stall_share: 0.02,
            credit_clear_share: 0.01,
            egress_queue: 100.0,
            egress_queue_clear: 50.0,
            tx_drops_per_s: 10.0,
            line_rate_share: 0.95,
            sustain_s: 1.9,
            clear_s: 5.0,
            strain_retrans_share: 0.001,
            strain_retrans_min_per_s: 20.0,
            strain_over_baseline: 3.0,
            strain_queue: 32.0,
            strain_credit_share: 0.0025,
            strain_fresh_s: 2.5,
            seen_s: 30.0,
            congestion_min_nodes: 3,
            congestion_share: 0.25,
            congestion_sustain_s: 4.0,
            congestion_clear_s: 10.0,
            check_every_s: 1.0,
        }
    }
}

/// One reading that says whether a node is strained.
#[derive(Debug, Clone)]
struct Reading {
    name: MetricName,
    device: Option<Name>,
    dir: Option<Dir>,
    ts: Timestamp,
    strained: bool,
    /// The reading: a credit stall's share of time (0..1), a queue's depth
    /// (packets) or retransmits per second.
    value: f64,
    /// Retransmits' share of segments sent, where known.
    share: Option<f64>,
}

impl Reading {
    /// What the evidence says about it (made only for a finding: readings
    /// come at every scrape).
    fn what(&self) -> String {
        let dev = self.device.as_deref().unwrap_or("?");
        let v = self.value;
        match (self.name, self.share) {
            (MetricName::DpuRdmaCreditStall, _) => format!("{dev} credit stall {:.2}%", 100.0 * v),
            (MetricName::DpuNicQueueDepth, _) => {
                format!("{dev}{} queue {v:.0} packets", dir(self.dir))
            }
            (_, Some(sh)) => format!("{v:.0} retransmits/s, {:.2}% of segments", 100.0 * sh),
            (_, None) => format!("{v:.0} retransmits/s"),
        }
    }
}

#[derive(Debug, Default)]
struct NodeStrain {
    seen: Timestamp,
    /// When the node's retransmits began to stand out, for the baseline.
    retrans_since: Option<Timestamp>,
    readings: Vec<Reading>,
}

impl NodeStrain {
    fn strained(&self, now: Timestamp, fresh: f64) -> Option<&Reading> {
        self.readings
            .iter()
            .find(|r| r.strained && r.ts >= now - fresh)
    }

    fn note(&mut self, s: &MetricSample, strained: bool, value: f64, share: Option<f64>) {
        let (device, dir) = (s.labels.device.as_ref(), s.labels.dir);
        self.seen = self.seen.max(s.ts);
        let slot = self
            .readings
            .iter()
            .position(|r| r.name == s.name && r.device.as_ref() == device && r.dir == dir);
        match slot {
            Some(i) => {
                let r = &mut self.readings[i];
                r.ts = s.ts;
                r.strained = strained;
                r.value = value;
                r.share = share;
            }
            None if self.readings.len() < READINGS_PER_NODE_MAX => self.readings.push(Reading {
                name: s.name,
                device: device.cloned(),
                dir,
                ts: s.ts,
                strained,
                value,
                share,
            }),
            None => {}
        }
    }
}

#[derive(Debug)]
pub struct FabricDetector {
    cfg: FabricConfig,
    credit: HashMap<(Name, Name), (Episode, Reported)>,
    egress: HashMap<(Name, Name), (Episode, Reported)>,
    nodes: HashMap<Name, NodeStrain>,
    congestion: (Episode, Reported),
    last_check: Timestamp,
}

impl FabricDetector {
    pub fn new(cfg: FabricConfig) -> Self {
        FabricDetector {
            cfg,
            credit: HashMap::default(),
            egress: HashMap::default(),
            nodes: HashMap::default(),
            congestion: Default::default(),
            last_check: f64::NEG_INFINITY,
        }
    }

    /// Called after `signals` took the sample, with the rate or value it
    /// derived. Findings concluded go to `out`, clearings to `cleared`.
    pub fn push(
        &mut self,
        s: &MetricSample,
        derived: f64,
        signals: &SignalStore,
        now: Timestamp,
        out: &mut Vec<Finding>,
        cleared: &mut Vec<Finding>,
    ) {
        if !derived.is_finite() {
            return;
        }
        match s.name {
            MetricName::DpuRdmaCreditStall => {
                let share = derived / 1e6;
                let strained = share >= self.cfg.strain_credit_share;
                self.note(s, strained, share, None);
                self.credit_stall(s, share, signals, now, out, cleared);
            }
            MetricName::DpuNicQueueDepth => {
                let strained = derived >= self.cfg.strain_queue;
                self.note(s, strained, derived, None);
                if s.labels.dir == Some(Dir::Tx) {
                    self.backlog(s, signals, now, out, cleared);
                }
            }
            MetricName::NetTxDrop => self.backlog(s, signals, now, out, cleared),
            MetricName::TcpRetransSegs => self.retransmits(s, derived, signals),
            MetricName::TcpOutSegs | MetricName::DpuNicLinkUtil => {
                if let Some(n) = self.node(&s.node) {
                    n.seen = n.seen.max(s.ts);
                }
            }
            _ => return,
        }
        if now - self.last_check >= self.cfg.check_every_s {
            self.last_check = now;
            self.judge_cluster(now, out, cleared);
        }
    }

    fn node(&mut self, node: &Name) -> Option<&mut NodeStrain> {
        // The name is cloned only for a new node: this runs for every sample.
        if !self.nodes.contains_key(node) {
            if self.nodes.len() >= NODES_MAX {
                return None;
            }
            self.nodes.insert(node.clone(), NodeStrain::default());
        }
        self.nodes.get_mut(node)
    }

    fn note(&mut self, s: &MetricSample, strained: bool, value: f64, share: Option<f64>) {
        if let Some(n) = self.node(&s.node) {
            n.note(s, strained, value, share);
        }
    }

    fn retransmits(&mut self, s: &MetricSample, rate: f64, signals: &SignalStore) {
        let cfg = self.cfg.clone();
        let sent = signals
            .get(&s.node, MetricName::TcpOutSegs, &Sub::Node)
            .and_then(|x| x.latest())
            .filter(|(ts, _)| (s.ts - ts).abs() <= cfg.strain_fresh_s)
            .map(|p| p.1);
        let Some(n) = self.node(&s.node) else {
            return;
        };
        let before = n.retrans_since.unwrap_or(s.ts) - 2.0;
        let baseline = signals
            .get(&s.node, MetricName::TcpRetransSegs, &Sub::Node)
            .and_then(|x| x.baseline(before));
        let share = sent.filter(|o| *o > 0.0).map(|o| rate / o);
        let strained = rate >= cfg.strain_retrans_min_per_s
            && share.is_some_and(|sh| sh >= cfg.strain_retrans_share)
            && baseline.is_none_or(|b| rate >= cfg.strain_over_baseline * b.max(1.0));
        n.retrans_since = if strained {
            Some(n.retrans_since.unwrap_or(s.ts))
        } else {
            None
        };
        n.note(s, strained, rate, share);
    }

    fn credit_stall(
        &mut self,
        s: &MetricSample,
        share: f64,
        signals: &SignalStore,
        now: Timestamp,
        out: &mut Vec<Finding>,
        cleared: &mut Vec<Finding>,
    ) {
        let cfg = &self.cfg;
        let Some(device) = s.labels.device.clone() else {
            return;
        };
        let key = (s.node.clone(), device.clone());
        if !self.credit.contains_key(&key) && self.credit.len() >= NICS_MAX {
            return;
        }
        let (episode, reported) = self.credit.entry(key).or_default();
        let bar = if episode.is_open() {
            cfg.credit_clear_share
        } else {
            cfg.credit_stall_share
        };
        let since = match episode.observe(share >= bar, s.ts, cfg.sustain_s, cfg.clear_s) {
            Step::Concluded { since } => since,
            Step::Closed => {
                cleared.extend(reported.clear(now));
                return;
            }
            Step::Nothing => return,
        };
        let mut evidence = vec![format!(
            "{} {device} waits for RDMA credits {:.1}% of the time ({:.0} ms a second) since {since_at}",
            s.node,
            100.0 * share.min(1.0),
            share.min(1.0) * 1e3, since_at = keel_model::Clock(since))];
        let util = [Dir::Tx, Dir::Rx]
            .iter()
            .filter_map(|d| latest(signals, s, MetricName::DpuNicLinkUtil, &device, Some(*d)))
            .fold(None, |m: Option<f64>, u| Some(m.map_or(u, |m| m.max(u))));
        if let Some(u) = util {
            evidence.push(format!(
                "its link at {:.0}% of line rate: waiting, not full",
                100.0 * u
            ));
        }
        let f = finding(
            FindingKind::RdmaCreditStarvation,
            &s.node,
            device,
            now,
            if share >= 0.2 {
                Severity::Critical
            } else {
                Severity::Warning
            },
            0.85,
            evidence,
        );
        reported.set(&f);
        out.push(f);
    }

    /// Judges a NIC's transmit side on its queue gauge or drop counter.
    fn backlog(
        &mut self,
        s: &MetricSample,
        signals: &SignalStore,
        now: Timestamp,
        out: &mut Vec<Finding>,
        cleared: &mut Vec<Finding>,
    ) {
        let cfg = &self.cfg;
        let Some(device) = s.labels.device.clone() else {
            return;
        };
        let key = (s.node.clone(), device.clone());
        if !self.egress.contains_key(&key) && self.egress.len() >= NICS_MAX {
            return;
        }
        let queue = latest(
            signals,
            s,
            MetricName::DpuNicQueueDepth,
            &device,
            Some(Dir::Tx),
        );
        let drops = latest(signals, s, MetricName::NetTxDrop, &device, None);
        let util = tx_util(signals, s, &device);
        let (episode, reported) = self.egress.entry(key).or_default();
        let q_bar = if episode.is_open() {
            cfg.egress_queue_clear
        } else {
            cfg.egress_queue
        };
        let piling =
            queue.is_some_and(|q| q >= q_bar) || drops.is_some_and(|d| d >= cfg.tx_drops_per_s);
        let room = util.is_none_or(|u| u < cfg.line_rate_share);
        let since = match episode.observe(piling && room, s.ts, cfg.sustain_s, cfg.clear_s) {
            Step::Concluded { since } => since,
            Step::Closed => {
                cleared.extend(reported.clear(now));
                return;
            }
            Step::Nothing => return,
        };
        let mut evidence = vec![format!(
            "{} {device} TX backlog since {since_at}",
            s.node,
            since_at = keel_model::Clock(since)
        )];
        if let Some(q) = queue {
            evidence.push(format!("{q:.0} packets queued to send"));
        }
        if let Some(d) = drops.filter(|d| *d > 0.0) {
            evidence.push(format!("{d:.0} transmit drops/s"));
        }
        match util {
            Some(u) => evidence.push(format!(
                "TX link at {:.0}% of line rate: room to send, yet it queues",
                100.0 * u
            )),
            None => evidence.push("TX link utilisation not seen".into()),
        }
        let f = finding(
            FindingKind::EgressBacklog,
            &s.node,
            device,
            now,
            Severity::Warning,
            if util.is_some() { 0.85 } else { 0.6 },
            evidence,
        );
        reported.set(&f);
        out.push(f);
    }

    fn judge_cluster(
        &mut self,
        now: Timestamp,
        out: &mut Vec<Finding>,
        cleared: &mut Vec<Finding>,
    ) {
        let cfg = &self.cfg;
        self.nodes.retain(|_, n| n.seen >= now - cfg.seen_s);
        let seen = self.nodes.len();
        let mut strained: Vec<(&Name, &Reading)> = self
            .nodes
            .iter()
            .filter_map(|(name, n)| n.strained(now, cfg.strain_fresh_s).map(|r| (name, r)))
            .collect();
        let holds = strained.len() >= cfg.congestion_min_nodes
            && strained.len() as f64 >= cfg.congestion_share * seen as f64;
        let (episode, reported) = &mut self.congestion;
        let since =
            match episode.observe(holds, now, cfg.congestion_sustain_s, cfg.congestion_clear_s) {
                Step::Concluded { since } => since,
                Step::Closed => {
                    cleared.extend(reported.clear(now));
                    return;
                }
                Step::Nothing => return,
            };
        strained.sort_by(|a, b| a.0.cmp(b.0));
        let mut evidence = vec![format!(
            "{} of {seen} nodes' network signals worse at once since {since_at}",
            strained.len(),
            since_at = keel_model::Clock(since)
        )];
        evidence.extend(
            strained
                .iter()
                .take(NODES_NAMED)
                .map(|(node, r)| format!("{node}: {}", r.what())),
        );
        if strained.len() > NODES_NAMED {
            evidence.push(format!("and {} more", strained.len() - NODES_NAMED));
        }
        let f = Finding {
            basis: None,
            gpu_instance: None,
            related: Vec::new(),
            ts: now,
            kind: FindingKind::NetworkCongestion,
            cause: Cause::Network,
            severity: if strained.len() * 2 >= seen.max(1) {
                Severity::Critical
            } else {
                Severity::Warning
            },
            confidence: 0.8,
            job: None,
            node: None,
            rank: None,
            gpu: None,
            device: None,
            evidence,
        };
        reported.set(&f);
        out.push(f);
    }
}

fn finding(
    kind: FindingKind,
    node: &Name,
    device: Name,
    now: Timestamp,
    severity: Severity,
    confidence: f64,
    evidence: Vec<String>,
) -> Finding {
    Finding {
        severity,
        confidence,
        device: Some(device),
        evidence,
        ..Finding::on_node(kind, Cause::Network, now, node)
    }
}

/// The newest point of a device series of `s`'s node, if recent.
fn latest(
    signals: &SignalStore,
    s: &MetricSample,
    name: MetricName,
    device: &Name,
    dir: Option<Dir>,
) -> Option<f64> {
    signals
        .get(&s.node, name, &Sub::Device(device.clone(), dir))
        .and_then(|x| x.latest())
        .filter(|(ts, _)| (s.ts - ts).abs() <= 5.0)
        .map(|p| p.1)
        .filter(|v| v.is_finite())
}

/// The TX link's share of line rate: the DPU's gauge, or node-exporter's
/// bytes over the device's speed where the speed is known.
fn tx_util(signals: &SignalStore, s: &MetricSample, device: &Name) -> Option<f64> {
    latest(
        signals,
        s,
        MetricName::DpuNicLinkUtil,
        device,
        Some(Dir::Tx),
    )
    .or_else(|| {
        let speed = latest(signals, s, MetricName::NetSpeedBytes, device, None)?;
        let bytes = latest(signals, s, MetricName::NetTxBytes, device, None)?;
        (speed > 0.0).then(|| bytes / speed)
    })
}

fn dir(d: Option<Dir>) -> &'static str {
    match d {
        Some(Dir::Rx) => " RX",
        Some(Dir::Tx) => " TX",
        None => "",
    }
}

#[cfg(test)]
#[path = "fabric_tests.rs"]
mod tests;
