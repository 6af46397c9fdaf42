//! `collective_hang`: a rank stops arriving at the job's collectives while
//! its peers wait inside one. No collective record can arrive until the
//! wait ends (a rank reports a collective when it leaves it), so the hang
//! is concluded from the silence itself, and the rank is named by its GPU:
//! peers waiting in an NCCL collective keep their GPUs busy (the kernel
//! spins on the flags the late rank has not written), while the stopped
//! rank's GPU runs nothing. What NCCL itself reports only when its watchdog
//! times out, minutes later.
//!
//! An idle inference server is silent too, but all its GPUs are idle; a job
//! whose every rank is busy and silent is not told apart from a very long
//! collective, and nothing is concluded.

use crate::config::HangConfig;
use crate::episode::Reported;
use crate::signals::{SignalStore, Sub};
use crate::topology::Topology;
use keel_model::{Cause, Finding, FindingKind, JobState, MetricName, Name, Severity, Timestamp};
use rustc_hash::FxHashMap as HashMap;

#[derive(Debug, Default)]
struct JobSilence {
    /// When a rank last left a collective (or a window of them ended).
    last: Option<Timestamp>,
    /// The usual time between those, averaged (s).
    interval: Option<f64>,
    /// Arrivals seen: the interval is trusted after a few.
    arrivals: u32,
    /// The findings of the hang now open, by rank.
    open: Vec<(u32, Reported)>,
}

#[derive(Debug)]
pub struct HangDetector {
    cfg: HangConfig,
    jobs: HashMap<Name, JobSilence>,
    last_check: Timestamp,
}

impl HangDetector {
    pub fn new(cfg: HangConfig) -> Self {
        HangDetector {
            cfg,
            jobs: HashMap::default(),
            last_check: f64::NEG_INFINITY,
        }
    }

    /// A rank of `job` left a collective (or a window of them ended) at
    /// `ts`: an open hang of the job clears.
    pub fn arrived(&mut self, job: &Name, ts: Timestamp, cleared: &mut Vec<Finding>) {
        if !ts.is_finite() {
            return;
        }
        // Looked up once: this runs for every collective record.
        let full = self.jobs.len() >= crate::edge::JOBS_MAX;
        let j = match self.jobs.get_mut(job) {
            Some(j) => j,
            None if full => return,
            None => self.jobs.entry(job.clone()).or_default(),
        };
        if let Some(last) = j.last {
            let gap = ts - last;
            if gap > 0.0 {
                j.interval = Some(match j.interval {
                    Some(i) => i + (gap - i) * 0.05,
                    None => gap,
                });
            }
        }
        j.last = Some(j.last.map_or(ts, |l| l.max(ts)));
        j.arrivals = j.arrivals.saturating_add(1);
        for (_, mut r) in j.open.drain(..) {
            cleared.extend(r.clear(ts));
        }
    }

    /// Forgets a job that ended; its open hangs clear.
    pub fn end_job(&mut self, job: &Name, now: Timestamp, cleared: &mut Vec<Finding>) {
        if let Some(mut j) = self.jobs.remove(job) {
            for (_, r) in j.open.iter_mut() {
                cleared.extend(r.clear(now));
            }
        }
    }

    /// Looks for silent jobs at `now` (at most every `check_every_s`).
    pub fn check(
        &mut self,
        now: Timestamp,
        topology: &Topology,
        signals: &SignalStore,
        out: &mut Vec<Finding>,
    ) {
        if now - self.last_check < self.cfg.check_every_s {
            return;
        }
        self.last_check = now;
        let cfg = &self.cfg;
        for (name, j) in self.jobs.iter_mut() {
            let (Some(last), Some(interval)) = (j.last, j.interval) else {
                continue;
            };
            let silent = now - last;
            let after = cfg.min_silence_s.max(cfg.silence_intervals * interval);
            if !j.open.is_empty() || j.arrivals < cfg.min_arrivals || silent < after {
                continue;
            }
            let Some(job) = topology.job(name) else {
                continue;
            };
            if job.record.state != JobState::Running {
                continue;
            }
            // Each rank's GPU, as read during the silence.
            let mut busy = Vec::new();
            let mut idle = Vec::new();
            let mut ranks: Vec<_> = job.ranks.iter().collect();
            ranks.sort_by_key(|(r, _)| **r);
            for (&rank, p) in ranks {
                let Some(gpu) = p.gpu else { continue };
                let util = signals
                    .get(&p.node, MetricName::GpuUtil, &Sub::Gpu(gpu))
                    .and_then(|s| s.latest())
                    .filter(|(ts, _)| *ts > last);
                match util {
                    Some((_, u)) if u >= cfg.busy_util => busy.push((rank, p, u)),
                    Some((_, u)) if u <= cfg.idle_util => idle.push((rank, p, u)),
                    _ => {}
                }
            }
            if busy.is_empty() || idle.is_empty() {
                continue;
            }
            let waiting = busy
                .iter()
                .map(|(r, _, u)| format!("rank {r} {u:.0}%"))
                .collect::<Vec<_>>()
                .join(", ");
            for (rank, p, u) in idle {
                let f = Finding {
                    ts: now,
                    kind: FindingKind::CollectiveHang,
                    cause: Cause::Host,
                    severity: Severity::Critical,
                    confidence: 0.8,
                    job: Some(name.clone()),
                    node: Some(p.node.clone()),
                    rank: Some(rank),
                    gpu: p.gpu,
                    device: None,
                    evidence: vec![
                        format!(
                            "no rank of job {name} has left a collective for {silent:.1} s (usually every {:.0} ms)",
                            interval * 1000.0
                        ),
                        format!(
                            "{} gpu {} of rank {rank} runs nothing ({u:.0}% utilisation) while its peers' GPUs spin in the collective ({waiting})",
                            p.node,
                            p.gpu.unwrap_or_default()
                        ),
                        format!("rank {rank}'s process has stopped launching work: the job waits on it"),
                    ],
                    basis: None,
                    gpu_instance: None,
                    related: Vec::new(),
                };
                let mut r = Reported::default();
                r.set(&f);
                j.open.push((rank, r));
                out.push(f);
            }
        }
    }
}
