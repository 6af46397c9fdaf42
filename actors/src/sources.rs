//! Telemetry source actors, children of their sensor: each reads one source
//! (`adapters::sources`) and hands records to the sensor. A source that
//! fails is restarted by the sensor; the replay source resumes where it was.

use crate::sensor::SensorMsg;
use anyhow::{Context, Result};
use keel_adapters::sources::push::PushConfig;
use keel_adapters::sources::replay::ReplayConfig;
use keel_adapters::{PushAddr, PushEndpoint, PushOptions, SourceCounters, Timed, TraceReader};
use keel_model::{Name, Record};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One `[[source]]` table of a sensor's config: the registry of sources
/// and their config types lives in `keel_adapters::sources`.
pub use keel_adapters::sources::SourceConfig;

/// What a source actor is started with.
pub struct SourceArgs {
    pub config: SourceConfig,
    /// Its place among the sensor's sources (for its counters).
    pub index: usize,
    pub node: Name,
    pub sensor: ActorRef<SensorMsg>,
    /// Records consumed so far, kept across restarts.
    pub progress: Arc<AtomicU64>,
    /// The sensor's bounded queue for what the push endpoint receives
    /// (`crate::sensor::PUSH_QUEUE`): any local process may send, so its
    /// batches never go to the mailbox unbounded.
    pub intake: Arc<crate::mailbox::DropOldest<(Vec<Record>, f64)>>,
}

pub enum SourceMsg {
    Poll,
    /// The push endpoint's receiver stopped: the source fails and is restarted.
    Failed(String),
}

pub struct SourceActor;

#[allow(clippy::large_enum_variant)] // one per source, never moved after start
pub enum SourceState {
    Replay(Replay),
    Poller(Poller),
    Push(tokio::task::JoinHandle<()>),
}

impl Actor for SourceActor {
    type Msg = SourceMsg;
    type State = SourceState;
    type Arguments = SourceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SourceMsg>,
        args: SourceArgs,
    ) -> Result<SourceState, ActorProcessingErr> {
        let state = match &args.config {
            SourceConfig::Replay(ReplayConfig {
                path,
                speed,
                start_at,
                t0,
            }) => SourceState::Replay(Replay::open(
                path.clone(),
                *speed,
                *start_at,
                *t0,
                args.node.clone(),
                args.sensor.clone(),
                args.progress.clone(),
            )?),
            SourceConfig::Push(PushConfig {
                listen,
                group,
                allow_unattributed,
            }) => {
                let addr: PushAddr = listen
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!("push source: {e}"))?;
                let options = PushOptions {
                    group: group.clone(),
                    allow_unattributed: *allow_unattributed,
                };
                let endpoint = PushEndpoint::bind_with(&addr, &options)
                    .await
                    .with_context(|| format!("push source: binding {addr}"))?;
                match addr {
                    PushAddr::Udp(_) => tracing::warn!(
                        %addr,
                        "push endpoint listening on UDP: unauthenticated, any local user may report for any job of this node"
                    ),
                    PushAddr::Unix(_) => tracing::info!(
                        %addr,
                        ?group,
                        allow_unattributed,
                        "push endpoint listening; each process may report only for its own Slurm job"
                    ),
                }
                SourceState::Push(tokio::spawn(receive(
                    endpoint,
                    args.sensor.clone(),
                    args.intake.clone(),
                    myself.clone(),
                )))
            }
            other => SourceState::Poller(Poller::new(other, &args)?),
        };
        let _ = myself.cast(SourceMsg::Poll);
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SourceMsg>,
        state: &mut SourceState,
    ) -> Result<(), ActorProcessingErr> {
        if let SourceState::Push(task) = state {
            task.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SourceMsg>,
        msg: SourceMsg,
        state: &mut SourceState,
    ) -> Result<(), ActorProcessingErr> {
        match (msg, state) {
            (SourceMsg::Failed(why), _) => return Err(anyhow::anyhow!(why).into()),
            (SourceMsg::Poll, SourceState::Replay(r)) => {
                if let Some(wait) = r.poll()? {
                    myself.send_after(wait, || SourceMsg::Poll);
                } else {
                    tracing::info!(node = %r.node, records = r.sent, "replay finished");
                }
            }
            (SourceMsg::Poll, SourceState::Poller(p)) => {
                if p.read.is_none() {
                    return Err(anyhow::anyhow!("{}: the reader was lost", p.node).into());
                }
                p.poll().await;
                myself.send_after(p.interval, || SourceMsg::Poll);
            }
            (SourceMsg::Poll, SourceState::Push(_)) => {}
        }
        Ok(())
    }
}

/// Unix time now, in seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Plays a trace against the wall clock.
pub struct Replay {
    reader: TraceReader<Box<dyn Read + Send>>,
    speed: f64,
    start_at: f64,
    t0: Option<f64>,
    node: Name,
    sensor: ActorRef<SensorMsg>,
    progress: Arc<AtomicU64>,
    /// Records to skip before sending (a restart resuming).
    skip: u64,
    held: Option<Record>,
    sent: u64,
}

impl Replay {
    fn open(
        path: PathBuf,
        speed: f64,
        start_at: Option<f64>,
        t0: Option<f64>,
        node: Name,
        sensor: ActorRef<SensorMsg>,
        progress: Arc<AtomicU64>,
    ) -> Result<Replay> {
        if !(speed.is_finite() && speed > 0.0) {
            anyhow::bail!("replay source: `speed` must be a positive number, not {speed}");
        }
        let file = std::fs::File::open(&path)
            .with_context(|| format!("replay source: opening {}", path.display()))?;
        let src: Box<dyn Read + Send> = Box::new(file);
        let skip = progress.load(Ordering::Relaxed);
        Ok(Replay {
            reader: TraceReader::new(src),
            speed,
            start_at: start_at.unwrap_or_else(unix_now),
            t0,
            node,
            sensor,
            progress,
            skip,
            held: None,
            sent: 0,
        })
    }

