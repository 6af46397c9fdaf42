//! The Unix push socket against real sending processes: `python3` running
//! `contrib/keel_push.py`, started with `SLURM_JOB_ID` set or not, so that
//! the endpoint finds each sender's job the way it does on a node whose
//! Slurm tracks tasks without cgroups (`/proc/PID/environ`). Each sender
//! stays alive until the test has read what it sent, as a rank does.
//!
//! Needs `python3` on PATH, and must run outside a Slurm job's cgroup (a
//! cgroup's job would win over the environment's); each test says so when
//! it cannot run.

use keel_adapters::proc_job::job_from_cgroup;
use keel_adapters::{PushAddr, PushEndpoint, PushOptions, RecvStats};
use keel_model::Record;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Sends three collectives for job 42, then two for job 43, all from one
/// process; says `sent` and waits for its stdin to close.
const SENDER: &str = r#"
import sys, time, keel_push
for job, count in (("42", 3), ("43", 2)):
    s = keel_push.Sender(sys.argv[1], job, "n-py", 0)
    for seq in range(count):
        t = time.time()
        s.collective("allreduce", seq, 1024, t, t + 0.0002)
    assert (s.sent, s.dropped) == (count, 0), (s.sent, s.dropped)
print("sent", flush=True)
sys.stdin.read()
"#;

fn contrib() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contrib")
}

fn outside_slurm_cgroups() {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    if let Ok(Some(job)) = job_from_cgroup(&cgroup) {
        panic!("this test runs inside Slurm job {job}'s cgroup, which would be its senders' job; run it outside Slurm");
    }
}

/// A running sender, its datagrams already queued on the socket.
struct Sender(Child);

impl Sender {
    fn start(path: &Path, slurm_job: Option<&str>) -> Sender {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", SENDER])
            .arg(format!("unix://{}", path.display()))
            .env("PYTHONPATH", contrib())
            .env_remove("SLURM_JOB_ID")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(j) = slurm_job {
            cmd.env("SLURM_JOB_ID", j);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("python3 is not installed; this test runs contrib/keel_push.py with it")
            }
            Err(e) => panic!("python3: {e}"),
        };
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "sent", "the sender failed before sending");
        Sender(child)
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// Reads until `datagrams` have arrived (a Unix datagram is queued by the
/// time `sendto` returns; the poll only guards against a slow machine).
fn take(ep: &mut PushEndpoint, datagrams: u64) -> (Vec<Record>, RecvStats) {
    let (mut out, mut total) = (Vec::new(), RecvStats::default());
    let deadline = Instant::now() + Duration::from_secs(10);
    while total.datagrams < datagrams {
        assert!(Instant::now() < deadline, "only {total:?} arrived");
        let s = ep.try_recv(&mut out).unwrap();
        if s.datagrams == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        total.add(&s);
    }
    (out, total)
}

fn jobs(records: &[Record]) -> Vec<&str> {
    records
        .iter()
        .map(|r| match r {
            Record::Collective(c) => c.job.as_str(),
            other => panic!("not a collective: {other:?}"),
        })
        .collect()
}

async fn endpoint(options: PushOptions) -> (tempfile::TempDir, PathBuf, PushEndpoint) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("push.sock");
    let ep = PushEndpoint::bind_with(&PushAddr::Unix(path.clone()), &options)
        .await
        .unwrap();
    (dir, path, ep)
}

#[tokio::test]
async fn a_process_reports_only_for_its_own_job() {
    outside_slurm_cgroups();
    let (_dir, path, mut ep) = endpoint(PushOptions::default()).await;
    let mode = std::fs::metadata(&path).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o660, "the socket file's mode: {mode:o}");
    let _sender = Sender::start(&path, Some("42"));
    let (records, stats) = take(&mut ep, 5);
    assert_eq!(jobs(&records), ["42", "42", "42"]);
    assert_eq!(
        (
            stats.refused_foreign_job,
            stats.refused_unattributed,
            stats.bad
        ),
        (2, 0, 0),
        "job 43's collectives are refused: {stats:?}"
    );
}

#[tokio::test]
async fn a_process_of_no_job_is_refused_unless_allowed() {
    outside_slurm_cgroups();
    let (_dir, path, mut ep) = endpoint(PushOptions::default()).await;
    let _sender = Sender::start(&path, None);
    let (records, stats) = take(&mut ep, 5);
    assert!(records.is_empty(), "{records:?}");
    assert_eq!(
        (stats.refused_foreign_job, stats.refused_unattributed),
        (0, 5),
        "{stats:?}"
    );

    let allowed = PushOptions {
        group: None,
        allow_unattributed: true,
    };
    let (_dir, path, mut ep) = endpoint(allowed).await;
    let _sender = Sender::start(&path, None);
    let (records, stats) = take(&mut ep, 5);
    assert_eq!(jobs(&records), ["42", "42", "42", "43", "43"]);
    assert_eq!(stats.refused(), 0, "{stats:?}");
}
