//! The leader's sending rules, sans-IO: which executor carries out a
//! dispatched action, when a command is sent again, when an action that no
//! executor carries out fails, and which answers count.
//!
//! [`crate::steward`] says *what* to do with the ledger; [`Dispatch`] says
//! *how* the sends go. It never opens a socket or reads a clock: the caller
//! passes the time (`now`, seconds on any clock that does not go back) and
//! what it saw (an executor connected, greeted, disconnected; an answer
//! came), and sends what [`Dispatch::send`] returns. Nothing here is
//! replicated: a new leader starts with an empty one, which is the point
//! (the ledger says what is still to send).

use crate::plan::ActionStatus;
use keel_model::Action;
use std::collections::{BTreeMap, HashMap, HashSet};

/// How long a command may take to be acknowledged before it is sent
/// again, in seconds.
pub const SEND_TIMEOUT_S: f64 = 20.0;
/// A send that failed (link down, refused) is tried again after this many
/// seconds.
pub const RETRY_AFTER_S: f64 = 2.0;
/// An action that no live executor carries out fails after this many
/// seconds without one.
pub const NO_EXECUTOR_FAILS_AFTER_S: f64 = 10.0;
/// An executor that has not greeted for this many seconds is taken as gone.
pub const EXECUTOR_TTL_S: f64 = 5.0;
/// A proposal not seen applied within this many seconds may be proposed
/// again.
pub const PROPOSAL_PATIENCE_S: f64 = 5.0;
/// Executors known at once; a connection beyond this is refused (and
/// counted in [`Dispatch::executors_refused`]).
pub const MAX_EXECUTORS: usize = 4096;

/// One executor as this replica knows it.
#[derive(Debug, Clone)]
struct Executor {
    connected: bool,
    actions: Vec<Action>,
    /// Nodes whose node-local actions it carries out; `*` for any.
    nodes: Vec<String>,
    /// When it last greeted.
    seen: f64,
}

impl Executor {
    fn alive(&self, now: f64) -> bool {
        self.connected && now - self.seen < EXECUTOR_TTL_S
    }

    fn serves(&self, action: Action, node: Option<&str>) -> bool {
        self.actions.contains(&action)
            && match node {
                None => true,
                Some(n) => self.nodes.iter().any(|m| m == "*" || m == n),
            }
    }

    fn names(&self, node: Option<&str>) -> bool {
        node.is_some_and(|n| self.nodes.iter().any(|m| m == n))
    }
}

/// Where one key's send stands.
#[derive(Debug, Clone, PartialEq)]
enum Sending {
    /// Sent at `at` to `executor`; an answer from it is awaited.
    Sent {
        at: f64,
        executor: String,
        rollback: bool,
    },
    /// The last send failed; not before `at`.
    RetryAt(f64),
}

/// What to do about one `Send` or `Rollback` step.
#[derive(Debug, Clone, PartialEq)]
pub enum SendDecision {
    /// A send is under way, or waits for its retry time: nothing now.
    Wait,
    /// Send the command, numbered `id`, to `executor` now.
    Send { executor: String, id: u64 },
    /// No live executor carries it out yet; the action waits for one.
    NoExecutor,
    /// No executor for too long: commit the action as failed.
    Fail { detail: String },
}

/// What an executor's answer means for the ledger.
#[derive(Debug, Clone, PartialEq)]
pub enum AnswerDecision {
    /// Not an answer to a send under way (an unknown key, another
    /// executor, an earlier term): nothing to do.
    Ignored,
    /// The send failed; it is tried again after [`RETRY_AFTER_S`].
    RetryLater,
    /// Commit this transition.
    Transition { to: ActionStatus, detail: String },
    /// The executor refused to undo the action: it stays failed and no
    /// rollback is sent again.
    RollbackRefused { detail: String },
}

/// The leader's soft state for sending; see the module doc.
#[derive(Debug, Default)]
pub struct Dispatch {
    executors: BTreeMap<String, Executor>,
    sending: HashMap<String, Sending>,
    no_executor_since: HashMap<String, f64>,
    /// Keys with a proposal under way, and when it was made.
    proposing: HashMap<String, f64>,
    rollback_refused: HashSet<String>,
    next_id: u64,
    /// Executor connections refused because [`MAX_EXECUTORS`] were known.
    pub executors_refused: u64,
}

