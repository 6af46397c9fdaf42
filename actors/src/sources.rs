//! Telemetry source actors, children of their sensor: each reads one source
//! (`adapters::sources`) and hands records to the sensor. A source that
//! fails is restarted by the sensor; the replay source resumes where it was.

use crate::sensor::SensorMsg;
use anyhow::{Context, Result};
use keel_adapters::TraceReader;
use keel_model::{Name, Record};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Deserialize;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One `[[source]]` table of a sensor's config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// A recorded trace (`spec/trace-format.md`), played in real time or
    /// faster; only the records of this sensor's node are taken.
    Replay {
        path: PathBuf,
        /// Trace seconds per wall second.
        #[serde(default = "one")]
        speed: f64,
        /// Unix time at which the trace's first moment is played (several
        /// sensors replaying one trace share it); default: at start.
        #[serde(default)]
        start_at: Option<f64>,
        /// The trace time played at `start_at`; default: the first record's.
        #[serde(default)]
        t0: Option<f64>,
    },
}

fn one() -> f64 {
    1.0
}

impl SourceConfig {
    pub fn describe(&self) -> String {
        match self {
            SourceConfig::Replay { path, speed, .. } => {
                format!("replay {} at {speed}x", path.display())
            }
        }
    }
}

/// What a source actor is started with.
pub struct SourceArgs {
    pub config: SourceConfig,
    pub node: Name,
    pub sensor: ActorRef<SensorMsg>,
    /// Records consumed so far, kept across restarts.
    pub progress: Arc<AtomicU64>,
}

pub enum SourceMsg {
    Poll,
}

pub struct SourceActor;

pub enum SourceState {
    Replay(Replay),
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
            SourceConfig::Replay {
                path,
                speed,
                start_at,
                t0,
            } => SourceState::Replay(Replay::open(
                path.clone(),
                *speed,
                *start_at,
                *t0,
                args.node.clone(),
                args.sensor.clone(),
                args.progress.clone(),
            )?),
        };
        let _ = myself.cast(SourceMsg::Poll);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SourceMsg>,
        msg: SourceMsg,
        state: &mut SourceState,
    ) -> Result<(), ActorProcessingErr> {
        match (msg, state) {
            (SourceMsg::Poll, SourceState::Replay(r)) => {
                if let Some(wait) = r.poll()? {
                    myself.send_after(wait, || SourceMsg::Poll);
                } else {
                    tracing::info!(node = %r.node, records = r.sent, "replay finished");
                }
            }
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
    reader: TraceReader<Box<dyn BufRead + Send>>,
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
        let src: Box<dyn BufRead + Send> = Box::new(std::io::BufReader::new(file));
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
            Record::Request(_) => false,
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
