//! The replicated state machine: what every controller replica holds, and
//! the only way it changes (`State::apply` of a committed `Proposal`).
//!
//! `apply` is deterministic: no clock, no randomness, no iteration over hash
//! maps, so replicas that apply the same log hold byte-identical state
//! (checked by comparing snapshots). A proposal carries its client's id and
//! sequence number, so a client that retries after a timeout (its first try
//! may well have committed) has it applied once. Invalid requests are
//! rejected deterministically, inside the state machine, so every replica
//! rejects them alike.

use crate::history::HistoryRecord;
use keel_model::{Action, Finding, JobRecord, Name, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// How many of each session's latest sequence numbers are remembered: a
/// retry of any of them is answered with its first outcome. A client keeps
/// fewer proposals than this in flight; one older than the window is
/// refused as `Stale` (an error to its caller, never a silent success).
pub const CLIENT_WINDOW: usize = 1024;

/// Client sessions remembered at once. A new session beyond this evicts
/// the one least recently active (by log index); sessions idle longer than
/// the retention's `session_idle_entries` leave at the next `Expire`.
pub const CLIENT_SESSIONS_KEPT: usize = 10_000;

/// How far the audit trail reaches back in the replicated state; older
/// events move to the on-disk history (see [`State::take_expired`]).
pub const AUDIT_KEPT: usize = 100_000;

/// Ended jobs kept in the replicated state (with their placement and final
/// state); the oldest move to the history first.
pub const ENDED_JOBS_KEPT: usize = 1_000;

/// Jobs (pending, running, or ended and not yet moved to the history) the
/// state holds; a new one beyond this is refused (`Rejection::Full`).
pub const JOBS_MAX: usize = 100_000;

/// Nodes the state holds; a new one beyond this is refused.
pub const NODES_MAX: usize = 100_000;

/// Findings (open or closed, not yet expired) the state holds; a new one
/// beyond this is refused.
pub const FINDINGS_MAX: usize = 200_000;

/// Ledger actions (any status, not yet expired) the state holds; a new one
/// beyond this is refused.
pub const LEDGER_MAX: usize = 200_000;

/// Policy names the state holds; a new name beyond this is refused.
pub const POLICIES_MAX: usize = 64;

/// Versions kept per policy name; older versions move to the history.
pub const POLICY_VERSIONS_KEPT: usize = 32;

/// Expired records waiting for the runner to write them to disk. The runner
/// drains them after every `ready`; past this the oldest are dropped
/// (counted in `State::history_dropped`).
pub const EXPIRED_PENDING_MAX: usize = 1_000_000;

pub use keel_model::ActionStatus;

/// A node of the cluster as the controller knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub gpus: u32,
    pub nics: Vec<Name>,
}

/// A finding the controller has committed; `closed` once its episode ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindingEntry {
    pub id: u64,
    pub finding: Finding,
    pub reported_by: String,
    /// When the controller committed it (the proposer's clock): how long an
    /// episode has lasted is measured from here.
    #[serde(default)]
    pub opened: Timestamp,
    pub closed: Option<Timestamp>,
    /// Ids of the findings of the same incident (`Finding::related`,
    /// resolved against the findings open when this one was committed, and
    /// added to theirs in turn), at most `RELATED_MAX`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub related: Vec<u64>,
}

/// Related finding ids one finding keeps.
pub const RELATED_MAX: usize = 16;

/// One version of a named policy document (the language comes later; the
/// controller stores and versions the text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyVersion {
    pub version: u64,
    pub document: String,
    pub applied_by: String,
}

/// One mitigation, keyed by its idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub key: String,
    pub action: Action,
    /// What it acts on: a node, a job, a router backend.
    pub target: String,
    pub params: BTreeMap<String, String>,
    /// The finding that caused it, if any.
    pub finding: Option<u64>,
    pub status: ActionStatus,
    /// How many times it was dispatched (re-sends under the same key).
    pub dispatches: u32,
    #[serde(default)]
    pub handling: Handling,
    /// When it was planned, and when its status last changed.
    #[serde(default)]
    pub planned_at: Timestamp,
    #[serde(default)]
    pub since: Timestamp,
    /// The detail of its last transition (an executor's answer, a reason).
    #[serde(default)]
    pub detail: String,
}

/// How the policy that planned an action wants it handled: kept in the
/// ledger so that a new leader carries the action on exactly as the old
/// one would have.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Handling {
    /// The rule that planned it.
    pub rule: String,
    /// `auto`, `approve` or `dry_run`.
    pub mode: String,
    /// The finding must close within this after the acknowledgement.
    pub verify_s: Option<f64>,
    /// `none`, `rollback` or `escalate:RULE`.
    pub on_failure: String,
}

