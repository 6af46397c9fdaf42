use crate::Engine;
use keel_model::{Dir, Finding, FindingKind, MetricLabels, MetricName, MetricSample, Record};

fn metric(
    ts: f64,
    node: &str,
    name: MetricName,
    device: Option<&str>,
    dir: Option<Dir>,
    value: f64,
) -> Record {
    Record::Metric(MetricSample {
        ts,
        node: node.into(),
        name,
        labels: MetricLabels {
            device: device.map(Into::into),
            dir,
            ..Default::default()
        },
        value,
    })
}

/// One node's 1 Hz scrape: TCP counters, and one DPU NIC (mlx5_0) with its
/// credit-stall counter, TX queue and TX utilisation.
struct Node {
    name: &'static str,
    retrans: f64,
    sent: f64,
    stall_us: f64,
}

impl Node {
    fn new(name: &'static str) -> Node {
        Node {
            name,
            retrans: 1000.0,
            sent: 1e9,
            stall_us: 5e6,
        }
    }

    /// `retrans_share` of 50k segments/s retransmitted, `stall` share of
    /// the second waiting for credits, `queue` TX packets at `util`.
    fn scrape(
        &mut self,
        ts: f64,
        retrans_share: f64,
        stall: f64,
        queue: f64,
        util: f64,
    ) -> Vec<Record> {
        self.sent += 50e3;
        self.retrans += (50e3 * retrans_share).round() + 2.0;
        self.stall_us += stall * 1e6 + 50.0;
        let n = self.name;
        let dev = Some("mlx5_0");
        vec![
            metric(ts, n, MetricName::TcpOutSegs, None, None, self.sent),
            metric(ts, n, MetricName::TcpRetransSegs, None, None, self.retrans),
            metric(ts, n, MetricName::DpuNicLinkUtil, dev, Some(Dir::Tx), util),
            metric(
                ts,
                n,
                MetricName::DpuNicQueueDepth,
                dev,
                Some(Dir::Tx),
                queue,
            ),
            metric(ts, n, MetricName::DpuNicQueueDepth, dev, Some(Dir::Rx), 3.0),
            metric(
                ts,
                n,
                MetricName::DpuRdmaCreditStall,
                dev,
                None,
                self.stall_us,
            ),
        ]
    }
}

/// Runs `secs` seconds of scrapes of `nodes`; `state(node, t)` gives each
/// node's (retransmit share, stall share, TX queue, TX utilisation).
fn run(
    nodes: &mut [Node],
    secs: u32,
    state: impl Fn(usize, f64) -> (f64, f64, f64, f64),
) -> (Vec<Finding>, Vec<Finding>) {
    let mut engine = Engine::default();
    let (mut out, mut cleared) = (Vec::new(), Vec::new());
    for s in 0..secs {
        let t = 1000.0 + s as f64;
        for (i, n) in nodes.iter_mut().enumerate() {
            let (r, c, q, u) = state(i, t - 1000.0);
            for rec in n.scrape(t + 0.01 * i as f64, r, c, q, u) {
                engine.push(&rec, &mut out);
            }
        }
        cleared.extend(engine.take_cleared());
    }
    (out, cleared)
}

fn of(f: &[Finding], kind: FindingKind) -> Vec<&Finding> {
    f.iter().filter(|x| x.kind == kind).collect()
}

const CALM: (f64, f64, f64, f64) = (0.0, 0.0, 3.0, 0.3);

fn nodes(n: usize) -> Vec<Node> {
    const NAMES: [&str; 8] = ["n01", "n02", "n03", "n04", "n05", "n06", "n07", "n08"];
    NAMES[..n].iter().map(|s| Node::new(s)).collect()
}

#[test]
fn credit_starvation_is_a_sustained_share_of_each_second() {
    let mut ns = nodes(2);
    // n01 stalls 12% of each second from 60 s to 90 s; n02 bursts 40% for
    // one second at 30 s (not starvation).
    let (out, cleared) = run(&mut ns, 120, |i, t| match i {
        0 if (60.0..90.0).contains(&t) => (0.0, 0.12, 3.0, 0.3),
        1 if (30.0..31.0).contains(&t) => (0.0, 0.4, 3.0, 0.3),
        _ => CALM,
    });
    let found = of(&out, FindingKind::RdmaCreditStarvation);
    assert_eq!(found.len(), 1, "{out:#?}");
    let f = found[0];
    assert_eq!(
        (f.node.as_deref(), f.device.as_deref()),
        (Some("n01"), Some("mlx5_0"))
    );
    assert!(f.ts >= 1060.0 && f.ts <= 1063.5, "{}", f.ts);
    assert!(f.evidence[0].contains("12.0%"), "{:?}", f.evidence);
    assert!(of(&cleared, FindingKind::RdmaCreditStarvation).len() == 1);
    assert!(of(&out, FindingKind::NetworkCongestion).is_empty());
}

