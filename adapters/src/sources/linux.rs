//! Linux counters read straight from `/proc` and `/sys`, for nodes that run
//! no node-exporter (a DPU's Arm cores, a minimal image) and so that keel
//! need not depend on one. Each sample carries node-exporter's name, label
//! and unit, so the detectors cannot tell the two sources apart:
//!
//! | file | metric |
//! | --- | --- |
//! | `/proc/net/snmp`, `Tcp:` RetransSegs, OutSegs | `node_netstat_Tcp_RetransSegs`, `node_netstat_Tcp_OutSegs` |
//! | `/sys/class/net/IF/statistics/{rx,tx}_bytes` | `node_network_{receive,transmit}_bytes_total{device=IF}` |
//! | `/sys/class/net/IF/statistics/{rx,tx}_dropped` | `node_network_{receive,transmit}_drop_total{device=IF}` |
//! | `/proc/pressure/cpu`, `some ... total=` (µs) | `node_pressure_cpu_waiting_seconds_total` (s) |
//!
//! Where the node's work runs in a cgroup of its own (a container, a
//! namespace node of `keel chaos run`, a share of a bigger host), the whole
//! host's pressure says nothing about this node, so `cgroup` names that
//! cgroup's directory and CPU pressure is read there instead:
//! `cpu.pressure` (cgroup v2, the same `some ... total=` µs), else
//! `cpu.stat`'s `throttled_time` (cgroup v1, ns: the time the group's
//! runnable tasks waited for its `cpu.cfs_quota_us`, which is what v1 can
//! say about tasks waiting for a CPU), both in seconds.
//!
//! Each Slurm job's CPU use is read from its cgroup, as the cgroup exporter
//! reports it, for the `noisy_neighbor` watch: cgroup v2
//! `/sys/fs/cgroup/system.slice/slurmstepd.scope/job_<id>/cpu.stat`
//! `usage_usec`, else cgroup v1
//! `/sys/fs/cgroup/cpuacct/slurm/uid_<uid>/job_<id>/cpuacct.usage` (ns),
//! both as `cgroup_cpu_total_seconds{cgroup="/system.slice/slurmstepd.scope/job_<id>"}`
//! (v1: `cgroup="/slurm/uid_<uid>/job_<id>"`), at most `SLURM_JOBS_MAX` a
//! reading.
//!
//! The root is configurable so that tests (and a sensor reading a host's
//! `/proc` mounted elsewhere) can point it at another tree. A file that is
//! missing (no PSI in this kernel, an interface gone between listing and
//! reading) is noted, not fatal; a malformed one is reported with its path
//! and line, and the other files are still read.

use keel_model::{MetricLabels, MetricName, MetricSample, Name, Timestamp};
use std::io;
use std::path::{Path, PathBuf};

/// `type = "linux"`: this node's counters from `/proc` and `/sys`.
#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinuxConfig {
    /// Where `/proc` and `/sys` are found (default `/`).
    #[serde(default = "slash")]
    pub root: PathBuf,
    /// Milliseconds between readings (default 1000).
    #[serde(default = "second")]
    pub interval_ms: u64,
    /// Only these interfaces (default: all but loopback).
    #[serde(default)]
    pub interfaces: Option<Vec<String>>,
    /// The node's own cgroup directory (a container, a namespace node):
    /// CPU pressure is read there (v2 `cpu.pressure`, v1 `cpu.stat`
    /// `throttled_time`) instead of the host's `/proc/pressure/cpu`.
    /// Default: none, the host's.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// Whether to read each Slurm job's cgroup CPU use (default true; a
    /// node without Slurm's cgroups has nothing there to read).
    #[serde(default = "yes")]
    pub slurm_jobs: bool,
}

fn yes() -> bool {
    true
}

fn slash() -> PathBuf {
    PathBuf::from("/")
}

fn second() -> u64 {
    1000
}

impl super::Source for LinuxConfig {
    fn describe(&self) -> String {
        format!("linux counters under {}", self.root.display())
    }

