//! How one signal is read around a straggler: its recent level, its peers'
//! level and its own level before the onset, and how strongly it stands out.

use crate::signals::{SignalStore, Sub};
use keel_model::{MetricName, Name, Timestamp};

use super::Site;

/// One measured signal and how strongly it points at its family.
pub(super) struct Reading {
    pub strength: f64,
    pub text: String,
}

/// Strength in 0..1 for a value that should stand out: 0 below `floor` or
/// below `ratio` times the reference, 0.5 at exactly `ratio` times, 1 at ten
/// times that.
pub(super) fn standout(x: f64, reference: f64, floor: f64, ratio: f64) -> f64 {
    if !x.is_finite() || x < floor {
        return 0.0;
    }
    let r = x / reference.max(f64::MIN_POSITIVE);
    if r < ratio {
        return 0.0;
    }
    (0.5 + 0.5 * (r / ratio).log10()).min(1.0)
}

/// Strength in 0..1 for a share of capacity: 0 below `busy`, 0.5 at `busy`
/// (decisive), 1 at the full capacity.
pub(super) fn near_capacity(share: f64, busy: f64) -> f64 {
    if !share.is_finite() || share < busy {
        return 0.0;
    }
    (0.5 + 0.5 * (share - busy) / (1.0 - busy).max(f64::EPSILON)).min(1.0)
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

pub(super) fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

pub(super) struct Ctx<'a> {
    pub signals: &'a SignalStore,
    pub from: Timestamp,
    pub now: Timestamp,
    pub before: Timestamp,
}

/// Recent and reference levels of one signal for the straggler.
pub(super) struct Level {
    pub recent: f64,
    pub peers: Option<f64>,
    pub baseline: Option<f64>,
}

impl Level {
    pub fn reference(&self, fallback: f64) -> f64 {
        match (self.peers, self.baseline) {
            (Some(p), Some(b)) => p.max(b),
            (Some(p), None) => p,
            (None, Some(b)) => b,
            (None, None) => fallback,
        }
    }

    pub fn against(&self, fmt: impl Fn(f64) -> String) -> String {
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
pub(super) enum Agg {
    Max,
    Min,
}

impl Ctx<'_> {
    pub fn recent(&self, node: &Name, name: MetricName, sub: &Sub, agg: Agg) -> Option<f64> {
        let span = self
            .signals
            .get(node, name, sub)?
            .span(self.from, self.now)?;
        Some(match agg {
            Agg::Max => span.max,
            Agg::Min => span.min,
        })
    }

    /// The latest value of a slowly changing gauge (a link's generation or
    /// width, a NIC's speed) at or before now, however long ago it was
    /// scraped.
    pub fn latest(&self, node: &Name, name: MetricName, sub: &Sub) -> Option<f64> {
        let (ts, v) = self.signals.get(node, name, sub)?.latest()?;
        (ts <= self.now && v.is_finite()).then_some(v)
    }

    /// The straggler's level of a signal against its peers (median of their
    /// recent levels) and its own pre-onset baseline. `node_wide` says
    /// whether peers on the straggler's node are left out: for node-wide
    /// signals (CPU pressure, retransmits) they share the very value.
    pub fn level(
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
    pub fn level_any_device(&self, who: &Site, peers: &[Site], name: MetricName) -> Option<Level> {
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
    pub fn level_dirs(&self, who: &Site, peers: &[Site], name: MetricName) -> Option<Level> {
        let worst = |node: &Name, nic: Option<&Name>| -> Option<(f64, Option<f64>)> {
            let mut best: Option<(f64, Option<f64>)> = None;
            for (key, series) in self.signals.on_node(node, name) {
                if let (Some(nic), Sub::Device(dev, _)) = (nic, key) {
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

pub(super) fn gpu_sub(s: &Site) -> Option<Sub> {
    s.gpu.map(Sub::Gpu)
}

pub(super) fn node_sub(_: &Site) -> Option<Sub> {
    Some(Sub::Node)
}

/// The readings of a family: those that point at it, strongest first, and
/// those that were looked at and found clean.
#[derive(Default)]
pub(super) struct Family {
    pub present: bool,
    pub positive: Vec<Reading>,
    pub clean: Vec<String>,
}

impl Family {
    pub fn add(&mut self, strength: f64, text: String) {
        self.present = true;
        if strength <= 0.0 {
            self.clean.push(text);
            return;
        }
        let at = self
            .positive
            .iter()
            .position(|r| strength > r.strength)
            .unwrap_or(self.positive.len());
        self.positive.insert(at, Reading { strength, text });
    }

    pub fn best(&self) -> Option<&Reading> {
        self.positive.first()
    }

    pub fn strength(&self) -> f64 {
        self.best().map_or(0.0, |b| b.strength)
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

    #[test]
    fn near_capacity_is_decisive_from_the_busy_share() {
        assert_eq!(near_capacity(0.79, 0.8), 0.0);
        assert!((near_capacity(0.8, 0.8) - 0.5).abs() < 1e-9);
        assert!((near_capacity(0.9, 0.8) - 0.75).abs() < 1e-9);
        assert_eq!(near_capacity(1.2, 0.8), 1.0);
    }
}
