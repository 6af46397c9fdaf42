//! Correlator hosts and correlator actors.
//!
//! A correlator host (`keel correlator`) greets every controller replica
//! twice a second and learns which jobs are its own (rendezvous hashing over
//! the hosts alive, `consensus::assign`) as changes since its last answer,
//! from one replica (`controller::routing`); it runs one correlator actor per
//! job, as supervised children, and routes the sensors' summaries and
//! readings to them. A correlator holds its job's topology, runs the
//! detection engine over the summaries and reports each finding to the
//! controller until a replica has committed it, and later its close once
//! the condition has cleared.

use crate::client::ControllerClient;
use crate::controller::routing::Delta;
use crate::report::deliver;

#[path = "correlator_assignment.rs"]
mod assignment;
use crate::mailbox::{forward, Done, DropOldest};
use anyhow::{Context, Result};
pub use assignment::MAX_ASSIGNED;
use keel_detect::Engine;
use keel_model::{
    Finding, JobRecord, Message, MetricSample, Name, Record, Summary, TelemetryBatch,
};
use keel_transport::{Credentials, Options, Server};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::HashMap;
use std::net::SocketAddr;

use std::sync::Arc;
use std::time::Duration;

const HELLO_EVERY: Duration = Duration::from_millis(500);
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Telemetry batches from sensors waiting for the host actor; when full
/// the oldest is dropped and counted (`HostStats::telemetry_dropped`).
pub const TELEMETRY_QUEUE: usize = 1024;
/// Inputs (batches of summaries or readings) waiting for one job's
/// correlator; when full the oldest is dropped and counted
/// (`HostStats::correlator_dropped`).
pub const CORRELATOR_QUEUE: usize = 256;

pub use crate::correlator_config::CorrelatorConfig;

