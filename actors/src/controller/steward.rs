//! The leader's side of the mitigation ledger: a thin shell around
//! `keel_policies::steward`. Every few ticks the leader shows the loop its
//! replicated state, proposes the plans and transitions it returns, and
//! sends dispatched commands to executors over the executors' own
//! connections (an executor dials every replica and greets it with what it
//! carries out). Acknowledgements come back as `ControllerMsg::Answered`
//! and are committed as transitions. Nothing here is replicated: a new
//! leader rebuilds it from the ledger, which is the point.

use super::{ControllerMsg, ControllerState};
use crate::sources::unix_now;
use keel_consensus::state::{Command, Handling, LedgerEntry, Outcome, Proposal, State};
use keel_model::{Ack, Action, Message};
use keel_policies::{
    check, steward, ActionStatus as Status, Entry, Mode, OnFailure, OpenFinding, Planner, Step,
    World,
};
use keel_transport::Connection;
use ractor::ActorRef;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The policy document the controller acts on (`keel policy apply`).
pub const ACTIVE_POLICY: &str = "default";
/// How long a command may take to be acknowledged before it is sent again.
const SEND_TIMEOUT: Duration = Duration::from_secs(20);
/// A send that failed (no executor, link down) is tried again after this.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// An action no executor carries out fails after this long.
const NO_EXECUTOR_FAILS_AFTER: Duration = Duration::from_secs(10);
/// A proposal not seen applied within this is proposed again.
const PROPOSAL_PATIENCE: Duration = Duration::from_secs(5);
/// An executor that has not greeted a replica for this long is taken as gone.
const EXECUTOR_TTL: Duration = Duration::from_secs(5);

/// One executor as this replica knows it.
struct ExecutorLink {
    conn: Option<Connection>,
    actions: Vec<Action>,
    /// Nodes whose node-local actions it carries out; `*` for any.
    nodes: Vec<String>,
    seen: Instant,
}

/// The replica's soft state for the loop.
#[derive(Default)]
pub struct Steward {
    executors: HashMap<String, ExecutorLink>,
    planner: Option<(u64, Planner)>,
    term: u64,
    dispatched_by_me: BTreeSet<String>,
    /// Keys with a proposal under way: no other step for them until applied.
    pending: HashMap<String, (oneshot::Receiver<Outcome>, Instant)>,
    /// Keys being sent: when the send started, or when to try again.
    sending: HashMap<String, Instant>,
    no_executor_since: HashMap<String, Instant>,
    rollback_refused: HashSet<String>,
    held_logged: HashSet<String>,
    seq: u64,
    next_command: u64,
}

impl Steward {
    /// An executor's connection (accepted by this replica).
    pub fn connected(&mut self, name: String, conn: Connection) {
        let e = self.executors.entry(name).or_insert_with(|| ExecutorLink {
            conn: None,
            actions: Vec::new(),
            nodes: Vec::new(),
            seen: Instant::now(),
        });
        e.conn = Some(conn);
    }

    /// An executor's greeting: what it carries out, and where.
    pub fn greeted(&mut self, name: &str, actions: Vec<Action>, nodes: Vec<String>) {
        if let Some(e) = self.executors.get_mut(name) {
            e.actions = actions;
            e.nodes = nodes;
            e.seen = Instant::now();
        }
    }

    /// Executors alive, for `status`.
    pub fn executors(&self) -> BTreeMap<String, Vec<String>> {
        let now = Instant::now();
        self.executors
            .iter()
            .filter(|(_, e)| e.alive(now))
            .map(|(n, e)| (n.clone(), e.actions.iter().map(|a| a.to_string()).collect()))
            .collect()
    }

    /// The active policy, parsed once per version.
    pub fn planner(&mut self, state: &State) -> Option<&Planner> {
        let latest = state.policies.get(ACTIVE_POLICY)?.last()?;
        if self.planner.as_ref().map(|(v, _)| *v) != Some(latest.version) {
            match check(
                &format!("policy {ACTIVE_POLICY} v{}", latest.version),
                &latest.document,
            ) {
                Ok(set) => self.planner = Some((latest.version, Planner::new(set))),
                Err(errs) => {
                    for e in errs {
                        tracing::error!(error = %e, "the committed policy does not check");
                    }
                    return None;
                }
            }
        }
        self.planner.as_ref().map(|(_, p)| p)
    }
}

