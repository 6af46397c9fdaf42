//! Prometheus text exposition (what dcgm-exporter, vLLM and node-exporter
//! serve on `/metrics`) turned into metric samples, sans-IO: a scraper hands
//! in the body it fetched, the node it belongs to and the time it was taken.
//!
//! Real exporters are tolerated as they are: `# HELP`/`# TYPE` lines, spaces
//! after label commas, escaped label values, exponent notation, `NaN` and
//! `±Inf` (skipped and counted), optional timestamps, metrics keel does not
//! use (skipped and counted), and dcgm-exporter's "blank" sentinels: fields
//! with no reading are exported as huge values near 2^63 (or 2^31, or 2^47
//! for doubles) instead of being left out, and must not read as real data.

use keel_model::{Dir, MetricLabels, MetricName, MetricSample, Name, Timestamp};
use std::collections::BTreeMap;

/// What a scrape held besides the samples keel took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScrapeStats {
    pub samples: u64,
    pub unknown: u64,
    pub non_finite: u64,
    pub blank: u64,
    /// Lines that are not valid exposition format: (line number, reason).
    pub malformed: Vec<(usize, String)>,
}

/// dcgm-exporter's "no reading" values (DCGM_INT64_BLANK and neighbours,
/// DCGM_INT32_BLANK and neighbours, DCGM_FP64_BLANK).
fn is_dcgm_blank(name: &str, v: f64) -> bool {
    name.starts_with("DCGM_")
        && (v >= 9.0e18
            || (2_147_483_632.0..=2_147_483_647.0).contains(&v)
            || v == 140_737_488_355_328.0)
}

/// The offset of the `}` that closes the label set opening `s`, skipping
/// braces inside quoted (and escaped) label values.
fn closing_brace(s: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => quoted = false,
            (false, _, '"') => quoted = true,
            (false, _, '}') => return Some(i),
            _ => {}
        }
    }
    None
}

/// Splits `{a="x", b="y\"z"}` into pairs; `None` on a malformed label set.
fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_string();
        rest = rest[eq + 1..].trim_start();
        let mut chars = rest.char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            match (escaped, c) {
                (true, 'n') => {
                    value.push('\n');
                    escaped = false
                }
                (true, c) => {
                    value.push(c);
                    escaped = false
                }
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        let end = end?;
        out.insert(key, value);
        rest = rest[end + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return None;
        }
    }
    Some(out)
}

fn labels_for(raw: &BTreeMap<String, String>) -> Result<MetricLabels, String> {
    let mut l = MetricLabels::default();
    if let Some(g) = raw.get("gpu") {
        l.gpu = Some(
            g.trim()
                .parse()
                .map_err(|_| "gpu label is not an index".to_string())?,
        );
    }
    // dcgm-exporter's `device` is the GPU's device node (nvidia0), not a NIC.
    if l.gpu.is_none() {
        l.device = raw.get("device").map(|d| Name::from(d.as_str()));
    }
    l.dir = match raw.get("dir").map(String::as_str) {
        Some("rx") => Some(Dir::Rx),
        Some("tx") => Some(Dir::Tx),
        _ => None,
    };
    l.model_name = raw.get("model_name").map(|m| Name::from(m.as_str()));
    // A MIG instance carries its parent's `gpu` and its own `GPU_I_ID`.
    if let Some(i) = raw.get("GPU_I_ID").filter(|i| !i.trim().is_empty()) {
        l.gpu_instance = Some(
            i.trim()
                .parse()
                .map_err(|_| "GPU_I_ID label is not an index".to_string())?,
        );
    }
    l.cgroup = raw.get("cgroup").map(|c| Name::from(c.as_str()));
    l.check()?;
    Ok(l)
}

/// Why a line of a scrape gave no sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped<'a> {
    /// A metric keel does not use (named).
    Unknown(&'a str),
    /// `NaN` or `±Inf`.
    NonFinite,
    /// No reading: a dcgm-exporter sentinel, or node-exporter's -1 for a
    /// link speed the kernel does not know.
    Blank,
    /// Not valid exposition format; the reason is the last entry of
    /// `ScrapeStats::malformed`.
    Malformed,
}

/// Parses one scrape of `node` taken at `ts`. The node is the scrape
/// target's; a sample's own `Hostname`/`hostname` label (dcgm-exporter)
/// overrides it, since one exporter may front several hosts.
pub fn parse_scrape(body: &str, node: &str, ts: Timestamp) -> (Vec<MetricSample>, ScrapeStats) {
    parse_scrape_with(body, node, ts, |_, _| {})
}

