//! NCCL's own per-rank collective records, from the NCCL Inspector
//! profiler plugin (`plugins/profiler/inspector` in NVIDIA/nccl), which a
//! job switches on with environment variables and no code change:
//!
//! ```sh
//! export NCCL_PROFILER_PLUGIN=/opt/nccl/libnccl-profiler-inspector.so
//! export NCCL_INSPECTOR_ENABLE=1
//! export NCCL_INSPECTOR_DUMP_THREAD_INTERVAL_MICROSECONDS=100000   # write every 0.1 s
//! export NCCL_INSPECTOR_DUMP_DIR=/var/log/nccl-inspector/$SLURM_JOB_ID
//! ```
//!
//! Each process appends one JSON object per line to
//! `DUMP_DIR/<hostname>-pid<pid>.log`, for each collective of each of its
//! communicators, whenever its dump thread wakes (without a dump interval,
//! only when the communicator is torn down: too late for keel). This
//! source tails every such file under `dir`: files that appear and lines
//! appended to them. The job is the name of the folder that holds the
//! file: `dir/<job>/` as above, or the plugin's own default
//! `nccl-inspector-<job>` (a folder `nccl-inspector-unknown-jobid`, or a
//! file directly in `dir`, names no job and is not read, counted). Only
//! files named for this sensor's host are read, so that a dump folder on a
//! shared file system gives each sensor its own node's ranks.
//!
//! ## Mapping onto the trace format's `collective` record
//!
//! | Inspector field | keel field | unit, what is lost |
//! | --- | --- | --- |
//! | (folder of the dump file) | `job` | the Slurm job id |
//! | (the sensor's node) | `node` | only files named for this host are read (`hostname`); `metadata.hostname` is not used |
//! | `header.rank` | `rank` | the rank in the communicator: the job's rank when the communicator is the job's widest (below) |
//! | `coll_perf.coll_sn` | `seq` | NCCL's count of the communicator's collectives, the same on all its ranks |
//! | `coll_perf.coll` | `op` | lower case: `AllReduce` → `allreduce` |
//! | `coll_perf.coll_msg_size_bytes` | `bytes` | times `header.n_ranks` for `AllGather`, `AllGatherV` and `ReduceScatter`, whose size NCCL counts per rank, so that `bytes` is the largest buffer as nccl-tests count |
//! | `coll_perf.coll_exec_time_us` | `dur_us` | µs, whole (the plugin truncates); the longest of the kernel's channels |
//! | max `event_trace_ts.kernel_events[].kernel_stop_ts` (verbose) | `ts` | µs → s; host clock when the profiler saw the kernel stop |
//! | `metadata.dump_timestamp_us` (basic records) | `ts` | µs → s; when the line was written, up to one dump interval after the collective ended: set a short interval |
//! | `ts` − `coll_exec_time_us` | `arrive` | when the collective's kernel started on this rank's GPU |
//! | `coll_perf.coll_timing_source` | (taken or not) | `kernel_gpu`, `kernel_cpu` and records without it are taken; `collective_cpu` is skipped, counted `host_timed` |
//! | `header.id`, `header.comm_name`, `header.n_ranks`, `header.nnodes` | (which records are taken) | see below |
//! | `coll_algobw_gbs`, `coll_busbw_gbs`, `event_trace_sn`, `coll_start_ts`, `coll_stop_ts`, `kernel_start_ts`, `kernel_record_ts`, `metadata.pid`, `git_rev` | — | not used |
//! | `p2p_perf` records | — | point-to-point, not collectives: skipped, counted `p2p` |
//!
//! Why the kernel's time: a rank whose GPU reaches the collective late
//! starts its kernel late, while its peers' kernels already run and wait
//! for it; all end together. The straggler's `coll_exec_time_us` is
//! therefore the shortest, as `dur_us` is for a straggler in the trace
//! format. The host's timing (`collective_cpu`, from the call into NCCL)
//! does not show this when the host runs ahead of its GPU, so it is not
//! taken. NCCL drops collectives under `NCCL_INSPECTOR_DUMP_MIN_SIZE_BYTES`
//! (8 KiB by default), on every rank alike, so `seq` has gaps; windows
//! hold fewer collectives then, but ranks still compare like with like.
//!
//! ## Which communicator
//!
//! keel compares the ranks of a job at each `seq`, and `seq` and `rank`
//! count within one communicator. A process holds several (a tensor-
//! parallel group, a data-parallel group, the world); the source takes,
//! for each job, one communicator: the one named `comm_name` when the
//! config names one, else the widest (most `n_ranks`) seen so far for the
//! job on this node, moving to a wider one when it appears. Every sensor
//! of the job chooses alike when the widest communicator spans the job's
//! nodes (the world); a job whose widest recorded communicators are one
//! per node should name one spanning them (`NCCL_COMM_NAME`, PyTorch's
//! group description) as `comm_name`.
//!
//! ## Bounds
//!
//! At most [`FILES_MAX`] files are followed (one more is counted
//! `files_refused`), [`POLL_BYTES_MAX`] bytes read per poll over all files
//! (the rest waits in the file for the next), a file more than
//! [`LAG_MAX`] bytes behind skips its oldest bytes (counted
//! `skipped_bytes`), and a line longer than [`LINE_MAX`] is skipped
//! (counted `long_lines`). A line that does not parse, or carries a value
//! out of range, is counted `bad_lines` and named with its file and line
//! (`last_error`, and the log); the next line is read as usual.

