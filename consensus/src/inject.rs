//! Fault injections in the ledger (`inject_fault`, `keel chaos inject`):
//! what the state machine checks before it records one, and how a cancel
//! of one already acting becomes its revert. Deterministic, like the rest
//! of `State::apply`: the checks read only the replicated state.

use crate::state::{ActionStatus, State};
use keel_model::action::{INJECT_CAUSES, INJECT_MAX_S};
use std::collections::BTreeMap;

impl State {
    /// Why an `inject_fault` on `target` with `params` may not be recorded,
    /// or `Ok` when it may: the cause is one keel knows, the duration is
    /// bounded (`duration_s` in (0, `INJECT_MAX_S`]), the target is a node
    /// (`node/N`) the controller knows (registered, or where a job has
    /// ranks), and a named `job` and `rank` place that rank on that node in
    /// the job's record, the job still running. Whether the node is open to
    /// chaos is its executor's to say, when the injection reaches it.
    pub fn injection_refused(
        &self,
        target: &str,
        params: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        let cause = params.get("cause").map(String::as_str).unwrap_or("");
        if !INJECT_CAUSES.contains(&cause) {
            return Err(format!(
                "cause {cause:?}: expected one of {}",
                INJECT_CAUSES.join(", ")
            ));
        }
        let dur = params.get("duration_s").map(String::as_str).unwrap_or("");
        match dur.parse::<f64>() {
            Ok(d) if d > 0.0 && d <= INJECT_MAX_S => {}
            _ => {
                return Err(format!(
                    "duration_s {dur:?}: a fault lasts more than 0 and at most {INJECT_MAX_S} s"
                ))
            }
        }
        let node = match target.split('/').collect::<Vec<_>>().as_slice() {
            ["node", n] if !n.is_empty() => n.to_string(),
            _ => return Err(format!("target {target:?}: expected node/NODE")),
        };
        let known = self.nodes.keys().any(|n| n.as_str() == node)
            || self
                .jobs
                .values()
                .any(|j| j.ranks.keys().any(|n| n.as_str() == node));
        if !known {
            return Err(format!(
                "node {node} is not known to the controller (no registration, no job's ranks there)"
            ));
        }
        match (params.get("job"), params.get("rank")) {
            (None, None) => Ok(()),
            (Some(job), Some(rank)) => {
                let Some(j) = self.jobs.values().find(|j| j.job.as_str() == job) else {
                    return Err(format!("job {job} is not known to the controller"));
                };
                if j.state.is_finished() {
                    return Err(format!("job {job} has ended"));
                }
                let rank: u32 = rank
                    .parse()
                    .map_err(|_| format!("rank {rank:?}: expected a number"))?;
                let here = j
                    .ranks
                    .iter()
                    .find(|(n, _)| n.as_str() == node)
                    .is_some_and(|(_, rs)| rs.contains(&rank));
                if here {
                    Ok(())
                } else {
                    Err(format!(
                        "job {job} has no rank {rank} on node {node} (its record places it elsewhere)"
                    ))
                }
            }
            _ => Err("give both `job` and `rank`, or neither".into()),
        }
    }

    /// A cancel of the acknowledged injection `key` (`keel action cancel`):
    /// the status it moves to instead of `Cancelled` — `Failed`, whose
    /// rollback the leader then sends. `None` for any other action.
    pub(crate) fn cancel_as_revert(&self, key: &str, to: ActionStatus) -> Option<ActionStatus> {
        let e = self.ledger.get(key)?;
        (to == ActionStatus::Cancelled
            && e.action == keel_model::Action::InjectFault
            && e.status == ActionStatus::Acknowledged)
            .then_some(ActionStatus::Failed)
    }
}

#[cfg(test)]
mod tests {
    use crate::state::{Command, Handling, Outcome, Proposal, Rejection, State};
    use keel_model::{Action, ActionStatus};
    use std::collections::BTreeMap;

    fn p(seq: u64, command: Command) -> Vec<u8> {
        Proposal {
            client: "operator:op".into(),
            seq,
            command,
        }
        .encode()
    }

