//! `keel demo`: a whole live cluster in one process. Three controller
//! replicas, two correlator hosts and one sensor per node talk over real
//! QUIC (mutual TLS) on loopback, fed in real time by a generated scenario
//! with stragglers injected. Findings are printed as the controller commits
//! them; the leader is killed after the first one and the loop goes on.

use crate::demo::TempDir;
use crate::eval::read_jsonl;
use anyhow::{Context, Result};
use keel_actors::client::ControllerAddr;
use keel_actors::controller::{self, Applied, ControllerMsg, PeerConfig};
use keel_actors::correlator::{self, CorrelatorConfig, HostMsg};
use keel_actors::executor::ExecutorMsg;
use keel_actors::ractor::ActorRef;
use keel_actors::sensor::{self, SensorConfig};
use keel_actors::sources::{unix_now, SourceConfig};
use keel_adapters::sources::replay::ReplayConfig;
use keel_chaos::{generate_to_dir, GenOptions};
use keel_model::{Label, Role};
use keel_transport::certs::{self, Validity};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// Quiet runs (`keel bench live`) print nothing but their result.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

macro_rules! say {
    ($($arg:tt)*) => {
        if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
            println!($($arg)*);
        }
    };
}

/// What a run showed, for the benchmark.
#[derive(Debug, Default)]
pub struct LiveReport {
    /// Onset to commit, trace seconds, per injected episode committed.
    pub latencies: Vec<f64>,
    pub missed: usize,
    pub wrong_cause: usize,
    pub false_alarms: usize,
}

pub struct LiveOptions {
    pub scenario: String,
    pub seed: u64,
    pub speed: f64,
    pub keep: Option<PathBuf>,
    pub quiet: bool,
    /// Override the scenario's length (trace seconds).
    pub duration: Option<f64>,
    /// Submit a real job to the Slurm this machine reaches, to make a GPU
    /// squatter of it (`keel demo --slurm`).
    pub slurm: bool,
    /// Where to serve the dashboard, `/metrics`, `/healthz` and `/readyz`
    /// of the first replica (`crate::dashboard::serve_demo`).
    pub http: Option<SocketAddr>,
    /// After the run, keep everything up until interrupted.
    pub stay: bool,
}

/// Where `keel demo` serves its dashboard unless `--http` says otherwise.
pub const DEMO_HTTP: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7480);

/// One committed finding, with when it was committed on the trace's clock.
pub struct Committed {
    pub id: u64,
    pub trace_ts: f64,
    pub entry: keel_consensus::state::FindingEntry,
}

pub fn run(opts: LiveOptions) -> Result<LiveReport> {
    QUIET.store(opts.quiet, std::sync::atomic::Ordering::Relaxed);
    let tmp;
    let dir = match &opts.keep {
        Some(d) => d.clone(),
        None => {
            tmp = TempDir::new("keel-live")?;
            tmp.0.clone()
        }
    };
    let gen = GenOptions {
        duration_s: opts.duration,
    };
    let summary = generate_to_dir(&opts.scenario, opts.seed, &gen, &dir)
        .with_context(|| format!("generating scenario {}", opts.scenario))?;
    let labels: Vec<Label> = read_jsonl(&dir.join("labels.jsonl"))?;
    let (nodes, jobs) = trace_nodes(&dir.join("trace.jsonl"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(live(
        &opts,
        &dir,
        summary.start,
        summary.end,
        &labels,
        &nodes,
        &jobs,
    ));
    // The stopped cluster's tasks end with the runtime.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    report
}

/// Every node and job named in the trace.
fn trace_nodes(trace: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let (records, _) = keel_adapters::read_all(
        std::fs::File::open(trace).with_context(|| format!("opening {}", trace.display()))?,
    );
    let mut nodes = std::collections::BTreeSet::new();
    let mut jobs = std::collections::BTreeSet::new();
    for r in &records {
        match r {
            keel_model::Record::Job(j) => jobs.insert(j.job.to_string()),
            keel_model::Record::Collective(c) => nodes.insert(c.node.to_string()),
            keel_model::Record::Metric(m) => nodes.insert(m.node.to_string()),
            _ => false,
        };
    }
    Ok((nodes.into_iter().collect(), jobs.into_iter().collect()))
}

fn free_port() -> Result<SocketAddr> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?)
}

pub(crate) fn issue(dir: &Path, ca: &certs::Ca, role: Role, name: &str) -> Result<PathBuf> {
    let out = dir.join(format!("{role}-{name}"));
    // A throwaway cluster's certificates, but long-lived enough that the
    // 30-day expiry warning does not show on a healthy demo's dashboard.
    let pem = ca.issue(role, name, Validity::days(365))?;
    certs::write_credentials(&out, &ca.pem.cert, &pem)?;
    Ok(out)
}

