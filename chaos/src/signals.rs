//! Per-node telemetry, scraped once a second: dcgm-exporter's GPU gauges, the
//! DPU's view of each GPU's PCIe link, and (in `netsig`) node-exporter and the
//! DPU's NIC sensors. Magnitudes follow the real H200 trace in `shared/data`.

use crate::cluster::{FB_IDLE_MIB, FB_TOTAL_MIB, GPUS};
use crate::inject::{
    counter_reset, exporter_down, gpu_activity, in_gap, node_fx, pcie_burst, straggler_symptom,
    Activity,
};
use crate::netsig::NetSig;
use crate::plan::{Plan, Symptom};
use crate::rng::{round_dec, round_to, stream, streams, Rng8, RngExt};
use crate::vllm::ServerSim;
use crate::writer::Out;
use keel_model::{MetricLabels, MetricName as M, Name};

/// Boost clock an H200 sits at when a context is open but nothing runs.
const CTX_IDLE_CLOCK: f64 = 1980.0;
const IDLE_CLOCK: f64 = 345.0;

struct Reading {
    util: f64,
    fb: f64,
    power: f64,
    clock: f64,
    temp: f64,
    rx: f64,
    tx: f64,
    link: f64,
    doorbell: f64,
}

/// One GPU's fixed character and running state.
struct GpuSig {
    power_busy: f64,
    power_idle: f64,
    power_ctx: f64,
    temp_busy: f64,
    temp_idle: f64,
    temp: f64,
    /// Slow wander of the coolant and neighbours, a degree or two.
    temp_wander: f64,
    clock_busy: f64,
    rx_busy: f64,
    tx_busy: f64,
    rx_idle: f64,
    tx_idle: f64,
    doorbell: f64,
    h2d: f64,
    d2h: f64,
}

impl GpuSig {
    fn new(rng: &mut Rng8) -> GpuSig {
        GpuSig {
            power_busy: rng.uni(660.0, 692.0),
            power_idle: rng.uni(75.0, 125.0),
            power_ctx: rng.uni(110.0, 130.0),
            temp_busy: rng.uni(55.0, 66.0),
            temp_idle: rng.uni(30.0, 35.0),
            temp: 0.0,
            temp_wander: 0.0,
            clock_busy: round_to(rng.uni(1425.0, 1485.0), 15.0),
            rx_busy: rng.uni(9e6, 20e6),
            tx_busy: rng.uni(4e6, 9e6),
            rx_idle: rng.uni(0.4e6, 0.9e6),
            tx_idle: rng.uni(0.6e6, 0.9e6),
            doorbell: rng.uni(22.0, 55.0),
            h2d: rng.uni(1e13, 5e14).round(),
            d2h: rng.uni(1e12, 1e14).round(),
        }
    }

