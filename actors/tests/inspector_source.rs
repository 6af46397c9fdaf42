//! A sensor whose config names an NCCL Inspector source by `type`: dump
//! files a job writes after the sensor started reach the sensor's edge
//! aggregation (counted as events, none refused as implausible), and a
//! line that does not parse is counted and named with its file and line
//! in the sensor's counters, while the lines after it are still read.

mod common;

use common::{eventually, issue, now, tmp};
use keel_actors::sensor::{self, SensorConfig};
use keel_actors::sources::SourceConfig;
use keel_model::Role;
use keel_transport::certs::{Ca, Validity};
use std::io::Write;

/// NVIDIA's verbose example record (`shared/data/wild` entry 16) for
/// `rank` of a 2-rank communicator and collective `sn`, ending `end`
/// (Unix seconds), on one line as the plugin writes it.
fn record(rank: u32, sn: u64, end: f64) -> String {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/wild/16-nccl-inspector-examples/inspector-verbose.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let stop = (end * 1e6) as u64;
    v["header"]["rank"] = rank.into();
    v["header"]["n_ranks"] = 2.into();
    v["metadata"]["dump_timestamp_us"] = (stop + 200).into();
    v["coll_perf"]["coll_sn"] = sn.into();
    let k = &mut v["coll_perf"]["event_trace_ts"]["kernel_events"][0];
    k["kernel_start_ts"] = (stop - 41_057).into();
    k["kernel_stop_ts"] = stop.into();
    serde_json::to_string(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspector_records_reach_the_sensors_edge_and_a_bad_line_is_named() {
    let dir = tmp("inspector-source");
    let ca = Ca::generate(Validity::days(1)).unwrap();
    let creds = issue(&dir.0, &ca, Role::Sensor, "n1");
    let dumps = dir.0.join("nccl-inspector");
    std::fs::create_dir_all(&dumps).unwrap();
    let text = format!(
        "node = \"n1\"\ncredentials = \"{}\"\n\
         [[controllers]]\naddr = \"127.0.0.1:9\"\nname = \"ctl-1\"\n\
         [[source]]\ntype = \"nccl_inspector\"\ndir = \"{}\"\ninterval_ms = 20\nhostname = \"n1\"\n",
        creds.display(),
        dumps.display()
    );
    let cfg: SensorConfig = toml::from_str(&text).unwrap();
    assert!(matches!(cfg.sources[..], [SourceConfig::NcclInspector(_)]));
    let (sensor, _) = sensor::start(cfg, None).await.unwrap();
    // Let the source list the empty folder once: what appears later is new.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let job = dumps.join("nccl-inspector-4242");
    std::fs::create_dir_all(&job).unwrap();
    let mut files: Vec<std::fs::File> = (0..2)
        .map(|r| std::fs::File::create(job.join(format!("n1-pid{}.log", 100 + r))).unwrap())
        .collect();
    let t = now();
    for sn in 0..4u64 {
        for (rank, f) in files.iter_mut().enumerate() {
            if rank == 1 && sn == 2 {
                writeln!(f, "{{\"header\":{{\"id\":\"0x1\",\"rank\":").unwrap();
            }
            writeln!(f, "{}", record(rank as u32, sn, t + sn as f64 * 0.035)).unwrap();
        }
    }
    let s = eventually(async || {
        sensor::stats(&sensor)
            .await
            .filter(|s| s.events >= 8 && s.source_bad >= 1)
    })
    .await
    .expect("the sensor took the records");
    assert_eq!(
        (s.events, s.edge_implausible, s.source_bad),
        (8, 0, 1),
        "{s:?}"
    );
    let e = s.source_last_error.unwrap_or_default();
    assert!(
        e.contains("nccl-inspector-4242/n1-pid101.log:3: bad JSON"),
        "{e}"
    );
    sensor.stop(None);
}
