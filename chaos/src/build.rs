//! Assembling a plan: placing jobs, drawing faults with their magnitudes, and
//! keeping faults apart so that each label describes one thing.

use crate::cluster::{Cluster, JobOpts};
use crate::plan::{Episode, Event, Fault, Noise, Plan, Symptom, Tenant};
use crate::rng::{round_dec, stream, streams, Rng8, RngExt};
use keel_model::{Dir, JobState};

/// Start of every trace, before the seed's offset.
pub const TS_BASE: f64 = 1_795_000_000.0;
/// Faults start no earlier than this into the trace: detectors need a baseline.
pub const EARLIEST_ONSET: f64 = 20.0;
/// Healthy time between two faults of one job.
const JOB_GAP: f64 = 20.0;
/// Time between faults that touch the same node.
const NODE_GAP: f64 = 10.0;

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Res {
    Node(usize),
    Job(usize),
}

/// The cause a straggler is given; `Gpu` becomes thermal or silent.
/// `PcieSaturated` and `Launch` are the bus at capacity and the launch path
/// slow, both with late doorbells (pcie and host).
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Kind {
    Pcie,
    Host,
    Network,
    Gpu,
    PcieSaturated,
    Launch,
    /// One GPU fed thin by a late launch path (host).
    Thin,
    /// A host straggler whose CPUs a co-located tenant's cgroup takes.
    Neighbor,
}

#[path = "build_bus.rs"]
mod bus;

/// How many nuisances a scenario carries (none of them labelled).
#[derive(Clone, Debug)]
pub struct Mix {
    pub gaps: usize,
    pub resets: usize,
    pub job_slowdowns: usize,
    /// Mean seconds between one-step spikes, per job.
    pub spike_every: f64,
    /// Mean seconds between healthy PCIe bursts, cluster-wide.
    pub burst_every: f64,
    pub noise: Noise,
}

impl Mix {
    pub fn low() -> Mix {
        Mix {
            gaps: 1,
            resets: 1,
            job_slowdowns: 1,
            spike_every: 40.0,
            burst_every: 15.0,
            noise: Noise::low(),
        }
    }

    pub fn heavy() -> Mix {
        Mix {
            gaps: 3,
            resets: 2,
            job_slowdowns: 2,
            spike_every: 10.0,
            burst_every: 5.0,
            noise: Noise::heavy(),
        }
    }
}

pub struct Builder {
    pub rng: Rng8,
    pub cluster: Cluster,
    pub(crate) episodes: Vec<Episode>,
    pub(crate) events: Vec<Event>,
    noise: Noise,
    pub old_kv_name: bool,
    /// Request records and the OOM counter are written.
    pub serving: bool,
    /// Range of straggler episode lengths, seconds.
    pub straggler_len: (f64, f64),
    busy: Vec<(Res, f64, f64)>,
}

impl Builder {
    /// `salt` tells scenarios apart, so that one seed gives each its own timing.
    pub fn new(seed: u64, salt: u64, duration: f64, n_nodes: usize, dpu: bool) -> Builder {
        let mut rng = stream(seed ^ salt, streams::PLAN);
        let ts0 = TS_BASE + rng.int(0, 2_000_000) as f64 + round_dec(rng.uni(0.0, 1.0), 3);
        let cluster = Cluster::new(&mut rng, ts0, duration, n_nodes, dpu);
        Builder {
            rng,
            cluster,
            episodes: Vec::new(),
            events: Vec::new(),
            noise: Noise::default(),
            old_kv_name: false,
            serving: false,
            straggler_len: (20.0, 60.0),
            busy: Vec::new(),
        }
    }

    /// A fault episode placed by the caller (its window already reserved).
    pub(crate) fn push_episode(&mut self, ep: Episode) {
        self.episodes.push(ep);
    }

    pub fn duration(&self) -> f64 {
        self.cluster.duration
    }

    fn abs(&self, rel: f64) -> f64 {
        self.cluster.ts0 + rel
    }

    pub fn job(&mut self, place: &[(usize, &[u32])], opts: JobOpts) -> usize {
        self.cluster.add_job(&mut self.rng, place, opts)
    }

    fn free(&self, res: &[Res], from: f64, to: f64) -> bool {
        res.iter().all(|r| {
            let margin = match r {
                Res::Job(_) => JOB_GAP,
                Res::Node(_) => NODE_GAP,
            };
            self.busy
                .iter()
                .filter(|(b, _, _)| b == r)
                .all(|&(_, a, b)| to + margin <= a || b + margin <= from)
        })
    }

