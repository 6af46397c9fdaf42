//! The sensor actor, one per node (or DPU): runs its sources as supervised
//! children, summarises collectives at the edge (`detect::edge`), and sends
//! each job's summaries, and the node's readings, to the correlator host
//! that holds the job. Raw collectives never leave the sensor; serving
//! events (`t:"request"`) go to their job's host as they are, bounded
//! (`REQUESTS_MAX` a flush), for `tail_latency` and
//! `ingress_burst_backlog`.
//!
//! It also watches its node's GPUs for the conditions that outlive jobs
//! (`gpu_squatter`, `idle_gpu_reservation`): a node-level detection engine
//! (`keel_detect::Scope::Node`) fed with every reading of the node and
//! with each job placed there (from its routes, cut to this node), which
//! keeps watching a GPU after the job that held it ended and its
//! correlator stopped, and reports each finding and its close to the
//! controller itself.

use crate::client::{ControllerAddr, ControllerClient};
use crate::report::deliver;
use crate::sources::{unix_now, SourceActor, SourceArgs, SourceConfig};
use anyhow::{Context, Result};
use keel_detect::edge::{EdgeAggregator, EdgeConfig};
use keel_detect::{Engine, Scope};
use keel_model::{Finding, JobRecord, MetricSample, Name, Record, Summary};
use keel_transport::{Backoff, Client, Credentials, Link, Options};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::controller::queries::params;
use crate::controller::routing::{Delta, Route};

/// How often summaries and readings are sent.
const FLUSH: Duration = Duration::from_millis(50);
/// How often the sensor asks where its jobs' correlators are.
const ROUTES_EVERY: Duration = Duration::from_millis(500);
/// Summaries kept for jobs with no correlator yet (oldest dropped first).
const UNROUTED_MAX: usize = 50_000;
/// Distinct metric series one flush (`FLUSH`) carries at most; a scrape
/// with more (a misconfigured exporter, label cardinality run away) has the
/// rest dropped and counted in `metrics_dropped`. A full dcgm-exporter and
/// node-exporter of an 8-GPU node export a few thousand.
pub const METRICS_MAX: usize = 65_536;
/// Serving events (`t:"request"`) one flush (`FLUSH`) carries at most, for
/// the correlators of their jobs (tail latency, arrival bursts); past it
/// the rest are dropped and counted in `requests_dropped`. Three events a
/// request: a node serving a few thousand requests a second stays under it.
pub const REQUESTS_MAX: usize = 16_384;
/// Jobs whose last record the sensor remembers having told the controller.
/// Past it, ended jobs are forgotten first, then all: telling a job again is
/// harmless (the controller finds it unchanged).
pub const JOBS_SENT_MAX: usize = 4096;
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Batches from the push endpoint waiting for the sensor; when full the
/// oldest is dropped and counted (`SensorStats::push_dropped`).
pub const PUSH_QUEUE: usize = 1024;

/// `keel sensor --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorConfig {
    /// The node this sensor watches (the name jobs and traces use).
    pub node: Name,
    /// `cert.pem`, `key.pem` and `ca.pem`; the role must be `sensor`.
    pub credentials: PathBuf,
    pub controllers: Vec<ControllerAddr>,
    /// Collectives per edge window (see `detect::edge`).
    #[serde(default)]
    pub window_len: Option<u64>,
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// Node-local actions (`retune_nic`) carried out in this process, under
    /// an executor certificate of its own.
    #[serde(default)]
    pub executor: Option<crate::executor::ExecutorConfig>,
}

impl SensorConfig {
    pub fn load(path: &Path) -> Result<SensorConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: SensorConfig =
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        if cfg.sources.is_empty() {
            anyhow::bail!("{}: no [[source]] configured", path.display());
        }
        Ok(cfg)
    }
}