    fn inject(key: &str, target: &str, kv: &[(&str, &str)]) -> Command {
        Command::PlanAction {
            key: key.into(),
            action: Action::InjectFault,
            target: target.into(),
            params: kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            finding: None,
            ts: 1.0,
            reason: "chaos test".into(),
            handling: Handling::default(),
        }
    }

    fn with_job() -> State {
        let mut s = State::default();
        let record = serde_json::from_value(serde_json::json!({
            "t": "job", "ts": 0.0, "job": "j1", "state": "RUNNING",
            "nodes": ["n1", "n2"], "ranks": {"n1": [0], "n2": [1]}
        }))
        .unwrap();
        s.apply(1, &p(1, Command::Job { record }));
        s
    }

    fn refused(o: Outcome) -> String {
        match o {
            Outcome::Rejected(Rejection::Refused(why)) => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn an_injection_is_bounded_and_placed_where_the_state_says() {
        let mut s = with_job();
        let ok = [("cause", "host"), ("duration_s", "10")];
        let why = refused(s.apply(2, &p(2, inject("a", "node/n9", &ok))));
        assert!(why.contains("n9 is not known"), "{why}");
        let why = refused(s.apply(
            3,
            &p(
                3,
                inject("b", "node/n1", &[("cause", "host"), ("duration_s", "601")]),
            ),
        ));
        assert!(why.contains("at most 600"), "{why}");
        let why = refused(s.apply(
            4,
            &p(
                4,
                inject("c", "node/n1", &[("cause", "disk"), ("duration_s", "5")]),
            ),
        ));
        assert!(why.contains("cause"), "{why}");
        let why = refused(s.apply(
            5,
            &p(
                5,
                inject(
                    "d",
                    "node/n1",
                    &[
                        ("cause", "host"),
                        ("duration_s", "5"),
                        ("job", "j1"),
                        ("rank", "1"),
                    ],
                ),
            ),
        ));
        assert!(why.contains("no rank 1 on node n1"), "{why}");
        let o = s.apply(
            6,
            &p(
                6,
                inject(
                    "e",
                    "node/n2",
                    &[
                        ("cause", "host"),
                        ("duration_s", "5"),
                        ("job", "j1"),
                        ("rank", "1"),
                    ],
                ),
            ),
        );
        assert_eq!(o, Outcome::Applied);
        assert_eq!(s.ledger.len(), 1);
        assert_eq!(s.audit[0].by, "operator:op");
    }

    #[test]
    fn cancelling_an_acting_injection_asks_for_its_revert() {
        let mut s = with_job();
        let ok = [("cause", "host"), ("duration_s", "10")];
        s.apply(2, &p(2, inject("k", "node/n1", &ok)));
        let mv = |to, seq| {
            p(
                seq,
                Command::Transition {
                    key: "k".into(),
                    to,
                    ts: seq as f64,
                    detail: "by hand".into(),
                },
            )
        };
        s.apply(3, &mv(ActionStatus::Dispatched, 3));
        s.apply(4, &mv(ActionStatus::Acknowledged, 4));
        assert_eq!(
            s.apply(5, &mv(ActionStatus::Cancelled, 5)),
            Outcome::Applied
        );
        assert_eq!(s.ledger["k"].status, ActionStatus::Failed);
        assert!(s.ledger["k"].detail.contains("revert"));
        assert_eq!(
            s.apply(6, &mv(ActionStatus::RolledBack, 6)),
            Outcome::Applied
        );
        // An acknowledged injection may also be rolled back at its expiry.
        s.apply(7, &p(7, inject("k2", "node/n1", &ok)));
        s.apply(8, &mv2("k2", ActionStatus::Dispatched, 8));
        s.apply(9, &mv2("k2", ActionStatus::Acknowledged, 9));
        assert_eq!(
            s.apply(10, &mv2("k2", ActionStatus::RolledBack, 10)),
            Outcome::Applied
        );
    }

    fn mv2(key: &str, to: ActionStatus, seq: u64) -> Vec<u8> {
        p(
            seq,
            Command::Transition {
                key: key.into(),
                to,
                ts: seq as f64,
                detail: String::new(),
            },
        )
    }
}
