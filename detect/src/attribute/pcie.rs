//! The `pcie` family: the host <-> GPU bus. Its throughput and link
//! occupancy are judged against the link's capacity (seed 000 Table 3b:
//! "sustained near-peak PCIe throughput") as well as against the rank's
//! peers and its own history ("one GPU shows heavy DMA, peers steady").

use super::level::{fmt_bytes_rate, gpu_sub, near_capacity, pct, standout, Agg, Ctx, Family};
use super::Site;
use crate::config::AttributionConfig;
use crate::signals::Sub;
use keel_model::MetricName;

/// Bytes per second one lane carries in each direction, by PCIe generation:
/// the transfer rate times its line code (8b/10b for Gen1-2, 128b/130b for
/// Gen3-5, 242/256-byte FLITs for Gen6), as the PCI-SIG base specifications
/// give them. Packet headers take a further share of this, which the busy
/// bar (`AttributionConfig::pcie_busy_share`) allows for.
pub(crate) fn lane_bytes_per_s(gen: u32) -> Option<f64> {
    let (gt_per_s, code) = match gen {
        1 => (2.5e9, 8.0 / 10.0),
        2 => (5.0e9, 8.0 / 10.0),
        3 => (8.0e9, 128.0 / 130.0),
        4 => (16.0e9, 128.0 / 130.0),
        5 => (32.0e9, 128.0 / 130.0),
        6 => (64.0e9, 242.0 / 256.0),
        _ => return None,
    };
    Some(gt_per_s * code / 8.0)
}

/// A GPU's PCIe link as dcgm-exporter reports it (current generation and
/// width, which a degraded link lowers).
struct Link {
    gen: u32,
    width: u32,
    bytes_per_s: f64,
}

fn link_of(cx: &Ctx, site: &Site) -> Option<Link> {
    let sub = Sub::Gpu(site.gpu?);
    let gen = cx.latest(&site.node, MetricName::PcieLinkGen, &sub)?;
    let width = cx.latest(&site.node, MetricName::PcieLinkWidth, &sub)?;
    if !(gen >= 1.0 && width >= 1.0) {
        return None;
    }
    let (gen, width) = (gen.round() as u32, width.round() as u32);
    Some(Link {
        gen,
        width,
        bytes_per_s: lane_bytes_per_s(gen)? * width as f64,
    })
}

/// How full the straggler's bus is, as a share of its capacity.
#[derive(Default)]
pub(super) struct Bus {
    /// The highest share seen recently, and what measured it.
    pub share: Option<(f64, String)>,
}

impl Bus {
    fn saw(&mut self, share: f64, how: String) {
        if share.is_finite() && self.share.as_ref().is_none_or(|(s, _)| share > *s) {
            self.share = Some((share, how));
        }
    }

    /// Whether the bus has no room left (`None`: nothing measured its load).
    pub fn busy(&self, cfg: &AttributionConfig) -> Option<bool> {
        self.share.as_ref().map(|(s, _)| *s >= cfg.pcie_busy_share)
    }
}

/// Strength of a share of capacity, halved when the peers' buses are as full:
/// a job whose every bus is saturated is slow as a whole, which explains one
/// late rank less well.
fn capacity_strength(share: f64, peers_share: Option<f64>, busy: f64) -> (f64, &'static str) {
    let s = near_capacity(share, busy);
    match peers_share {
        Some(p) if s > 0.0 && p >= busy => (s * 0.5, " (its peers' links are as full)"),
        _ => (s, ""),
    }
}

pub(super) fn family(
    cx: &Ctx,
    who: &Site,
    peers: &[Site],
    place: &str,
    cfg: &AttributionConfig,
) -> (Family, Bus) {
    let mut pcie = Family::default();
    let mut bus = Bus::default();
    let link = link_of(cx, who);
    let throughput = [
        (MetricName::PcieRxBytes, "PCIe RX (host to GPU)"),
        (MetricName::PcieTxBytes, "PCIe TX (GPU to host)"),
        (MetricName::DpuPcieH2dBytes, "DPU-observed H2D DMA"),
        (MetricName::DpuPcieD2hBytes, "DPU-observed D2H DMA"),
    ];
    for (name, what) in throughput {
        let Some(l) = cx.level(who, peers, name, gpu_sub, Agg::Max, false) else {
            continue;
        };
        let mut s = standout(
            l.recent,
            l.reference(50e6),
            cfg.pcie_bytes_floor,
            cfg.pcie_bytes_ratio,
        );
        let mut text = format!(
            "{place} {what} {} vs {}",
            fmt_bytes_rate(l.recent),
            l.against(fmt_bytes_rate)
        );
        if let Some(link) = &link {
            let share = l.recent / link.bytes_per_s;
            let peers_share = l.peers.map(|p| p / link.bytes_per_s);
            let (c, note) = capacity_strength(share, peers_share, cfg.pcie_busy_share);
            s = s.max(c);
            let how = format!(
                "{} of its Gen{} x{} link ({} each way){note}",
                pct(share),
                link.gen,
                link.width,
                fmt_bytes_rate(link.bytes_per_s)
            );
            text = format!("{text}: {how}");
            bus.saw(share, how);
        }
        pcie.add(s, text);
    }
    if let Some(l) = cx.level(
        who,
        peers,
        MetricName::DpuPcieLinkUtil,
        gpu_sub,
        Agg::Max,
        false,
    ) {
        let rel = standout(
            l.recent,
            l.reference(0.02),
            cfg.pcie_link_floor,
            cfg.pcie_link_ratio,
        );
        let (c, note) = capacity_strength(l.recent, l.peers, cfg.pcie_busy_share);
        pcie.add(
            rel.max(c),
            format!(
                "{place} PCIe link {} of capacity vs {}{note}",
                pct(l.recent),
                l.against(pct)
            ),
        );
        bus.saw(l.recent, format!("link {} of capacity", pct(l.recent)));
    }
    (pcie, bus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_rates_follow_the_specifications() {
        let gbs = |g| lane_bytes_per_s(g).unwrap() * 16.0 / 1e9;
        assert!((gbs(3) - 15.75).abs() < 0.01, "Gen3 x16 {}", gbs(3));
        assert!((gbs(4) - 31.51).abs() < 0.01, "Gen4 x16 {}", gbs(4));
        assert!((gbs(5) - 63.02).abs() < 0.01, "Gen5 x16 {}", gbs(5));
        assert_eq!(lane_bytes_per_s(0), None);
    }
}
