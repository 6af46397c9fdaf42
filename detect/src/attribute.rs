//! Attribution of a straggler to a cause: `pcie`, `host`, `network` or `gpu`.
//!
//! Seed 000 §4.2 reasons from the straggler's surroundings: a busy PCIe link
//! to its GPU points at the bus; an idle bus with slow doorbells or a starved
//! CPU points at the host; a healthy bus with the NIC stalling (queues,
//! credit stalls, retransmits) points at the network; healthy bus, host and
//! network with the GPU itself slow (clock drop, heat, XID) or simply doing
//! more work points at the GPU. Each signal is compared with the straggler's
//! peers and with its own history before the onset, because neither alone is
//! enough: TP ranks on one node share the host's CPU signals, and a job with
//! two ranks has a single peer. Any signal may be missing (no DPU, no DCGM
//! profiling fields): attribution uses what is there and says how much that was.

use crate::signals::{SignalStore, Sub};
use keel_model::{Cause, MetricName, Name, Timestamp};

/// The place a rank runs, as attribution needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub node: Name,
    pub gpu: Option<u32>,
    pub nic: Option<Name>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Attribution {
    pub cause: Cause,
    pub confidence: f64,
    /// Positive evidence was found (not only elimination).
    pub decisive: bool,
    pub evidence: Vec<String>,
}

/// Samples this much before the suspicion began still count as "recent":
/// a cause starts at the onset, a little before lateness crosses the bar.
const RECENT_LEAD_S: f64 = 1.5;
/// The baseline ends this long before the suspicion, to stay clear of the onset.
const BASELINE_GAP_S: f64 = 2.0;
/// A family scoring at least this is decisive.
const DECISIVE: f64 = 0.5;
/// Below this every positive family counts as clean, and the GPU is left.
const CLEAN: f64 = 0.3;

/// One measured signal and how strongly it points at its family.
struct Reading {
    strength: f64,
    text: String,
}

/// Strength in 0..1 for a value that should stand out: 0 below `floor` or
/// below `ratio` times the reference, 0.5 at exactly `ratio` times, 1 at ten
/// times that.
fn standout(x: f64, reference: f64, floor: f64, ratio: f64) -> f64 {
    if !x.is_finite() || x < floor {
        return 0.0;
    }
    let r = x / reference.max(f64::MIN_POSITIVE);
    if r < ratio {
        return 0.0;
    }
    (0.5 + 0.5 * (r / ratio).log10()).min(1.0)
}

pub fn fmt_bytes_rate(b: f64) -> String {
    if b >= 1e9 {
        format!("{:.1} GB/s", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.0} MB/s", b / 1e6)
    } else {
        format!("{:.0} kB/s", b / 1e3)
    }
}

struct Ctx<'a> {
    signals: &'a SignalStore,
    from: Timestamp,
    now: Timestamp,
    before: Timestamp,
}

/// Recent and reference levels of one signal for the straggler.
struct Level {
    recent: f64,
    peers: Option<f64>,
    baseline: Option<f64>,
}

impl Level {
    fn reference(&self, fallback: f64) -> f64 {
        match (self.peers, self.baseline) {
            (Some(p), Some(b)) => p.max(b),
            (Some(p), None) => p,
            (None, Some(b)) => b,
            (None, None) => fallback,
        }
    }

    fn against(&self, fmt: impl Fn(f64) -> String) -> String {
        let mut parts = Vec::new();
        if let Some(p) = self.peers {
            parts.push(format!("peers {}", fmt(p)));
        }
        if let Some(b) = self.baseline {
            parts.push(format!("{} before onset", fmt(b)));
        }
        if parts.is_empty() {
            "no reference".into()
        } else {
            parts.join(", ")
        }
    }
}

#[derive(Clone, Copy)]
enum Agg {
    Max,
    Min,
}

