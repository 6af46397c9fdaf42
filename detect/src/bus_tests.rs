//! The bus detectors fed 1 Hz scrapes of one node, as an engine sees them:
//! each condition concluded once after it has held, not for a brief spike
//! or for a look-alike, and cleared when it goes.

use crate::{Engine, Finding};
use keel_model::{
    Cause, FindingKind, JobRecord, JobState, MetricLabels, MetricName as M, MetricSample, Record,
};

const T0: f64 = 1000.0;

/// One GPU's readings in a scrape.
#[derive(Clone, Copy)]
struct Gpu {
    util: f64,
    link: f64,
    rx: f64,
    doorbell: f64,
}

const HEALTHY: Gpu = Gpu {
    util: 97.0,
    link: 0.25,
    rx: 8e9,
    doorbell: 30.0,
};

struct Node {
    engine: Engine,
    out: Vec<Finding>,
    cleared: Vec<Finding>,
    h2d: [f64; 8],
}

impl Node {
    fn new() -> Node {
        let mut n = Node {
            engine: Engine::default(),
            out: Vec::new(),
            cleared: Vec::new(),
            h2d: [0.0; 8],
        };
        let mut job = JobRecord::state_only("j1", JobState::Running, T0 - 1.0);
        job.nodes = vec!["n1".into()];
        job.ranks.insert("n1".into(), (0..8).collect());
        job.gpus = (0..8).map(|r| (r, r)).collect();
        job.node_gpus.insert("n1".into(), (0..8).collect());
        job.tp = Some(8);
        n.push(Record::Job(Box::new(job)));
        n
    }

    fn push(&mut self, r: Record) {
        self.engine.push(&r, &mut self.out);
        self.cleared.extend(self.engine.take_cleared());
    }

    fn metric(&mut self, ts: f64, name: M, gpu: Option<u32>, value: f64) {
        self.push(Record::Metric(MetricSample {
            ts,
            node: "n1".into(),
            name,
            labels: MetricLabels {
                gpu,
                ..Default::default()
            },
            value,
        }));
    }

    /// One scrape at `ts`: dcgm's gauges, then the DPU's, then the node's
    /// CPU pressure counter (its running total `cpu`).
    fn scrape(&mut self, ts: f64, gpus: &[Gpu; 8], cpu: f64) {
        for (g, r) in gpus.iter().enumerate() {
            let gi = Some(g as u32);
            self.metric(ts, M::PcieLinkGen, gi, 4.0);
            self.metric(ts, M::PcieLinkWidth, gi, 16.0);
            self.metric(ts, M::GpuUtil, gi, r.util);
            self.metric(ts, M::PcieRxBytes, gi, r.rx);
            self.h2d[g] += r.rx;
            self.metric(ts, M::DpuPcieH2dBytes, gi, self.h2d[g]);
            self.metric(ts, M::DpuPcieLinkUtil, gi, r.link);
            self.metric(ts, M::DpuPcieDoorbellGap, gi, r.doorbell);
        }
        self.metric(ts, M::CpuPressureWaiting, None, cpu);
    }

    /// Scrapes from `from` to `to` s after T0, each GPU as `f` says, with
    /// CPU pressure at `cpu_rate` s/s.
    fn run(&mut self, from: u32, to: u32, cpu_rate: f64, f: impl Fn(u32, usize) -> Gpu) {
        for t in from..to {
            let gpus: [Gpu; 8] = std::array::from_fn(|g| f(t, g));
            let cpu = 1.0 + T0 * 0.005 + t as f64 * cpu_rate;
            self.scrape(T0 + t as f64, &gpus, cpu);
        }
    }

    fn found(&self, kind: FindingKind) -> Vec<&Finding> {
        self.out.iter().filter(|f| f.kind == kind).collect()
    }

    fn cleared(&self, kind: FindingKind) -> usize {
        self.cleared.iter().filter(|f| f.kind == kind).count()
    }
}

fn full(g: Gpu) -> Gpu {
    Gpu {
        util: 90.0,
        link: 0.96,
        rx: 0.95 * 31.5e9,
        ..g
    }
}

