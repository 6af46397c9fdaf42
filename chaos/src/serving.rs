//! Serving faults and their look-alikes: an engine thrashing (preempting
//! its running requests many times a second), OOM kills (the kernel's
//! counter, Slurm's `OUT_OF_MEMORY`), a latency tail on a job, an arrival
//! burst with its backlog. Request records (`t:"request"`: arrive, first
//! token, done) are written for every server of a serving scenario, and
//! `node_vmstat_oom_kill` for every node.

use crate::build::{Builder, Res, EARLIEST_ONSET};
use crate::cluster::Cluster;
use crate::plan::{Episode, Event, Fault, Plan};
use crate::rng::{round_dec, stream, streams, Rng8, RngExt};
use crate::writer::Out;
use keel_model::{
    Cause, FindingKind, JobState, Label, MetricLabels, MetricName as M, Name, Record, RequestPhase,
    RequestRecord,
};

/// The engine's capacity, as a multiple of its usual arrival rate: what it
/// admits a second once a burst has filled its batch.
const CAPACITY: f64 = 2.2;

#[derive(Clone, Debug)]
pub enum ServingFault {
    /// Preemptions at `rate` a second with `running` requests, the cache pinned.
    Thrashing { job: usize, rate: f64, running: f64 },
    /// The OOM killer fires on `node`: `kills` times on its counter (none
    /// when the node's counter is not scraped), and `job`, when given, ends
    /// `OUT_OF_MEMORY`.
    OomKill {
        node: usize,
        job: Option<usize>,
        kills: u32,
        counted: bool,
    },
    /// A `share` of `job`'s requests take `slow` (s) to their first token
    /// (`ttft`) or between tokens.
    Tail {
        job: usize,
        share: f64,
        ttft: bool,
        slow: (f64, f64),
    },
    /// Arrivals at `factor` times the usual for `burst_s`, the queue
    /// growing past the engine's capacity and draining after.
    Burst {
        job: usize,
        factor: f64,
        burst_s: f64,
    },
}

#[derive(Clone, Debug)]
pub enum ServingDecoy {
    /// `n` preemptions in one scrape interval.
    PreemptBurst { job: usize, at: f64, n: f64 },
    /// One second of arrivals at `factor` times the usual.
    Spike { job: usize, at: f64, factor: f64 },
    /// Every request of `job` 8-12x slower to its first token.
    Slowdown { job: usize, from: f64, to: f64 },
    /// Three requests far slower than the rest.
    FewSlow { job: usize, at: f64 },
}

impl ServingFault {
    pub fn kind(&self) -> FindingKind {
        match self {
            ServingFault::Thrashing { .. } => FindingKind::SwapThrashing,
            ServingFault::OomKill { .. } => FindingKind::OomKill,
            ServingFault::Tail { .. } => FindingKind::TailLatency,
            ServingFault::Burst { .. } => FindingKind::IngressBurstBacklog,
        }
    }

    pub fn cause(&self) -> Cause {
        match self {
            ServingFault::Thrashing { .. } => Cause::Engine,
            ServingFault::OomKill { .. } => Cause::Host,
            // The tail's cause is not in the signals keel reads.
            ServingFault::Tail { .. } => Cause::Unknown,
            ServingFault::Burst { .. } => Cause::Workload,
        }
    }

    pub fn label(&self, c: &Cluster, base: Label) -> Label {
        let node = |n: usize| Some(c.nodes[n].name.clone());
        match self {
            ServingFault::Thrashing { job, .. } | ServingFault::Burst { job, .. } => Label {
                node: node(c.server_node(*job)),
                ..base
            },
            ServingFault::OomKill { node: n, .. } => Label {
                node: node(*n),
                ..base
            },
            ServingFault::Tail { job, .. } => Label {
                job: Some(c.jobs[*job].id.clone()),
                ..base
            },
        }
    }