impl Ctx<'_> {
    fn recent(&self, node: &Name, name: MetricName, sub: &Sub, agg: Agg) -> Option<f64> {
        let span = self
            .signals
            .get(node, name, sub)?
            .span(self.from, self.now)?;
        Some(match agg {
            Agg::Max => span.max,
            Agg::Min => span.min,
        })
    }

    /// The straggler's level of a signal against its peers (median of their
    /// recent levels) and its own pre-onset baseline. `same_node_peers`
    /// decides whether peers on the straggler's node count: for node-wide
    /// signals (CPU pressure, retransmits) they share the very value.
    fn level(
        &self,
        who: &Site,
        peers: &[Site],
        name: MetricName,
        sub_of: impl Fn(&Site) -> Option<Sub>,
        agg: Agg,
        node_wide: bool,
    ) -> Option<Level> {
        let sub = sub_of(who)?;
        let recent = self.recent(&who.node, name, &sub, agg)?;
        let mut seen: Vec<(&Name, Sub)> = Vec::new();
        let mut peer_values = Vec::new();
        for p in peers {
            if node_wide && p.node == who.node {
                continue;
            }
            let Some(psub) = sub_of(p) else { continue };
            if (p.node == who.node && psub == sub) || seen.contains(&(&p.node, psub.clone())) {
                continue;
            }
            if let Some(v) = self.recent(&p.node, name, &psub, agg) {
                peer_values.push(v);
            }
            seen.push((&p.node, psub));
        }
        let baseline = self
            .signals
            .get(&who.node, name, &sub)
            .and_then(|s| s.baseline(self.before));
        Some(Level {
            recent,
            peers: crate::stats::median(&peer_values),
            baseline,
        })
    }

    /// The worst (highest) level across every device of the straggler's node,
    /// for when the job does not say which NIC a rank uses.
    fn level_any_device(&self, who: &Site, peers: &[Site], name: MetricName) -> Option<Level> {
        if who.nic.is_some() {
            let nic = who.nic.clone();
            return self
                .level(
                    who,
                    peers,
                    name,
                    |s| {
                        let dev = s.nic.clone().or_else(|| nic.clone())?;
                        Some(Sub::Device(dev, None))
                    },
                    Agg::Max,
                    false,
                )
                .or_else(|| self.level_dirs(who, peers, name));
        }
        self.level_dirs(who, peers, name)
    }

    /// Devices with a direction label (`dpu_nic_*`) or several devices per
    /// node: take the straggler node's worst series.
    fn level_dirs(&self, who: &Site, peers: &[Site], name: MetricName) -> Option<Level> {
        let worst = |node: &Name, nic: Option<&Name>| -> Option<(f64, Option<f64>)> {
            let mut best: Option<(f64, Option<f64>)> = None;
            for (key, series) in self.signals.on_node(node, name) {
                if let (Some(nic), Sub::Device(dev, _)) = (nic, &key.sub) {
                    if dev != nic {
                        continue;
                    }
                }
                let Some(span) = series.span(self.from, self.now) else {
                    continue;
                };
                if best.is_none_or(|(v, _)| span.max > v) {
                    best = Some((span.max, series.baseline(self.before)));
                }
            }
            best
        };
        let (recent, baseline) = worst(&who.node, who.nic.as_ref())?;
        let mut peer_values = Vec::new();
        let mut nodes: Vec<&Name> = Vec::new();
        for p in peers {
            if p.node == who.node || nodes.contains(&&p.node) {
                continue;
            }
            nodes.push(&p.node);
            if let Some((v, _)) = worst(&p.node, p.nic.as_ref()) {
                peer_values.push(v);
            }
        }
        Some(Level {
            recent,
            peers: crate::stats::median(&peer_values),
            baseline,
        })
    }
}

fn gpu_sub(s: &Site) -> Option<Sub> {
    s.gpu.map(Sub::Gpu)
}

fn node_sub(_: &Site) -> Option<Sub> {
    Some(Sub::Node)
}