pub enum HostMsg {
    /// What changed in the jobs the controller assigns to this host.
    Assigned(Delta<JobRecord>),
    Summaries(Vec<Summary>),
    Metrics(Vec<MetricSample>),
    /// A sensor's batch from the intake queue; `done` once handled, so
    /// that the mailbox holds one such batch at most.
    Telemetry(TelemetryBatch, Done),
    Stats(tokio::sync::oneshot::Sender<HostStats>),
    /// Fault injection for tests and the demo: the job's correlator panics.
    Crash(Name),
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HostStats {
    pub jobs: Vec<Name>,
    pub summaries: u64,
    pub unassigned_summaries: u64,
    pub correlator_restarts: u64,
    /// Assigned jobs refused because `MAX_ASSIGNED` were held.
    pub assigned_refused: u64,
    /// Sensor batches dropped (oldest first) at the intake queue.
    pub telemetry_dropped: u64,
    /// Inputs dropped (oldest first) in front of slow correlators.
    pub correlator_dropped: u64,
    /// Summaries and readings refused because they name another node than
    /// the sending sensor's certificate.
    pub refused_foreign: u64,
    /// Summaries refused by `keel_detect::edge::check_summary`.
    pub refused_implausible: u64,
    /// Finding reports dropped because `REPORTS_MAX` waited for the controller.
    pub reports_dropped: u64,
    /// Summaries refused because their rank is beyond the job's declared
    /// size.
    pub refused_undeclared: u64,
    /// Seconds since the controller last answered this host's greeting
    /// with its assignments (None: never): the host knows which jobs are
    /// its own.
    pub assigned_ago_s: Option<f64>,
}

/// What a host refused at intake, counted across connections.
#[derive(Debug, Default)]
pub struct Refused {
    pub foreign: std::sync::atomic::AtomicU64,
    pub implausible: std::sync::atomic::AtomicU64,
}

/// Keeps of `batch` what sensor `peer` may say, at `now` (the host's clock,
/// seconds; None: not checked against it): summaries and readings of its own node only (a sensor's
/// certificate names its node), and summaries that a sensor's edge could
/// have made. What is dropped is counted in `refused` and logged.
pub fn admit(peer: &str, batch: &mut TelemetryBatch, now: Option<f64>, refused: &Refused) {
    use std::sync::atomic::Ordering::Relaxed;
    let before = (batch.summaries.len(), batch.metrics.len());
    let mut implausible = 0u64;
    batch.summaries.retain(|s| {
        if s.node.as_str() != peer {
            return false;
        }
        match keel_detect::edge::check_summary(s, now) {
            Ok(()) => true,
            Err(why) => {
                if implausible == 0 {
                    tracing::warn!(%peer, job = %s.job, rank = s.rank, "summary refused: {why}");
                }
                implausible += 1;
                false
            }
        }
    });
    batch.metrics.retain(|m| m.node.as_str() == peer);
    let requests = batch.requests.len();
    batch
        .requests
        .retain(|r| r.node.as_ref().is_some_and(|n| n.as_str() == peer));
    let foreign = (before.0 - batch.summaries.len()) as u64 - implausible
        + (before.1 - batch.metrics.len()) as u64
        + (requests - batch.requests.len()) as u64;
    if foreign > 0 {
        tracing::warn!(%peer, refused = foreign, "telemetry about another node than the sensor's own refused");
        refused.foreign.fetch_add(foreign, Relaxed);
    }
    refused.implausible.fetch_add(implausible, Relaxed);
}

/// Whether `s` is about a rank below the job's declared size (the ranks
/// its record places, on any node). A job told without placement accepts
/// any rank: its size is not known yet, and the edge's `RANKS_PER_JOB_MAX`
/// bounds it. Which node holds a rank is not checked here: a placement
/// from Slurm numbers ranks block by block (`to_record`), which a cyclic
/// distribution would contradict.
fn rank_declared(job: &JobRecord, s: &Summary) -> bool {
    let size: usize = job.ranks.values().map(Vec::len).sum();
    size == 0 || (s.rank as usize) < size
}

pub struct HostActor;

pub struct HostState {
    name: String,
    /// The thresholds every correlator of this host runs with.
    detect: Arc<keel_detect::Config>,
    client: ControllerClient,
    correlators: HashMap<Name, (ActorRef<CorrelatorMsg>, JobRecord)>,
    /// Each correlator's input queue (see `CORRELATOR_QUEUE`).
    inputs: HashMap<Name, Arc<DropOldest<Input>>>,
    /// Inputs dropped by queues since closed.
    inputs_dropped: u64,
    /// The jobs assigned to this host, as the deltas so far say.
    assigned: HashMap<Name, JobRecord>,
    /// `assigned` changed since the correlators were last matched to it.
    unsettled: bool,
    by_id: HashMap<ActorId, Name>,
    stats: HostStats,
    /// Sensors' batches on their way to this actor.
    intake: Arc<DropOldest<TelemetryBatch>>,
    refused: Arc<Refused>,
    /// Finding reports its correlators dropped at `report::REPORTS_MAX`.
    reports_dropped: Arc<std::sync::atomic::AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// When the controller last answered with assignments.
    assigned_at: Option<std::time::Instant>,
}

/// What a started host gives back.
pub struct StartedHost {
    pub actor: ActorRef<HostMsg>,
    pub addr: SocketAddr,
    pub join: tokio::task::JoinHandle<()>,
}

pub async fn start(cfg: CorrelatorConfig) -> Result<StartedHost> {
    let creds = Credentials::from_dir(&cfg.credentials)
        .with_context(|| format!("credentials in {}", cfg.credentials.display()))?;
    let server = Server::bind(cfg.listen, &creds, Options::default())?;
    let addr = server.local_addr()?;
    let name = server.local_name.clone();
    let client = ControllerClient::new(&creds, &cfg.controllers)?;
    let advertise = cfg.advertise.unwrap_or(addr);
    let args = (
        name,
        client,
        server,
        advertise,
        cfg.check_clock,
        Arc::new(cfg.detect),
    );
    let (actor, join) = Actor::spawn(None, HostActor, args)
        .await
        .context("starting the correlator host")?;
    Ok(StartedHost { actor, addr, join })
}

impl Actor for HostActor {
    type Msg = HostMsg;
    type State = HostState;
    type Arguments = (
        String,
        ControllerClient,
        Server,
        SocketAddr,
        bool,
        Arc<keel_detect::Config>,
    );

