//! Property tests: nothing a file can hold panics the reader or the detectors.

use keel_adapters::sources::replay::read_all;
use keel_detect::Engine;
use proptest::prelude::*;

fn run_all(bytes: &[u8]) {
    let (records, stats) = read_all(bytes);
    assert!(stats.records as usize >= records.len().min(stats.records as usize));
    let mut engine = Engine::default();
    let mut out = Vec::new();
    for r in &records {
        engine.push(r, &mut out);
    }
    for f in &out {
        assert!(f.confidence.is_finite());
        serde_json::to_string(f).expect("findings always serialise");
    }
}

/// A JSON value of any shape, biased towards the spec's keys and types.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        (1.76e9f64..1.77e9).prop_map(serde_json::Value::from),
        prop_oneof![Just("NaN"), Just("+Inf"), Just("0"), Just("x"), Just("1")]
            .prop_map(serde_json::Value::from),
        "[a-z_:]{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z0-9]{1,4}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

const KEYS: &[&str] = &[
    "t", "ts", "node", "job", "rank", "op", "seq", "bytes", "arrive", "dur_us", "name", "labels",
    "value", "id", "phase", "state", "nodes", "ranks", "gpus", "nics", "tp", "extra",
];
const TYPES: &[&str] = &["job", "collective", "metric", "request", "kernel"];
const NAMES: &[&str] = &[
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_PROF_PCIE_RX_BYTES",
    "node_netstat_Tcp_RetransSegs",
    "vllm:kv_cache_usage_perc",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "dpu_nic_link_util",
    "unknown_metric",
];

fn record_line() -> impl Strategy<Value = String> {
    (
        prop::sample::select(TYPES),
        1.7638e9f64..1.7639e9,
        prop::sample::select(NAMES),
        prop::collection::btree_map(prop::sample::select(KEYS), json_value(), 0..10),
        0u32..4,
        0u64..50,
        -10.0f64..1e5,
    )
        .prop_map(|(t, ts, name, mut extra, rank, seq, v)| {
            let mut obj = serde_json::Map::new();
            obj.insert("t".into(), t.into());
            obj.insert("ts".into(), ts.into());
            obj.insert("node".into(), "n1".into());
            obj.insert("job".into(), "j".into());
            obj.insert("rank".into(), rank.into());
            obj.insert("seq".into(), seq.into());
            obj.insert("arrive".into(), (ts - 0.001).into());
            obj.insert("dur_us".into(), v.abs().into());
            obj.insert("name".into(), name.into());
            obj.insert(
                "labels".into(),
                serde_json::json!({"gpu": (rank % 2).to_string(), "device": "mlx5_0"}),
            );
            obj.insert("value".into(), v.into());
            // Random overrides of any key with a value of any shape.
            for (k, val) in std::mem::take(&mut extra) {
                if rank == 0 {
                    obj.insert(k.to_string(), val);
                }
            }
            serde_json::Value::Object(obj).to_string()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        run_all(&bytes);
    }

    #[test]
    fn arbitrary_json_lines_never_panic(lines in prop::collection::vec(record_line(), 0..200)) {
        run_all(lines.join("\n").as_bytes());
    }

    #[test]
    fn arbitrary_json_values_never_panic(values in prop::collection::vec(json_value(), 0..50)) {
        let text: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        run_all(text.join("\n").as_bytes());
    }
}