    pub(crate) fn reserve(&mut self, res: &[Res], from: f64, to: f64) {
        for r in res {
            self.busy.push((*r, from, to));
        }
    }

    /// A window of a length drawn from `len`, inside [`lo`, `hi`] seconds of
    /// the trace and free on every resource; absolute times.
    pub fn window(&mut self, res: &[Res], len: (f64, f64), lo: f64, hi: f64) -> Option<(f64, f64)> {
        let hi = hi.min(self.duration() - 5.0);
        for _ in 0..200 {
            let l = self.rng.uni(len.0, len.1);
            if lo + l > hi {
                continue;
            }
            let s = self.cluster.ts0 + self.rng.uni(lo, hi - l);
            if self.free(res, s, s + l) {
                self.reserve(res, s, s + l);
                return Some((s, s + l));
            }
        }
        None
    }

    fn symptom(&mut self, kind: Kind) -> Symptom {
        let r = &mut self.rng;
        match kind {
            Kind::Pcie => Symptom::Pcie {
                rx_peak: r.uni(3e9, 12e9),
                tx: r.chance(0.5).then(|| r.uni(0.55e9, 0.65e9)),
            },
            Kind::Host => Symptom::Host {
                cpu_rate: r.uni(0.2, 1.5),
                doorbell_mult: r.uni(5.0, 10.0),
                tenant: None,
            },
            // A tenant taking 3-12 CPUs of a node whose ranks need one each.
            Kind::Neighbor => Symptom::Host {
                cpu_rate: r.uni(0.2, 1.5),
                doorbell_mult: r.uni(5.0, 10.0),
                tenant: Some(Tenant {
                    cpus: r.uni(3.0, 12.0),
                    arrives: r.chance(0.5),
                }),
            },
            Kind::Network => Symptom::Network {
                queue: r.uni(500.0, 5000.0),
                stall_rate: r.uni(50e3, 500e3),
                link_add: r.uni(0.0, 0.1),
                retrans_frac: r.uni(0.01, 0.05),
                drop_rate: r.uni(20.0, 300.0),
            },
            Kind::Gpu if r.chance(0.5) => Symptom::Thermal {
                clock: r.uni(1000.0, 1250.0),
                temp: r.uni(85.0, 92.0),
            },
            Kind::Gpu => Symptom::Silent,
            // As measured on real links: 0.93-0.99 of capacity, doorbell
            // gaps 4-5x their usual.
            Kind::PcieSaturated => Symptom::PcieSaturated {
                share: r.uni(0.93, 0.99),
                doorbell_mult: r.uni(4.0, 5.5),
            },
            Kind::Launch => Symptom::Launch {
                doorbell_mult: r.uni(5.0, 8.0),
            },
            // Launches late enough to thin the GPU's feed to a tenth to a
            // third: as late as a starved host's (`Host`).
            Kind::Thin => Symptom::Thin {
                h2d_share: r.uni(0.1, 0.3),
                doorbell_mult: r.uni(5.0, 10.0),
            },
        }
    }

    /// Whether a straggler of this kind can happen on this job.
    fn fits(&self, job: usize, kind: Kind) -> bool {
        kind != Kind::Network || self.cluster.jobs[job].cross_node()
    }

    /// A straggler on `job` (a random rank unless given) inside [`lo`, `hi`];
    /// its window in absolute time.
    pub fn straggler(
        &mut self,
        job: usize,
        rank: Option<u32>,
        kind: Kind,
        lo: f64,
        hi: f64,
    ) -> Option<(f64, f64)> {
        if !self.fits(job, kind) {
            return None;
        }
        let tp = self.cluster.jobs[job].tp();
        let rank = rank.unwrap_or_else(|| self.rng.int(0, tp - 1));
        let node = self.cluster.jobs[job].ranks[rank as usize].node;
        let lo = lo
            .max(EARLIEST_ONSET)
            .max(self.cluster.jobs[job].first_step() - self.cluster.ts0 + 5.0);
        let hi = hi.min(self.cluster.jobs[job].end_time() - self.cluster.ts0);
        let (onset, end) = self.window(
            &[Res::Job(job), Res::Node(node)],
            self.straggler_len,
            lo,
            hi,
        )?;
        self.push_straggler(job, rank, kind, onset, end);
        Some((onset, end))
    }