pub enum SensorMsg {
    /// Records from a source, with the source's clock when it sent them.
    Records(Vec<Record>, f64),
    /// Records from the push endpoint's bounded queue; `done` once handled.
    Pushed((Vec<Record>, f64), crate::mailbox::Done),
    Flush,
    /// What changed in the routes of this node's jobs.
    Routes(Delta<Route>),
    /// What a push endpoint refused for who sent it, since its last report.
    PushRefused(keel_adapters::RecvStats),
    /// What source `.0` (its place in the config) refused or dropped
    /// since it was last started.
    SourceCounters(usize, keel_adapters::SourceCounters),
    /// Counters, for status and tests.
    Stats(tokio::sync::oneshot::Sender<SensorStats>),
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SensorStats {
    pub events: u64,
    pub summaries_sent: u64,
    pub unrouted_dropped: u64,
    pub metrics_sent: u64,
    pub source_restarts: u64,
    /// Jobs with ranks on this node that the controller routes now.
    pub jobs_routed: u64,
    /// Collectives and readings refused because they name another node:
    /// a sensor speaks for its own node only.
    pub foreign_dropped: u64,
    /// Collectives the edge refused: a stamp or duration no real
    /// collective has (`keel_detect::edge::EdgeStats::implausible`).
    pub edge_implausible: u64,
    /// Collectives dropped at the edge's bounds on jobs and ranks.
    pub edge_jobs_dropped: u64,
    pub edge_ranks_dropped: u64,
    /// Records refused on the push socket because they name a job other
    /// than their sending process's Slurm job (`foreign_job`).
    pub push_refused_foreign_job: u64,
    /// Push batches dropped (oldest first) at `PUSH_QUEUE`.
    pub push_dropped: u64,
    /// Metric series dropped at `METRICS_MAX` in one flush.
    pub metrics_dropped: u64,
    /// Serving events dropped: past `REQUESTS_MAX` in one flush, or for a
    /// job no correlator holds yet.
    pub requests_dropped: u64,
    pub requests_sent: u64,
    /// GPU finding reports dropped because `report::REPORTS_MAX` waited for
    /// the controller.
    pub reports_dropped: u64,
    /// Records naming a job refused on the push socket because their
    /// sender belongs to no Slurm job, or to one not known (`unattributed`).
    pub push_refused_unattributed: u64,
    /// Push senders forgotten early to keep the cache of their jobs bounded.
    pub push_peers_evicted: u64,
    /// Input the timed sources refused (did not parse, or out of range),
    /// over each source's current run: NCCL Inspector lines, for one.
    pub source_bad: u64,
    /// Input the timed sources dropped at their bounds.
    pub source_dropped: u64,
    /// The last input a source refused, named (`file:line: why`).
    pub source_last_error: Option<String>,
    /// Seconds since the controller last answered with this node's routes
    /// (None: never): the sensor knows each job's correlator.
    pub routes_ago_s: Option<f64>,
    /// Seconds since a source last failed and was restarted (None: never).
    pub source_failed_ago_s: Option<f64>,
}

pub struct SensorActor;

pub struct SensorState {
    cfg: SensorConfig,
    creds: Credentials,
    client: ControllerClient,
    edge: EdgeAggregator,
    out: Vec<Summary>,
    unrouted: VecDeque<Summary>,
    metrics: BTreeMap<String, MetricSample>,
    requests: Vec<keel_model::RequestRecord>,
    routes: HashMap<Name, Route>,
    /// When the controller last answered with routes, and when a source
    /// last failed.
    routes_at: Option<std::time::Instant>,
    source_failed_at: Option<std::time::Instant>,
    links: HashMap<String, Arc<Link>>,
    jobs_sent: HashMap<Name, JobRecord>,
    sources: HashMap<ActorId, (usize, Arc<AtomicU64>)>,
    /// Each timed source's counters, by its place in the config.
    source_counters: BTreeMap<usize, keel_adapters::SourceCounters>,
    /// The sources' clock at the last batch, and when that was.
    clock: Option<(f64, Instant)>,
    stats: SensorStats,
    routes_task: Option<tokio::task::JoinHandle<()>>,
    /// The push endpoint's batches on their way here (`PUSH_QUEUE`).
    intake: Arc<crate::mailbox::DropOldest<(Vec<Record>, f64)>>,
    intake_task: Option<tokio::task::JoinHandle<()>>,
    /// The node's GPUs, watched until each condition clears.
    gpu_watch: Engine,
    found: Vec<Finding>,
    /// To the one task that delivers the watch's findings, in order.
    reports: crate::report::Reports,
}

impl Actor for SensorActor {
    type Msg = SensorMsg;
    type State = SensorState;
    type Arguments = SensorConfig;

