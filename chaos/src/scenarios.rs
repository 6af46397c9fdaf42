//! The scenario catalogue: each name builds a plan from a seed.

use crate::build::{Builder, Kind, Mix};
use crate::cluster::JobOpts;
use crate::plan::{Noise, Plan};
use crate::rng::{stream, streams, RngExt};
use crate::{ChaosError, GenOptions, ScenarioInfo};
use keel_model::JobState;

const ALL8: &[u32] = &[0, 1, 2, 3, 4, 5, 6, 7];
const LO4: &[u32] = &[0, 1, 2, 3];
const HI4: &[u32] = &[4, 5, 6, 7];
const ALL_KINDS: &[Kind] = &[Kind::Pcie, Kind::Host, Kind::Network, Kind::Gpu];
const REMAPPED_KINDS: &[Kind] = &[Kind::Pcie, Kind::Host, Kind::Gpu];

pub static SCENARIOS: &[ScenarioInfo] = &[
    ScenarioInfo { name: "healthy", about: "4 nodes, 3 jobs (one across nodes), vLLM servers, every nuisance at a low rate; no faults" },
    ScenarioInfo { name: "whole-job-slowdown", about: "whole jobs slow down together for 20 s at a time (not a straggler); no faults" },
    ScenarioInfo { name: "spikes", about: "isolated one-step spikes on random ranks (not a straggler); no faults" },
    ScenarioInfo { name: "straggler-pcie", about: "2-4 stragglers caused by PCIe (pageable host copies), with DPUs" },
    ScenarioInfo { name: "straggler-host", about: "2-4 stragglers caused by host CPU starvation, with DPUs" },
    ScenarioInfo { name: "straggler-network", about: "2-4 stragglers on cross-node jobs caused by NIC congestion, with DPUs" },
    ScenarioInfo { name: "straggler-gpu", about: "2-4 stragglers caused by the GPU: thermal throttling or silent extra work" },
    ScenarioInfo { name: "straggler-tp2", about: "one node, TP=2 jobs as in the real H200 trace: pcie, gpu and host stragglers in turn" },
    ScenarioInfo { name: "straggler-cross-node", about: "TP=16 across 2 nodes with stragglers of mixed causes, with DPUs" },
    ScenarioInfo { name: "straggler-pcie-saturated", about: "every GPU streams from the host over a Gen4 x16 link; 2-3 stragglers whose link runs at 93-99% of capacity, doorbells 4-5x late, with DPUs" },
    ScenarioInfo { name: "straggler-host-launch", about: "the same streaming jobs; 2-3 stragglers whose doorbells come 5-8x late while the bus has room and CPU pressure stays calm, with DPUs" },
    ScenarioInfo { name: "pcie-saturation", about: "Gen4 x16 links carrying streaming jobs; a node's bus saturated (2-4 GPUs' links at 93-99% of capacity: pcie_saturation), alone or under a pcie straggler; decoys: one straggler's own full link, 3-6 s transfers at full rate, GPU stragglers; DPUs on half the seeds" },
    ScenarioInfo { name: "host-cpu-bottleneck", about: "stragglers whose node's CPU is starved while their doorbells come late (host_cpu_bottleneck); late doorbells with a calm CPU, host jobs raising CPU pressure while GPUs are fed on time, and full-rate bursts as decoys, with DPUs" },
    ScenarioInfo { name: "noisy-neighbor", about: "nodes reporting each Slurm job's cgroup CPU use: host stragglers whose CPUs another job's cgroup takes (noisy_neighbor; the tenant idle there before or arriving at the onset), host stragglers starved with no tenant to blame, and tenants taking CPUs while no rank lacks them as decoys; DPUs on half the seeds" },
    ScenarioInfo { name: "intra-node-gpu-skew", about: "one GPU of a job fed thin and irregular DMA by a late launch path while its peers on the node are steady (intra_node_gpu_skew); heavy uneven copies, full-rate bursts and a host job's CPU pressure as decoys, with DPUs" },
    ScenarioInfo { name: "straggler-no-gpu-signal", about: "two nodes whose dcgm-exporter is not scraped, no DPU: their stragglers (PCIe or GPU) must be attributed `unknown`" },
    ScenarioInfo { name: "straggler-back-to-back", about: "TP=2 and TP=4 jobs on one node, no DPU: a straggler of one cause followed within a second, on the same rank, by one of another cause (each its own episode)" },
    ScenarioInfo { name: "straggler-habitual", about: "TP=2 jobs whose one rank is 1.5-2.4% of a step late from its first collective (a habit, not a straggler), then real stragglers on either rank" },
    ScenarioInfo { name: "collective-hang", about: "a rank frozen for 10-25 s before a collective while its peers wait in it (GPUs spinning), on TP=2 and TP=8 jobs, twice" },
    ScenarioInfo { name: "straggler-no-dpu", about: "exporters only: stragglers of every cause; network ones storm TCP retransmits too" },
    ScenarioInfo { name: "gpu-squatter", about: "a failed job's GPUs keep their memory and a hung job idles in RUNNING; model loads and idle GPUs as decoys" },
    ScenarioInfo { name: "kv-cache-saturation", about: "vLLM KV cache pinned near 1.0 while the waiting queue grows, then recovers" },
    ScenarioInfo { name: "engine-stall", about: "vLLM stops scheduling: running 0, cache full, requests piling up" },
    ScenarioInfo { name: "retransmit-storm", about: "TCP retransmit storms on nodes without cross-node jobs" },
    ScenarioInfo { name: "nic-saturation", about: "a serving node's NIC at line rate with its queue building, with DPUs" },
    ScenarioInfo { name: "swap-thrashing", about: "vLLM preempting its running requests 15-40 times a second, cache pinned; one-scrape preemption bursts as decoys" },
    ScenarioInfo { name: "oom-kill", about: "OOM kills: node_vmstat_oom_kill rising, jobs ended OUT_OF_MEMORY (one node not scraped); a job failing otherwise as a decoy" },
    ScenarioInfo { name: "tail-latency", about: "3-8% of a job's requests far past the TTFT or inter-token objective while p50 holds; a whole service slowing and a few slow requests as decoys" },
    ScenarioInfo { name: "ingress-burst", about: "arrivals 5-8x the usual for 6-12 s, the engine's queue growing and draining; one-second spikes as decoys" },
    ScenarioInfo { name: "network-congestion", about: "8 nodes: the fabric congests across 3-6 nodes at once, twice; RDMA credit starvation and a transmit backlog on single NICs; one node's retransmit storm, a NIC at line rate and a cluster-wide microburst as decoys" },
    ScenarioInfo { name: "noisy", about: "heavy nuisances (gaps, resets, junk and late lines, NaN, unknown records) around a few faults" },
    ScenarioInfo { name: "mixed", about: "8 nodes, 4 jobs, one fault of every kind in about 180 s (keel demo)" },
    ScenarioInfo { name: "live", about: "16 nodes, 4 jobs, two stragglers 25 s apart, in 80 s (keel demo's live cluster)" },
    ScenarioInfo { name: "quad", about: "4 nodes, 3 jobs (one across two nodes), two stragglers, in 100 s (end-to-end tests)" },
    ScenarioInfo { name: "large", about: "16 nodes, 4 jobs, recurring faults; scales with duration_s for benchmarks" },
];