/// Who or what moved the ledger, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// The log index of the proposal that made the change.
    pub index: u64,
    pub ts: Timestamp,
    pub key: String,
    pub from: Option<ActionStatus>,
    pub to: ActionStatus,
    pub by: String,
    pub detail: String,
}

/// What a client asks the controller to change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    RegisterNode {
        node: Name,
        gpus: u32,
        nics: Vec<Name>,
    },
    /// A job appears or changes (a later record replaces the earlier one).
    Job {
        record: JobRecord,
    },
    OpenFinding {
        finding: Finding,
        /// The proposer's clock when it proposed (0: not known).
        #[serde(default)]
        opened: Timestamp,
    },
    CloseFinding {
        id: u64,
        ts: Timestamp,
    },
    /// Retention: moves what is older than `before` (closed findings, actions
    /// no longer in flight, audit events) and client sessions last active
    /// before log index `sessions_before` out of the replicated state, into
    /// each replica's on-disk history. Proposed by the leader (see
    /// `retention::Retention::due`), so every replica drops the same records
    /// at the same index.
    Expire {
        before: Timestamp,
        #[serde(default)]
        sessions_before: u64,
    },
    /// Pauses all automation (`keel pause`): no leader sends anything until
    /// `Resume`.
    Pause {
        reason: String,
        ts: Timestamp,
    },
    /// Resumes automation and resets a tripped circuit breaker.
    Resume {
        ts: Timestamp,
    },
    /// The circuit breaker tripped (the leader saw too much of the cluster
    /// acted on): automatic actions wait for a person until `Resume`.
    Trip {
        reason: String,
        ts: Timestamp,
    },
    ApplyPolicy {
        name: String,
        document: String,
    },
    /// Records a new action; a key already in the ledger changes nothing.
    PlanAction {
        key: String,
        action: Action,
        target: String,
        params: BTreeMap<String, String>,
        finding: Option<u64>,
        ts: Timestamp,
        reason: String,
        #[serde(default)]
        handling: Handling,
    },
    /// Moves an action along its life.
    Transition {
        key: String,
        to: ActionStatus,
        ts: Timestamp,
        detail: String,
    },
}

/// A command as proposed: `client` and `seq` make retries idempotent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub client: String,
    pub seq: u64,
    pub command: Command,
}

impl Proposal {
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("proposals always encode")
    }

    pub fn decode(bytes: &[u8]) -> Result<Proposal, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

/// Why a proposal changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    UnknownFinding(u64),
    FindingAlreadyClosed(u64),
    UnknownAction(String),
    BadTransition {
        key: String,
        from: ActionStatus,
        to: ActionStatus,
    },
    /// The client's sequence number is older than one already applied.
    Stale {
        client: String,
        seq: u64,
        applied: u64,
    },
    Undecodable(String),
    /// A bounded collection of the state is full (`what` names it).
    Full {
        what: String,
        bound: u64,
    },
    /// The encoded proposal is larger than a replica accepts.
    TooLarge {
        bytes: u64,
        max: u64,
    },
    /// The command is not one the ledger takes (an `inject_fault` that is
    /// not bounded, or names a target the state does not place), and why.
    Refused(String),
}

/// What applying a proposal did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    /// A finding was opened under this id.
    FindingOpened(u64),
    /// The same kind of finding about the same place is open under this id.
    FindingAlreadyOpen(u64),
    PolicyVersion(u64),
    /// The action's key was already in the ledger: nothing new was planned.
    AlreadyPlanned(String),
    /// The same (client, seq) was applied before; this is its first outcome.
    Duplicate(Box<Outcome>),
    /// Retention moved this many records out of the replicated state.
    Expired(u64),
    Rejected(Rejection),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The last log index applied.
    pub applied: u64,
    pub nodes: BTreeMap<Name, NodeInfo>,
    pub jobs: BTreeMap<Name, JobRecord>,
    pub findings: BTreeMap<u64, FindingEntry>,
    next_finding: u64,
    pub policies: BTreeMap<String, Vec<PolicyVersion>>,
    pub ledger: BTreeMap<String, LedgerEntry>,
    pub audit: VecDeque<AuditEvent>,
    /// Audit events moved to the history because the trail was full.
    pub audit_dropped: u64,
    /// client session -> its recent outcomes
    clients: BTreeMap<String, Session>,
    /// The brakes above every rule.
    #[serde(default)]
    pub brakes: Brakes,
    /// Records that left the replicated state, for the runner to append to
    /// its on-disk history; not part of snapshots (each replica writes its
    /// own history as it applies).
    #[serde(skip)]
    expired: VecDeque<HistoryRecord>,
    /// Expired records dropped before the runner took them (a runner that
    /// never drains): counted, not replicated.
    #[serde(skip)]
    pub history_dropped: u64,
}