    async fn pre_start(
        &self,
        myself: ActorRef<SensorMsg>,
        cfg: SensorConfig,
    ) -> Result<SensorState, ActorProcessingErr> {
        let creds = Credentials::from_dir(&cfg.credentials)
            .with_context(|| format!("credentials in {}", cfg.credentials.display()))?;
        let client = ControllerClient::new(&creds, &cfg.controllers)?;
        let mut edge_cfg = EdgeConfig::default();
        if let Some(w) = cfg.window_len {
            edge_cfg.window_len = w.max(1);
        }
        let (reports, queue) = crate::report::channel(Arc::default());
        tokio::spawn(deliver(client.clone(), queue));
        let mut state = SensorState {
            gpu_watch: Engine::with_scope(keel_detect::Config::default(), Scope::Node),
            found: Vec::new(),
            reports,
            edge: EdgeAggregator::new(edge_cfg),
            creds,
            client: client.clone(),
            out: Vec::new(),
            unrouted: VecDeque::new(),
            metrics: BTreeMap::new(),
            requests: Vec::new(),
            routes: HashMap::new(),
            routes_at: None,
            source_failed_at: None,
            links: HashMap::new(),
            jobs_sent: HashMap::new(),
            sources: HashMap::new(),
            source_counters: BTreeMap::new(),
            clock: None,
            stats: SensorStats::default(),
            routes_task: None,
            intake: Arc::new(crate::mailbox::DropOldest::new(PUSH_QUEUE)),
            intake_task: None,
            cfg,
        };
        state.intake_task = Some(crate::mailbox::forward(
            state.intake.clone(),
            myself.clone(),
            SensorMsg::Pushed,
        ));
        for i in 0..state.cfg.sources.len() {
            let progress = Arc::new(AtomicU64::new(0));
            start_source(&myself, &mut state, i, progress).await?;
        }
        let node = state.cfg.node.to_string();
        let me = myself.clone();
        state.routes_task = Some(tokio::spawn(async move {
            // The last answer's (epoch, version): the next one holds only
            // what changed since, or everything from a replica that does
            // not know it (a first question passes epoch 0).
            let mut at = (0u64, 0u64);
            let mut tick = tokio::time::interval(ROUTES_EVERY);
            loop {
                tick.tick().await;
                loop {
                    let asked = params([
                        ("node", node.clone()),
                        ("epoch", at.0.to_string()),
                        ("since", at.1.to_string()),
                    ]);
                    let asked = client.ask("routes", asked, ASK_TIMEOUT).await;
                    match asked.and_then(|b| Ok(serde_json::from_str::<Delta<Route>>(&b)?)) {
                        Ok(delta) => {
                            at = (delta.epoch, delta.version);
                            let more = delta.more;
                            if me.cast(SensorMsg::Routes(delta)).is_err() {
                                return;
                            }
                            if !more {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "routes not refreshed");
                            break;
                        }
                    }
                }
            }
        }));
        myself.send_interval(FLUSH, || SensorMsg::Flush);
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SensorMsg>,
        state: &mut SensorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.routes_task.take() {
            t.abort();
        }
        state.intake.close();
        if let Some(t) = state.intake_task.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<SensorMsg>,
        msg: SensorMsg,
        state: &mut SensorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SensorMsg::Pushed((records, clock), done) => {
                state.clock = Some((clock, Instant::now()));
                for r in &records {
                    state.take(r, clock);
                }
                let _ = done.send(());
            }
            SensorMsg::Records(records, clock) => {
                state.clock = Some((clock, Instant::now()));
                for r in &records {
                    state.take(r, clock);
                }
            }
            SensorMsg::Flush => state.flush(),
            SensorMsg::PushRefused(r) => {
                state.stats.push_refused_foreign_job += r.refused_foreign_job;
                state.stats.push_refused_unattributed += r.refused_unattributed;
                state.stats.push_peers_evicted += r.peers_evicted;
            }
            SensorMsg::Routes(delta) => {
                state.routes_at = Some(std::time::Instant::now());
                if delta.reset {
                    state.routes.clear();
                }
                for job in &delta.removed {
                    state.routes.remove(job);
                }
                for mut r in delta.changed {
                    if let Some(record) = r.record.take() {
                        state.watch(&Record::Job(Box::new(record)));
                    }
                    state.routes.insert(r.job.clone(), r);
                }
            }
            SensorMsg::SourceCounters(i, c) => {
                if c.last_error.is_some() {
                    state.stats.source_last_error = c.last_error.clone();
                }
                state.source_counters.insert(i, c);
            }
            SensorMsg::Stats(reply) => {
                let mut s = state.stats.clone();
                for c in state.source_counters.values() {
                    s.source_bad += c.bad;
                    s.source_dropped += c.dropped;
                }
                s.events = state.edge.stats.events;
                s.jobs_routed = state.routes.len() as u64;
                s.routes_ago_s = state.routes_at.map(|t| t.elapsed().as_secs_f64());
                s.source_failed_ago_s = state.source_failed_at.map(|t| t.elapsed().as_secs_f64());
                s.edge_implausible = state.edge.stats.implausible;
                s.edge_jobs_dropped = state.edge.stats.jobs_dropped;
                s.edge_ranks_dropped = state.edge.stats.ranks_dropped;
                s.push_dropped = state.intake.dropped();
                s.reports_dropped = state
                    .reports
                    .dropped
                    .load(std::sync::atomic::Ordering::Relaxed);
                let _ = reply.send(s);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SensorMsg>,
        evt: SupervisionEvent,
        state: &mut SensorState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            if let Some((i, progress)) = state.sources.remove(&cell.get_id()) {
                state.stats.source_restarts += 1;
                state.source_failed_at = Some(std::time::Instant::now());
                tracing::warn!(
                    node = %state.cfg.node,
                    source = %state.cfg.sources[i].describe(),
                    error = %err,
                    restarts = state.stats.source_restarts,
                    "source failed; restarting it"
                );
                // A source that cannot start at all (a missing file) is not
                // retried in a tight loop: the next try waits a little.
                tokio::time::sleep(Duration::from_millis(200)).await;
                start_source(&myself, state, i, progress).await?;
            }
        }
        Ok(())
    }
}

async fn start_source(
    myself: &ActorRef<SensorMsg>,
    state: &mut SensorState,
    i: usize,
    progress: Arc<AtomicU64>,
) -> Result<()> {
    let args = SourceArgs {
        config: state.cfg.sources[i].clone(),
        index: i,
        node: state.cfg.node.clone(),
        sensor: myself.clone(),
        progress: progress.clone(),
        intake: state.intake.clone(),
    };
    let (actor, _) = Actor::spawn_linked(None, SourceActor, args, myself.get_cell())
        .await
        .with_context(|| format!("starting source {}", state.cfg.sources[i].describe()))?;
    state.sources.insert(actor.get_id(), (i, progress));
    Ok(())
}

impl SensorState {
    fn take(&mut self, r: &Record, clock: f64) {
        let node = match r {
            Record::Collective(c) => Some(&c.node),
            Record::Metric(m) => Some(&m.node),
            Record::Request(q) => q.node.as_ref(),
            Record::Job(_) => None,
        };
        if node.is_some_and(|n| *n != self.cfg.node) {
            if self.stats.foreign_dropped == 0 {
                tracing::warn!(node = %self.cfg.node, other = ?node, "a record about another node refused: a sensor speaks for its own node only");
            }
            self.stats.foreign_dropped += 1;
            return;
        }
        match r {
            Record::Collective(c) => {
                self.edge.push(c, clock, &mut self.out);
                // When the job last arrived at a collective (a stalled job).
                self.watch(r);
            }
            Record::Metric(m) => {
                let key = format!("{}{:?}", m.name.wire(), m.labels);
                if self.metrics.len() >= METRICS_MAX && !self.metrics.contains_key(&key) {
                    self.stats.metrics_dropped += 1;
                } else {
                    self.metrics.insert(key, m.clone());
                }
                self.watch(r);
            }
            Record::Job(j) => {
                self.job_seen(j);
                self.watch(r);
            }
            Record::Request(q) => {
                if self.requests.len() >= REQUESTS_MAX || q.job.is_none() {
                    self.stats.requests_dropped += 1;
                } else {
                    self.requests.push(q.clone());
                }
            }
        }
    }