#[test]
fn two_full_links_are_the_nodes_saturation_one_is_not() {
    let mut n = Node::new();
    n.run(0, 60, 0.005, |_, _| HEALTHY);
    // One GPU's own link full for 30 s: its trouble, not the node's bus.
    n.run(
        60,
        90,
        0.005,
        |_, g| if g == 3 { full(HEALTHY) } else { HEALTHY },
    );
    n.run(90, 100, 0.005, |_, _| HEALTHY);
    assert!(n.found(FindingKind::PcieSaturation).is_empty());
    // Two GPUs full at once for 4 s (a checkpoint read): not sustained.
    n.run(
        100,
        104,
        0.005,
        |_, g| if g < 2 { full(HEALTHY) } else { HEALTHY },
    );
    n.run(104, 110, 0.005, |_, _| HEALTHY);
    assert!(n.found(FindingKind::PcieSaturation).is_empty());
    // Two GPUs full for 30 s: the node's bus is saturated, once.
    n.run(110, 140, 0.005, |_, g| {
        if g == 2 || g == 5 {
            full(HEALTHY)
        } else {
            HEALTHY
        }
    });
    let f = n.found(FindingKind::PcieSaturation);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (f[0].cause, f[0].node.as_deref()),
        (Cause::Pcie, Some("n1"))
    );
    assert!(
        f[0].ts >= T0 + 120.0 && f[0].ts <= T0 + 122.0,
        "{}",
        f[0].ts
    );
    assert!(
        f[0].evidence[0].contains("GPU 2") && f[0].evidence[0].contains("GPU 5"),
        "{:?}",
        f[0].evidence
    );
    assert_eq!(n.cleared(FindingKind::PcieSaturation), 0);
    n.run(140, 150, 0.005, |_, _| HEALTHY);
    assert_eq!(n.cleared(FindingKind::PcieSaturation), 1);
}

#[test]
fn the_payload_against_the_links_capacity_is_enough_without_a_dpu() {
    let mut n = Node::new();
    let no_dpu = |g: Gpu| Gpu {
        link: f64::NAN,
        ..g
    };
    n.run(0, 40, 0.005, |_, _| no_dpu(HEALTHY));
    n.run(40, 60, 0.005, |_, g| {
        no_dpu(if g < 3 { full(HEALTHY) } else { HEALTHY })
    });
    assert_eq!(n.found(FindingKind::PcieSaturation).len(), 1);
}

fn late(g: Gpu) -> Gpu {
    Gpu {
        util: 88.0,
        doorbell: 200.0,
        ..g
    }
}

#[test]
fn a_starved_cpu_with_late_doorbells_and_room_on_the_bus_is_the_host() {
    let mut n = Node::new();
    n.run(0, 60, 0.005, |_, _| HEALTHY);
    // CPU pressure alone (a host job), doorbells on time: not it.
    n.run(60, 90, 0.6, |_, _| HEALTHY);
    n.run(90, 100, 0.005, |_, _| HEALTHY);
    // Late doorbells alone (the launch path, CPU calm): not it.
    n.run(100, 130, 0.005, |_, g| {
        if g == 4 {
            late(HEALTHY)
        } else {
            HEALTHY
        }
    });
    n.run(130, 200, 0.005, |_, _| HEALTHY);
    assert!(n.found(FindingKind::HostCpuBottleneck).is_empty());
    // Both, with the bus at a quarter of its capacity: concluded once.
    n.run(
        200,
        230,
        0.5,
        |_, g| if g == 4 { late(HEALTHY) } else { HEALTHY },
    );
    let f = n.found(FindingKind::HostCpuBottleneck);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].cause, Cause::Host);
    assert!(
        f[0].evidence
            .iter()
            .any(|e| e.contains("GPU 4 doorbell gap 200 us")),
        "{:?}",
        f[0].evidence
    );
    n.run(230, 245, 0.005, |_, _| HEALTHY);
    assert_eq!(n.cleared(FindingKind::HostCpuBottleneck), 1);
}

