//! The bus detectors' decoys: what looks like a saturated link or a starved
//! host for a moment, and is not.

use super::{Builder, Res, EARLIEST_ONSET};
use crate::plan::{Episode, Event, Fault, Symptom};
use crate::rng::RngExt;

impl Builder {
    /// Decoys for the bus detectors, none of them labelled: `bursts`
    /// transfers at 90-100% of a busy GPU's link for 3-6 s (a checkpoint
    /// read: full, but not sustained), and `cpu` host jobs raising a node's
    /// CPU pressure to 0.2-1.0 s/s for 10-40 s while its GPUs are fed on
    /// time (pressure without late doorbells). Kept clear of stragglers.
    pub fn bus_decoys(&mut self, jobs: &[usize], bursts: usize, cpu: usize) {
        let d = self.duration();
        for _ in 0..bursts * 8 {
            if self
                .events
                .iter()
                .filter(|e| matches!(e, Event::PcieBurst { rate, .. } if *rate > 5e9))
                .count()
                >= bursts
            {
                break;
            }
            let job = *self.rng.pick(jobs);
            let rank = self.rng.int(0, self.cluster.jobs[job].tp() - 1) as usize;
            let (node, gpu) = {
                let r = &self.cluster.jobs[job].ranks[rank];
                (r.node, r.gpu)
            };
            let from = self.rng.uni(EARLIEST_ONSET, d - 10.0);
            let from = self.abs(from);
            let to = from + self.rng.uni(3.0, 6.0);
            if self.straggles_near(node, gpu, from - 15.0, to + 15.0) {
                continue;
            }
            let rate = self.rng.uni(0.9, 1.0) * self.cluster.pcie_bps();
            self.events.push(Event::PcieBurst {
                node,
                gpu,
                from,
                to,
                rate,
            });
        }
        let n_nodes = self.cluster.nodes.len() as u32;
        let mut placed = 0;
        for _ in 0..cpu * 8 {
            if placed == cpu {
                break;
            }
            let node = self.rng.int(0, n_nodes - 1) as usize;
            let len = self.rng.uni(10.0, 40.0);
            let from = self.rng.uni(EARLIEST_ONSET, (d - len).max(EARLIEST_ONSET));
            let from = self.abs(from);
            let to = from + len;
            if !self.free(&[Res::Node(node)], from, to) {
                continue;
            }
            self.reserve(&[Res::Node(node)], from, to);
            let rate = self.rng.uni(0.2, 1.0);
            self.events.push(Event::CpuBurst {
                node,
                from,
                to,
                rate,
            });
            placed += 1;
        }
    }
}

impl Builder {
    /// The node's bus saturated by competing transfers: `gpus` of `node`
    /// hold their links at 93-99% of capacity from `onset` to `end`
    /// (absolute times).
    pub fn bus_saturation(&mut self, node: usize, gpus: Vec<u32>, onset: f64, end: f64) {
        let symptom = Symptom::PcieSaturated {
            share: self.rng.uni(0.93, 0.99),
            doorbell_mult: self.rng.uni(4.0, 5.5),
        };
        self.episodes.push(Episode {
            fault: Fault::BusSaturation {
                node,
                gpus,
                symptom,
            },
            onset,
            end,
        });
    }

    /// Gives each `PcieSaturated` straggler, with probability `chance`, a
    /// GPU of its node whose link fills at the same time (a co-located
    /// job's transfers on the same switch): the node's bus saturates under
    /// the straggler. The others stay one GPU's own full link.
    pub fn bus_companions(&mut self, chance: f64) {
        let full: Vec<(usize, usize, u32, f64, f64)> = self
            .episodes
            .iter()
            .filter_map(|ep| match &ep.fault {
                Fault::Straggler {
                    job,
                    rank,
                    symptom: Symptom::PcieSaturated { .. },
                    ..
                } => {
                    let r = &self.cluster.jobs[*job].ranks[*rank as usize];
                    Some((*job, r.node, r.gpu, ep.onset, ep.end))
                }
                _ => None,
            })
            .collect();
        for (job, node, gpu, onset, end) in full {
            if !self.rng.chance(chance) {
                continue;
            }
            // Another job's GPU: the straggler's peers stay steady.
            let busy = self.busy_gpus(node, Some(job), onset, end);
            if busy.is_empty() {
                continue;
            }
            let other = *self.rng.pick(&busy);
            self.bus_saturation(node, vec![gpu, other], onset, end);
        }
    }

    /// `n` saturations of a node's bus with no straggler under them, on 2-4
    /// GPUs of one node, each in a window of its own on that node.
    pub fn bus_saturations(&mut self, n: usize) {
        let nodes = self.cluster.nodes.len() as u32;
        let mut placed = 0;
        for _ in 0..n * 6 {
            if placed == n {
                break;
            }
            let node = self.rng.int(0, nodes - 1) as usize;
            let lo = EARLIEST_ONSET;
            let hi = self.duration();
            let Some((onset, end)) = self.window(&[Res::Node(node)], (20.0, 35.0), lo, hi) else {
                continue;
            };
            let mut busy = self.busy_gpus(node, None, onset, end);
            if busy.len() < 2 {
                continue;
            }
            let k = self.rng.int(2, 4.min(busy.len() as u32)) as usize;
            let mut gpus = Vec::new();
            for _ in 0..k {
                let i = self.rng.int(0, busy.len() as u32 - 1) as usize;
                gpus.push(busy.swap_remove(i));
            }
            gpus.sort_unstable();
            self.bus_saturation(node, gpus, onset, end);
            placed += 1;
        }
    }

    /// GPUs of `node` held by jobs other than `but` that run through
    /// [`from`, `to`] and straggle nowhere near it.
    fn busy_gpus(&self, node: usize, but: Option<usize>, from: f64, to: f64) -> Vec<u32> {
        let mut v = Vec::new();
        for (j, job) in self.cluster.jobs.iter().enumerate() {
            if Some(j) == but || job.first_step() > from - 5.0 || job.end_time() < to {
                continue;
            }
            for r in &job.ranks {
                if r.node == node && !self.straggles_near(node, r.gpu, from - 10.0, to + 10.0) {
                    v.push(r.gpu);
                }
            }
        }
        v
    }
}
