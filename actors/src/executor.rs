//! The executor actor: carries the controller's commands out through the
//! executors of `keel_adapters::executors` (Slurm, HAProxy, a webhook, the
//! NIC and the GPUs' leftover processes of its own node), one command at a
//! time.
//!
//! It dials every controller replica with its own `executor` certificate
//! and greets each, every second, with the actions it carries out and the
//! nodes it acts for; the leader sends it commands over that same
//! connection. The transport accepts a `command` only from a peer whose
//! certificate says `controller`. Policies name targets the way findings
//! do (`job/J`, `node/N`, `node/N/DEV`, `node/N/gpu/G`); this actor
//! translates them into what each system calls them (a Slurm job id, a
//! HAProxy `BACKEND/SERVER` from `[haproxy.replicas]`, an interface name, a
//! GPU index), and gives each command to the first section that carries the
//! action out and takes that form of target.

use crate::client::ControllerAddr;
pub use crate::executor_chaos::{ChaosConfig, ChaosNode};
use anyhow::{bail, Context, Result};
use keel_adapters::executors::{
    gpu_process::GpuProcessExecutor, haproxy::HaproxyExecutor, log::LogExecutor, nic::NicExecutor,
    slurm::SlurmExecutor, webhook::WebhookExecutor, ExecCommand, ExecError, Executor, Journal,
};
use keel_model::{Ack, Action, Command, Message, Query};
use keel_transport::{Backoff, Client, Credentials, Link, Options, Request};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Deserialize;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const GREET_EVERY: Duration = Duration::from_secs(1);
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// `keel executor --config FILE`, or `[executor]` in a sensor's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorConfig {
    /// `cert.pem`, `key.pem` and `ca.pem`; the role must be `executor`.
    pub credentials: PathBuf,
    #[serde(default)]
    pub controllers: Vec<ControllerAddr>,
    /// Where each executor keeps the keys it applied (one JSON file each),
    /// so that a restart between applying and acknowledging does not apply
    /// twice. In memory only when absent.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// The nodes whose node-local actions (NIC, drain) this executor takes;
    /// `["*"]` (the default) for any.
    #[serde(default = "any_node")]
    pub nodes: Vec<String>,
    #[serde(default)]
    pub slurm: Option<SlurmConfig>,
    #[serde(default)]
    pub haproxy: Option<HaproxyConfig>,
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    #[serde(default)]
    pub nic: Option<NicConfig>,
    #[serde(default)]
    pub gpu: Option<GpuConfig>,
    /// `notify` as a line in this executor's log.
    #[serde(default)]
    pub log: Option<LogConfig>,
    /// `inject_fault` (`keel chaos inject`) on the nodes it opens to chaos.
    #[serde(default)]
    pub chaos: Option<ChaosConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {}

fn any_node() -> Vec<String> {
    vec!["*".into()]
}

/// `reclaim_zombie`, `drain_node`, `resume_node`, `rebalance_ranks`, and
/// job discovery (`crate::discovery`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmConfig {
    /// How often `squeue` is read for jobs that appeared, changed or left
    /// (0: never; the prolog and epilog then report them alone).
    #[serde(default = "discover_every_s")]
    pub discover_every_s: u64,
    /// Ranks per node, numbered node by node, for discovered jobs; 0 leaves
    /// placement to the prolog.
    #[serde(default)]
    pub ranks_per_node: u32,
}

fn discover_every_s() -> u64 {
    10
}

impl Default for SlurmConfig {
    fn default() -> Self {
        SlurmConfig {
            discover_every_s: discover_every_s(),
            ranks_per_node: 0,
        }
    }
}

/// `remap_requests` through HAProxy's runtime API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaproxyConfig {
    /// The stats socket (`stats socket ... level admin`).
    pub socket: PathBuf,
    /// Job (or node) name -> `BACKEND/SERVER`: the replica that serves it.
    #[serde(default)]
    pub replicas: BTreeMap<String, String>,
}

