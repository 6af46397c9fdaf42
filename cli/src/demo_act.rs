//! The acting half of `keel demo`: the default policy
//! (`deploy/policies/default.toml`) is committed, an executor joins the
//! cluster, and the ledger's transitions are printed as they commit.
//!
//! The executor acts on real systems when this machine has them, and says
//! so when it does not: a `haproxy` it starts (one server per job of the
//! scenario, on loopback) for `remap_requests`, or, where none is
//! installed, a webhook receiver of the demo's own that records what it is
//! told (`demo_hook`: the loop closes through a real HTTP request, no traffic
//! moves); and, only with `--slurm`, a running Slurm for `reclaim_zombie`.
//! With Slurm, the demo submits a real job, makes it a
//! squatter (a simulated GPU of an extra node reports its memory full at 0%
//! utilisation for as long as the job is in `squeue`, after keel is told
//! the job's engine crashed); keel plans the reclaim, and the executor checks
//! the target at Slurm before `scancel`: Slurm still lists the job RUNNING
//! on another node than the simulated one, so the check refuses it and says
//! why in the ledger (never a cancel on a wrong target). Notifications go to the
//! executor's log.

use crate::live::issue;
use anyhow::{Context, Result};
use keel_actors::client::ControllerAddr;
use keel_actors::controller::ControllerMsg;
use keel_actors::executor::{self, ExecutorConfig, ExecutorMsg, HaproxyConfig, LogConfig};
use keel_actors::ractor::ActorRef;
use keel_actors::sensor::{self, SensorConfig};
use keel_actors::sources::{unix_now, SourceConfig};
use keel_adapters::executors::haproxy::RuntimeApi;
use keel_consensus::state::{AuditEvent, Command, Outcome, Proposal};
use keel_model::{JobState, Role};
use keel_transport::certs::Ca;
use std::collections::BTreeMap;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const POLICY: &str = include_str!("../../deploy/policies/default.toml");
/// The extra node whose GPU the Slurm squatter holds.
const SQUAT_NODE: &str = "gpu-s1";

macro_rules! say {
    ($($arg:tt)*) => { println!($($arg)*) };
}

/// What the demo acts with; stops what it started when dropped.
pub struct Acting {
    pub executor: ActorRef<ExecutorMsg>,
    haproxy: Option<(Child, PathBuf, Vec<TcpListener>)>,
    /// The stand-in router where there is no haproxy.
    hook: Option<crate::demo_hook::Receiver>,
    slurm_job: Option<u64>,
    stop: Arc<AtomicBool>,
    printed: u64,
    /// When the squatter's engine "crashes" (trace time).
    crash_at: Option<f64>,
    proposals: u64,
    /// The squatter once made, as a label the summary scores like the
    /// scenario's.
    pub injected: Option<keel_model::Label>,
}

impl Drop for Acting {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some((mut child, _, _)) = self.haproxy.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(id) = self.slurm_job {
            let _ = std::process::Command::new("scancel")
                .arg(id.to_string())
                .output();
        }
    }
}

pub async fn start(
    dir: &Path,
    ca: &Ca,
    controllers: &[ControllerAddr],
    replicas: &BTreeMap<u64, ActorRef<ControllerMsg>>,
    jobs: &[String],
    slurm: bool,
) -> Result<Acting> {
    let mut hook = None;
    let haproxy = match start_haproxy(dir, jobs) {
        Ok(h) => {
            say!("  router: a real haproxy, backend `llm`, one server per job (weight 100); remap_requests sets weights through its runtime API");
            say!("          (the replayed stragglers do not react to their weight: each ends when the scenario ends it, and verification waits for that)");
            Some(h)
        }
        Err(why) => {
            let r = crate::demo_hook::start().await?;
            say!("  router: {why}; remap_requests goes to a webhook receiver of the demo's own ({}), which records what keel tells it and moves no traffic", r.url);
            hook = Some(r);
            None
        }
    };
    let slurm_job = if !slurm {
        say!("  Slurm: not used (--slurm submits a real job to the Slurm this machine reaches, and makes it a GPU squatter keel must not cancel)");
        None
    } else {
        match submit_slurm_job() {
            Ok(id) => {
                say!(
                    "  Slurm: running here; submitted job {id} (sleep 600), which will squat a GPU"
                );
                Some(id)
            }
            Err(why) => {
                say!("  Slurm: {why}: no squatter to reclaim in this run (tests/setup/slurm-one-node.sh starts a one-node Slurm)");
                None
            }
        }
    };
    let cfg = ExecutorConfig {
        credentials: issue(dir, ca, Role::Executor, "exec-demo")?,
        controllers: controllers.to_vec(),
        state_dir: Some(dir.join("executor")),
        nodes: vec!["*".into()],
        slurm: slurm_job.map(|_| Default::default()),
        haproxy: haproxy.as_ref().map(|(_, socket, _)| HaproxyConfig {
            socket: socket.clone(),
            replicas: jobs
                .iter()
                .map(|j| (j.clone(), format!("llm/job-{j}")))
                .collect(),
        }),
        webhook: hook.as_ref().map(|r| keel_actors::executor::WebhookConfig {
            url: r.url.clone(),
            actions: vec![keel_model::Action::RemapRequests],
            format: Default::default(),
            bearer_token_file: None,
            basic_auth: None,
            tls_config: None,
        }),
        nic: None,
        gpu: None,
        log: Some(LogConfig {}),
        chaos: None,
    };
    let (executor, _) = executor::start(cfg).await?;
    let mut acting = Acting {
        executor,
        haproxy,
        hook,
        slurm_job,
        stop: Arc::new(AtomicBool::new(false)),
        printed: 0,
        crash_at: None,
        proposals: 0,
        injected: None,
    };
    acting
        .propose(
            replicas,
            Command::ApplyPolicy {
                name: "default".into(),
                document: POLICY.into(),
            },
        )
        .await
        .context("applying the default policy")?;
    say!("  policy: deploy/policies/default.toml committed as `default`");
    if let Some(id) = slurm_job {
        acting
            .start_squatter(dir, ca, controllers, replicas, id)
            .await?;
    }
    Ok(acting)
}

