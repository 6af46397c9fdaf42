//! The `network` family: the rank's NIC and the fabric behind it. Link
//! utilisation is judged against line rate; queues, credit stalls,
//! retransmits and drops against peers on other nodes and history.

use super::level::{fmt_bytes_rate, near_capacity, node_sub, pct, standout, Agg, Ctx, Family};
use super::Site;
use crate::config::AttributionConfig;
use crate::signals::Sub;
use keel_model::MetricName;

pub(super) fn family(cx: &Ctx, who: &Site, peers: &[Site], cfg: &AttributionConfig) -> Family {
    let nic_place = match &who.nic {
        Some(n) => format!("{} {n}", who.node),
        None => format!("{} (busiest NIC)", who.node),
    };
    let mut network = Family::default();
    if let Some(l) = cx.level_any_device(who, peers, MetricName::DpuNicQueueDepth) {
        let f = |x: f64| format!("{x:.0} pkts");
        // 100 packets queued is a queue building, not a burst passing.
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
        // 10 ms of every second stalled for credits: 1% of the link's time.
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
        let s = near_capacity(l.recent, cfg.nic_busy_share);
        network.add(
            s,
            format!(
                "NIC link {} of line rate vs {}",
                pct(l.recent),
                l.against(pct)
            ),
        );
    }
    // node-exporter's byte counters over the device's line rate, where
    // node-exporter gives it (`node_network_speed_bytes`).
    if let Some(nic) = &who.nic {
        let sub = Sub::Device(nic.clone(), None);
        if let Some(speed) = cx
            .latest(&who.node, MetricName::NetSpeedBytes, &sub)
            .filter(|s| *s > 0.0)
        {
            for (name, dir) in [
                (MetricName::NetRxBytes, "receives"),
                (MetricName::NetTxBytes, "sends"),
            ] {
                if let Some(rate) = cx.recent(&who.node, name, &sub, Agg::Max) {
                    let share = rate / speed;
                    network.add(
                        near_capacity(share, cfg.nic_busy_share),
                        format!(
                            "{nic_place} {dir} {}: {} of its {} line rate",
                            fmt_bytes_rate(rate),
                            pct(share),
                            fmt_bytes_rate(speed)
                        ),
                    );
                }
            }
        }
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
    network
}