/// Best reading of a family, and whether the family had any data at all.
#[derive(Default)]
struct Family {
    present: bool,
    best: Option<Reading>,
    clean: Vec<String>,
}

impl Family {
    fn add(&mut self, strength: f64, text: String) {
        self.present = true;
        if strength <= 0.0 {
            self.clean.push(text);
            return;
        }
        if self.best.as_ref().is_none_or(|b| strength > b.strength) {
            self.best = Some(Reading { strength, text });
        }
    }

    fn strength(&self) -> f64 {
        self.best.as_ref().map_or(0.0, |b| b.strength)
    }
}

/// Attributes a straggler at `who` (peers at `peers`) whose lateness has been
/// suspected since `since`; `now` is the current trace time.
pub fn attribute(
    signals: &SignalStore,
    who: &Site,
    peers: &[Site],
    since: Timestamp,
    now: Timestamp,
) -> Attribution {
    let cx = Ctx {
        signals,
        from: since - RECENT_LEAD_S,
        now,
        before: since - BASELINE_GAP_S,
    };
    let place = match who.gpu {
        Some(g) => format!("{} gpu {g}", who.node),
        None => who.node.to_string(),
    };

    let mut pcie = Family::default();
    for name in [MetricName::PcieRxBytes, MetricName::PcieTxBytes] {
        if let Some(l) = cx.level(who, peers, name, gpu_sub, Agg::Max, false) {
            let dir = if name == MetricName::PcieRxBytes {
                "RX (host to GPU)"
            } else {
                "TX (GPU to host)"
            };
            // 0.5 GB/s is far above the steady trickle of a healthy decode
            // step (tens of MB/s) yet a small share of a Gen4/Gen5 link.
            let s = standout(l.recent, l.reference(50e6), 0.5e9, 5.0);
            pcie.add(
                s,
                format!(
                    "{place} PCIe {dir} {} vs {}",
                    fmt_bytes_rate(l.recent),
                    l.against(fmt_bytes_rate)
                ),
            );
        }
    }
    for name in [MetricName::DpuPcieH2dBytes, MetricName::DpuPcieD2hBytes] {
        if let Some(l) = cx.level(who, peers, name, gpu_sub, Agg::Max, false) {
            let s = standout(l.recent, l.reference(50e6), 0.5e9, 5.0);
            pcie.add(
                s,
                format!(
                    "{place} DPU-observed {} DMA {} vs {}",
                    if name == MetricName::DpuPcieH2dBytes {
                        "H2D"
                    } else {
                        "D2H"
                    },
                    fmt_bytes_rate(l.recent),
                    l.against(fmt_bytes_rate)
                ),
            );
        }
    }
    if let Some(l) = cx.level(
        who,
        peers,
        MetricName::DpuPcieLinkUtil,
        gpu_sub,
        Agg::Max,
        false,
    ) {
        let pct = |x: f64| format!("{:.0}%", x * 100.0);
        let s = standout(l.recent, l.reference(0.02), 0.4, 3.0);
        pcie.add(
            s,
            format!(
                "{place} PCIe link {} busy vs {}",
                pct(l.recent),
                l.against(pct)
            ),
        );
    }

    let mut host = Family::default();
    if let Some(l) = cx.level(
        who,
        peers,
        MetricName::CpuPressureWaiting,
        node_sub,
        Agg::Max,
        true,
    ) {
        let f = |x: f64| {
            if x >= 0.01 {
                format!("{x:.2} s/s")
            } else {
                format!("{x:.4} s/s")
            }
        };
        // Tasks waiting for a CPU 5% of the time or more is a starved host; a
        // healthy serving node sits near 0.001-0.02.
        let s = standout(l.recent, l.reference(0.005), 0.05, 4.0);
        host.add(
            s,
            format!(
                "{} CPU pressure (tasks waiting) {} vs {}",
                who.node,
                f(l.recent),
                l.against(f)
            ),
        );
    }
    if let Some(l) = cx.level(
        who,
        peers,
        MetricName::DpuPcieDoorbellGap,
        gpu_sub,
        Agg::Max,
        false,
    ) {
        let f = |x: f64| format!("{x:.0} us");
        // Slow doorbells on a busy bus are the bus's fault, not the host's.
        let s = standout(l.recent, l.reference(50.0), 100.0, 3.0) * (1.0 - pcie.strength());
        host.add(
            s,
            format!("{place} doorbell gap {} vs {}", f(l.recent), l.against(f)),
        );
    }

    let nic_place = match &who.nic {
        Some(n) => format!("{} {n}", who.node),
        None => format!("{} (busiest NIC)", who.node),
    };
    let mut network = Family::default();
    if let Some(l) = cx.level_any_device(who, peers, MetricName::DpuNicQueueDepth) {
        let f = |x: f64| format!("{x:.0} pkts");
        let s = standout(l.recent, l.reference(10.0), 100.0, 5.0);
        network.add(
            s,
            format!(
                "{} NIC queue depth {} vs {}",
                nic_place,
                f(l.recent),
                l.against(f)
            ),
        );
    }
    if let Some(l) = cx.level_any_device(who, peers, MetricName::DpuRdmaCreditStall) {
        let f = |x: f64| format!("{:.0} ms/s", x / 1000.0);
        let s = standout(l.recent, l.reference(1000.0), 10_000.0, 5.0);
        network.add(
            s,
            format!(
                "{} RDMA credit stalls {} vs {}",
                nic_place,
                f(l.recent),
                l.against(f)
            ),
        );
    }
    if let Some(l) = cx.level_any_device(who, peers, MetricName::DpuNicLinkUtil) {
        let pct = |x: f64| format!("{:.0}%", x * 100.0);
        let s = if l.recent >= 0.9 { 0.6 } else { 0.0 };
        network.add(
            s,
            format!(
                "NIC link {} of line rate vs {}",
                pct(l.recent),
                l.against(pct)
            ),
        );
    }
    if let Some(l) = cx.level(
        who,
        peers,
        MetricName::TcpRetransSegs,
        node_sub,
        Agg::Max,
        true,
    ) {
        let f = |x: f64| format!("{x:.0}/s");
        let s = standout(l.recent, l.reference(2.0), 20.0, 5.0);
        network.add(
            s,
            format!(
                "{} TCP retransmits {} vs {}",
                who.node,
                f(l.recent),
                l.against(f)
            ),
        );
    }
    for name in [MetricName::NetRxDrop, MetricName::NetTxDrop] {
        if let Some(l) = cx.level_dirs(who, peers, name) {
            let f = |x: f64| format!("{x:.0}/s");
            let s = standout(l.recent, l.reference(1.0), 10.0, 5.0);
            network.add(
                s,
                format!(
                    "{} dropped packets {} vs {}",
                    who.node,
                    f(l.recent),
                    l.against(f)
                ),
            );
        }
    }

    let mut gpu = Family::default();
    if let Some(l) = cx.level(who, peers, MetricName::SmClock, gpu_sub, Agg::Min, false) {
        let f = |x: f64| format!("{x:.0} MHz");
        // A throttled GPU runs well below both its peers and its own habit;
        // waiting peers boost, so the peer comparison alone would mislead.
        let vs_peers = l.peers.map_or(1.0, |p| l.recent / p.max(1.0));
        let vs_self = l.baseline.map_or(1.0, |b| l.recent / b.max(1.0));
        let s = if vs_peers <= 0.85 && vs_self <= 0.9 {
            (0.5 + (0.85 - vs_peers) * 2.0).min(1.0)
        } else {
            0.0
        };
        gpu.add(
            s,
            format!("{place} SM clock {} vs {}", f(l.recent), l.against(f)),
        );
    }
    if let Some(l) = cx.level(who, peers, MetricName::GpuTemp, gpu_sub, Agg::Max, false) {
        let s = if l.recent >= 85.0 { 0.6 } else { 0.0 };
        gpu.add(s, format!("{place} temperature {:.0} C", l.recent));
    }
    if let Some(l) = cx.level(who, peers, MetricName::XidErrors, gpu_sub, Agg::Max, false) {
        let s = if l.recent > 0.0 { 0.9 } else { 0.0 };
        gpu.add(s, format!("{place} last XID error {:.0}", l.recent));
    }
    let busy = who
        .gpu
        .and_then(|g| cx.recent(&who.node, MetricName::GpuUtil, &Sub::Gpu(g), Agg::Max));

    decide(
        &place,
        [
            (Cause::Pcie, pcie),
            (Cause::Host, host),
            (Cause::Network, network),
            (Cause::Gpu, gpu),
        ],
        busy,
    )
}

