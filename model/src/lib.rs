//! The shared vocabulary of keel.
//!
//! Every other crate speaks in these types: the trace records a sensor sees
//! (`record`), the metric names real exporters use (`metric`), what keel
//! concludes (`finding`), what really happened in a scored trace (`label`) and
//! what keel may do about it (`action`). Wire names are exactly the snake_case
//! names of `spec/taxonomy.md` and `spec/trace-format.md`; this crate depends on
//! serde alone so that any process can share it.

pub mod action;
pub mod envelope;
pub mod finding;
pub mod label;
pub mod metric;
pub mod record;

pub use action::{Action, ActionStatus};
pub use envelope::{
    Ack, Command, Envelope, Message, Query, QueryReply, RaftBytes, RaftChunk, Role, Summary,
    TelemetryBatch, WIRE_VERSION,
};
pub use finding::{Basis, Cause, Clock, Finding, FindingKind, Locus, LocusKind, Related, Severity};
pub use label::Label;
pub use metric::{
    slurm_job_of_cgroup, Dir, MetricKind, MetricLabels, MetricName, LABEL_VALUE_MAX, NAME_LEN_MAX,
};
pub use record::{
    CollectiveRecord, JobRecord, JobState, MetricSample, Record, RequestPhase, RequestRecord,
};

/// A short string that stays inline for typical host names, job ids and
/// device names, so that a record costs no heap allocation on the hot path.
pub type Name = compact_str::CompactString;

/// Seconds since the Unix epoch, as traces carry it (the producing node's clock).
pub type Timestamp = f64;
