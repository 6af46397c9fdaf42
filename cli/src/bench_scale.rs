//! `keel bench scale`: what a controller costs as the cluster grows.
//!
//! Three real `keel controller` processes on loopback (fsync on) hold a
//! simulated cluster: N nodes of 8 ranks, 1,000 running jobs spread over
//! them, and 10,000 jobs that ended (registered as ended: the state keeps
//! the newest `ENDED_JOBS_KEPT`, the rest go to the history). Then, for a
//! steady window, the load such a cluster puts on its controllers:
//!
//! - every node's sensor asks `routes` for its node every 0.5 s (the
//!   sensor's `ROUTES_EVERY`), spread over the three replicas;
//! - one correlator host per 256 nodes (at least 2) greets every replica
//!   with `hello` every 0.5 s (the correlator's `HELLO_EVERY`) and takes
//!   the jobs it is given;
//! - stragglers: the straggler scenarios of `keel chaos` (every cause) are
//!   replayed through the sensors' edge aggregation and the detectors
//!   first, which gives each straggler's onset-to-finding (trace time);
//!   during the window each finding is reported by a correlator host, the
//!   way a correlator reports one, as about one of the cluster's running
//!   jobs, and timed until a replica acknowledges it committed and applied.
//!   Onset to committed is the sum of the two.
//!
//! Measured from `/proc`: CPU time (user + system) and resident memory of
//! each controller process. After the window, one correlator host falls
//! silent; measured: how long until the sensors' routes move its jobs to
//! another host, and until a surviving host's `hello` hands them over.

use crate::bench_controller::{query, start, Procs};
use crate::bench_scale_detect::{stragglers, Detected, SCENARIOS};
use crate::bench_scale_load::{ask, commit_all, lose_host, spawn_host, spawn_sensors, Load, POLL};
use crate::demo::TempDir;
use anyhow::{bail, Context, Result};
use keel_consensus::state::Command;
use keel_model::{Finding, JobRecord, JobState, Message, Name, Role};
use keel_transport::{Client, Credentials, Options};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Ranks per simulated node (8 GPUs).
const RANKS_PER_NODE: u32 = 8;
/// Nodes per simulated correlator host.
const NODES_PER_HOST: usize = 256;

/// `keel bench scale` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct ScaleArgs {
    /// Cluster sizes to measure, in nodes of 8 ranks
    #[arg(long, value_delimiter = ',', default_values_t = [1024])]
    pub nodes: Vec<usize>,
    /// Running jobs
    #[arg(long, default_value_t = 1000)]
    pub running: usize,
    /// Jobs registered as ended (history)
    #[arg(long, default_value_t = 10_000)]
    pub ended: usize,
    /// Length of the steady window, seconds
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Seeds of each straggler scenario (gpu, pcie, host, network) whose
    /// stragglers are detected and reported during the window
    #[arg(long, default_value_t = 2)]
    pub seeds: u64,
}

/// What one cluster size measured.
struct Row {
    nodes: usize,
    load_s: f64,
    load_proposals: usize,
    /// CPU seconds per second over the window, all three replicas; the busiest.
    cpu_all: f64,
    /// Controller CPU (all replicas) per request served, microseconds.
    cpu_us_per_request: f64,
    cpu_max: f64,
    /// CPU seconds from start to the end of the window, all three replicas.
    cpu_total_s: f64,
    rss_max_mib: f64,
    hwm_max_mib: f64,
    polls_per_s: f64,
    polls_target: f64,
    routes_ms: (f64, f64),
    hello_ms: (f64, f64),
    hello_kib: f64,
    hosts: usize,
    commit_s: (f64, f64),
    /// Onset to committed: the detector's onset-to-finding plus the commit.
    onset_commit_s: (f64, f64),
    findings: usize,
    lost_routes_s: f64,
    lost_takeover_s: f64,
    errors: usize,
}