fn family_name(c: Cause) -> &'static str {
    match c {
        Cause::Pcie => "PCIe",
        Cause::Host => "host",
        Cause::Network => "network",
        Cause::Gpu => "GPU",
        Cause::Engine => "engine",
        Cause::Workload => "workload",
    }
}

fn decide(place: &str, families: [(Cause, Family); 4], busy: Option<f64>) -> Attribution {
    let coverage = families.iter().filter(|(_, f)| f.present).count() as f64 / 4.0;
    let mut ranked: Vec<(Cause, f64)> = families.iter().map(|(c, f)| (*c, f.strength())).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (top, top_s) = ranked[0];
    let second_s = ranked[1].1;

    let mut evidence = Vec::new();
    let (cause, confidence, decisive) = if top_s >= CLEAN {
        let fam = &families.iter().find(|(c, _)| *c == top).expect("ranked").1;
        if let Some(b) = &fam.best {
            evidence.push(b.text.clone());
        }
        let conf = (0.55 + 0.4 * top_s * (1.0 - 0.5 * second_s)) * (0.7 + 0.3 * coverage);
        (top, conf, top_s >= DECISIVE)
    } else {
        // Nothing around the GPU is wrong, yet the rank is late: the GPU
        // itself is slower (more work, or a slower device).
        match busy {
            Some(u) => evidence.push(format!(
                "{place} stays busy ({u:.0}% utilisation) while bus, host and network look healthy"
            )),
            None => evidence.push("bus, host and network look healthy around the rank".into()),
        }
        (Cause::Gpu, 0.3 + 0.3 * coverage, false)
    };
    for (c, f) in &families {
        if *c == cause {
            continue;
        }
        if f.strength() >= CLEAN {
            let text = &f.best.as_ref().expect("strength implies a reading").text;
            evidence.push(format!("also abnormal ({}): {text}", family_name(*c)));
        } else if let Some(text) = f.clean.first().or(f.best.as_ref().map(|b| &b.text)) {
            evidence.push(format!("{} ruled out: {text}", family_name(*c)));
        }
    }
    let missing: Vec<&str> = families
        .iter()
        .filter(|(_, f)| !f.present)
        .map(|(c, _)| family_name(*c))
        .collect();
    if !missing.is_empty() {
        evidence.push(format!("no {} signals for this rank", missing.join(", ")));
    }
    Attribution {
        cause,
        confidence: confidence.clamp(0.05, 0.99),
        decisive,
        evidence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standout_scales_with_the_ratio() {
        assert_eq!(standout(10.0, 1.0, 20.0, 5.0), 0.0, "below floor");
        assert_eq!(standout(30.0, 10.0, 20.0, 5.0), 0.0, "below ratio");
        assert!((standout(50.0, 10.0, 20.0, 5.0) - 0.5).abs() < 1e-9);
        assert!((standout(500.0, 10.0, 20.0, 5.0) - 1.0).abs() < 1e-9);
    }
}
