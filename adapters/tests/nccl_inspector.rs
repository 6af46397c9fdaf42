//! NCCL Inspector dump files, written line by line the way the profiler
//! plugin writes them (NVIDIA's verbose example record, on one line, with
//! each rank's own numbers) into one folder both nodes share, tailed by
//! the source of each node's sensor (each reading its own host's files) and
//! fed through the sensor's edge aggregation into the detectors
//! (`keel_detect::edge::EdgePipeline`, the live path without the network):
//! a rank whose GPU reaches every all-reduce 4 ms late is found, and no
//! other rank is.

use keel_adapters::{parse_line, InspectorTail, NcclInspectorConfig, Parsed};
use keel_detect::edge::{EdgeConfig, EdgePipeline};
use keel_detect::Engine;
use keel_model::{Finding, Record};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

const JOB: &str = "4242";
/// World communicator: ranks 0, 1 on n1, ranks 2, 3 on n2.
const COMM: &str = "0x5e1f00d4a7";
const NODES: [(&str, [u32; 2]); 2] = [("n1", [0, 1]), ("n2", [2, 3])];
const STRAGGLER: u32 = 3;
const STEP_US: u64 = 35_000;
const START_US: u64 = 1_763_800_000_000_000;
/// Collectives before the straggler starts arriving late, and in all.
const ONSET: u64 = 300;
const COUNT: u64 = 700;

fn template() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/wild/16-nccl-inspector-examples/inspector-verbose.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// One rank's record of collective `sn`: its kernel ran from `start` to
/// `stop` (µs since the epoch), and the line was written at `dumped`.
fn line(t: &Value, rank: u32, host: &str, sn: u64, start: u64, stop: u64) -> String {
    let mut v = t.clone();
    v["header"]["id"] = COMM.into();
    v["header"]["rank"] = rank.into();
    v["header"]["n_ranks"] = 4.into();
    v["header"]["nnodes"] = 2.into();
    v["metadata"]["hostname"] = host.into();
    v["metadata"]["pid"] = (1000 + rank).into();
    v["metadata"]["dump_timestamp_us"] = (stop + 300).into();
    let c = &mut v["coll_perf"];
    c["coll"] = "AllReduce".into();
    c["coll_sn"] = sn.into();
    c["coll_msg_size_bytes"] = (64u64 << 20).into();
    c["coll_exec_time_us"] = (stop - start).into();
    c["event_trace_ts"]["coll_start_ts"] = (start - 120).into();
    c["event_trace_ts"]["coll_stop_ts"] = (start - 115).into();
    let k = &mut c["event_trace_ts"]["kernel_events"][0];
    k["kernel_start_ts"] = start.into();
    k["kernel_stop_ts"] = stop.into();
    k["kernel_record_ts"] = stop.into();
    let s = serde_json::to_string(&v).unwrap();
    assert!(!s.contains('\n'));
    s
}

fn dump_file(root: &Path, host: &str, rank: u32) -> std::fs::File {
    let dir = root.join(format!("nccl-inspector-{JOB}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{host}-pid{}.log", 1000 + rank)))
        .unwrap()
}

fn job_record() -> Record {
    let text = format!(
        r#"{{"t":"job","ts":{},"job":"{JOB}","state":"RUNNING","nodes":["n1","n2"],"ranks":{{"n1":[0,1],"n2":[2,3]}},"gpus":{{"0":0,"1":1,"2":0,"3":1}},"tp":4,"pp":1}}"#,
        START_US as f64 / 1e6
    );
    match parse_line(text.as_bytes(), 1) {
        Ok(Parsed::Record { record, .. }) => record,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_straggler_in_inspector_records_reaches_a_finding_through_the_edge() {
    let t = template();
    // One dump folder on a file system both nodes share, as the plugin's
    // multi-node example has it; each sensor reads its own host's files.
    let shared = tempfile::tempdir().unwrap();
    let mut tails: Vec<InspectorTail> = NODES
        .iter()
        .map(|(node, _)| {
            let mut cfg = NcclInspectorConfig::new(shared.path());
            cfg.hostname = Some(node.to_string());
            InspectorTail::new(cfg, &(*node).into())
        })
        .collect();
    let mut files: Vec<Vec<(u32, std::fs::File)>> = NODES
        .iter()
        .map(|(node, ranks)| {
            ranks
                .iter()
                .map(|&r| (r, dump_file(shared.path(), node, r)))
                .collect()
        })
        .collect();
    // The sensors start before the job writes anything.
    let mut out = Vec::new();
    for tail in &mut tails {
        tail.poll(&mut out).unwrap();
    }
    assert!(out.is_empty());

    let mut pipeline = EdgePipeline::new(EdgeConfig::default(), Engine::default());
    let mut findings: Vec<Finding> = Vec::new();
    pipeline.push(&job_record(), START_US as f64 / 1e6, &mut findings);
    for k in 0..COUNT {
        let sn = 1000 + k;
        let t0 = START_US + k * STEP_US;
        // Each rank's GPU reaches the all-reduce after its own work, with
        // a little jitter; the straggler 4 ms late from the onset on.
        let start = |r: u32| {
            let jitter = (k * 7 + u64::from(r) * 13) % 90;
            let late = if r == STRAGGLER && k >= ONSET {
                4_000
            } else {
                0
            };
            t0 + 20_000 + jitter + late
        };
        let last = (0..4).map(start).max().unwrap();
        let stop = last + 1_500;
        for (node_files, (node, _)) in files.iter_mut().zip(NODES) {
            for (r, f) in node_files.iter_mut() {
                writeln!(f, "{}", line(&t, *r, node, sn, start(*r), stop)).unwrap();
            }
        }
        // Each sensor reads its node's files every 0.1 s or so.
        if k % 3 == 2 || k == COUNT - 1 {
            let now = (stop + 2_000) as f64 / 1e6;
            for tail in &mut tails {
                out.clear();
                tail.poll(&mut out).unwrap();
                for r in &out {
                    pipeline.push(r, now, &mut findings);
                }
            }
        }
    }
    for tail in &tails {
        let s = tail.stats();
        assert_eq!(
            (s.bad_lines, s.other_comm, s.collectives, s.files_other_host),
            (0, 0, COUNT * 2, 2),
            "{s:?}"
        );
    }
    let onset = (START_US + ONSET * STEP_US) as f64 / 1e6;
    let stragglers: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.kind.wire() == "tp_straggler")
        .collect();
    assert!(
        !stragglers.is_empty(),
        "no straggler found; findings: {findings:?}"
    );
    for f in &stragglers {
        assert_eq!(
            (f.job.as_deref(), f.rank, f.node.as_deref()),
            (Some(JOB), Some(STRAGGLER), Some("n2")),
            "{f:?}"
        );
        assert!(
            f.ts >= onset,
            "concluded {:.2} s before the onset",
            onset - f.ts
        );
    }
    let latency = stragglers[0].ts - onset;
    assert!(latency < 3.0, "found {latency:.2} s after the onset");
}