    fn timed(&self, node: &Name) -> super::Opened {
        let filter = match &self.interfaces {
            Some(names) => IfaceFilter::only(names.clone()),
            None => IfaceFilter::without_loopback(),
        };
        let mut src = LinuxSource::new(node)
            .with_root(self.root.clone())
            .with_interfaces(filter);
        if let Some(dir) = &self.cgroup {
            src = src.with_cgroup(dir.clone());
        }
        src.slurm_jobs = self.slurm_jobs;
        Some(Ok((super::interval(self.interval_ms), Box::new(src))))
    }
}

impl super::Timed for LinuxSource {
    /// One reading; an error only when nothing at all could be read.
    fn read(&mut self, now: f64) -> Result<Vec<keel_model::Record>, String> {
        let (samples, stats) = LinuxSource::read(self, now);
        if samples.is_empty() && !stats.errors.is_empty() {
            return Err(format!("{:?}", stats.errors));
        }
        Ok(samples
            .into_iter()
            .map(keel_model::Record::Metric)
            .collect())
    }
}

/// Which network interfaces to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IfaceFilter {
    /// Only these, when given; one that does not exist is reported missing.
    pub include: Option<Vec<String>>,
    /// Leaves out `lo`, as node-exporter's Debian build does by default.
    pub exclude_loopback: bool,
}

impl IfaceFilter {
    pub fn all() -> IfaceFilter {
        IfaceFilter::default()
    }

    pub fn without_loopback() -> IfaceFilter {
        IfaceFilter {
            include: None,
            exclude_loopback: true,
        }
    }

    pub fn only<S: Into<String>>(names: impl IntoIterator<Item = S>) -> IfaceFilter {
        IfaceFilter {
            include: Some(names.into_iter().map(Into::into).collect()),
            exclude_loopback: false,
        }
    }

    fn admits(&self, name: &str) -> bool {
        !(self.exclude_loopback && name == "lo")
            && self
                .include
                .as_ref()
                .is_none_or(|names| names.iter().any(|n| n == name))
    }
}

/// A file that could not be read or understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {reason}", path.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct LinuxError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub reason: String,
}

/// What one read found besides its samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinuxStats {
    pub samples: u64,
    /// Files that do not exist here (or that the kernel does not support).
    pub missing: Vec<PathBuf>,
    pub errors: Vec<LinuxError>,
    /// Slurm job cgroups past `SLURM_JOBS_MAX` in this reading, not read.
    pub jobs_dropped: u64,
}

/// Slurm job cgroups read at most per reading (a node runs a few jobs; a
/// few hundred is a node shared by many small ones).
pub const SLURM_JOBS_MAX: usize = 512;

/// Reads this node's counters from `/proc` and `/sys` under a root.
#[derive(Debug, Clone, PartialEq)]
pub struct LinuxSource {
    pub root: PathBuf,
    pub node: Name,
    pub interfaces: IfaceFilter,
    /// The node's cgroup directory (absolute, not under `root`): CPU
    /// pressure is read there instead of `/proc/pressure/cpu`.
    pub cgroup: Option<PathBuf>,
    /// Whether each Slurm job's cgroup CPU use is read.
    pub slurm_jobs: bool,
}

/// What a file's contents did wrong; the caller adds the path.
struct Bad {
    line: Option<usize>,
    reason: String,
}

fn bad(line: usize, reason: impl Into<String>) -> Bad {
    Bad {
        line: Some(line),
        reason: reason.into(),
    }
}

impl LinuxSource {
    /// Reads the real `/proc` and `/sys`, every interface.
    pub fn new(node: &str) -> LinuxSource {
        LinuxSource {
            root: PathBuf::from("/"),
            node: Name::from(node),
            interfaces: IfaceFilter::all(),
            cgroup: None,
            slurm_jobs: true,
        }
    }

    /// Reads CPU pressure from this cgroup directory (v2 `cpu.pressure`,
    /// else v1 `cpu.stat` `throttled_time`) instead of the host's.
    pub fn with_cgroup(mut self, dir: impl Into<PathBuf>) -> LinuxSource {
        self.cgroup = Some(dir.into());
        self
    }

