//! Node-level telemetry: node-exporter's counters (CPU pressure, TCP, network
//! devices) and the DPU's NIC sensors.

use crate::cluster::{nic_name, NICS, NIC_LINE_BPS};
use crate::inject::NodeFx;
use crate::plan::Plan;
use crate::rng::{round_dec, Rng8, RngExt};
use crate::writer::Out;
use keel_model::{Dir, MetricLabels, MetricName as M, Name};

const DIRS: [Dir; 2] = [Dir::Rx, Dir::Tx];

struct Dev {
    name: Name,
    rx: f64,
    tx: f64,
    rx_drop: f64,
    tx_drop: f64,
}

pub struct NetSig {
    cpu: f64,
    cpu_rate: f64,
    retrans: f64,
    retrans_rate: f64,
    outsegs: f64,
    out_rate: f64,
    /// eth0, then mlx5_0..3.
    devs: Vec<Dev>,
    eth_rate: [f64; 2],
    /// Link utilisation each NIC direction settles around.
    nic_base: [[f64; 2]; NICS as usize],
    credit: [f64; NICS as usize],
    credit_rate: [f64; NICS as usize],
    /// This second's utilisation, shared by node-exporter and the DPU.
    util: [[f64; 2]; NICS as usize],
}

impl NetSig {
    pub fn new(rng: &mut Rng8, plan: &Plan, node: usize) -> NetSig {
        let serving = plan
            .cluster
            .jobs_on(node)
            .any(|j| plan.cluster.jobs[j].model.is_some());
        let mut devs = vec![Dev {
            name: Name::from("eth0"),
            rx: 0.0,
            tx: 0.0,
            rx_drop: 0.0,
            tx_drop: 0.0,
        }];
        devs.extend((0..NICS).map(|d| Dev {
            name: nic_name(d),
            rx: 0.0,
            tx: 0.0,
            rx_drop: 0.0,
            tx_drop: 0.0,
        }));
        for d in &mut devs {
            d.rx = rng.uni(1e12, 5e14).round();
            d.tx = rng.uni(1e12, 5e14).round();
            d.rx_drop = rng.int(0, 4000) as f64;
            d.tx_drop = rng.int(0, 50) as f64;
        }
        let mut nic_base = [[0.0; 2]; NICS as usize];
        for (d, base) in nic_base.iter_mut().enumerate() {
            let cross = plan.cluster.nic_carries_cross(node, d as u32);
            for b in base.iter_mut() {
                *b = if cross {
                    rng.uni(0.2, 0.5)
                } else {
                    rng.uni(0.02, 0.08)
                };
            }
        }
        NetSig {
            cpu: rng.uni(2e3, 4e5),
            cpu_rate: rng.uni(0.0005, 0.02),
            retrans: rng.uni(1e5, 5e7).round(),
            retrans_rate: rng.uni(0.0, 5.0),
            outsegs: rng.uni(1e9, 5e10).round(),
            out_rate: rng.uni(20e3, 100e3),
            devs,
            eth_rate: if serving {
                [rng.uni(20e6, 120e6), rng.uni(40e6, 200e6)]
            } else {
                [rng.uni(1e6, 20e6), rng.uni(1e6, 20e6)]
            },
            nic_base,
            credit: [0.0; NICS as usize].map(|_| rng.uni(1e8, 1e11).round()),
            credit_rate: [0.0; NICS as usize].map(|_| rng.uni(0.0, 500.0)),
            util: [[0.0; 2]; NICS as usize],
        }
    }

    /// Utilisation of one NIC direction this second.
    fn nic_util(&self, rng: &mut Rng8, fx: &NodeFx, dev: usize, dir: usize) -> f64 {
        let nic = &fx.nic[dev];
        match nic.util[dir] {
            Some(_) => rng.uni(0.96, 1.0),
            None => {
                (self.nic_base[dev][dir] + nic.util_add + rng.normal(0.0, 0.015)).clamp(0.005, 0.9)
            }
        }
    }

