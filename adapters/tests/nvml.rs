//! Reads the real NVML of this machine. Built only with `--features nvml`,
//! and meant for a GPU host: without the driver it fails, saying so.
#![cfg(feature = "nvml")]

use keel_adapters::sources::nvml::Nvml;
use keel_model::{MetricName, MetricSample};

fn value(s: &[MetricSample], gpu: u32, name: MetricName) -> Option<f64> {
    s.iter()
        .find(|x| x.labels.gpu == Some(gpu) && x.name == name)
        .map(|x| x.value)
}

#[test]
fn every_gpu_reads_within_physical_bounds() {
    let nvml = Nvml::load().unwrap_or_else(|e| {
        panic!("NVML is not usable here ({e}); this test needs an NVIDIA GPU and driver")
    });
    let (s, stats) = nvml
        .read("gpu-host", 1.0e9)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(stats.gpus >= 1, "NVML sees no GPU");
    assert_eq!(stats.samples as usize, s.len());
    assert!(s
        .iter()
        .all(|x| x.node == "gpu-host" && x.labels.gpu.is_some_and(|g| g < stats.gpus)));
    for gpu in 0..stats.gpus {
        let util =
            value(&s, gpu, MetricName::GpuUtil).expect("every NVIDIA GPU reports utilisation");
        assert!((0.0..=100.0).contains(&util), "GPU {gpu} util {util}");
        let used = value(&s, gpu, MetricName::FbUsed).expect("framebuffer used");
        let free = value(&s, gpu, MetricName::FbFree).expect("framebuffer free");
        // Between 1 GiB and 1 TiB of memory, in MiB.
        assert!(
            (1024.0..=1024.0 * 1024.0).contains(&(used + free)),
            "GPU {gpu}: {used} + {free} MiB"
        );
        if let Some(w) = value(&s, gpu, MetricName::PowerUsage) {
            assert!(w > 1.0 && w < 2000.0, "GPU {gpu} draws {w} W");
        }
        if let Some(mhz) = value(&s, gpu, MetricName::SmClock) {
            assert!(mhz > 0.0 && mhz < 5000.0, "GPU {gpu} SM clock {mhz} MHz");
        }
        if let Some(c) = value(&s, gpu, MetricName::GpuTemp) {
            assert!(c > 0.0 && c < 120.0, "GPU {gpu} at {c} C");
        }
        for name in [MetricName::PcieTxBytes, MetricName::PcieRxBytes] {
            if let Some(b) = value(&s, gpu, name) {
                // A PCIe 6.0 x16 link carries at most 128 GB/s each way.
                assert!(
                    (0.0..=1.3e11).contains(&b),
                    "GPU {gpu} {}: {b} B/s",
                    name.wire()
                );
            }
        }
    }
}
