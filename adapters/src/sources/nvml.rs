//! GPU readings from NVML, the driver's own library, for nodes without
//! dcgm-exporter. Samples carry dcgm-exporter's names and units, so that the
//! detectors see the same series either way:
//!
//! | NVML call | NVML unit | metric | unit |
//! | --- | --- | --- | --- |
//! | `nvmlDeviceGetUtilizationRates` (gpu) | % | `DCGM_FI_DEV_GPU_UTIL` | % |
//! | `nvmlDeviceGetMemoryInfo` (used, free) | bytes | `DCGM_FI_DEV_FB_USED`, `_FB_FREE` | MiB |
//! | `nvmlDeviceGetPowerUsage` | mW | `DCGM_FI_DEV_POWER_USAGE` | W |
//! | `nvmlDeviceGetClockInfo(SM)` | MHz | `DCGM_FI_DEV_SM_CLOCK` | MHz |
//! | `nvmlDeviceGetTemperature(GPU)` | °C | `DCGM_FI_DEV_GPU_TEMP` | °C |
//! | `nvmlDeviceGetPcieThroughput(TX, RX)` | KiB/s | `DCGM_FI_PROF_PCIE_TX_BYTES`, `_RX_BYTES` | bytes/s |
//!
//! The mapping (`GpuReading` -> samples) is plain code, always built and
//! tested. Reading NVML itself needs the `nvml` feature: the library is
//! opened at run time with `libloading`, so that neither the build nor a
//! node without a GPU needs the driver.

use keel_model::{MetricLabels, MetricName, MetricSample, Name, Timestamp};

/// `type = "nvml"`: GPU readings from NVML (builds with the `nvml`
/// feature; without it the source fails to start, saying so).
#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NvmlConfig {
    /// Milliseconds between readings (default 1000).
    #[serde(default = "second")]
    pub interval_ms: u64,
}

fn second() -> u64 {
    1000
}

impl super::Source for NvmlConfig {
    fn describe(&self) -> String {
        "nvml".into()
    }

    #[cfg(feature = "nvml")]
    fn timed(&self, node: &Name) -> super::Opened {
        let opened = Nvml::load().map_err(|e| format!("nvml source: {e}"));
        Some(opened.map(|n| {
            let reader: Box<dyn super::Timed> = Box::new((n, node.clone()));
            (super::interval(self.interval_ms), reader)
        }))
    }

    #[cfg(not(feature = "nvml"))]
    fn timed(&self, _node: &Name) -> super::Opened {
        Some(Err(
            "nvml source: this keel was built without NVML (cargo build --features nvml)".into(),
        ))
    }
}

#[cfg(feature = "nvml")]
impl super::Timed for (Nvml, Name) {
    fn read(&mut self, now: f64) -> Result<Vec<keel_model::Record>, String> {
        self.0
            .read(&self.1, now)
            .map(|(s, _)| s.into_iter().map(keel_model::Record::Metric).collect())
            .map_err(|e| e.to_string())
    }
}

/// NVML's memory info, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryBytes {
    pub total: u64,
    pub free: u64,
    pub used: u64,
}

/// One GPU's readings in NVML's own units; `None` where the device does not
/// support the field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuReading {
    /// NVML's device index, which is the `gpu` label dcgm-exporter writes.
    pub index: u32,
    pub util_percent: Option<u32>,
    pub memory: Option<MemoryBytes>,
    pub power_mw: Option<u32>,
    pub sm_clock_mhz: Option<u32>,
    pub temp_c: Option<u32>,
    pub pcie_tx_kib_s: Option<u32>,
    pub pcie_rx_kib_s: Option<u32>,
}

const MIB: f64 = 1024.0 * 1024.0;

