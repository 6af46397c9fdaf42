//! Who sent a push datagram, and what that sender may report, sans-IO.
//!
//! On a Unix socket the kernel tells the endpoint the sending process
//! (`SCM_CREDENTIALS`), and `crate::proc_job` tells which Slurm job that
//! process belongs to. A record that names a job (a collective, a job
//! record, a request) is taken only from a process of that job; a process
//! of no job may report one only when the endpoint allows it
//! (`allow_unattributed`). Readings name no job and are taken from any
//! local process (the sensor still keeps only those of its own node).
//!
//! [`admit`] is the whole rule; [`PeerCache`] remembers each pid's job for
//! a short while, so that `/proc` is read once per sender, not once per
//! datagram. Time is an argument.

use keel_model::Record;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

/// Who may send to a push endpoint, beyond its address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushOptions {
    /// The group given the Unix socket file (which is made 0660), so that
    /// its members' processes may send; binding fails, naming it, when the
    /// system knows no such group. Default: the sensor's own group. Unix
    /// sockets only.
    pub group: Option<String>,
    /// Whether a process of no Slurm job (or one whose job cannot be told:
    /// it has exited, or its `/proc` entry is unreadable) may push records
    /// that name a job. Default false: they are refused, counted
    /// `unattributed`. Unix sockets only (UDP tells no sender).
    pub allow_unattributed: bool,
}

/// Senders remembered at once; a new one beyond that evicts the oldest
/// (counted in [`PeerCache::evicted`]), which is then read again from
/// `/proc` when it next sends.
pub const PEER_CACHE_MAX: usize = 4096;

/// How long a pid's job is trusted before `/proc` is read again. A pid
/// reused by another process within it would be taken for the first one;
/// short, so that the window is small, and long enough that a rank sending
/// thousands of datagrams a second costs one read per interval.
pub const PEER_TTL: Duration = Duration::from_secs(2);

/// Which Slurm job a sending process belongs to, as far as the endpoint
/// could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribution {
    /// Its cgroup (or, failing that, its environment) names this job.
    Job(u64),
    /// It runs outside every Slurm job.
    NoJob,
    /// Unknown: the datagram came without credentials, the process has
    /// exited, or its `/proc` entry could not be read.
    Unknown,
}

impl Attribution {
    /// The job the verdict goes by: none for a process of no job and for
    /// one whose job is unknown alike.
    pub fn job(self) -> Option<u64> {
        match self {
            Attribution::Job(j) => Some(j),
            Attribution::NoJob | Attribution::Unknown => None,
        }
    }
}

impl fmt::Display for Attribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attribution::Job(j) => write!(f, "job {j}"),
            Attribution::NoJob => f.write_str("no Slurm job"),
            Attribution::Unknown => f.write_str("an unknown job (no credentials, or gone)"),
        }
    }
}

/// Why a record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// It names a job other than its sender's.
    ForeignJob,
    /// It names a job, and its sender belongs to none (or to one unknown)
    /// while `allow_unattributed` is off.
    Unattributed,
}

impl Refusal {
    /// The name counters and logs use.
    pub fn wire(self) -> &'static str {
        match self {
            Refusal::ForeignJob => "foreign_job",
            Refusal::Unattributed => "unattributed",
        }
    }
}

/// What becomes of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Take,
    Refuse(Refusal),
}

/// The job a record speaks for, if any.
pub fn claimed_job(record: &Record) -> Option<&str> {
    match record {
        Record::Collective(c) => Some(c.job.as_str()),
        Record::Job(j) => Some(j.job.as_str()),
        Record::Request(r) => r.job.as_deref(),
        Record::Metric(_) => None,
    }
}

