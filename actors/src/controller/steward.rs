//! The leader's side of the mitigation ledger: a thin shell around
//! `keel_policies::steward` (what to do) and `keel_policies::dispatch` (to
//! which executor, when again, when to give up). Every few ticks the leader
//! shows the loop its replicated state, proposes the plans and transitions
//! it returns, and sends dispatched commands to executors over the executors' own
//! connections (an executor dials every replica and greets it with what it
//! carries out). Acknowledgements come back as `ControllerMsg::Answered`
//! and are committed as transitions. Nothing here is replicated: a new
//! leader rebuilds it from the ledger, which is the point.

use super::{ControllerMsg, ControllerState};
use crate::sources::unix_now;
use keel_consensus::state::{Command, Handling, LedgerEntry, Outcome, Proposal, State};
use keel_model::{Ack, Message};
use keel_policies::dispatch::{AnswerDecision, Dispatch, SendDecision, SEND_TIMEOUT_S};
use keel_policies::{
    check, steward, ActionStatus as Status, Entry, Mode, OnFailure, OpenFinding, Planner, Step,
    World,
};
use keel_transport::Connection;
use ractor::ActorRef;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The policy document the controller acts on (`keel policy apply`).
pub const ACTIVE_POLICY: &str = "default";

/// Seconds on this process's monotonic clock: the time `Dispatch` is fed.
fn clock() -> f64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// The replica's soft state for the loop: the sending rules
/// (`keel_policies::dispatch`) and what they need from the world (the
/// executors' connections, the proposals under way).
#[derive(Default)]
pub struct Steward {
    /// Executors' connections to this replica, by certificate name.
    conns: HashMap<String, Connection>,
    dispatch: Dispatch,
    planner: Option<(u64, Planner)>,
    term: u64,
    dispatched_by_me: BTreeSet<String>,
    /// Keys with a proposal under way: no other step for them until applied.
    pending: HashMap<String, oneshot::Receiver<Outcome>>,
    held_logged: HashSet<String>,
    /// This replica's client session for the loop's proposals, and the
    /// last sequence number used in it.
    session: String,
    seq: u64,
}

impl Steward {
    /// An executor's connection (accepted by this replica).
    pub fn connected(&mut self, name: String, conn: Connection) {
        if self.dispatch.connected(&name, clock()) {
            self.conns.insert(name, conn);
        } else {
            tracing::warn!(
                executor = name,
                refused = self.dispatch.executors_refused,
                bound = keel_policies::dispatch::MAX_EXECUTORS,
                "too many executors; connection ignored"
            );
        }
    }

    /// An executor's greeting: what it carries out, and where.
    pub fn greeted(&mut self, name: &str, actions: Vec<keel_model::Action>, nodes: Vec<String>) {
        self.dispatch.greeted(name, actions, nodes, clock());
    }