async fn live(
    opts: &LiveOptions,
    dir: &Path,
    t0: f64,
    end: f64,
    labels: &[Label],
    nodes: &[String],
    jobs: &[String],
) -> Result<LiveReport> {
    // Ctrl-C or SIGTERM ends the demo through its summary, so that what it
    // started (haproxy, a Slurm job) is stopped too.
    let stop = interrupted(!opts.quiet);
    // A kept folder from an earlier run: start its cluster afresh.
    for sub in std::fs::read_dir(dir)?.flatten() {
        if sub.path().is_dir() {
            let _ = std::fs::remove_dir_all(sub.path());
        }
    }
    let ca = certs::init(&dir.join("ca")).context("creating the demo's CA")?;
    let ids = [1u64, 2, 3];
    let addrs: Vec<SocketAddr> = ids.iter().map(|_| free_port()).collect::<Result<_>>()?;
    let controllers: Vec<ControllerAddr> = ids
        .iter()
        .zip(&addrs)
        .map(|(id, a)| ControllerAddr {
            addr: *a,
            name: format!("ctl-{id}"),
        })
        .collect();
    let (tx, mut applied) = mpsc::unbounded_channel::<Applied>();
    let mut replicas: BTreeMap<u64, ActorRef<ControllerMsg>> = BTreeMap::new();
    // What the dashboard's port reads: each replica and what it applies.
    let mut served = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let cfg = controller::Config {
            id: *id,
            listen: addrs[i],
            data_dir: dir.join(format!("ctl-{id}")),
            credentials: issue(dir, &ca, Role::Controller, &format!("ctl-{id}"))?,
            peers: ids
                .iter()
                .zip(&addrs)
                .filter(|(p, _)| *p != id)
                .map(|(p, a)| PeerConfig {
                    id: *p,
                    addr: *a,
                    name: format!("ctl-{p}"),
                })
                .collect(),
            join: false,
            retention: Default::default(),
            executors: Vec::new(),
        };
        let started = controller::start(cfg, None).await?;
        let mut rx = started.applied.subscribe();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(a) = rx.recv().await {
                if tx.send(a).is_err() {
                    return;
                }
            }
        });
        served.push((started.actor.clone(), started.applied.clone()));
        replicas.insert(*id, started.actor);
    }
    let mut hosts = Vec::new();
    for name in ["corr-a", "corr-b"] {
        let cfg = CorrelatorConfig {
            listen: "127.0.0.1:0".parse()?,
            advertise: None,
            credentials: issue(dir, &ca, Role::Correlator, name)?,
            controllers: controllers.clone(),
            // The sensors replay recorded traces: their time is the trace's.
            check_clock: false,
            detect: Default::default(),
        };
        hosts.push(correlator::start(cfg).await?.actor);
    }
    let start_at = unix_now() + 1.5;
    for node in nodes {
        let cfg = SensorConfig {
            node: node.as_str().into(),
            credentials: issue(dir, &ca, Role::Sensor, node)?,
            controllers: controllers.clone(),
            window_len: None,
            sources: vec![SourceConfig::Replay(ReplayConfig {
                path: dir.join("trace.jsonl"),
                speed: opts.speed,
                start_at: Some(start_at),
                t0: Some(t0),
            })],
            executor: None,
        };
        sensor::start(cfg, None).await?;
    }
    say!(
        "keel demo: a live cluster in one process, over QUIC with mutual TLS on loopback:\n  \
         3 controller replicas (Raft), 2 correlator hosts, {} sensors (one per node), \
         fed in real time{} by scenario `{}` (seed {}), {:.0} s",
        nodes.len(),
        if opts.speed == 1.0 {
            String::new()
        } else {
            format!(" x{}", opts.speed)
        },
        opts.scenario,
        opts.seed,
        end - t0
    );
    if let Some(addr) = opts.http {
        crate::dashboard::serve_demo(addr, served).await;
    }
    say!("injected (hidden from keel):");
    for l in labels {
        say!(
            "  t+{:>5.1}s .. t+{:>5.1}s  {:<14} cause {:<8} {}",
            l.onset - t0,
            l.end - t0,
            l.kind.wire(),
            l.cause.map_or("-", |c| c.wire()),
            l.locus().map_or_else(|| "?".into(), |x| x.to_string())
        );
    }
    let mut labels = labels.to_vec();
    let mut acting = None;
    if !opts.quiet {
        say!("acting:");
        acting = Some(
            crate::demo_act::start(dir, &ca, &controllers, &replicas, jobs, opts.slurm).await?,
        );
    }
    say!("\nlive:");
    let trace_now = |speed: f64| t0 + (unix_now() - start_at) * speed;
    let mut seen = HashSet::new();
    let mut committed: Vec<Committed> = Vec::new();
    let mut killed: Option<u64> = None;
    let mut kill_at: Option<f64> = None;
    let mut crash_at: Option<f64> = None;
    // With an executor, the leader is killed between the dispatch of the
    // first action and its acknowledgement: the executor is paused until
    // the command reaches it, then resumed once the leader is dead.
    let mut paused_at: Option<f64> = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    tokio::pin!(stop);
    let mut stopped = false;
    loop {
        tokio::select! {
            _ = &mut stop => {
                say!("\n** interrupted: the demo stops **");
                stopped = true;
                break;
            }
            Some(a) = applied.recv() => {
                let Some(entry) = a.finding else { continue };
                if !seen.insert(entry.id) {
                    continue;
                }
                let now = trace_now(opts.speed);
                print_committed(&entry, a.replica, now, t0, &labels);
                if killed.is_none() && kill_at.is_none() && paused_at.is_none() {
                    match &acting {
                        Some(a) => {
                            let _ = a.executor.cast(ExecutorMsg::Hold(true));
                            paused_at = Some(now);
                        }
                        None => kill_at = Some(now + 3.0),
                    }
                }
                committed.push(Committed { id: entry.id, trace_ts: now, entry });
            }
            _ = ticker.tick() => {
                let now = trace_now(opts.speed);
                if let Some(a) = acting.as_mut() {
                    a.tick(&replicas, t0, now).await;
                    labels.extend(a.injected.take());
                    if let Some(p) = paused_at {
                        let held = keel_actors::executor::stats(&a.executor).await.map_or(0, |s| s.held);
                        if held > 0 || now - p > 10.0 {
                            if held > 0 {
                                say!("  t+{:>5.1}s  ** executor paused: the leader's command reached it, unacknowledged **", now - t0);
                            }
                            paused_at = None;
                            kill_at = Some(now);
                        }
                    }
                }
                if kill_at.is_some_and(|k| now >= k) {
                    kill_at = None;
                    if let Some(leader) = leader_of(&replicas).await {
                        if let Some(actor) = replicas.remove(&leader) {
                            actor.stop(Some("killed by the demo".into()));
                            killed = Some(leader);
                            say!("  t+{:>5.1}s  ** killed controller ctl-{leader}, the Raft leader **", now - t0);
                            if let Some(a) = &acting {
                                let _ = a.executor.cast(ExecutorMsg::Hold(false));
                                say!("  t+{:>5.1}s  ** executor resumed: it acts on the dead leader's command; the next leader sends it again **", now - t0);
                            }
                            crash_at = Some(now + 4.0);
                        }
                    }
                }
                if crash_at.is_some_and(|c| now >= c) {
                    crash_at = None;
                    if let Some(new_leader) = leader_of(&replicas).await {
                        say!("  t+{:>5.1}s  ctl-{new_leader} leads now; sensors and correlators moved to the survivors", now - t0);
                    }
                    crash_a_correlator(&hosts, jobs, now - t0).await;
                }
                if now >= end + 2.0 {
                    break;
                }
            }
        }
    }
    let result = report(&committed, &labels, t0, killed, &hosts).await;
    if let Some(a) = &acting {
        a.summary(&replicas).await;
    }
    if let Some(d) = &opts.keep {
        say!(
            "\ntrace, labels, certificates and Raft logs kept in {}",
            d.display()
        );
    }
    if opts.stay && !stopped {
        say!("\nthe cluster stays up (--stay): Ctrl-C ends the demo");
        stop.await;
    }
    Ok(result)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM; never when `listen` is false