/// `[webhook]`: the named actions POSTed to an HTTP endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://HOST[:PORT]/PATH`.
    pub url: String,
    pub actions: Vec<Action>,
    /// The body: `keel` (default), `alertmanager` (its `/api/v2/alerts`)
    /// or `slack` (an incoming webhook's `{"text"}`).
    #[serde(default)]
    pub format: keel_adapters::executors::webhook::Format,
    /// A file holding a bearer token sent with each POST.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// `{ username, password_file }`: HTTP basic authentication.
    #[serde(default)]
    pub basic_auth: Option<keel_adapters::http_client::BasicAuth>,
    /// `{ ca_file }`: a CA trusted besides the public roots.
    #[serde(default)]
    pub tls_config: Option<keel_adapters::http_client::TlsConfig>,
}

/// `retune_nic` on this node's interfaces.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicConfig {
    /// Act on the interfaces of this network namespace instead.
    #[serde(default)]
    pub netns: Option<String>,
}

/// `reclaim_zombie` of a leftover process on this node's GPUs
/// (`node/N/gpu/G`): the process of an ended job, or of none, that still
/// holds GPU `G`, killed after checking on the node that it holds the GPU
/// and belongs to no job Slurm still runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuConfig {
    /// The NVIDIA driver's `nvidia-smi` (default: found on `PATH`).
    #[serde(default = "nvidia_smi")]
    pub nvidia_smi: String,
    /// Seconds between SIGTERM and SIGKILL (default 10).
    #[serde(default = "grace_s")]
    pub grace_s: u64,
    /// Slurm's `scontrol`, asked for the state of each process's job
    /// (default: found on `PATH`).
    #[serde(default = "scontrol")]
    pub scontrol: String,
}

fn nvidia_smi() -> String {
    "nvidia-smi".into()
}

fn grace_s() -> u64 {
    10
}

fn scontrol() -> String {
    "scontrol".into()
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            nvidia_smi: nvidia_smi(),
            grace_s: grace_s(),
            scontrol: scontrol(),
        }
    }
}

impl ExecutorConfig {
    pub fn load(path: &Path) -> Result<ExecutorConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: ExecutorConfig =
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        cfg.check().with_context(|| format!("{}", path.display()))?;
        Ok(cfg)
    }

    pub fn check(&self) -> Result<()> {
        if self.controllers.is_empty() {
            bail!("no [[controllers]] configured");
        }
        if self.slurm.is_none()
            && self.haproxy.is_none()
            && self.webhook.is_none()
            && self.nic.is_none()
            && self.gpu.is_none()
            && self.log.is_none()
            && self.chaos.is_none()
        {
            bail!(
                "no executor configured: add [slurm], [haproxy], [webhook], [nic], [gpu], [log] or [chaos]"
            );
        }
        if let Some(c) = &self.chaos {
            c.check()?;
        }
        for (section, on) in [("nic", self.nic.is_some()), ("gpu", self.gpu.is_some())] {
            if on && self.nodes.iter().any(|n| n == "*") {
                bail!("[{section}] acts on this node only: set `nodes` to this node's name");
            }
        }
        Ok(())
    }
}

/// One configured executor and how it names targets.
struct Slot {
    exec: Box<dyn Executor + Send>,
    kind: Kind,
}

enum Kind {
    Slurm,
    Haproxy(BTreeMap<String, String>),
    /// Takes targets as the policy names them (webhook, log).
    AsIs,
    Nic,
    /// This node's GPUs; the nodes this executor acts for.
    Gpu(Vec<String>),
    /// Fault injections, on `node/N`.
    Chaos,
}

impl Kind {
    /// Whether this section takes targets of this form: a Slurm section
    /// never gets `node/N/gpu/G`, the GPU section never `job/J`.
    fn accepts(&self, target: &str) -> bool {
        let parts: Vec<&str> = target.split('/').collect();
        match self {
            Kind::Slurm => matches!(parts.as_slice(), ["job", _] | ["node", _]),
            Kind::Haproxy(_) => parts.len() == 2,
            Kind::Nic => matches!(parts.as_slice(), ["node", _, _]),
            Kind::Gpu(_) => matches!(parts.as_slice(), ["node", _, "gpu", _]),
            Kind::AsIs => true,
            Kind::Chaos => matches!(parts.as_slice(), ["node", _]),
        }
    }
}

