//! The Slurm executor against a real one-node Slurm on this host: munge,
//! slurmctld and slurmd, configured and started by
//! `tests/setup/slurm-one-node.sh`, with real jobs.
//!
//! Needs root and the Debian packages `slurm-wlm` and `munge`
//! (`apt-get install -y slurm-wlm munge`); without them the test fails,
//! saying what is missing, rather than skipping. Slurm is global state, so
//! the whole flow is one test that holds a lock file for its run, and it
//! leaves the node in service and stops the daemons it started.

use keel_adapters::executors::slurm::SlurmExecutor;
use keel_adapters::{ExecCommand, ExecError, Executor, Journal, Outcome};
use keel_model::{Action, JobState};

mod slurm_gres;
mod slurm_host;
use slurm_gres::GresSlurm;
use slurm_host::{sh, start, wait_for, Cluster};

fn submit(c: &mut Cluster) -> u64 {
    let (ok, out, err) = sh(
        "sbatch",
        &[
            "--parsable",
            "-J",
            "keel-test",
            "-o",
            "/dev/null",
            "--chdir",
            "/tmp",
            "--wrap",
            "sleep 300",
        ],
    );
    assert!(ok, "sbatch failed: {err}");
    let id: u64 = out
        .trim()
        .split(';')
        .next()
        .unwrap_or("")
        .parse()
        .expect("sbatch --parsable prints the job id");
    c.jobs.push(id);
    id
}

fn in_squeue(id: u64) -> (bool, String) {
    let (_, out, _) = sh("squeue", &["-h", "-o", "%i %T"]);
    let listed = out
        .lines()
        .any(|l| l.split_whitespace().next() == Some(&id.to_string()));
    (listed, out)
}

fn node_state(node: &str) -> String {
    sh("scontrol", &["show", "node", "-o", node]).1
}