impl Dispatch {
    /// An executor connected; false (and counted) when too many are known.
    pub fn connected(&mut self, name: &str, now: f64) -> bool {
        if !self.executors.contains_key(name) && self.executors.len() >= MAX_EXECUTORS {
            self.executors_refused += 1;
            return false;
        }
        let e = self
            .executors
            .entry(name.to_string())
            .or_insert_with(|| Executor {
                connected: false,
                actions: Vec::new(),
                nodes: Vec::new(),
                seen: now,
            });
        e.connected = true;
        true
    }

    /// An executor's connection closed; it is forgotten.
    pub fn disconnected(&mut self, name: &str) {
        self.executors.remove(name);
    }

    /// An executor's greeting: what it carries out, and where. An executor
    /// not connected to this replica is ignored.
    pub fn greeted(&mut self, name: &str, actions: Vec<Action>, nodes: Vec<String>, now: f64) {
        if let Some(e) = self.executors.get_mut(name) {
            e.actions = actions;
            e.nodes = nodes;
            e.seen = now;
        }
    }

    /// Executors alive at `now` and the actions they carry out.
    pub fn executors(&self, now: f64) -> BTreeMap<String, Vec<String>> {
        self.executors
            .iter()
            .filter(|(_, e)| e.alive(now))
            .map(|(n, e)| (n.clone(), e.actions.iter().map(|a| a.to_string()).collect()))
            .collect()
    }

    /// A new term (or leadership lost): whatever was under way belongs to
    /// the earlier term and is forgotten.
    pub fn new_term(&mut self) {
        self.sending.clear();
        self.proposing.clear();
    }

    /// A proposal for `key` was made at `now`.
    pub fn proposing(&mut self, key: &str, now: f64) {
        self.proposing.insert(key.to_string(), now);
    }

    /// The proposal for `key` was applied (or refused): `key` may step on.
    pub fn settled(&mut self, key: &str) {
        self.proposing.remove(key);
    }

    /// Whether a proposal for `key` is under way at `now` (made less than
    /// [`PROPOSAL_PATIENCE_S`] ago and not settled).
    pub fn is_proposing(&mut self, key: &str, now: f64) -> bool {
        match self.proposing.get(key) {
            Some(at) if now - at < PROPOSAL_PATIENCE_S => true,
            Some(_) => {
                self.proposing.remove(key);
                false
            }
            None => false,
        }
    }

    /// Keys with a proposal under way, for the caller's bookkeeping.
    pub fn proposing_keys(&self) -> impl Iterator<Item = &String> {
        self.proposing.keys()
    }

    /// Whether the executor refused to roll `key` back.
    pub fn rollback_refused(&self, key: &str) -> bool {
        self.rollback_refused.contains(key)
    }

    /// The executor for `action` on `target` at `now`: a live one that
    /// carries the action out and serves the target's node, one named for
    /// the node before one that serves any, then by name.
    pub fn executor_for(&self, action: Action, target: &str, now: f64) -> Option<&str> {
        let node = node_of(target);
        self.executors
            .iter()
            .filter(|(_, e)| e.alive(now) && e.serves(action, node))
            .min_by_key(|(n, e)| (!e.names(node), *n))
            .map(|(n, _)| n.as_str())
    }

    /// What to do about sending (or rolling back) `key`, an `action` on
    /// `target`, at `now`.
    pub fn send(
        &mut self,
        key: &str,
        action: Action,
        target: &str,
        rollback: bool,
        now: f64,
    ) -> SendDecision {
        if rollback && self.rollback_refused.contains(key) {
            return SendDecision::Wait;
        }
        match self.sending.get(key) {
            Some(Sending::Sent { at, .. }) if now - at < SEND_TIMEOUT_S => {
                return SendDecision::Wait
            }
            Some(Sending::RetryAt(at)) if now < *at => return SendDecision::Wait,
            _ => {}
        }
        let Some(executor) = self.executor_for(action, target, now).map(str::to_string) else {
            let since = *self.no_executor_since.entry(key.to_string()).or_insert(now);
            if !rollback && now - since >= NO_EXECUTOR_FAILS_AFTER_S {
                self.no_executor_since.remove(key);
                return SendDecision::Fail {
                    detail: format!(
                        "no executor carries out {action} for {target} (none connected and greeting this replica)"
                    ),
                };
            }
            return SendDecision::NoExecutor;
        };
        self.no_executor_since.remove(key);
        self.next_id += 1;
        self.sending.insert(
            key.to_string(),
            Sending::Sent {
                at: now,
                executor: executor.clone(),
                rollback,
            },
        );
        SendDecision::Send {
            executor,
            id: self.next_id,
        }
    }

