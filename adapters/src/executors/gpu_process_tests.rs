//! The GPU process executor's reading, deciding and killing, with plain data,
//! a fake runner standing in for `nvidia-smi`, `scontrol` and `kill`, and a
//! fake `/proc` in a temporary folder.

use super::*;
use crate::executors::run::{Output, Scripted};

const UUID0: &str = "GPU-5c7c5e4b-7d6f-0a1e-9b1c-1d2e3f405060";
const UUID1: &str = "GPU-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

#[test]
fn the_gpu_list_and_compute_apps_are_read_strictly() {
    let gpus = parse_gpu_list(&format!("0, {UUID0}\n1, {UUID1}\n")).unwrap();
    assert_eq!(gpus[&1], UUID1);
    let apps = parse_compute_apps(&format!(
        "{UUID0}, 4242, 1024\n{UUID1}, 77, [N/A]\n\n{UUID1}, 78, [Insufficient Permissions]\n"
    ))
    .unwrap();
    assert_eq!(
        apps[0],
        GpuApp {
            gpu_uuid: UUID0.into(),
            pid: 4242,
            used_mib: Some(1024)
        }
    );
    assert_eq!((apps[1].pid, apps[1].used_mib), (77, None));
    assert_eq!(apps.len(), 3);
    assert!(parse_compute_apps("").unwrap().is_empty());
    assert!(parse_compute_apps("No running processes found\n")
        .unwrap()
        .is_empty());
    for (bad, names) in [
        (format!("{UUID0}, 42\n"), "2 fields"),
        (format!("{UUID0}, x42, 10\n"), "pid \"x42\""),
        (format!("{UUID0}, 0, 10\n"), "pid \"0\""),
        (format!("{UUID0}, 42, 10 MiB\n"), "used_memory"),
        ("GPU 0;rm, 42, 10\n".to_string(), "uuid"),
    ] {
        let e = parse_compute_apps(&bad).unwrap_err().to_string();
        assert!(e.contains(names) && e.contains("line"), "{bad:?}: {e}");
    }
    for bad in ["0\n", "zero, GPU-a\n", "0, GPU-a\n0, GPU-b\n", "0, \n"] {
        let e = parse_gpu_list(bad).unwrap_err().to_string();
        assert!(e.contains("line"), "{bad:?}: {e}");
    }
    let many: String = (1..=MAX_PROCESSES + 1)
        .map(|p| format!("{UUID0}, {p}, 1\n"))
        .collect();
    let e = parse_compute_apps(&many).unwrap_err().to_string();
    assert!(e.contains(&MAX_PROCESSES.to_string()), "{e}");
}

#[test]
fn the_start_time_is_field_22_whatever_the_command_name() {
    let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 104 0 0 0 0 0 0 0 20 0 1 0 987654 8192000 200 18446744073709551615";
    assert_eq!(
        parse_stat(stat),
        Ok(ProcStat {
            state: 'S',
            start: 987654
        })
    );
    let zombie = "7 (sleep) Z 1 7 7 0 -1 4194564 0 0 0 0 0 0 0 0 20 0 1 0 555 0 0";
    assert!(parse_stat(zombie).unwrap().exited());
    assert!(parse_stat("7 (sleep) S 1 2").is_err());
    assert!(parse_stat("no name").is_err());
}

fn holder(pid: u32, job: Option<u64>) -> Holder {
    Holder {
        pid,
        start: 1000 + u64::from(pid),
        used_mib: Some(512),
        job,
    }
}

fn states(s: &[(u64, Option<&str>)]) -> JobStates {
    s.iter().map(|(j, st)| (*j, st.map(String::from))).collect()
}

