//! A correlator host's side of the assignment: it greets every controller
//! replica, follows the changes of one (`controller::routing`), and
//! matches its correlators to the jobs it holds.

use super::{CorrelatorMsg, HostMsg, HostState, ASK_TIMEOUT, HELLO_EVERY};
use crate::client::ControllerClient;
use crate::controller::queries::params;
use crate::controller::routing::Delta;
use anyhow::Result;
use keel_model::{JobRecord, Name};
use ractor::ActorRef;
use std::net::SocketAddr;

/// Greetings in a row without an answer from the replica this host takes
/// its assignment from, before it takes it afresh from any replica.
const SOURCE_PATIENCE: u32 = 3;
/// Jobs one host holds at most; assignments beyond are refused and
/// counted (`HostStats::assigned_refused`).
pub const MAX_ASSIGNED: usize = 100_000;

/// Greets every replica every `HELLO_EVERY` and hands the host actor what
/// changed in its assignment.
pub(super) fn greet(
    greeter: ControllerClient,
    advertise: SocketAddr,
    me: ActorRef<HostMsg>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // The replica whose changes this host follows (every replica
        // hears the greeting; the others refuse to answer it), and the
        // version of its last answer.
        let mut source: Option<(u64, u64)> = None;
        let mut failures = 0u32;
        let mut tick = tokio::time::interval(HELLO_EVERY);
        loop {
            tick.tick().await;
            // Pages follow at once while the answer says there is more.
            loop {
                let mut asked = params([("addr", advertise.to_string())]);
                if let Some((epoch, since)) = source {
                    asked.insert("epoch".into(), epoch.to_string());
                    asked.insert("since".into(), since.to_string());
                }
                let answer = greeter
                    .ask_all("hello", asked, ASK_TIMEOUT)
                    .await
                    .and_then(|b| Ok(serde_json::from_str::<Delta<JobRecord>>(&b)?));
                match answer {
                    Ok(delta) => {
                        failures = 0;
                        source = Some((delta.epoch, delta.version));
                        let more = delta.more;
                        if me.cast(HostMsg::Assigned(delta)).is_err() {
                            return;
                        }
                        if !more {
                            break;
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        if failures >= SOURCE_PATIENCE && source.take().is_some() {
                            tracing::info!(error = %e, "assignment source silent; taking it afresh");
                        }
                        tracing::debug!(error = %e, "no assignment this round");
                        break;
                    }
                }
            }
        }
    })
}

impl HostState {
    /// Applies one delta of the assignment; once a whole answer is in
    /// (no more pages), starts, updates and stops correlators to match.
    pub(super) async fn assigned(
        &mut self,
        myself: &ActorRef<HostMsg>,
        delta: Delta<JobRecord>,
    ) -> Result<()> {
        let changed = delta.reset || !delta.changed.is_empty() || !delta.removed.is_empty();
        if delta.reset {
            self.assigned.clear();
        }
        for job in &delta.removed {
            self.assigned.remove(job);
        }
        for record in delta.changed {
            if self.assigned.len() >= MAX_ASSIGNED && !self.assigned.contains_key(&record.job) {
                self.stats.assigned_refused += 1;
                continue;
            }
            self.assigned.insert(record.job.clone(), record);
        }
        self.unsettled |= changed;
        if delta.more || !self.unsettled {
            return Ok(());
        }
        self.unsettled = false;
        self.settle(myself).await
    }

    /// Matches the correlators to the assignment.
    async fn settle(&mut self, myself: &ActorRef<HostMsg>) -> Result<()> {
        let gone: Vec<Name> = self
            .correlators
            .keys()
            .filter(|j| !self.assigned.contains_key(*j))
            .cloned()
            .collect();
        for job in gone {
            self.close_inputs(&job);
            if let Some((c, _)) = self.correlators.remove(&job) {
                self.by_id.remove(&c.get_id());
                c.stop(Some("job no longer assigned here".into()));
                tracing::info!(host = %self.name, %job, "correlator stopped");
            }
        }
        let new_or_changed: Vec<JobRecord> = self
            .assigned
            .values()
            .filter(|r| {
                self.correlators
                    .get(&r.job)
                    .is_none_or(|(_, known)| known != *r)
            })
            .cloned()
            .collect();
        for record in new_or_changed {
            match self.correlators.get_mut(&record.job) {
                Some((c, known)) => {
                    *known = record.clone();
                    let _ = c.cast(CorrelatorMsg::Job(Box::new(record)));
                }
                None => self.spawn(myself, record).await?,
            }
        }
        Ok(())
    }
}
