//! Turning records into trace lines, dirt included, and writing them in the
//! order a collector would ship them.
//!
//! Lines are written sorted by their shipping time: the producing node's `ts`
//! plus any deliberate delay. That keeps the trace "roughly increasing" (node
//! clocks differ by up to ~0.1 s) while a late line lands at most its delay
//! (never more than 4 s) after the lines it should precede.

use crate::plan::Noise;
use crate::rng::{Rng8, RngExt};
use keel_model::{MetricLabels, MetricName, MetricSample, Name, Record};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::{self, Write};

/// Longest deliberate shipping delay; readers tolerate 5 s.
pub const MAX_DELAY_S: f64 = 4.0;

pub struct Line {
    /// When the line is shipped: `ts` plus any delay.
    pub key: f64,
    pub bytes: Vec<u8>,
}

/// What went into a trace, beyond the line count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub lines: u64,
    pub malformed: u64,
    pub non_finite: u64,
    pub unknown: u64,
    pub late: u64,
}

/// Builds the lines of one window of simulated time.
pub struct Out {
    pub lines: Vec<Line>,
    rng: Rng8,
    noise: Noise,
    pub stats: Stats,
    scrape_delay: f64,
    /// Samples taken while a node's telemetry is not shipped are dropped.
    pub muted: bool,
}

impl Out {
    pub fn new(rng: Rng8, noise: Noise) -> Out {
        Out {
            lines: Vec::new(),
            rng,
            noise,
            stats: Stats::default(),
            scrape_delay: 0.0,
            muted: false,
        }
    }

    pub fn noise(&self) -> &Noise {
        &self.noise
    }

    pub fn rng(&mut self) -> &mut Rng8 {
        &mut self.rng
    }

    /// A node's scrape may be shipped late as a whole.
    pub fn begin_scrape(&mut self) {
        self.scrape_delay = if self.rng.chance(self.noise.late_scrape) {
            self.rng.uni(1.0, MAX_DELAY_S)
        } else {
            0.0
        };
    }

    pub fn end_scrape(&mut self) {
        self.scrape_delay = 0.0;
        self.muted = false;
    }

    fn push(&mut self, ts: f64, bytes: Vec<u8>) {
        if self.muted {
            return;
        }
        let mut delay = self.scrape_delay;
        if delay == 0.0 && self.rng.chance(self.noise.late_line) {
            delay = self.rng.uni(0.3, MAX_DELAY_S);
        }
        if delay > 0.0 {
            self.stats.late += 1;
        }
        self.lines.push(Line {
            key: ts + delay,
            bytes,
        });
    }

    pub fn record(&mut self, rec: &Record) {
        let bytes = serde_json::to_vec(rec).expect("records serialise");
        self.push(rec.ts(), bytes);
    }

    pub fn metric(
        &mut self,
        ts: f64,
        node: &Name,
        name: MetricName,
        labels: MetricLabels,
        value: f64,
    ) {
        if self.muted {
            return;
        }
        debug_assert!(value.is_finite(), "{name:?} = {value}");
        if self.rng.chance(self.noise.nan) {
            self.stats.non_finite += 1;
            let v = if self.rng.chance(0.5) { "NaN" } else { "+Inf" };
            self.value_line(ts, node, name.wire(), &labels, Value::from(v), false);
        } else if self.rng.chance(self.noise.extra_fields) {
            self.value_line(ts, node, name.wire(), &labels, json!(value), true);
        } else {
            let rec = Record::Metric(MetricSample {
                ts,
                node: node.clone(),
                name,
                labels,
                value,
            });
            self.record(&rec);
        }
    }

    /// A metric under a name `MetricName` does not write (an older exporter's
    /// name, or one that readers should skip).
    pub fn metric_named(
        &mut self,
        ts: f64,
        node: &Name,
        name: &str,
        labels: MetricLabels,
        value: f64,
    ) {
        if self.muted {
            return;
        }
        self.value_line(ts, node, name, &labels, json!(value), false);
    }

