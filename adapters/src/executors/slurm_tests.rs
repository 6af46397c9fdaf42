use super::*;
use crate::executors::run::Scripted;

/// An executor whose runner is a fake that stands in for Slurm's clients:
/// `scontrol`, `squeue` and `scancel` answer what each test scripts (as
/// `scontrol show job -d -o` prints on Slurm 22.05), and nothing runs.
fn exec() -> SlurmExecutor<Scripted> {
    SlurmExecutor::with_runner(Scripted::default(), Journal::in_memory())
}

fn job_line(id: u64, state: &str, nodes: &str, exc: &str) -> String {
    format!("JobId={id} JobName=serve UserId=ann(1000) Account=ml JobState={state} Reason=None ExcNodeList={exc} NodeList={nodes} Partition=gpu\n")
}

/// `scontrol show job -d -o` for a job on `node` with the GRES detail `gres`.
fn job_detail(id: u64, state: &str, node: &str, gres: &str) -> String {
    format!("JobId={id} JobName=serve UserId=ann(1000) Account=ml JobState={state} Reason=None ExcNodeList=(null) NodeList={node} Partition=gpu   Nodes={node} CPU_IDs=0-1 Mem=1024 GRES={gres}\n")
}

fn reclaim(id: u64, key: &str, node: &str, gpu: u32, state: &str) -> ExecCommand {
    ExecCommand::new(Action::ReclaimZombie, id.to_string(), key)
        .param("node", node)
        .param("gpu", gpu.to_string())
        .param("state", state)
}