fn journal(dir: &Option<PathBuf>, name: &str) -> Result<Journal> {
    Ok(match dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            Journal::open(d.join(format!("{name}.json")))?
        }
        None => Journal::in_memory(),
    })
}

fn slots(cfg: &ExecutorConfig) -> Result<Vec<Slot>> {
    let dir = &cfg.state_dir;
    let mut out = Vec::new();
    if cfg.slurm.is_some() {
        out.push(Slot {
            exec: Box::new(SlurmExecutor::new(journal(dir, "slurm")?)),
            kind: Kind::Slurm,
        });
    }
    if let Some(h) = &cfg.haproxy {
        out.push(Slot {
            exec: Box::new(HaproxyExecutor::new(&h.socket, journal(dir, "haproxy")?)),
            kind: Kind::Haproxy(h.replicas.clone()),
        });
    }
    if let Some(n) = &cfg.nic {
        let mut e = NicExecutor::new(journal(dir, "nic")?);
        if let Some(ns) = &n.netns {
            e = e.in_netns(ns)?;
        }
        out.push(Slot {
            exec: Box::new(e),
            kind: Kind::Nic,
        });
    }
    if let Some(g) = &cfg.gpu {
        let mut e = GpuProcessExecutor::new(journal(dir, "gpu")?);
        e.nvidia_smi = g.nvidia_smi.clone();
        e.slurm.scontrol = g.scontrol.clone();
        e.grace = Duration::from_secs(g.grace_s);
        out.push(Slot {
            exec: Box::new(e),
            kind: Kind::Gpu(cfg.nodes.clone()),
        });
    }
    if cfg.log.is_some() {
        out.push(Slot {
            exec: Box::new(LogExecutor::new(journal(dir, "log")?)),
            kind: Kind::AsIs,
        });
    }
    if let Some(c) = &cfg.chaos {
        if let Some(d) = dir {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        out.push(Slot {
            exec: Box::new(crate::executor_chaos::ChaosExecutor::new(
                c.clone(),
                dir.as_deref(),
            )),
            kind: Kind::Chaos,
        });
    }
    if let Some(w) = &cfg.webhook {
        out.push(Slot {
            exec: Box::new(WebhookExecutor::with(
                &w.url,
                &w.actions,
                journal(dir, "webhook")?,
                w.format,
                &keel_adapters::http_client::Access {
                    bearer_token_file: w.bearer_token_file.clone(),
                    basic_auth: w.basic_auth.clone(),
                    tls_config: w.tls_config.clone(),
                },
            )?),
            kind: Kind::AsIs,
        });
    }
    Ok(out)
}

/// The command as the executor's system names things.
fn translate(kind: &Kind, cmd: &Command) -> Result<ExecCommand, ExecError> {
    let mut c = ExecCommand::from(cmd);
    let parts: Vec<&str> = cmd.target.split('/').collect();
    match (kind, parts.as_slice()) {
        (Kind::Slurm, ["job", id]) | (Kind::Slurm, ["node", id]) => {
            c.target = id.to_string();
            slurm_params(cmd.action, &mut c)?;
            if cmd.action == Action::RebalanceRanks {
                // The policy names the node to leave out; Slurm's executor
                // calls it `node` and has no use for the rank.
                c.params.remove("rank");
                if let Some(n) = c.params.remove("exclude") {
                    c.params.insert("node".into(), n);
                }
            }
        }
        (Kind::Haproxy(replicas), ["job", name]) | (Kind::Haproxy(replicas), ["node", name]) => {
            c.target = replicas.get(*name).cloned().ok_or_else(|| {
                ExecError::invalid(
                    "target",
                    &cmd.target,
                    format!("no [haproxy.replicas] entry says which server serves {name:?}"),
                )
            })?;
            // A policy's `share` is the part of its usual traffic the replica
            // keeps: HAProxy's weight relative to the configured one.
            if let Some(share) = c.params.remove("share") {
                let pct = share
                    .parse::<f64>()
                    .ok()
                    .filter(|s| (0.0..=1.0).contains(s))
                    .ok_or_else(|| ExecError::invalid("share", &share, "expected 0..1"))?;
                c.params
                    .entry("weight".into())
                    .or_insert(format!("{:.0}%", pct * 100.0));
            }
        }
        (Kind::Nic, ["node", _, dev]) => {
            c.target = dev.to_string();
            // The policy language's names for what ethtool calls them.
            for (from, to) in [("channels", "combined"), ("coalesce_rx_usecs", "rx_usecs")] {
                if let Some(v) = c.params.remove(from) {
                    c.params.insert(to.into(), v);
                }
            }
        }
        (Kind::Gpu(nodes), ["node", n, "gpu", g]) => {
            if !nodes.iter().any(|m| m == n) {
                return Err(ExecError::invalid(
                    "target",
                    &cmd.target,
                    format!(
                        "node {n} is not this executor's (it acts for {}); its GPUs are not reclaimed from here",
                        nodes.join(",")
                    ),
                ));
            }
            c.target = g.to_string();
            for (name, value) in [("node", *n), ("gpu", *g)] {
                match c.params.get(name) {
                    Some(v) if v != value => {
                        return Err(ExecError::invalid(
                            name,
                            v,
                            format!("differs from the target {}", cmd.target),
                        ))
                    }
                    Some(_) => {}
                    None => {
                        c.params.insert(name.into(), value.into());
                    }
                }
            }
            match c.params.remove("signal") {
                Some(v) if v != "TERM" => {
                    return Err(ExecError::invalid(
                        "signal",
                        &v,
                        "the node's executor sends TERM, then KILL after [gpu] grace_s; no other signal",
                    ))
                }
                _ => {}
            }
        }
        (Kind::AsIs, _) | (Kind::Haproxy(_), [_, _]) | (Kind::Chaos, ["node", _]) => {}
        _ => {
            return Err(ExecError::invalid(
                "target",
                &cmd.target,
                "not a target this executor knows how to act on",
            ))
        }
    }
    Ok(c)
}

/// The policy parameters Slurm's executor has no use for, or refuses.
fn slurm_params(action: Action, c: &mut ExecCommand) -> Result<(), ExecError> {
    let take = |c: &mut ExecCommand, name: &str, ok: &[&str], why: &str| match c.params.remove(name)
    {
        Some(v) if !ok.contains(&v.as_str()) => Err(ExecError::invalid(name, &v, why)),
        _ => Ok(()),
    };
    match action {
        Action::ReclaimZombie => take(
            c,
            "signal",
            &["TERM"],
            "scancel ends a job with TERM, then KILL after Slurm's KillWait; no other signal",
        ),
        Action::RebalanceRanks => take(
            c,
            "strategy",
            &["requeue"],
            "Slurm can only requeue the job without the node",
        ),
        // Slurm keeps no reason for a resumed node.
        Action::ResumeNode => {
            c.params.remove("reason");
            Ok(())
        }
        _ => Ok(()),
    }
}

pub enum ExecutorMsg {
    Command(Command, RpcReplyPort<Ack>),
    /// Hold acknowledgements (commands wait, unapplied) or let them go:
    /// fault injection for the demo, like a slow or paused executor.
    Hold(bool),
    Stats(RpcReplyPort<ExecutorStats>),
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExecutorStats {
    pub commands: u64,
    pub applied: u64,
    pub already_done: u64,
    pub refused: u64,
    /// Commands waiting while paused.
    pub held: u64,
    /// Seconds since a controller replica last answered this executor's
    /// greeting (None: never): the leader knows it and sends it commands.
    pub greeted_ago_s: Option<f64>,
}

pub struct ExecutorActor;

pub struct ExecutorState {
    slots: Arc<Mutex<Vec<Slot>>>,
    held: Option<VecDeque<(Command, RpcReplyPort<Ack>)>>,
    stats: ExecutorStats,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// When a greeting was last answered (`std::time::Instant` as
    /// milliseconds since `started`; 0: never).
    greeted_ms: Arc<std::sync::atomic::AtomicU64>,
    started: std::time::Instant,
}

/// Starts an executor actor and its links to the controllers.
pub async fn start(
    cfg: ExecutorConfig,
) -> Result<(ActorRef<ExecutorMsg>, tokio::task::JoinHandle<()>)> {
    cfg.check()?;
    Actor::spawn(None, ExecutorActor, cfg)
        .await
        .context("starting the executor actor")
}

impl Actor for ExecutorActor {
    type Msg = ExecutorMsg;
    type State = ExecutorState;
    type Arguments = ExecutorConfig;

    async fn pre_start(
        &self,
        myself: ActorRef<ExecutorMsg>,
        cfg: ExecutorConfig,
    ) -> Result<ExecutorState, ActorProcessingErr> {
        let creds = Credentials::from_dir(&cfg.credentials)
            .with_context(|| format!("credentials in {}", cfg.credentials.display()))?;
        let slots = slots(&cfg)?;
        let mut actions: Vec<&str> = Action::ALL
            .iter()
            .filter(|a| slots.iter().any(|s| s.exec.handles(**a)))
            .map(|a| a.wire())
            .collect();
        actions.dedup();
        let greeting = BTreeMap::from([
            ("actions".to_string(), actions.join(",")),
            ("nodes".to_string(), cfg.nodes.join(",")),
        ]);
        tracing::info!(
            actions = actions.join(","),
            nodes = cfg.nodes.join(","),
            "executor ready"
        );
        let mut tasks = Vec::new();
        let mut links = Vec::new();
        let started = std::time::Instant::now();
        let greeted_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        for c in &cfg.controllers {
            let client =
                Client::new(&creds, Options::default())?.expecting(keel_model::Role::Controller);
            let (link, mut inbox) = Link::start(client, c.addr, &c.name, Backoff::default());
            let link = Arc::new(link);
            links.push(link.clone());
            let me = myself.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(req) = inbox.requests.recv().await {
                    tokio::spawn(answer(req, me.clone()));
                }
            }));
            let greeting = greeting.clone();
            let greeted = greeted_ms.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let q = Query {
                        id: 0,
                        topic: "executor".into(),
                        params: greeting.clone(),
                    };
                    match link.request(Message::Query(q), ASK_TIMEOUT).await {
                        // Taken: only the leader takes it (the others
                        // refuse), and the leader is who sends commands.
                        Ok(Message::QueryReply(r)) if r.ok => greeted.store(
                            (started.elapsed().as_millis() as u64).max(1),
                            std::sync::atomic::Ordering::Relaxed,
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "greeting not answered"),
                    }
                    tokio::time::sleep(GREET_EVERY).await;
                }
            }));
        }
        if let Some(s) = cfg.slurm.as_ref().filter(|s| s.discover_every_s > 0) {
            tasks.push(crate::discovery::spawn(
                Arc::new(links),
                Duration::from_secs(s.discover_every_s),
                s.ranks_per_node,
            ));
        }
        Ok(ExecutorState {
            slots: Arc::new(Mutex::new(slots)),
            held: None,
            stats: ExecutorStats::default(),
            tasks,
            greeted_ms,
            started,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ExecutorMsg>,
        state: &mut ExecutorState,
    ) -> Result<(), ActorProcessingErr> {
        for t in state.tasks.drain(..) {
            t.abort();
        }
        // Every section goes now: a fault injection still on is reverted.
        state
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<ExecutorMsg>,
        msg: ExecutorMsg,
        state: &mut ExecutorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ExecutorMsg::Command(cmd, reply) => match &mut state.held {
                Some(q) => {
                    tracing::info!(
                        key = cmd.idempotency_key,
                        action = %cmd.action,
                        "command held: paused"
                    );
                    q.push_back((cmd, reply))
                }
                None => carry_out(state, cmd, reply).await,
            },
            ExecutorMsg::Hold(true) => {
                state.held.get_or_insert_with(VecDeque::new);
            }
            ExecutorMsg::Hold(false) => {
                for (cmd, reply) in state.held.take().unwrap_or_default() {
                    carry_out(state, cmd, reply).await;
                }
            }
            ExecutorMsg::Stats(reply) => {
                let mut stats = state.stats.clone();
                stats.held = state.held.as_ref().map_or(0, |q| q.len() as u64);
                let at = state.greeted_ms.load(std::sync::atomic::Ordering::Relaxed);
                stats.greeted_ago_s =
                    (at > 0).then(|| state.started.elapsed().as_secs_f64() - at as f64 / 1000.0);
                let _ = reply.send(stats);
            }
        }
        Ok(())
    }
}

