//! The node's GPU process executor against a real Slurm and real
//! processes: the one-node Slurm with GPUs faked as GRES
//! (`slurm_gres/mod.rs`, beside the host's one from
//! `tests/setup/slurm-one-node.sh`, which starts munge), a running job,
//! an ended job that left a process behind, and a process of no job.
//!
//! There is no GPU here, so `nvidia-smi` is a script the test writes: it
//! stands in for the NVIDIA driver's tool and prints the same CSV, naming
//! which of those real processes holds which GPU. Everything else is
//! real: `/proc` (cgroups, environments, start times), `scontrol` and
//! `kill`. Needs root, `slurm-wlm` and `munge`, like `exec_slurm.rs`.

use keel_adapters::executors::gpu_process::GpuProcessExecutor;
use keel_adapters::{ChangeStatus, ExecCommand, ExecError, Executor, Journal, Outcome};
use keel_model::Action;
use std::process::Command;
use std::time::Duration;

mod gpu_host;
mod slurm_gres;
mod slurm_host;
use gpu_host::{alive, fake_nvidia_smi, job_state, pids_of_job, Leftovers};
use slurm_gres::GresSlurm;
use slurm_host::{sh, start, wait_for};

fn reclaim(node: &str, gpu: u32, key: &str, job: Option<u64>) -> ExecCommand {
    let mut c = ExecCommand::new(Action::ReclaimZombie, gpu.to_string(), key)
        .param("node", node)
        .param("gpu", gpu.to_string());
    if let Some(j) = job {
        c = c.param("job", j.to_string());
    }
    c
}

fn refused(r: Result<keel_adapters::Applied, ExecError>) -> (String, String) {
    match r {
        Err(ExecError::Invalid { field, why, .. }) => (field, why),
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn a_leftover_of_an_ended_job_is_killed_and_a_running_jobs_process_never() {
    let c = start();
    let node = c.node.clone();
    let mut g = GresSlurm::start(&node);
    // K runs; J starts a process that leaves Slurm's tracking (its own
    // session, reparented when the batch script exits) and ends.
    let k = g.submit("gpu:h200:1");
    let j = g.submit_wrap("gpu:h200:1", "setsid sleep 600 & exit 0");
    let mut left = Leftovers(Vec::new());
    let mut running = Vec::new();
    let mut leftover = Vec::new();
    wait_for(
        "K running with its sleep, J completed with its leftover",
        || {
            running = pids_of_job(k, "sleep");
            leftover = pids_of_job(j, "sleep");
            let (sk, sj) = (job_state(&g, k), job_state(&g, j));
            (
                sk == "RUNNING" && sj == "COMPLETED" && running.len() == 1 && leftover.len() == 1,
                format!("K {sk} {running:?}, J {sj} {leftover:?}"),
            )
        },
    );
    let (kp, lp) = (running[0], leftover[0]);
    left.0.push(lp);
    // A process of no job, which ignores SIGTERM.
    let mut stray = Command::new("sh")
        .args(["-c", "trap '' TERM; while :; do sleep 1; done"])
        .spawn()
        .unwrap();
    let sp = stray.id();
    left.0.push(sp);

    let dir = tempfile::tempdir().unwrap();
    let mut exec = GpuProcessExecutor::new(Journal::in_memory());
    exec.nvidia_smi = fake_nvidia_smi(dir.path(), &[(0, lp, 1024), (1, kp, 2048), (2, sp, 512)]);
    exec.slurm = g.bins.clone();
    exec.grace = Duration::from_millis(500);

    // GPU 1 holds a process of running job K: refused, naming both.
    let (field, why) = refused(exec.apply(&reclaim(&node, 1, "on-k", None)));
    assert_eq!(field, "gpu");
    assert!(
        why.contains(&format!("pid {kp}")) && why.contains(&format!("running job {k} (RUNNING)")),
        "{why}"
    );
    // Named job K, but GPU 0's process belongs to ended job J: refused.
    let (field, why) = refused(exec.apply(&reclaim(&node, 0, "j-as-k", Some(k))));
    assert_eq!(field, "job");
    assert!(
        why.contains(&format!("job {j} (COMPLETED), not to job {k}")),
        "{why}"
    );
    // Named job J, but GPU 2's process belongs to no job: refused.
    let (field, why) = refused(exec.apply(&reclaim(&node, 2, "stray-as-j", Some(j))));
    assert_eq!(field, "job");
    assert!(
        why.contains(&format!("no Slurm job, not to job {j}")),
        "{why}"
    );
    assert!(
        alive(kp) && alive(lp) && alive(sp),
        "a refusal killed something"
    );

    // GPU 0 with J named: only J's leftover is killed.
    let cmd = reclaim(&node, 0, "reclaim-j", Some(j));
    let done = exec.apply(&cmd).unwrap();
    assert_eq!(done.outcome, Outcome::Done, "{done:?}");
    let ch = &done.changes[0];
    assert_eq!(
        (ch.field.clone(), ch.before.as_deref(), ch.after.as_deref()),
        (
            format!("pid:{lp}"),
            Some(format!("job {j} (COMPLETED), 1024 MiB").as_str()),
            Some("killed (TERM)")
        )
    );
    assert!(!alive(lp), "the leftover still runs");
    assert!(alive(kp) && job_state(&g, k) == "RUNNING", "K was touched");
    assert_eq!(exec.apply(&cmd).unwrap().outcome, Outcome::AlreadyDone);
    assert!(matches!(
        exec.rollback(&cmd),
        Err(ExecError::NotReversible { .. })
    ));

    // GPU 2 without a job named (a `no_job` finding): TERM is ignored,
    // so KILL after the grace.
    let done = exec
        .apply(&reclaim(&node, 2, "reclaim-stray", None))
        .unwrap();
    assert_eq!(
        (done.changes[0].after.as_deref(), &done.changes[0].status),
        (Some("killed (KILL)"), &ChangeStatus::Applied),
        "{done:?}"
    );
    assert!(stray.wait().is_ok() && !alive(sp));

    // Nothing holds GPU 3: already done.
    let free = exec.apply(&reclaim(&node, 3, "free", None)).unwrap();
    assert_eq!(free.outcome, Outcome::AlreadyDone, "{free:?}");
    assert!(free.detail.contains("nothing holds GPU 3"), "{free}");
    assert!(alive(kp), "K's process was touched");
    drop(g);
    drop(c);
}