impl ExecutorLink {
    fn alive(&self, now: Instant) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.is_closed())
            && now.duration_since(self.seen) < EXECUTOR_TTL
    }

    fn serves(&self, action: Action, node: Option<&str>) -> bool {
        self.actions.contains(&action)
            && match node {
                None => true,
                Some(n) => self.nodes.iter().any(|m| m == "*" || m == n),
            }
    }
}

/// One turn of the loop; only the leader takes one.
pub fn turn(state: &mut ControllerState, me: &ActorRef<ControllerMsg>) {
    let leader = state.node.is_leader();
    let term = state.node.term();
    let st = &mut state.steward;
    if !leader || st.term != term {
        // Whatever this replica sent before belongs to an earlier term: a
        // leader (this one again, or another) dispatches it again first.
        st.term = term;
        st.dispatched_by_me.clear();
        st.sending.clear();
        st.pending.clear();
    }
    if !leader {
        return;
    }
    let now = Instant::now();
    st.pending.retain(|_, (rx, at)| {
        matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
            && now.duration_since(*at) < PROPOSAL_PATIENCE
    });
    let world = world(&state.node.state, &state.steward.dispatched_by_me);
    let Some(planner) = state.steward.planner(&state.node.state) else {
        return;
    };
    let steps = steward(planner, &world);
    for step in steps {
        match step {
            Step::Plan { plan, reason } => {
                let key = plan.key.clone();
                if state.steward.pending.contains_key(&key) {
                    continue;
                }
                tracing::info!(key, action = %plan.action, target = plan.target, mode = %plan.mode, "planning");
                let cmd = Command::PlanAction {
                    key: key.clone(),
                    action: plan.action,
                    target: plan.target,
                    params: plan.params,
                    finding: Some(plan.finding_id),
                    ts: unix_now(),
                    reason,
                    handling: Handling {
                        rule: plan.rule,
                        mode: plan.mode.wire().into(),
                        verify_s: plan.verify_s,
                        on_failure: plan.on_failure.to_string(),
                    },
                };
                propose(state, key, cmd);
            }
            Step::Move { key, to, detail } => {
                if state.steward.pending.contains_key(&key) {
                    continue;
                }
                if to == Status::Dispatched {
                    state.steward.dispatched_by_me.insert(key.clone());
                }
                tracing::info!(key, to = to.wire(), detail, "ledger");
                transition(state, key, to, detail);
            }
            Step::Send { key } => send(state, me, key, false),
            Step::Rollback { key } => {
                if !state.steward.rollback_refused.contains(&key) {
                    send(state, me, key, true)
                }
            }
            Step::Trip { why } => {
                let key = "brakes/trip".to_string();
                if state.steward.pending.contains_key(&key)
                    || state.node.state.brakes.tripped.is_some()
                {
                    continue;
                }
                tracing::warn!(why, "circuit breaker tripped: automatic actions wait for a person until `keel resume`");
                propose(
                    state,
                    key,
                    Command::Trip {
                        reason: why,
                        ts: unix_now(),
                    },
                );
            }
            Step::Held { finding, rule, why } => {
                let tag = format!("{finding}/{rule}/{}", why.split(':').next().unwrap_or(""));
                if state.steward.held_logged.insert(tag) {
                    tracing::info!(finding, rule, why, "rule matched, action held back");
                }
            }
        }
    }
}

/// What an executor answered (or why it could not be reached).
pub fn answered(
    state: &mut ControllerState,
    key: String,
    executor: String,
    rollback: bool,
    result: Result<Ack, String>,
) {
    let st = &mut state.steward;
    if !state.node.is_leader() {
        return;
    }
    match result {
        Err(e) => {
            tracing::warn!(
                key,
                executor,
                error = e,
                "command not acknowledged; sending again soon"
            );
            st.sending.insert(key, Instant::now() + RETRY_AFTER);
        }
        Ok(ack) => {
            st.sending.remove(&key);
            let detail = format!("{executor}: {}", ack.detail);
            let to = match (rollback, ack.ok) {
                (false, true) => Status::Acknowledged,
                (false, false) => Status::Failed,
                (true, true) => Status::RolledBack,
                (true, false) => {
                    tracing::warn!(key, detail, "rollback refused; leaving the action failed");
                    st.rollback_refused.insert(key);
                    return;
                }
            };
            tracing::info!(key, to = to.wire(), detail, "ledger");
            transition(state, key, to, detail);
        }
    }
}

