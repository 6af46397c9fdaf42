//! The `gpu` family: the device itself. Its clock is judged against peers
//! and its own habit; temperature and XID errors against the device's
//! limits.

use super::level::{gpu_sub, Agg, Ctx, Family};
use super::Site;
use crate::signals::Sub;
use keel_model::MetricName;

/// H100/H200-class GPUs start thermal slowdown in the mid-80s C (nvidia-smi
/// `-q -d TEMPERATURE`: slowdown temperature); a busy GPU sits at 50-70 C.
const HOT_C: f64 = 85.0;

/// The GPU family and the GPU's recent utilisation (whether it was busy).
pub(super) fn family(cx: &Ctx, who: &Site, peers: &[Site], place: &str) -> (Family, Option<f64>) {
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
        // Clean, the bar is said: a clock a little under its peers' is not
        // a throttle, and the numbers alone would seem to say it is.
        let bar = if s == 0.0 && l.recent < l.peers.unwrap_or(0.0) {
            " (a throttle is under 85% of peers' and 90% of its own)"
        } else {
            ""
        };
        gpu.add(
            s,
            format!("{place} SM clock {} vs {}{bar}", f(l.recent), l.against(f)),
        );
    }
    if let Some(l) = cx.level(who, peers, MetricName::GpuTemp, gpu_sub, Agg::Max, false) {
        let s = if l.recent >= HOT_C { 0.6 } else { 0.0 };
        gpu.add(s, format!("{place} temperature {:.0} C", l.recent));
    }
    if let Some(l) = cx.level(who, peers, MetricName::XidErrors, gpu_sub, Agg::Max, false) {
        let s = if l.recent > 0.0 { 0.9 } else { 0.0 };
        gpu.add(s, format!("{place} last XID error {:.0}", l.recent));
    }
    let busy = who
        .gpu
        .and_then(|g| cx.recent(&who.node, MetricName::GpuUtil, &Sub::Gpu(g), Agg::Max));
    (gpu, busy)
}