/// [`parse_scrape`], telling `dropped` of every line that gave no sample
/// (its 1-based number and why), for `keel scrape`.
pub fn parse_scrape_with(
    body: &str,
    node: &str,
    ts: Timestamp,
    mut dropped: impl FnMut(usize, Dropped<'_>),
) -> (Vec<MetricSample>, ScrapeStats) {
    let mut samples = Vec::new();
    let mut stats = ScrapeStats::default();
    for (i, line) in body.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find(['{', ' ', '\t']) {
            Some(p) if line.as_bytes()[p] == b'{' => match closing_brace(&line[p..]) {
                Some(close) => (&line[..p], &line[p + 1..p + close], &line[p + close + 1..]),
                None => {
                    stats.malformed.push((i + 1, "label set not closed".into()));
                    dropped(i + 1, Dropped::Malformed);
                    continue;
                }
            },
            Some(p) => (&line[..p], "", &line[p..]),
            None => {
                stats.malformed.push((i + 1, "no value".into()));
                dropped(i + 1, Dropped::Malformed);
                continue;
            }
        };
        let mut fields = rest.split_whitespace();
        let Some(raw_value) = fields.next() else {
            stats.malformed.push((i + 1, format!("{name}: no value")));
            dropped(i + 1, Dropped::Malformed);
            continue;
        };
        let Ok(value) = raw_value.parse::<f64>() else {
            stats.malformed.push((
                i + 1,
                format!("{name}: value {raw_value:?} is not a number"),
            ));
            dropped(i + 1, Dropped::Malformed);
            continue;
        };
        let Some(metric) = MetricName::from_wire(name) else {
            stats.unknown += 1;
            dropped(i + 1, Dropped::Unknown(name));
            continue;
        };
        if !value.is_finite() {
            stats.non_finite += 1;
            dropped(i + 1, Dropped::NonFinite);
            continue;
        }
        // node-exporter writes -1 Mb/s (-125000 bytes/s) for a link whose
        // speed the kernel does not know: no reading either.
        if is_dcgm_blank(name, value) || (metric == MetricName::NetSpeedBytes && value <= 0.0) {
            stats.blank += 1;
            dropped(i + 1, Dropped::Blank);
            continue;
        }
        let Some(raw_labels) = parse_labels(labels) else {
            stats
                .malformed
                .push((i + 1, format!("{name}: bad label set {{{labels}}}")));
            dropped(i + 1, Dropped::Malformed);
            continue;
        };
        let metric_labels = match labels_for(&raw_labels) {
            Ok(l) => l,
            Err(why) => {
                stats.malformed.push((i + 1, format!("{name}: {why}")));
                dropped(i + 1, Dropped::Malformed);
                continue;
            }
        };
        let host = raw_labels
            .get("Hostname")
            .or_else(|| raw_labels.get("hostname"))
            .map_or(node, String::as_str);
        stats.samples += 1;
        samples.push(MetricSample {
            ts,
            node: Name::from(host),
            name: metric,
            labels: metric_labels,
            value,
        });
    }
    (samples, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dcgm_exposition_with_sentinels_spaces_and_escapes() {
        let body = r#"# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{gpu="0", UUID="GPU-1a2b", pci_bus_id="00000000:18:00.0", device="nvidia0", modelName="NVIDIA H200", Hostname="h200-node", hpc_job="4242"} 97
DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-3c4d",device="nvidia1",modelName="NVIDIA \"H200\" SXM",Hostname="h200-node"} 0
DCGM_FI_DEV_FB_USED{gpu="0",Hostname="h200-node"} 1.38045e+05
DCGM_FI_DEV_SM_CLOCK{gpu="1",Hostname="h200-node"} 9223372036854775794
DCGM_FI_DEV_POWER_USAGE{gpu="1",Hostname="h200-node"} NaN
DCGM_FI_DEV_MEM_COPY_UTIL{gpu="0"} 12
"#;
        let (s, st) = parse_scrape(body, "scrape-target", 1_763_800_000.0);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!((st.blank, st.non_finite, st.unknown), (1, 1, 1));
        assert!(st.malformed.is_empty(), "{:?}", st.malformed);
        assert_eq!(s[0].node, "h200-node");
        assert_eq!(s[0].labels.gpu, Some(0));
        assert_eq!(s[0].labels.device, None, "dcgm's device label is not a NIC");
        assert_eq!(s[2].value, 138045.0);
    }

    /// The cgroup exporter's CPU counter, as its README shows it for Slurm's
    /// cgroups (v1 and v2 paths): the `cgroup` label is kept.
    #[test]
    fn the_cgroup_exporters_cpu_counter_keeps_its_cgroup() {
        let body = "# HELP cgroup_cpu_total_seconds Cumulative CPU usage in seconds\n\
# TYPE cgroup_cpu_total_seconds gauge\n\
cgroup_cpu_total_seconds{cgroup=\"/slurm/uid_20821/job_12\"} 0.007840451\n\
cgroup_cpu_total_seconds{cgroup=\"/system.slice/slurmstepd.scope/job_13\"} 939.568245515\n\
cgroup_cpus{cgroup=\"/slurm/uid_20821/job_12\"} 2\n";
        let (s, st) = parse_scrape(body, "n5", 1_763_800_000.0);
        assert!(st.malformed.is_empty(), "{:?}", st.malformed);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].name, MetricName::CgroupCpuSeconds);
        assert_eq!(
            s[0].labels.cgroup.as_deref(),
            Some("/slurm/uid_20821/job_12")
        );
        assert_eq!(
            keel_model::slurm_job_of_cgroup(s[1].labels.cgroup.as_deref().unwrap()),
            Some("13")
        );
        assert_eq!(s[1].value, 939.568245515);
    }

    #[test]
    fn an_overlong_cgroup_label_is_refused_and_the_line_named() {
        let long = "a".repeat(keel_model::LABEL_VALUE_MAX);
        let body = format!(
            "cgroup_cpu_total_seconds{{cgroup=\"/{long}\"}} 1\ncgroup_cpu_total_seconds{{cgroup=\"/job_1\"}} 2\n"
        );
        let (s, st) = parse_scrape(&body, "n", 1.0);
        assert_eq!(s.len(), 1, "the good line is kept");
        assert_eq!(st.malformed.len(), 1);
        assert_eq!(st.malformed[0].0, 1);
        assert!(st.malformed[0].1.contains("`cgroup`"), "{:?}", st.malformed);
    }

    #[test]
    fn a_brace_inside_a_label_value_is_not_the_end() {
        let (s, st) = parse_scrape(
            "DCGM_FI_DEV_GPU_UTIL{gpu=\"2\",modelName=\"x}y\\\"z\"} 5\n",
            "n",
            1.0e9,
        );
        assert!(st.malformed.is_empty(), "{:?}", st.malformed);
        assert_eq!(s[0].value, 5.0);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(body in "(?s).{0,400}", labels in "[a-z_=\",{} \\\\]{0,40}") {
            let _ = parse_scrape(&body, "n", 1.0e9);
            let _ = parse_scrape(&format!("DCGM_FI_DEV_GPU_UTIL{{{labels}}} 1\n"), "n", 1.0e9);
        }
    }

    #[test]
    fn vllm_v0_and_v1_names_are_the_same_gauge() {
        let body = "vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.5\nvllm:kv_cache_usage_perc{model_name=\"m\"} 0.75\nvllm:num_requests_waiting{model_name=\"m\"} 3\n";
        let (s, _) = parse_scrape(body, "n1", 1.0e9);
        assert!(s[..2]
            .iter()
            .all(|x| x.name == MetricName::VllmKvCacheUsage));
        assert_eq!(s[2].labels.model_name.as_deref(), Some("m"));
    }

    #[test]
    fn malformed_lines_are_reported_by_number() {
        let body = "node_netstat_Tcp_RetransSegs 5\nnode_netstat_Tcp_OutSegs{a=\"x\" 7\nnode_netstat_Tcp_OutSegs abc\n";
        let (s, st) = parse_scrape(body, "n1", 1.0e9);
        assert_eq!(s.len(), 1);
        let lines: Vec<usize> = st.malformed.iter().map(|m| m.0).collect();
        assert_eq!(lines, vec![2, 3]);
    }

    fn shared(name: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/prometheus")
            .join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn real_node_exporter_scrapes_give_rates_keel_uses() {
        let (a, sa) = parse_scrape(&shared("node-exporter-1.5.0-a.prom"), "n1", 1000.0);
        let (b, _) = parse_scrape(&shared("node-exporter-1.5.0-b.prom"), "n1", 1008.0);
        assert!(sa.malformed.is_empty(), "{:?}", sa.malformed);
        assert!(sa.unknown > 100, "go_*, process_* and the rest are skipped");
        let find = |v: &[MetricSample], name: MetricName, dev: Option<&str>| {
            v.iter()
                .find(|s| s.name == name && s.labels.device.as_deref() == dev)
                .map(|s| s.value)
        };
        for name in [MetricName::TcpRetransSegs, MetricName::CpuPressureWaiting] {
            let (x, y) = (find(&a, name, None).unwrap(), find(&b, name, None).unwrap());
            assert!(y >= x, "{name:?} is a counter: {x} then {y}");
        }
        let rx = (find(&b, MetricName::NetRxBytes, Some("eth0")).unwrap()
            - find(&a, MetricName::NetRxBytes, Some("eth0")).unwrap())
            / 8.0;
        assert!(rx >= 0.0 && rx.is_finite());
        let cpu = (find(&b, MetricName::CpuPressureWaiting, None).unwrap()
            - find(&a, MetricName::CpuPressureWaiting, None).unwrap())
            / 8.0;
        assert!((0.0..=64.0).contains(&cpu), "CPU pressure {cpu} s/s");
    }
}
