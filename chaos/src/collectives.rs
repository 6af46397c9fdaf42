//! The step loop of a tensor-parallel job: every rank computes, enters the
//! all-reduce, and all leave together once the last one has arrived.
//!
//! A slow rank therefore shows the *shortest* collective time (it never
//! waits) while its peers' times grow by its lateness, as on real hardware.

use crate::cluster::COLLECTIVE_BYTES;
use crate::inject::{pause_until, rank_factor, transfer_factor};
use crate::plan::{Event, Plan};
use crate::rng::{round_dec, stream, streams, Rng8, RngExt};
use crate::writer::Out;
use keel_model::{CollectiveRecord, Name, Record};

struct Step {
    seq: u64,
    arrive: Vec<f64>,
    leave: Vec<f64>,
    last_leave: f64,
}

pub struct JobSim {
    job: usize,
    rng: Rng8,
    next_start: f64,
    seq: u64,
    pending: Option<Step>,
    /// (time, rank, factor), by time.
    spikes: Vec<(f64, u32, f64)>,
    next_spike: usize,
    done: bool,
}

impl JobSim {
    pub fn new(plan: &Plan, job: usize, seed: u64) -> JobSim {
        let mut spikes: Vec<(f64, u32, f64)> = plan
            .events
            .iter()
            .filter_map(|ev| match ev {
                Event::Spike {
                    job: j,
                    rank,
                    at,
                    factor,
                } if *j == job => Some((*at, *rank, *factor)),
                _ => None,
            })
            .collect();
        spikes.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut rng = stream(seed, streams::JOB + job as u64);
        let first = plan.cluster.jobs[job].first_step() + rng.uni(0.005, 0.03);
        JobSim {
            job,
            rng,
            next_start: first,
            seq: if plan.cluster.jobs[job].load_s > 0.0 {
                0
            } else {
                seq_start(job)
            },
            pending: None,
            spikes,
            next_spike: 0,
            done: false,
        }
    }

    /// Emits every step that completes before `until`.
    pub fn advance(&mut self, plan: &Plan, until: f64, out: &mut Out) {
        loop {
            if self.pending.is_none() {
                self.pending = self.next_step(plan);
            }
            let Some(step) = self.pending.take() else {
                return;
            };
            if step.last_leave >= until {
                self.pending = Some(step);
                return;
            }
            self.emit(plan, &step, out);
        }
    }

    fn next_step(&mut self, plan: &Plan) -> Option<Step> {
        if self.done {
            return None;
        }
        let job = &plan.cluster.jobs[self.job];
        let mut t = self.next_start;
        while let Some(resume) = pause_until(plan, self.job, t) {
            if resume.is_infinite() {
                self.done = true;
                return None;
            }
            t = resume + self.rng.uni(0.02, 0.2);
        }
        if t >= job.end_time() || t >= plan.cluster.end() {
            self.done = true;
            return None;
        }
        let n = job.ranks.len();
        let mut spike = vec![1.0; n];
        while let Some(&(at, rank, factor)) = self.spikes.get(self.next_spike) {
            if at > t {
                break;
            }
            spike[rank as usize] *= factor;
            self.next_spike += 1;
        }
        let arrive: Vec<f64> = (0..n)
            .map(|r| {
                // Positive-skewed: kernels rarely finish early, sometimes late.
                let jitter = self.rng.exp(0.010) + self.rng.normal(0.0, 0.003);
                let compute = job.base_step
                    * (1.0 + job.bias[r] + jitter).max(0.5)
                    * rank_factor(plan, self.job, r as u32, t)
                    * spike[r];
                t + compute
            })
            .collect();
        let last = arrive.iter().copied().fold(f64::MIN, f64::max);
        let transfer = job.transfer
            * transfer_factor(plan, self.job, t)
            * (1.0 + self.rng.normal(0.0, 0.06)).max(0.6);
        let leave: Vec<f64> = (0..n)
            .map(|_| last + transfer + self.rng.uni(0.0, 20e-6))
            .collect();
        let last_leave = leave.iter().copied().fold(f64::MIN, f64::max);
        self.next_start = last_leave + self.rng.uni(40e-6, 300e-6);
        let seq = self.seq;
        self.seq += 1;
        Some(Step {
            seq,
            arrive,
            leave,
            last_leave,
        })
    }

    fn emit(&self, plan: &Plan, step: &Step, out: &mut Out) {
        let job = &plan.cluster.jobs[self.job];
        for (r, rank) in job.ranks.iter().enumerate() {
            let (a, l) = (step.arrive[r], step.leave[r]);
            let rec = Record::Collective(CollectiveRecord {
                ts: round_dec(plan.cluster.clock(rank.node, l), 6),
                node: plan.node_name(rank.node).clone(),
                job: job.id.clone(),
                rank: r as u32,
                op: Name::from("allreduce"),
                seq: step.seq,
                bytes: COLLECTIVE_BYTES,
                arrive: round_dec(plan.cluster.clock(rank.node, a), 6),
                // Measured on one clock, so exact whatever the node's offset.
                dur_us: round_dec((l - a) * 1e6, 1),
            });
            out.record(&rec);
        }
    }
}

/// Jobs that were running before the trace began are mid-way through their
/// sequence numbers.
fn seq_start(job: usize) -> u64 {
    10_000 * (job as u64 + 1) + 137 * job as u64
}