/// The section that takes a command: the first that carries the action
/// out and takes this form of target; else the first that carries it out,
/// whose refusal then says why.
fn pick(slots: &[Slot], action: Action, target: &str) -> Option<usize> {
    slots
        .iter()
        .position(|s| s.exec.handles(action) && s.kind.accepts(target))
        .or_else(|| slots.iter().position(|s| s.exec.handles(action)))
}

async fn carry_out(state: &mut ExecutorState, cmd: Command, reply: RpcReplyPort<Ack>) {
    state.stats.commands += 1;
    let slots = state.slots.clone();
    let c = cmd.clone();
    // Executors run programs and speak to sockets synchronously: off the
    // async workers, one command at a time.
    let ack = tokio::task::spawn_blocking(move || {
        let mut slots = slots.lock().unwrap_or_else(|p| p.into_inner());
        let Some(slot) = pick(&slots, c.action, &c.target).map(|i| &mut slots[i]) else {
            return Ack {
                id: c.id,
                ok: false,
                detail: format!("this executor does not carry out {}", c.action),
            };
        };
        let local = match translate(&slot.kind, &c) {
            Ok(l) => l,
            Err(e) => return e.ack(c.id),
        };
        let done = if c.rollback {
            slot.exec.rollback(&local)
        } else {
            slot.exec.apply(&local)
        };
        match done {
            Ok(a) => a.ack(c.id),
            Err(e) => e.ack(c.id),
        }
    })
    .await
    .unwrap_or_else(|e| Ack {
        id: cmd.id,
        ok: false,
        detail: format!("executor crashed carrying the command out: {e}"),
    });
    if !ack.ok {
        state.stats.refused += 1;
    } else if ack.detail.starts_with("already") {
        state.stats.already_done += 1;
    } else {
        state.stats.applied += 1;
    }
    tracing::info!(
        key = cmd.idempotency_key,
        action = %cmd.action,
        target = cmd.target,
        rollback = cmd.rollback,
        ok = ack.ok,
        detail = ack.detail,
        "command carried out"
    );
    let _ = reply.send(ack);
}

async fn answer(req: Request, me: ActorRef<ExecutorMsg>) {
    let reply = match &req.msg {
        Message::Command(cmd) => {
            let cmd = cmd.clone();
            match me
                .call(|r| ExecutorMsg::Command(cmd.clone(), r), None)
                .await
            {
                Ok(ractor::rpc::CallResult::Success(ack)) => Message::Ack(ack),
                _ => Message::Ack(Ack {
                    id: cmd.id,
                    ok: false,
                    detail: "executor stopping".into(),
                }),
            }
        }
        Message::Ping => Message::Pong,
        other => Message::Ack(Ack {
            id: 0,
            ok: false,
            detail: format!("an executor takes no {} here", other.kind()),
        }),
    };
    let _ = req.reply(reply).await;
}

/// Reads an executor's counters, for tests and the demo.
pub async fn stats(exec: &ActorRef<ExecutorMsg>) -> Option<ExecutorStats> {
    match exec.call(ExecutorMsg::Stats, None).await {
        Ok(ractor::rpc::CallResult::Success(s)) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
#[path = "executor_tests.rs"]
mod tests;