    /// The trace time being played now.
    fn clock(&self, t0: f64) -> f64 {
        t0 + (unix_now() - self.start_at) * self.speed
    }

    fn mine(&self, r: &Record) -> bool {
        match r {
            Record::Collective(c) => c.node == self.node,
            Record::Metric(m) => m.node == self.node,
            Record::Job(j) => j.ranks.contains_key(&self.node) || j.nodes.contains(&self.node),
            Record::Request(q) => q.node.as_ref() == Some(&self.node),
        }
    }

    /// Sends every record due; returns how long to wait for the next one,
    /// or `None` at the end of the trace.
    fn poll(&mut self) -> Result<Option<Duration>> {
        let mut batch = Vec::new();
        loop {
            let record = match self.held.take() {
                Some(r) => r,
                None => match self.reader.next() {
                    Some(r) => r,
                    None => {
                        self.send(batch);
                        return Ok(None);
                    }
                },
            };
            let t0 = *self.t0.get_or_insert(record.ts());
            if self.skip > 0 {
                self.skip -= 1;
                continue;
            }
            let now = self.clock(t0);
            if record.ts() > now {
                let wait = ((record.ts() - now) / self.speed).clamp(0.0, 0.05);
                self.held = Some(record);
                self.send(batch);
                return Ok(Some(Duration::from_secs_f64(wait.max(0.002))));
            }
            self.progress.fetch_add(1, Ordering::Relaxed);
            if self.mine(&record) {
                batch.push(record);
                if batch.len() >= 4096 {
                    self.send(std::mem::take(&mut batch));
                }
            }
        }
    }

    fn send(&mut self, batch: Vec<Record>) {
        if batch.is_empty() {
            return;
        }
        self.sent += batch.len() as u64;
        let t0 = self.t0.unwrap_or(0.0);
        let now = self.clock(t0);
        let _ = self.sensor.cast(SensorMsg::Records(batch, now));
    }
}

/// Hands every record pushed to the endpoint to the sensor, with what was
/// refused for who sent it; a receive error fails the source (its
/// supervisor binds the endpoint afresh).
async fn receive(
    mut endpoint: PushEndpoint,
    sensor: ActorRef<SensorMsg>,
    intake: Arc<crate::mailbox::DropOldest<(Vec<Record>, f64)>>,
    me: ActorRef<SourceMsg>,
) {
    let mut total = keel_adapters::RecvStats::default();
    loop {
        let mut records = Vec::new();
        match endpoint.recv(&mut records).await {
            Ok(stats) => {
                total.add(&stats);
                if stats.bad > 0 {
                    tracing::warn!(
                        bad = total.bad,
                        "undecodable datagrams on the push endpoint"
                    );
                }
                if (stats.refused() > 0 || stats.peers_evicted > 0)
                    && sensor.cast(SensorMsg::PushRefused(stats.clone())).is_err()
                {
                    return;
                }
                if !records.is_empty() && !intake.push((records, unix_now())) {
                    return;
                }
            }
            Err(e) => {
                let _ = me.cast(SourceMsg::Failed(format!("push endpoint: {e}")));
                return;
            }
        }
    }
}

/// A source read on a timer (`keel_adapters::Timed`): a scrape,
/// counters, NVML, NCCL Inspector's dump files.
pub struct Poller {
    interval: Duration,
    /// Lent to a blocking task during each reading.
    read: Option<Box<dyn Timed>>,
    index: usize,
    node: Name,
    sensor: ActorRef<SensorMsg>,
    failures: u64,
    counters: SourceCounters,
}

impl Poller {
    fn new(cfg: &SourceConfig, args: &SourceArgs) -> Result<Poller> {
        let (interval, read) = match cfg.timed(&args.node) {
            Some(opened) => opened.map_err(|e| anyhow::anyhow!(e))?,
            None => anyhow::bail!("{} is not read on a timer", cfg.describe()),
        };
        Ok(Poller {
            interval,
            read: Some(read),
            index: args.index,
            node: args.node.clone(),
            sensor: args.sensor.clone(),
            failures: 0,
            counters: SourceCounters::default(),
        })
    }

    /// One reading, off the actor's thread (a scrape blocks on the network).
    async fn poll(&mut self) {
        let now = unix_now();
        let Some(mut reader) = self.read.take() else {
            return;
        };
        let done = tokio::task::spawn_blocking(move || {
            let read = reader.read(now);
            (reader, read)
        })
        .await;
        let read = match done {
            Ok((reader, read)) => {
                let counters = reader.counters();
                self.read = Some(reader);
                if counters != self.counters {
                    self.counters = counters.clone();
                    let _ = self
                        .sensor
                        .cast(SensorMsg::SourceCounters(self.index, counters));
                }
                read
            }
            // The reader is lost with its task: the source fails on its
            // next poll and its supervisor opens it afresh.
            Err(e) => Err(format!("reader panicked: {e}")),
        };
        match read {
            Ok(records) => {
                self.failures = 0;
                if !records.is_empty() {
                    let _ = self.sensor.cast(SensorMsg::Records(records, now));
                }
            }
            Err(e) => {
                self.failures += 1;
                // Every failure of a run is logged once, then every 60th.
                if self.failures == 1 || self.failures.is_multiple_of(60) {
                    tracing::warn!(node = %self.node, failures = self.failures, error = %e, "reading failed");
                }
            }
        }
    }
}
