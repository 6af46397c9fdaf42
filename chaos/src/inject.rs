//! What the plan's faults and nuisances do at a given true time: the effects
//! that the collective loop and the telemetry generators consult.

use crate::cluster::{nic_of, NICS};
use crate::plan::{Event, Fault, Plan, Symptom};
use keel_model::Dir;

/// What a GPU is doing, as its exporters would see it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activity {
    Idle,
    /// Weights being loaded: memory taken, no kernels yet.
    Loading,
    Busy {
        job: usize,
        rank: u32,
    },
    /// An engine that stopped scheduling: memory held, no work.
    Stalled {
        job: usize,
        rank: u32,
    },
    /// A process that outlived its job.
    Squat {
        fb_frac: f64,
        power: f64,
    },
    /// A job stuck in RUNNING that does nothing.
    Hung {
        fb_frac: f64,
    },
}

pub fn dir_index(dir: Dir) -> usize {
    match dir {
        Dir::Rx => 0,
        Dir::Tx => 1,
    }
}

/// How much longer than usual a rank computes in the step starting at `t`
/// (spikes are handled by the step loop itself, since they hit one step).
pub fn rank_factor(plan: &Plan, job: usize, rank: u32, t: f64) -> f64 {
    let mut f = 1.0;
    for ep in plan.job_episodes(job) {
        if let Fault::Straggler {
            job: j,
            rank: r,
            slowdown,
            ..
        } = &ep.fault
        {
            if *j == job && *r == rank && ep.active(t) {
                f *= 1.0 + slowdown;
            }
        }
    }
    for ev in plan.job_events(job) {
        if let Event::JobSlowdown {
            job: j,
            from,
            to,
            factor,
        } = ev
        {
            if *j == job && *from <= t && t < *to {
                f *= 1.0 + factor;
            }
        }
    }
    f
}

/// A congested NIC also slows the transfer itself a little, for everybody.
pub fn transfer_factor(plan: &Plan, job: usize, t: f64) -> f64 {
    let congested = plan.job_episodes(job).any(|ep| {
        matches!(&ep.fault, Fault::Straggler { job: j, symptom: Symptom::Network { .. }, .. } if *j == job)
            && ep.active(t)
    });
    if congested {
        1.25
    } else {
        1.0
    }
}

/// When the job takes no steps at `t`: the time it resumes (infinite when it
/// never does).
pub fn pause_until(plan: &Plan, job: usize, t: f64) -> Option<f64> {
    for ep in plan.job_episodes(job) {
        match &ep.fault {
            Fault::Hung { job: j, .. } if *j == job && t >= ep.onset => return Some(f64::INFINITY),
            Fault::EngineStall { job: j, .. } | Fault::RankStop { job: j, .. }
                if *j == job && ep.active(t) =>
            {
                return Some(ep.end)
            }
            _ => {}
        }
    }
    None
}

pub fn gpu_activity(plan: &Plan, node: usize, gpu: u32, t: f64) -> Activity {
    for &(job, rank) in &plan.occupants[node][gpu as usize] {
        let j = &plan.cluster.jobs[job];
        if t < j.start {
            continue;
        }
        if t >= j.end_time() {
            let squat = plan.job_episodes(job).find_map(|ep| match &ep.fault {
                Fault::Squatter {
                    job: sj,
                    ranks,
                    fb_frac,
                    power,
                } if *sj == job && t < ep.end => {
                    ranks
                        .iter()
                        .position(|&r| r == rank)
                        .map(|i| Activity::Squat {
                            fb_frac: fb_frac[i],
                            power: power[i],
                        })
                }
                _ => None,
            });
            match squat {
                Some(a) => return a,
                None => continue,
            }
        }
        if t < j.first_step() {
            return Activity::Loading;
        }
        for ep in plan.job_episodes(job) {
            match &ep.fault {
                Fault::Hung { job: hj, fb_frac } if *hj == job && t >= ep.onset => {
                    return Activity::Hung { fb_frac: *fb_frac }
                }
                Fault::EngineStall { job: sj, .. } if *sj == job && ep.active(t) => {
                    return Activity::Stalled { job, rank }
                }
                // The frozen rank's GPU runs nothing; its peers' spin in
                // the collective they wait in (busy).
                Fault::RankStop { job: sj, rank: r }
                    if *sj == job && *r == rank && ep.active(t) =>
                {
                    return Activity::Hung {
                        fb_frac: j.fb_mib[rank as usize] / crate::cluster::FB_TOTAL_MIB,
                    }
                }
                _ => {}
            }
        }
        return Activity::Busy { job, rank };
    }
    Activity::Idle
}

/// The symptom of a straggler episode running on this GPU at `t`.
pub fn straggler_symptom(plan: &Plan, node: usize, gpu: u32, t: f64) -> Option<&Symptom> {
    plan.node_episodes(node).find_map(|ep| match &ep.fault {
        Fault::Straggler {
            job, rank, symptom, ..
        } if ep.active(t) => {
            let r = &plan.cluster.jobs[*job].ranks[*rank as usize];
            (r.node == node && r.gpu == gpu).then_some(symptom)
        }
        Fault::BusSaturation {
            node: n,
            gpus,
            symptom,
        } if ep.active(t) && *n == node && gpus.contains(&gpu) => Some(symptom),
        _ => None,
    })
}