#[test]
fn a_tx_queue_behind_a_link_with_room_is_a_backlog_and_at_line_rate_is_not() {
    let mut ns = nodes(3);
    let (out, cleared) = run(&mut ns, 100, |i, t| match i {
        // a backlog behind a link at 40%
        0 if (40.0..70.0).contains(&t) => (0.0, 0.0, 800.0, 0.4),
        // a saturated link: nic_saturation's, not a backlog
        1 if (40.0..70.0).contains(&t) => (0.0, 0.0, 2000.0, 0.98),
        // a queue spike of one reading
        2 if (50.0..51.0).contains(&t) => (0.0, 0.0, 3000.0, 0.4),
        _ => CALM,
    });
    let found = of(&out, FindingKind::EgressBacklog);
    assert_eq!(found.len(), 1, "{out:#?}");
    assert_eq!(found[0].node.as_deref(), Some("n01"));
    assert!(found[0].evidence.iter().any(|e| e.contains("800 packets")));
    assert_eq!(of(&cleared, FindingKind::EgressBacklog).len(), 1);
    assert_eq!(of(&out, FindingKind::NicSaturation).len(), 1);
}

#[test]
fn transmit_drops_without_a_dpu_are_a_backlog() {
    let mut engine = Engine::default();
    let mut out = Vec::new();
    let mut drops = 0.0;
    for s in 0..60 {
        let t = 100.0 + s as f64;
        drops += if (20..40).contains(&s) { 50.0 } else { 0.0 };
        let r = metric(t, "n01", MetricName::NetTxDrop, Some("eth0"), None, drops);
        engine.push(&r, &mut out);
    }
    let found = of(&out, FindingKind::EgressBacklog);
    assert_eq!(found.len(), 1, "{out:#?}");
    assert!(found[0].confidence < 0.7, "utilisation unseen");
}

#[test]
fn several_nodes_straining_at_once_is_congestion_and_one_node_is_not() {
    let mut ns = nodes(8);
    let (out, cleared) = run(&mut ns, 160, |i, t| {
        // 30-40 s: n01 alone storms (a retransmit storm, not congestion).
        if i == 0 && (30.0..40.0).contains(&t) {
            return (0.05, 0.0, 3.0, 0.3);
        }
        // 60-62 s: every node bursts for two seconds (a microburst).
        if (60.0..62.0).contains(&t) {
            return (0.005, 0.01, 60.0, 0.5);
        }
        // 90-130 s: five nodes' retransmits, queues and stalls rise together.
        if i < 5 && (90.0..130.0).contains(&t) {
            return (0.004, 0.006, 45.0, 0.5);
        }
        CALM
    });
    let found = of(&out, FindingKind::NetworkCongestion);
    assert_eq!(found.len(), 1, "{out:#?}");
    let f = found[0];
    assert!(f.node.is_none() && f.job.is_none());
    assert!(f.ts >= 1090.0 && f.ts <= 1097.0, "{}", f.ts);
    assert!(
        f.evidence[0].starts_with("5 of 8 nodes"),
        "{:?}",
        f.evidence
    );
    assert_eq!(of(&cleared, FindingKind::NetworkCongestion).len(), 1);
    // No per-node finding: the strain is moderate everywhere.
    assert!(of(&out, FindingKind::EgressBacklog).is_empty());
    assert!(of(&out, FindingKind::RdmaCreditStarvation).is_empty());
    assert_eq!(of(&out, FindingKind::RetransmitStorm).len(), 1);
}

#[test]
fn congestion_names_the_node_findings_open_under_it() {
    let mut ns = nodes(4);
    let (out, _) = run(&mut ns, 90, |i, t| {
        if i == 0 && (20.0..80.0).contains(&t) {
            return (0.004, 0.1, 45.0, 0.5);
        }
        if (40.0..80.0).contains(&t) {
            return (0.004, 0.006, 45.0, 0.5);
        }
        CALM
    });
    let credit = of(&out, FindingKind::RdmaCreditStarvation);
    let congestion = of(&out, FindingKind::NetworkCongestion);
    assert_eq!((credit.len(), congestion.len()), (1, 1), "{out:#?}");
    assert!(congestion[0].related.iter().any(|r| r.names(credit[0])));
}

/// A job's correlator (`Scope::Job`) sees only its job's nodes: one spanning
/// four congested nodes concludes; one of two nodes cannot.
#[test]
fn a_jobs_correlator_concludes_congestion_over_its_own_nodes_only() {
    use crate::{Config, Scope};
    let congested = |_: usize, t: f64| {
        if (20.0..60.0).contains(&t) {
            (0.004, 0.006, 45.0, 0.5)
        } else {
            CALM
        }
    };
    for (n, want) in [(4, 1), (2, 0)] {
        let mut ns = nodes(n);
        let mut engine = Engine::with_scope(Config::default(), Scope::Job);
        let mut out = Vec::new();
        for s in 0..80 {
            let t = 1000.0 + s as f64;
            for (i, node) in ns.iter_mut().enumerate() {
                let (r, c, q, u) = congested(i, t - 1000.0);
                for rec in node.scrape(t + 0.01 * i as f64, r, c, q, u) {
                    engine.push(&rec, &mut out);
                }
            }
        }
        assert_eq!(
            of(&out, FindingKind::NetworkCongestion).len(),
            want,
            "{n} nodes: {out:#?}"
        );
    }
}
