//! `keel bench soak`: three controller replicas for a long while, under
//! steady findings and the actions a policy makes of them, the leader
//! SIGKILLed every few minutes; memory and state size sampled into a CSV.
//! Not a test (an hour is the point); `deploy/soak/controller-soak.sh` runs
//! it and summarises the CSV.

use crate::bench_controller::{query, spawn_replica, start_with, Procs};
use crate::bench_scale_load::{ask, commit_all, params};
use crate::demo::TempDir;
use anyhow::{bail, Context, Result};
use keel_consensus::state::Command;
use keel_model::{Cause, Finding, FindingKind, JobRecord, JobState, Message, Role, Severity};
use keel_transport::{Client, Connection, Credentials, Options};
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The policy applied when none is given.
const DEFAULT_POLICY: &str = include_str!("../../deploy/policies/default.toml");
const ASK: Duration = Duration::from_secs(3);

/// `keel bench soak` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// How long to run, minutes
    #[arg(long, default_value_t = 60.0)]
    pub minutes: f64,
    /// SIGKILL the leader this often, seconds
    #[arg(long, default_value_t = 120.0)]
    pub kill_every_s: f64,
    /// A killed replica is started again after this long, seconds
    #[arg(long, default_value_t = 10.0)]
    pub down_s: f64,
    /// Sample memory and state this often, seconds
    #[arg(long, default_value_t = 10.0)]
    pub sample_every_s: f64,
    /// Straggler findings reported per second
    #[arg(long, default_value_t = 2.0)]
    pub findings_per_s: f64,
    /// A finding is closed (the straggler cleared) this long after it opened, seconds
    #[arg(long, default_value_t = 30.0)]
    pub close_after_s: f64,
    /// Running jobs the findings are about
    #[arg(long, default_value_t = 200)]
    pub jobs: usize,
    /// The CSV written: one row per replica per sample
    #[arg(long, default_value = "soak.csv")]
    pub out: PathBuf,
    /// Keep the cluster's files and logs here (default: a temporary folder, removed)
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The policy applied (default: deploy/policies/default.toml as built in)
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// TOML appended to each replica's config, e.g. "[retention]\nkeep_s = 600"
    #[arg(long)]
    pub extra_config: Option<String>,
}

/// A count in a `keel status` field: a number, or the length of a list or map.
fn count(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Array(a) => a.len().to_string(),
        serde_json::Value::Object(o) => o.len().to_string(),
        _ => String::new(),
    }
}

/// Bytes of the files under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A free UDP port below Linux's ephemeral range (32768-60999), so that a
/// killed replica restarted on it does not find it taken by a client socket.
fn low_port(salt: u64) -> Result<u16> {
    let mut x = u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt;
    for _ in 0..1000 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let port = 20_000 + ((z ^ (z >> 31)) % 12_000) as u16;
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port between 20000 and 32000")
}

/// Connections to the three replicas under one certificate, made again
/// after a replica is killed.
struct Links {
    client: Client,
    ports: Vec<u16>,
    conns: Vec<Option<Arc<Connection>>>,
}

impl Links {
    fn new(creds: &Path, ports: &[u16]) -> Result<Links> {
        Ok(Links {
            client: Client::new(&Credentials::from_dir(creds)?, Options::default())?,
            ports: ports.to_vec(),
            conns: vec![None; ports.len()],
        })
    }

