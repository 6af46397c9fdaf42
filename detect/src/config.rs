//! Every threshold and window the detectors use, with the reason for its value.
//! Operators may override them; the defaults are what the evaluation in
//! `docs/detection.md` was scored with.

/// Thresholds and windows for all detectors.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub straggler: StragglerConfig,
    pub squatter: SquatterConfig,
    pub engine: EngineConfig,
    pub network: NetworkConfig,
    pub hang: HangConfig,
    /// `pcie_saturation`, `host_cpu_bottleneck`, `intra_node_gpu_skew`.
    pub bus: crate::bus::BusConfig,
    pub serving: crate::serving::ServingConfig,
    pub fabric: crate::fabric::FabricConfig,
    /// `noisy_neighbor`.
    pub neighbor: crate::neighbor::NeighborConfig,
}

/// When a job's silence is a `collective_hang` (`hang.rs`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HangConfig {
    /// Silence (s) that may be a hang, at the least: a few 1 Hz GPU
    /// readings must fall inside it to tell the waiting ranks from the
    /// stopped one.
    pub min_silence_s: f64,
    /// Silence as a multiple of the job's usual time between collectives
    /// (or windows of them), whichever of the two is longer.
    pub silence_intervals: f64,
    /// Arrivals the usual interval is learned from before any silence is
    /// judged.
    pub min_arrivals: u32,
    /// GPU utilisation (%) of a rank waiting in a collective: NCCL's kernel
    /// spins, so the GPU reads fully busy.
    pub busy_util: f64,
    /// GPU utilisation (%) of a rank that launches nothing.
    pub idle_util: f64,
    /// How often (s of trace time) silences are looked for.
    pub check_every_s: f64,
}