fn send(state: &mut ControllerState, me: &ActorRef<ControllerMsg>, key: String, rollback: bool) {
    let now = Instant::now();
    let st = &mut state.steward;
    if let Some(&at) = st.sending.get(&key) {
        // Under way (`at` in the past: started then) or waiting to retry.
        if at > now || now.duration_since(at) < SEND_TIMEOUT {
            return;
        }
    }
    let Some(entry) = state.node.state.ledger.get(&key) else {
        return;
    };
    let node = node_of(&entry.target);
    let chosen = st
        .executors
        .iter()
        .filter(|(_, e)| e.alive(now) && e.serves(entry.action, node))
        // One named for the node first, then any.
        .min_by_key(|(n, e)| {
            (
                !e.nodes.iter().any(|m| Some(m.as_str()) == node),
                (*n).clone(),
            )
        });
    let Some((name, exec)) = chosen else {
        let since = *st.no_executor_since.entry(key.clone()).or_insert(now);
        if now.duration_since(since) >= NO_EXECUTOR_FAILS_AFTER && !rollback {
            let detail = format!(
                "no executor carries out {} for {} (none connected and greeting this replica)",
                entry.action, entry.target
            );
            tracing::warn!(key, detail, "ledger");
            st.no_executor_since.remove(&key);
            transition(state, key, Status::Failed, detail);
        }
        return;
    };
    st.no_executor_since.remove(&key);
    let Some(conn) = exec.conn.clone() else {
        return;
    };
    st.next_command += 1;
    let cmd = keel_model::Command {
        id: st.next_command,
        action: entry.action,
        target: entry.target.clone(),
        params: entry.params.clone(),
        idempotency_key: key.clone(),
        rollback,
    };
    st.sending.insert(key.clone(), now);
    let (name, me) = (name.clone(), me.clone());
    tracing::info!(key, executor = name, rollback, "sending command");
    tokio::spawn(async move {
        let result = match conn.request(Message::Command(cmd), SEND_TIMEOUT).await {
            Ok(Message::Ack(a)) => Ok(a),
            Ok(other) => Err(format!("answered with {}", other.kind())),
            Err(e) => Err(e.to_string()),
        };
        let _ = me.cast(ControllerMsg::Answered {
            key,
            executor: name,
            rollback,
            result,
        });
    });
}

fn propose(state: &mut ControllerState, key: String, command: Command) {
    let st = &mut state.steward;
    if st.seq == 0 {
        // Sequence numbers must grow across restarts of this replica, or a
        // restarted loop's proposals would be taken for old ones.
        st.seq = (unix_now() * 1e6) as u64;
    }
    st.seq += 1;
    let proposal = Proposal {
        client: format!("steward/{}", state.cfg.id),
        seq: st.seq,
        command,
    };
    let (tx, rx) = oneshot::channel();
    st.pending.insert(key, (rx, Instant::now()));
    super::propose_here(state, proposal.encode(), tx);
}

fn transition(state: &mut ControllerState, key: String, to: Status, detail: String) {
    let cmd = Command::Transition {
        key: key.clone(),
        to,
        ts: unix_now(),
        detail,
    };
    propose(state, key, cmd);
}

