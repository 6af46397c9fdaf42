//! Live scenarios for `keel chaos run`: which faults a test cluster of
//! namespace nodes gets, where and when, and the labels each fault earns.
//! Pure data and arithmetic (no clock, no processes): the harness asks
//! `schedule` what to do at which offset from the start and `labels` what
//! to write when a fault starts; the plumbing lives in `testbed`.

use keel_model::{Cause, FindingKind, Label, Name};

/// What a live fault does to its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveCause {
    /// The rank's CPU taken: its cgroup's CPU quota cut (cgroup v1
    /// `cpu.cfs_quota_us`, v2 `cpu.max`), else hog processes pinned to it.
    Host,
    /// The node's data link: `tbf` rate limit and nftables random drop on
    /// its egress, so its TCP really retransmits.
    Network,
}

impl LiveCause {
    pub fn parse(s: &str) -> Option<LiveCause> {
        match s {
            "host" => Some(LiveCause::Host),
            "network" => Some(LiveCause::Network),
            _ => None,
        }
    }

    pub fn wire(self) -> &'static str {
        match self {
            LiveCause::Host => "host",
            LiveCause::Network => "network",
        }
    }
}

/// One fault of a scenario: on node index `node` (0-based; rank `node`
/// runs there), from `start_s` to `start_s + dur_s` seconds after the
/// workload starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveFault {
    pub cause: LiveCause,
    pub node: usize,
    pub start_s: f64,
    pub dur_s: f64,
    /// Injected as an operator would on a real cluster: `keel chaos inject`
    /// through the executor's `[chaos]` (a ledger action, reverted by the
    /// controller at its end), not by the harness itself.
    pub via_executor: bool,
}

/// What a scenario needs from the machine before it may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Namespaces, links, qdiscs, nftables and cgroups: uid 0.
    Root,
    /// `mpirun` (Debian's openmpi-bin) and `/usr/bin/python3` with mpi4py
    /// and numpy.
    Mpi,
    /// `ip` and `tc` (iproute2).
    Iproute,
    /// `nft` (nftables).
    Nft,
}

impl Need {
    /// What to install or change when it is missing.
    pub fn remedy(self) -> &'static str {
        match self {
            Need::Root => "run as root (namespaces, qdiscs, nftables and cgroups need it)",
            Need::Mpi => "apt-get install openmpi-bin python3-mpi4py python3-numpy",
            Need::Iproute => "apt-get install iproute2",
            Need::Nft => "apt-get install nftables",
        }
    }
}

/// A live scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveScenario {
    pub name: &'static str,
    pub about: &'static str,
    /// Namespace nodes, one rank each (at least 2).
    pub nodes: usize,
    /// How long the workload runs, seconds.
    pub seconds: f64,
    pub faults: Vec<LiveFault>,
}

impl LiveScenario {
    /// What the machine must offer: root, MPI and iproute2 always; nft
    /// for network faults.
    pub fn needs(&self) -> Vec<Need> {
        let mut n = vec![Need::Root, Need::Mpi, Need::Iproute];
        if self.faults.iter().any(|f| f.cause == LiveCause::Network) {
            n.push(Need::Nft);
        }
        n
    }
}

/// The scenario `keel chaos run` runs when none is named.
pub const DEFAULT_LIVE: &str = "mixed";

/// Every live scenario: name and one line.
pub fn live_scenarios() -> Vec<LiveScenario> {
    // 10 s of health first: the detectors learn each rank's habit and each
    // node's usual retransmit rate. Faults are 10 s, 8 s apart, so each
    // episode clears (5 s of calm) before the next starts.
    let f = |cause, node, start_s| LiveFault {
        cause,
        node,
        start_s,
        dur_s: 10.0,
        via_executor: false,
    };
    let injected = |cause, node, start_s| LiveFault {
        via_executor: true,
        ..f(cause, node, start_s)
    };
    vec![
        LiveScenario {
            name: "mixed",
            about: "4 nodes: a host straggler (CPU quota, injected through the executor as `keel chaos inject` does) on n02, then a network straggler (tbf + 20% TCP loss, a retransmit storm) on n03",
            nodes: 4,
            seconds: 46.0,
            faults: vec![
                injected(LiveCause::Host, 1, 10.0),
                f(LiveCause::Network, 2, 28.0),
            ],
        },
        LiveScenario {
            name: "host",
            about: "4 nodes: one host straggler (CPU quota) on n02",
            nodes: 4,
            seconds: 28.0,
            faults: vec![f(LiveCause::Host, 1, 10.0)],
        },
        LiveScenario {
            name: "network",
            about: "4 nodes: one network straggler (tbf + 20% TCP loss, a retransmit storm) on n04",
            nodes: 4,
            seconds: 28.0,
            faults: vec![f(LiveCause::Network, 3, 10.0)],
        },
        LiveScenario {
            name: "healthy",
            about: "4 nodes, no fault: anything keel commits is a false alarm",
            nodes: 4,
            seconds: 30.0,
            faults: vec![],
        },
    ]
}

