//! `contrib/keel_push.py` against a real push endpoint: what the Python
//! client sends decodes into the records it meant. Needs `python3` on PATH;
//! without it the test fails, saying so.

use keel_adapters::sources::push::{PushAddr, PushEndpoint, PushOptions, RecvStats};
use keel_model::{CollectiveRecord, Record};
use std::path::PathBuf;
use std::process::{Command, Output};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contrib/keel_push.py")
}

fn python(args: &[&str]) -> Output {
    match Command::new("python3").args(args).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("python3 is not installed; this test runs contrib/keel_push.py with it")
        }
        Err(e) => panic!("python3: {e}"),
    }
}

async fn endpoint() -> (PushEndpoint, String) {
    let ep = PushEndpoint::bind(&"127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let PushAddr::Udp(a) = ep.local_addr().unwrap() else {
        panic!("not udp")
    };
    (ep, a.to_string())
}

/// Everything already queued: the client has exited, and loopback delivery
/// is done by the time `sendto` returns.
fn drain(ep: &mut PushEndpoint) -> (Vec<CollectiveRecord>, RecvStats) {
    let (mut out, mut total) = (Vec::new(), RecvStats::default());
    loop {
        let s = ep.try_recv(&mut out).unwrap();
        if s.datagrams == 0 {
            break;
        }
        total.add(&s);
    }
    let records = out
        .into_iter()
        .map(|r| match r {
            Record::Collective(c) => c,
            other => panic!("not a collective: {other:?}"),
        })
        .collect();
    (records, total)
}

