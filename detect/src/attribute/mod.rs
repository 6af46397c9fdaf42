//! Attribution of a straggler to a cause: `pcie`, `host`, `network` or `gpu`,
//! or `unknown` when no signal family decides.
//!
//! Seed 000 §4.2 reasons from the straggler's surroundings: a saturated PCIe
//! link to its GPU points at the bus; slow doorbells or a starved CPU while
//! the bus has room point at the host; a healthy bus with the NIC stalling
//! (queues, credit stalls, retransmits, a link at line rate) points at the
//! network; healthy bus, host and network with the GPU itself slow (clock
//! drop, heat, XID) or simply doing more work points at the GPU. Each signal
//! is judged against what the hardware can carry where the trace says so
//! (a link's capacity, a NIC's line rate), and against the straggler's peers
//! and its own history before the onset, because no one of these is enough:
//! TP ranks on one node share the host's CPU signals, a job with two ranks
//! has a single peer, and a bus that was always busy does not stand out
//! from its history. Any signal may be missing (no DPU, no DCGM profiling
//! fields): attribution uses what is there, says how much that was, and
//! concludes `unknown` rather than guess when what is missing is what the
//! conclusion would rest on. One file per family: `pcie`, `host`,
//! `network`, `gpu`; `level` reads one signal.

mod gpu;
mod host;
mod level;
mod network;
mod pcie;
#[cfg(test)]
mod tests;

use crate::config::AttributionConfig;
use crate::signals::SignalStore;
use keel_model::{Cause, Name, Timestamp};
use level::{Ctx, Family};

pub use level::fmt_bytes_rate;
pub(crate) use pcie::lane_bytes_per_s;

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
pub const BASELINE_GAP_S: f64 = 2.0;

/// Attributes a straggler at `who` (peers at `peers`) whose lateness has been
/// suspected since `since`; `now` is the current trace time.
pub fn attribute(
    signals: &SignalStore,
    who: &Site,
    peers: &[Site],
    since: Timestamp,
    now: Timestamp,
    cfg: &AttributionConfig,
) -> Attribution {
    let from = since - RECENT_LEAD_S;
    attribute_span(signals, who, peers, from, since - BASELINE_GAP_S, now, cfg)
}

/// Attributes over the samples from `from` to `now`, against each signal's
/// history before `before` (and against peers over the same span): what
/// [`attribute`] does around an onset, and what a review of an open
/// straggler does over its last seconds, judged against what came before
/// them (the open episode included).
pub fn attribute_span(
    signals: &SignalStore,
    who: &Site,
    peers: &[Site],
    from: Timestamp,
    before: Timestamp,
    now: Timestamp,
    cfg: &AttributionConfig,
) -> Attribution {
    let cx = Ctx {
        signals,
        from,
        now,
        before,
    };
    let place = match who.gpu {
        Some(g) => format!("{} gpu {g}", who.node),
        None => who.node.to_string(),
    };
    let (mut pcie, bus) = pcie::family(&cx, who, peers, &place, cfg);
    let host = host::family(&cx, who, peers, &place, cfg, &bus, &mut pcie);
    let network = network::family(&cx, who, peers, cfg);
    let (gpu, busy) = gpu::family(&cx, who, peers, &place);
    decide(
        &place,
        [
            (Cause::Pcie, pcie),
            (Cause::Host, host),
            (Cause::Network, network),
            (Cause::Gpu, gpu),
        ],
        busy,
        cfg,
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
        Cause::Unknown => "unknown",
    }
}

fn decide(
    place: &str,
    families: [(Cause, Family); 4],
    busy: Option<f64>,
    cfg: &AttributionConfig,
) -> Attribution {
    let coverage = families.iter().filter(|(_, f)| f.present).count() as f64 / 4.0;
    let present = |c: Cause| families.iter().any(|(k, f)| *k == c && f.present);
    let mut ranked: Vec<(Cause, f64)> = families.iter().map(|(c, f)| (*c, f.strength())).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (top, top_s) = ranked[0];
    let second_s = ranked[1].1;

    let mut evidence = Vec::new();
    let (cause, confidence, decisive) = if top_s >= cfg.clean {
        let fam = &families.iter().find(|(c, _)| *c == top).expect("ranked").1;
        // The deciding reading, then up to two that agree with it.
        evidence.extend(fam.positive.iter().take(3).map(|r| r.text.clone()));
        let conf = (0.55 + 0.4 * top_s * (1.0 - 0.5 * second_s)) * (0.7 + 0.3 * coverage);
        (top, conf, top_s >= cfg.decisive)
    } else if present(Cause::Pcie)
        && present(Cause::Host)
        && (present(Cause::Gpu) || busy.is_some())
    {
        // Nothing around the GPU is wrong, yet the rank is late, and the
        // GPU's own telemetry, its bus and its host's CPU were all seen:
        // the GPU itself is slower (more work, or a slower device). A host
        // not seen (its exporter down) is not a healthy one.
        match busy {
            Some(u) => evidence.push(format!(
                "{place} stays busy ({u:.0}% utilisation) while bus, host and network look healthy"
            )),
            None => evidence.push("bus, host and network look healthy around the rank".into()),
        }
        (Cause::Gpu, 0.3 + 0.3 * coverage, false)
    } else {
        // Elimination would need the bus and the GPU seen healthy; without
        // them a slow GPU cannot be told from a starved one.
        let lacking: Vec<&str> = [Cause::Pcie, Cause::Host, Cause::Gpu]
            .into_iter()
            .filter(|c| !(present(*c) || (*c == Cause::Gpu && busy.is_some())))
            .map(family_name)
            .collect();
        evidence.push(format!(
            "no signal family decides: no {} signals for {place}, so a slow GPU cannot be told from a starved one",
            lacking.join(" or ")
        ));
        (Cause::Unknown, 0.1 + 0.2 * coverage, false)
    };
    for (c, f) in &families {
        if *c == cause {
            continue;
        }
        if f.strength() >= cfg.clean {
            let text = &f.best().expect("strength implies a reading").text;
            evidence.push(format!("also abnormal ({}): {text}", family_name(*c)));
        } else if let Some(text) = f.clean.first() {
            evidence.push(format!("{} ruled out: {text}", family_name(*c)));
        } else if let Some(b) = f.best() {
            // Off from its peers or its past, but by less than counts: not
            // "ruled out", which its own numbers would contradict.
            evidence.push(format!(
                "{} off, but too little to count: {}",
                family_name(*c),
                b.text
            ));
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
        // Sums of weights carry binary noise (0.95 became
        // 0.9500000000000001): three decimals are all the weights have.
        confidence: (confidence.clamp(0.05, 0.99) * 1000.0).round() / 1000.0,
        decisive,
        evidence,
    }
}
