//! One NCCL Inspector record: parsing, range checks, and its mapping onto
//! the trace format's `collective` record (the table in `mod.rs`).
//!
//! The plugin writes one JSON object per line (`inspector_json.cc`: an
//! object, then a newline); NVIDIA's README prints the same objects
//! indented, which [`parse`] reads too. Fields this reader does not use
//! (`coll_algobw_gbs`, `coll_busbw_gbs`, which the plugin writes as the
//! string `"nan"` when they are not numbers, `git_rev`, the `_sn` event
//! counters) are ignored, so that a newer output format with more fields
//! still reads.

use crate::sources::trace_line::{TS_MAX, TS_MIN};
use keel_model::{CollectiveRecord, Name};
use serde::de::IgnoredAny;
use serde::Deserialize;

/// The longest collective execution time taken, microseconds: ten
/// minutes, the edge's own bound (`keel_detect::edge::DUR_MAX_US`), long
/// after NCCL's watchdog gives up on a collective.
pub const EXEC_TIME_MAX_US: u64 = 600_000_000;
/// The largest communicator taken (`header.n_ranks`).
pub const COMM_RANKS_MAX: u64 = 1 << 24;
/// The longest communicator id (`header.id`, a hash the plugin writes as
/// `0x` and hex digits) and name (`header.comm_name`) taken, bytes.
pub const COMM_ID_LEN_MAX: usize = 64;
/// The longest collective name (`coll_perf.coll`) taken, bytes.
pub const OP_LEN_MAX: usize = 32;
/// The most kernel channels one record may list (NCCL runs at most 64
/// channels; the bound leaves room).
pub const CHANNELS_MAX: usize = 256;

/// The communicator a record belongs to (`header`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comm {
    /// `header.id`: the communicator's hash, the same on all its ranks.
    pub id: String,
    /// `header.comm_name` (newer plugins; `unknown` when the application
    /// named none); `None` when the record has no such field.
    pub name: Option<String>,
    /// `header.n_ranks`: ranks in the communicator.
    pub n_ranks: u32,
    /// `header.nnodes`: nodes the communicator spans.
    pub nnodes: u64,
}

/// Which clock measured `coll_exec_time_us` (`coll_timing_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// `kernel_gpu`: the GPU's global timer around the collective's
    /// kernel, the longest over its channels.
    KernelGpu,
    /// `kernel_cpu`: the host's clock at the profiler's kernel start and
    /// stop events, the longest over channels.
    KernelCpu,
    /// `collective_cpu`: the host's clock from the call into NCCL to the
    /// end; it includes the wait in the stream behind the rank's own work.
    CollectiveCpu,
    /// No `coll_timing_source` (the v4.0 plugin of NVIDIA's basic example).
    Unstated,
}

/// One collective as the trace format has it, before the sensor names
/// its node and job.
#[derive(Debug, Clone, PartialEq)]
pub struct Collective {
    pub comm: Comm,
    pub timing: Timing,
    /// `header.rank`: the rank within the communicator.
    pub rank: u32,
    /// `coll_perf.coll` in lower case (`allreduce`, `reducescatter`).
    pub op: Name,
    /// `coll_perf.coll_sn`: NCCL's sequence number of the collective on
    /// its communicator, the same on all ranks.
    pub seq: u64,
    /// Bytes as the trace format counts them (`mod.rs`).
    pub bytes: u64,
    /// When the collective ended on this rank, Unix seconds.
    pub ts: f64,
    /// `ts` less the execution time, Unix seconds.
    pub arrive: f64,
    /// `coll_perf.coll_exec_time_us`, microseconds.
    pub dur_us: f64,
}

impl Collective {
    /// The trace format's record, on the sensor's `node` for `job`.
    pub fn into_record(self, node: &Name, job: &Name) -> CollectiveRecord {
        CollectiveRecord {
            ts: self.ts,
            node: node.clone(),
            job: job.clone(),
            rank: self.rank,
            op: self.op,
            seq: self.seq,
            bytes: self.bytes,
            arrive: self.arrive,
            dur_us: self.dur_us,
        }
    }
}

/// What one record is.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Collective(Collective),
    /// A point-to-point operation (`p2p_perf`): not a collective; skipped.
    P2p,
}