/// Brakes above every rule, committed so that every leader obeys them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Brakes {
    /// All automation paused, by whom and why.
    pub paused: Option<Brake>,
    /// The circuit breaker tripped, and why.
    pub tripped: Option<Brake>,
}

/// Who set a brake, why and when (the proposer's clock), at which index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Brake {
    pub by: String,
    pub reason: String,
    pub ts: Timestamp,
    pub index: u64,
}

/// One client session: its most recent sequence numbers with their
/// outcomes, and the log index it was last active at (for expiry).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Session {
    last_index: u64,
    outcomes: BTreeMap<u64, Outcome>,
}

impl State {
    /// Applies the proposal committed at `index`. Entries at or below the
    /// last applied index are ignored (a replay after restart).
    pub fn apply(&mut self, index: u64, data: &[u8]) -> Outcome {
        if index <= self.applied {
            return Outcome::Duplicate(Box::new(Outcome::Applied));
        }
        self.applied = index;
        let p = match Proposal::decode(data) {
            Ok(p) => p,
            Err(e) => return Outcome::Rejected(Rejection::Undecodable(e.to_string())),
        };
        if let Some(seen) = self.clients.get(&p.client) {
            if let Some(outcome) = seen.outcomes.get(&p.seq) {
                return Outcome::Duplicate(Box::new(outcome.clone()));
            }
            // Clients pipeline proposals, so they may commit out of order;
            // only one older than the whole remembered window is refused.
            if let Some((&oldest, _)) = seen.outcomes.first_key_value() {
                if seen.outcomes.len() >= CLIENT_WINDOW && p.seq < oldest {
                    return Outcome::Rejected(Rejection::Stale {
                        client: p.client.clone(),
                        seq: p.seq,
                        applied: oldest,
                    });
                }
            }
        } else if self.clients.len() >= CLIENT_SESSIONS_KEPT {
            self.evict_idlest_session();
        }
        let outcome = self.execute(index, &p.client, p.command);
        let seen = self.clients.entry(p.client).or_default();
        seen.last_index = index;
        seen.outcomes.insert(p.seq, outcome.clone());
        while seen.outcomes.len() > CLIENT_WINDOW {
            seen.outcomes.pop_first();
        }
        outcome
    }

    /// Drops the session least recently active (ties: the smallest name),
    /// so that one-shot clients cannot grow the state without bound.
    fn evict_idlest_session(&mut self) {
        let idlest = self
            .clients
            .iter()
            .min_by(|a, b| a.1.last_index.cmp(&b.1.last_index).then(a.0.cmp(b.0)))
            .map(|(k, _)| k.clone());
        if let Some(k) = idlest {
            self.clients.remove(&k);
        }
    }

    /// Drops sessions last active before log index `before`.
    pub(crate) fn expire_sessions(&mut self, before: u64) -> u64 {
        let n = self.clients.len();
        self.clients.retain(|_, s| s.last_index >= before);
        (n - self.clients.len()) as u64
    }

    /// How many client sessions the state remembers.
    pub fn sessions(&self) -> usize {
        self.clients.len()
    }

    /// Whether some session was last active before log index `before`.
    pub(crate) fn sessions_idle_before(&self, before: u64) -> bool {
        self.clients.values().any(|s| s.last_index < before)
    }

    /// Queues a record that left the replicated state for the runner.
    pub(crate) fn move_to_history(&mut self, record: HistoryRecord) {
        if self.expired.len() >= EXPIRED_PENDING_MAX {
            self.expired.pop_front();
            self.history_dropped += 1;
        }
        self.expired.push_back(record);
    }

    /// Takes the records that left the replicated state since the last
    /// call, oldest first, for the runner's on-disk history.
    pub fn take_expired(&mut self) -> Vec<HistoryRecord> {
        self.expired.drain(..).collect()
    }

    fn full(what: &str, bound: usize) -> Outcome {
        Outcome::Rejected(Rejection::Full {
            what: what.to_string(),
            bound: bound as u64,
        })
    }

