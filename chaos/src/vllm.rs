//! A vLLM server's scheduler gauges: KV-cache usage, waiting and running
//! requests, preemptions.

use crate::inject::{server_fx, ServerFx};
use crate::plan::Plan;
use crate::rng::{round_dec, stream, streams, Rng8, RngExt};
use crate::writer::Out;
use keel_model::{MetricLabels, MetricName as M, Name};

pub struct ServerSim {
    pub job: usize,
    pub node: usize,
    model: Name,
    rng: Rng8,
    kv: f64,
    kv_mu: f64,
    waiting: f64,
    running: f64,
    run_mu: f64,
    preempt: f64,
}

impl ServerSim {
    /// `None` when the job is not a server.
    pub fn new(plan: &Plan, job: usize, seed: u64) -> Option<ServerSim> {
        let model = plan.cluster.jobs[job].model.clone()?;
        let mut rng = stream(seed, streams::SERVER + job as u64);
        let kv_mu = rng.uni(0.42, 0.68);
        let run_mu = rng.uni(18.0, 50.0);
        Some(ServerSim {
            job,
            node: plan.cluster.server_node(job),
            model,
            kv: kv_mu,
            kv_mu,
            waiting: 0.0,
            running: run_mu,
            run_mu,
            preempt: rng.int(0, 400) as f64,
            rng,
        })
    }

    fn step(&mut self, plan: &Plan, t: f64) {
        let rng = &mut self.rng;
        if plan.serving {
            self.preempt += crate::serving::preempt_burst(plan, self.job, t - 1.0, t);
            if let Some((rate, running)) = crate::serving::thrashing(plan, self.job, t) {
                // Requests evicted and readmitted over and over: the cache
                // pinned, a short queue, the running set churning.
                self.kv = (rng.uni(0.97, 1.0) + rng.normal(0.0, 0.003)).clamp(0.96, 1.0);
                self.waiting = rng.int(0, 4) as f64;
                self.running = (running + rng.normal(0.0, 2.0)).clamp(10.0, 60.0);
                self.preempt += rng.poisson(rate);
                return;
            }
        }
        match server_fx(plan, self.job, t) {
            ServerFx::Normal => {
                if self.kv > 0.82 {
                    // Recovering from saturation: finished requests free blocks fast.
                    self.kv += 0.3 * (self.kv_mu - self.kv) + rng.normal(0.0, 0.01);
                } else {
                    self.kv = (self.kv + 0.1 * (self.kv_mu - self.kv) + rng.normal(0.0, 0.02))
                        .clamp(0.3, 0.8);
                }
                self.waiting = if self.waiting > 3.0 {
                    (self.waiting * rng.uni(0.4, 0.6)).floor()
                } else {
                    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 3.0][rng.int(0, 9) as usize]
                };
                if self.running < 10.0 {
                    self.running = 10.0 + 0.5 * (self.run_mu - 10.0);
                }
                self.running =
                    (self.running + 0.1 * (self.run_mu - self.running) + rng.normal(0.0, 2.0))
                        .clamp(10.0, 60.0);
                self.preempt += rng.poisson(0.01);
                if plan.serving {
                    let q = crate::serving::backlog(plan, self.job, t);
                    if q > 0.0 {
                        self.waiting = (q * rng.uni(0.95, 1.05)).round();
                    }
                }
            }
            ServerFx::Saturated {
                elapsed,
                running,
                lead_s,
                waiting_base,
                ..
            } if elapsed < 0.0 => {
                // Climbing: the cache fills towards (not yet at) full while
                // the queue builds.
                let done = (1.0 + elapsed / lead_s.max(1e-3)).clamp(0.0, 1.0);
                let target = self.kv_mu + (0.92 - self.kv_mu) * done;
                self.kv += 0.5 * (target - self.kv) + rng.normal(0.0, 0.003);
                self.kv = self.kv.min(0.93);
                self.waiting = (waiting_base * done * rng.uni(0.9, 1.1)).round();
                self.running = (running + rng.normal(0.0, 2.0)).clamp(30.0, 60.0);
            }
            ServerFx::Saturated {
                elapsed,
                len,
                waiting_peak,
                running,
                usage,
                waiting_base,
                ..
            } => {
                // Pinned from the onset.
                self.kv = (usage + rng.normal(0.0, 0.003)).clamp(0.97, 1.0);
                self.waiting = (waiting_base
                    + (waiting_peak - waiting_base) * (elapsed / len) * rng.uni(0.9, 1.1)
                    + rng.uni(0.0, 2.0))
                .round();
                self.running = (running + rng.normal(0.0, 2.0)).clamp(30.0, 60.0);
                let rate = rng.uni(0.5, 3.0);
                self.preempt += rng.poisson(rate);
            }
            ServerFx::Stalled { waiting_rate } => {
                self.kv = rng.uni(0.98, 1.0);
                self.running = 0.0;
                self.waiting = self.waiting.max(1.0) + rng.poisson(waiting_rate);
            }
        }
    }

    /// Steps the scheduler to true time `t` and writes its gauges.
    pub fn sample(&mut self, plan: &Plan, t: f64, ts: f64, node: &Name, out: &mut Out) {
        let job = &plan.cluster.jobs[self.job];
        if t < job.first_step() || t >= job.end_time() {
            return;
        }
        self.step(plan, t);
        let labels = || MetricLabels {
            model_name: Some(self.model.clone()),
            ..Default::default()
        };
        let kv = round_dec(self.kv, 4);
        if plan.old_kv_name {
            out.metric_named(ts, node, "vllm:gpu_cache_usage_perc", labels(), kv);
        } else {
            out.metric(ts, node, M::VllmKvCacheUsage, labels(), kv);
        }
        out.metric(ts, node, M::VllmRequestsWaiting, labels(), self.waiting);
        out.metric(
            ts,
            node,
            M::VllmRequestsRunning,
            labels(),
            self.running.round(),
        );
        out.metric(ts, node, M::VllmPreemptions, labels(), self.preempt);
    }
}