/// The live scenario called `name`.
pub fn live_scenario(name: &str) -> Result<LiveScenario, crate::ChaosError> {
    let all = live_scenarios();
    let known = all.iter().map(|s| s.name).collect::<Vec<_>>().join(", ");
    all.into_iter()
        .find(|s| s.name == name)
        .ok_or(crate::ChaosError::UnknownScenario {
            name: name.into(),
            known,
        })
}

/// A node's name: `n01`, `n02`, ...
pub fn node_name(i: usize) -> String {
    format!("n{:02}", i + 1)
}

/// What the harness does at an offset from the start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Inject fault `i` of the scenario.
    Start(usize),
    /// Revert fault `i`.
    Stop(usize),
}

/// Every start and stop, by offset (seconds); a stop before a start at the
/// same offset, so that two faults never overlap on one node.
pub fn schedule(s: &LiveScenario) -> Vec<(f64, Step)> {
    let mut v: Vec<(f64, Step)> = Vec::new();
    for (i, f) in s.faults.iter().enumerate() {
        let end = (f.start_s + f.dur_s).min(s.seconds);
        v.push((f.start_s, Step::Start(i)));
        v.push((end, Step::Stop(i)));
    }
    v.sort_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then_with(|| matches!(a.1, Step::Start(_)).cmp(&matches!(b.1, Step::Start(_))))
    });
    v
}

/// The labels of a fault that ran from `onset` to `end` (Unix seconds) on
/// rank `rank` of `job`, at `node`: a `tp_straggler` of the fault's cause,
/// and for a network fault also the `retransmit_storm` its packet loss
/// makes on that node.
pub fn labels(
    cause: LiveCause,
    job: &str,
    node: &str,
    rank: u32,
    onset: f64,
    end: f64,
) -> Vec<Label> {
    let base = Label {
        kind: FindingKind::TpStraggler,
        cause: Some(match cause {
            LiveCause::Host => Cause::Host,
            LiveCause::Network => Cause::Network,
        }),
        job: Some(Name::from(job)),
        node: Some(Name::from(node)),
        rank: Some(rank),
        gpu: None,
        peer: None,
        onset,
        end,
    };
    let mut v = vec![base.clone()];
    if cause == LiveCause::Network {
        v.push(Label {
            kind: FindingKind::RetransmitStorm,
            job: None,
            rank: None,
            ..base
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_is_well_formed() {
        for s in live_scenarios() {
            assert!(s.nodes >= 2, "{}", s.name);
            for f in &s.faults {
                assert!(f.node < s.nodes, "{}: node {}", s.name, f.node);
                assert!(f.start_s >= 5.0 && f.dur_s > 0.0, "{}", s.name);
                assert!(f.start_s + f.dur_s <= s.seconds, "{}", s.name);
            }
            // Faults never overlap: each episode is told apart.
            let mut sorted = s.faults.clone();
            sorted.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
            for w in sorted.windows(2) {
                assert!(w[0].start_s + w[0].dur_s < w[1].start_s, "{}", s.name);
            }
        }
        let d = live_scenario(DEFAULT_LIVE).unwrap();
        assert!(d.nodes >= 4);
        assert!(d.faults.iter().any(|f| f.cause == LiveCause::Host));
        assert!(d.faults.iter().any(|f| f.cause == LiveCause::Network));
        assert!(d.needs().contains(&Need::Nft));
        assert!(!live_scenario("healthy")
            .unwrap()
            .needs()
            .contains(&Need::Nft));
    }

    #[test]
    fn an_unknown_scenario_names_the_known_ones() {
        let e = live_scenario("nope").unwrap_err().to_string();
        assert!(e.contains("mixed") && e.contains("healthy"), "{e}");
    }

    #[test]
    fn the_schedule_stops_before_it_starts_at_the_same_offset() {
        let s = LiveScenario {
            name: "t",
            about: "",
            nodes: 2,
            seconds: 20.0,
            faults: vec![
                LiveFault {
                    cause: LiveCause::Host,
                    node: 0,
                    start_s: 10.0,
                    dur_s: 30.0,
                    via_executor: false,
                },
                LiveFault {
                    cause: LiveCause::Network,
                    node: 1,
                    start_s: 5.0,
                    dur_s: 5.0,
                    via_executor: false,
                },
            ],
        };
        assert_eq!(
            schedule(&s),
            vec![
                (5.0, Step::Start(1)),
                (10.0, Step::Stop(1)),
                (10.0, Step::Start(0)),
                // Cut at the scenario's end.
                (20.0, Step::Stop(0)),
            ]
        );
    }

    #[test]
    fn a_network_fault_earns_a_straggler_and_a_retransmit_storm() {
        let l = labels(LiveCause::Network, "77", "n03", 2, 100.0, 110.0);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].kind, FindingKind::TpStraggler);
        assert_eq!(l[0].cause, Some(Cause::Network));
        assert_eq!(l[0].rank, Some(2));
        assert_eq!(l[1].kind, FindingKind::RetransmitStorm);
        assert_eq!(l[1].node.as_deref(), Some("n03"));
        assert!(l[1].locus().is_some() && l[0].locus().is_some());
        let h = labels(LiveCause::Host, "77", "n02", 1, 100.0, 110.0);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].cause, Some(Cause::Host));
        assert_eq!((h[0].onset, h[0].end), (100.0, 110.0));
    }
}
