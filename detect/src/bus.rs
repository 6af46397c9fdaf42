//! The host <-> GPU bus seen from the node, as seed 000 Table 3b's PCIe
//! observer runbook describes it:
//!
//! - `pcie_saturation` (node): "sustained near-peak PCIe throughput;
//!   compute stalls periodically", from "an oversubscribed PCIe switch,
//!   competing DMAs". Two or more of the node's computing GPUs hold their
//!   links near capacity at once (`dpu_pcie_link_util`, or dcgm-exporter's
//!   PCIe bytes/s over the capacity of the generation and width it
//!   reports): the node's shared bus is full. One GPU's own link at
//!   capacity is that GPU's trouble, not the node's: the straggler
//!   attribution reports it as the rank's `pcie` cause.
//! - `host_cpu_bottleneck` (node): "low DMA rate despite available PCIe BW;
//!   delayed doorbells", with the CPU contention behind it: the node's CPU
//!   pressure (`node_pressure_cpu_waiting_seconds_total`) far above its
//!   habit while a busy GPU's doorbells come late and its link has room.
//! - `intra_node_gpu_skew` (gpu): "one GPU shows thin/irregular DMA; peers
//!   steady". A busy GPU's host-to-GPU rate over a few seconds falls far
//!   below both its peers' (the other GPUs of its job on the node) and its
//!   own habit. The cause is `host` when its doorbells come late against
//!   its peers' (the CPU side feeds it late), `pcie` otherwise.
//!
//! Everything is judged when a GPU's utilisation is read (once a scrape)
//! or, for the CPU, when the node's pressure counter is, from the latest
//! readings of the scrape in the signal store.

use crate::attribute::{fmt_bytes_rate, lane_bytes_per_s};
use crate::episode::{Episode, Reported, Step};
use crate::signals::{NodeSignals, SignalStore, Span, Sub};
use crate::straggler::Inputs;
use crate::topology::Topology;
use keel_model::{Cause, Finding, FindingKind, MetricName, MetricSample, Name, Timestamp};
use rustc_hash::FxHashMap as HashMap;
use std::collections::BTreeMap;

/// Nodes watched at most; past it, new nodes are not judged (a cluster of
/// this many nodes runs more than one correlator).
pub const NODES_MAX: usize = 16_384;
/// GPUs watched per node at most (8 on today's nodes, 16 on the largest).
pub const GPUS_MAX: usize = 64;

/// Thresholds of the bus detectors, each with its unit and its reason.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// `dpu_pcie_link_util` (share of link capacity, TLPs and flow-control
    /// stalls included) at or above which a link is at its peak: a link's
    /// payload tops out near 0.85-0.9 of its raw rate, so occupancy of 0.9
    /// and more leaves nothing for another transfer to use.
    pub link_full: f64,
    /// Occupancy below which a full link has recovered (hysteresis).
    pub link_clear: f64,
    /// PCIe payload (dcgm-exporter's `DCGM_FI_PROF_PCIE_RX/TX_BYTES`, B/s)
    /// as a share of the raw capacity of the link's generation x width at
    /// or above which the link is at its peak: 0.8 is within a tenth of the
    /// 0.85-0.9 that headers and credits leave for payload.
    pub payload_full: f64,
    pub payload_clear: f64,
    /// GPU utilisation (%) at which a GPU is computing: a full link under an
    /// idle GPU (a model load) stalls no compute.
    pub active_util: f64,
    /// Computing GPUs of one node whose links must be full at once for the
    /// node's bus to be saturated: competing transfers, more than one.
    pub full_gpus: usize,
    /// Share of link capacity below which the bus has room: under half, a
    /// transfer waits for nothing on the link (Table 3b: "despite available
    /// PCIe BW").
    pub room_share: f64,
    /// CPU pressure (s/s: share of time some runnable task waited for a
    /// CPU) that is contention: a healthy serving node sits near
    /// 0.001-0.02; a tenth of the time is ten times the busiest of those.
    pub cpu_floor: f64,
    /// ...and this many times the node's own calm level before the onset.
    pub cpu_ratio: f64,
    /// Doorbell gap (us) below which launches are not late: a busy GPU's
    /// runtime rings every few tens of us.
    pub doorbell_floor_us: f64,
    /// How many times its habit (or its peers') a doorbell gap must be to be
    /// delayed (as the straggler attribution judges it).
    pub doorbell_ratio: f64,
    /// A GPU's host-to-GPU rate at most this share of its peers' median and
    /// of its own habit is thin: half is outside the spread of GPUs fed by
    /// one job (their rates differ by less than 2x).
    pub thin_share: f64,
    /// Share above which a thin GPU has recovered (hysteresis).
    pub thin_clear: f64,
    /// Seconds the host-to-GPU rate is averaged over: irregular DMA (bursts
    /// and silences) is thin on average over ten 1 Hz readings, where a
    /// shorter window swings with each burst.
    pub thin_window_s: f64,
    /// Busy peers of the same job on the node needed to call one GPU thin.
    pub thin_min_peers: usize,
    /// Peers' median rate (B/s) below which nothing is judged: there is no
    /// DMA to be thin against.
    pub thin_peer_floor_bps: f64,
    /// A reading older than this (s) is not the current one (1 Hz scrapes,
    /// one missed).
    pub fresh_s: f64,
    /// How long (s) a condition holds before it is concluded: ten 1 Hz
    /// readings, so that a checkpoint or weight burst of a few seconds is
    /// not "sustained".
    pub sustain_s: f64,
    /// How long (s) it must stay clear before the finding clears.
    pub clear_s: f64,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            link_full: 0.9,
            link_clear: 0.8,
            payload_full: 0.8,
            payload_clear: 0.7,
            active_util: 30.0,
            full_gpus: 2,
            room_share: 0.5,
            cpu_floor: 0.1,
            cpu_ratio: 4.0,
            doorbell_floor_us: 100.0,
            doorbell_ratio: 3.0,
            thin_share: 0.5,
            thin_clear: 0.7,
            thin_window_s: 10.0,
            thin_min_peers: 2,
            thin_peer_floor_bps: 1e6,
            fresh_s: 2.5,
            sustain_s: 10.0,
            clear_s: 5.0,
        }
    }
}