pub mod record;

#[cfg(test)]
mod tests;

use keel_model::{Name, Record};
use record::{Entry, Timing};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Dump files followed at once.
pub const FILES_MAX: usize = 4096;
/// Bytes read per poll, over all files.
pub const POLL_BYTES_MAX: u64 = 32 << 20;
/// Unread bytes a file may hold before its oldest are skipped.
pub const LAG_MAX: u64 = 256 << 20;
/// The longest line read, bytes (a verbose record of 64 channels is
/// about 14 KiB).
pub const LINE_MAX: usize = 1 << 16;
/// Jobs whose communicator choice is held (one per job with files).
pub const JOBS_MAX: usize = 4096;
/// The longest job id taken from a folder name, bytes.
pub const JOB_LEN_MAX: usize = 64;

/// `type = "nccl_inspector"`: NCCL Inspector dump files under `dir`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NcclInspectorConfig {
    /// The folder holding one folder per job (`NCCL_INSPECTOR_DUMP_DIR`
    /// is `dir/<job>` or the plugin's default `dir/nccl-inspector-<job>`).
    pub dir: PathBuf,
    /// How often the files are read, milliseconds (default 100).
    #[serde(default = "tenth")]
    pub interval_ms: u64,
    /// Take only the communicator of this `header.comm_name`; default:
    /// each job's widest communicator.
    #[serde(default)]
    pub comm_name: Option<String>,
    /// The host name in the dump files' names (`<hostname>-pid<pid>.log`,
    /// from `gethostname()` on the ranks' node); only those files are read,
    /// so that a dump folder on a shared file system, where every node's
    /// processes write, gives each sensor its own node's. Default: this
    /// machine's host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Read the files present when the source starts from their start
    /// (default false: from their end, since what they hold is old; a
    /// file that appears later is always read from its start).
    #[serde(default)]
    pub from_start: bool,
}

fn tenth() -> u64 {
    100
}

impl NcclInspectorConfig {
    /// A source over `dir` with the defaults.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        NcclInspectorConfig {
            dir: dir.into(),
            interval_ms: tenth(),
            comm_name: None,
            hostname: None,
            from_start: false,
        }
    }
}

impl super::Source for NcclInspectorConfig {
    fn describe(&self) -> String {
        format!("NCCL Inspector dump files under {}", self.dir.display())
    }

    fn timed(&self, node: &Name) -> super::Opened {
        let tail: Box<dyn super::Timed> = Box::new(InspectorTail::new(self.clone(), node));
        Some(Ok((super::interval(self.interval_ms), tail)))
    }
}

impl super::Timed for InspectorTail {
    fn read(&mut self, _now: f64) -> Result<Vec<Record>, String> {
        let mut out = Vec::new();
        self.poll(&mut out)?;
        Ok(out)
    }