    fn read(
        &mut self,
        rng: &mut Rng8,
        plan: &Plan,
        act: Activity,
        sym: Option<&Symptom>,
        burst: Option<f64>,
    ) -> Reading {
        let idle_doorbell = rng.uni(500.0, 2000.0);
        let mut r = match act {
            Activity::Idle => Reading {
                util: 0.0,
                fb: FB_IDLE_MIB,
                power: self.power_idle + rng.normal(0.0, 0.8),
                clock: IDLE_CLOCK,
                temp: self.temp_idle,
                rx: self.rx_idle * rng.uni(0.85, 1.15),
                tx: self.tx_idle * rng.uni(0.85, 1.15),
                link: 0.0,
                doorbell: idle_doorbell,
            },
            Activity::Loading => Reading {
                util: 0.0,
                fb: FB_TOTAL_MIB * rng.uni(0.958, 0.962),
                power: self.power_ctx + rng.uni(10.0, 40.0),
                clock: CTX_IDLE_CLOCK,
                temp: self.temp_idle + 6.0,
                // Weights stream in from host memory.
                rx: rng.uni(1.0e9, 3.0e9),
                tx: self.tx_idle,
                link: 0.0,
                doorbell: idle_doorbell,
            },
            Activity::Busy { job, rank } => Reading {
                util: rng.normal(97.0, 1.0).round().clamp(95.0, 99.0),
                fb: plan.cluster.jobs[job].fb_mib[rank as usize],
                power: (self.power_busy + rng.normal(0.0, 4.0)).clamp(650.0, 700.0),
                clock: (self.clock_busy + 15.0 * rng.normal(0.0, 1.3).round())
                    .clamp(1410.0, 1500.0),
                temp: self.temp_busy,
                rx: (self.rx_busy * (1.0 + rng.normal(0.0, 0.15))).clamp(5e6, 30e6),
                tx: (self.tx_busy * (1.0 + rng.normal(0.0, 0.15))).clamp(2e6, 12e6),
                link: 0.0,
                doorbell: self.doorbell * (1.0 + rng.normal(0.0, 0.08)).max(0.5),
            },
            Activity::Stalled { job, rank } => Reading {
                util: rng.int(0, 2) as f64,
                fb: plan.cluster.jobs[job].fb_mib[rank as usize],
                power: self.power_ctx + rng.uni(15.0, 30.0),
                clock: CTX_IDLE_CLOCK,
                temp: self.temp_idle + 10.0,
                rx: self.rx_idle * rng.uni(1.0, 2.0),
                tx: self.tx_idle * rng.uni(1.0, 2.0),
                link: 0.0,
                doorbell: idle_doorbell,
            },
            Activity::Squat { fb_frac, power } => Reading {
                util: rng.int(0, 3) as f64,
                fb: (FB_TOTAL_MIB * fb_frac).round(),
                power: power + rng.normal(0.0, 1.5),
                clock: CTX_IDLE_CLOCK,
                temp: self.temp_idle + 4.0,
                rx: self.rx_idle * rng.uni(0.8, 1.1),
                tx: self.tx_idle * rng.uni(0.7, 1.0),
                link: 0.0,
                doorbell: idle_doorbell,
            },
            Activity::Hung { fb_frac } => Reading {
                util: rng.int(0, 2) as f64,
                fb: (FB_TOTAL_MIB * fb_frac).round(),
                power: self.power_ctx + rng.uni(20.0, 45.0),
                clock: CTX_IDLE_CLOCK,
                temp: self.temp_idle + 6.0,
                rx: self.rx_idle,
                tx: self.tx_idle,
                link: 0.0,
                doorbell: idle_doorbell,
            },
        };
        if let (Some(share), Activity::Busy { .. }) = (plan.cluster.h2d_stream, act) {
            r.rx = share * plan.cluster.pcie_bps() * (1.0 + rng.normal(0.0, 0.12)).max(0.5);
        }
        let mut tau: f64 = 12.0;
        let mut link = None;
        if matches!(act, Activity::Busy { .. }) {
            match sym {
                Some(Symptom::Pcie { rx_peak, tx }) => {
                    r.util = rng.uni(87.0, 93.0).round();
                    // dcgm's 1-s samples catch the copy bursts unevenly: mostly
                    // the full rate, often part of it, now and then nothing.
                    let roll = rng.uni(0.0, 1.0);
                    r.rx = if roll < 0.58 {
                        rx_peak * rng.uni(0.9, 1.03)
                    } else if roll < 0.94 {
                        rx_peak * rng.uni(0.1, 0.6)
                    } else {
                        r.rx
                    };
                    if let Some(tx) = tx {
                        if rng.chance(0.6) {
                            r.tx = tx * rng.uni(0.95, 1.03);
                        }
                    }
                    // The DPU sees link occupancy (TLPs plus flow-control
                    // stalls), well above payload over capacity.
                    link = Some(rng.uni(0.5, 0.95));
                    r.doorbell *= rng.uni(1.0, 1.3);
                }
                Some(Symptom::PcieSaturated {
                    share,
                    doorbell_mult,
                }) => {
                    r.util = rng.uni(86.0, 96.0).round();
                    r.rx = share * plan.cluster.pcie_bps() * rng.uni(0.97, 1.01);
                    link = Some((share + rng.normal(0.0, 0.015)).clamp(0.9, 0.995));
                    r.doorbell *= doorbell_mult * rng.uni(0.85, 1.15);
                }
                Some(Symptom::Host { doorbell_mult, .. })
                | Some(Symptom::Launch { doorbell_mult }) => {
                    r.util = rng.uni(84.0, 93.0).round();
                    r.doorbell *= doorbell_mult * rng.uni(0.9, 1.1);
                }
                Some(Symptom::Thin {
                    h2d_share,
                    doorbell_mult,
                }) => {
                    r.util = rng.uni(84.0, 93.0).round();
                    // Fed in bursts and silences: thin on average.
                    r.rx *= if rng.chance(0.3) {
                        h2d_share * rng.uni(1.5, 2.5)
                    } else {
                        h2d_share * rng.uni(0.1, 0.6)
                    };
                    r.doorbell *= doorbell_mult * rng.uni(0.85, 1.15);
                }
                Some(Symptom::Thermal { clock, temp }) => {
                    r.clock = round_to(clock + rng.normal(0.0, 12.0), 15.0);
                    r.temp = *temp;
                    r.power *= 0.93;
                    tau = 3.0;
                }
                Some(Symptom::Network { .. }) | Some(Symptom::Silent) | None => {}
            }
        }
        if sym.is_none() && matches!(act, Activity::Busy { .. } | Activity::Idle) {
            if let Some(rate) = burst {
                r.rx = rate * rng.uni(0.85, 1.0);
            }
        }
        self.temp_wander = (self.temp_wander + rng.normal(0.0, 0.08)).clamp(-2.0, 2.0);
        r.temp += self.temp_wander;
        // Temperature lags its target; `r.temp` holds the target until here.
        if self.temp == 0.0 {
            self.temp = r.temp;
        }
        self.temp += (r.temp - self.temp) * (1.0 - (-1.0 / tau).exp());
        r.temp = (self.temp + rng.normal(0.0, 0.3)).round();
        r.rx = round_to(r.rx.max(0.0), 1024.0);
        r.tx = round_to(r.tx.max(0.0), 1024.0);
        r.link = link.unwrap_or((r.rx + r.tx) / plan.cluster.pcie_bps());
        self.h2d += r.rx;
        self.d2h += r.tx;
        r
    }
}