    /// `executor` answered the command for `key` (`Ok((ok, detail))`), or
    /// could not be reached (`Err(why)`), at `now`.
    pub fn answered(
        &mut self,
        key: &str,
        executor: &str,
        rollback: bool,
        result: Result<(bool, String), String>,
        now: f64,
    ) -> AnswerDecision {
        let ours = matches!(
            self.sending.get(key),
            Some(Sending::Sent { executor: e, rollback: r, .. }) if e == executor && *r == rollback
        );
        if !ours {
            return AnswerDecision::Ignored;
        }
        let (ok, detail) = match result {
            Err(_) => {
                self.sending
                    .insert(key.to_string(), Sending::RetryAt(now + RETRY_AFTER_S));
                return AnswerDecision::RetryLater;
            }
            Ok(answer) => answer,
        };
        self.sending.remove(key);
        let detail = format!("{executor}: {detail}");
        let to = match (rollback, ok) {
            (false, true) => ActionStatus::Acknowledged,
            (false, false) => ActionStatus::Failed,
            (true, true) => ActionStatus::RolledBack,
            (true, false) => {
                self.rollback_refused.insert(key.to_string());
                return AnswerDecision::RollbackRefused { detail };
            }
        };
        AnswerDecision::Transition { to, detail }
    }
}