/// (`keel bench live` keeps the default: a signal ends the process). The
/// signals are taken from the call on: one sent while the cluster starts
/// ends the demo as soon as it runs.
fn interrupted(listen: bool) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let signals = listen.then(|| {
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    });
    async move {
        let Some((mut int, mut term)) = signals else {
            return std::future::pending().await;
        };
        tokio::select! {
            Some(_) = async { int.as_mut()?.recv().await } => {}
            Some(_) = async { term.as_mut()?.recv().await } => {}
            else => std::future::pending().await,
        }
    }
}

/// Injects a panic into one correlator, to show its host restart it.
/// One of the scenario's jobs: a restarted correlator starts its episodes
/// afresh, and the demo's squatter should close under the correlator that
/// saw it open.
async fn crash_a_correlator(hosts: &[ActorRef<HostMsg>], jobs: &[String], at: f64) {
    for h in hosts {
        if let Some(s) = correlator::stats(h).await {
            if let Some(job) = s.jobs.iter().find(|j| jobs.iter().any(|x| x == j.as_str())) {
                say!("  t+{at:>5.1}s  ** crash injected into the correlator of job {job} **");
                let _ = h.cast(HostMsg::Crash(job.clone()));
                return;
            }
        }
    }
}

async fn leader_of(replicas: &BTreeMap<u64, ActorRef<ControllerMsg>>) -> Option<u64> {
    for r in replicas.values() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if r.cast(ControllerMsg::Status(tx, false)).is_err() {
            continue;
        }
        if let Ok(Ok(body)) = tokio::time::timeout(Duration::from_secs(1), rx).await {
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let leader = v["leader"].as_u64().unwrap_or(0);
            if leader != 0 && replicas.contains_key(&leader) {
                return Some(leader);
            }
        }
    }
    None
}