pub struct NodeSim {
    node: usize,
    rng: Rng8,
    gpus: Vec<GpuSig>,
    net: NetSig,
    cgroups: crate::cgroups::CgroupSig,
    last_t: f64,
}

impl NodeSim {
    pub fn new(plan: &Plan, node: usize, seed: u64) -> NodeSim {
        let mut rng = stream(seed, streams::NODE + node as u64);
        let gpus = (0..GPUS).map(|_| GpuSig::new(&mut rng)).collect();
        let net = NetSig::new(&mut rng, plan, node);
        NodeSim {
            node,
            rng,
            gpus,
            net,
            cgroups: crate::cgroups::CgroupSig::new(seed, node),
            last_t: plan.cluster.ts0 - 1.0,
        }
    }

    /// Takes this node's scrape at true time `t`.
    pub fn sample(&mut self, plan: &Plan, t: f64, servers: &mut [ServerSim], out: &mut Out) {
        let node = self.node;
        let ts = round_dec(plan.cluster.clock(node, t), 3);
        let name = plan.node_name(node).clone();
        let gap = in_gap(plan, node, t);
        out.begin_scrape();
        for g in 0..GPUS {
            let act = gpu_activity(plan, node, g, t);
            let sym = straggler_symptom(plan, node, g, t);
            let burst = pcie_burst(plan, node, g, t);
            let r = self.gpus[g as usize].read(&mut self.rng, plan, act, sym, burst);
            out.muted = gap;
            self.emit_gpu(plan, out, ts, &name, g, &r);
        }
        let fx = node_fx(plan, node, t);
        let reset = counter_reset(plan, node, self.last_t, t);
        out.muted = gap || exporter_down(plan, node, t);
        self.net
            .node_exporter(&mut self.rng, &fx, reset, ts, &name, out);
        if plan.cluster.cgroups {
            self.cgroups.sample(plan, node, t, ts, &name, out);
        }
        out.muted = gap;
        if plan.cluster.dpu {
            self.net.dpu_nics(&mut self.rng, &fx, ts, &name, out);
        }
        for s in servers.iter_mut().filter(|s| s.node == node) {
            out.muted = gap;
            s.sample(plan, t, ts, &name, out);
        }
        if plan.serving {
            out.muted = gap || exporter_down(plan, node, t);
            crate::serving::node_scrape(plan, node, ts, &name, out);
        }
        out.muted = gap;
        let (p_record, p_metric) = (out.noise().unknown_record, out.noise().unknown_metric);
        if out.rng().chance(p_record) {
            out.unknown_record(ts, &name);
        }
        if out.rng().chance(p_metric) {
            out.unknown_metric(ts, &name);
        }
        out.end_scrape();
        self.last_t = t;
    }

    fn emit_gpu(&self, plan: &Plan, out: &mut Out, ts: f64, node: &Name, g: u32, r: &Reading) {
        let gpu = || MetricLabels {
            gpu: Some(g),
            ..Default::default()
        };
        if !plan.cluster.no_dcgm.contains(&self.node) {
            if let Some((gen, width)) = plan.cluster.pcie_link {
                out.metric(ts, node, M::PcieLinkGen, gpu(), gen as f64);
                out.metric(ts, node, M::PcieLinkWidth, gpu(), width as f64);
            }
            let fb = r.fb.round();
            out.metric(ts, node, M::GpuUtil, gpu(), r.util);
            out.metric(ts, node, M::FbUsed, gpu(), fb);
            out.metric(ts, node, M::FbFree, gpu(), FB_TOTAL_MIB - 1.0 - fb);
            out.metric(ts, node, M::PowerUsage, gpu(), round_dec(r.power, 3));
            out.metric(ts, node, M::SmClock, gpu(), r.clock);
            out.metric(ts, node, M::GpuTemp, gpu(), r.temp);
            out.metric(ts, node, M::PcieRxBytes, gpu(), r.rx);
            out.metric(ts, node, M::PcieTxBytes, gpu(), r.tx);
            out.metric(ts, node, M::XidErrors, gpu(), 0.0);
        }
        if plan.cluster.dpu {
            let s = &self.gpus[g as usize];
            out.metric(ts, node, M::DpuPcieH2dBytes, gpu(), s.h2d);
            out.metric(ts, node, M::DpuPcieD2hBytes, gpu(), s.d2h);
            out.metric(ts, node, M::DpuPcieLinkUtil, gpu(), round_dec(r.link, 4));
            out.metric(
                ts,
                node,
                M::DpuPcieDoorbellGap,
                gpu(),
                round_dec(r.doorbell, 1),
            );
        }
    }
}