/// Appends the samples of one reading, in dcgm-exporter's units.
pub fn samples_of(r: &GpuReading, node: &Name, ts: Timestamp, out: &mut Vec<MetricSample>) {
    let labels = MetricLabels {
        gpu: Some(r.index),
        ..MetricLabels::default()
    };
    let mut push = |name, value: Option<f64>| {
        if let Some(value) = value {
            out.push(MetricSample {
                ts,
                node: node.clone(),
                name,
                labels: labels.clone(),
                value,
            });
        }
    };
    push(MetricName::GpuUtil, r.util_percent.map(f64::from));
    push(MetricName::FbUsed, r.memory.map(|m| m.used as f64 / MIB));
    push(MetricName::FbFree, r.memory.map(|m| m.free as f64 / MIB));
    push(
        MetricName::PowerUsage,
        r.power_mw.map(|mw| f64::from(mw) / 1000.0),
    );
    push(MetricName::SmClock, r.sm_clock_mhz.map(f64::from));
    push(MetricName::GpuTemp, r.temp_c.map(f64::from));
    // NVML's "KB" here is 1024 bytes (it is computed from 1 KiB-granular
    // PCIe counters); dcgm-exporter's PCIe fields are bytes per second.
    let bytes = |kib: u32| f64::from(kib) * 1024.0;
    push(MetricName::PcieTxBytes, r.pcie_tx_kib_s.map(bytes));
    push(MetricName::PcieRxBytes, r.pcie_rx_kib_s.map(bytes));
}

#[cfg(feature = "nvml")]
mod loaded;
#[cfg(feature = "nvml")]
pub use loaded::{Nvml, NvmlError, NvmlStats, LIBRARY};

#[cfg(test)]
mod tests {
    use super::*;

    fn value(s: &[MetricSample], name: MetricName) -> Option<f64> {
        s.iter().find(|x| x.name == name).map(|x| x.value)
    }

    #[test]
    fn nvml_units_become_dcgm_units() {
        let r = GpuReading {
            index: 3,
            util_percent: Some(97),
            memory: Some(MemoryBytes {
                total: 150_754_820_096,
                free: 1_024 << 20,
                used: 142_000 << 20,
            }),
            power_mw: Some(412_345),
            sm_clock_mhz: Some(1_980),
            temp_c: Some(61),
            pcie_tx_kib_s: Some(15_000),
            pcie_rx_kib_s: Some(3_700_000),
        };
        let mut s = Vec::new();
        samples_of(&r, &Name::from("n02"), 1.0e9, &mut s);
        assert_eq!(s.len(), 8);
        assert!(s
            .iter()
            .all(|x| x.labels.gpu == Some(3) && x.node == "n02" && x.ts == 1.0e9));
        assert_eq!(value(&s, MetricName::GpuUtil), Some(97.0));
        assert_eq!(value(&s, MetricName::FbUsed), Some(142_000.0));
        assert_eq!(value(&s, MetricName::FbFree), Some(1_024.0));
        assert_eq!(value(&s, MetricName::PowerUsage), Some(412.345));
        assert_eq!(value(&s, MetricName::SmClock), Some(1_980.0));
        assert_eq!(value(&s, MetricName::GpuTemp), Some(61.0));
        assert_eq!(value(&s, MetricName::PcieTxBytes), Some(15_360_000.0));
        assert_eq!(value(&s, MetricName::PcieRxBytes), Some(3_788_800_000.0));
    }

    #[test]
    fn unsupported_fields_give_no_sample() {
        let r = GpuReading {
            index: 0,
            util_percent: Some(0),
            power_mw: Some(70_000),
            ..GpuReading::default()
        };
        let mut s = Vec::new();
        samples_of(&r, &Name::from("n"), 1.0e9, &mut s);
        let names: Vec<_> = s.iter().map(|x| x.name).collect();
        assert_eq!(names, [MetricName::GpuUtil, MetricName::PowerUsage]);
    }

    /// The samples read back through the trace format, as a recorder would
    /// write them, under the names dcgm-exporter gives them.
    #[test]
    fn samples_round_trip_through_the_trace_format() {
        let r = GpuReading {
            index: 1,
            sm_clock_mhz: Some(1_410),
            pcie_rx_kib_s: Some(1),
            ..GpuReading::default()
        };
        let mut s = Vec::new();
        samples_of(&r, &Name::from("n"), 1.0e9, &mut s);
        for sample in s {
            let line = serde_json::to_string(&keel_model::Record::Metric(sample.clone())).unwrap();
            assert!(line.contains("\"gpu\":\"1\""), "{line}");
            let parsed = crate::parse_line(line.as_bytes(), 1).unwrap();
            let crate::Parsed::Record { record, .. } = parsed else {
                panic!("{line}")
            };
            assert_eq!(record, keel_model::Record::Metric(sample));
        }
    }
}