    fn value_line(
        &mut self,
        ts: f64,
        node: &Name,
        name: &str,
        labels: &MetricLabels,
        value: Value,
        extra: bool,
    ) {
        let mut lab = match serde_json::to_value(labels).expect("labels serialise") {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let (mut instance, mut scrape_ms) = (None, None);
        if extra {
            // What dcgm-exporter and Prometheus attach that keel does not read.
            if let Some(gpu) = labels.gpu {
                let host = node.bytes().fold(0x811c_9dc5_u32, |h, b| {
                    (h ^ b as u32).wrapping_mul(0x0100_0193)
                });
                let uuid = format!("GPU-{host:08x}-7c1e-4b0a-9d3f-{gpu:012x}");
                lab.insert("UUID".into(), json!(uuid));
                let bus = format!("00000000:{:02X}:00.0", 0x19 + gpu * 0x10);
                lab.insert("pci_bus_id".into(), json!(bus));
                lab.insert("device".into(), json!(format!("nvidia{gpu}")));
                lab.insert("modelName".into(), json!("NVIDIA H200"));
                lab.insert("Hostname".into(), json!(node.as_str()));
            }
            instance = Some(format!("{node}:9400"));
            scrape_ms = Some(self.rng.int(3, 40));
        }
        let line = ValueLine {
            t: "metric",
            ts,
            node: node.as_str(),
            name,
            labels: lab,
            value,
            instance,
            scrape_ms,
        };
        let bytes = serde_json::to_vec(&line).expect("json serialises");
        self.push(ts, bytes);
    }

    /// A record of a type keel does not know.
    pub fn unknown_record(&mut self, ts: f64, node: &Name) {
        if self.muted {
            return;
        }
        self.stats.unknown += 1;
        let bytes = if self.rng.chance(0.6) {
            let rec = KernelLine {
                t: "kernel",
                ts,
                node: node.as_str(),
                gpu: self.rng.int(0, 7),
                name: "sm90_xmma_gemm_bf16bf16_bf16f32",
                dur_us: crate::rng::round_dec(self.rng.uni(40.0, 2500.0), 1),
            };
            serde_json::to_vec(&rec)
        } else {
            let rec = LogLine {
                t: "log",
                ts,
                node: node.as_str(),
                unit: "kubelet",
                msg: "Container runtime status check may not have completed yet",
            };
            serde_json::to_vec(&rec)
        }
        .expect("json serialises");
        self.push(ts, bytes);
    }

    /// A metric whose name readers do not know.
    pub fn unknown_metric(&mut self, ts: f64, node: &Name) {
        if self.muted {
            return;
        }
        self.stats.unknown += 1;
        let (name, labels, value) = match self.rng.int(0, 3) {
            0 => (
                "DCGM_FI_DEV_MEM_CLOCK",
                MetricLabels {
                    gpu: Some(self.rng.int(0, 7)),
                    ..Default::default()
                },
                2619.0,
            ),
            1 => (
                "node_load1",
                MetricLabels::default(),
                crate::rng::round_dec(self.rng.uni(2.0, 40.0), 2),
            ),
            2 => (
                "node_filefd_allocated",
                MetricLabels::default(),
                self.rng.int(20_000, 90_000) as f64,
            ),
            _ => (
                "DCGM_FI_DEV_MEMORY_TEMP",
                MetricLabels {
                    gpu: Some(self.rng.int(0, 7)),
                    ..Default::default()
                },
                self.rng.int(30, 70) as f64,
            ),
        };
        self.value_line(ts, node, name, &labels, json!(value), false);
    }
}

/// A metric line written by hand: a value that is not a finite number, a name
/// keel does not parse, or fields it does not know, in the usual field order.
#[derive(Serialize)]
struct ValueLine<'a> {
    t: &'static str,
    ts: f64,
    node: &'a str,
    name: &'a str,
    labels: Map<String, Value>,
    value: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scrape_ms: Option<u32>,
}

/// Record types a trace may carry that keel has no use for.
#[derive(Serialize)]
struct KernelLine<'a> {
    t: &'static str,
    ts: f64,
    node: &'a str,
    gpu: u32,
    name: &'static str,
    dur_us: f64,
}

#[derive(Serialize)]
struct LogLine<'a> {
    t: &'static str,
    ts: f64,
    node: &'a str,
    unit: &'static str,
    msg: &'static str,
}

const BARE_WORDS: &[&str] = &[
    "Killed",
    "Terminated",
    "--",
    "EOF",
    "<html><body>502 Bad Gateway",
];

/// Writes lines sorted by shipping time, corrupting a few on the way.
pub struct Writer<'a> {
    out: io::BufWriter<&'a mut dyn Write>,
    pending: BTreeMap<(u64, u64), Vec<u8>>,
    seq: u64,
    rng: Rng8,
    malformed: f64,
    pub stats: Stats,
}

impl<'a> Writer<'a> {
    pub fn new(out: &'a mut dyn Write, rng: Rng8, malformed: f64) -> Writer<'a> {
        Writer {
            out: io::BufWriter::with_capacity(1 << 16, out),
            pending: BTreeMap::new(),
            seq: 0,
            rng,
            malformed,
            stats: Stats::default(),
        }
    }

    pub fn push(&mut self, lines: impl IntoIterator<Item = Line>) {
        for line in lines {
            // Positive floats order like their bit patterns.
            debug_assert!(line.key > 0.0);
            self.pending
                .insert((line.key.to_bits(), self.seq), line.bytes);
            self.seq += 1;
        }
    }

    /// Writes every pending line shipped before `limit`.
    pub fn flush_below(&mut self, limit: f64) -> io::Result<()> {
        let bound = (limit.to_bits(), 0);
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= bound {
                break;
            }
            let bytes = entry.remove();
            self.write_line(bytes)?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<Stats> {
        self.flush_below(f64::MAX)?;
        self.out.flush()?;
        Ok(self.stats)
    }

    fn write_line(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        if self.rng.chance(self.malformed) {
            self.stats.malformed += 1;
            self.stats.lines += 1;
            match self.rng.int(0, 2) {
                0 => {
                    // A line cut short (a shipper killed mid-write): the record is lost.
                    let cut = self.rng.int(1, bytes.len() as u32 - 2) as usize;
                    self.out.write_all(&bytes[..cut])?;
                    self.out.write_all(b"\n")?;
                    return Ok(());
                }
                1 => {
                    let word = *self.rng.pick(BARE_WORDS);
                    self.out.write_all(word.as_bytes())?;
                    self.out.write_all(b"\n")?;
                }
                _ => {
                    let n = self.rng.int(8, 40);
                    let mut junk = vec![0u8];
                    for _ in 0..n {
                        let b = self.rng.int(0, 255) as u8;
                        junk.push(if b == b'\n' { 0xff } else { b });
                    }
                    self.out.write_all(&junk)?;
                    self.out.write_all(b"\n")?;
                }
            }
        }
        self.stats.lines += 1;
        self.out.write_all(&bytes)?;
        self.out.write_all(b"\n")
    }
}