    /// Asks replica `i`; a failure drops its connection.
    async fn ask(&mut self, i: usize, msg: Message) -> Result<String> {
        if self.conns[i].is_none() {
            let addr = SocketAddr::from(([127, 0, 0, 1], self.ports[i]));
            let (c, _) =
                tokio::time::timeout(ASK, self.client.connect(addr, &format!("c{}", i + 1)))
                    .await
                    .context("connecting")??;
            self.conns[i] = Some(Arc::new(c));
        }
        let conn = self.conns[i].clone().context("connection")?;
        let r = tokio::time::timeout(ASK, ask(&conn, msg)).await;
        match r {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(e)) => {
                self.conns[i] = None;
                Err(e)
            }
            Err(_) => {
                self.conns[i] = None;
                bail!("no answer within {ASK:?}")
            }
        }
    }

    /// Asks replicas in turn from `first` until one answers.
    async fn ask_any(&mut self, first: usize, msg: Message) -> Result<String> {
        let mut last = None;
        for k in 0..self.ports.len() {
            match self.ask((first + k) % self.ports.len(), msg.clone()).await {
                Ok(b) => return Ok(b),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no replica")))
    }
}

fn job(j: usize) -> JobRecord {
    let mut r = JobRecord::state_only(&format!("soak-{j:04}"), JobState::Running, 1.8e9);
    let node: keel_model::Name = format!("soak-node-{j:04}").as_str().into();
    r.nodes.push(node.clone());
    r.ranks.insert(node, (0..8).collect());
    r.gpus = (0..8).map(|k| (k, k)).collect();
    r.tp = Some(8);
    r
}

fn straggler(k: usize, jobs: usize) -> Finding {
    let r = job(k % jobs.max(1));
    let rank = ((k / jobs.max(1)) % 8) as u32;
    Finding {
        ts: keel_actors::sources::unix_now(),
        kind: FindingKind::TpStraggler,
        cause: [Cause::Gpu, Cause::Pcie, Cause::Network][k % 3],
        severity: Severity::Warning,
        confidence: 0.9,
        job: Some(r.job.clone()),
        node: r.nodes.first().cloned(),
        rank: Some(rank),
        gpu: Some(rank),
        device: None,
        evidence: vec![format!("soak straggler {k}")],
        basis: None,
        gpu_instance: None,
        related: Vec::new(),
    }
}

pub fn run(args: &SoakArgs) -> Result<()> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = TempDir::new("keel-soak")?;
            tmp.0.clone()
        }
    };
    let policy = match &args.policy {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?,
        None => DEFAULT_POLICY.to_string(),
    };
    let ports: Vec<u16> = (0..3).map(|i| low_port(i as u64)).collect::<Result<_>>()?;
    let extra = args
        .extra_config
        .as_deref()
        .map(|e| format!("{e}\n"))
        .unwrap_or_default();
    let mut procs: Procs = start_with(&dir, &ports, &extra, true)?;
    keel_transport::certs::issue(
        &dir.join("ca"),
        Role::Correlator,
        "soak-host",
        &dir.join("soak-host"),
        keel_transport::certs::Validity::days(30),
    )?;
    let mut csv = std::io::BufWriter::new(
        std::fs::File::create(&args.out).with_context(|| format!("{}", args.out.display()))?,
    );
    writeln!(
        csv,
        "t_s,replica,pid,rss_kib,cpu_s,leader,term,applied,digest,jobs,findings,open_findings,ledger,audit,disk_bytes,event"
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut op = Links::new(&dir.join("op"), &ports)?;
        let mut host = Links::new(&dir.join("soak-host"), &ports)?;
        let begin = Instant::now();
        // A leader, then the policy and the jobs.
        let leader = loop {
            if begin.elapsed() > Duration::from_secs(60) {
                bail!("no leader within 60 s");
            }
            if let Ok(b) = op.ask(0, query("status", BTreeMap::new())).await {
                let v: serde_json::Value = serde_json::from_str(&b)?;
                if let Some(l) = v["leader"].as_u64().filter(|&l| l > 0) {
                    break l as usize - 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut commands = vec![serde_json::to_string(&Command::ApplyPolicy {
            name: "default".into(),
            document: policy,
        })?];
        for j in 0..args.jobs {
            commands.push(serde_json::to_string(&Command::Job { record: job(j) })?);
        }
        op.ask(leader, query("status", BTreeMap::new())).await?;
        let conn = op.conns[leader].clone().context("leader connection")?;
        commit_all(&conn, commands).await?;

        let end = begin + Duration::from_secs_f64(args.minutes * 60.0);
        let every = Duration::from_secs_f64(1.0 / args.findings_per_s.max(1e-3));
        let kill_every = Duration::from_secs_f64(args.kill_every_s);
        let sample_every = Duration::from_secs_f64(args.sample_every_s);
        let (mut next_finding, mut next_kill, mut next_sample) =
            (Instant::now(), Instant::now() + kill_every, Instant::now());
        let mut down: Option<(usize, Instant)> = None;
        let mut open: VecDeque<(Instant, Finding)> = VecDeque::new();
        let (mut sent, mut failed, mut closed, mut kills, mut k) = (0u64, 0u64, 0u64, 0u64, 0usize);
        let mut event = String::new();
        while Instant::now() < end {
            let now = Instant::now();
            if now >= next_finding {
                next_finding += every;
                let f = straggler(k, args.jobs);
                k += 1;
                match host.ask_any(k % 3, Message::Finding(f.clone())).await {
                    Ok(_) => {
                        sent += 1;
                        open.push_back((now + Duration::from_secs_f64(args.close_after_s), f));
                    }
                    Err(_) => failed += 1,
                }
            }
            while open.front().is_some_and(|(at, _)| *at <= now) {
                let (_, f) = open.pop_front().context("queue")?;
                let p = params(&[("finding", serde_json::to_string(&f)?)]);
                if host.ask_any(k % 3, query("close_finding", p)).await.is_ok() {
                    closed += 1;
                } else {
                    failed += 1;
                }
            }
            if let Some((i, at)) = down {
                if now >= at {
                    procs.0[i] = Some(spawn_replica(&dir, i, true)?);
                    event = format!("restarted c{}", i + 1);
                    down = None;
                }
            }
            if now >= next_kill && down.is_none() {
                next_kill += kill_every;
                let mut leader = None;
                for i in 0..3 {
                    if let Ok(b) = op.ask(i, query("status", BTreeMap::new())).await {
                        let v: serde_json::Value = serde_json::from_str(&b).unwrap_or_default();
                        leader = v["leader"].as_u64().filter(|&l| l > 0).map(|l| l as usize - 1);
                        if leader.is_some() {
                            break;
                        }
                    }
                }
                if let Some(i) = leader {
                    if let Some(mut c) = procs.0[i].take() {
                        c.kill()?;
                        c.wait()?;
                        kills += 1;
                        event = format!("killed leader c{}", i + 1);
                        down = Some((i, now + Duration::from_secs_f64(args.down_s)));
                    }
                }
            }
            if now >= next_sample {
                next_sample += sample_every;
                let t = begin.elapsed().as_secs_f64();
                for i in 0..3 {
                    let pid = procs.0[i].as_ref().map(|c| c.id());
                    let (rss, cpu) = pid.map_or((String::new(), String::new()), |p| {
                        let (rss, _) = crate::bench_scale::rss_mib(p);
                        (format!("{:.0}", rss * 1024.0), format!("{:.2}", crate::bench_scale::cpu_s(p)))
                    });
                    let s: serde_json::Value = match pid {
                        Some(_) => op
                            .ask(i, query("status", BTreeMap::new()))
                            .await
                            .ok()
                            .and_then(|b| serde_json::from_str(&b).ok())
                            .unwrap_or_default(),
                        None => serde_json::Value::Null,
                    };
                    writeln!(
                        csv,
                        "{t:.1},c{},{},{rss},{cpu},{},{},{},{},{},{},{},{},{},{},{}",
                        i + 1,
                        pid.map_or(String::new(), |p| p.to_string()),
                        count(&s["leader"]),
                        count(&s["term"]),
                        count(&s["applied"]),
                        s["digest"].as_str().unwrap_or(""),
                        count(&s["jobs"]),
                        count(&s["findings"]),
                        count(&s["open_findings"]),
                        count(&s["ledger"]),
                        count(&s["audit"]),
                        disk_bytes(&dir.join(format!("data{}", i + 1))),
                        if i == 0 { event.as_str() } else { "" },
                    )?;
                }
                event.clear();
                csv.flush()?;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "soak: {:.1} min, {sent} findings committed, {closed} closed, {failed} requests failed, {kills} leader kills; samples in {}",
            begin.elapsed().as_secs_f64() / 60.0,
            args.out.display()
        );
        Ok(())
    })
}