fn refusal(r: Result<Verdict, ExecError>) -> (String, String) {
    match r {
        Err(ExecError::Invalid { field, why, .. }) => (field, why),
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn leftovers_of_ended_jobs_and_of_no_job_are_killed() {
    let jobs = states(&[(7, Some("COMPLETED")), (8, None), (9, Some("NODE_FAIL"))]);
    let hs = [holder(100, Some(7)), holder(101, Some(7))];
    assert_eq!(
        decide(0, Some(7), &hs, &jobs, 5).unwrap(),
        Verdict::Kill(hs.to_vec())
    );
    // A job Slurm forgot has ended too; without `job`, any mix of ended
    // jobs and no job is reclaimed.
    let hs = [
        holder(100, Some(8)),
        holder(101, None),
        holder(102, Some(9)),
    ];
    assert_eq!(
        decide(3, None, &hs, &jobs, 5).unwrap(),
        Verdict::Kill(hs.to_vec())
    );
    assert_eq!(decide(3, Some(7), &[], &jobs, 5).unwrap(), Verdict::Free);
}

#[test]
fn a_process_of_a_job_that_has_not_ended_is_never_killed() {
    let jobs = states(&[
        (7, Some("COMPLETED")),
        (42, Some("RUNNING")),
        (43, Some("SUSPENDED")),
        (44, Some("REQUEUED")),
        (45, Some("SOMETHING_NEW")),
    ]);
    let (field, why) = refusal(decide(
        1,
        None,
        &[holder(100, Some(7)), holder(200, Some(42))],
        &jobs,
        5,
    ));
    assert_eq!(field, "gpu");
    assert!(
        why.contains("pid 200") && why.contains("running job 42 (RUNNING); not killed"),
        "{why}"
    );
    for (j, state) in [(43, "SUSPENDED"), (44, "REQUEUED"), (45, "SOMETHING_NEW")] {
        let (_, why) = refusal(decide(1, None, &[holder(300, Some(j))], &jobs, 5));
        assert!(
            why.contains(&format!("job {j}, which has not ended ({state})")),
            "{why}"
        );
    }
    // A running job's process refuses the whole GPU, `job` or not.
    let (_, why) = refusal(decide(
        1,
        Some(7),
        &[holder(100, Some(7)), holder(200, Some(42))],
        &jobs,
        5,
    ));
    assert!(why.contains("running job 42"), "{why}");
}

#[test]
fn init_and_the_executor_itself_are_never_killed() {
    let jobs = states(&[]);
    let (_, why) = refusal(decide(0, None, &[holder(1, None)], &jobs, 5));
    assert!(why.contains("pid 1 ") && why.contains("init"), "{why}");
    let (_, why) = refusal(decide(0, None, &[holder(5, None)], &jobs, 5));
    assert!(why.contains("this executor"), "{why}");
}

#[test]
fn with_the_ended_job_named_a_process_of_another_job_or_none_is_refused() {
    let jobs = states(&[(7, Some("COMPLETED")), (8, Some("FAILED"))]);
    let (field, why) = refusal(decide(
        0,
        Some(7),
        &[holder(100, Some(7)), holder(101, Some(8))],
        &jobs,
        5,
    ));
    assert_eq!(field, "job");
    assert!(
        why.contains("pid 101") && why.contains("job 8 (FAILED), not to job 7"),
        "{why}"
    );
    let (_, why) = refusal(decide(0, Some(7), &[holder(102, None)], &jobs, 5));
    assert!(why.contains("no Slurm job, not to job 7"), "{why}");
}

fn cmd(gpu: &str, key: &str) -> ExecCommand {
    ExecCommand::new(Action::ReclaimZombie, gpu, key)
        .param("node", "n1")
        .param("gpu", gpu)
}

#[test]
fn params_are_checked_before_anything_is_read() {
    let mut e = GpuProcessExecutor::with_runner(Scripted::default(), Journal::in_memory());
    let cases = [
        (cmd("0", "a").param("gpu_instance", "3"), "MIG instances"),
        (cmd("0", "b").param("signal", "KILL"), "unknown parameter"),
        (cmd("0", "c").param("gpu", "1"), "differs from the target"),
        (cmd("x", "d"), "whole number"),
        (
            ExecCommand::new(Action::ReclaimZombie, "0", "e").param("gpu", "0"),
            "required",
        ),
        (cmd("0", "f").param("job", "7;x"), "decimal digits"),
        (
            cmd("0", "g").param("state", "DONE"),
            "not a Slurm job state",
        ),
    ];
    for (c, says) in cases {
        let err = e.apply(&c).unwrap_err().to_string();
        assert!(err.contains(says), "{c:?}: {err}");
    }
    assert!(e.runner.ran.is_empty(), "{:?}", e.runner.ran);
}

/// A fake `/proc` entry.
fn fake_proc(root: &std::path::Path, pid: u32, start: u64, cgroup: &str, environ: &[u8]) {
    let d = root.join(pid.to_string());
    std::fs::create_dir_all(&d).unwrap();
    let stat = format!(
        "{pid} (python3) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0"
    );
    std::fs::write(d.join("stat"), stat).unwrap();
    std::fs::write(d.join("cgroup"), cgroup).unwrap();
    std::fs::write(d.join("environ"), environ).unwrap();
}

fn ok(stdout: &str) -> Output {
    Output {
        status: Some(0),
        stdout: stdout.into(),
        stderr: String::new(),
    }
}

/// What a test does to the fake `/proc` when a program runs.
type Hook = Box<dyn FnMut(&[String])>;

/// A runner that answers from a script and lets the test change the fake
/// `/proc` when a program runs: a process exiting, or a pid reused.
struct Hooked {
    script: Scripted,
    on_run: Hook,
}

impl Runner for Hooked {
    fn run(&mut self, argv: &[String]) -> Result<Output, ExecError> {
        (self.on_run)(argv);
        self.script.run(argv)
    }
}

fn executor(root: &std::path::Path, on_run: Hook) -> GpuProcessExecutor<Hooked> {
    let mut script = Scripted::default();
    script.answers.push((
        argv(["nvidia-smi", "--query-gpu=index,uuid"]),
        ok(&format!("0, {UUID0}\n1, {UUID1}\n")),
    ));
    script.answers.push((
        argv([
            "nvidia-smi",
            "--query-compute-apps=gpu_uuid,pid,used_memory",
        ]),
        ok(&format!(
            "{UUID0}, 4242, 1024\n{UUID0}, 4243, 10\n{UUID1}, 5000, 99\n"
        )),
    ));
    script.answers.push((
        argv(["scontrol", "show", "job", "-d", "-o", "7"]),
        ok("JobId=7 JobName=x JobState=COMPLETED Reason=None NodeList=n1\n"),
    ));
    let mut e = GpuProcessExecutor::with_runner(Hooked { script, on_run }, Journal::in_memory());
    e.proc_root = root.to_path_buf();
    e.grace = Duration::from_millis(100);
    e
}

#[test]
fn a_pid_reused_since_the_check_is_not_signalled_and_term_then_kill_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    // 4242: a leftover of ended job 7 (cgroup v2); 4243: job 7 by its
    // environment; 5000 on the other GPU is not looked at.
    fake_proc(
        &root,
        4242,
        111,
        "0::/system.slice/slurmstepd.scope/job_7/step_0/user/task_0\n",
        b"",
    );
    fake_proc(&root, 4243, 222, "0::/\n", b"SLURM_JOB_ID=7\0");
    let r = root.clone();
    let hook = Box::new(move |a: &[String]| {
        let pid = |p: u32| r.join(p.to_string());
        match (a.get(2).map(String::as_str), a.get(3).map(String::as_str)) {
            // Between the check and the first signal, 4243 exits and its
            // pid is given to a new process.
            (Some("job"), _) => fake_proc(&r, 4243, 999, "0::/\n", b""),
            // 4242 ignores TERM and goes at KILL.
            (Some("KILL"), Some("4242")) => std::fs::remove_dir_all(pid(4242)).unwrap(),
            _ => {}
        }
    });
    let mut e = executor(&root, hook);
    e.runner
        .script
        .answer(&["kill", "-s", "TERM", "4242"], 0, "", "");
    e.runner
        .script
        .answer(&["kill", "-s", "KILL", "4242"], 0, "", "");
    let done = e.apply(&cmd("0", "k1").param("job", "7")).unwrap();
    assert_eq!(done.outcome, Outcome::Done, "{done:?}");
    let kills: Vec<&Vec<String>> = e
        .runner
        .script
        .ran
        .iter()
        .filter(|a| a[0] == "kill")
        .collect();
    assert_eq!(
        kills,
        [
            &argv(["kill", "-s", "TERM", "4242"]),
            &argv(["kill", "-s", "KILL", "4242"])
        ],
        "4243 was never signalled"
    );
    let by_field: BTreeMap<&str, &Change> =
        done.changes.iter().map(|c| (c.field.as_str(), c)).collect();
    let c = by_field["pid:4242"];
    assert_eq!(
        (c.before.as_deref(), c.after.as_deref(), &c.status),
        (
            Some("job 7 (COMPLETED), 1024 MiB"),
            Some("killed (KILL)"),
            &ChangeStatus::Applied
        )
    );
    let c = by_field["pid:4243"];
    assert_eq!(c.status, ChangeStatus::AlreadySet);
    assert!(
        c.after.as_deref().unwrap().contains("another process"),
        "{c:?}"
    );
    // Once applied, the key answers from the journal; rollback is refused.
    assert_eq!(
        e.apply(&cmd("0", "k1").param("job", "7")).unwrap().outcome,
        Outcome::AlreadyDone
    );
    let err = e.rollback(&cmd("0", "k1").param("job", "7")).unwrap_err();
    assert!(err.to_string().contains("cannot be brought back"), "{err}");
}

#[test]
fn a_process_gone_at_term_is_killed_by_term_and_a_free_gpu_is_already_done() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    fake_proc(
        &root,
        4242,
        111,
        "4:memory:/slurm/uid_0/job_7/step_batch\n",
        b"",
    );
    fake_proc(&root, 4243, 222, "0::/\n", b"");
    let r = root.clone();
    let hook = Box::new(move |a: &[String]| {
        if a[0] == "kill" {
            std::fs::remove_dir_all(r.join(&a[3])).unwrap();
        }
    });
    let mut e = executor(&root, hook);
    for pid in ["4242", "4243"] {
        e.runner
            .script
            .answer(&["kill", "-s", "TERM", pid], 0, "", "");
    }
    let done = e.apply(&cmd("0", "k2")).unwrap();
    assert_eq!(done.outcome, Outcome::Done);
    assert!(
        done.changes
            .iter()
            .all(|c| c.after.as_deref() == Some("killed (TERM)")),
        "{done:?}"
    );
    assert_eq!(done.changes[1].before.as_deref(), Some("no job, 10 MiB"));
    // GPU 0 now free (nvidia-smi lists nothing there).
    e.runner.script.answers.push((
        argv(["nvidia-smi", "--query-gpu=index,uuid"]),
        ok(&format!("0, {UUID0}\n")),
    ));
    e.runner.script.answers.push((
        argv([
            "nvidia-smi",
            "--query-compute-apps=gpu_uuid,pid,used_memory",
        ]),
        ok(""),
    ));
    let free = e.apply(&cmd("0", "k3")).unwrap();
    assert_eq!(free.outcome, Outcome::AlreadyDone);
    assert!(free.detail.contains("nothing holds GPU 0"), "{free}");
    assert_eq!(
        e.rollback(&cmd("0", "k3")).unwrap().outcome,
        Outcome::RolledBack
    );
}

#[test]
fn a_listed_pid_missing_from_proc_is_refused_not_taken_as_gone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let mut e = executor(&root, Box::new(|_: &[String]| {}));
    // The second read lists the same pids again.
    e.runner.script.answers.push((
        argv([
            "nvidia-smi",
            "--query-compute-apps=gpu_uuid,pid,used_memory",
        ]),
        ok(&format!("{UUID0}, 4242, 1024\n")),
    ));
    let err = e.apply(&cmd("0", "k4")).unwrap_err().to_string();
    assert!(
        err.contains("pid 4242") && err.contains("namespace"),
        "{err}"
    );
    assert!(e.runner.script.ran.iter().all(|a| a[0] != "kill"));
}
