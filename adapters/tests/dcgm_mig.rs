//! dcgm-exporter with MIG (`../shared/data/wild/02-dcgm-mig-a100`, see its
//! LOG.md): MIG series carry their parent's `gpu` label plus `GPU_I_ID`; each
//! instance must read as a GPU of its own and never overwrite the parent.

use keel_adapters::sources::prometheus::parse_scrape;
use keel_model::MetricName;
use std::path::Path;

#[test]
fn each_mig_instance_and_the_parent_get_a_reading_of_their_own() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/wild/02-dcgm-mig-a100/metrics.prom");
    let body = std::fs::read_to_string(&path).expect("the MIG fixture in ../shared/data/wild");
    let (samples, stats) = parse_scrape(&body, "gpu-node-01", 1.0);
    assert!(stats.malformed.is_empty(), "{:?}", stats.malformed);
    let active: Vec<(Option<u32>, Option<u32>, f64)> = samples
        .iter()
        .filter(|s| s.name == MetricName::GrEngineActive)
        .map(|s| (s.labels.gpu, s.labels.gpu_instance, s.value))
        .collect();
    assert_eq!(
        active,
        vec![(Some(0), None, 0.995630), (Some(0), Some(13), 0.995687)],
        "one reading for the parent, one for MIG instance 13"
    );
    // The parent's framebuffer stays the parent's.
    let fb: Vec<(Option<u32>, f64)> = samples
        .iter()
        .filter(|s| s.name == MetricName::FbUsed)
        .map(|s| (s.labels.gpu_instance, s.value))
        .collect();
    assert_eq!(fb, vec![(None, 4845.0)]);
}