    pub fn with_root(mut self, root: impl Into<PathBuf>) -> LinuxSource {
        self.root = root.into();
        self
    }

    pub fn with_interfaces(mut self, filter: IfaceFilter) -> LinuxSource {
        self.interfaces = filter;
        self
    }

    /// One reading of every counter, stamped `ts`.
    pub fn read(&self, ts: Timestamp) -> (Vec<MetricSample>, LinuxStats) {
        let mut r = Reading {
            src: self,
            ts,
            samples: Vec::new(),
            stats: LinuxStats::default(),
        };
        r.file("proc/net/snmp", |text, r| {
            for (name, value) in parse_snmp_tcp(text)? {
                r.push(name, MetricLabels::default(), value as f64);
            }
            Ok(())
        });
        r.interfaces();
        if let Some(dir) = &self.cgroup {
            r.cgroup_pressure(dir);
        } else {
            r.file("proc/pressure/cpu", |text, r| {
                let us = parse_psi_some_total(text)?;
                // Divided twice, as node-exporter does, so that both sources give
                // the same float for the same counter (one division by 1e6
                // rounds differently in the last bit).
                let seconds = us as f64 / 1000.0 / 1000.0;
                r.push(
                    MetricName::CpuPressureWaiting,
                    MetricLabels::default(),
                    seconds,
                );
                Ok(())
            });
        }
        if self.slurm_jobs {
            r.slurm_jobs();
        }
        r.stats.samples = r.samples.len() as u64;
        (r.samples, r.stats)
    }
}

struct Reading<'a> {
    src: &'a LinuxSource,
    ts: Timestamp,
    samples: Vec<MetricSample>,
    stats: LinuxStats,
}