    fn counters(&self) -> super::SourceCounters {
        let s = &self.stats;
        super::SourceCounters {
            bad: s.bad_lines,
            dropped: s.long_lines + s.files_refused + s.skips,
            last_error: s.last_error.clone(),
        }
    }
}

/// What the source has read, since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InspectorStats {
    /// Dump files followed now.
    pub files: u64,
    pub lines: u64,
    /// Collectives handed on.
    pub collectives: u64,
    /// Lines that did not parse or held a value out of range.
    pub bad_lines: u64,
    /// Lines longer than [`LINE_MAX`], skipped.
    pub long_lines: u64,
    /// Point-to-point records, skipped.
    pub p2p: u64,
    /// Collectives timed on the host (`collective_cpu`), skipped.
    pub host_timed: u64,
    /// Collectives of a communicator other than the job's chosen one.
    pub other_comm: u64,
    /// Files in no job's folder, not read.
    pub files_without_job: u64,
    /// Files another host's processes write (a dump folder on a shared
    /// file system), not read.
    pub files_other_host: u64,
    /// Files not followed because [`FILES_MAX`] were (counted at each
    /// poll that sees them).
    pub files_refused: u64,
    /// Bytes skipped in files more than [`LAG_MAX`] behind, and how many
    /// times that happened.
    pub skipped_bytes: u64,
    pub skips: u64,
    /// Files that shrank or were replaced, read again from their start.
    pub restarts: u64,
    /// The last bad line: `file:line: why`.
    pub last_error: Option<String>,
}

struct Followed {
    job: Name,
    id: (u64, u64),
    offset: u64,
    line: u64,
    partial: Vec<u8>,
    /// Dropping bytes up to the next newline (after a skip or a long line).
    resync: bool,
    seen: bool,
}

/// Follows the dump files under one folder.
pub struct InspectorTail {
    cfg: NcclInspectorConfig,
    node: Name,
    files: HashMap<PathBuf, Followed>,
    /// job -> (communicator id, n_ranks) taken.
    comms: HashMap<Name, (String, u32)>,
    scanned: bool,
    /// The host name in the files this sensor reads (`None`: every file).
    host: Option<String>,
    /// Files counted once as not read (no job, another host's).
    ignored: std::collections::HashSet<PathBuf>,
    stats: InspectorStats,
}

impl InspectorTail {
    /// A tail for the sensor of `node`; nothing is read until [`poll`](Self::poll).
    pub fn new(cfg: NcclInspectorConfig, node: &Name) -> Self {
        if cfg.hostname.is_none() && this_host().is_none() {
            tracing::warn!(
                "NCCL Inspector: this host's name is unknown; reading every host's dump files"
            );
        }
        InspectorTail {
            node: node.clone(),
            files: HashMap::new(),
            comms: HashMap::new(),
            scanned: false,
            host: cfg.hostname.clone().or_else(this_host),
            ignored: Default::default(),
            stats: InspectorStats::default(),
            cfg,
        }
    }

    pub fn config(&self) -> &NcclInspectorConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &InspectorStats {
        &self.stats
    }