    /// Tells the rules about executors whose connection closed.
    fn sweep(&mut self) {
        let closed: Vec<String> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_closed())
            .map(|(n, _)| n.clone())
            .collect();
        for name in closed {
            self.conns.remove(&name);
            self.dispatch.disconnected(&name);
        }
    }

    /// Executors alive, for `status`.
    pub fn executors(&mut self) -> BTreeMap<String, Vec<String>> {
        self.sweep();
        self.dispatch.executors(clock())
    }

    /// The active policy, parsed once per version; with none applied, a
    /// policy of no rules (the ledger's own entries, operators' fault
    /// injections, still go their way).
    pub fn planner(&mut self, state: &State) -> Option<&Planner> {
        let Some(latest) = state.policies.get(ACTIVE_POLICY).and_then(|v| v.last()) else {
            if self.planner.as_ref().map(|(v, _)| *v) != Some(0) {
                let none = check("(no policy)", "").ok()?;
                self.planner = Some((0, Planner::new(none)));
            }
            return self.planner.as_ref().map(|(_, p)| p);
        };
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

    /// Whether a proposal for `key` is under way.
    fn busy(&mut self, key: &str) -> bool {
        self.dispatch.is_proposing(key, clock())
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
        st.dispatch.new_term();
        st.pending.clear();
    }
    if !leader {
        return;
    }
    st.sweep();
    let now = clock();
    let (pending, dispatch) = (&mut st.pending, &mut st.dispatch);
    pending.retain(|key, rx| {
        let open = matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
            && dispatch.is_proposing(key, now);
        if !open {
            dispatch.settled(key);
        }
        open
    });
    let mut world = world(&state.node.state, &state.steward.dispatched_by_me);
    let Some(planner) = state.steward.planner(&state.node.state) else {
        return;
    };
    world.brakes.breaker = planner.policies().brakes().breaker.clone();
    let steps = steward(planner, &world);
    for step in steps {
        match step {
            Step::Plan { plan, reason } => {
                let key = plan.key.clone();
                if state.steward.busy(&key) {
                    continue;
                }
                tracing::info!(key, finding = plan.finding_id, rule = plan.rule, action = %plan.action, target = plan.target, mode = %plan.mode, "planning");
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
                if state.steward.busy(&key) {
                    continue;
                }
                if to == Status::Dispatched {
                    state.steward.dispatched_by_me.insert(key.clone());
                }
                tracing::info!(key, to = to.wire(), detail, "ledger");
                transition(state, key, to, detail);
            }
            Step::Send { key } => send(state, me, key, false),
            // Not while the answer to the last one is being committed.
            Step::Rollback { key } if state.steward.busy(&key) => {}
            Step::Rollback { key } => send(state, me, key, true),
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
    if !state.node.is_leader() {
        return;
    }
    let error = result.as_ref().err().cloned();
    let result = result.map(|a| (a.ok, a.detail));
    match state
        .steward
        .dispatch
        .answered(&key, &executor, rollback, result, clock())
    {
        AnswerDecision::Ignored => {
            tracing::debug!(key, executor, "answer to no send under way; ignored")
        }
        AnswerDecision::RetryLater => tracing::warn!(
            key,
            executor,
            error = error.unwrap_or_default(),
            "command not acknowledged; sending again soon"
        ),
        AnswerDecision::RollbackRefused { detail } => {
            tracing::warn!(key, detail, "rollback refused; leaving the action failed")
        }
        AnswerDecision::Transition { to, detail } => {
            tracing::info!(key, to = to.wire(), detail, "ledger");
            transition(state, key, to, detail);
        }
    }
}

fn send(state: &mut ControllerState, me: &ActorRef<ControllerMsg>, key: String, rollback: bool) {
    let Some(entry) = state.node.state.ledger.get(&key) else {
        return;
    };
    let st = &mut state.steward;
    let (executor, id) =
        match st
            .dispatch
            .send(&key, entry.action, &entry.target, rollback, clock())
        {
            SendDecision::Wait | SendDecision::NoExecutor => return,
            SendDecision::Fail { detail } => {
                tracing::warn!(key, detail, "ledger");
                transition(state, key, Status::Failed, detail);
                return;
            }
            SendDecision::Send { executor, id } => (executor, id),
        };
    let Some(conn) = st.conns.get(&executor).cloned() else {
        // Chosen but its connection just went: the rules try again later.
        let _ = st.dispatch.answered(
            &key,
            &executor,
            rollback,
            Err("no connection".into()),
            clock(),
        );
        return;
    };
    let cmd = keel_model::Command {
        id,
        action: entry.action,
        target: entry.target.clone(),
        params: entry.params.clone(),
        idempotency_key: key.clone(),
        rollback,
    };
    let me = me.clone();
    tracing::info!(key, executor, rollback, "sending command");
    tokio::spawn(async move {
        let timeout = Duration::from_secs_f64(SEND_TIMEOUT_S);
        let result = match conn.request(Message::Command(cmd), timeout).await {
            Ok(Message::Ack(a)) => Ok(a),
            Ok(other) => Err(format!("answered with {}", other.kind())),
            Err(e) => Err(e.to_string()),
        };
        let _ = me.cast(ControllerMsg::Answered {
            key,
            executor,
            rollback,
            result,
        });
    });
}

fn propose(state: &mut ControllerState, key: String, command: Command) {
    let st = &mut state.steward;
    if st.session.is_empty() {
        // One client session per start of this replica, numbered from 1:
        // a restarted loop's proposals are never taken for old ones.
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        st.session = format!("steward/{}.{boot:x}", state.cfg.id);
    }
    st.seq += 1;
    let proposal = Proposal {
        client: st.session.clone(),
        seq: st.seq,
        command,
    };
    let (tx, rx) = oneshot::channel();
    st.dispatch.proposing(&key, clock());
    st.pending.insert(key, rx);
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
    let Some(planner) = version.and(state.steward.planner(&state.node.state)) else {
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