#[derive(Debug, Default)]
struct GpuState {
    /// When the GPU was last read computing with its link full, and how
    /// full (share of capacity, and the lines saying so).
    full: Option<(Timestamp, f64, Vec<String>)>,
    thin: Episode,
    thin_reported: Reported,
}

#[derive(Debug, Default)]
struct NodeState {
    gpus: BTreeMap<u32, GpuState>,
    saturation: Episode,
    saturation_reported: Reported,
    host: Episode,
    host_onset: Option<Timestamp>,
    host_reported: Reported,
}

#[derive(Debug)]
pub struct BusDetector {
    cfg: BusConfig,
    nodes: HashMap<Name, NodeState>,
}

/// What the store says about one GPU now.
struct Gpu<'a> {
    signals: NodeSignals<'a>,
    node: &'a Name,
    sub: Sub,
    now: Timestamp,
    fresh: f64,
}

impl Gpu<'_> {
    fn latest(&self, name: MetricName) -> Option<f64> {
        let (ts, v) = self.signals.get(name, &self.sub)?.latest()?;
        (self.now - ts <= self.fresh && v.is_finite()).then_some(v)
    }

    fn span(&self, name: MetricName, from: Timestamp) -> Option<Span> {
        self.signals.get(name, &self.sub)?.span(from, self.now)
    }

    fn baseline(&self, name: MetricName, before: Timestamp) -> Option<f64> {
        self.signals.get(name, &self.sub)?.baseline(before)
    }

    /// The link's capacity each way (B/s) from dcgm-exporter's generation
    /// and width, read however long ago (they change only when the link
    /// retrains).
    fn capacity(&self) -> Option<(u32, u32, f64)> {
        let get = |n| {
            let (_, v) = self.signals.get(n, &self.sub)?.latest()?;
            (v >= 1.0 && v.is_finite()).then(|| v.round() as u32)
        };
        let (gen, width) = (
            get(MetricName::PcieLinkGen)?,
            get(MetricName::PcieLinkWidth)?,
        );
        Some((gen, width, lane_bytes_per_s(gen)? * width as f64))
    }

    /// The link's load: DPU occupancy and dcgm payload share, as known.
    fn load(&self) -> Load {
        let cap = self.capacity();
        let payload = cap.and_then(|(_, _, c)| {
            let rx = self.latest(MetricName::PcieRxBytes);
            let tx = self.latest(MetricName::PcieTxBytes);
            let most = rx
                .into_iter()
                .chain(tx)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))?;
            Some(most / c)
        });
        Load {
            link: self.latest(MetricName::DpuPcieLinkUtil),
            payload,
            cap,
        }
    }
}

struct Load {
    link: Option<f64>,
    payload: Option<f64>,
    cap: Option<(u32, u32, f64)>,
}