fn default_duration(name: &str) -> f64 {
    match name {
        "straggler-tp2" => 200.0,
        "straggler-back-to-back" => 150.0,
        "straggler-cross-node" => 170.0,
        "gpu-squatter" => 210.0,
        "mixed" => 180.0,
        "network-congestion" => 240.0,
        "live" => 80.0,
        "quad" => 100.0,
        "large" => 300.0,
        "straggler-network" => 130.0,
        "straggler-pcie" | "straggler-host" | "straggler-gpu" | "retransmit-storm" => 140.0,
        _ => 150.0,
    }
}

pub fn build(name: &str, seed: u64, opts: &GenOptions) -> Result<Plan, ChaosError> {
    if !SCENARIOS.iter().any(|s| s.name == name) {
        return Err(ChaosError::UnknownScenario {
            name: name.to_string(),
            known: SCENARIOS
                .iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let d = opts
        .duration_s
        .unwrap_or_else(|| default_duration(name))
        .max(10.0);
    let salt = fnv1a(name);
    // Layout choices that differ by seed, drawn apart from the plan's stream.
    let mut coin = stream(seed ^ salt, streams::LAYOUT);
    let coin_dpu = coin.chance(0.5);
    let old_kv = coin.chance(0.5);
    let plan = match name {
        "healthy" => {
            let mut b = Builder::new(seed, salt, d, 4, true);
            b.job(&[(0, LO4), (1, LO4)], running());
            b.job(&[(2, ALL8)], serving());
            let start = b.rng.uni(25.0, 40.0).min(d / 2.0);
            b.job(
                &[(3, LO4)],
                JobOpts {
                    start: Some(start),
                    serving: true,
                    end: None,
                },
            );
            b.old_kv_name = old_kv;
            b.nuisances(&Mix::low());
            b
        }
        "whole-job-slowdown" => {
            let mut b = Builder::new(seed, salt, d, 3, true);
            b.job(&[(0, ALL8)], running());
            b.job(&[(1, LO4), (2, LO4)], running());
            b.job(&[(2, HI4)], serving());
            b.nuisances(&Mix {
                gaps: 0,
                resets: 0,
                job_slowdowns: 3 + (d / 60.0) as usize,
                spike_every: 60.0,
                burst_every: 20.0,
                noise: Noise::low(),
            });
            b
        }
        "spikes" => {
            let mut b = Builder::new(seed, salt, d, 3, false);
            b.job(&[(0, ALL8)], running());
            b.job(&[(1, LO4), (2, LO4)], running());
            b.job(&[(2, &[4, 5])], running());
            b.nuisances(&Mix {
                gaps: 0,
                resets: 0,
                job_slowdowns: 0,
                spike_every: 4.0,
                burst_every: 20.0,
                noise: Noise::low(),
            });
            b
        }
        "straggler-pcie" => std_stragglers(seed, salt, d, &[Kind::Pcie]),
        "straggler-host" => std_stragglers(seed, salt, d, &[Kind::Host]),
        "noisy-neighbor" => {
            let mut b = Builder::new(seed, salt, d, 4, coin_dpu);
            b.cluster.cgroups = true;
            let jobs = std_layout(&mut b);
            let n = b.rng.int(3, 4) as usize;
            b.stragglers(&jobs, n, &[Kind::Neighbor, Kind::Neighbor, Kind::Host]);
            b.bus_decoys(&jobs, 0, 2);
            b.nuisances(&Mix::low());
            b
        }
        "straggler-gpu" => std_stragglers(seed, salt, d, &[Kind::Gpu]),
        "straggler-network" => {
            let mut b = Builder::new(seed, salt, d, 4, true);
            let j0 = b.job(&[(0, LO4), (1, LO4)], running());
            let j1 = b.job(&[(2, ALL8), (3, ALL8)], running());
            b.job(&[(0, HI4)], serving());
            let n = b.rng.int(2, 4) as usize;
            b.stragglers(&[j0, j1], n, &[Kind::Network]);
            b.nuisances(&Mix::low());
            b
        }
        "straggler-tp2" => tp2(seed, salt, d),
        "straggler-pcie-saturated" | "straggler-host-launch" => {
            let kind = if name == "straggler-host-launch" {
                Kind::Launch
            } else {
                Kind::PcieSaturated
            };
            let mut b = Builder::new(seed, salt, d, 3, true);
            b.cluster.pcie_link = Some((4, 16));
            b.cluster.h2d_stream = Some(b.rng.uni(0.2, 0.35));
            let j0 = b.job(&[(0, LO4), (1, LO4)], running());
            let j1 = b.job(&[(2, ALL8)], running());
            b.job(&[(0, HI4), (1, HI4)], serving());
            let n = b.rng.int(2, 3) as usize;
            b.stragglers(&[j0, j1], n, &[kind]);
            b.nuisances(&Mix::low());
            b
        }
        "pcie-saturation" | "host-cpu-bottleneck" | "intra-node-gpu-skew" => {
            bus(name, seed, salt, d, coin_dpu)
        }
        "straggler-no-gpu-signal" => {
            let mut b = Builder::new(seed, salt, d, 3, false);
            b.straggler_len = (20.0, 40.0);
            b.cluster.no_dcgm = vec![0, 1];
            let j0 = b.job(&[(0, ALL8)], running());
            let j1 = b.job(&[(1, ALL8)], running());
            b.job(&[(2, ALL8)], serving());
            let n = b.rng.int(2, 3) as usize;
            b.stragglers(&[j0, j1], n, &[Kind::Pcie, Kind::Gpu]);
            b.nuisances(&Mix::low());
            b
        }
        "straggler-cross-node" => {
            let mut b = Builder::new(seed, salt, d, 3, true);
            b.straggler_len = (20.0, 40.0);
            let j0 = b.job(&[(0, ALL8), (1, ALL8)], running());
            b.job(&[(2, ALL8)], serving());
            let n = b.rng.int(2, 4) as usize;
            b.stragglers(&[j0], n, ALL_KINDS);
            b.nuisances(&Mix::low());
            b
        }
        "straggler-back-to-back" => {
            let mut b = Builder::new(seed, salt, d, 1, false);
            b.straggler_len = (20.0, 25.0);
            let j0 = b.job(&[(0, &[0, 1])], running());
            let j1 = b.job(&[(0, &[4, 5, 6, 7])], running());
            let kinds = [Kind::Gpu, Kind::Host, Kind::Pcie];
            for (j, tp) in [(j0, 2), (j1, 4)] {
                let first = *b.rng.pick(&kinds);
                let others: Vec<Kind> = kinds.into_iter().filter(|k| *k != first).collect();
                let second = *b.rng.pick(&others);
                let rank = b.rng.int(0, tp - 1);
                let gap = b.rng.uni(0.2, 1.0);
                b.back_to_back(j, rank, [first, second], 20.0, gap);
            }
            b.nuisances(&Mix::low());
            b
        }
        "collective-hang" => {
            let mut b = Builder::new(seed, salt, d, 2, false);
            let j0 = b.job(&[(0, &[0, 1])], running());
            let j1 = b.job(&[(1, ALL8)], running());
            b.job(&[(0, HI4)], serving());
            b.rank_stop(j0, 20.0, d / 2.0);
            b.rank_stop(j1, d / 2.0, d);
            b.nuisances(&Mix::low());
            b
        }
        "straggler-habitual" => {
            let mut b = Builder::new(seed, salt, d, 1, false);
            b.straggler_len = (20.0, 30.0);
            let j0 = b.job(&[(0, &[0, 1])], running());
            let j1 = b.job(&[(0, &[2, 3])], running());
            for j in [j0, j1] {
                let r = b.rng.int(0, 1) as usize;
                let habit = b.rng.uni(0.015, 0.024);
                let job = &mut b.cluster.jobs[j];
                job.bias[r] = habit;
                job.bias[1 - r] = 0.0;
            }
            let n = b.rng.int(2, 3) as usize;
            b.stragglers(&[j0, j1], n, &[Kind::Gpu, Kind::Host, Kind::Pcie]);
            b.nuisances(&Mix::low());
            b
        }
        "straggler-no-dpu" => {
            let mut b = Builder::new(seed, salt, d, 4, false);
            let j0 = b.job(&[(0, LO4), (1, LO4)], running());
            let j1 = b.job(&[(2, ALL8)], serving());
            let j2 = b.job(&[(3, LO4)], serving());
            let j3 = b.job(&[(0, HI4), (1, HI4)], running());
            let n = b.rng.int(2, 4) as usize;
            b.stragglers(&[j0, j1, j2, j3], n, ALL_KINDS);
            b.nuisances(&Mix::low());
            b
        }
        "gpu-squatter" => squatter(seed, salt, d),
        "kv-cache-saturation" | "engine-stall" => {
            let mut b = Builder::new(seed, salt, d, 3, coin_dpu);
            let j0 = b.job(&[(0, ALL8)], serving());
            let j1 = b.job(&[(1, LO4)], serving());
            b.job(&[(1, HI4), (2, LO4)], running());
            b.old_kv_name = old_kv;
            let mut servers = [j0, j1];
            if b.rng.chance(0.5) {
                servers.swap(0, 1);
            }
            let n = b.rng.int(1, 2) as usize;
            for &job in &servers[..n] {
                if name == "engine-stall" {
                    b.engine_stall(job, 20.0, d);
                } else {
                    b.kv_saturation(job, 20.0, d);
                }
            }
            b.nuisances(&Mix::low());
            b
        }
        "retransmit-storm" | "nic-saturation" => {
            let dpu = name == "nic-saturation" || coin_dpu;
            let mut b = Builder::new(seed, salt, d, 4, dpu);
            b.job(&[(0, LO4), (1, LO4)], running());
            b.job(&[(2, ALL8)], serving());
            b.job(&[(3, LO4)], serving());
            let mut nodes = [2, 3];
            if b.rng.chance(0.5) {
                nodes.swap(0, 1);
            }
            let n = b.rng.int(1, 2) as usize;
            for &node in &nodes[..n] {
                if name == "nic-saturation" {
                    b.nic_saturation(node, 20.0, d);
                } else {
                    b.retrans_storm(node, 20.0, d);
                }
            }
            b.nuisances(&Mix::low());
            b
        }
        "swap-thrashing" | "oom-kill" | "tail-latency" | "ingress-burst" => {
            serving_faults(name, seed, salt, d, coin_dpu)
        }
        "noisy" => {
            let mut b = Builder::new(seed, salt, d, 4, true);
            let jobs = std_layout(&mut b);
            b.old_kv_name = old_kv;
            b.stragglers(&jobs, 1, ALL_KINDS);
            if b.rng.chance(0.5) {
                b.kv_saturation(jobs[1], 20.0, d);
            } else {
                b.retrans_storm(2, 20.0, d);
            }
            b.nuisances(&Mix::heavy());
            b
        }
        "mixed" => mixed(seed, salt, d),
        "network-congestion" => network_congestion(seed, salt, d, coin_dpu),
        "live" => live(seed, salt, d),
        "quad" => quad(seed, salt, d),
        _ => large(seed, salt, d),
    };
    Ok(plan.finish())
}

/// A stable hash (std's hasher may change between releases).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn running() -> JobOpts {
    JobOpts::default()
}

fn serving() -> JobOpts {
    JobOpts {
        serving: true,
        ..JobOpts::default()
    }
}

/// Four nodes: TP=8 across n01/n02, a TP=8 server on n03, a TP=4 server and a
/// TP=2 job on n04, idle GPUs in between.
fn std_layout(b: &mut Builder) -> Vec<usize> {
    vec![
        b.job(&[(0, LO4), (1, LO4)], running()),
        b.job(&[(2, ALL8)], serving()),
        b.job(&[(3, LO4)], serving()),
        b.job(&[(3, &[4, 5])], running()),
    ]
}

fn std_stragglers(seed: u64, salt: u64, d: f64, kinds: &[Kind]) -> Builder {
    let mut b = Builder::new(seed, salt, d, 4, true);
    let jobs = std_layout(&mut b);
    let n = b.rng.int(2, 4) as usize;
    b.stragglers(&jobs, n, kinds);
    b.nuisances(&Mix::low());
    b
}

/// The bus detectors' scenarios: each kind's stragglers among the others
/// that look like it, and unlabelled decoys (see `Builder::bus_decoys`).
fn bus(name: &str, seed: u64, salt: u64, d: f64, coin_dpu: bool) -> Builder {
    let (kinds, dpu, bursts, cpu): (&[Kind], bool, usize, usize) = match name {
        "pcie-saturation" => (
            &[Kind::PcieSaturated, Kind::PcieSaturated, Kind::Gpu],
            coin_dpu,
            4,
            0,
        ),
        "host-cpu-bottleneck" => (&[Kind::Host, Kind::Host, Kind::Launch], true, 2, 3),
        // Only the DPU's doorbells tell whose side a thin GPU's trouble is.
        _ => (&[Kind::Thin, Kind::Thin, Kind::Pcie], true, 3, 1),
    };
    let mut b = Builder::new(seed, salt, d, 3, dpu);
    b.cluster.pcie_link = Some((4, 16));
    if name == "pcie-saturation" {
        b.cluster.h2d_stream = Some(b.rng.uni(0.2, 0.35));
    }
    // Jobs of four and eight GPUs a node: a GPU has peers to be thin against.
    let j0 = b.job(&[(0, LO4), (1, LO4)], running());
    let j1 = b.job(&[(2, ALL8)], running());
    b.job(&[(0, HI4), (1, HI4)], serving());
    let n = b.rng.int(3, 4) as usize;
    b.stragglers(&[j0, j1], n, kinds);
    if name == "pcie-saturation" {
        b.bus_companions(0.7);
        b.bus_saturations(1);
    }
    b.bus_decoys(&[j0, j1], bursts, cpu);
    b.nuisances(&Mix::low());
    b
}

/// Like the real trace: one node, no DPU, causes in turn on a TP=2 job.
fn tp2(seed: u64, salt: u64, d: f64) -> Builder {
    let mut b = Builder::new(seed, salt, d, 1, false);
    b.straggler_len = (20.0, 35.0);
    let j0 = b.job(&[(0, &[0, 1])], running());
    b.job(&[(0, &[2, 3])], running());
    let a = b.rng.int(0, 1);
    let order = [(Kind::Pcie, a), (Kind::Gpu, 1 - a), (Kind::Host, a)];
    let mut lo = 20.0;
    for (kind, rank) in order {
        let hi = lo + 35.0 + 15.0;
        match b.straggler(j0, Some(rank), kind, lo, hi) {
            Some((_, end)) => lo = end - b.cluster.ts0 + 20.0,
            None => break,
        }
    }
    let kind = *b.rng.pick(&[Kind::Pcie, Kind::Host, Kind::Gpu]);
    b.straggler(j0, None, kind, lo, d);
    b.nuisances(&Mix::low());
    b
}

fn squatter(seed: u64, salt: u64, d: f64) -> Builder {
    let mut b = Builder::new(seed, salt, d, 3, false);
    b.job(&[(0, ALL8)], serving());
    let failing = b.job(&[(1, LO4)], running());
    let hanging = b.job(&[(1, &[4, 5])], running());
    // Decoys: a model load (memory full, no work, for seconds) and a job that
    // completes cleanly and frees its GPUs.
    let load_at = b.rng.uni(20.0, 60.0);
    b.job(
        &[(2, LO4)],
        JobOpts {
            start: Some(load_at),
            ..running()
        },
    );
    let done_at = b.rng.uni(60.0, 120.0);
    b.job(
        &[(2, HI4)],
        JobOpts {
            end: Some((done_at, JobState::Completed)),
            ..running()
        },
    );
    let fail_at = b.rng.uni(25.0, 40.0);
    let n = b.rng.int(1, 2) as usize;
    b.squatter(failing, fail_at, n);
    let hang_at = b.rng.uni(40.0, 70.0);
    b.hung(hanging, hang_at);
    b.nuisances(&Mix::low());
    b
}

/// Three nodes, two vLLM servers and a job beside one of them, request
/// records and the OOM counter written; the scenario's fault on one or both
/// servers, each server's look-alikes where the faults are not.
fn serving_faults(name: &str, seed: u64, salt: u64, d: f64, dpu: bool) -> Builder {
    let mut b = Builder::new(seed, salt, d, 3, dpu);
    b.serving = true;
    let j0 = b.job(&[(0, ALL8)], serving());
    let j1 = b.job(&[(1, LO4)], serving());
    let j2 = b.job(&[(1, HI4)], running());
    let j3 = b.job(&[(2, LO4)], running());
    let mut servers = [j0, j1];
    if b.rng.chance(0.5) {
        servers.swap(0, 1);
    }
    let n = b.rng.int(1, 2) as usize;
    match name {
        "swap-thrashing" => {
            for &job in &servers[..n] {
                b.thrashing(job, 20.0, d);
            }
        }
        "oom-kill" => {
            b.oom_kill(2, Some(j3), true, 20.0, d);
            b.oom_kill(0, None, true, 20.0, d);
            if b.rng.chance(0.5) {
                b.oom_kill(1, Some(j2), false, 20.0, d);
            } else {
                b.oom_kill(1, Some(j1), true, 20.0, d);
            }
        }
        "tail-latency" => {
            for &job in &servers[..n] {
                let ttft = b.rng.chance(0.5);
                b.tail(job, ttft, 20.0, d);
            }
        }
        _ => {
            for &job in &servers[..n] {
                b.burst(job, 20.0, d);
            }
        }
    }
    for job in servers {
        b.serving_decoys(job);
    }
    b.nuisances(&Mix::low());
    b
}

fn mixed(seed: u64, salt: u64, d: f64) -> Builder {
    let mut b = Builder::new(seed, salt, d, 8, true);
    let j0 = b.job(&[(0, ALL8), (1, ALL8)], running());
    let j1 = b.job(&[(2, ALL8)], serving());
    let j2 = b.job(&[(3, LO4)], serving());
    let j3 = b.job(&[(4, &[0, 1])], running());
    let kind = *b.rng.pick(ALL_KINDS);
    b.straggler(j0, None, kind, 20.0, d * 0.6);
    b.kv_saturation(j1, 20.0, d * 0.55);
    b.nic_saturation(2, d * 0.55, d);
    b.engine_stall(j2, 25.0, d);
    let fail_at = b.rng.uni(30.0, 45.0);
    b.squatter(j3, fail_at, 1);
    b.retrans_storm(5, 30.0, d);
    b.nuisances(&Mix::low());
    b
}

/// The fabric's own faults among the node-level ones that resemble them.
fn network_congestion(seed: u64, salt: u64, d: f64, dpu: bool) -> Builder {
    let mut b = Builder::new(seed, salt, d, 8, dpu);
    b.job(&[(0, LO4), (1, LO4), (2, LO4), (3, LO4)], running());
    b.job(&[(4, ALL8), (5, ALL8)], running());
    b.job(&[(6, ALL8)], serving());
    b.job(&[(7, LO4)], serving());
    // Two congestions, each over 3-6 of the six nodes that carry
    // cross-node traffic.
    for half in 0..2 {
        let n = b.rng.int(3, 6) as usize;
        let mut nodes: Vec<usize> = (0..6).collect();
        for i in (1..nodes.len()).rev() {
            let j = b.rng.int(0, i as u32) as usize;
            nodes.swap(i, j);
        }
        nodes.truncate(n);
        nodes.sort_unstable();
        let lo = half as f64 * d / 2.0;
        b.congestion(nodes, lo, lo + d / 2.0);
    }
    // One node's storm and (seen only by a DPU) one NIC at line rate: node
    // conditions, not the fabric's; the line rate's queue is not a backlog.
    let storm = if b.rng.chance(0.5) { 6 } else { 7 };
    b.retrans_storm(storm, 20.0, d);
    if dpu {
        b.nic_saturation(13 - storm, 20.0, d);
        let node = b.rng.int(0, 7) as usize;
        b.credit_starvation(node, 20.0, d);
    }
    let node = b.rng.int(0, 7) as usize;
    b.egress_backlog(node, 20.0, d);
    // Every node bursts for about a second, twice.
    for _ in 0..2 {
        b.microburst((0..8).collect(), 20.0, d);
    }
    b.nuisances(&Mix::low());
    b
}

/// Sixteen nodes and four jobs, as `keel demo` runs live: a first straggler
/// soon after the jobs have settled, a second one 25 s later (after the
/// demo has killed the controller leader), both as short as the corpus allows.
fn live(seed: u64, salt: u64, d: f64) -> Builder {
    let mut b = Builder::new(seed, salt, d, 16, true);
    b.straggler_len = (20.0, 24.0);
    let j0 = b.job(&[(0, ALL8), (1, ALL8)], running());
    let j1 = b.job(&[(2, ALL8), (3, ALL8)], running());
    b.job(&[(4, ALL8)], serving());
    b.job(&[(5, LO4), (6, LO4)], running());
    // Causes the default policy answers by remapping (a network cause
    // retunes a NIC, which needs an executor on that node).
    let kind = *b.rng.pick(REMAPPED_KINDS);
    b.straggler(j0, None, kind, 20.0, 42.0);
    let kind = *b.rng.pick(REMAPPED_KINDS);
    b.straggler(j1, None, kind, 45.0, d);
    b.nuisances(&Mix::low());
    b
}

/// Four nodes, one job across two of them: small enough for one sensor
/// process per node in an end-to-end test.
fn quad(seed: u64, salt: u64, d: f64) -> Builder {
    let mut b = Builder::new(seed, salt, d, 4, true);
    b.straggler_len = (20.0, 25.0);
    let j0 = b.job(&[(0, ALL8), (1, ALL8)], running());
    let j1 = b.job(&[(2, ALL8)], running());
    b.job(&[(3, LO4)], serving());
    let kind = *b.rng.pick(ALL_KINDS);
    b.straggler(j0, None, kind, 20.0, 45.0);
    let kind = *b.rng.pick(ALL_KINDS);
    b.straggler(j1, None, kind, 55.0, d);
    b
}

/// Sixteen nodes, mostly idle ones around four jobs; faults recur so that a
/// long benchmark trace keeps exercising the detectors.
fn large(seed: u64, salt: u64, d: f64) -> Builder {
    let mut b = Builder::new(seed, salt, d, 16, true);
    let j0 = b.job(&[(0, ALL8), (1, ALL8)], running());
    let j1 = b.job(&[(2, ALL8), (3, ALL8)], running());
    let j2 = b.job(&[(4, ALL8)], serving());
    let j3 = b.job(&[(5, LO4), (6, LO4)], running());
    let n = ((d / 75.0) as usize).max(2);
    b.stragglers(&[j0, j1, j2, j3], n, ALL_KINDS);
    for _ in 0..((d / 300.0) as usize).max(1) {
        b.kv_saturation(j2, 20.0, d);
    }
    for _ in 0..((d / 200.0) as usize).max(1) {
        let node = b.rng.int(7, 15) as usize;
        b.retrans_storm(node, 20.0, d);
    }
    let scale = (d / 150.0).ceil() as usize;
    b.nuisances(&Mix {
        gaps: scale,
        resets: scale,
        job_slowdowns: scale,
        ..Mix::low()
    });
    b
}
