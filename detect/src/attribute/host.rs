//! The `host` family: the CPU side of the node. CPU pressure is judged
//! against peers on other nodes and the node's own history. Doorbell gaps
//! (the runtime's launch cadence) are judged against the bus: seed 000
//! Table 3b calls "low DMA rate despite available PCIe bandwidth, delayed
//! doorbells" a host bottleneck, and "sustained near-peak PCIe throughput"
//! with stalls the bus's. So the same slow doorbells count for `host` while
//! the bus has room and for `pcie` once it has none.

use super::level::{gpu_sub, node_sub, standout, Agg, Ctx, Family};
use super::pcie::Bus;
use super::Site;
use crate::config::AttributionConfig;
use keel_model::MetricName;

/// Tasks waiting for a CPU 5% of the time or more is a starved host; a
/// healthy serving node sits near 0.001-0.02 s/s.
const CPU_PRESSURE_FLOOR: f64 = 0.05;
/// How many times its peers' and its own earlier pressure a node's must be.
const CPU_PRESSURE_RATIO: f64 = 4.0;

pub(super) fn family(
    cx: &Ctx,
    who: &Site,
    peers: &[Site],
    place: &str,
    cfg: &AttributionConfig,
    bus: &Bus,
    pcie: &mut Family,
) -> Family {
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
        let s = standout(
            l.recent,
            l.reference(0.005),
            CPU_PRESSURE_FLOOR,
            CPU_PRESSURE_RATIO,
        );
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
        let s = standout(
            l.recent,
            l.reference(50.0),
            cfg.doorbell_floor_us,
            cfg.doorbell_ratio,
        );
        let gap = format!("{place} doorbell gap {} vs {}", f(l.recent), l.against(f));
        match (bus.busy(cfg), &bus.share) {
            (Some(true), Some((_, how))) => {
                // A saturated bus delays the doorbell writes themselves.
                if s > 0.0 {
                    pcie.add(s, format!("{gap}; the bus is saturated ({how})"));
                    host.add(0.0, format!("{gap}, counted for PCIe: {how}"));
                } else {
                    host.add(0.0, gap);
                }
            }
            (Some(false), Some((_, how))) => {
                host.add(s, format!("{gap} while the bus has room ({how})"));
            }
            _ => {
                // Nothing says how full the link is: slow doorbells count for
                // the host only as far as the bus does not stand out.
                host.add(
                    s * (1.0 - pcie.strength()),
                    format!("{gap} (link load unknown)"),
                );
            }
        }
    }
    host
}