/// Whether a process of `sender_job` may push `record`. A record naming no
/// job is taken from anyone; one naming a job is taken from a process of
/// that job (the ids compared as Slurm prints them: decimal, no leading
/// zero), or from a process of no job when `allow_unattributed`.
pub fn admit(sender_job: Option<u64>, allow_unattributed: bool, record: &Record) -> Verdict {
    let Some(claimed) = claimed_job(record) else {
        return Verdict::Take;
    };
    match sender_job {
        Some(j) if claimed == j.to_string() => Verdict::Take,
        Some(_) => Verdict::Refuse(Refusal::ForeignJob),
        None if allow_unattributed => Verdict::Take,
        None => Verdict::Refuse(Refusal::Unattributed),
    }
}

/// One remembered sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub job: Attribution,
    /// When its job was read.
    pub read_at: Instant,
    /// Whether a refusal of its records was logged already (one line per
    /// sender, then only the endpoint's periodic summary).
    pub logged: bool,
}

/// pid → its job, bounded by [`PEER_CACHE_MAX`], each entry good for
/// [`PEER_TTL`].
#[derive(Debug, Default)]
pub struct PeerCache {
    peers: HashMap<u32, Peer>,
    /// pids in the order they were (re)read; an entry whose `read_at`
    /// differs from the map's is stale and skipped.
    order: VecDeque<(u32, Instant)>,
    /// Senders forgotten early to keep the bound.
    pub evicted: u64,
}

impl PeerCache {
    /// The sender `pid`, when its job was read less than [`PEER_TTL`] ago.
    pub fn get(&mut self, pid: u32, now: Instant) -> Option<&mut Peer> {
        self.peers
            .get_mut(&pid)
            .filter(|p| now.saturating_duration_since(p.read_at) < PEER_TTL)
    }