/// The node a target acts on, if it names one (`node/<n>[/...]`).
fn node_of(target: &str) -> Option<&str> {
    let rest = target.strip_prefix("node/")?;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// The loop's view of the replicated state.
fn world(s: &State, dispatched_by_me: &BTreeSet<String>) -> World {
    let referenced: BTreeSet<u64> = s.ledger.values().filter_map(|e| e.finding).collect();
    let findings = s
        .findings
        .values()
        .filter(|f| f.closed.is_none() || referenced.contains(&f.id))
        .map(|f| OpenFinding {
            id: f.id,
            finding: f.finding.clone(),
            opened: f.opened,
            closed: f.closed,
        })
        .collect();
    let running = s.jobs.values().filter(|j| !j.state.is_finished());
    let mut nodes: BTreeSet<&str> = s.nodes.keys().map(|n| n.as_str()).collect();
    let mut tenants = BTreeMap::new();
    let mut jobs = 0;
    for j in running {
        jobs += 1;
        nodes.extend(j.nodes.iter().map(|n| n.as_str()));
        if let Some(t) = &j.tenant {
            tenants.insert(j.job.to_string(), t.to_string());
        }
    }
    World {
        now: unix_now(),
        nodes: nodes.len(),
        jobs,
        tenants,
        findings,
        ledger: s.ledger.values().map(entry).collect(),
        dispatched_by_me: dispatched_by_me.clone(),
        brakes: keel_policies::Brakes {
            paused: s.brakes.paused.is_some(),
            tripped: s.brakes.tripped.is_some(),
            breaker: Default::default(),
        },
    }
}

fn entry(e: &LedgerEntry) -> Entry {
    Entry {
        key: e.key.clone(),
        rule: e.handling.rule.clone(),
        action: e.action,
        target: e.target.clone(),
        params: e.params.clone(),
        finding: e.finding,
        status: e.status,
        // An entry that does not say how to handle it waits for a person.
        mode: Mode::from_wire(&e.handling.mode).unwrap_or(Mode::Approve),
        verify_s: e.handling.verify_s,
        on_failure: OnFailure::from_wire(&e.handling.on_failure).unwrap_or_default(),
        planned_at: e.planned_at,
        since: e.since,
    }
}

/// `keel policy explain FINDING`: which rule of the active policy the
/// finding matches and why the others do not, and what planning it now
/// would decide under the guards.
pub fn explain(state: &mut ControllerState, id: u64) -> anyhow::Result<String> {
    use std::fmt::Write;
    let w = world(&state.node.state, &BTreeSet::new());
    let Some(f) = state.node.state.findings.get(&id).cloned() else {
        anyhow::bail!("no finding {id}");
    };
    let version = state
        .node
        .state
        .policies
        .get(ACTIVE_POLICY)
        .and_then(|v| v.last())
        .map(|v| v.version);
    let Some(planner) = state.steward.planner(&state.node.state) else {
        anyhow::bail!("no policy `{ACTIVE_POLICY}` applied (keel policy apply FILE)");
    };
    let ctx = keel_policies::Context {
        now: w.now,
        duration_s: (w.now - f.opened).max(0.0),
        nodes: w.nodes,
        jobs: w.jobs,
        tenant: f
            .finding
            .job
            .as_ref()
            .and_then(|j| w.tenants.get(j.as_str()).cloned()),
        actions: w
            .ledger
            .iter()
            .map(|e| keel_policies::PastAction {
                rule: e.rule.clone(),
                target: e.target.clone(),
                action: e.action,
                ts: e.planned_at,
                status: e.status,
            })
            .collect(),
    };
    let mut out = String::new();
    let at = f
        .finding
        .locus()
        .map_or("the cluster".into(), |l| l.to_string());
    let _ = writeln!(
        out,
        "finding {id}: {} ({}, {}, confidence {:.2}) at {at}, open {:.0} s{}",
        f.finding.kind,
        f.finding.cause,
        f.finding.severity,
        f.finding.confidence,
        ctx.duration_s,
        if f.closed.is_some() { ", closed" } else { "" }
    );
    let _ = writeln!(out, "policy `{ACTIVE_POLICY}` v{}:", version.unwrap_or(0));
    for v in planner.policies().explain(&f.finding, &ctx) {
        let _ = writeln!(out, "  {v}");
    }
    let decisions = planner.plan(id, &f.finding, &ctx);
    if decisions.is_empty() {
        let _ = writeln!(out, "would plan: nothing");
    }
    for d in decisions {
        let line = match d {
            keel_policies::Decision::Plan(p) => {
                format!(
                    "would plan: {} {} ({}), key {}",
                    p.action, p.target, p.mode, p.key
                )
            }
            keel_policies::Decision::Suppressed {
                rule, guard, why, ..
            } => format!("would hold back `{rule}` ({guard}): {why}"),
            keel_policies::Decision::NoTarget { rule, why, .. } => {
                format!("`{rule}` has no target: {why}")
            }
        };
        let _ = writeln!(out, "{line}");
    }
    for e in state
        .node
        .state
        .ledger
        .values()
        .filter(|e| e.finding == Some(id))
    {
        let _ = writeln!(
            out,
            "in the ledger: {} {} {} ({})",
            e.key,
            e.status.wire(),
            e.target,
            e.detail
        );
    }
    Ok(serde_json::to_string(&out)?)
}
