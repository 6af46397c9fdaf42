//! NCCL Inspector records through a live cluster of real processes: 3
//! `keel controller`, 1 `keel correlator` and 2 `keel sensor`, each sensor
//! with a `type = "nccl_inspector"` source over one dump folder the nodes
//! share, each reading its own host's files. A
//! writer plays a 4-rank job's processes, appending one record per rank
//! per all-reduce as the profiler plugin does (NVIDIA's verbose example
//! record with each rank's numbers, on the wall clock); from the 6th
//! second rank 3's GPU reaches every all-reduce 4 ms late. The controller
//! must commit a `tp_straggler` finding for rank 3 on n02, and none for
//! another rank.

mod support;

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{wait_for, Cluster};

const JOB: &str = "4242";
const NODES: [(&str, [u32; 2]); 2] = [("n01", [0, 1]), ("n02", [2, 3])];
const STRAGGLER: u32 = 3;

fn template() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/wild/16-nccl-inspector-examples/inspector-verbose.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn line(t: &Value, rank: u32, sn: u64, start: u64, stop: u64) -> String {
    let mut v = t.clone();
    v["header"]["id"] = "0x5e1f00d4a7".into();
    v["header"]["rank"] = rank.into();
    v["header"]["n_ranks"] = 4.into();
    v["header"]["nnodes"] = 2.into();
    v["metadata"]["dump_timestamp_us"] = (stop + 300).into();
    let c = &mut v["coll_perf"];
    c["coll"] = "AllReduce".into();
    c["coll_sn"] = sn.into();
    c["coll_exec_time_us"] = (stop - start).into();
    let k = &mut c["event_trace_ts"]["kernel_events"][0];
    k["kernel_start_ts"] = start.into();
    k["kernel_stop_ts"] = stop.into();
    k["kernel_record_ts"] = stop.into();
    serde_json::to_string(&v).unwrap()
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Writes the job's records into the shared folder `root` every 35 ms
/// until `stop`, each rank's into `<node>-pid<pid>.log`; rank 3 is late
/// from `onset` collectives on.
fn play(root: PathBuf, onset: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let t = template();
        let mut files: Vec<(u32, std::fs::File)> = Vec::new();
        let folder = root.join(format!("nccl-inspector-{JOB}"));
        std::fs::create_dir_all(&folder).unwrap();
        for (node, ranks) in NODES {
            for r in ranks {
                let f = std::fs::File::create(folder.join(format!("{node}-pid{}.log", 100 + r)));
                files.push((r, f.unwrap()));
            }
        }
        let mut k = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let t0 = now_us();
            let start = |r: u32| {
                let late = if r == STRAGGLER && k >= onset {
                    4_000
                } else {
                    0
                };
                t0 - 8_000 + (k * 7 + u64::from(r) * 13) % 90 + late
            };
            let stop_at = (0..4).map(start).max().unwrap() + 1_500;
            for (r, f) in &mut files {
                writeln!(f, "{}", line(&t, *r, 1000 + k, start(*r), stop_at)).unwrap();
            }
            k += 1;
            std::thread::sleep(Duration::from_millis(35));
        }
    })
}

fn findings(c: &Cluster) -> Option<Vec<Value>> {
    match c.ask(0, &["findings", "--json"])? {
        Value::Array(all) => Some(
            all.into_iter()
                .map(|f| f["finding"].clone())
                .filter(|f| f["job"] == JOB && f["kind"] == "tp_straggler")
                .collect(),
        ),
        _ => None,
    }
}

fn sensor_config(c: &Cluster, dir: &Path, node: &str, root: &Path) -> PathBuf {
    let creds = c.issue("sensor", node);
    let cfg = format!(
        "node = \"{node}\"\ncredentials = \"{}\"\n{}\n[[source]]\ntype = \"nccl_inspector\"\ndir = \"{}\"\ninterval_ms = 50\nhostname = \"{node}\"\n",
        creds.display(),
        c.controllers_toml(),
        root.display()
    );
    let path = dir.join(format!("sensor-{node}.toml"));
    std::fs::write(&path, cfg).unwrap();
    path
}

#[test]
fn a_straggler_in_nccl_inspector_files_is_committed_by_a_live_cluster() {
    let dir = std::env::temp_dir().join(format!("keel-inspector-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = Cluster::start(&dir, 3);
    c.start_correlators(&["corr-a"]);
    // One dump folder on a file system both nodes share; each sensor
    // reads its own host's files.
    let root = dir.join("inspector");
    std::fs::create_dir_all(&root).unwrap();
    for (node, _) in NODES {
        let path = sensor_config(&c, &dir, node, &root);
        c.spawn(&format!("sensor-{node}"), "sensor", &path);
    }
    wait_for(Duration::from_secs(30), || {
        c.ask(
            0,
            &[
                "job", "register", "--job", JOB, "--ranks", "n01=0,1", "--ranks", "n02=2,3",
            ],
        )
    })
    .unwrap_or_else(|| panic!("job {JOB} never registered\n{}", c.logs()));

    // Six seconds of healthy collectives, so that the ranks' habits are
    // learned; then the straggler.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = play(root, 170, stop.clone());
    let found = wait_for(Duration::from_secs(60), || {
        findings(&c).filter(|f| !f.is_empty())
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let found = found.unwrap_or_else(|| panic!("no straggler committed\n{}", c.logs()));
    for f in &found {
        assert_eq!(f["rank"].as_u64(), Some(u64::from(STRAGGLER)), "{f}");
        assert_eq!(f["node"], "n02", "{f}");
    }
}