fn print_committed(
    e: &keel_consensus::state::FindingEntry,
    replica: u64,
    now: f64,
    t0: f64,
    labels: &[Label],
) {
    let f = &e.finding;
    let truth = labels
        .iter()
        .find(|l| l.kind == f.kind && l.locus() == f.locus())
        .map_or_else(
            || "matches nothing injected".to_string(),
            |l| {
                format!(
                    "injected at t+{:.1}s: committed {:.2} s after the onset{}",
                    l.onset - t0,
                    now - l.onset,
                    match l.cause {
                        Some(c) if c != f.cause => format!(", but the cause was {c}"),
                        _ => ", right cause".into(),
                    }
                )
            },
        );
    say!(
        "  t+{:>5.1}s  committed finding #{} (seen first on ctl-{replica}, reported by {}): {} {} cause {} {} confidence {:.2}\n             [{truth}]",
        now - t0,
        e.id,
        e.reported_by,
        f.kind.wire(),
        f.locus().map_or_else(|| "?".into(), |l| l.to_string()),
        f.cause.wire(),
        f.severity,
        f.confidence,
    );
    for line in &f.evidence {
        say!("             - {line}");
    }
}

async fn report(
    committed: &[Committed],
    labels: &[Label],
    t0: f64,
    killed: Option<u64>,
    hosts: &[ActorRef<HostMsg>],
) -> LiveReport {
    say!("\nsummary:");
    let mut result = LiveReport::default();
    let mut latencies = Vec::new();
    for l in labels {
        let hit = committed
            .iter()
            .find(|c| c.entry.finding.kind == l.kind && c.entry.finding.locus() == l.locus());
        match hit {
            Some(c) => {
                latencies.push(c.trace_ts - l.onset);
                if Some(c.entry.finding.cause) != l.cause {
                    result.wrong_cause += 1;
                }
                say!(
                    "  {} at t+{:.1}s: committed as #{} {:.2} s after the onset, cause {} ({})",
                    l.locus().map_or_else(|| "?".into(), |x| x.to_string()),
                    l.onset - t0,
                    c.id,
                    c.trace_ts - l.onset,
                    c.entry.finding.cause,
                    if Some(c.entry.finding.cause) == l.cause {
                        "right"
                    } else {
                        "wrong"
                    }
                );
            }
            None => say!(
                "  {} at t+{:.1}s: not committed",
                l.locus().map_or_else(|| "?".into(), |x| x.to_string()),
                l.onset - t0
            ),
        }
    }
    let false_alarms = committed
        .iter()
        .filter(|c| {
            !labels
                .iter()
                .any(|l| l.kind == c.entry.finding.kind && l.locus() == c.entry.finding.locus())
        })
        .count();
    say!(
        "  {} of {} injected episodes committed, {} findings matching nothing",
        latencies.len(),
        labels.len(),
        false_alarms
    );
    if let Some(k) = killed {
        say!("  controller ctl-{k} (the leader) was killed mid-run; the other two carried on");
    }
    let mut restarts = 0;
    for h in hosts {
        if let Some(s) = correlator::stats(h).await {
            restarts += s.correlator_restarts;
        }
    }
    say!("  correlators restarted by their supervisor: {restarts}");
    result.missed = labels.len() - latencies.len();
    result.false_alarms = false_alarms;
    result.latencies = latencies;
    result
}
