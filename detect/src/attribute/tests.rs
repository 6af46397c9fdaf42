//! Attribution fed samples and time, read for its conclusion: the saturated
//! bus of `shared/data/cases/pcie-saturated-bus` and its neighbours.

use super::*;
use keel_model::{MetricLabels, MetricName as M, MetricSample};

const T0: f64 = 1000.0;
/// The straggler's suspicion begins here; samples run to `NOW`.
const SINCE: f64 = T0 + 62.0;
const NOW: f64 = T0 + 66.0;

fn site(node: &str, gpu: u32) -> Site {
    Site {
        node: node.into(),
        gpu: Some(gpu),
        nic: Some(format!("mlx5_{gpu}").as_str().into()),
    }
}

struct Trace(SignalStore);

impl Trace {
    fn new() -> Trace {
        Trace(SignalStore::default())
    }

    /// A gauge on `who`'s GPU (or on its node with `gpu: None`), 1 Hz from
    /// T0 to NOW: `calm` until the onset (T0 + 60), `during` after.
    fn gauge(&mut self, node: &str, gpu: Option<u32>, name: M, calm: f64, during: f64) {
        self.labelled(
            node,
            MetricLabels {
                gpu,
                ..Default::default()
            },
            name,
            calm,
            during,
        );
    }

    fn labelled(&mut self, node: &str, labels: MetricLabels, name: M, calm: f64, during: f64) {
        let mut total = 0.0;
        for i in 0..=66 {
            let ts = T0 + i as f64;
            let v = if ts < T0 + 60.0 { calm } else { during };
            // Counters are written as running totals of the rate.
            total += v;
            let value = match name.kind() {
                keel_model::MetricKind::Gauge => v,
                keel_model::MetricKind::Counter => total,
            };
            self.0.push(&MetricSample {
                ts,
                node: node.into(),
                name,
                labels: labels.clone(),
                value,
            });
        }
    }

    /// One busy GPU with healthy clocks, on every rank of the job.
    fn healthy_gpu(&mut self, node: &str, gpu: u32) {
        self.gauge(node, Some(gpu), M::GpuUtil, 95.0, 95.0);
        self.gauge(node, Some(gpu), M::SmClock, 1965.0, 1965.0);
        self.gauge(node, Some(gpu), M::GpuTemp, 60.0, 60.0);
    }

    fn attribute(&self) -> Attribution {
        let who = site("gpu-502", 7);
        let peers = [site("gpu-502", 6), site("gpu-503", 6), site("gpu-503", 7)];
        attribute(
            &self.0,
            &who,
            &peers,
            SINCE,
            NOW,
            &AttributionConfig::default(),
        )
    }
}

/// The case file's straggler: ~8 GB/s of host-to-GPU traffic on every GPU
/// (a third of the link), then 21 GB/s on the straggler's, its link
/// 95% busy, and its doorbell gaps 4x longer.
fn saturated_bus(straggler_link: f64) -> Trace {
    let mut t = Trace::new();
    for (node, gpu) in [("gpu-502", 6), ("gpu-503", 6), ("gpu-503", 7)] {
        t.healthy_gpu(node, gpu);
        t.gauge(node, Some(gpu), M::PcieRxBytes, 8.0e9, 8.3e9);
        t.gauge(node, Some(gpu), M::DpuPcieLinkUtil, 0.33, 0.34);
        t.gauge(node, Some(gpu), M::DpuPcieDoorbellGap, 40.0, 42.0);
    }
    t.healthy_gpu("gpu-502", 7);
    t.gauge("gpu-502", Some(7), M::PcieRxBytes, 6.0e9, 21.7e9);
    t.gauge("gpu-502", Some(7), M::DpuPcieLinkUtil, 0.3, straggler_link);
    t.gauge("gpu-502", Some(7), M::DpuPcieDoorbellGap, 35.0, 175.0);
    for node in ["gpu-502", "gpu-503"] {
        t.gauge(node, None, M::CpuPressureWaiting, 0.01, 0.01);
    }
    t
}

#[test]
fn slow_doorbells_on_a_saturated_bus_are_the_bus() {
    let a = saturated_bus(0.95).attribute();
    assert_eq!(a.cause, Cause::Pcie, "{:#?}", a.evidence);
    assert!(a.decisive);
    assert!(
        a.evidence[0].contains("95% of capacity"),
        "{:#?}",
        a.evidence
    );
    assert!(
        a.evidence
            .iter()
            .any(|e| e.contains("175 us vs peers 42 us") && e.contains("the bus is saturated")),
        "{:#?}",
        a.evidence
    );
}