#[test]
fn slurm_jobs_are_found_checked_requeued_and_nodes_drained_and_resumed() {
    let mut c = start();
    let node = c.node.clone();
    let dir = tempfile::tempdir().unwrap();
    let journal_path = dir.path().join("slurm-journal.json");
    let mut exec = SlurmExecutor::new(Journal::open(&journal_path).unwrap());

    // Discovery: two real jobs, found running through squeue --json.
    let zombie = submit(&mut c);
    let moved = submit(&mut c);
    wait_for("both jobs running in squeue --json", || {
        let jobs = exec.jobs().expect("squeue --json");
        let running = |id| {
            jobs.iter()
                .any(|j| j.job_id == id && j.job_state() == JobState::Running)
        };
        (running(zombie) && running(moved), format!("{jobs:?}"))
    });
    let jobs = exec.jobs().unwrap();
    let j = jobs.iter().find(|j| j.job_id == zombie).unwrap();
    assert_eq!(j.nodes, [node.as_str()]);
    assert_eq!(
        (j.user.as_str(), j.partition.as_str(), j.name.as_str()),
        ("root", "debug", "keel-test")
    );
    let record = j.to_record(1.0, 1);
    assert_eq!(record.job, zombie.to_string());
    assert_eq!(record.ranks.get(node.as_str()), Some(&vec![0]));
    // No GRES on this node: Slurm says the job holds no GPU there.
    assert_eq!(record.node_gpus.get(node.as_str()), Some(&vec![]));
    let by_scontrol = exec
        .job(zombie)
        .unwrap()
        .expect("scontrol show job finds it");
    assert_eq!(
        (by_scontrol.state.as_str(), by_scontrol.nodes.clone()),
        ("RUNNING", vec![node.clone()])
    );

    // reclaim_zombie on a wrong target: refused, naming what did not hold,
    // and the job still runs.
    let reclaim = |key: &str, on: &str, gpu: &str, state: &str| {
        ExecCommand::new(Action::ReclaimZombie, zombie.to_string(), key)
            .param("node", on)
            .param("gpu", gpu)
            .param("state", state)
    };
    for (cmd, field, says) in [
        (
            reclaim("wrong-node", "elsewhere", "0", "RUNNING"),
            "node",
            "does not run on it",
        ),
        (
            reclaim("wrong-gpu", &node, "0", "RUNNING"),
            "gpu",
            "does not hold GPU 0",
        ),
        (
            reclaim("wrong-state", &node, "0", "PENDING"),
            "state",
            "assumed PENDING, Slurm says RUNNING",
        ),
    ] {
        match exec.apply(&cmd) {
            Err(ExecError::Invalid { field: f, why, .. }) => {
                assert_eq!(f, field, "{why}");
                assert!(why.contains(says), "{why}");
            }
            other => panic!("{cmd:?}: {other:?}"),
        }
    }
    // A Slurm answer without GRES detail (scontrol without -d): the
    // mapping is unknown, and nothing is cancelled on a guess.
    let bin = tempfile::tempdir().unwrap();
    let no_detail = bin.path().join("scontrol");
    std::fs::write(
        &no_detail,
        "#!/bin/sh\n[ \"$1 $2 $3\" = 'show job -d' ] && { shift 3; exec scontrol show job \"$@\"; }\nexec scontrol \"$@\"\n",
    )
    .unwrap();
    sh("chmod", &["+x", &no_detail.display().to_string()]);
    let mut plain = SlurmExecutor::new(Journal::in_memory());
    plain.bins.scontrol = no_detail.display().to_string();
    match plain.apply(&reclaim("unknown", &node, "0", "RUNNING")) {
        Err(ExecError::Invalid { field, why, .. }) => {
            assert_eq!(field, "gpu");
            assert!(why.contains("unknown") && why.contains("-d"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    assert!(in_squeue(zombie).0, "a refused reclaim cancelled the job");
    assert!(sh("scancel", &[&zombie.to_string()]).0);
    wait_for("the cancelled job gone from squeue", || {
        let (listed, seen) = in_squeue(zombie);
        (!listed, seen)
    });
    // Ended since the finding: nothing to cancel, already done.
    let again = exec
        .apply(&reclaim("reclaim-2", &node, "0", "RUNNING"))
        .unwrap();
    assert_eq!(again.outcome, Outcome::AlreadyDone, "{again:?}");

    // rebalance_ranks: requeued with the node excluded (on one node: pending).
    let rebalance = ExecCommand::new(Action::RebalanceRanks, moved.to_string(), "rebalance-1")
        .param("node", &node);
    let a = exec.apply(&rebalance).unwrap();
    assert_eq!(a.outcome, Outcome::Done, "{a:?}");
    wait_for("the requeued job pending, excluding the node", || {
        let j = exec.job(moved).unwrap();
        let ok = j.as_ref().is_some_and(|j| {
            j.job_state() == JobState::Pending && j.excluded_nodes == [node.as_str()]
        });
        (ok, format!("{j:?}"))
    });
    let fresh = ExecCommand::new(Action::RebalanceRanks, moved.to_string(), "rebalance-2")
        .param("node", &node);
    assert_eq!(exec.apply(&fresh).unwrap().outcome, Outcome::AlreadyDone);
    assert!(sh("scancel", &[&moved.to_string()]).0);

    // drain_node / resume_node, each checked through Slurm's own view.
    let drain = ExecCommand::new(Action::DrainNode, &node, "drain-1")
        .param("reason", "keel test: slow nic");
    assert_eq!(exec.apply(&drain).unwrap().outcome, Outcome::Done);
    assert!(
        node_state(&node).contains("+DRAIN"),
        "{}",
        node_state(&node)
    );
    let (_, sinfo, _) = sh("sinfo", &["-h", "-n", &node, "-o", "%T|%E"]);
    assert!(
        sinfo.starts_with("drain") && sinfo.contains("keel: keel test: slow nic"),
        "sinfo: {sinfo}"
    );
    let again = exec
        .apply(&ExecCommand::new(Action::DrainNode, &node, "drain-2"))
        .unwrap();
    assert_eq!(again.outcome, Outcome::AlreadyDone, "{again:?}");

    let resume = ExecCommand::new(Action::ResumeNode, &node, "resume-1");
    assert_eq!(exec.apply(&resume).unwrap().outcome, Outcome::Done);
    assert!(
        !node_state(&node).contains("DRAIN"),
        "{}",
        node_state(&node)
    );
    let again = exec
        .apply(&ExecCommand::new(Action::ResumeNode, &node, "resume-2"))
        .unwrap();
    assert_eq!(again.outcome, Outcome::AlreadyDone);

    // Rolling the resume back drains again, with the reason the node had.
    assert_eq!(exec.rollback(&resume).unwrap().outcome, Outcome::RolledBack);
    let (_, sinfo, _) = sh("sinfo", &["-h", "-n", &node, "-o", "%T|%E"]);
    assert!(
        sinfo.starts_with("drain") && sinfo.contains("keel test: slow nic"),
        "sinfo: {sinfo}"
    );
    // And rolling the drain back resumes it.
    assert_eq!(exec.rollback(&drain).unwrap().outcome, Outcome::RolledBack);
    assert!(
        !node_state(&node).contains("DRAIN"),
        "{}",
        node_state(&node)
    );
    assert_eq!(exec.rollback(&drain).unwrap().outcome, Outcome::AlreadyDone);

    // An operator's own drain: resume_node refuses it and leaves it.
    assert!(
        sh(
            "scontrol",
            &[
                "update",
                &format!("NodeName={node}"),
                "State=DRAIN",
                "Reason=ops: bad psu"
            ]
        )
        .0
    );
    let err = exec
        .apply(&ExecCommand::new(Action::ResumeNode, &node, "resume-3"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ops: bad psu") && err.contains("left alone"),
        "{err}"
    );
    assert!(node_state(&node).contains("DRAIN"), "{}", node_state(&node));
    assert!(
        sh(
            "scontrol",
            &["update", &format!("NodeName={node}"), "State=RESUME"]
        )
        .0
    );

    // Unknown names are errors that say so.
    let err = exec
        .apply(&ExecCommand::new(
            Action::DrainNode,
            "no-such-node",
            "drain-3",
        ))
        .unwrap_err();
    assert!(
        matches!(err, ExecError::NotFound { what: "node", .. }),
        "{err}"
    );

    // The journal file holds what was applied, for a restarted executor.
    let reopened = Journal::open(&journal_path).unwrap();
    assert!(reopened.get("rebalance-1").is_some() && reopened.get("drain-1").unwrap().rolled_back);
    assert!(
        reopened.get("wrong-node").is_none(),
        "a refusal is not remembered as applied"
    );
    let mut restarted = SlurmExecutor::new(reopened);
    assert_eq!(
        restarted.apply(&rebalance).unwrap().outcome,
        Outcome::AlreadyDone
    );
}

#[test]
fn a_reclaim_cancels_only_the_job_that_holds_the_gpu_on_a_node_with_gpus() {
    let c = start();
    let node = c.node.clone();
    let mut g = GresSlurm::start(&node);
    let a = g.submit("gpu:h200:1");
    let b = g.submit("gpu:h200:1");
    let mig = g.submit("gpu:1g.18gb:1");
    let mut exec = SlurmExecutor::new(Journal::in_memory());
    exec.bins = g.bins.clone();
    wait_for("three jobs running", || {
        let jobs = exec.jobs().expect("squeue --json");
        let running = jobs
            .iter()
            .filter(|j| j.job_state() == JobState::Running)
            .count();
        (running == 3, format!("{jobs:?}"))
    });
    // Slurm's own allocation: each whole-GPU job holds one of 0 and 1; the
    // MIG instance's index counts instances, so its GPU is unknown.
    let jobs = exec.jobs().unwrap();
    let gpu_of = |id: u64| {
        let j = jobs.iter().find(|j| j.job_id == id).unwrap();
        match j.gpus.on(&node) {
            Ok(Some(g)) if g.len() == 1 => g[0],
            other => panic!("job {id}: {other:?}"),
        }
    };
    let (ga, gb) = (gpu_of(a), gpu_of(b));
    let mut both = [ga, gb];
    both.sort();
    assert_eq!(both, [0, 1]);
    let m = jobs.iter().find(|j| j.job_id == mig).unwrap();
    assert!(
        matches!(m.gpus.on(&node), Err(w) if w.contains("MIG")),
        "{m:?}"
    );
    let rec = jobs
        .iter()
        .find(|j| j.job_id == a)
        .unwrap()
        .to_record(1.0, 1);
    assert_eq!(rec.node_gpus[node.as_str()], vec![ga]);

    let reclaim = |id: u64, key: &str, gpu: u32| {
        ExecCommand::new(Action::ReclaimZombie, id.to_string(), key)
            .param("node", &node)
            .param("gpu", gpu.to_string())
            .param("state", "RUNNING")
    };
    // B does not hold A's GPU: refused.
    match exec.apply(&reclaim(b, "b-on-a", ga)) {
        Err(ExecError::Invalid { field, why, .. }) => {
            assert_eq!(field, "gpu");
            assert!(why.contains(&format!("does not hold GPU {ga}")), "{why}");
        }
        other => panic!("{other:?}"),
    }
    // The MIG job: mapping unknown, refused.
    match exec.apply(&reclaim(mig, "mig", 2)) {
        Err(ExecError::Invalid { field, why, .. }) => {
            assert_eq!(field, "gpu");
            assert!(why.contains("unknown"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    // A on its own GPU: cancelled, and only A.
    let done = exec.apply(&reclaim(a, "a-on-a", ga)).unwrap();
    assert_eq!(done.outcome, Outcome::Done, "{done:?}");
    wait_for("A ended, B and the MIG job still running", || {
        let jobs = exec.jobs().unwrap();
        let state = |id: u64| jobs.iter().find(|j| j.job_id == id).map(|j| j.job_state());
        let ok = state(a).is_none_or(|s| s.is_finished())
            && state(b) == Some(JobState::Running)
            && state(mig) == Some(JobState::Running);
        (ok, format!("{jobs:?}"))
    });
    drop(g);
    drop(c);
}