    /// The job and nodes the fault touches (the plan's indexes).
    pub fn place(&self, c: &Cluster) -> (Option<usize>, Vec<usize>) {
        match self {
            ServingFault::Thrashing { job, .. }
            | ServingFault::Tail { job, .. }
            | ServingFault::Burst { job, .. } => (Some(*job), vec![c.server_node(*job)]),
            ServingFault::OomKill { node, job, .. } => (*job, vec![*node]),
        }
    }
}

/// A server's usual arrivals a second.
pub fn base_rate(job: usize) -> f64 {
    20.0 + 6.0 * (job % 4) as f64
}

/// Requests waiting in `job`'s engine at `t` because of a burst.
pub fn backlog(plan: &Plan, job: usize, t: f64) -> f64 {
    let lambda = base_rate(job);
    plan.job_episodes(job)
        .filter_map(|ep| match &ep.fault {
            Fault::Serving(ServingFault::Burst {
                job: j,
                factor,
                burst_s,
            }) if *j == job && ep.active(t) => {
                let e = t - ep.onset;
                let grow = (factor - CAPACITY) * lambda;
                let q = if e < *burst_s {
                    grow * e
                } else {
                    grow * burst_s - (CAPACITY - 1.0) * lambda * (e - burst_s)
                };
                Some(q.max(0.0))
            }
            _ => None,
        })
        .fold(0.0, f64::max)
}

/// Extra preemptions a look-alike adds to `job`'s counter in [`a`, `b`).
pub fn preempt_burst(plan: &Plan, job: usize, a: f64, b: f64) -> f64 {
    decoys(plan)
        .filter_map(|d| match d {
            ServingDecoy::PreemptBurst { job: j, at, n } if *j == job && a <= *at && *at < b => {
                Some(*n)
            }
            _ => None,
        })
        .sum()
}

fn decoys(plan: &Plan) -> impl Iterator<Item = &ServingDecoy> {
    plan.events.iter().filter_map(|e| match e {
        Event::Serving(d) => Some(d),
        _ => None,
    })
}

/// The engine state a serving fault puts `job`'s server in at `t`.
pub fn thrashing(plan: &Plan, job: usize, t: f64) -> Option<(f64, f64)> {
    plan.job_episodes(job).find_map(|ep| match &ep.fault {
        Fault::Serving(ServingFault::Thrashing {
            job: j,
            rate,
            running,
        }) if *j == job && ep.active(t) => Some((*rate, *running)),
        _ => None,
    })
}

/// Writes `node_vmstat_oom_kill` of `node` at its clock's `ts`, unless
/// the node's counter is not scraped.
pub fn node_scrape(plan: &Plan, node: usize, ts: f64, name: &Name, out: &mut Out) {
    let mut count = (node % 3) as f64;
    for ep in plan.node_episodes(node) {
        if let Fault::Serving(ServingFault::OomKill {
            node: n,
            kills,
            counted,
            ..
        }) = &ep.fault
        {
            if *n != node {
                continue;
            }
            if !counted {
                return;
            }
            // The kills come 2 s apart from the onset, on the node's clock.
            for k in 0..*kills {
                if ts >= ep.onset + 2.0 * k as f64 {
                    count += 1.0;
                }
            }
        }
    }
    out.metric(ts, name, M::VmstatOomKill, MetricLabels::default(), count);
}

impl Builder {
    fn serving_window(
        &mut self,
        job: usize,
        len: (f64, f64),
        lo: f64,
        hi: f64,
    ) -> Option<(f64, f64)> {
        let res = self.server_res(job);
        let lo = lo
            .max(EARLIEST_ONSET + 15.0)
            .max(self.cluster.jobs[job].first_step() - self.cluster.ts0 + 40.0);
        self.window(&res, len, lo, hi)
    }

    pub fn thrashing(&mut self, job: usize, lo: f64, hi: f64) -> bool {
        let Some((onset, end)) = self.serving_window(job, (20.0, 50.0), lo, hi) else {
            return false;
        };
        let fault = ServingFault::Thrashing {
            job,
            rate: self.rng.uni(15.0, 40.0),
            running: self.rng.uni(20.0, 32.0),
        };
        self.episodes.push(Episode {
            fault: Fault::Serving(fault),
            onset,
            end,
        });
        true
    }