    /// Reads what was written since the last poll; each collective taken
    /// is appended to `out`. The error says why `dir` could not be listed
    /// (a file that cannot be read is skipped until it can).
    pub fn poll(&mut self, out: &mut Vec<Record>) -> Result<(), String> {
        let mut truncated = false;
        let found = self.scan(&mut truncated)?;
        let first = !self.scanned;
        self.scanned = true;
        for f in self.files.values_mut() {
            f.seen = false;
        }
        for (path, job) in found {
            if let Some(f) = self.files.get_mut(&path) {
                f.seen = true;
                continue;
            }
            if self.files.len() >= FILES_MAX {
                self.stats.files_refused += 1;
                continue;
            }
            let start = if first && !self.cfg.from_start {
                std::fs::metadata(&path).map_or(0, |m| m.len())
            } else {
                0
            };
            self.files.insert(
                path,
                Followed {
                    job,
                    id: (0, 0),
                    offset: start,
                    line: 0,
                    partial: Vec::new(),
                    resync: false,
                    seen: true,
                },
            );
        }
        // A file gone from the listing is forgotten; when the listing was
        // cut short, the files already followed are kept.
        if !truncated {
            self.files.retain(|_, f| f.seen);
        }
        let live: std::collections::HashSet<&Name> = self.files.values().map(|f| &f.job).collect();
        self.comms.retain(|job, _| live.contains(job));
        self.stats.files = self.files.len() as u64;
        let mut budget = POLL_BYTES_MAX;
        let mut paths: Vec<PathBuf> = self.files.keys().cloned().collect();
        paths.sort();
        for path in paths {
            if budget == 0 {
                break;
            }
            let mut f = self.files.remove(&path).expect("listed above");
            if let Ok(chunk) = self.read_new(&path, &mut f, budget) {
                budget = budget.saturating_sub(chunk.len() as u64);
                self.take_lines(&path, &mut f, &chunk, out);
            }
            self.files.insert(path, f);
        }
        Ok(())
    }