impl Load {
    fn full(&self, cfg: &BusConfig, open: bool) -> bool {
        let (l, p) = if open {
            (cfg.link_clear, cfg.payload_clear)
        } else {
            (cfg.link_full, cfg.payload_full)
        };
        self.link.is_some_and(|x| x >= l) || self.payload.is_some_and(|x| x >= p)
    }

    /// The larger known share of capacity; `None` when nothing measured it.
    fn share(&self) -> Option<f64> {
        match (self.link, self.payload) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

fn finding(kind: FindingKind, cause: Cause, now: Timestamp, node: &Name) -> Finding {
    Finding::on_node(kind, cause, now, node)
}

impl BusDetector {
    pub fn new(cfg: BusConfig) -> Self {
        BusDetector {
            cfg,
            nodes: HashMap::default(),
        }
    }

    fn node(&mut self, node: &Name) -> Option<&mut NodeState> {
        // The name is cloned only for a new node: this runs for every sample.
        if !self.nodes.contains_key(node) {
            if self.nodes.len() >= NODES_MAX {
                return None;
            }
            self.nodes.insert(node.clone(), NodeState::default());
        }
        self.nodes.get_mut(node)
    }

    /// Called after `signals` took the sample, with the rate or value it
    /// derived.
    pub fn push(
        &mut self,
        s: &MetricSample,
        derived: f64,
        inputs: &Inputs,
        out: &mut Vec<Finding>,
        cleared: &mut Vec<Finding>,
    ) {
        if !derived.is_finite() {
            return;
        }
        let (signals, now) = (inputs.signals, inputs.now);
        match (s.name, s.labels.gpu, s.labels.gpu_instance) {
            (MetricName::GpuUtil, Some(g), None) => {
                self.gpu(s, g, derived, signals, inputs.topology, now, out, cleared)
            }
            (MetricName::CpuPressureWaiting, None, None) => {
                self.cpu(s, derived, signals, now, out, cleared)
            }
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn gpu(
        &mut self,
        s: &MetricSample,
        g: u32,
        util: f64,
        signals: &SignalStore,
        topology: &Topology,
        now: Timestamp,
        out: &mut Vec<Finding>,
        cleared: &mut Vec<Finding>,
    ) {
        let cfg = self.cfg.clone();
        let Some(state) = self.node(&s.node) else {
            return;
        };
        if !state.gpus.contains_key(&g) && state.gpus.len() >= GPUS_MAX {
            return;
        }
        let view = Gpu {
            signals: signals.node(&s.node),
            node: &s.node,
            sub: Sub::Gpu(g),
            now: s.ts,
            fresh: cfg.fresh_s,
        };
        let load = view.load();
        let active = util >= cfg.active_util;
        let open = state.saturation.is_open();
        let full = (active && load.full(&cfg, open)).then(|| {
            let share = load.share().unwrap_or(0.0);
            (s.ts, share, link_lines(&view, &load, g))
        });
        state.gpus.entry(g).or_default().full = full;
        let full_now: Vec<(u32, f64)> = state
            .gpus
            .iter()
            .filter_map(|(&k, x)| {
                let (ts, share, _) = x.full.as_ref()?;
                (s.ts - ts <= cfg.fresh_s).then_some((k, *share))
            })
            .collect();
        let holds = full_now.len() >= cfg.full_gpus;
        match state
            .saturation
            .observe(holds, s.ts, cfg.sustain_s, cfg.clear_s)
        {
            Step::Concluded { since } => {
                let f = saturation(&view, state, &full_now, since, now);
                state.saturation_reported.set(&f);
                out.push(f);
            }
            Step::Closed => cleared.extend(state.saturation_reported.clear(now)),
            Step::Nothing => {}
        }
        thin(&cfg, state, &view, g, active, topology, now, out, cleared);
    }

    fn cpu(
        &mut self,
        s: &MetricSample,
        rate: f64,
        signals: &SignalStore,
        now: Timestamp,
        out: &mut Vec<Finding>,
        cleared: &mut Vec<Finding>,
    ) {
        let cfg = self.cfg.clone();
        let Some(state) = self.node(&s.node) else {
            return;
        };
        let open = state.host.is_open();
        let anchor = state
            .host
            .suspect_since()
            .or(state.host_onset.filter(|_| open))
            .unwrap_or(s.ts)
            - 2.0;
        let calm = signals
            .get(&s.node, MetricName::CpuPressureWaiting, &Sub::Node)
            .and_then(|x| x.baseline(anchor));
        let floor = if open {
            cfg.cpu_floor / 2.0
        } else {
            cfg.cpu_floor
        };
        let pressed =
            rate >= floor && (open || calm.is_none_or(|c| rate >= cfg.cpu_ratio * c.max(0.001)));
        let late = if pressed {
            late_doorbell(&cfg, signals, &s.node, state, s.ts, anchor)
        } else {
            None
        };
        let since = match state
            .host
            .observe(late.is_some(), s.ts, cfg.sustain_s, cfg.clear_s)
        {
            Step::Concluded { since } => since,
            Step::Closed => {
                state.host_onset = None;
                cleared.extend(state.host_reported.clear(now));
                return;
            }
            Step::Nothing => return,
        };
        state.host_onset = Some(since);
        let mut f = finding(FindingKind::HostCpuBottleneck, Cause::Host, now, &s.node);
        f.evidence.push(format!(
            "{}: CPU pressure {rate:.2} s/s (tasks waiting for a CPU) since {since_at}",
            s.node,
            since_at = keel_model::Clock(since)
        ));
        if let Some(c) = calm {
            f.evidence
                .push(format!("node's calm level {c:.4} s/s before the onset"));
        }
        if let Some(line) = late {
            f.evidence.push(line);
        }
        f.confidence = if calm.is_some() { 0.85 } else { 0.7 };
        state.host_reported.set(&f);
        out.push(f);
    }
}

/// The first busy GPU of the node whose doorbells come late against its
/// habit while its link has room, as an evidence line.
fn late_doorbell(
    cfg: &BusConfig,
    signals: &SignalStore,
    node: &Name,
    state: &NodeState,
    now: Timestamp,
    anchor: Timestamp,
) -> Option<String> {
    for &g in state.gpus.keys() {
        let view = Gpu {
            signals: signals.node(node),
            node,
            sub: Sub::Gpu(g),
            now,
            fresh: cfg.fresh_s,
        };
        if view
            .latest(MetricName::GpuUtil)
            .is_none_or(|u| u < cfg.active_util)
        {
            continue;
        }
        let Some(gap) = view.latest(MetricName::DpuPcieDoorbellGap) else {
            continue;
        };
        let habit = view.baseline(MetricName::DpuPcieDoorbellGap, anchor);
        let load = view.load();
        let share = load.share();
        let late = gap >= cfg.doorbell_floor_us
            && habit.is_none_or(|h| gap >= cfg.doorbell_ratio * h)
            && share.is_some_and(|x| x < cfg.room_share);
        if late {
            let habit = habit.map_or("no habit yet".into(), |h| format!("its habit {h:.0} us"));
            return Some(format!(
                "GPU {g} doorbell gap {gap:.0} us vs {habit}, its PCIe link at {:.0}% of capacity (room left)",
                share.unwrap_or(0.0) * 100.0
            ));
        }
    }
    None
}

/// What says a GPU's link is full: the DPU's occupancy, dcgm's payload
/// against the link's capacity.
fn link_lines(view: &Gpu, load: &Load, g: u32) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(l) = load.link {
        v.push(format!("GPU {g} link {:.0}% of capacity (DPU)", l * 100.0));
    }
    if let (Some(p), Some((gen, width, c))) = (load.payload, load.cap) {
        v.push(format!(
            "GPU {g} payload {} = {:.0}% of its Gen{gen} x{width} link ({} each way)",
            fmt_bytes_rate(p * c),
            p * 100.0,
            fmt_bytes_rate(c)
        ));
    }
    if let Some(u) = view.span(MetricName::GpuUtil, view.now - 10.0) {
        v.push(format!(
            "GPU {g} utilisation {:.0}-{:.0}% (mean {:.0}%) over 10 s: compute waits on the bus",
            u.min, u.max, u.mean
        ));
    }
    v
}

fn saturation(
    view: &Gpu,
    state: &NodeState,
    full: &[(u32, f64)],
    since: Timestamp,
    now: Timestamp,
) -> Finding {
    let mut f = finding(FindingKind::PcieSaturation, Cause::Pcie, now, view.node);
    let gpus: Vec<String> = full
        .iter()
        .map(|(g, s)| format!("GPU {g} {:.0}%", s * 100.0))
        .collect();
    f.evidence.push(format!(
        "{}: {} GPUs' PCIe links near capacity at once since {since_at} ({})",
        view.node,
        full.len(),
        gpus.join(", "),
        since_at = keel_model::Clock(since)
    ));
    for (g, _) in full {
        if let Some((_, _, lines)) = state.gpus.get(g).and_then(|x| x.full.as_ref()) {
            f.evidence.extend(lines.iter().cloned());
        }
    }
    f.confidence = 0.85;
    f
}

#[path = "bus_skew.rs"]
mod skew;
use skew::thin;

#[cfg(test)]
#[path = "bus_tests.rs"]
mod tests;