    /// Feeds the node's GPU watch; what it concluded or cleared goes to
    /// the controller, in that order.
    fn watch(&mut self, r: &Record) {
        self.gpu_watch.push(r, &mut self.found);
        crate::report::queue(&mut self.gpu_watch, &mut self.found, &self.reports);
    }

    /// Tells the controller about a job the first time it is seen and
    /// whenever it changes (one sensor of many suffices; the rest find it
    /// unchanged).
    fn job_seen(&mut self, j: &JobRecord) {
        if self.jobs_sent.get(&j.job) == Some(j) {
            return;
        }
        if j.state.is_finished() {
            self.edge.end_job(&j.job);
        }
        if self.jobs_sent.len() >= JOBS_SENT_MAX {
            self.jobs_sent.retain(|_, r| !r.state.is_finished());
            if self.jobs_sent.len() >= JOBS_SENT_MAX {
                self.jobs_sent.clear();
            }
        }
        self.jobs_sent.insert(j.job.clone(), j.clone());
        let client = self.client.clone();
        let record = serde_json::to_string(j).unwrap_or_default();
        let job = j.job.clone();
        tokio::spawn(async move {
            for attempt in 0..10u32 {
                match client
                    .ask("job", params([("record", record.clone())]), ASK_TIMEOUT)
                    .await
                {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::warn!(%job, attempt, error = %e, "job not registered yet");
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
        });
    }

    fn link(&mut self, host: &str, addr: std::net::SocketAddr) -> Option<Arc<Link>> {
        if let Some(l) = self.links.get(host) {
            return Some(l.clone());
        }
        let client = Client::new(&self.creds, Options::default())
            .ok()?
            .expecting(keel_model::Role::Correlator);
        let (link, _inbox) = Link::start(client, addr, host, Backoff::default());
        let link = Arc::new(link);
        self.links.insert(host.to_string(), link.clone());
        Some(link)
    }

    fn flush(&mut self) {
        if let Some((clock, at)) = self.clock {
            let now = clock + at.elapsed().as_secs_f64();
            self.edge.flush_idle(now, &mut self.out);
        } else {
            self.edge.flush_idle(unix_now(), &mut self.out);
        }
        let mut by_host: HashMap<String, (std::net::SocketAddr, Vec<Summary>)> = HashMap::new();
        let pending: Vec<Summary> = self.unrouted.drain(..).chain(self.out.drain(..)).collect();
        for s in pending {
            match self.routes.get(&s.job) {
                Some(Route {
                    host: Some(h),
                    addr: Some(a),
                    ..
                }) => by_host
                    .entry(h.clone())
                    .or_insert((*a, Vec::new()))
                    .1
                    .push(s),
                _ => {
                    if self.unrouted.len() >= UNROUTED_MAX {
                        self.unrouted.pop_front();
                        self.stats.unrouted_dropped += 1;
                    }
                    self.unrouted.push_back(s);
                }
            }
        }
        // Readings go to every host that holds a job on this node.
        let metrics: Vec<MetricSample> = std::mem::take(&mut self.metrics).into_values().collect();
        if !metrics.is_empty() {
            for r in self.routes.values() {
                if let (Some(h), Some(a)) = (&r.host, r.addr) {
                    by_host.entry(h.clone()).or_insert((a, Vec::new()));
                }
            }
        }
        // Serving events go to their job's host; none waits for a route.
        let mut requests: HashMap<String, Vec<keel_model::RequestRecord>> = HashMap::new();
        for q in self.requests.drain(..) {
            let route = q.job.as_ref().and_then(|j| self.routes.get(j));
            match route {
                Some(Route {
                    host: Some(h),
                    addr: Some(a),
                    ..
                }) => {
                    by_host.entry(h.clone()).or_insert((*a, Vec::new()));
                    requests.entry(h.clone()).or_default().push(q);
                }
                _ => self.stats.requests_dropped += 1,
            }
        }
        for (host, (addr, summaries)) in by_host {
            let Some(link) = self.link(&host, addr) else {
                continue;
            };
            self.stats.summaries_sent += summaries.len() as u64;
            link.telemetry().send_all(summaries);
            if !metrics.is_empty() {
                self.stats.metrics_sent += metrics.len() as u64;
                link.telemetry().send_metrics(metrics.iter().cloned());
            }
            if let Some(q) = requests.remove(&host) {
                self.stats.requests_sent += q.len() as u64;
                link.telemetry().send_requests(q);
            }
        }
        let live: std::collections::HashSet<&String> = self
            .routes
            .values()
            .filter_map(|r| r.host.as_ref())
            .collect();
        self.links.retain(|h, _| live.contains(h));
    }
}

/// Starts a sensor actor; returns it with its join handle.
pub async fn start(
    cfg: SensorConfig,
    supervisor: Option<ractor::ActorCell>,
) -> Result<(ActorRef<SensorMsg>, tokio::task::JoinHandle<()>)> {
    Credentials::from_dir(&cfg.credentials)
        .with_context(|| format!("credentials in {}", cfg.credentials.display()))?;
    let r = match supervisor {
        Some(s) => Actor::spawn_linked(None, SensorActor, cfg, s).await,
        None => Actor::spawn(None, SensorActor, cfg).await,
    };
    r.context("starting the sensor actor")
}

/// Reads one counter from a sensor, for tests and the demo.
pub async fn stats(sensor: &ActorRef<SensorMsg>) -> Option<SensorStats> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    sensor.cast(SensorMsg::Stats(tx)).ok()?;
    rx.await.ok()
}