    fn execute(&mut self, index: u64, client: &str, command: Command) -> Outcome {
        match command {
            Command::RegisterNode { node, gpus, nics } => {
                if self.nodes.len() >= NODES_MAX && !self.nodes.contains_key(&node) {
                    return Self::full("nodes", NODES_MAX);
                }
                self.nodes.insert(node, NodeInfo { gpus, nics });
                Outcome::Applied
            }
            Command::Job { mut record } => {
                // A record without placement (an epilog's end, `keel job
                // end`) keeps the placement already known.
                if let Some(known) = self.jobs.get(&record.job) {
                    record.keep_placement_of(known);
                }
                // An ended job stays known with its final state: its
                // correlator lingers (a GPU it leaves held shows only after
                // the end), and its placement is what a squatter finding
                // names. The oldest ended ones go once there are too many.
                let ended = record.state.is_finished();
                if !self.jobs.contains_key(&record.job) && self.jobs.len() >= JOBS_MAX {
                    return Self::full("jobs", JOBS_MAX);
                }
                self.jobs.insert(record.job.clone(), record);
                if ended {
                    self.prune_ended_jobs();
                }
                Outcome::Applied
            }
            Command::OpenFinding { finding, opened } => {
                // Names of related findings come from the reporter: bounded
                // where they enter the replicated state.
                if finding.related.len() > RELATED_MAX {
                    return Self::full("related findings one finding names", RELATED_MAX);
                }
                // The same condition reported again (a retry after a leader
                // change, or a correlator that took the job over and
                // concluded afresh) is the finding already open.
                if let Some(open) = self.open_finding_like(&finding) {
                    return Outcome::FindingAlreadyOpen(open);
                }
                if self.findings.len() >= FINDINGS_MAX {
                    return Self::full("findings", FINDINGS_MAX);
                }
                self.next_finding += 1;
                let id = self.next_finding;
                let opened = if opened > 0.0 { opened } else { finding.ts };
                let related: Vec<u64> = self
                    .open_findings()
                    .filter(|e| finding.related.iter().any(|r| r.names(&e.finding)))
                    .map(|e| e.id)
                    .take(RELATED_MAX)
                    .collect();
                for r in &related {
                    if let Some(e) = self.findings.get_mut(r) {
                        if e.related.len() < RELATED_MAX {
                            e.related.push(id);
                        }
                    }
                }
                self.findings.insert(
                    id,
                    FindingEntry {
                        id,
                        finding,
                        reported_by: client.to_string(),
                        opened,
                        closed: None,
                        related,
                    },
                );
                Outcome::FindingOpened(id)
            }
            Command::CloseFinding { id, ts } => match self.findings.get_mut(&id) {
                None => Outcome::Rejected(Rejection::UnknownFinding(id)),
                Some(f) if f.closed.is_some() => {
                    Outcome::Rejected(Rejection::FindingAlreadyClosed(id))
                }
                Some(f) => {
                    f.closed = Some(ts);
                    Outcome::Applied
                }
            },
            Command::ApplyPolicy { name, document } => {
                if self.policies.len() >= POLICIES_MAX && !self.policies.contains_key(&name) {
                    return Self::full("policies", POLICIES_MAX);
                }
                let versions = self.policies.entry(name.clone()).or_default();
                let version = versions.last().map_or(1, |v| v.version + 1);
                versions.push(PolicyVersion {
                    version,
                    document,
                    applied_by: client.to_string(),
                });
                let old: Vec<PolicyVersion> = if versions.len() > POLICY_VERSIONS_KEPT {
                    let n = versions.len() - POLICY_VERSIONS_KEPT;
                    versions.drain(..n).collect()
                } else {
                    Vec::new()
                };
                for v in old {
                    self.move_to_history(HistoryRecord::Policy {
                        name: name.clone(),
                        version: v,
                    });
                }
                Outcome::PolicyVersion(version)
            }
            Command::Expire {
                before,
                sessions_before,
            } => Outcome::Expired(self.expire(before, sessions_before)),
            Command::Pause { reason, ts } => {
                let brake = Brake {
                    by: client.to_string(),
                    reason: reason.clone(),
                    ts,
                    index,
                };
                self.brakes.paused = Some(brake);
                Outcome::Applied
            }
            Command::Resume { .. } => {
                self.brakes.paused = None;
                self.brakes.tripped = None;
                Outcome::Applied
            }
            Command::Trip { reason, ts } => {
                if self.brakes.tripped.is_none() {
                    self.brakes.tripped = Some(Brake {
                        by: client.to_string(),
                        reason,
                        ts,
                        index,
                    });
                }
                Outcome::Applied
            }
            Command::PlanAction {
                key,
                action,
                target,
                params,
                finding,
                ts,
                reason,
                handling,
            } => {
                if self.ledger.contains_key(&key) {
                    return Outcome::AlreadyPlanned(key);
                }
                if let Some(id) = finding {
                    if !self.findings.contains_key(&id) {
                        return Outcome::Rejected(Rejection::UnknownFinding(id));
                    }
                }
                if action == Action::InjectFault {
                    if let Err(why) = self.injection_refused(&target, &params) {
                        return Outcome::Rejected(Rejection::Refused(why));
                    }
                }
                if self.ledger.len() >= LEDGER_MAX {
                    return Self::full("ledger", LEDGER_MAX);
                }
                self.ledger.insert(
                    key.clone(),
                    LedgerEntry {
                        key: key.clone(),
                        action,
                        target,
                        params,
                        finding,
                        status: ActionStatus::Planned,
                        dispatches: 0,
                        handling,
                        planned_at: ts,
                        since: ts,
                        detail: reason.clone(),
                    },
                );
                self.audit(index, ts, &key, None, ActionStatus::Planned, client, reason);
                Outcome::Applied
            }
            Command::Transition {
                key,
                to,
                ts,
                detail,
            } => {
                // Cancelling an injection that acts already reverts it.
                let (to, detail) = match self.cancel_as_revert(&key, to) {
                    Some(revert) => (revert, format!("cancelled while acting: revert ({detail})")),
                    None => (to, detail),
                };
                let Some(entry) = self.ledger.get_mut(&key) else {
                    return Outcome::Rejected(Rejection::UnknownAction(key));
                };
                let from = entry.status;
                if !from.may_become(to) {
                    return Outcome::Rejected(Rejection::BadTransition { key, from, to });
                }
                entry.status = to;
                entry.since = ts;
                entry.detail.clone_from(&detail);
                if to == ActionStatus::Dispatched {
                    entry.dispatches += 1;
                }
                self.audit(index, ts, &key, Some(from), to, client, detail);
                Outcome::Applied
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn audit(
        &mut self,
        index: u64,
        ts: Timestamp,
        key: &str,
        from: Option<ActionStatus>,
        to: ActionStatus,
        by: &str,
        detail: String,
    ) {
        if self.audit.len() >= AUDIT_KEPT {
            if let Some(old) = self.audit.pop_front() {
                self.move_to_history(HistoryRecord::Audit(old));
            }
            self.audit_dropped += 1;
        }
        self.audit.push_back(AuditEvent {
            index,
            ts,
            key: key.to_string(),
            from,
            to,
            by: by.to_string(),
            detail,
        });
    }

    fn prune_ended_jobs(&mut self) {
        let mut ended: Vec<(Timestamp, Name)> = self
            .jobs
            .values()
            .filter(|j| j.state.is_finished())
            .map(|j| (j.ts, j.job.clone()))
            .collect();
        if ended.len() <= ENDED_JOBS_KEPT {
            return;
        }
        ended.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        for (_, job) in ended.iter().take(ended.len() - ENDED_JOBS_KEPT) {
            if let Some(record) = self.jobs.remove(job) {
                self.move_to_history(HistoryRecord::Job(record));
            }
        }
    }

    /// Records that a log entry with no proposal (a membership change) was
    /// applied, so snapshots say exactly how far the log was applied.
    pub fn mark_applied(&mut self, index: u64) {
        self.applied = self.applied.max(index);
    }

    /// Actions a new leader must re-send (same key): dispatched, never acknowledged.
    pub fn in_flight(&self) -> impl Iterator<Item = &LedgerEntry> {
        self.ledger
            .values()
            .filter(|e| e.status == ActionStatus::Dispatched)
    }

    pub fn open_findings(&self) -> impl Iterator<Item = &FindingEntry> {
        self.findings.values().filter(|f| f.closed.is_none())
    }

    /// The open finding of the same kind about the same place, if any.
    pub fn open_finding_like(&self, f: &Finding) -> Option<u64> {
        let locus = f.locus();
        self.open_findings()
            .find(|e| e.finding.kind == f.kind && e.finding.locus() == locus)
            .map(|e| e.id)
    }

    /// The state as a snapshot (rmp-serde, named fields).
    pub fn snapshot(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("state always encodes")
    }

    /// A digest of the whole replicated state (16 hex digits: FNV-1a 64 over
    /// the snapshot bytes). Two replicas at the same `applied` index hold
    /// identical state exactly when their digests agree.
    pub fn digest(&self) -> String {
        digest_bytes(&self.snapshot())
    }

    pub fn restore(bytes: &[u8]) -> Result<State, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

/// FNV-1a 64 over `bytes`, as 16 lowercase hex digits.
pub fn digest_bytes(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016x}")
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