impl Reading<'_> {
    fn push(&mut self, name: MetricName, labels: MetricLabels, value: f64) {
        self.samples.push(MetricSample {
            ts: self.ts,
            node: self.src.node.clone(),
            name,
            labels,
            value,
        });
    }

    /// The file's text; `None` (noted) when it is missing or unreadable.
    fn text(&mut self, path: &Path) -> Option<String> {
        match std::fs::read_to_string(path) {
            Ok(t) => Some(t),
            // EOPNOTSUPP: PSI compiled in but switched off (psi=0).
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::Unsupported
                ) =>
            {
                self.stats.missing.push(path.to_path_buf());
                None
            }
            Err(e) => {
                self.error(path, None, format!("cannot read: {e}"));
                None
            }
        }
    }

    fn error(&mut self, path: &Path, line: Option<usize>, reason: String) {
        self.stats.errors.push(LinuxError {
            path: path.to_path_buf(),
            line,
            reason,
        });
    }

    fn file(&mut self, rel: &str, f: impl FnOnce(&str, &mut Self) -> Result<(), Bad>) {
        let path = self.src.root.join(rel);
        self.file_at(&path, f);
    }

    fn file_at(&mut self, path: &Path, f: impl FnOnce(&str, &mut Self) -> Result<(), Bad>) {
        if let Some(text) = self.text(path) {
            if let Err(b) = f(&text, self) {
                self.error(path, b.line, b.reason);
            }
        }
    }

    /// The cgroup's CPU pressure: v2's `cpu.pressure` where the file
    /// exists, else v1's `cpu.stat` `throttled_time`.
    fn cgroup_pressure(&mut self, dir: &Path) {
        let v2 = dir.join("cpu.pressure");
        if v2.exists() {
            return self.file_at(&v2, |text, r| {
                let us = parse_psi_some_total(text)?;
                let seconds = us as f64 / 1000.0 / 1000.0;
                r.push(
                    MetricName::CpuPressureWaiting,
                    MetricLabels::default(),
                    seconds,
                );
                Ok(())
            });
        }
        self.file_at(&dir.join("cpu.stat"), |text, r| {
            let ns = parse_cpu_stat_throttled_ns(text)?;
            let seconds = ns as f64 / 1e9;
            r.push(
                MetricName::CpuPressureWaiting,
                MetricLabels::default(),
                seconds,
            );
            Ok(())
        });
    }

    /// Each Slurm job cgroup's CPU seconds: v2 where Slurm's scope exists,
    /// else v1's `cpuacct` hierarchy; nothing (and nothing noted) where
    /// neither does.
    fn slurm_jobs(&mut self) {
        let cg = self.src.root.join("sys/fs/cgroup");
        let v2 = cg.join("system.slice/slurmstepd.scope");
        let mut jobs: Vec<(String, PathBuf, bool)> = Vec::new();
        if v2.is_dir() {
            for (name, dir) in job_dirs(&v2) {
                jobs.push((format!("/system.slice/slurmstepd.scope/{name}"), dir, true));
            }
        } else {
            let v1 = cg.join("cpuacct/slurm");
            for (uid, udir) in subdirs(&v1).filter(|(n, _)| n.starts_with("uid_")) {
                for (name, dir) in job_dirs(&udir) {
                    jobs.push((format!("/slurm/{uid}/{name}"), dir, false));
                }
            }
        }
        jobs.sort();
        if jobs.len() > SLURM_JOBS_MAX {
            self.stats.jobs_dropped += (jobs.len() - SLURM_JOBS_MAX) as u64;
            jobs.truncate(SLURM_JOBS_MAX);
        }
        for (label, dir, v2) in jobs {
            let labels = MetricLabels {
                cgroup: Some(Name::from(label)),
                ..MetricLabels::default()
            };
            if v2 {
                self.file_at(&dir.join("cpu.stat"), |text, r| {
                    let us = parse_cpu_stat_usage_us(text)?;
                    r.push(MetricName::CgroupCpuSeconds, labels, us as f64 / 1e6);
                    Ok(())
                });
            } else if let Some(ns) = self.counter(&dir.join("cpuacct.usage")) {
                self.push(MetricName::CgroupCpuSeconds, labels, ns as f64 / 1e9);
            }
        }
    }

    fn interfaces(&mut self) {
        let dir = self.src.root.join("sys/class/net");
        let mut names: Vec<String> = match std::fs::read_dir(&dir) {
            // Entries that are not directories (bonding_masters) are not interfaces.
            Ok(rd) => rd
                .filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.stats.missing.push(dir);
                return;
            }
            Err(e) => return self.error(&dir, None, format!("cannot list: {e}")),
        };
        names.sort();
        if let Some(include) = &self.src.interfaces.include {
            for want in include.iter().filter(|w| !names.contains(w)) {
                self.stats.missing.push(dir.join(want));
            }
        }
        let src = self.src;
        for name in names.iter().filter(|n| src.interfaces.admits(n)) {
            self.interface(&dir.join(name).join("statistics"), name);
        }
    }

    fn interface(&mut self, stats: &Path, name: &str) {
        let labels = MetricLabels {
            device: Some(Name::from(name)),
            ..MetricLabels::default()
        };
        for (file, metric) in [
            ("rx_bytes", MetricName::NetRxBytes),
            ("tx_bytes", MetricName::NetTxBytes),
            ("rx_dropped", MetricName::NetRxDrop),
            ("tx_dropped", MetricName::NetTxDrop),
        ] {
            let Some(mut value) = self.counter(&stats.join(file)) else {
                continue;
            };
            if metric == MetricName::NetRxDrop {
                // node-exporter's receive_drop is /proc/net/dev's "drop",
                // which the kernel sums from these two; a NIC out of receive
                // buffers counts its drops as missed, not dropped.
                let missed = stats.join("rx_missed_errors");
                if missed.exists() {
                    value += self.counter(&missed).unwrap_or(0);
                }
            }
            self.push(metric, labels.clone(), value as f64);
        }
    }

    fn counter(&mut self, path: &Path) -> Option<u64> {
        let text = self.text(path)?;
        match text.trim().parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => {
                let reason = format!("{:?} is not a counter", text.trim());
                self.error(path, Some(1), reason);
                None
            }
        }
    }
}

