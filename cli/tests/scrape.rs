//! `keel scrape FILE` on every Prometheus sample in `../shared/data/`: what
//! keel takes from each, mapped to node, GPU, MIG instance and NIC as held
//! here, and what it drops, with the reason.

mod support;

use serde_json::Value;
use std::path::PathBuf;
use support::{keel, ok};

fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(rel)
}

fn scrape(rel: &str) -> Option<Value> {
    let path = data(rel);
    if !path.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is missing",
            path.display()
        );
        return None;
    }
    let out = ok(keel()
        .args(["scrape", "--json", "--node", "n01"])
        .arg(&path));
    Some(serde_json::from_str(&out).unwrap())
}

/// (metric, node, gpu, mig instance, NIC, value) of one sample.
type Row = (
    String,
    String,
    Option<u64>,
    Option<u64>,
    Option<String>,
    f64,
);

/// Every sample as a [`Row`].
fn rows(v: &Value) -> Vec<Row> {
    let idx = |x: &Value| x.as_str().and_then(|s| s.parse().ok()).or(x.as_u64());
    v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let l = &s["labels"];
            (
                s["name"].as_str().unwrap().to_string(),
                s["node"].as_str().unwrap().to_string(),
                idx(&l["gpu"]),
                idx(&l["gpu_instance"]),
                l["device"].as_str().map(str::to_string),
                s["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn counts(v: &Value) -> [u64; 5] {
    let c = &v["counts"];
    ["samples", "unknown", "non_finite", "blank", "malformed"].map(|k| c[k].as_u64().unwrap())
}

#[test]
fn dcgm_exporter_on_kubernetes_maps_to_the_hostname_label_and_gpu_index() {
    let Some(v) = scrape("wild/01-dcgm-k8s-pod-labels/metrics.prom") else {
        return;
    };
    assert_eq!(counts(&v), [10, 15, 0, 0, 0]);
    for (name, node, gpu, mig, nic, _) in rows(&v) {
        // Hostname="gpu-node-01" wins over the scrape's node.
        assert_eq!(
            (node.as_str(), gpu, mig),
            ("gpu-node-01", Some(0), None),
            "{name}"
        );
        // dcgm's device="nvidia0" is the GPU's device node, not a NIC.
        assert_eq!(nic, None, "{name}");
    }
}

#[test]
fn dcgm_exporter_with_mig_maps_each_instance_to_its_parent_gpu() {
    let Some(v) = scrape("wild/02-dcgm-mig-a100/metrics.prom") else {
        return;
    };
    assert_eq!(counts(&v), [11, 10, 0, 0, 0]);
    let rows = rows(&v);
    let mig: Vec<_> = rows.iter().filter(|r| r.3.is_some()).collect();
    assert_eq!(mig.len(), 2, "{rows:?}");
    for r in &mig {
        assert_eq!(
            (r.1.as_str(), r.2, r.3),
            ("gpu-node-01", Some(0), Some(13)),
            "{r:?}"
        );
    }
    let whole = rows
        .iter()
        .find(|r| r.0 == "DCGM_FI_DEV_FB_USED")
        .expect("FB_USED");
    assert_eq!((whole.2, whole.3, whole.5), (Some(0), None, 4845.0));
}

#[test]
fn dcgm_exporter_2_0s_readme_output_is_reported_malformed_line_by_line() {
    let Some(v) = scrape("wild/23-dcgm-exporter-2.0-sentinel/metrics-readme-excerpt.prom") else {
        return;
    };
    // Labels without commas, and "..." lines: nothing taken, and said so,
    // rather than passing for an exporter with no GPUs.
    assert_eq!(counts(&v), [0, 2, 0, 0, 3]);
    let dropped: Vec<(u64, String)> = v["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["line"].as_u64().unwrap(),
                d["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        dropped.iter().map(|d| d.0).collect::<Vec<_>>(),
        [7, 8, 11],
        "{dropped:?}"
    );
    assert!(dropped[1].1.contains("bad label set"), "{dropped:?}");
}

#[test]
fn node_exporter_maps_to_the_scrapes_node_and_each_nic() {
    for (file, want) in [
        ("prometheus/node-exporter-1.5.0-a.prom", [16, 490, 0, 1, 0]),
        ("prometheus/node-exporter-1.5.0-b.prom", [16, 490, 0, 1, 0]),
        (
            "wild/17-node-exporter-v1.6.1-e2e-subset/metrics.prom",
            [6, 93, 0, 0, 0],
        ),
        (
            "wild/26-node-exporter-v1.9.1-e2e-subset/metrics.prom",
            [6, 96, 0, 0, 0],
        ),
    ] {
        let Some(v) = scrape(file) else {
            return;
        };
        assert_eq!(counts(&v), want, "{file}");
        let rows = rows(&v);
        for r in &rows {
            assert_eq!((r.1.as_str(), r.2), ("n01", None), "{file}: {r:?}");
            // Per-NIC metrics name their device; node-wide ones none.
            assert_eq!(
                r.0.starts_with("node_network_"),
                r.4.is_some(),
                "{file}: {r:?}"
            );
        }
        let get = |name: &str| rows.iter().find(|r| r.0 == name).map(|r| r.5);
        if file.starts_with("wild/") {
            assert_eq!(get("node_netstat_Tcp_RetransSegs"), Some(227.0), "{file}");
            assert_eq!(get("node_netstat_Tcp_OutSegs"), Some(5.4915039e7), "{file}");
            assert_eq!(get("node_network_speed_bytes"), Some(1.25e8), "{file}");
        } else {
            // eth0's speed is -1 Mb/s there (unknown): dropped, not taken.
            assert_eq!(get("node_network_speed_bytes"), None, "{file}");
            let eth0 = rows
                .iter()
                .find(|r| {
                    r.0 == "node_network_receive_bytes_total" && r.4.as_deref() == Some("eth0")
                })
                .expect("eth0 bytes");
            assert_eq!(eth0.5, 83185963.0);
        }
    }
}
