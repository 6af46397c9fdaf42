//! A sensor's Unix push socket against real local processes: each may
//! report collectives only for its own Slurm job, and what is refused
//! reaches the sensor's counters. The senders are `python3` running
//! `contrib/keel_push.py`, started with `SLURM_JOB_ID` set or not (the
//! job a process's environment names, as on a node whose Slurm tracks
//! tasks without cgroups); run outside a Slurm job's cgroup, whose job
//! would win.

use keel_actors::client::ControllerAddr;
use keel_actors::sensor::{self, SensorConfig};
use keel_actors::sources::SourceConfig;
use keel_adapters::sources::push::PushConfig;
use keel_model::Role;
use keel_transport::certs::{Ca, Validity};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Sends three collectives for job 42, then two for job 43, on node n1;
/// says `sent` and waits for its stdin to close.
const SENDER: &str = r#"
import sys, time, keel_push
for job, count in (("42", 3), ("43", 2)):
    s = keel_push.Sender(sys.argv[1], job, "n1", 0)
    for seq in range(count):
        t = time.time()
        s.collective("allreduce", seq, 1024, t, t + 0.0002)
    assert (s.sent, s.dropped) == (count, 0), (s.sent, s.dropped)
print("sent", flush=True)
sys.stdin.read()
"#;

struct Sender(Child);

impl Sender {
    fn start(socket: &Path, slurm_job: Option<&str>) -> Sender {
        let contrib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contrib");
        let mut cmd = Command::new("python3");
        cmd.args(["-c", SENDER])
            .arg(format!("unix://{}", socket.display()))
            .env("PYTHONPATH", contrib)
            .env_remove("SLURM_JOB_ID")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(j) = slurm_job {
            cmd.env("SLURM_JOB_ID", j);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("python3: {e} (this test runs contrib/keel_push.py)"));
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

#[test]
fn the_push_source_takes_a_group_and_allow_unattributed_named_by_type_or_kind() {
    let cfg: SensorConfig = toml::from_str(
        "node = \"n1\"\ncredentials = \"/c\"\ncontrollers = []\n\
         [[source]]\ntype = \"push\"\nlisten = \"unix:///run/keel/push.sock\"\n\
         group = \"keel\"\nallow_unattributed = true\n\
         [[source]]\nkind = \"push\"\nlisten = \"udp://127.0.0.1:7600\"\n",
    )
    .unwrap();
    assert_eq!(
        cfg.sources,
        [
            SourceConfig::Push(PushConfig {
                listen: "unix:///run/keel/push.sock".into(),
                group: Some("keel".into()),
                allow_unattributed: true,
            }),
            SourceConfig::push("udp://127.0.0.1:7600"),
        ]
    );
    let typo = "node = \"n1\"\ncredentials = \"/c\"\ncontrollers = []\n\
                [[source]]\ntype = \"push\"\nlisten = \"/s\"\nallow_unattributed_jobs = true\n";
    let e = toml::from_str::<SensorConfig>(typo)
        .unwrap_err()
        .to_string();
    assert!(e.contains("allow_unattributed_jobs"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_process_reports_through_the_push_socket_only_for_its_own_job() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate(Validity::days(1)).unwrap();
    let creds = dir.path().join("sensor-n1");
    let pem = ca.issue(Role::Sensor, "n1", Validity::days(1)).unwrap();
    keel_transport::certs::write_credentials(&creds, &ca.pem.cert, &pem).unwrap();
    let socket = dir.path().join("push.sock");
    let cfg = SensorConfig {
        node: "n1".into(),
        credentials: creds,
        controllers: vec![ControllerAddr {
            addr: "127.0.0.1:9".parse().unwrap(),
            name: "ctl-1".into(),
        }],
        window_len: Some(2),
        sources: vec![SourceConfig::push(format!("unix://{}", socket.display()))],
        executor: None,
    };
    let (sensor, _) = sensor::start(cfg, None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the push socket never appeared");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let in_job = Sender::start(&socket, Some("42"));
    let no_job = Sender::start(&socket, None);
    let mut s = None;
    while Instant::now() < deadline {
        s = sensor::stats(&sensor).await;
        if s.as_ref().is_some_and(|s| {
            s.push_refused_foreign_job + s.push_refused_unattributed >= 7 && s.events >= 3
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop((in_job, no_job));
    let s = s.expect("the sensor answers");
    assert_eq!(
        (
            s.events,
            s.push_refused_foreign_job,
            s.push_refused_unattributed
        ),
        (3, 2, 5),
        "job 42's three collectives taken; job 43's two refused as foreign, \
         the jobless sender's five as unattributed: {s:?}"
    );
    sensor.stop(None);
}
