use super::*;
use crate::executors::run::Scripted;

fn exec() -> SlurmExecutor<Scripted> {
    SlurmExecutor::with_runner(Scripted::default(), Journal::in_memory())
}

fn job_line(id: u64, state: &str, nodes: &str, exc: &str) -> String {
    format!("JobId={id} JobName=serve UserId=ann(1000) Account=ml JobState={state} Reason=None ExcNodeList={exc} NodeList={nodes} Partition=gpu\n")
}

fn ran(e: &SlurmExecutor<Scripted>) -> Vec<String> {
    e.runner.ran.iter().map(|a| a.join(" ")).collect()
}

#[test]
fn bad_ids_run_nothing_and_name_the_field() {
    let mut e = exec();
    let cases = [
        (
            ExecCommand::new(Action::ReclaimZombie, "12; rm -rf /", "k1"),
            "target",
        ),
        (ExecCommand::new(Action::DrainNode, "n1,n2", "k2"), "target"),
        (
            ExecCommand::new(Action::DrainNode, "n1", "k3").param("reason", "a\nState=DOWN"),
            "reason",
        ),
        (
            ExecCommand::new(Action::RebalanceRanks, "12", "k4").param("node", "-n"),
            "node",
        ),
        (ExecCommand::new(Action::RebalanceRanks, "12", "k5"), "node"),
        (
            ExecCommand::new(Action::ResumeNode, "n1", "k6").param("force", "1"),
            "params",
        ),
    ];
    for (cmd, field) in cases {
        match e.apply(&cmd) {
            Err(ExecError::Invalid { field: f, .. }) => assert_eq!(f, field, "{cmd:?}"),
            other => panic!("{cmd:?}: {other:?}"),
        }
    }
    assert!(e.runner.ran.is_empty(), "{:?}", e.runner.ran);
    assert!(matches!(
        e.apply(&ExecCommand::new(Action::RetuneNic, "eth0", "k")),
        Err(ExecError::WrongAction { .. })
    ));
}

#[test]
fn reclaim_cancels_once_and_an_ended_job_is_already_done() {
    let mut e = exec();
    e.runner.answer(
        &["scontrol", "show", "job"],
        0,
        &job_line(7, "RUNNING", "gpu01", "(null)"),
        "",
    );
    e.runner.answer(&["scancel", "7"], 0, "", "");
    let cmd = ExecCommand::new(Action::ReclaimZombie, "7", "k").param("node", "gpu01");
    let a = e.apply(&cmd).unwrap();
    assert_eq!(a.outcome, Outcome::Done);
    assert_eq!(a.previous()["state"], "RUNNING");
    // The same key again: answered from the journal, nothing run.
    let n = e.runner.ran.len();
    assert_eq!(e.apply(&cmd).unwrap().outcome, Outcome::AlreadyDone);
    assert_eq!(e.runner.ran.len(), n);
    // A new key for a job that is gone: already done by state.
    e.runner.answer(
        &["scontrol", "show", "job"],
        1,
        "",
        "slurm_load_jobs error: Invalid job id specified",
    );
    let again = e
        .apply(&ExecCommand::new(Action::ReclaimZombie, "7", "k2"))
        .unwrap();
    assert_eq!(again.outcome, Outcome::AlreadyDone);
    assert!(matches!(
        e.rollback(&cmd),
        Err(ExecError::NotReversible { .. })
    ));
}

#[test]
fn reclaim_refuses_a_job_that_is_not_on_the_named_node() {
    let mut e = exec();
    e.runner.answer(
        &["scontrol", "show", "job"],
        0,
        &job_line(7, "RUNNING", "gpu02", "(null)"),
        "",
    );
    let cmd = ExecCommand::new(Action::ReclaimZombie, "7", "k").param("node", "gpu01");
    let err = e.apply(&cmd).unwrap_err().to_string();
    assert!(err.contains("does not run on it"), "{err}");
    assert!(!ran(&e).iter().any(|a| a.starts_with("scancel")));
}

#[test]
fn rebalance_holds_excludes_and_releases_a_running_job() {
    let mut e = exec();
    e.runner.answer(
        &["scontrol", "show", "job"],
        0,
        &job_line(9, "RUNNING", "gpu[01-02]", "gpu07"),
        "",
    );
    e.runner
        .answer(&["scontrol", "requeuehold", "9"], 0, "", "");
    e.runner
        .answer(&["scontrol", "update", "JobId=9"], 0, "", "");
    e.runner.answer(&["scontrol", "release", "9"], 0, "", "");
    let cmd = ExecCommand::new(Action::RebalanceRanks, "9", "k").param("node", "gpu02");
    let a = e.apply(&cmd).unwrap();
    assert_eq!(a.outcome, Outcome::Done);
    assert_eq!(
        ran(&e)[1..],
        [
            "scontrol requeuehold 9",
            "scontrol update JobId=9 ExcNodeList=gpu07,gpu02",
            "scontrol release 9"
        ]
    );
    assert_eq!(a.previous()["excluded_nodes"], "gpu07");
}