    /// The dump files under `dir`, each with its job: at most
    /// [`FILES_MAX`]; `truncated` says whether more were left out.
    fn scan(&mut self, truncated: &mut bool) -> Result<Vec<(PathBuf, Name)>, String> {
        let dir = &self.cfg.dir;
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                let job = entry.file_name().to_str().and_then(job_of_folder);
                let Ok(files) = std::fs::read_dir(&path) else {
                    continue;
                };
                for file in files.flatten() {
                    let p = file.path();
                    if !is_dump(&p) || !file.file_type().is_ok_and(|t| t.is_file()) {
                        continue;
                    }
                    if !self.host.as_ref().is_none_or(|h| written_by(&p, h)) {
                        self.other_host(p);
                        continue;
                    }
                    match &job {
                        Some(_) if found.len() >= FILES_MAX => {
                            self.stats.files_refused += 1;
                            *truncated = true;
                        }
                        Some(j) => found.push((p, j.clone())),
                        None => self.without_job(p),
                    }
                }
            } else if kind.is_file() && is_dump(&path) {
                self.without_job(path);
            }
        }
        Ok(found)
    }

    fn without_job(&mut self, path: PathBuf) {
        if self.ignored.len() < FILES_MAX && self.ignored.insert(path.clone()) {
            self.stats.files_without_job += 1;
            tracing::warn!(file = %path.display(), "NCCL Inspector file in no job's folder: not read");
        }
    }

    fn other_host(&mut self, path: PathBuf) {
        if self.ignored.len() < FILES_MAX && self.ignored.insert(path) {
            self.stats.files_other_host += 1;
        }
    }

    /// The bytes appended to `path` since the last read, at most `budget`.
    fn read_new(&mut self, path: &Path, f: &mut Followed, budget: u64) -> std::io::Result<Vec<u8>> {
        let mut file = std::fs::File::open(path)?;
        let meta = file.metadata()?;
        let id = (meta.dev(), meta.ino());
        if f.id != (0, 0) && (f.id != id || meta.len() < f.offset) {
            self.stats.restarts += 1;
            f.offset = 0;
            f.line = 0;
            f.partial.clear();
            f.resync = false;
        }
        f.id = id;
        let len = meta.len();
        if len - f.offset.min(len) > LAG_MAX {
            let to = len - LAG_MAX;
            self.stats.skipped_bytes += to - f.offset + f.partial.len() as u64;
            self.stats.skips += 1;
            f.offset = to;
            f.partial.clear();
            f.resync = true;
        }
        if len <= f.offset {
            return Ok(Vec::new());
        }
        file.seek(SeekFrom::Start(f.offset))?;
        let mut chunk = Vec::new();
        file.take((len - f.offset).min(budget))
            .read_to_end(&mut chunk)?;
        f.offset += chunk.len() as u64;
        Ok(chunk)
    }

    fn take_lines(&mut self, path: &Path, f: &mut Followed, chunk: &[u8], out: &mut Vec<Record>) {
        let mut rest = chunk;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            let piece = &rest[..end];
            rest = &rest[end + 1..];
            f.line += 1;
            if std::mem::take(&mut f.resync) {
                f.partial.clear();
                continue;
            }
            if f.partial.len() + piece.len() > LINE_MAX {
                f.partial.clear();
                self.stats.long_lines += 1;
                continue;
            }
            let line = if f.partial.is_empty() {
                std::borrow::Cow::Borrowed(piece)
            } else {
                f.partial.extend_from_slice(piece);
                std::borrow::Cow::Owned(std::mem::take(&mut f.partial))
            };
            self.take_line(path, f.line, &f.job, &line, out);
        }
        if !f.resync {
            if f.partial.len() + rest.len() > LINE_MAX {
                f.partial.clear();
                f.resync = true;
                self.stats.long_lines += 1;
            } else {
                f.partial.extend_from_slice(rest);
            }
        }
    }

    fn take_line(
        &mut self,
        path: &Path,
        line: u64,
        job: &Name,
        bytes: &[u8],
        out: &mut Vec<Record>,
    ) {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        self.stats.lines += 1;
        let parsed = std::str::from_utf8(bytes)
            .map_err(|e| format!("not UTF-8: {e}"))
            .and_then(record::parse);
        let c = match parsed {
            Ok(Entry::Collective(c)) => c,
            Ok(Entry::P2p) => {
                self.stats.p2p += 1;
                return;
            }
            Err(why) => {
                self.stats.bad_lines += 1;
                let at = format!("{}:{line}: {why}", path.display());
                let n = self.stats.bad_lines;
                if n <= 10 || n.is_multiple_of(1000) {
                    tracing::warn!(bad_lines = n, "NCCL Inspector record refused: {at}");
                }
                self.stats.last_error = Some(at);
                return;
            }
        };
        if c.timing == Timing::CollectiveCpu {
            self.stats.host_timed += 1;
            return;
        }
        if !self.takes(job, &c.comm) {
            self.stats.other_comm += 1;
            return;
        }
        self.stats.collectives += 1;
        out.push(Record::Collective(c.into_record(&self.node, job)));
    }

    /// Whether the job's records from this communicator are taken (see
    /// "Which communicator" above).
    fn takes(&mut self, job: &Name, comm: &record::Comm) -> bool {
        if let Some(want) = &self.cfg.comm_name {
            return comm.name.as_ref() == Some(want);
        }
        let room = self.comms.len() < JOBS_MAX;
        match self.comms.get_mut(job) {
            Some((id, _)) if *id == comm.id => true,
            Some((id, n)) if comm.n_ranks > *n => {
                tracing::info!(%job, from = %id, to = %comm.id, n_ranks = comm.n_ranks, "NCCL Inspector: following a wider communicator");
                *id = comm.id.clone();
                *n = comm.n_ranks;
                true
            }
            Some(_) => false,
            None if room => {
                self.comms
                    .insert(job.clone(), (comm.id.clone(), comm.n_ranks));
                true
            }
            None => false,
        }
    }
}

/// Whether `path` is `<host>-pid<digits>.log`, a file the plugin of a
/// process on `host` writes.
fn written_by(path: &Path, host: &str) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.strip_prefix(host)
        .and_then(|rest| rest.strip_prefix("-pid"))
        .and_then(|rest| rest.strip_suffix(".log"))
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// This machine's host name, as `gethostname()` (which the plugin calls)
/// gives it.
fn this_host() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// A dump file's name: `<hostname>-pid<pid>.log`.
fn is_dump(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".log") && n.contains("-pid"))
}

/// The Slurm job a dump folder is named for: `nccl-inspector-<job>` (the
/// plugin's default) or the job id itself; `None` for the plugin's
/// `nccl-inspector-unknown-jobid` and for a name no job id has.
pub fn job_of_folder(name: &str) -> Option<Name> {
    let job = name.strip_prefix("nccl-inspector-").unwrap_or(name);
    let ok = !job.is_empty()
        && job != "unknown-jobid"
        && job.len() <= JOB_LEN_MAX
        && job
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !job.starts_with('.');
    ok.then(|| Name::from(job))
}