    /// One straggler episode of `kind` on `rank` of `job`, a slowdown of
    /// 5-50% of its step, from `onset` to `end` (absolute times).
    fn push_straggler(&mut self, job: usize, rank: u32, kind: Kind, onset: f64, end: f64) {
        let symptom = self.symptom(kind);
        let slowdown = self.rng.uni(0.05, 0.5);
        self.episodes.push(Episode {
            fault: Fault::Straggler {
                job,
                rank,
                slowdown,
                symptom,
            },
            onset,
            end,
        });
    }

    /// Two straggler episodes on one rank, the second of another cause and
    /// beginning `gap_s` after the first ends: sooner than a finding takes
    /// to clear, so the second starts under the first one's open finding
    /// and must get a finding of its own. Times in seconds of the trace;
    /// `None` when the job has no room for both.
    pub fn back_to_back(
        &mut self,
        job: usize,
        rank: u32,
        kinds: [Kind; 2],
        lo: f64,
        gap_s: f64,
    ) -> Option<(f64, f64)> {
        if !kinds.iter().all(|k| self.fits(job, *k)) {
            return None;
        }
        let node = self.cluster.jobs[job].ranks[rank as usize].node;
        let lo = lo
            .max(EARLIEST_ONSET)
            .max(self.cluster.jobs[job].first_step() - self.cluster.ts0 + 5.0);
        let hi = self.cluster.jobs[job].end_time() - self.cluster.ts0;
        let len = (
            self.straggler_len.0 * 2.0 + gap_s,
            self.straggler_len.1 * 2.0 + gap_s,
        );
        let (start, end) = self.window(&[Res::Job(job), Res::Node(node)], len, lo, hi)?;
        let split = start + (end - start - gap_s) / 2.0;
        for (kind, onset, end) in [(kinds[0], start, split), (kinds[1], split + gap_s, end)] {
            self.push_straggler(job, rank, kind, onset, end);
        }
        Some((start, end))
    }

    /// A rank of `job` frozen for 10-25 s before a collective (its peers
    /// wait inside it), inside [`lo`, `hi`] seconds of the trace.
    pub fn rank_stop(&mut self, job: usize, lo: f64, hi: f64) -> bool {
        let tp = self.cluster.jobs[job].tp();
        let rank = self.rng.int(0, tp - 1);
        let node = self.cluster.jobs[job].ranks[rank as usize].node;
        let lo = lo
            .max(EARLIEST_ONSET)
            .max(self.cluster.jobs[job].first_step() - self.cluster.ts0 + 5.0);
        let hi = hi.min(self.cluster.jobs[job].end_time() - self.cluster.ts0);
        let res = [Res::Job(job), Res::Node(node)];
        let Some((onset, end)) = self.window(&res, (10.0, 25.0), lo, hi) else {
            return false;
        };
        self.episodes.push(Episode {
            fault: Fault::RankStop { job, rank },
            onset,
            end,
        });
        true
    }

    /// `n` stragglers over `jobs`, each of a kind drawn from `kinds`, one
    /// after another (episodes of different jobs may overlap).
    pub fn stragglers(&mut self, jobs: &[usize], n: usize, kinds: &[Kind]) -> usize {
        let mut placed = 0;
        let mut lo = EARLIEST_ONSET;
        let len = self.straggler_len;
        for attempt in 0..n * 12 {
            if placed == n {
                break;
            }
            if lo > self.duration() - 25.0 {
                // Out of room: go round again, overlapping other jobs' episodes.
                lo = EARLIEST_ONSET + self.rng.uni(0.0, 20.0);
            }
            if attempt == n * 8 {
                // Crowded (one job, short trace): settle for short episodes.
                self.straggler_len = (20.0, 30.0);
            }
            let kind = *self.rng.pick(kinds);
            let eligible: Vec<usize> = jobs
                .iter()
                .copied()
                .filter(|&j| self.fits(j, kind))
                .collect();
            if eligible.is_empty() {
                continue;
            }
            let job = *self.rng.pick(&eligible);
            // Place each soon after the previous one so that `n` fit the trace.
            let hi = lo + self.straggler_len.1 + 30.0;
            if let Some((onset, _)) = self.straggler(job, None, kind, lo, hi) {
                placed += 1;
                lo = onset - self.cluster.ts0 + self.rng.uni(10.0, 25.0);
            } else {
                lo += 10.0;
            }
        }
        self.straggler_len = len;
        placed
    }

