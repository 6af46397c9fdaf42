//! `intra_node_gpu_skew`: one busy GPU fed thin among its job's steady
//! peers on the node (see `bus.rs`).

use super::{finding, BusConfig, Gpu, NodeState};
use crate::attribute::fmt_bytes_rate;
use crate::episode::Step;
use crate::signals::Sub;
use crate::topology::Topology;
use keel_model::{Cause, Finding, FindingKind, MetricName, Timestamp};

/// The host-to-GPU rate of a GPU over the thin window: the DPU's counter
/// where there is one, else dcgm-exporter's RX bytes.
fn h2d(view: &Gpu, window: f64) -> Option<(f64, &'static str)> {
    let from = view.now - window;
    if let Some(s) = view.span(MetricName::DpuPcieH2dBytes, from) {
        return Some((s.mean, "DPU H2D DMA"));
    }
    view.span(MetricName::PcieRxBytes, from)
        .map(|s| (s.mean, "PCIe RX"))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn thin(
    cfg: &BusConfig,
    state: &mut NodeState,
    view: &Gpu,
    g: u32,
    active: bool,
    topology: &Topology,
    now: Timestamp,
    out: &mut Vec<Finding>,
    cleared: &mut Vec<Finding>,
) {
    let job = topology.holder(view.node, g).map(|h| h.job.clone());
    let mine = h2d(view, cfg.thin_window_s);
    let mut peers: Vec<(f64, Option<f64>)> = Vec::new();
    if let (Some(job), true, Some(_)) = (&job, active, mine) {
        for &p in state.gpus.keys().filter(|&&p| p != g) {
            if topology.holder(view.node, p).is_none_or(|h| h.job != *job) {
                continue;
            }
            let pv = Gpu {
                sub: Sub::Gpu(p),
                ..*view
            };
            if pv
                .latest(MetricName::GpuUtil)
                .is_none_or(|u| u < cfg.active_util)
            {
                continue;
            }
            if let Some((r, _)) = h2d(&pv, cfg.thin_window_s) {
                peers.push((r, pv.latest(MetricName::DpuPcieDoorbellGap)));
            }
        }
    }
    let Some(gs) = state.gpus.get_mut(&g) else {
        return;
    };
    let open = gs.thin.is_open();
    let share = if open { cfg.thin_clear } else { cfg.thin_share };
    let anchor = gs.thin.suspect_since().unwrap_or(view.now) - 2.0;
    let mut judged = None;
    if let Some((rate, what)) = mine {
        if peers.len() >= cfg.thin_min_peers {
            let peer_rate = median(peers.iter().map(|p| p.0));
            let habit = view
                .baseline(MetricName::DpuPcieH2dBytes, anchor)
                .or_else(|| view.baseline(MetricName::PcieRxBytes, anchor));
            let holds = peer_rate >= cfg.thin_peer_floor_bps
                && rate <= share * peer_rate
                && (open || habit.is_none_or(|h| rate <= share * h));
            if holds {
                judged = Some((rate, what, peer_rate, habit));
            }
        }
    }
    let since = match gs
        .thin
        .observe(judged.is_some(), view.now, cfg.sustain_s, cfg.clear_s)
    {
        Step::Concluded { since } => since,
        Step::Closed => {
            cleared.extend(gs.thin_reported.clear(now));
            return;
        }
        Step::Nothing => return,
    };
    let Some((rate, what, peer_rate, habit)) = judged else {
        return;
    };
    // Whose side: doorbells late against the GPU's own habit (or, without
    // one, its peers') say its launches come late, the host's doing.
    let gap = view
        .span(MetricName::DpuPcieDoorbellGap, view.now - cfg.thin_window_s)
        .map(|s| s.mean);
    let peer_gap = {
        let v: Vec<f64> = peers.iter().filter_map(|p| p.1).collect();
        (!v.is_empty()).then(|| median(v.into_iter()))
    };
    let gap_habit = view.baseline(MetricName::DpuPcieDoorbellGap, anchor);
    let late = match (gap, gap_habit.or(peer_gap)) {
        (Some(x), Some(r)) => x >= cfg.doorbell_ratio * r,
        _ => false,
    };
    let mut f = finding(
        FindingKind::IntraNodeGpuSkew,
        if late { Cause::Host } else { Cause::Pcie },
        now,
        view.node,
    );
    f.gpu = Some(g);
    f.job = job;
    f.evidence.push(format!(
        "{} GPU {g} {what} {} over {:.0} s vs its {} busy peers' median {} since {since_at}",
        view.node,
        fmt_bytes_rate(rate),
        cfg.thin_window_s,
        peers.len(),
        fmt_bytes_rate(peer_rate),
        since_at = keel_model::Clock(since)
    ));
    if let Some(h) = habit {
        f.evidence
            .push(format!("its own rate before {} ", fmt_bytes_rate(h)));
    }
    if let (Some(x), Some(p)) = (gap, peer_gap) {
        let habit = gap_habit.map_or(String::new(), |h| format!(", its own {h:.0} us before"));
        f.evidence.push(format!(
            "doorbell gap {x:.0} us vs peers' {p:.0} us{habit}: {}",
            if late {
                "its launches come late (host side)"
            } else {
                "launches on time, the transfers themselves are thin (bus side)"
            }
        ));
    }
    gs.thin_reported.set(&f);
    out.push(f);
}

fn median(it: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = it.collect();
    crate::stats::quantile_in_place(&mut v, 0.5).unwrap_or(0.0)
}