#[test]
fn rebalance_releases_the_job_even_when_the_update_fails() {
    let mut e = exec();
    e.runner.answer(
        &["scontrol", "show", "job"],
        0,
        &job_line(9, "RUNNING", "gpu01", "(null)"),
        "",
    );
    e.runner
        .answer(&["scontrol", "requeuehold", "9"], 0, "", "");
    e.runner.answer(
        &["scontrol", "update"],
        1,
        "",
        "slurm_update error: Invalid node name specified",
    );
    e.runner.answer(&["scontrol", "release", "9"], 0, "", "");
    let cmd = ExecCommand::new(Action::RebalanceRanks, "9", "k").param("node", "gpu01");
    let err = e.apply(&cmd).unwrap_err();
    assert!(matches!(err, ExecError::Partial { .. }), "{err}");
    assert!(err.to_string().contains("released"), "{err}");
    assert_eq!(ran(&e).last().unwrap(), "scontrol release 9");
    assert!(
        e.journal.get("k").is_none(),
        "a failed command is not remembered as applied"
    );
}

#[test]
fn rebalance_of_a_pending_job_that_excludes_the_node_is_already_done() {
    let mut e = exec();
    e.runner.answer(
        &["scontrol", "show", "job"],
        0,
        &job_line(9, "PENDING", "(null)", "gpu01"),
        "",
    );
    let cmd = ExecCommand::new(Action::RebalanceRanks, "9", "k").param("node", "gpu01");
    assert_eq!(e.apply(&cmd).unwrap().outcome, Outcome::AlreadyDone);
    assert_eq!(ran(&e).len(), 1);
}

#[test]
fn resume_rollback_drains_again_with_the_old_reason() {
    let mut e = exec();
    e.runner.answer(
        &["scontrol", "show", "node"],
        0,
        "NodeName=n1 State=IDLE+DRAIN Reason=bad psu [root@2024-01-01T00:00:00]\n",
        "",
    );
    e.runner.answer(
        &["scontrol", "update", "NodeName=n1", "State=RESUME"],
        0,
        "",
        "",
    );
    let cmd = ExecCommand::new(Action::ResumeNode, "n1", "k");
    assert_eq!(e.apply(&cmd).unwrap().outcome, Outcome::Done);
    e.runner.answer(
        &["scontrol", "show", "node"],
        0,
        "NodeName=n1 State=IDLE Reason=(null)\n",
        "",
    );
    e.runner.answer(
        &["scontrol", "update", "NodeName=n1", "State=DRAIN"],
        0,
        "",
        "",
    );
    let r = e.rollback(&cmd).unwrap();
    assert_eq!(r.outcome, Outcome::RolledBack);
    assert_eq!(
        ran(&e).last().unwrap(),
        "scontrol update NodeName=n1 State=DRAIN Reason=bad psu"
    );
    assert_eq!(e.rollback(&cmd).unwrap().outcome, Outcome::AlreadyDone);
}

#[test]
fn a_drained_node_is_already_drained_and_its_rollback_changes_nothing() {
    let mut e = exec();
    e.runner.answer(
        &["scontrol", "show", "node"],
        0,
        "NodeName=n1 State=MIXED+DRAIN Reason=ops\n",
        "",
    );
    let cmd = ExecCommand::new(Action::DrainNode, "n1", "k");
    assert_eq!(e.apply(&cmd).unwrap().outcome, Outcome::AlreadyDone);
    let r = e.rollback(&cmd).unwrap();
    assert!(r.changes.is_empty(), "{r:?}");
    assert_eq!(ran(&e).len(), 1, "the operator's drain is left alone");
}

#[test]
fn an_unknown_node_is_not_found() {
    let mut e = exec();
    e.runner
        .answer(&["scontrol", "show", "node"], 1, "", "Node n9 not found");
    let err = e
        .apply(&ExecCommand::new(Action::DrainNode, "n9", "k"))
        .unwrap_err();
    assert!(
        matches!(err, ExecError::NotFound { what: "node", .. }),
        "{err}"
    );
}
