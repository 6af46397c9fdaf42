//! Faults of the fabric and of single NICs' flow control: congestion across
//! several nodes at once, RDMA credit starvation, a transmit backlog, and
//! the microburst that looks like congestion for a second or two.

use crate::build::{Builder, Res, EARLIEST_ONSET};
use crate::cluster::{Cluster, NICS};
use crate::inject::NodeFx;
use crate::plan::{Episode, Fault};
use crate::rng::RngExt;
use keel_model::{Cause, FindingKind, Label};

#[derive(Clone, Debug)]
pub enum FabricFault {
    /// The fabric between `nodes` congests (an oversubscribed spine, a hot
    /// ToR uplink): on every one of them TCP retransmits rise to a fraction
    /// of a percent of what is sent, every NIC queues tens of packets and
    /// waits for credits a percent of the time. No single node is bad
    /// enough for a finding of its own.
    Congestion {
        nodes: Vec<usize>,
        retrans_frac: f64,
        queue: f64,
        stall_rate: f64,
    },
    /// A microburst or incast across `nodes` lasting a second or so: the
    /// same signals, stronger, gone before they could be sustained. Not a
    /// fault and never labelled; carried as an episode because it touches
    /// several nodes at one time.
    Microburst {
        nodes: Vec<usize>,
        retrans_frac: f64,
        queue: f64,
        stall_rate: f64,
    },
    /// One NIC waits for the far end's credits `stall_rate` us a second
    /// (a too-small QP window, a receiver slow to return credits); its link
    /// runs below its usual rate meanwhile.
    CreditStarvation {
        node: usize,
        dev: u32,
        stall_rate: f64,
    },
    /// One NIC's transmit queue fills while its link has room (the host's
    /// copies or the NIC's buffers are the bottleneck): the DPU's TX queue
    /// gauge climbs to `queue_peak` and, when `drops` > 0, the driver drops
    /// that many packets a second on transmit.
    EgressBacklog {
        node: usize,
        dev: u32,
        queue_peak: f64,
        drops: f64,
    },
}

impl FabricFault {
    pub fn nodes(&self) -> Vec<usize> {
        match self {
            FabricFault::Congestion { nodes, .. } | FabricFault::Microburst { nodes, .. } => {
                nodes.clone()
            }
            FabricFault::CreditStarvation { node, .. }
            | FabricFault::EgressBacklog { node, .. } => {
                vec![*node]
            }
        }
    }

    pub fn labels(&self, cluster: &Cluster, onset: f64, end: f64) -> Vec<Label> {
        let label = |kind, node: Option<usize>| Label {
            kind,
            cause: Some(Cause::Network),
            job: None,
            node: node.map(|n| cluster.nodes[n].name.clone()),
            rank: None,
            gpu: None,
            peer: None,
            onset,
            end,
        };
        match self {
            FabricFault::Congestion { .. } => vec![label(FindingKind::NetworkCongestion, None)],
            FabricFault::Microburst { .. } => Vec::new(),
            FabricFault::CreditStarvation { node, .. } => {
                vec![label(FindingKind::RdmaCreditStarvation, Some(*node))]
            }
            FabricFault::EgressBacklog { node, .. } => {
                vec![label(FindingKind::EgressBacklog, Some(*node))]
            }
        }
    }

    /// What the fault does to `node`'s telemetry `elapsed` s after onset.
    pub fn apply(&self, node: usize, elapsed: f64, dpu: bool, fx: &mut NodeFx) {
        match self {
            FabricFault::Congestion {
                nodes,
                retrans_frac,
                queue,
                stall_rate,
            }
            | FabricFault::Microburst {
                nodes,
                retrans_frac,
                queue,
                stall_rate,
            } => {
                if !nodes.contains(&node) {
                    return;
                }
                fx.retrans_frac = Some(*retrans_frac);
                if dpu {
                    for nic in fx.nic.iter_mut() {
                        nic.queue = [Some(queue * 0.8), Some(*queue)];
                        nic.stall_rate = Some(*stall_rate);
                        nic.util_add = 0.1;
                    }
                }
            }
            FabricFault::CreditStarvation {
                node: n,
                dev,
                stall_rate,
            } if *n == node => {
                let nic = &mut fx.nic[*dev as usize];
                nic.stall_rate = Some(*stall_rate);
                nic.util_add = -0.1;
            }
            FabricFault::EgressBacklog {
                node: n,
                dev,
                queue_peak,
                drops,
            } if *n == node => {
                let nic = &mut fx.nic[*dev as usize];
                if dpu {
                    // It builds over the first seconds, then stays.
                    let q = (150.0 + elapsed * queue_peak / 5.0).min(*queue_peak);
                    nic.queue[1] = Some(q);
                }
                nic.tx_drop_rate = *drops;
            }
            _ => {}
        }
    }
}

impl Builder {
    fn fabric(&mut self, fault: FabricFault, len: (f64, f64), lo: f64, hi: f64) -> bool {
        let res: Vec<Res> = fault.nodes().into_iter().map(Res::Node).collect();
        let Some((onset, end)) = self.window(&res, len, lo.max(EARLIEST_ONSET), hi) else {
            return false;
        };
        self.push_episode(Episode {
            fault: Fault::Fabric(fault),
            onset,
            end,
        });
        true
    }

    /// Congestion across `nodes` for 25-45 s inside [`lo`, `hi`].
    pub fn congestion(&mut self, nodes: Vec<usize>, lo: f64, hi: f64) -> bool {
        let fault = FabricFault::Congestion {
            nodes,
            retrans_frac: self.rng.uni(0.002, 0.006),
            queue: self.rng.uni(40.0, 70.0),
            stall_rate: self.rng.uni(4e3, 12e3),
        };
        self.fabric(fault, (25.0, 45.0), lo, hi)
    }

    /// A 0.6-1.4 s microburst across `nodes` inside [`lo`, `hi`].
    pub fn microburst(&mut self, nodes: Vec<usize>, lo: f64, hi: f64) -> bool {
        let fault = FabricFault::Microburst {
            nodes,
            retrans_frac: self.rng.uni(0.004, 0.008),
            queue: self.rng.uni(150.0, 600.0),
            stall_rate: self.rng.uni(50e3, 300e3),
        };
        self.fabric(fault, (0.6, 1.4), lo, hi)
    }

    /// Credit starvation of one of `node`'s NICs, stalled 5-40% of the time.
    pub fn credit_starvation(&mut self, node: usize, lo: f64, hi: f64) -> bool {
        let fault = FabricFault::CreditStarvation {
            node,
            dev: self.rng.int(0, NICS - 1),
            stall_rate: self.rng.uni(50e3, 400e3),
        };
        self.fabric(fault, (20.0, 45.0), lo, hi)
    }

    /// A transmit backlog on one of `node`'s NICs; with a DPU its queue
    /// reaches 300-3000 packets and half the time the driver drops too,
    /// without one it shows as drops alone.
    pub fn egress_backlog(&mut self, node: usize, lo: f64, hi: f64) -> bool {
        let dpu = self.cluster.dpu;
        let fault = FabricFault::EgressBacklog {
            node,
            dev: self.rng.int(0, NICS - 1),
            queue_peak: self.rng.uni(300.0, 3000.0),
            drops: if !dpu || self.rng.chance(0.5) {
                self.rng.uni(20.0, 200.0)
            } else {
                0.0
            },
        };
        self.fabric(fault, (20.0, 45.0), lo, hi)
    }
}