    /// An OOM kill on `node`; `job` (on that node alone) ends
    /// `OUT_OF_MEMORY` with it.
    pub fn oom_kill(
        &mut self,
        node: usize,
        job: Option<usize>,
        counted: bool,
        lo: f64,
        hi: f64,
    ) -> bool {
        let mut res = vec![Res::Node(node)];
        res.extend(job.map(Res::Job));
        let lo = lo.max(EARLIEST_ONSET + 15.0);
        let Some((onset, end)) = self.window(&res, (30.0, 30.0), lo, hi) else {
            return false;
        };
        if let Some(j) = job {
            // Slurm records the end a moment after the kill (its clock may
            // be tens of ms behind the kill's).
            self.cluster.jobs[j].end = Some((onset + 0.1, JobState::OutOfMemory));
            self.reserve(&[Res::Job(j)], onset, f64::INFINITY);
        }
        let kills = self.rng.int(1, 3);
        let fault = ServingFault::OomKill {
            node,
            job,
            kills,
            counted,
        };
        self.episodes.push(Episode {
            fault: Fault::Serving(fault),
            onset,
            end,
        });
        true
    }

    pub fn tail(&mut self, job: usize, ttft: bool, lo: f64, hi: f64) -> bool {
        let Some((onset, end)) = self.serving_window(job, (30.0, 50.0), lo, hi) else {
            return false;
        };
        let slow = if ttft {
            (self.rng.uni(3.0, 4.0), self.rng.uni(5.0, 8.0))
        } else {
            (self.rng.uni(0.3, 0.35), self.rng.uni(0.4, 0.6))
        };
        let fault = ServingFault::Tail {
            job,
            share: self.rng.uni(0.03, 0.08),
            ttft,
            slow,
        };
        self.episodes.push(Episode {
            fault: Fault::Serving(fault),
            onset,
            end,
        });
        true
    }

    /// A burst of 5-8x the usual arrivals for 6-12 s; the episode lasts
    /// until the backlog has drained.
    pub fn burst(&mut self, job: usize, lo: f64, hi: f64) -> bool {
        let factor = self.rng.uni(5.0, 8.0);
        let burst_s = self.rng.uni(6.0, 12.0);
        let drain = burst_s * (factor - CAPACITY) / (CAPACITY - 1.0);
        let len = burst_s + drain;
        let Some((onset, end)) = self.serving_window(job, (len, len), lo, hi) else {
            return false;
        };
        let fault = ServingFault::Burst {
            job,
            factor,
            burst_s,
        };
        self.episodes.push(Episode {
            fault: Fault::Serving(fault),
            onset,
            end,
        });
        true
    }

    /// Look-alikes on `job` where no fault of it is: each kind once.
    pub fn serving_decoys(&mut self, job: usize) {
        let res = self.server_res(job);
        let d = self.duration();
        let first = self.cluster.jobs[job].first_step() - self.cluster.ts0 + 30.0;
        for k in 0..4 {
            let len = if k == 2 { 15.0 } else { 1.0 };
            let Some((from, to)) = self.window(&res, (len, len), first.max(30.0), d - 15.0) else {
                continue;
            };
            let decoy = match k {
                0 => ServingDecoy::PreemptBurst {
                    job,
                    at: from,
                    n: self.rng.uni(30.0, 50.0).round(),
                },
                1 => ServingDecoy::Spike {
                    job,
                    at: from,
                    factor: self.rng.uni(3.0, 4.0),
                },
                2 => ServingDecoy::Slowdown { job, from, to },
                _ => ServingDecoy::FewSlow { job, at: from },
            };
            self.events.push(Event::Serving(decoy));
        }
    }
}

/// One server's requests: Poisson arrivals, each with its first token and
/// its end, as the engine's request log has them.
pub struct RequestSim {
    job: usize,
    node: usize,
    rng: Rng8,
    next: f64,
    id: u64,
    ttft: f64,
    itl: f64,
}