    /// `job` fails `at` seconds in; `n` of its GPUs stay held for 60-180 s.
    pub fn squatter(&mut self, job: usize, at: f64, n: usize) {
        let t = self.abs(at);
        let len = self.rng.uni(60.0, 180.0).min(self.duration() - 3.0 - at);
        let tp = self.cluster.jobs[job].tp() as usize;
        let mut ranks: Vec<u32> = Vec::new();
        while ranks.len() < n.min(tp) {
            let r = self.rng.int(0, tp as u32 - 1);
            if !ranks.contains(&r) {
                ranks.push(r);
            }
        }
        ranks.sort_unstable();
        let fb_frac = ranks.iter().map(|_| self.rng.uni(0.96, 0.99)).collect();
        let power = ranks.iter().map(|_| self.rng.uni(100.0, 250.0)).collect();
        self.cluster.jobs[job].end = Some((t, JobState::Failed));
        let nodes: Vec<Res> = self.cluster.jobs[job]
            .nodes()
            .into_iter()
            .map(Res::Node)
            .collect();
        self.reserve(&nodes, t, t + len);
        self.reserve(&[Res::Job(job)], t, f64::INFINITY);
        self.episodes.push(Episode {
            fault: Fault::Squatter {
                job,
                ranks,
                fb_frac,
                power,
            },
            onset: t,
            end: t + len,
        });
    }

    /// `job` hangs `at` seconds in, stays RUNNING and idle, and is cancelled after 90+ s.
    pub fn hung(&mut self, job: usize, at: f64) {
        let t = self.abs(at);
        let len = self.rng.uni(90.0, 130.0).min(self.duration() - 3.0 - at);
        self.cluster.jobs[job].end = Some((t + len, JobState::Cancelled));
        let nodes: Vec<Res> = self.cluster.jobs[job]
            .nodes()
            .into_iter()
            .map(Res::Node)
            .collect();
        self.reserve(&nodes, t, t + len);
        self.reserve(&[Res::Job(job)], t, f64::INFINITY);
        let fb_frac = self.rng.uni(0.968, 0.972);
        self.episodes.push(Episode {
            fault: Fault::Hung { job, fb_frac },
            onset: t,
            end: t + len,
        });
    }

    pub(crate) fn server_res(&self, job: usize) -> [Res; 2] {
        [Res::Job(job), Res::Node(self.cluster.server_node(job))]
    }

    pub fn kv_saturation(&mut self, job: usize, lo: f64, hi: f64) -> bool {
        let res = self.server_res(job);
        let Some((onset, end)) = self.window(&res, (30.0, 60.0), lo.max(EARLIEST_ONSET), hi) else {
            return false;
        };
        // The cache climbs before it pins (the labelled onset): in half the
        // episodes briefly, from a short queue; in half for up to 8 s, the
        // queue already tens long when the cache pins.
        let (lead_s, waiting_base) = if self.rng.chance(0.5) {
            (self.rng.uni(1.0, 3.0), self.rng.uni(0.0, 3.0))
        } else {
            (self.rng.uni(4.0, 8.0), self.rng.uni(15.0, 35.0))
        };
        let fault = Fault::KvSaturation {
            job,
            waiting_peak: waiting_base + self.rng.uni(50.0, 300.0),
            running: self.rng.uni(30.0, 60.0),
            usage: self.rng.uni(0.975, 1.0),
            lead_s,
            waiting_base,
        };
        self.episodes.push(Episode { fault, onset, end });
        true
    }

    pub fn engine_stall(&mut self, job: usize, lo: f64, hi: f64) -> bool {
        let res = self.server_res(job);
        let Some((onset, end)) = self.window(&res, (20.0, 60.0), lo.max(EARLIEST_ONSET), hi) else {
            return false;
        };
        let fault = Fault::EngineStall {
            job,
            waiting_rate: self.rng.uni(1.0, 5.0),
        };
        self.episodes.push(Episode { fault, onset, end });
        true
    }

    pub fn retrans_storm(&mut self, node: usize, lo: f64, hi: f64) -> bool {
        debug_assert!(!self.cluster.has_cross_node_job(node));
        let Some((onset, end)) =
            self.window(&[Res::Node(node)], (20.0, 60.0), lo.max(EARLIEST_ONSET), hi)
        else {
            return false;
        };
        let fault = Fault::RetransStorm {
            node,
            frac: self.rng.uni(0.01, 0.10),
        };
        self.episodes.push(Episode { fault, onset, end });
        true
    }

    pub fn nic_saturation(&mut self, node: usize, lo: f64, hi: f64) -> bool {
        debug_assert!(!self.cluster.has_cross_node_job(node));
        let Some((onset, end)) =
            self.window(&[Res::Node(node)], (20.0, 60.0), lo.max(EARLIEST_ONSET), hi)
        else {
            return false;
        };
        let fault = Fault::NicSaturation {
            node,
            dev: self.rng.int(0, 3),
            dir: if self.rng.chance(0.5) {
                Dir::Rx
            } else {
                Dir::Tx
            },
            queue_peak: self.rng.uni(1000.0, 4000.0),
        };
        self.episodes.push(Episode { fault, onset, end });
        true
    }