/// Applies a reclaim that scontrol answers with `says`; the refusal's
/// field and text, and that scancel never ran.
fn refused(says: &str, cmd: &ExecCommand) -> (String, String) {
    let mut e = exec();
    e.runner.answer(&["scontrol", "show", "job"], 0, says, "");
    e.runner.answer(&["scancel"], 0, "", "");
    let err = e.apply(cmd).unwrap_err();
    assert!(
        !ran(&e).iter().any(|a| a.starts_with("scancel")),
        "{:?}",
        ran(&e)
    );
    assert_eq!(ran(&e), [format!("scontrol show job -d -o {}", cmd.target)]);
    assert!(e.journal.get(&cmd.idempotency_key).is_none());
    match err {
        ExecError::Invalid { field, why, .. } => (field, why),
        other => panic!("{other:?}"),
    }
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
fn reclaim_checks_the_target_then_cancels_once_and_an_ended_job_is_already_done() {
    let mut e = exec();
    e.runner.answer(
        &["scontrol", "show", "job", "-d", "-o", "7"],
        0,
        &job_detail(7, "RUNNING", "gpu01", "gpu:2(IDX:1,3)"),
        "",
    );
    e.runner.answer(&["scancel", "7"], 0, "", "");
    let cmd = reclaim(7, "k", "gpu01", 3, "RUNNING");
    let a = e.apply(&cmd).unwrap();
    assert_eq!(a.outcome, Outcome::Done);
    assert_eq!(a.previous()["state"], "RUNNING");
    assert!(a.detail.contains("holding GPU 3"), "{}", a.detail);
    assert_eq!(ran(&e), ["scontrol show job -d -o 7", "scancel 7"]);
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
    let again = e.apply(&reclaim(7, "k2", "gpu01", 3, "RUNNING")).unwrap();
    assert_eq!(again.outcome, Outcome::AlreadyDone);
    // Ended since (whatever the finding assumed): nothing to cancel.
    e.runner.answer(
        &["scontrol", "show", "job"],
        0,
        &job_detail(7, "CANCELLED", "gpu01", "gpu:2(IDX:1,3)"),
        "",
    );
    let ended = e.apply(&reclaim(7, "k3", "gpu01", 3, "RUNNING")).unwrap();
    assert_eq!(ended.outcome, Outcome::AlreadyDone);
    assert!(!ran(&e)[n..].iter().any(|a| a.starts_with("scancel")));
    assert!(matches!(
        e.rollback(&cmd),
        Err(ExecError::NotReversible { .. })
    ));
}

#[test]
fn reclaim_refuses_a_job_that_is_not_on_the_named_node() {
    let (field, why) = refused(
        &job_detail(7, "RUNNING", "gpu02", "gpu:1(IDX:0)"),
        &reclaim(7, "k", "gpu01", 0, "RUNNING"),
    );
    assert_eq!(field, "node");
    assert!(
        why.contains("does not run on it (it runs on gpu02)"),
        "{why}"
    );
}

#[test]
fn reclaim_refuses_a_job_that_does_not_hold_the_gpu() {
    let (field, why) = refused(
        &job_detail(7, "RUNNING", "gpu01", "gpu:2(IDX:0,2)"),
        &reclaim(7, "k", "gpu01", 1, "RUNNING"),
    );
    assert_eq!(field, "gpu");
    assert!(
        why.contains("does not hold GPU 1 on gpu01 (Slurm allocated it GPUs 0,2)"),
        "{why}"
    );
    // A job with no GPU at all on the node.
    let (field, why) = refused(
        &job_detail(7, "RUNNING", "gpu01", ""),
        &reclaim(7, "k", "gpu01", 1, "RUNNING"),
    );
    assert_eq!(field, "gpu");
    assert!(why.contains("no GPU there"), "{why}");
}

#[test]
fn reclaim_refuses_when_the_state_changed_since_the_finding() {
    // The finding saw a hung RUNNING job; it was requeued and waits since.
    let (field, why) = refused(
        &job_detail(7, "PENDING", "gpu01", "gpu:1(IDX:0)"),
        &reclaim(7, "k", "gpu01", 0, "RUNNING"),
    );
    assert_eq!(field, "state");
    assert!(why.contains("assumed RUNNING, Slurm says PENDING"), "{why}");
    // The finding assumed the job ended; Slurm runs it (requeued, same id).
    let (field, why) = refused(
        &job_detail(7, "RUNNING", "gpu01", "gpu:1(IDX:0)"),
        &reclaim(7, "k", "gpu01", 0, "FAILED"),
    );
    assert_eq!(field, "state");
    assert!(why.contains("assumed FAILED, Slurm says RUNNING"), "{why}");
}

#[test]
fn reclaim_refuses_when_the_gpu_mapping_is_unknown() {
    // GPUs given by count only: which ones is unknown.
    let (field, why) = refused(
        &job_detail(7, "RUNNING", "gpu01", "gpu:2(CNT:2)"),
        &reclaim(7, "k", "gpu01", 0, "RUNNING"),
    );
    assert_eq!(field, "gpu");
    assert!(
        why.contains("unknown") && why.contains("not cancelled on a guess"),
        "{why}"
    );
    // No detail lines at all (a scontrol that ignores -d).
    let (field, why) = refused(
        &job_line(7, "RUNNING", "gpu01", "(null)"),
        &reclaim(7, "k", "gpu01", 0, "RUNNING"),
    );
    assert_eq!(field, "gpu");
    assert!(why.contains("unknown"), "{why}");
}

#[test]
fn reclaim_without_node_gpu_and_state_asks_nothing_and_cancels_nothing() {
    let mut e = exec();
    for (cmd, field) in [
        (ExecCommand::new(Action::ReclaimZombie, "7", "a"), "node"),
        (
            ExecCommand::new(Action::ReclaimZombie, "7", "b").param("node", "n1"),
            "gpu",
        ),
        (
            ExecCommand::new(Action::ReclaimZombie, "7", "c")
                .param("node", "n1")
                .param("gpu", "0"),
            "state",
        ),
        (reclaim(7, "d", "n1", 0, "SLEEPY"), "state"),
        (
            reclaim(7, "e", "n1", 0, "RUNNING").param("gpu", "zero"),
            "gpu",
        ),
    ] {
        match e.apply(&cmd) {
            Err(ExecError::Invalid { field: f, .. }) => assert_eq!(f, field, "{cmd:?}"),
            other => panic!("{cmd:?}: {other:?}"),
        }
    }
    assert!(e.runner.ran.is_empty(), "{:?}", e.runner.ran);
}

#[test]
fn drain_reasons_carry_the_keel_prefix() {
    let mut e = exec();
    for (key, reason, want) in [
        ("k1", Some("slow nic"), "keel: slow nic"),
        ("k2", Some("keel: xid 79"), "keel: xid 79"),
        ("k3", None, "keel: drain_node (k3)"),
    ] {
        e.runner.answer(
            &["scontrol", "show", "node"],
            0,
            "NodeName=n1 State=IDLE Reason=(null)\n",
            "",
        );
        e.runner.answer(&["scontrol", "update"], 0, "", "");
        let mut cmd = ExecCommand::new(Action::DrainNode, "n1", key);
        if let Some(r) = reason {
            cmd = cmd.param("reason", r);
        }
        assert_eq!(e.apply(&cmd).unwrap().outcome, Outcome::Done);
        assert_eq!(
            ran(&e).last().unwrap(),
            &format!("scontrol update NodeName=n1 State=DRAIN Reason={want}")
        );
    }
}

#[test]
fn resume_leaves_an_operators_drain_alone() {
    let mut e = exec();
    e.runner.answer(
        &["scontrol", "show", "node"],
        0,
        "NodeName=n1 State=IDLE+DRAIN Reason=bad psu [root@2024-01-01T00:00:00]\n",
        "",
    );
    let err = e
        .apply(&ExecCommand::new(Action::ResumeNode, "n1", "k"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"bad psu\"") && err.contains("left alone"),
        "{err}"
    );
    assert_eq!(ran(&e), ["scontrol show node -o n1"]);
    // A node down for a reason Slurm gave is not keel's either.
    e.runner.answer(
        &["scontrol", "show", "node"],
        0,
        "NodeName=n1 State=DOWN+NOT_RESPONDING Reason=Not responding [slurm@2024-01-01T00:00:00]\n",
        "",
    );
    assert!(e
        .apply(&ExecCommand::new(Action::ResumeNode, "n1", "k2"))
        .is_err());
    assert!(!ran(&e).iter().any(|a| a.contains("RESUME")));
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
        "NodeName=n1 State=IDLE+DRAIN Reason=keel: bad psu [root@2024-01-01T00:00:00]\n",
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
        "scontrol update NodeName=n1 State=DRAIN Reason=keel: bad psu"
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

#[test]
fn discovery_takes_gpu_indices_from_scontrol_when_squeue_has_none() {
    let mut e = exec();
    e.runner.answer(
        &["squeue", "--json"],
        0,
        r#"{"jobs": [{"job_id": 7, "job_state": "RUNNING", "nodes": "gpu01", "gres_detail": []}, {"job_id": 8, "job_state": "PENDING", "nodes": ""}]}"#,
        "",
    );
    e.runner.answer(
        &["scontrol", "show", "job", "-d"],
        0,
        &job_detail(7, "RUNNING", "gpu01", "gpu:2(IDX:0,2)"),
        "",
    );
    let (jobs, from) = e.jobs_from().unwrap();
    assert_eq!(jobs[0].gpus.on("gpu01"), Ok(Some(&[0u32, 2][..])));
    assert!(
        from.contains("squeue --json") && from.contains("scontrol show job -d"),
        "{from}"
    );
    // Without JSON (an old squeue), the text is read instead.
    let mut e = exec();
    e.runner.answer(
        &["squeue", "--json"],
        1,
        "",
        "squeue: unrecognized option '--json'",
    );
    e.runner.answer(
        &["scontrol", "show", "job", "-d"],
        0,
        &job_detail(7, "RUNNING", "gpu01", "gpu:1(IDX:5)"),
        "",
    );
    let (jobs, from) = e.jobs_from().unwrap();
    assert_eq!(from, "scontrol show job -d");
    assert_eq!(jobs[0].gpus.on("gpu01"), Ok(Some(&[5u32][..])));
    // scontrol failing too leaves the GPUs unknown, never guessed.
    let mut e = exec();
    e.runner.answer(
        &["squeue", "--json"],
        0,
        r#"{"jobs": [{"job_id": 7, "job_state": "RUNNING", "nodes": "gpu01"}]}"#,
        "",
    );
    e.runner.answer(
        &["scontrol", "show", "job", "-d"],
        1,
        "",
        "slurm_load_jobs error",
    );
    let jobs = e.jobs().unwrap();
    assert!(!jobs[0].gpus.is_known());
}

#[test]
fn a_job_list_neither_client_can_give_is_an_error_naming_both() {
    let mut e = exec();
    e.runner.answer(
        &["squeue", "--json"],
        0,
        r#"{"jobs": [{"job_id": 7, "job_state": "WEIRD"}]}"#,
        "",
    );
    e.runner.answer(
        &["scontrol", "show", "job", "-d"],
        0,
        "JobId=7 JobState=WEIRD NodeList=(null)\n",
        "",
    );
    let err = e.jobs().unwrap_err().to_string();
    assert!(
        err.contains("squeue --json")
            && err.contains("scontrol show job -d")
            && err.contains("job 7"),
        "{err}"
    );
}