impl RequestSim {
    pub fn new(plan: &Plan, job: usize, seed: u64) -> Option<RequestSim> {
        let j = &plan.cluster.jobs[job];
        j.model.as_ref()?;
        let mut rng = stream(seed, streams::SERVER + 50_000 + job as u64);
        Some(RequestSim {
            job,
            node: plan.cluster.server_node(job),
            ttft: rng.uni(0.08, 0.25),
            itl: rng.uni(0.015, 0.04),
            next: j.first_step() + rng.exp(1.0 / base_rate(job)),
            id: 0,
            rng,
        })
    }

    /// Arrivals in [`a`, `b`), true time; their later phases are written
    /// ahead (the writer orders lines).
    pub fn advance(&mut self, plan: &Plan, a: f64, b: f64, out: &mut Out) {
        let j = &plan.cluster.jobs[self.job];
        while self.next < b {
            let t = self.next;
            let factor = self.arrival_factor(plan, t);
            self.next += self.rng.exp(1.0 / (base_rate(self.job) * factor));
            if t < a || t >= j.end_time() {
                continue;
            }
            self.request(plan, t, out);
        }
    }

    fn arrival_factor(&self, plan: &Plan, t: f64) -> f64 {
        let mut f = 1.0;
        for ep in plan.job_episodes(self.job) {
            if let Fault::Serving(ServingFault::Burst {
                job,
                factor,
                burst_s,
                ..
            }) = &ep.fault
            {
                if *job == self.job && ep.onset <= t && t < ep.onset + burst_s {
                    f = f64::max(f, *factor);
                }
            }
        }
        for d in decoys(plan) {
            if let ServingDecoy::Spike { job, at, factor } = d {
                if *job == self.job && *at <= t && t < at + 1.0 {
                    f = f64::max(f, *factor);
                }
            }
        }
        f
    }

    fn request(&mut self, plan: &Plan, t: f64, out: &mut Out) {
        let rng = &mut self.rng;
        let mut ttft = self.ttft * rng.normal(0.0, 0.25).exp();
        let mut itl = self.itl * rng.normal(0.0, 0.1).exp();
        let mut tokens = rng.int(20, 200);
        ttft += backlog(plan, self.job, t) / (CAPACITY * base_rate(self.job));
        for ep in plan.job_episodes(self.job) {
            if let Fault::Serving(ServingFault::Tail {
                job,
                share,
                ttft: first,
                slow,
            }) = &ep.fault
            {
                if *job == self.job && ep.active(t) && rng.chance(*share) {
                    if *first {
                        ttft = rng.uni(slow.0, slow.1);
                    } else {
                        itl = rng.uni(slow.0, slow.1);
                        tokens = rng.int(10, 30);
                    }
                }
            }
        }
        for d in decoys(plan) {
            match d {
                ServingDecoy::Slowdown { job, from, to }
                    if *job == self.job && *from <= t && t < *to =>
                {
                    ttft *= rng.uni(8.0, 12.0);
                }
                ServingDecoy::FewSlow { job, at }
                    if *job == self.job && *at <= t && t < at + 0.1 =>
                {
                    ttft = rng.uni(4.0, 8.0);
                }
                _ => {}
            }
        }
        let first = t + ttft;
        let done = first + itl * f64::from(tokens - 1);
        let c = &plan.cluster;
        let node = c.nodes[self.node].name.clone();
        let job = c.jobs[self.job].id.clone();
        let id: Name = format!("req-{}-{}", self.job, self.id).as_str().into();
        self.id += 1;
        let prompt = rng.int(50, 2000);
        for (at, phase) in [
            (t, RequestPhase::Arrive),
            (first, RequestPhase::FirstToken),
            (done, RequestPhase::Done),
        ] {
            if at >= c.end() {
                break;
            }
            out.record(&Record::Request(RequestRecord {
                ts: round_dec(c.clock(self.node, at), 4),
                node: Some(node.clone()),
                job: Some(job.clone()),
                id: id.clone(),
                phase,
                prompt_tokens: (phase == RequestPhase::Arrive).then_some(prompt),
                output_tokens: (phase == RequestPhase::Done).then_some(tokens),
            }));
        }
    }
}