    /// Scatters the nuisances of `mix` where they do not touch a fault.
    pub fn nuisances(&mut self, mix: &Mix) {
        self.noise = mix.noise.clone();
        let d = self.duration();
        let n_nodes = self.cluster.nodes.len();
        let n_jobs = self.cluster.jobs.len();
        for _ in 0..mix.gaps {
            let node = self.rng.int(0, n_nodes as u32 - 1) as usize;
            for _ in 0..50 {
                let len = self.rng.uni(10.0, 40.0);
                let from = self.cluster.ts0 + self.rng.uni(5.0, (d - len - 5.0).max(5.0));
                if from + len < self.cluster.end()
                    && self.free(&[Res::Node(node)], from, from + len)
                {
                    self.events.push(Event::Gap {
                        node,
                        from,
                        to: from + len,
                    });
                    break;
                }
            }
        }
        for _ in 0..mix.resets {
            let node = self.rng.int(0, n_nodes as u32 - 1) as usize;
            for _ in 0..50 {
                let at = self.cluster.ts0 + self.rng.uni(10.0, (d - 5.0).max(10.0));
                if self.free(&[Res::Node(node)], at - 5.0, at + 5.0) {
                    self.events.push(Event::CounterReset { node, at });
                    break;
                }
            }
        }
        for _ in 0..mix.job_slowdowns.min(n_jobs * 3) {
            let job = self.rng.int(0, n_jobs as u32 - 1) as usize;
            let j = &self.cluster.jobs[job];
            let lo = (j.first_step() - self.cluster.ts0 + 5.0).max(5.0);
            let hi = (j.end_time() - self.cluster.ts0).min(d) - 25.0;
            for _ in 0..50 {
                if hi <= lo {
                    break;
                }
                let from = self.cluster.ts0 + self.rng.uni(lo, hi);
                if self.free(&[Res::Job(job)], from, from + 20.0) {
                    let factor = self.rng.uni(0.2, 0.4);
                    self.reserve(&[Res::Job(job)], from, from + 20.0);
                    self.events.push(Event::JobSlowdown {
                        job,
                        from,
                        to: from + 20.0,
                        factor,
                    });
                    break;
                }
            }
        }
        if mix.spike_every.is_finite() {
            for job in 0..n_jobs {
                let tp = self.cluster.jobs[job].tp();
                let mut t = self.cluster.ts0;
                loop {
                    // At least 3 s apart, so that each spike stays isolated.
                    t += 3.0 + self.rng.exp(mix.spike_every);
                    if t >= self.cluster.end() {
                        break;
                    }
                    let rank = self.rng.int(0, tp - 1);
                    let factor = self.rng.uni(1.5, 4.0);
                    self.events.push(Event::Spike {
                        job,
                        rank,
                        at: t,
                        factor,
                    });
                }
            }
        }
        if mix.burst_every.is_finite() {
            let mut t = self.cluster.ts0;
            loop {
                t += self.rng.exp(mix.burst_every);
                if t >= self.cluster.end() {
                    break;
                }
                let node = self.rng.int(0, n_nodes as u32 - 1) as usize;
                let gpu = self.rng.int(0, 7);
                let len = self.rng.uni(1.0, 3.0).round();
                let rate = self.rng.uni(0.3e9, 1.0e9);
                if !self.straggles_near(node, gpu, t - 5.0, t + len + 5.0) {
                    self.events.push(Event::PcieBurst {
                        node,
                        gpu,
                        from: t,
                        to: t + len,
                        rate,
                    });
                }
            }
        }
    }

    /// Whether a straggler episode on this GPU overlaps [`from`, `to`).
    fn straggles_near(&self, node: usize, gpu: u32, from: f64, to: f64) -> bool {
        self.episodes.iter().any(|ep| match &ep.fault {
            Fault::Straggler { job, rank, .. } => {
                let r = &self.cluster.jobs[*job].ranks[*rank as usize];
                r.node == node && r.gpu == gpu && ep.onset < to && from < ep.end
            }
            _ => false,
        })
    }

    pub fn finish(self) -> Plan {
        let mut plan = Plan::new(
            self.cluster,
            self.episodes,
            self.events,
            self.noise,
            self.old_kv_name,
        );
        plan.serving = self.serving;
        plan
    }
}