impl Acting {
    async fn propose(
        &mut self,
        replicas: &BTreeMap<u64, ActorRef<ControllerMsg>>,
        command: Command,
    ) -> Result<Outcome> {
        self.proposals += 1;
        let p = Proposal {
            client: format!("demo-{}", std::process::id()),
            seq: self.proposals,
            command,
        };
        for _ in 0..40 {
            for r in replicas.values() {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if r.cast(ControllerMsg::Propose(p.encode(), tx)).is_err() {
                    continue;
                }
                if let Ok(Ok(o)) = tokio::time::timeout(Duration::from_secs(1), rx).await {
                    return Ok(o);
                }
            }
        }
        anyhow::bail!("no replica committed it")
    }

    async fn start_squatter(
        &mut self,
        dir: &Path,
        ca: &Ca,
        controllers: &[ControllerAddr],
        replicas: &BTreeMap<u64, ActorRef<ControllerMsg>>,
        id: u64,
    ) -> Result<()> {
        let port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        let cfg = SensorConfig {
            node: SQUAT_NODE.into(),
            credentials: issue(dir, ca, Role::Sensor, SQUAT_NODE)?,
            controllers: controllers.to_vec(),
            window_len: None,
            sources: vec![SourceConfig::push(format!("udp://127.0.0.1:{port}"))],
            executor: None,
        };
        sensor::start(cfg, None).await?;
        let job = id.to_string();
        let record = crate::job::register(&job, &[format!("{SQUAT_NODE}=0")], Some("0=0"), None)?;
        self.propose(replicas, Command::Job { record }).await?;
        let stop = self.stop.clone();
        std::thread::spawn(move || gpu_of_the_squatter(port, id, stop));
        self.crash_at = Some(unix_now() + 6.0);
        Ok(())
    }

    /// Once per demo tick: the squatter's crash when due, then the
    /// ledger's new transitions.
    pub async fn tick(
        &mut self,
        replicas: &BTreeMap<u64, ActorRef<ControllerMsg>>,
        t0: f64,
        trace_now: f64,
    ) {
        if self.crash_at.is_some_and(|c| unix_now() >= c) {
            self.crash_at = None;
            if let Some(id) = self.slurm_job {
                let record = crate::job::record(&id.to_string(), JobState::Failed);
                if self
                    .propose(replicas, Command::Job { record })
                    .await
                    .is_ok()
                {
                    self.injected = Some(keel_model::Label {
                        kind: keel_model::FindingKind::GpuSquatter,
                        cause: Some(keel_model::Cause::Engine),
                        job: Some(id.to_string().as_str().into()),
                        node: Some(SQUAT_NODE.into()),
                        rank: None,
                        gpu: Some(0),
                        peer: None,
                        onset: trace_now,
                        end: trace_now + 600.0,
                    });
                    say!("  t+{:>5.1}s  ** the engine of Slurm job {id} crashed (keel is told FAILED); Slurm still lists it RUNNING: the reclaim will be checked at Slurm before any scancel **", trace_now - t0);
                }
            }
        }
        let after = self.printed;
        let Some(events) = read(replicas, move |s| {
            s.node
                .state
                .audit
                .iter()
                .filter(|e| e.index > after)
                .cloned()
                .collect::<Vec<AuditEvent>>()
        })
        .await
        else {
            return;
        };
        for e in events {
            self.printed = self.printed.max(e.index);
            say!(
                "  t+{:>5.1}s  action {} -> {}: {}",
                trace_now - t0,
                e.key,
                e.to.wire(),
                e.detail
            );
        }
    }