/// The node a target acts on, if it names one (`node/<n>[/...]`).
pub fn node_of(target: &str) -> Option<&str> {
    let rest = target.strip_prefix("node/")?;
    Some(rest.split('/').next().unwrap_or(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(execs: &[(&str, &[Action], &[&str])]) -> Dispatch {
        let mut d = Dispatch::default();
        for (name, actions, nodes) in execs {
            assert!(d.connected(name, 0.0));
            d.greeted(
                name,
                actions.to_vec(),
                nodes.iter().map(|n| n.to_string()).collect(),
                0.0,
            );
        }
        d
    }

    fn sent_to(d: SendDecision) -> String {
        match d {
            SendDecision::Send { executor, .. } => executor,
            other => panic!("not sent: {other:?}"),
        }
    }

    #[test]
    fn the_executor_is_chosen_by_action_and_node() {
        let mut d = with(&[
            (
                "slurm",
                &[Action::DrainNode, Action::RebalanceRanks],
                &["*"],
            ),
            ("nic-n1", &[Action::RetuneNic], &["n1"]),
            ("nic-any", &[Action::RetuneNic], &["*"]),
        ]);
        assert_eq!(
            sent_to(d.send("k1", Action::DrainNode, "node/n1", false, 1.0)),
            "slurm"
        );
        // One named for the node before one that serves any.
        assert_eq!(
            sent_to(d.send("k2", Action::RetuneNic, "node/n1/eth0", false, 1.0)),
            "nic-n1"
        );
        assert_eq!(
            sent_to(d.send("k3", Action::RetuneNic, "node/n2/eth0", false, 1.0)),
            "nic-any"
        );
        // Nobody carries out this action.
        assert_eq!(
            d.send("k4", Action::RemapRequests, "job/7", false, 1.0),
            SendDecision::NoExecutor
        );
    }

    #[test]
    fn a_command_is_sent_again_after_its_timeout_and_not_before() {
        let mut d = with(&[("slurm", &[Action::DrainNode], &["*"])]);
        d.greeted("slurm", vec![Action::DrainNode], vec!["*".into()], 100.0);
        let first = d.send("k", Action::DrainNode, "node/n1", false, 100.0);
        let SendDecision::Send { id: first_id, .. } = first else {
            panic!("{first:?}")
        };
        d.greeted("slurm", vec![Action::DrainNode], vec!["*".into()], 115.0);
        assert_eq!(
            d.send("k", Action::DrainNode, "node/n1", false, 119.9),
            SendDecision::Wait
        );
        d.greeted("slurm", vec![Action::DrainNode], vec!["*".into()], 119.0);
        match d.send(
            "k",
            Action::DrainNode,
            "node/n1",
            false,
            100.0 + SEND_TIMEOUT_S,
        ) {
            SendDecision::Send { id, executor } => {
                assert_eq!(executor, "slurm");
                assert!(id > first_id);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failed_send_is_retried_after_its_pause() {
        let mut d = with(&[("slurm", &[Action::DrainNode], &["*"])]);
        sent_to(d.send("k", Action::DrainNode, "node/n1", false, 1.0));
        let a = d.answered("k", "slurm", false, Err("link down".into()), 2.0);
        assert_eq!(a, AnswerDecision::RetryLater);
        assert_eq!(
            d.send(
                "k",
                Action::DrainNode,
                "node/n1",
                false,
                2.0 + RETRY_AFTER_S - 0.1
            ),
            SendDecision::Wait
        );
        sent_to(d.send(
            "k",
            Action::DrainNode,
            "node/n1",
            false,
            2.0 + RETRY_AFTER_S,
        ));
    }

    #[test]
    fn an_executor_that_disconnected_is_not_chosen_and_the_action_fails_later() {
        let mut d = with(&[
            ("a", &[Action::DrainNode], &["*"]),
            ("b", &[Action::DrainNode], &["*"]),
        ]);
        d.disconnected("a");
        assert_eq!(
            sent_to(d.send("k", Action::DrainNode, "node/n1", false, 1.0)),
            "b"
        );
        d.disconnected("b");
        // An answer that came before the link closed still counts; after
        // it, nobody carries the action out.
        assert_eq!(
            d.answered("k", "b", false, Ok((true, "done".into())), 2.0),
            AnswerDecision::Transition {
                to: ActionStatus::Acknowledged,
                detail: "b: done".into()
            }
        );
        assert_eq!(
            d.send("k2", Action::DrainNode, "node/n1", false, 3.0),
            SendDecision::NoExecutor
        );
        assert_eq!(
            d.send("k2", Action::DrainNode, "node/n1", false, 3.0 + 9.9),
            SendDecision::NoExecutor
        );
        assert!(matches!(
            d.send(
                "k2",
                Action::DrainNode,
                "node/n1",
                false,
                3.0 + NO_EXECUTOR_FAILS_AFTER_S
            ),
            SendDecision::Fail { .. }
        ));
    }

    #[test]
    fn an_executor_that_stopped_greeting_is_gone() {
        let mut d = with(&[("a", &[Action::DrainNode], &["*"])]);
        assert!(d.executors(EXECUTOR_TTL_S - 0.1).contains_key("a"));
        assert!(d.executors(EXECUTOR_TTL_S).is_empty());
        assert_eq!(
            d.send("k", Action::DrainNode, "node/n1", false, EXECUTOR_TTL_S),
            SendDecision::NoExecutor
        );
    }

    #[test]
    fn an_answer_for_an_unknown_key_or_from_another_executor_is_ignored() {
        let mut d = with(&[("a", &[Action::DrainNode], &["*"])]);
        assert_eq!(
            d.answered("nope", "a", false, Ok((true, String::new())), 1.0),
            AnswerDecision::Ignored
        );
        sent_to(d.send("k", Action::DrainNode, "node/n1", false, 1.0));
        assert_eq!(
            d.answered("k", "b", false, Ok((true, String::new())), 1.0),
            AnswerDecision::Ignored
        );
        assert_eq!(
            d.answered("k", "a", true, Ok((true, String::new())), 1.0),
            AnswerDecision::Ignored
        );
        // After a new term, the old send is forgotten.
        d.new_term();
        assert_eq!(
            d.answered("k", "a", false, Ok((true, String::new())), 1.0),
            AnswerDecision::Ignored
        );
    }

    #[test]
    fn a_refused_rollback_is_not_sent_again() {
        let mut d = with(&[("a", &[Action::DrainNode], &["*"])]);
        sent_to(d.send("k", Action::DrainNode, "node/n1", true, 1.0));
        assert!(matches!(
            d.answered("k", "a", true, Ok((false, "cannot".into())), 2.0),
            AnswerDecision::RollbackRefused { .. }
        ));
        assert!(d.rollback_refused("k"));
        assert_eq!(
            d.send("k", Action::DrainNode, "node/n1", true, 100.0),
            SendDecision::Wait
        );
    }

    #[test]
    fn a_proposal_is_under_way_until_settled_or_out_of_patience() {
        let mut d = Dispatch::default();
        d.proposing("k", 10.0);
        assert!(d.is_proposing("k", 10.0 + PROPOSAL_PATIENCE_S - 0.1));
        assert!(!d.is_proposing("k", 10.0 + PROPOSAL_PATIENCE_S));
        d.proposing("k", 20.0);
        d.settled("k");
        assert!(!d.is_proposing("k", 20.0));
    }

    #[test]
    fn too_many_executors_are_refused_and_counted() {
        let mut d = Dispatch::default();
        for i in 0..MAX_EXECUTORS {
            assert!(d.connected(&format!("e{i}"), 0.0));
        }
        assert!(!d.connected("one-more", 0.0));
        assert_eq!(d.executors_refused, 1);
        // One already known reconnects.
        assert!(d.connected("e0", 1.0));
    }
}