#[tokio::test]
async fn selftest_records_decode_with_their_fields() {
    let (mut ep, addr) = endpoint().await;
    let s = script();
    let out = python(&[
        s.to_str().unwrap(),
        "--selftest",
        &addr,
        "--count",
        "25",
        "--job",
        "4242",
        "--node",
        "n-py",
        "--rank",
        "3",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    assert!(stderr.contains("sent 25, dropped 0"), "{stderr}");
    let (records, stats) = drain(&mut ep);
    assert_eq!((stats.datagrams, stats.bad), (25, 0), "{stats:?}");
    assert_eq!(
        stats.unknown_fields, 25,
        "`pg` is an extra field keel counts"
    );
    let seqs: Vec<u64> = records.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, (0..25).collect::<Vec<_>>());
    for c in &records {
        assert_eq!(
            (c.job.as_str(), c.node.as_str(), c.rank),
            ("4242", "n-py", 3)
        );
        assert_eq!((c.op.as_str(), c.bytes), ("allreduce", 16 << 20));
        assert!(c.arrive < c.ts, "{c:?}");
        let dur = (c.ts - c.arrive) * 1e6;
        assert!(
            (dur - c.dur_us).abs() < 1.0,
            "dur_us {} vs ts - arrive {dur}",
            c.dur_us
        );
    }
}

#[tokio::test]
async fn selftest_reaches_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("push.sock");
    // The client has exited by the time its datagrams are read, so its job
    // cannot be told: they are taken only where that is allowed.
    let options = PushOptions {
        group: None,
        allow_unattributed: true,
    };
    let mut ep = PushEndpoint::bind_with(&PushAddr::Unix(path.clone()), &options)
        .await
        .unwrap();
    let s = script();
    let addr = format!("unix://{}", path.display());
    let out = python(&[
        s.to_str().unwrap(),
        "--selftest",
        &addr,
        "--count",
        "4",
        "--job",
        "4242",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    assert!(stderr.contains("sent 4, dropped 0"), "{stderr}");
    let (records, stats) = drain(&mut ep);
    assert_eq!((stats.datagrams, stats.bad, stats.refused()), (4, 0, 0));
    assert_eq!(
        records.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
}

#[tokio::test]
async fn a_bad_address_is_refused_by_the_client() {
    let s = script();
    let out = python(&[s.to_str().unwrap(), "--selftest", "no-port", "--count", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'no-port'"));
}

/// A stand-in for torch.distributed with torch's signatures, so that the
/// wrapping is tested where torch is not installed.
const FAKE_TORCH: &str = r#"
class Tensor:
    def __init__(self, n, size=4): self.n, self.size = n, size
    def numel(self): return self.n
    def element_size(self): return self.size

class _Cuda:
    @staticmethod
    def is_available(): return False
cuda = _Cuda()
"#;

const FAKE_DIST: &str = r#"
import time
calls = []
class GroupMember: WORLD = object()
class ProcessGroup:
    def __init__(self, name): self.group_name = name
def get_rank(): return 6
def all_reduce(tensor, op=None, group=None, async_op=False):
    calls.append("all_reduce"); time.sleep(0.001)
    return "work" if async_op else None
def all_gather(tensor_list, tensor, group=None, async_op=False): calls.append("all_gather")
def reduce_scatter_tensor(output, input, op=None, group=None, async_op=False): calls.append("rs")
def broadcast(tensor, src, group=None, async_op=False): calls.append("broadcast")
def barrier(group=None, async_op=False, device_ids=None): calls.append("barrier")
"#;

const DRIVER: &str = r#"
import sys, keel_push, torch
import torch.distributed as dist
keel_push.instrument(job="77", node="n-fake")
tp = dist.ProcessGroup("tp0")
T = torch.Tensor
dist.all_reduce(T(1024))                        # world 0
dist.all_reduce(T(1024), group=dist.GroupMember.WORLD)  # world 1
dist.all_gather([T(256), T(256), T(256), T(256)], T(256), group=tp)  # tp0 0
assert dist.all_reduce(T(8), async_op=True) == "work"    # not reported
dist.reduce_scatter_tensor(T(64), T(256), group=tp)      # tp0 1
dist.broadcast(T(10, 2), 0)                     # world 2
dist.barrier()                                  # world 3
assert dist.calls == ["all_reduce", "all_reduce", "all_gather", "all_reduce", "rs", "broadcast", "barrier"], dist.calls
"#;

/// Runs DRIVER against a fresh endpoint with the fake torch on the path.
async fn run_driver(groups: Option<&str>) -> Vec<CollectiveRecord> {
    let dir = tempfile::tempdir().unwrap();
    let torch = dir.path().join("torch");
    std::fs::create_dir(&torch).unwrap();
    std::fs::write(torch.join("__init__.py"), FAKE_TORCH).unwrap();
    std::fs::write(torch.join("distributed.py"), FAKE_DIST).unwrap();
    std::fs::copy(script(), dir.path().join("keel_push.py")).unwrap();
    std::fs::write(dir.path().join("driver.py"), DRIVER).unwrap();

    let (mut ep, addr) = endpoint().await;
    let mut cmd = Command::new("python3");
    cmd.arg(dir.path().join("driver.py"))
        .env("PYTHONPATH", dir.path())
        .env("KEEL_PUSH", &addr)
        .env_remove("KEEL_GROUPS")
        .env_remove("KEEL_RANK")
        .env_remove("RANK")
        .env_remove("SLURM_PROCID");
    if let Some(g) = groups {
        cmd.env("KEEL_GROUPS", g);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("python3: {e} (is python3 installed?)"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (records, stats) = drain(&mut ep);
    assert_eq!(stats.bad, 0);
    for c in &records {
        assert_eq!(
            (c.job.as_str(), c.node.as_str(), c.rank),
            ("77", "n-fake", 6)
        );
    }
    records
}

fn ops(records: &[CollectiveRecord]) -> Vec<(&str, u64, u64)> {
    records
        .iter()
        .map(|c| (c.op.as_str(), c.seq, c.bytes))
        .collect()
}

#[tokio::test]
async fn instrumented_collectives_are_reported_per_group() {
    let records = run_driver(None).await;
    assert_eq!(
        ops(&records),
        [
            ("allreduce", 0, 4096),
            ("allreduce", 1, 4096),
            ("allgather", 0, 4096),
            ("reducescatter", 1, 1024),
            ("broadcast", 2, 20),
            ("barrier", 3, 0),
        ]
    );
    assert!(
        records[0].dur_us >= 1000.0,
        "the wrapped call slept 1 ms: {}",
        records[0].dur_us
    );
}

#[tokio::test]
async fn keel_groups_limits_the_reports_to_one_group() {
    let records = run_driver(Some("tp0")).await;
    assert_eq!(
        ops(&records),
        [("allgather", 0, 4096), ("reducescatter", 1, 1024)]
    );
}