    /// The ledger at the end, and what the real systems say.
    pub async fn summary(&self, replicas: &BTreeMap<u64, ActorRef<ControllerMsg>>) {
        let ledger = read(replicas, |s| {
            s.node
                .state
                .ledger
                .values()
                .map(|e| {
                    format!(
                        "{} {} (dispatched {}x)",
                        e.key,
                        e.status.wire(),
                        e.dispatches
                    )
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        say!("  ledger: {} actions", ledger.len());
        for l in ledger {
            say!("    {l}");
        }
        if let Some((_, socket, _)) = &self.haproxy {
            if let Ok(rows) = RuntimeApi::new(socket).show_stat() {
                let weights: Vec<String> = rows
                    .iter()
                    .filter(|r| r.proxy == "llm" && r.server != "BACKEND")
                    .map(|r| {
                        format!(
                            "{} weight {}",
                            r.server,
                            r.weight.map_or("?".into(), |w| w.to_string())
                        )
                    })
                    .collect();
                say!("  haproxy says (show stat): {}", weights.join(", "));
            }
        }
        if let Some(r) = &self.hook {
            if let Ok(t) = r.told.lock() {
                say!(
                    "  webhook receiver (standing in for a router; no haproxy here, so no traffic moved) was told {} commands:",
                    t.commands.len() as u64 + t.dropped
                );
                for l in crate::demo_hook::lines(&t) {
                    say!("    {l}");
                }
            }
        }
        if let Some(id) = self.slurm_job {
            let out = std::process::Command::new("squeue")
                .args(["-h", "-j", &id.to_string(), "-o", "%T"])
                .output();
            let state = out
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            say!(
                "  squeue -j {id}: {}",
                if state.is_empty() { "gone" } else { &state }
            );
        }
        if let Some(s) = executor::stats(&self.executor).await {
            say!(
                "  executor: {} commands, {} carried out, {} answered `already done`, {} refused",
                s.commands,
                s.applied,
                s.already_done,
                s.refused
            );
        }
    }
}

/// Reads the state of the first replica that answers.
async fn read<T: Send + 'static>(
    replicas: &BTreeMap<u64, ActorRef<ControllerMsg>>,
    f: impl Fn(&mut keel_actors::controller::ControllerState) -> T + Send + Sync + Clone + 'static,
) -> Option<T> {
    for r in replicas.values() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let f = f.clone();
        let msg = ControllerMsg::Read(Box::new(move |s| {
            let _ = tx.send(f(s));
        }));
        if r.cast(msg).is_ok() {
            if let Ok(Ok(v)) = tokio::time::timeout(Duration::from_millis(500), rx).await {
                return Some(v);
            }
        }
    }
    None
}

fn start_haproxy(
    dir: &Path,
    jobs: &[String],
) -> Result<(Child, PathBuf, Vec<TcpListener>), String> {
    let socket = dir.join("haproxy.sock");
    let mut servers = Vec::new();
    let mut cfg = format!(
        "global\n    stats socket {} mode 600 level admin\n\
         defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n\
         backend llm\n    balance roundrobin\n",
        socket.display()
    );
    for j in jobs {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        cfg += &format!("    server job-{j} 127.0.0.1:{port} weight 100\n");
        servers.push(l);
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|_| "haproxy not installed (apt-get install haproxy)".to_string())?;
    for _ in 0..100 {
        if RuntimeApi::new(&socket).command("show info").is_ok() {
            return Ok((child, socket, servers));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("haproxy exited ({status})"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    Err("haproxy's stats socket did not answer".into())
}

fn submit_slurm_job() -> Result<u64, String> {
    let up = std::process::Command::new("squeue")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !up.is_ok_and(|s| s.success()) {
        return Err("not running here (squeue fails)".into());
    }
    let out = std::process::Command::new("sbatch")
        .args(["--parsable", "-J", "keel-demo-squatter", "-o", "/dev/null"])
        .args(["--chdir", "/tmp", "--wrap", "sleep 600"])
        .output()
        .map_err(|e| format!("sbatch: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .split(';')
        .next()
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| {
            format!(
                "sbatch refused the job: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
}

/// The simulated GPU the Slurm job holds: memory full at 0% utilisation
/// while the job is in `squeue`, released once it is gone.
fn gpu_of_the_squatter(port: u16, job: u64, stop: Arc<AtomicBool>) {
    let Ok(udp) = UdpSocket::bind("127.0.0.1:0") else {
        return;
    };
    let mut held = true;
    while !stop.load(Ordering::Relaxed) {
        if held {
            let out = std::process::Command::new("squeue")
                .args(["-h", "-j", &job.to_string(), "-o", "%i"])
                .output();
            held = out.is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty());
        }
        let (used, free) = if held { (77_000, 2_000) } else { (0, 79_000) };
        let now = unix_now();
        let line = |name: &str, v: u32| {
            format!(
                r#"{{"t":"metric","ts":{now:.3},"node":"{SQUAT_NODE}","name":"{name}","labels":{{"gpu":"0"}},"value":{v}}}"#
            )
        };
        let text = [
            line("DCGM_FI_DEV_FB_USED", used),
            line("DCGM_FI_DEV_FB_FREE", free),
            line("DCGM_FI_DEV_GPU_UTIL", 0),
        ]
        .join("\n");
        let _ = udp.send_to(text.as_bytes(), ("127.0.0.1", port));
        std::thread::sleep(Duration::from_secs(1));
    }
}