pub fn run(args: &ScaleArgs) -> Result<()> {
    let tmp = TempDir::new("keel-bench-scale")?;
    let (detected, labelled) = stragglers(&tmp.0, args.seeds)?;
    let mut detect: Vec<f64> = detected.iter().map(|d| d.detect_s).collect();
    let (d50, d99) = p50_p99(&mut detect, 1.0);
    println!(
        "stragglers: {} of {labelled} found by the detectors over sensor edge windows ({} scenarios x {} seeds); onset to finding p50 {d50:.2} s, p99 {d99:.2} s (trace time)",
        detected.len(),
        SCENARIOS.len(),
        args.seeds
    );
    let mut rows = Vec::new();
    for &n in &args.nodes {
        if n == 0 {
            bail!("--nodes: a cluster needs at least one node");
        }
        let dir = tmp.0.join(format!("n{n}"));
        std::fs::create_dir_all(&dir)?;
        let r = one(&dir, n, args, &detected).with_context(|| format!("{n} nodes"))?;
        print_row(&r, args);
        rows.push(r);
    }
    if rows.len() > 1 {
        let (a, b) = (&rows[0], &rows[rows.len() - 1]);
        println!(
            "cost curve {} -> {} nodes ({:.0}x): controller CPU {:.2}x, CPU per request {:.2}x, resident memory {:.2}x, routes polls served {:.2}x",
            a.nodes,
            b.nodes,
            b.nodes as f64 / a.nodes as f64,
            b.cpu_all / a.cpu_all.max(1e-9),
            b.cpu_us_per_request / a.cpu_us_per_request.max(1e-9),
            b.rss_max_mib / a.rss_max_mib.max(1e-9),
            b.polls_per_s / a.polls_per_s.max(1e-9)
        );
    }
    Ok(())
}

fn print_row(r: &Row, args: &ScaleArgs) {
    println!(
        "{} nodes, {} ranks, {} running + {} ended jobs, {} correlator hosts:",
        r.nodes,
        r.nodes as u64 * RANKS_PER_NODE as u64,
        args.running,
        args.ended,
        r.hosts
    );
    println!(
        "  load: {} proposals committed in {:.1} s",
        r.load_proposals, r.load_s
    );
    println!(
        "  controllers over the {:.0} s window: CPU {:.2} cores (3 replicas), busiest {:.2}, {:.0} us per request served; CPU since start {:.1} s; resident max {:.0} MiB (peak {:.0} MiB)",
        args.seconds,
        r.cpu_all,
        r.cpu_max,
        r.cpu_us_per_request,
        r.cpu_total_s,
        r.rss_max_mib,
        r.hwm_max_mib
    );
    println!(
        "  routes polls {:.0}/s served (sensors ask {:.0}/s): p50 {:.1} ms, p99 {:.1} ms; hello p50 {:.1} ms, p99 {:.1} ms, {:.0} KiB per reply",
        r.polls_per_s,
        r.polls_target,
        r.routes_ms.0,
        r.routes_ms.1,
        r.hello_ms.0,
        r.hello_ms.1,
        r.hello_kib
    );
    println!(
        "  {} straggler findings: sent to committed p50 {:.3} s, p99 {:.3} s; onset to committed p50 {:.2} s, p99 {:.2} s",
        r.findings, r.commit_s.0, r.commit_s.1, r.onset_commit_s.0, r.onset_commit_s.1
    );
    println!(
        "  correlator host lost: routes moved after {:.2} s, jobs handed to another host after {:.2} s (host TTL included); {} requests failed",
        r.lost_routes_s, r.lost_takeover_s, r.errors
    );
}