#[test]
fn slow_doorbells_while_the_bus_has_room_are_the_host() {
    // The same doorbells and the same steady traffic, on a link a third full.
    let mut t = saturated_bus(0.34);
    t.gauge("gpu-502", Some(7), M::PcieRxBytes, 8.0e9, 8.2e9);
    let a = t.attribute();
    assert_eq!(a.cause, Cause::Host, "{:#?}", a.evidence);
    assert!(
        a.evidence[0].contains("while the bus has room"),
        "{:#?}",
        a.evidence
    );
}

#[test]
fn throughput_is_judged_against_the_link_generation_and_width() {
    // No DPU: dcgm-exporter's throughput and the link it runs over. 29 GB/s
    // stands out little against peers at 12 GB/s, but it is 92% of a
    // Gen4 x16 link.
    let mut t = Trace::new();
    for (node, gpu) in [
        ("gpu-502", 6),
        ("gpu-503", 6),
        ("gpu-503", 7),
        ("gpu-502", 7),
    ] {
        t.healthy_gpu(node, gpu);
        t.gauge(node, Some(gpu), M::PcieLinkGen, 4.0, 4.0);
        t.gauge(node, Some(gpu), M::PcieLinkWidth, 16.0, 16.0);
        let during = if (node, gpu) == ("gpu-502", 7) {
            29e9
        } else {
            12e9
        };
        t.gauge(node, Some(gpu), M::PcieRxBytes, 12e9, during);
    }
    let a = t.attribute();
    assert_eq!(a.cause, Cause::Pcie, "{:#?}", a.evidence);
    assert!(
        a.evidence[0].contains("of its Gen4 x16 link"),
        "{:#?}",
        a.evidence
    );
}

#[test]
fn a_nic_at_line_rate_is_the_network() {
    let mut t = Trace::new();
    for (node, gpu) in [
        ("gpu-502", 6),
        ("gpu-503", 6),
        ("gpu-503", 7),
        ("gpu-502", 7),
    ] {
        t.healthy_gpu(node, gpu);
        t.gauge(node, Some(gpu), M::PcieRxBytes, 8e9, 8e9);
    }
    let dev = |name: &str| MetricLabels {
        device: Some(name.into()),
        ..Default::default()
    };
    // A 100 Gb/s port, receiving at 12 GB/s (96%).
    t.labelled("gpu-502", dev("mlx5_7"), M::NetSpeedBytes, 12.5e9, 12.5e9);
    t.labelled("gpu-502", dev("mlx5_7"), M::NetRxBytes, 5e9, 12e9);
    let a = t.attribute();
    assert_eq!(a.cause, Cause::Network, "{:#?}", a.evidence);
    assert!(
        a.evidence[0].contains("of its 12.5 GB/s line rate"),
        "{:#?}",
        a.evidence
    );
}

#[test]
fn without_pcie_or_gpu_signals_the_cause_is_unknown() {
    // Only node-wide signals, all calm: no DCGM, no DPU for the rank.
    let mut t = Trace::new();
    for node in ["gpu-502", "gpu-503"] {
        t.gauge(node, None, M::CpuPressureWaiting, 0.01, 0.01);
        t.gauge(node, None, M::TcpRetransSegs, 1.0, 1.0);
    }
    let a = t.attribute();
    assert_eq!(a.cause, Cause::Unknown, "{:#?}", a.evidence);
    assert!(!a.decisive);
    assert!(a.confidence < 0.3, "{}", a.confidence);
    assert!(
        a.evidence[0].contains("no PCIe or GPU signals for gpu-502 gpu 7"),
        "{:#?}",
        a.evidence
    );
    assert!(
        a.evidence.iter().any(|e| e.starts_with("host ruled out")),
        "{:#?}",
        a.evidence
    );
}

#[test]
fn a_busy_gpu_with_a_healthy_bus_is_the_gpu_by_elimination() {
    let mut t = Trace::new();
    for (node, gpu) in [
        ("gpu-502", 6),
        ("gpu-503", 6),
        ("gpu-503", 7),
        ("gpu-502", 7),
    ] {
        t.healthy_gpu(node, gpu);
        t.gauge(node, Some(gpu), M::PcieRxBytes, 15e6, 15e6);
    }
    // A host not seen (no CPU pressure: its exporter down) is not a
    // healthy one: nothing is eliminated.
    let a = t.attribute();
    assert_eq!(a.cause, Cause::Unknown, "{:#?}", a.evidence);
    assert!(
        a.evidence[0].contains("no host signals"),
        "{:#?}",
        a.evidence
    );
    for node in ["gpu-502", "gpu-503"] {
        t.gauge(node, None, M::CpuPressureWaiting, 0.01, 0.01);
    }
    let a = t.attribute();
    assert_eq!(a.cause, Cause::Gpu, "{:#?}", a.evidence);
    assert!(!a.decisive);
}