    /// Remembers `pid`'s job, read at `now`; a sender already logged stays
    /// logged while its job is the same.
    pub fn insert(&mut self, pid: u32, job: Attribution, now: Instant) -> &mut Peer {
        let logged = self
            .peers
            .get(&pid)
            .is_some_and(|p| p.logged && p.job == job);
        if !self.peers.contains_key(&pid) {
            while self.peers.len() >= PEER_CACHE_MAX {
                let Some((old, at)) = self.order.pop_front() else {
                    break;
                };
                if self.peers.get(&old).is_some_and(|p| p.read_at == at) {
                    self.peers.remove(&old);
                    if now.saturating_duration_since(at) < PEER_TTL {
                        self.evicted += 1;
                    }
                }
            }
        }
        // Stale order entries of re-read pids are dropped as they reach the
        // front; bound the queue too, should one pid be re-read forever.
        if self.order.len() >= 2 * PEER_CACHE_MAX {
            let peers = &self.peers;
            self.order
                .retain(|(pid, at)| peers.get(pid).is_some_and(|p| p.read_at == *at));
        }
        self.order.push_back((pid, now));
        let peer = Peer {
            job,
            read_at: now,
            logged,
        };
        self.peers.insert(pid, peer);
        self.peers.get_mut(&pid).expect("just inserted")
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_model::{CollectiveRecord, JobRecord, MetricName, MetricSample, Name};

    fn collective(job: &str) -> Record {
        Record::Collective(CollectiveRecord {
            ts: 1.0,
            node: Name::from("n1"),
            job: Name::from(job),
            rank: 0,
            op: Name::from("allreduce"),
            seq: 1,
            bytes: 1,
            arrive: 1.0,
            dur_us: 1.0,
        })
    }

    fn metric() -> Record {
        Record::Metric(MetricSample {
            ts: 1.0,
            node: Name::from("n1"),
            name: MetricName::GpuUtil,
            labels: Default::default(),
            value: 1.0,
        })
    }

    fn job_record(job: &str) -> Record {
        let j: JobRecord = serde_json::from_value(serde_json::json!({
            "ts": 1.0, "job": job, "state": "RUNNING"
        }))
        .unwrap();
        Record::Job(Box::new(j))
    }

    const REFUSE_FOREIGN: Verdict = Verdict::Refuse(Refusal::ForeignJob);
    const REFUSE_UNATTRIBUTED: Verdict = Verdict::Refuse(Refusal::Unattributed);

    #[test]
    fn a_process_reports_collectives_of_its_own_job_only() {
        assert_eq!(admit(Some(42), false, &collective("42")), Verdict::Take);
        assert_eq!(admit(Some(42), false, &collective("43")), REFUSE_FOREIGN);
        assert_eq!(admit(Some(42), true, &collective("43")), REFUSE_FOREIGN);
        // Compared as Slurm prints the id.
        for other in ["042", "+42", "42 ", "", "job-42"] {
            assert_eq!(
                admit(Some(42), false, &collective(other)),
                REFUSE_FOREIGN,
                "{other:?}"
            );
        }
    }

    #[test]
    fn a_process_of_no_job_reports_a_job_only_when_allowed() {
        assert_eq!(admit(None, false, &collective("42")), REFUSE_UNATTRIBUTED);
        assert_eq!(admit(None, true, &collective("42")), Verdict::Take);
        assert_eq!(admit(None, false, &job_record("42")), REFUSE_UNATTRIBUTED);
    }

    #[test]
    fn readings_come_from_any_local_process() {
        for sender in [Some(42), None] {
            for allow in [false, true] {
                assert_eq!(admit(sender, allow, &metric()), Verdict::Take);
            }
        }
    }

    #[test]
    fn a_job_record_is_held_to_the_same_rule_as_a_collective() {
        assert_eq!(admit(Some(7), false, &job_record("7")), Verdict::Take);
        assert_eq!(admit(Some(7), false, &job_record("8")), REFUSE_FOREIGN);
    }

    #[test]
    fn refusals_have_the_names_counters_use() {
        assert_eq!(Refusal::ForeignJob.wire(), "foreign_job");
        assert_eq!(Refusal::Unattributed.wire(), "unattributed");
        assert_eq!(Attribution::Unknown.job(), None);
        assert_eq!(Attribution::NoJob.job(), None);
    }

    #[test]
    fn a_cached_job_expires_after_the_ttl() {
        let t = Instant::now();
        let mut c = PeerCache::default();
        c.insert(10, Attribution::Job(42), t);
        assert_eq!(
            c.get(10, t + PEER_TTL / 2).unwrap().job,
            Attribution::Job(42)
        );
        assert!(
            c.get(10, t + PEER_TTL).is_none(),
            "read again after the TTL"
        );
        assert!(c.get(11, t).is_none());
    }

    #[test]
    fn the_cache_is_bounded_and_counts_what_it_evicts() {
        let t = Instant::now();
        let mut c = PeerCache::default();
        for pid in 0..PEER_CACHE_MAX as u32 {
            c.insert(pid, Attribution::NoJob, t);
        }
        assert_eq!((c.len(), c.evicted), (PEER_CACHE_MAX, 0));
        c.insert(1_000_000, Attribution::Job(1), t);
        assert_eq!((c.len(), c.evicted), (PEER_CACHE_MAX, 1));
        assert!(c.get(0, t).is_none(), "the oldest went first");
        assert!(c.get(1, t).is_some());
        // Expired entries make room without counting as evictions.
        let later = t + PEER_TTL;
        c.insert(1_000_001, Attribution::NoJob, later);
        assert_eq!(c.evicted, 1);
        // Re-reading one pid over and over keeps the queue bounded.
        for i in 0..(3 * PEER_CACHE_MAX as u64) {
            c.insert(5, Attribution::NoJob, later + Duration::from_nanos(i));
        }
        assert!(c.order.len() <= 2 * PEER_CACHE_MAX, "{}", c.order.len());
        assert_eq!(c.len(), PEER_CACHE_MAX);
    }

    #[test]
    fn a_sender_stays_logged_while_its_job_is_the_same() {
        let t = Instant::now();
        let mut c = PeerCache::default();
        c.insert(10, Attribution::Job(42), t).logged = true;
        assert!(c.insert(10, Attribution::Job(42), t + PEER_TTL).logged);
        assert!(!c.insert(10, Attribution::Job(43), t + PEER_TTL).logged);
    }
}