    async fn pre_start(
        &self,
        myself: ActorRef<HostMsg>,
        (name, client, mut server, advertise, check_clock, detect): Self::Arguments,
    ) -> Result<HostState, ActorProcessingErr> {
        tracing::info!(host = %name, addr = %advertise, "correlator host listening");
        // Every connection's batches go into one drop-oldest queue; one
        // forwarder hands them to the actor one at a time.
        let intake = Arc::new(DropOldest::new(TELEMETRY_QUEUE));
        let forwarder = forward(intake.clone(), myself.clone(), HostMsg::Telemetry);
        let queue = intake.clone();
        let refused = Arc::new(Refused::default());
        let counted = refused.clone();
        let accept = tokio::spawn(async move {
            while let Some((_conn, mut inbox)) = server.accept().await {
                let queue = queue.clone();
                let refused = counted.clone();
                tokio::spawn(async move {
                    while let Some((peer, mut batch)) = inbox.telemetry.recv().await {
                        let now = check_clock.then(crate::sources::unix_now);
                        admit(&peer.name, &mut batch, now, &refused);
                        if !queue.push(batch) {
                            return;
                        }
                    }
                });
                tokio::spawn(async move {
                    while let Some(req) = inbox.requests.recv().await {
                        let detail = format!("a correlator host takes no {}", req.msg.kind());
                        let _ = req
                            .reply(Message::Ack(keel_model::Ack {
                                id: 0,
                                ok: false,
                                detail,
                            }))
                            .await;
                    }
                });
            }
        });
        let hello = assignment::greet(client.clone(), advertise, myself.clone());
        Ok(HostState {
            name,
            client,
            detect,
            correlators: HashMap::new(),
            inputs: HashMap::new(),
            inputs_dropped: 0,
            assigned: HashMap::new(),
            unsettled: false,
            by_id: HashMap::new(),
            stats: HostStats::default(),
            refused,
            reports_dropped: Arc::default(),
            intake,
            tasks: vec![accept, forwarder, hello],
            assigned_at: None,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<HostMsg>,
        state: &mut HostState,
    ) -> Result<(), ActorProcessingErr> {
        state.intake.close();
        for t in state.tasks.drain(..) {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<HostMsg>,
        msg: HostMsg,
        state: &mut HostState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HostMsg::Assigned(delta) => {
                state.assigned_at = Some(std::time::Instant::now());
                state.assigned(&myself, delta).await?
            }
            HostMsg::Summaries(summaries) => state.summaries(summaries),
            HostMsg::Metrics(metrics) => state.metrics(&metrics),
            HostMsg::Telemetry(batch, done) => {
                if !batch.metrics.is_empty() {
                    state.metrics(&batch.metrics);
                }
                if !batch.requests.is_empty() {
                    state.requests(batch.requests);
                }
                state.summaries(batch.summaries);
                let _ = done.send(());
            }
            HostMsg::Stats(reply) => {
                let mut s = state.stats.clone();
                s.telemetry_dropped = state.intake.dropped();
                s.refused_foreign = state
                    .refused
                    .foreign
                    .load(std::sync::atomic::Ordering::Relaxed);
                s.refused_implausible = state
                    .refused
                    .implausible
                    .load(std::sync::atomic::Ordering::Relaxed);
                s.reports_dropped = state
                    .reports_dropped
                    .load(std::sync::atomic::Ordering::Relaxed);
                s.correlator_dropped =
                    state.inputs_dropped + state.inputs.values().map(|q| q.dropped()).sum::<u64>();
                s.jobs = state.correlators.keys().cloned().collect();
                s.jobs.sort();
                s.assigned_ago_s = state.assigned_at.map(|t| t.elapsed().as_secs_f64());
                let _ = reply.send(s);
            }
            HostMsg::Crash(job) => {
                if let Some((c, _)) = state.correlators.get(&job) {
                    let _ = c.cast(CorrelatorMsg::Crash);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<HostMsg>,
        evt: SupervisionEvent,
        state: &mut HostState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            if let Some(job) = state.by_id.remove(&cell.get_id()) {
                state.stats.correlator_restarts += 1;
                tracing::warn!(
                    host = %state.name,
                    %job,
                    error = %err,
                    restarts = state.stats.correlator_restarts,
                    "correlator failed; restarting it"
                );
                if let Some((_, record)) = state.correlators.remove(&job) {
                    state.spawn(&myself, record).await?;
                }
            }
        }
        Ok(())
    }
}

impl HostState {
    /// Hands each job's summaries to its correlator.
    fn summaries(&mut self, summaries: Vec<Summary>) {
        // Once the job's size is known, ranks beyond it are refused.
        let mut by_job: HashMap<Name, Vec<Summary>> = HashMap::new();
        for s in summaries {
            by_job.entry(s.job.clone()).or_default().push(s);
        }
        for (job, mut batch) in by_job {
            match self.correlators.get(&job) {
                Some((_, record)) => {
                    let before = batch.len();
                    batch.retain(|s| rank_declared(record, s));
                    let undeclared = (before - batch.len()) as u64;
                    if undeclared > 0 {
                        if self.stats.refused_undeclared == 0 {
                            tracing::warn!(%job, refused = undeclared, "summaries for ranks beyond the job's declared size refused");
                        }
                        self.stats.refused_undeclared += undeclared;
                    }
                    self.stats.summaries += batch.len() as u64;
                    if let Some(q) = self.inputs.get(&job) {
                        q.push(Input::Summaries(batch));
                    }
                }
                None => self.stats.unassigned_summaries += batch.len() as u64,
            }
        }
    }

    /// Hands each job's correlator its serving events; events of a job no
    /// correlator here holds are dropped.
    fn requests(&self, requests: Vec<keel_model::RequestRecord>) {
        let mut by_job: HashMap<Name, Vec<keel_model::RequestRecord>> = HashMap::new();
        for r in requests {
            if let Some(j) = r.job.clone().filter(|j| self.correlators.contains_key(j)) {
                by_job.entry(j).or_default().push(r);
            }
        }
        for (job, batch) in by_job {
            if let Some(q) = self.inputs.get(&job) {
                q.push(Input::Requests(batch));
            }
        }
    }

    /// Hands each correlator the readings of its job's nodes.
    fn metrics(&self, metrics: &[MetricSample]) {
        for (name, (_, job)) in &self.correlators {
            let mine: Vec<MetricSample> = metrics
                .iter()
                .filter(|m| job.ranks.contains_key(&m.node))
                .cloned()
                .collect();
            if let (false, Some(q)) = (mine.is_empty(), self.inputs.get(name)) {
                q.push(Input::Metrics(mine));
            }
        }
    }

    fn close_inputs(&mut self, job: &Name) {
        if let Some(q) = self.inputs.remove(job) {
            q.close();
            self.inputs_dropped += q.dropped();
        }
        self.tasks.retain(|t| !t.is_finished());
    }

    async fn spawn(&mut self, myself: &ActorRef<HostMsg>, record: JobRecord) -> Result<()> {
        let job = record.job.clone();
        let args = CorrelatorArgs {
            record: record.clone(),
            client: self.client.clone(),
            reports_dropped: self.reports_dropped.clone(),
            detect: self.detect.clone(),
        };
        let (c, _) = Actor::spawn_linked(None, CorrelatorActor, args, myself.get_cell())
            .await
            .with_context(|| format!("starting the correlator of {job}"))?;
        tracing::info!(host = %self.name, %job, "correlator started");
        self.by_id.insert(c.get_id(), job.clone());
        // A restarted correlator gets a fresh queue; the old one's
        // forwarder ends with the old actor.
        self.close_inputs(&job);
        let inputs = Arc::new(DropOldest::new(CORRELATOR_QUEUE));
        self.tasks
            .push(forward(inputs.clone(), c.clone(), CorrelatorMsg::Input));
        self.inputs.insert(job.clone(), inputs);
        self.correlators.insert(job, (c, record));
        Ok(())
    }
}

pub enum CorrelatorMsg {
    Job(Box<JobRecord>),
    Summaries(Vec<Summary>),
    Metrics(Vec<MetricSample>),
    /// From the correlator's input queue; `done` once handled.
    Input(Input, Done),
    Crash,
}

/// What a correlator's input queue carries.
pub enum Input {
    Summaries(Vec<Summary>),
    Metrics(Vec<MetricSample>),
    Requests(Vec<keel_model::RequestRecord>),
}

pub struct CorrelatorArgs {
    pub record: JobRecord,
    pub client: ControllerClient,
    /// The host's count of reports dropped at [`crate::report::REPORTS_MAX`].
    pub reports_dropped: Arc<std::sync::atomic::AtomicU64>,
    pub detect: Arc<keel_detect::Config>,
}

pub struct CorrelatorActor;

pub struct CorrelatorState {
    engine: Engine,
    found: Vec<Finding>,
    /// To this correlator's one delivery task, which outlives it so that
    /// what was concluded before a stop or a crash still reaches the
    /// controller.
    reports: crate::report::Reports,
}

impl CorrelatorState {
    /// Queues what the last input concluded. Its findings go first: a
    /// finding concluded and cleared by the same input must be open before
    /// it can be closed.
    fn queue_reports(&mut self) {
        crate::report::queue(&mut self.engine, &mut self.found, &self.reports);
    }
}

impl Actor for CorrelatorActor {
    type Msg = CorrelatorMsg;
    type State = CorrelatorState;
    type Arguments = CorrelatorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<CorrelatorMsg>,
        args: CorrelatorArgs,
    ) -> Result<CorrelatorState, ActorProcessingErr> {
        let (reports, queue) = crate::report::channel(args.reports_dropped);
        tokio::spawn(deliver(args.client, queue));
        let mut state = CorrelatorState {
            engine: Engine::with_scope((*args.detect).clone(), keel_detect::Scope::Job),
            found: Vec::new(),
            reports,
        };
        let record = Record::Job(Box::new(args.record));
        state.engine.push(&record, &mut state.found);
        state.queue_reports();
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<CorrelatorMsg>,
        msg: CorrelatorMsg,
        state: &mut CorrelatorState,
    ) -> Result<(), ActorProcessingErr> {
        // Reports are queued after each input, not after the batch: an
        // episode may close and the next one open within one batch, and
        // the controller must see them in that order.
        match msg {
            CorrelatorMsg::Job(record) => {
                state.engine.push(&Record::Job(record), &mut state.found);
                state.queue_reports();
            }
            CorrelatorMsg::Summaries(batch) | CorrelatorMsg::Input(Input::Summaries(batch), _) => {
                for s in &batch {
                    state.engine.push_window(s, &mut state.found);
                    state.queue_reports();
                }
            }
            CorrelatorMsg::Metrics(batch) | CorrelatorMsg::Input(Input::Metrics(batch), _) => {
                for m in batch {
                    state.engine.push(&Record::Metric(m), &mut state.found);
                    state.queue_reports();
                }
            }
            CorrelatorMsg::Input(Input::Requests(batch), _) => {
                for r in batch {
                    state.engine.push(&Record::Request(r), &mut state.found);
                    state.queue_reports();
                }
            }
            CorrelatorMsg::Crash => panic!(
                "correlator crash injected on purpose (a supervision test): its host restarts it"
            ),
        }
        Ok(())
    }
}

/// Reads a host's counters, for tests and the demo.
pub async fn stats(host: &ActorRef<HostMsg>) -> Option<HostStats> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    host.cast(HostMsg::Stats(tx)).ok()?;
    rx.await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(node: &str, rank: u32) -> Summary {
        Summary {
            node: node.into(),
            job: "j1".into(),
            rank,
            window: 1,
            window_end: 1.0,
            count: 2,
            step_us: 30_000,
            dur_p50_us: 900,
            dur_p99_us: 1_000,
            offset_us: 0,
        }
    }

    #[test]
    fn ranks_beyond_the_declared_size_are_refused_once_it_is_known() {
        let mut job = JobRecord::state_only("j1", keel_model::JobState::Running, 0.0);
        assert!(
            rank_declared(&job, &summary("n1", 4_000_000)),
            "size unknown"
        );
        job.ranks.insert("n1".into(), vec![0, 1]);
        job.ranks.insert("n2".into(), vec![2, 3]);
        assert!(rank_declared(&job, &summary("n1", 3)));
        // A cyclic distribution puts rank 3 on n1: not refused for its node.
        assert!(rank_declared(&job, &summary("n2", 0)));
        assert!(!rank_declared(&job, &summary("n1", 4)));
        assert!(!rank_declared(&job, &summary("n1", u32::MAX)));
    }
}