#[derive(Deserialize)]
struct Line {
    header: Header,
    metadata: Metadata,
    #[serde(default)]
    coll_perf: Option<CollPerf>,
    #[serde(default)]
    p2p_perf: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Header {
    id: String,
    #[serde(default)]
    comm_name: Option<String>,
    rank: i64,
    n_ranks: i64,
    nnodes: u64,
}

#[derive(Deserialize)]
struct Metadata {
    dump_timestamp_us: u64,
}

#[derive(Deserialize)]
struct CollPerf {
    coll: String,
    coll_sn: u64,
    coll_msg_size_bytes: u64,
    coll_exec_time_us: u64,
    #[serde(default)]
    coll_timing_source: Option<String>,
    #[serde(default)]
    event_trace_ts: Option<EventTraceTs>,
}

#[derive(Deserialize)]
struct EventTraceTs {
    #[serde(default)]
    kernel_events: Vec<KernelTs>,
}

#[derive(Deserialize)]
struct KernelTs {
    #[serde(default)]
    kernel_stop_ts: u64,
}

/// Parses one record (a line, or an indented object) and checks every
/// field it uses; the error says which field and why.
pub fn parse(text: &str) -> Result<Entry, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| format!("bad JSON: {e}"))?;
    let h = line.header;
    if h.id.is_empty() || h.id.len() > COMM_ID_LEN_MAX {
        return Err(format!(
            "header.id is {} bytes, not 1..={COMM_ID_LEN_MAX}",
            h.id.len()
        ));
    }
    if h.comm_name
        .as_ref()
        .is_some_and(|n| n.len() > COMM_ID_LEN_MAX)
    {
        return Err(format!(
            "header.comm_name is longer than {COMM_ID_LEN_MAX} bytes"
        ));
    }
    if !(1..=COMM_RANKS_MAX as i64).contains(&h.n_ranks) {
        return Err(format!(
            "header.n_ranks = {} is not in 1..={COMM_RANKS_MAX}",
            h.n_ranks
        ));
    }
    if !(0..h.n_ranks).contains(&h.rank) {
        return Err(format!(
            "header.rank = {} is not in 0..{} (n_ranks)",
            h.rank, h.n_ranks
        ));
    }
    let comm = Comm {
        id: h.id,
        name: h.comm_name,
        n_ranks: h.n_ranks as u32,
        nnodes: h.nnodes,
    };
    let dumped = seconds(
        line.metadata.dump_timestamp_us,
        "metadata.dump_timestamp_us",
    )?;
    let Some(c) = line.coll_perf else {
        return match line.p2p_perf {
            Some(_) => Ok(Entry::P2p),
            None => Err("neither coll_perf nor p2p_perf".into()),
        };
    };
    let op = c.coll.to_ascii_lowercase();
    if op.is_empty() || op.len() > OP_LEN_MAX || !op.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!(
            "coll_perf.coll {:?} is not a collective's name",
            c.coll
        ));
    }
    if c.coll_exec_time_us > EXEC_TIME_MAX_US {
        return Err(format!(
            "coll_perf.coll_exec_time_us = {} is beyond {EXEC_TIME_MAX_US}",
            c.coll_exec_time_us
        ));
    }
    let timing = match c.coll_timing_source.as_deref() {
        None => Timing::Unstated,
        Some("kernel_gpu") => Timing::KernelGpu,
        Some("kernel_cpu") => Timing::KernelCpu,
        Some("collective_cpu") => Timing::CollectiveCpu,
        Some(other) => {
            return Err(format!(
                "coll_perf.coll_timing_source {other:?} is none of kernel_gpu, kernel_cpu, collective_cpu"
            ))
        }
    };
    // The end: the latest kernel stop the profiler saw (verbose records),
    // else the moment the record was written, at most one dump interval
    // after the collective ended.
    let kernels = c
        .event_trace_ts
        .map(|t| t.kernel_events)
        .unwrap_or_default();
    if kernels.len() > CHANNELS_MAX {
        return Err(format!(
            "{} kernel events, more than {CHANNELS_MAX} channels",
            kernels.len()
        ));
    }
    let stop = kernels.iter().map(|k| k.kernel_stop_ts).max().unwrap_or(0);
    let ts = if stop > 0 {
        let ts = seconds(
            stop,
            "coll_perf.event_trace_ts.kernel_events.kernel_stop_ts",
        )?;
        if ts > dumped + 1.0 {
            return Err(format!(
                "kernel_stop_ts {stop} is after the record was written ({})",
                line.metadata.dump_timestamp_us
            ));
        }
        ts
    } else {
        dumped
    };
    let dur_us = c.coll_exec_time_us as f64;
    let per_rank = matches!(op.as_str(), "allgather" | "allgatherv" | "reducescatter");
    let bytes = if per_rank {
        c.coll_msg_size_bytes
            .saturating_mul(u64::from(comm.n_ranks))
    } else {
        c.coll_msg_size_bytes
    };
    Ok(Entry::Collective(Collective {
        rank: h.rank as u32,
        comm,
        timing,
        op: Name::from(op),
        seq: c.coll_sn,
        bytes,
        ts,
        arrive: ts - dur_us / 1e6,
        dur_us,
    }))
}

/// Microseconds since the Unix epoch as seconds, checked to be a
/// plausible time (`trace_line::TS_MIN..=TS_MAX`).
fn seconds(us: u64, field: &str) -> Result<f64, String> {
    let s = us as f64 / 1e6;
    if (TS_MIN..=TS_MAX).contains(&s) {
        Ok(s)
    } else {
        Err(format!(
            "{field} = {us} is not a plausible Unix time in microseconds"
        ))
    }
}