pub fn pcie_burst(plan: &Plan, node: usize, gpu: u32, t: f64) -> Option<f64> {
    plan.node_events(node).find_map(|ev| match ev {
        Event::PcieBurst {
            node: n,
            gpu: g,
            from,
            to,
            rate,
        } if *n == node && *g == gpu && *from <= t && t < *to => Some(*rate),
        _ => None,
    })
}

pub fn in_gap(plan: &Plan, node: usize, t: f64) -> bool {
    plan.node_events(node).any(
        |ev| matches!(ev, Event::Gap { node: n, from, to } if *n == node && *from <= t && t < *to),
    )
}

/// Whether node-exporter on `node` restarted in (`prev`, `t`].
pub fn counter_reset(plan: &Plan, node: usize, prev: f64, t: f64) -> bool {
    plan.node_events(node).any(
        |ev| matches!(ev, Event::CounterReset { node: n, at } if *n == node && prev < *at && *at <= t),
    )
}

/// node-exporter restarts take a couple of seconds, during which it is not scraped.
pub fn exporter_down(plan: &Plan, node: usize, t: f64) -> bool {
    plan.node_events(node).any(|ev| {
        matches!(ev, Event::CounterReset { node: n, at } if *n == node && *at - 2.5 <= t && t < *at)
    })
}

#[derive(Clone, Debug, Default)]
pub struct NicFx {
    /// Override of link utilisation per direction (rx, tx).
    pub util: [Option<f64>; 2],
    pub util_add: f64,
    pub queue: [Option<f64>; 2],
    pub stall_rate: Option<f64>,
    pub rx_drop_rate: f64,
    /// Transmit drops a second (none unless a fault sets it).
    pub tx_drop_rate: f64,
}

#[derive(Clone, Debug, Default)]
pub struct NodeFx {
    pub cpu_rate: Option<f64>,
    pub retrans_frac: Option<f64>,
    pub nic: [NicFx; NICS as usize],
}

pub fn node_fx(plan: &Plan, node: usize, t: f64) -> NodeFx {
    let mut fx = NodeFx::default();
    let dpu = plan.cluster.dpu;
    for ep in plan.node_episodes(node).filter(|e| e.active(t)) {
        match &ep.fault {
            Fault::Straggler {
                job, rank, symptom, ..
            } => {
                let r = &plan.cluster.jobs[*job].ranks[*rank as usize];
                if r.node != node {
                    continue;
                }
                let dev = nic_of(r.gpu) as usize;
                match symptom {
                    Symptom::Host { cpu_rate, .. } => fx.cpu_rate = Some(*cpu_rate),
                    Symptom::Network {
                        queue,
                        stall_rate,
                        link_add,
                        retrans_frac,
                        drop_rate,
                    } => {
                        if dpu {
                            let nic = &mut fx.nic[dev];
                            nic.queue = [Some(queue * 0.35), Some(*queue)];
                            nic.stall_rate = Some(*stall_rate);
                            nic.util_add = *link_add;
                        } else {
                            fx.retrans_frac = Some(*retrans_frac);
                            fx.nic[dev].rx_drop_rate = *drop_rate;
                        }
                    }
                    _ => {}
                }
            }
            Fault::RetransStorm { node: n, frac } if *n == node => {
                fx.retrans_frac = Some(*frac);
            }
            Fault::NicSaturation {
                node: n,
                dev,
                dir,
                queue_peak,
            } if *n == node => {
                let nic = &mut fx.nic[*dev as usize];
                let d = dir_index(*dir);
                nic.util[d] = Some(0.98);
                // The backlog builds over the first seconds, then stays.
                let elapsed = t - ep.onset;
                nic.queue[d] = Some((40.0 + elapsed * queue_peak / 6.0).min(*queue_peak));
            }
            Fault::Fabric(f) => f.apply(node, t - ep.onset, dpu, &mut fx),
            _ => {}
        }
    }
    for ev in plan.node_events(node) {
        if let Event::CpuBurst { from, to, rate, .. } = ev {
            if *from <= t && t < *to {
                fx.cpu_rate = Some(fx.cpu_rate.unwrap_or(0.0).max(*rate));
            }
        }
    }
    fx
}

/// The state of a vLLM server's scheduler.
#[derive(Clone, Copy, Debug)]
pub enum ServerFx {
    Normal,
    /// `elapsed` is negative while the cache climbs before it pins.
    Saturated {
        elapsed: f64,
        len: f64,
        waiting_peak: f64,
        running: f64,
        usage: f64,
        lead_s: f64,
        waiting_base: f64,
    },
    Stalled {
        waiting_rate: f64,
    },
}

pub fn server_fx(plan: &Plan, job: usize, t: f64) -> ServerFx {
    for ep in plan.job_episodes(job) {
        let lead = match ep.fault {
            Fault::KvSaturation { lead_s, .. } => lead_s,
            _ => 0.0,
        };
        if !(ep.onset - lead <= t && t < ep.end) {
            continue;
        }
        match &ep.fault {
            Fault::KvSaturation {
                job: j,
                waiting_peak,
                running,
                usage,
                lead_s,
                waiting_base,
            } if *j == job => {
                return ServerFx::Saturated {
                    elapsed: t - ep.onset,
                    len: ep.end - ep.onset,
                    waiting_peak: *waiting_peak,
                    running: *running,
                    usage: *usage,
                    lead_s: *lead_s,
                    waiting_base: *waiting_base,
                }
            }
            Fault::EngineStall {
                job: j,
                waiting_rate,
            } if *j == job => {
                return ServerFx::Stalled {
                    waiting_rate: *waiting_rate,
                }
            }
            _ => {}
        }
    }
    ServerFx::Normal
}