impl Default for HangConfig {
    fn default() -> Self {
        HangConfig {
            min_silence_s: 3.0,
            silence_intervals: 20.0,
            min_arrivals: 16,
            busy_util: 80.0,
            idle_util: 10.0,
            check_every_s: 0.5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StragglerConfig {
    /// Collectives in a rank's lateness window. 16 lets the median ignore up to
    /// 7 one-off spikes and still flips within half a second at 30 Hz steps.
    pub window: usize,
    /// A window this full is enough to judge (a new job, or a rank just seen).
    pub min_window: usize,
    /// Lateness beyond the rank's habit, as a share of the step period, that
    /// makes a straggler: half the 5% slowdown operators care about, and
    /// above healthy noise once the habit is taken off (false positives
    /// appear on the evaluation corpus at 1.5%). The real H200 trace's
    /// CPU-starved rank shows ~3.6%.
    pub late_share: f64,
    /// Weight of each healthy collective in a rank's habitual lateness (an
    /// exponential average over ~500 collectives: tens of seconds).
    pub habit_weight: f64,
    /// The most habitual lateness forgiven, as a share of the step: enough
    /// for healthy asymmetry (seen up to ~2%), not enough to hide a rank
    /// that straggles from the start.
    pub habit_cap_share: f64,
    /// Floor on the lateness threshold: below ~0.2 ms, collective timing
    /// jitter alone moves the median.
    pub late_floor_us: f64,
    /// The threshold is also at least this many times the rank's healthy
    /// spread (median absolute deviation of its lateness around its habit,
    /// while the job is quiet): a window's median of healthy lateness stays
    /// within a few such deviations. On the real H200 trace (35 ms steps,
    /// spread ~0.4 ms) the 2.5% threshold stays what decides (0.8 ms
    /// against 0.875 ms: its CPU-starved rank is only ~1 ms late); on a busy
    /// host where lateness jitters by 2-3 ms (the chaos cluster on two
    /// cores, 150 ms steps) it lifts the threshold to 4-5.5 ms, above what
    /// healthy ranks' window medians reach there.
    pub noise_ratio: f64,
    /// The most the noise may raise the threshold to, as a share of the
    /// step: a 5% slowdown is what operators care about, however noisy.
    /// Also the threshold until a rank's spread is known (its first few
    /// seconds, the noisiest of a job).
    pub noise_cap_share: f64,
    /// Share of the window in which the rank must be the last to arrive: a
    /// straggler is late consistently, not now and then.
    pub last_share: f64,
    /// How long the condition must hold before it is concluded.
    pub confirm_s: f64,
    /// Entries whose median must also be past the threshold when the
    /// lateness is within `noise_cap_share` of the step; 0 (the default)
    /// judges it over `window` alone. For hosts whose ranks share too few
    /// cores: there jitter reaches a small lateness in bursts. On the chaos
    /// cluster (four ranks on two cores) healthy window medians stay at
    /// 1.5-2x the rank's spread for up to 15 collectives in a row, and a CI
    /// run concluded such a burst (4.95 ms, 3.3% of a 150 ms step), so
    /// `keel chaos run` sets 32: a fault's lateness lasts as long as the
    /// fault, and a burst cannot carry a 32-entry median. Off by default
    /// because on a GPU node's own cores the cost is larger than the burst:
    /// a small lateness needs 16 late collectives more, which on the
    /// PCIe case of `data/cases` (a 3% lateness on 97 ms steps) puts its
    /// finding 2.5 s after the onset over summaries instead of under 2 s,
    /// and the real H200 trace's CPU-starved rank (3% of its 35 ms step)
    /// 2.3 s after over single collectives instead of 1.4 s.
    pub weak_window: usize,
    /// The episode closes once the lateness stays below
    /// `clear_ratio * threshold` this long (hysteresis against flapping).
    pub clear_s: f64,
    pub clear_ratio: f64,
    /// How long attribution may wait after confirmation for telemetry (1 Hz
    /// exporters) to show the cause before it settles for its best guess.
    pub attribution_grace_s: f64,
    /// A collective still missing ranks this long after its first record is
    /// judged on the ranks that did report.
    pub incomplete_after_s: f64,
    /// Lateness above this share of the step makes the finding critical.
    pub critical_share: f64,
    /// How often (s of trace time) an open, reported straggler is looked at
    /// again: a new episode may begin under an open one (another cause on
    /// the same rank) and must not be swallowed by it.
    pub review_every_s: f64,
    /// The span (s) a review attributes over: the last few seconds, judged
    /// against what came before them, the open episode's own start
    /// included, so a cause that was already there does not stand out again.
    pub review_span_s: f64,
    /// A lateness this many times the one at the previous reviews is a new
    /// episode: a rank whose delay doubles within seconds has met another
    /// bottleneck, or a worse one, and is reported again.
    pub lateness_jump: f64,
    /// How long (s) after a report its lateness may still grow without a
    /// jump counting: the time a fault takes to take hold.
    pub review_settle_s: f64,
    /// How a concluded straggler is attributed to a cause.
    pub attribution: AttributionConfig,
}

impl StragglerConfig {
    /// The same judgement over sensors' window summaries instead of single
    /// collectives: each entry already is a median of a few collectives, so
    /// a shorter run of them is as steady, and the conclusion comes as soon
    /// after the onset as with single collectives. Attribution waits less
    /// for undecided evidence: over the corpus, 0.3 s keeps every cause
    /// right (`keel eval --corpus DIR --edge`) and brings the slowest
    /// straggler to 1.6 s, where 1.5 s let it reach 2.85 s; the detection
    /// itself takes long enough for a 1 Hz exporter to have reported.
    pub fn for_windows(&self) -> StragglerConfig {
        StragglerConfig {
            window: 9,
            min_window: 5,
            // Entries of two collectives: as many collectives.
            weak_window: self.weak_window / 2,
            incomplete_after_s: 1.0,
            attribution_grace_s: 0.3,
            ..self.clone()
        }
    }
}

impl Default for StragglerConfig {
    fn default() -> Self {
        StragglerConfig {
            window: 16,
            min_window: 8,
            late_share: 0.025,
            habit_weight: 1.0 / 512.0,
            habit_cap_share: 0.025,
            late_floor_us: 200.0,
            noise_ratio: 2.0,
            noise_cap_share: 0.05,
            last_share: 0.6,
            confirm_s: 0.4,
            weak_window: 0,
            clear_s: 3.0,
            clear_ratio: 0.5,
            attribution_grace_s: 1.5,
            incomplete_after_s: 2.0,
            critical_share: 0.2,
            review_every_s: 0.5,
            review_span_s: 2.0,
            lateness_jump: 2.0,
            review_settle_s: 5.0,
            attribution: AttributionConfig::default(),
        }
    }
}

/// Attribution judges every signal around a straggler three ways: against
/// what the hardware can carry (a link's capacity, a NIC's line rate),
/// against the rank's peers and against its own history before the onset.
/// The capacity bars come from queueing and from the PCIe protocol, not from
/// any one corpus; the relative bars say how far a signal must stand out.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttributionConfig {
    /// Share of a PCIe link's capacity (`dpu_pcie_link_util`, or measured
    /// throughput over generation x width) above which the bus has no room
    /// left. Two limits meet here: a link's payload tops out near 0.85-0.9
    /// of its raw rate (TLP headers, DLLPs and flow-control credits take the
    /// rest), and a server at utilisation rho queues each request for
    /// rho / (1 - rho) service times, 4x at 0.8 (M/M/1): the 4-5x longer
    /// doorbell gaps a saturated bus shows. Above it, slow doorbells are the
    /// bus's doing and count for `pcie`; below it they count for `host`.
    pub pcie_busy_share: f64,
    /// Share of a NIC's line rate (`dpu_nic_link_util`, or node-exporter's
    /// byte counters over `node_network_speed_bytes`) at which the link is
    /// the bottleneck: the same queueing argument, with the 10% that
    /// Ethernet and RoCE framing (preamble, gaps, headers) take from payload.
    pub nic_busy_share: f64,
    /// PCIe throughput (bytes/s) below which a rise is not judged: far above
    /// the tens of MB/s a healthy decode step moves, a small share of a
    /// Gen4/Gen5 link.
    pub pcie_bytes_floor: f64,
    /// How many times its peers' and its own earlier throughput a GPU's
    /// PCIe traffic must be to stand out as a cause on its own.
    pub pcie_bytes_ratio: f64,
    /// Link utilisation below this is not judged relative to peers (a
    /// lightly used link that doubles still has room).
    pub pcie_link_floor: f64,
    /// How many times its peers' and its own earlier utilisation the link
    /// must be to stand out.
    pub pcie_link_ratio: f64,
    /// Mean doorbell gap (us) below which launches are not judged slow: a
    /// busy GPU's runtime rings its doorbell every few tens of us.
    pub doorbell_floor_us: f64,
    /// How many times its peers' and its own earlier gap a doorbell gap must
    /// be to count (seed 000 Table 3b: "delayed doorbells").
    pub doorbell_ratio: f64,
    /// A family whose best reading scores at least this decides at once.
    pub decisive: f64,
    /// Below this every family counts as clean: the GPU is left, by
    /// elimination, when its own telemetry and its bus were seen; otherwise
    /// the cause is `unknown`.
    pub clean: f64,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            pcie_busy_share: 0.8,
            nic_busy_share: 0.9,
            pcie_bytes_floor: 0.5e9,
            pcie_bytes_ratio: 5.0,
            pcie_link_floor: 0.4,
            pcie_link_ratio: 3.0,
            doorbell_floor_us: 100.0,
            doorbell_ratio: 3.0,
            decisive: 0.5,
            clean: 0.3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SquatterConfig {
    /// Seed 001 Table 3: framebuffer pinned above 95%... (the bar when the
    /// evidence is an engine that died or hung under a running job, or an
    /// unknown holder)
    pub fb_used_share: f64,
    /// The bar when nothing should hold the GPU at all (its job ended, or
    /// Slurm gives it to no job), and for an idle reservation: 0.80. A
    /// crashed vLLM keeps what it preallocated (`gpu_memory_utilization`,
    /// 0.90 by default; real leaked GPUs show 93.6-94.6 % held), and engines
    /// are often configured lower; an ended job should hold nothing, so most
    /// of a GPU held after it is the signature whatever the exact share.
    pub fb_used_share_orphan: f64,
    /// ...while utilisation stays between 0 and 5%.
    pub util_max: f64,
    /// Sustain when the job that held the GPU has ended (or no running job
    /// claims it): nothing legitimate keeps 95% of a GPU after its job.
    pub orphan_sustain_s: f64,
    /// Sustain when a running job (or an unknown owner) holds it: long enough
    /// to pass model loading and warm-up, which look the same for seconds.
    pub owned_sustain_s: f64,
    /// Readings older than this no longer describe the GPU.
    pub stale_s: f64,
    pub clear_s: f64,
    /// An engine whose metrics have not been seen for this long is gone
    /// (dead): three missed scrapes at Prometheus's usual 10 s interval.
    pub engine_gone_s: f64,
    /// Requests waiting and none running for this long: the engine is hung
    /// (a live engine with work schedules some within a step, well under a
    /// second; 30 s rides out a long prefill or a model swap).
    pub engine_hung_s: f64,
    /// A running job whose ranks had been running collectives and have not
    /// left one for this long has stalled (a step of an LLM job takes
    /// milliseconds to a few seconds; 30 s is far past any of them).
    pub job_silent_s: f64,
}

impl Default for SquatterConfig {
    fn default() -> Self {
        SquatterConfig {
            fb_used_share: 0.95,
            util_max: 5.0,
            orphan_sustain_s: 5.0,
            owned_sustain_s: 60.0,
            stale_s: 30.0,
            clear_s: 5.0,
            fb_used_share_orphan: 0.80,
            engine_gone_s: 30.0,
            engine_hung_s: 30.0,
            job_silent_s: 30.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// KV-cache usage that counts as pinned (vLLM reports 0..1).
    pub kv_full: f64,
    /// Usage below this ends a saturation episode.
    pub kv_clear: f64,
    /// Waiting requests that make a queue worth watching.
    pub waiting_min: f64,
    /// Growth of the waiting queue (requests) that marks the onset of queue
    /// instability (seed 001): along its trend over `growth_window_s` (s),
    /// or over the last two scrapes when each of them rose.
    pub waiting_growth_abs: f64,
    pub growth_window_s: f64,
    /// Saturation must hold this long: two consecutive scrapes (~1 s apart),
    /// so one odd scrape never concludes.
    pub saturation_sustain_s: f64,
    /// A stall (running 0, cache full, requests waiting) must hold this long.
    pub stall_sustain_s: f64,
    pub clear_s: f64,
    pub stale_s: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            kv_full: 0.95,
            kv_clear: 0.9,
            waiting_min: 5.0,
            waiting_growth_abs: 3.0,
            growth_window_s: 10.0,
            saturation_sustain_s: 0.9,
            stall_sustain_s: 0.9,
            clear_s: 5.0,
            stale_s: 30.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Retransmits per second that can make a storm...
    pub retrans_min_per_s: f64,
    /// ...when they are also this share of segments sent (1% is far above a
    /// healthy datacenter's ~0.01%)...
    pub retrans_share: f64,
    /// ...and this many times the node's own recent baseline.
    pub retrans_over_baseline: f64,
    /// Link utilisation (share of line rate) that counts as saturated.
    pub nic_util: f64,
    pub nic_util_clear: f64,
    /// Queue depth (packets) that shows the queue building behind the link.
    pub nic_queue: f64,
    /// Two consecutive samples (~1 s apart) must agree.
    pub sustain_s: f64,
    pub clear_s: f64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            retrans_min_per_s: 100.0,
            retrans_share: 0.01,
            retrans_over_baseline: 10.0,
            nic_util: 0.95,
            nic_util_clear: 0.85,
            nic_queue: 100.0,
            sustain_s: 0.9,
            clear_s: 5.0,
        }
    }
}