    pub fn node_exporter(
        &mut self,
        rng: &mut Rng8,
        fx: &NodeFx,
        reset: bool,
        ts: f64,
        node: &Name,
        out: &mut Out,
    ) {
        if reset {
            // A restarted exporter reads kernel counters afresh only for the
            // namespaces it tracks; its own accumulators start again near zero.
            self.cpu = self.cpu_rate * rng.uni(0.5, 2.0);
            self.retrans = rng.int(0, 3) as f64;
            self.outsegs = (self.out_rate * rng.uni(0.5, 2.0)).round();
            for d in &mut self.devs {
                d.rx = rng.uni(1e5, 1e7).round();
                d.tx = rng.uni(1e5, 1e7).round();
                d.rx_drop = 0.0;
                d.tx_drop = 0.0;
            }
        }
        self.cpu += match fx.cpu_rate {
            Some(r) => r * rng.uni(0.85, 1.15),
            None => self.cpu_rate * rng.uni(0.4, 1.6),
        };
        let out_segs = (self.out_rate * rng.uni(0.9, 1.1)).round();
        self.outsegs += out_segs;
        self.retrans += match fx.retrans_frac {
            Some(f) => {
                let mean = out_segs * f * rng.uni(0.8, 1.2);
                rng.poisson(mean)
            }
            None => rng.poisson(self.retrans_rate),
        };
        let eth = self.eth_rate;
        let d0 = &mut self.devs[0];
        d0.rx += (eth[0] * rng.uni(0.8, 1.2)).round();
        d0.tx += (eth[1] * rng.uni(0.8, 1.2)).round();
        d0.rx_drop += rng.poisson(0.02);
        for dev in 0..NICS as usize {
            self.util[dev] = [
                self.nic_util(rng, fx, dev, 0),
                self.nic_util(rng, fx, dev, 1),
            ];
            let rx = self.util[dev][0] * NIC_LINE_BPS * rng.uni(0.98, 1.0);
            let tx = self.util[dev][1] * NIC_LINE_BPS * rng.uni(0.98, 1.0);
            let d = &mut self.devs[dev + 1];
            d.rx += rx.round();
            d.tx += tx.round();
            let drops = fx.nic[dev].rx_drop_rate * rng.uni(0.7, 1.3);
            d.rx_drop += rng.poisson(drops);
            if fx.nic[dev].util[1].is_some() {
                let drops = rng.uni(5.0, 40.0);
                d.tx_drop += rng.poisson(drops);
            }
            if fx.nic[dev].tx_drop_rate > 0.0 {
                let drops = fx.nic[dev].tx_drop_rate * rng.uni(0.7, 1.3);
                d.tx_drop += rng.poisson(drops);
            }
        }

        let none = MetricLabels::default;
        out.metric(
            ts,
            node,
            M::CpuPressureWaiting,
            none(),
            round_dec(self.cpu, 6),
        );
        out.metric(ts, node, M::TcpRetransSegs, none(), self.retrans);
        out.metric(ts, node, M::TcpOutSegs, none(), self.outsegs);
        for d in &self.devs {
            let dev = || MetricLabels {
                device: Some(d.name.clone()),
                ..Default::default()
            };
            out.metric(ts, node, M::NetRxBytes, dev(), d.rx);
            out.metric(ts, node, M::NetTxBytes, dev(), d.tx);
            out.metric(ts, node, M::NetRxDrop, dev(), d.rx_drop);
            out.metric(ts, node, M::NetTxDrop, dev(), d.tx_drop);
        }
    }

    /// Call after `node_exporter` for the same second.
    pub fn dpu_nics(&mut self, rng: &mut Rng8, fx: &NodeFx, ts: f64, node: &Name, out: &mut Out) {
        for dev in 0..NICS as usize {
            let name = nic_name(dev as u32);
            for (di, dir) in DIRS.iter().enumerate() {
                let util = self.util[dev][di];
                let queue = match fx.nic[dev].queue[di] {
                    Some(q) => (q * (1.0 + rng.normal(0.0, 0.15))).max(0.0),
                    None => rng.exp(5.0).min(20.0),
                };
                let labels = || MetricLabels {
                    device: Some(name.clone()),
                    dir: Some(*dir),
                    ..Default::default()
                };
                out.metric(ts, node, M::DpuNicLinkUtil, labels(), round_dec(util, 4));
                out.metric(ts, node, M::DpuNicQueueDepth, labels(), queue.round());
            }
            self.credit[dev] += match fx.nic[dev].stall_rate {
                Some(r) => r * rng.uni(0.8, 1.2),
                None => self.credit_rate[dev] * rng.uni(0.0, 2.0),
            }
            .round();
            let labels = MetricLabels {
                device: Some(name.clone()),
                ..Default::default()
            };
            out.metric(ts, node, M::DpuRdmaCreditStall, labels, self.credit[dev]);
        }
    }
}
