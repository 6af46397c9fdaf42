//! The simulation loop: one second of true time at a time, every job's steps,
//! every node's scrape and the job announcements, handed to the writer.

use crate::collectives::JobSim;
use crate::plan::Plan;
use crate::rng::{stream, streams};
use crate::signals::NodeSim;
use crate::vllm::ServerSim;
use crate::writer::{Out, Stats, Writer};
use keel_model::{JobState, Record};
use std::io::{self, Write};

/// Discovery re-announces running jobs this often.
const ANNOUNCE_EVERY_S: f64 = 30.0;

pub fn run(plan: &Plan, seed: u64, trace: &mut dyn Write) -> io::Result<Stats> {
    let c = &plan.cluster;
    let mut out = Out::new(stream(seed, streams::OUT), plan.noise.clone());
    let mut writer = Writer::new(trace, stream(seed, streams::WRITER), plan.noise.malformed);
    let mut jobs: Vec<JobSim> = (0..c.jobs.len())
        .map(|j| JobSim::new(plan, j, seed))
        .collect();
    let mut nodes: Vec<NodeSim> = (0..c.nodes.len())
        .map(|n| NodeSim::new(plan, n, seed))
        .collect();
    let mut servers: Vec<ServerSim> = (0..c.jobs.len())
        .filter_map(|j| ServerSim::new(plan, j, seed))
        .collect();
    let mut requests: Vec<crate::serving::RequestSim> = (0..c.jobs.len())
        .filter(|_| plan.serving)
        .filter_map(|j| crate::serving::RequestSim::new(plan, j, seed))
        .collect();
    let mut announce: Vec<f64> = c.jobs.iter().map(|j| j.start).collect();
    let mut ended = vec![false; c.jobs.len()];
    let windows = c.duration.ceil() as usize;
    for w in 0..windows {
        let a = c.ts0 + w as f64;
        let b = (a + 1.0).min(c.end());
        for (j, job) in c.jobs.iter().enumerate() {
            while announce[j] < b && announce[j] < job.end_time() {
                out.record(&Record::Job(Box::new(job.record(
                    c,
                    announce[j],
                    JobState::Running,
                ))));
                announce[j] += ANNOUNCE_EVERY_S;
            }
            if let Some((te, state)) = job.end {
                if !ended[j] && te < b {
                    out.record(&Record::Job(Box::new(job.record(c, te, state))));
                    ended[j] = true;
                }
            }
        }
        for js in &mut jobs {
            js.advance(plan, b, &mut out);
        }
        for (n, ns) in nodes.iter_mut().enumerate() {
            let t = a + c.nodes[n].phase;
            if t < b {
                ns.sample(plan, t, &mut servers, &mut out);
            }
        }
        for r in &mut requests {
            r.advance(plan, a, b, &mut out);
        }
        writer.push(out.lines.drain(..));
        // Nothing still to come can be shipped before this.
        writer.flush_below(b - c.clock_slack(b))?;
    }
    let mut stats = writer.finish()?;
    stats.non_finite = out.stats.non_finite;
    stats.unknown = out.stats.unknown;
    stats.late = out.stats.late;
    Ok(stats)
}