/// `Tcp:` RetransSegs and OutSegs from `/proc/net/snmp`, whose sections are
/// pairs of lines: the field names, then their values.
fn parse_snmp_tcp(text: &str) -> Result<Vec<(MetricName, u64)>, Bad> {
    let lines: Vec<&str> = text.lines().collect();
    let Some(at) = lines.iter().position(|l| l.starts_with("Tcp:")) else {
        return Err(Bad {
            line: None,
            reason: "no Tcp: section".into(),
        });
    };
    let names: Vec<&str> = lines[at].split_whitespace().skip(1).collect();
    let values: Vec<&str> = match lines.get(at + 1) {
        Some(l) if l.starts_with("Tcp:") => l.split_whitespace().skip(1).collect(),
        _ => return Err(bad(at + 2, "Tcp: field names without a values line")),
    };
    if names.len() != values.len() {
        return Err(bad(
            at + 2,
            format!("{} Tcp: values for {} names", values.len(), names.len()),
        ));
    }
    let mut out = Vec::new();
    for (field, metric) in [
        ("RetransSegs", MetricName::TcpRetransSegs),
        ("OutSegs", MetricName::TcpOutSegs),
    ] {
        let i = names
            .iter()
            .position(|n| *n == field)
            .ok_or_else(|| bad(at + 1, format!("no field {field}")))?;
        let v = values[i].parse::<u64>().map_err(|_| {
            bad(
                at + 2,
                format!("field {field}: {:?} is not a counter", values[i]),
            )
        })?;
        out.push((metric, v));
    }
    Ok(out)
}

/// The subdirectories of `dir` (none when it cannot be listed).
fn subdirs(dir: &Path) -> impl Iterator<Item = (String, PathBuf)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
}

/// The `job_<id>` subdirectories of `dir`.
fn job_dirs(dir: &Path) -> impl Iterator<Item = (String, PathBuf)> {
    subdirs(dir).filter(|(n, _)| keel_model::slurm_job_of_cgroup(n).is_some())
}

/// `usage_usec` (µs of CPU time) of a cgroup v2 `cpu.stat`.
fn parse_cpu_stat_usage_us(text: &str) -> Result<u64, Bad> {
    for (i, line) in text.lines().enumerate() {
        let mut kv = line.split_whitespace();
        if kv.next() == Some("usage_usec") {
            let v = kv.next().unwrap_or("");
            return v
                .parse()
                .map_err(|_| bad(i + 1, format!("usage_usec {v:?} is not a counter")));
        }
    }
    Err(Bad {
        line: None,
        reason: "no usage_usec line".into(),
    })
}

/// `throttled_time` (ns) of a cgroup v1 `cpu.stat`.
fn parse_cpu_stat_throttled_ns(text: &str) -> Result<u64, Bad> {
    for (i, line) in text.lines().enumerate() {
        let mut kv = line.split_whitespace();
        if kv.next() == Some("throttled_time") {
            let v = kv.next().unwrap_or("");
            return v
                .parse()
                .map_err(|_| bad(i + 1, format!("throttled_time {v:?} is not a counter")));
        }
    }
    Err(Bad {
        line: None,
        reason: "no throttled_time line (neither cgroup v2 cpu.pressure nor v1 cpu.stat)".into(),
    })
}

/// The `total=` (µs) of the `some` line of a PSI file.
fn parse_psi_some_total(text: &str) -> Result<u64, Bad> {
    let Some((i, line)) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.starts_with("some "))
    else {
        return Err(Bad {
            line: None,
            reason: "no `some` line".into(),
        });
    };
    let total = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("total="))
        .ok_or_else(|| bad(i + 1, "no total= field"))?;
    total
        .parse()
        .map_err(|_| bad(i + 1, format!("total={total:?} is not a counter")))
}

#[cfg(test)]
#[path = "linux_tests.rs"]
mod tests;