#[test]
fn late_doorbells_on_a_full_bus_are_not_the_host() {
    let mut n = Node::new();
    n.run(0, 60, 0.005, |_, _| HEALTHY);
    n.run(60, 90, 0.5, |_, g| {
        if g == 4 {
            late(full(HEALTHY))
        } else {
            HEALTHY
        }
    });
    assert!(n.found(FindingKind::HostCpuBottleneck).is_empty());
}

fn thin(g: Gpu, t: u32) -> Gpu {
    Gpu {
        util: 88.0,
        // Irregular: bursts and silences, a fifth of the usual on average.
        rx: if t.is_multiple_of(3) {
            0.4 * g.rx
        } else {
            0.1 * g.rx
        },
        doorbell: 150.0,
        ..g
    }
}

#[test]
fn one_gpu_fed_thin_among_steady_peers_is_a_skew_on_the_host_side() {
    let mut n = Node::new();
    let steady = |g: usize| Gpu {
        rx: 15e6 + 1e6 * g as f64,
        link: 0.0,
        ..HEALTHY
    };
    n.run(0, 60, 0.005, |_, g| steady(g));
    n.run(60, 90, 0.005, |t, g| {
        if g == 6 {
            thin(steady(g), t)
        } else {
            steady(g)
        }
    });
    let f = n.found(FindingKind::IntraNodeGpuSkew);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].gpu, f[0].cause), (Some(6), Cause::Host));
    n.run(90, 110, 0.005, |_, g| steady(g));
    assert_eq!(n.cleared(FindingKind::IntraNodeGpuSkew), 1);
    // A GPU whose transfers are heavy is not thin.
    n.run(110, 150, 0.005, |_, g| {
        if g == 1 {
            full(steady(g))
        } else {
            steady(g)
        }
    });
    assert_eq!(n.found(FindingKind::IntraNodeGpuSkew).len(), 1);
}

#[test]
fn a_saturation_under_a_pcie_straggler_names_it() {
    let mut n = Node::new();
    n.run(0, 40, 0.005, |_, _| HEALTHY);
    n.run(40, 60, 0.005, |_, g| {
        if g == 2 || g == 5 {
            full(HEALTHY)
        } else {
            HEALTHY
        }
    });
    let sat = n.found(FindingKind::PcieSaturation)[0].clone();
    // The pcie straggler of GPU 2's rank, concluded while it is open.
    let mut incidents = crate::incident::Incidents::default();
    incidents.link(&mut [sat.clone()]);
    let mut straggler = Finding {
        kind: FindingKind::TpStraggler,
        job: Some("j1".into()),
        rank: Some(2),
        gpu: Some(2),
        evidence: Vec::new(),
        related: Vec::new(),
        ..sat.clone()
    };
    let mut new = [straggler.clone()];
    incidents.link(&mut new);
    assert_eq!(new[0].related.len(), 1, "{:?}", new[0].related);
    assert!(new[0].related[0].names(&sat));
    // And the other way round: a saturation concluded under an open one.
    let mut incidents = crate::incident::Incidents::default();
    incidents.link(std::slice::from_mut(&mut straggler));
    let mut later = [sat];
    incidents.link(&mut later);
    assert!(later[0].related[0].names(&straggler));
    // A host straggler is not explained by the bus.
    let mut incidents = crate::incident::Incidents::default();
    incidents.link(&mut [later[0].clone()]);
    let mut host = [Finding {
        cause: Cause::Host,
        ..straggler
    }];
    incidents.link(&mut host);
    assert!(host[0].related.is_empty());
}

#[test]
fn garbage_readings_conclude_nothing() {
    let mut n = Node::new();
    let junk = [f64::NAN, f64::INFINITY, -1.0, f64::NEG_INFINITY];
    n.run(0, 120, 0.005, |t, g| {
        let v = junk[(t as usize + g) % junk.len()];
        Gpu {
            util: v,
            link: v,
            rx: v,
            doorbell: v,
        }
    });
    assert!(n.out.is_empty(), "{:?}", n.out);
}