/// p50 and p99 of `v` (sorted here), scaled.
fn p50_p99(v: &mut [f64], scale: f64) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| {
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1] * scale
    };
    (q(0.5), q(0.99))
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`
/// (clock ticks of 1/100 s, Linux's `USER_HZ`).
pub(crate) fn cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): state is the
    // first, utime the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// `VmRSS` and `VmHWM` of a process, in MiB.
pub(crate) fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

pub(crate) fn node_name(i: usize) -> Name {
    format!("node-{i:05}").as_str().into()
}

/// Running job `j` of `running` on a cluster of `n` nodes: its share of the
/// nodes (at least one), 8 ranks on each.
fn running_job(j: usize, running: usize, n: usize) -> JobRecord {
    let per = n.div_ceil(running).max(1);
    let first = (j * n / running.max(1)) % n;
    let mut r = JobRecord::state_only(&format!("run-{j:05}"), JobState::Running, 1.8e9);
    for k in 0..per.min(n) {
        let node = node_name((first + k) % n);
        let base = k as u32 * RANKS_PER_NODE;
        r.nodes.push(node.clone());
        r.ranks
            .insert(node, (base..base + RANKS_PER_NODE).collect());
        for g in 0..RANKS_PER_NODE {
            r.gpus.insert(base + g, g);
        }
    }
    r.tp = Some(RANKS_PER_NODE);
    r
}

fn ended_job(j: usize, n: usize) -> JobRecord {
    let mut r = running_job(j, 10_000, n);
    r.job = format!("done-{j:05}").as_str().into();
    r.state = JobState::Completed;
    r
}

fn one(dir: &Path, n: usize, args: &ScaleArgs, detected: &[Detected]) -> Result<Row> {
    let ports: Vec<u16> = (0..3)
        .map(|_| {
            Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        })
        .collect::<Result<_>>()?;
    let procs: Procs = start(dir, &ports)?;
    let pids: Vec<u32> = procs.0.iter().flatten().map(|c| c.id()).collect();
    let hosts = (n / NODES_PER_HOST).max(2);
    for h in 0..hosts {
        keel_transport::certs::issue(
            &dir.join("ca"),
            Role::Correlator,
            &format!("host-{h}"),
            &dir.join(format!("host-{h}")),
            keel_transport::certs::Validity::days(1),
        )?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let addr = move |i: usize| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], ports[i])) };
    rt.block_on(async move {
        let op = Client::new(&Credentials::from_dir(&dir.join("op"))?, Options::default())?;
        let mut conns = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..3 {
            let c = loop {
                match op.connect(addr(i), &format!("c{}", i + 1)).await {
                    Ok((c, _)) => break c,
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(e) => bail!("connecting to c{}: {e}", i + 1),
                }
            };
            conns.push(Arc::new(c));
        }
        let leader = loop {
            if Instant::now() > deadline {
                bail!("no leader within 30 s");
            }
            if let Ok(body) = ask(&conns[0], query("status", BTreeMap::new())).await {
                let v: serde_json::Value = serde_json::from_str(&body)?;
                if let Some(l) = v["leader"].as_u64().filter(|&l| l != 0) {
                    break l as usize - 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };

        // The cluster: nodes, then the ended jobs, then the running ones.
        let mut commands: Vec<String> = (0..n)
            .map(|i| {
                serde_json::to_string(&Command::RegisterNode {
                    node: node_name(i),
                    gpus: RANKS_PER_NODE,
                    nics: Vec::new(),
                })
            })
            .collect::<Result<_, _>>()?;
        for j in 0..args.ended {
            commands.push(serde_json::to_string(&Command::Job {
                record: ended_job(j, n),
            })?);
        }
        let running: Vec<JobRecord> = (0..args.running)
            .map(|j| running_job(j, args.running, n))
            .collect();
        for r in &running {
            commands.push(serde_json::to_string(&Command::Job { record: r.clone() })?);
        }
        let t = Instant::now();
        let proposals = commands.len();
        commit_all(&conns[leader], commands).await?;
        let load_s = t.elapsed().as_secs_f64();

        // The steady load: sensors, correlator hosts.
        let load = Arc::new(Load::new(hosts));
        let mut host_conns = Vec::new();
        for h in 0..hosts {
            let client = Client::new(
                &Credentials::from_dir(&dir.join(format!("host-{h}")))?,
                Options::default(),
            )?;
            let mut cs = Vec::new();
            for i in 0..3 {
                cs.push(Arc::new(
                    client.connect(addr(i), &format!("c{}", i + 1)).await?.0,
                ));
            }
            spawn_host(load.clone(), h, cs.clone());
            host_conns.push(cs);
        }
        spawn_sensors(load.clone(), conns.clone(), n);
        // Let every host greet and every sensor ask once before measuring.
        tokio::time::sleep(2 * POLL).await;
        load.routes_lat.lock().unwrap().clear();
        load.hello_lat.lock().unwrap().clear();
        let (polls0, bytes0, count0) = (
            load.polls.load(Ordering::Relaxed),
            load.hello_bytes.load(Ordering::Relaxed),
            load.hello_count.load(Ordering::Relaxed),
        );
        let cpu0: Vec<f64> = pids.iter().map(|&p| cpu_s(p)).collect();
        let window = Instant::now();

        // The detected stragglers, evenly over the window, each reported by
        // a host as the finding of one of this cluster's running jobs.
        let mut commit = Vec::new();
        let mut onset_commit = Vec::new();
        let every = Duration::from_secs_f64(args.seconds / detected.len().max(1) as f64);
        for (k, d) in detected.iter().enumerate() {
            let due = window + every * k as u32;
            tokio::time::sleep(due.saturating_duration_since(Instant::now())).await;
            let job = &running[k * 7919 % running.len().max(1)];
            let rank = d.finding.rank.unwrap_or(0) % RANKS_PER_NODE;
            let finding = Finding {
                ts: keel_actors::sources::unix_now(),
                job: Some(job.job.clone()),
                node: job.node_of(rank).cloned(),
                rank: Some(rank),
                gpu: Some(rank),
                ..d.finding.clone()
            };
            let conn = &host_conns[k % hosts][k % 3];
            let t = Instant::now();
            match ask(conn, Message::Finding(finding)).await {
                Ok(_) => {
                    let c = t.elapsed().as_secs_f64();
                    commit.push(c);
                    onset_commit.push(d.detect_s + c);
                }
                Err(_) => {
                    load.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        tokio::time::sleep(
            (window + Duration::from_secs_f64(args.seconds))
                .saturating_duration_since(Instant::now()),
        )
        .await;
        let secs = window.elapsed().as_secs_f64();
        let cpu: Vec<f64> = pids
            .iter()
            .zip(&cpu0)
            .map(|(&p, c0)| (cpu_s(p) - c0) / secs)
            .collect();
        let polls_per_s = (load.polls.load(Ordering::Relaxed) - polls0) as f64 / secs;
        let hellos = load.hello_count.load(Ordering::Relaxed) - count0;
        let hello_kib = (load.hello_bytes.load(Ordering::Relaxed) - bytes0) as f64
            / hellos.max(1) as f64
            / 1024.0;
        let requests_per_s = polls_per_s + (hellos + commit.len()) as f64 / secs;
        let mems: Vec<(f64, f64)> = pids.iter().map(|&p| rss_mib(p)).collect();
        let cpu_total_s = pids.iter().map(|&p| cpu_s(p)).sum::<f64>();

        // A correlator host falls silent: its jobs must move.
        let (lost_routes_s, lost_takeover_s) = lose_host(&load, &conns, hosts, &running).await?;
        load.stop.store(true, Ordering::Relaxed);

        let mut routes_lat = load.routes_lat.lock().unwrap().clone();
        let mut hello_lat = load.hello_lat.lock().unwrap().clone();
        Ok(Row {
            nodes: n,
            load_s,
            load_proposals: proposals,
            cpu_all: cpu.iter().sum(),
            cpu_us_per_request: cpu.iter().sum::<f64>() / requests_per_s.max(1e-9) * 1e6,
            cpu_max: cpu.iter().copied().fold(0.0, f64::max),
            cpu_total_s,
            rss_max_mib: mems.iter().map(|m| m.0).fold(0.0, f64::max),
            hwm_max_mib: mems.iter().map(|m| m.1).fold(0.0, f64::max),
            polls_per_s,
            polls_target: n as f64 / POLL.as_secs_f64(),
            routes_ms: p50_p99(&mut routes_lat, 1000.0),
            hello_ms: p50_p99(&mut hello_lat, 1000.0),
            hello_kib,
            hosts,
            findings: commit.len(),
            commit_s: p50_p99(&mut commit, 1.0),
            onset_commit_s: p50_p99(&mut onset_commit, 1.0),
            lost_routes_s,
            lost_takeover_s,
            errors: load.errors.load(Ordering::Relaxed),
        })
    })
}
