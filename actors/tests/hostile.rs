//! Zero trust on payloads: what a peer says is checked against the
//! certificate that sent it, and hostile input is refused and counted,
//! never fatal. One test per attack, each asserting the refusal and its
//! counter, against real actors over QUIC on loopback (a one-replica
//! controller, a sensor with its push endpoint) or the intake functions
//! those actors call.

mod common;
use common::{issue, now, tmp, Dir};
use keel_actors::client::{ControllerAddr, ControllerClient};
use keel_actors::controller::{self, queries::params, ExecutorAllowed, PeerConfig};
use keel_actors::correlator::{admit, Refused};
use keel_actors::sensor::{self, SensorConfig};
use keel_actors::sources::SourceConfig;
use keel_model::{
    Cause, Finding, FindingKind, JobRecord, JobState, Message, MetricName, MetricSample, RaftBytes,
    Role, Severity, Summary, TelemetryBatch,
};
use keel_transport::certs::{Ca, Validity};
use keel_transport::Credentials;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn summary(node: &str, window: u64, end: f64) -> Summary {
    Summary {
        node: node.into(),
        job: "j1".into(),
        rank: 0,
        window,
        window_end: end,
        count: 2,
        step_us: 30_000,
        dur_p50_us: 900,
        dur_p99_us: 1_000,
        offset_us: 0,
    }
}

fn metric(node: &str) -> MetricSample {
    MetricSample {
        ts: now(),
        node: node.into(),
        name: MetricName::GpuUtil,
        labels: Default::default(),
        value: 1.0,
    }
}

/// A forged node, and summaries no sensor's edge could have made: each is
/// refused at the correlator host's intake and counted by reason.
#[test]
fn a_sensor_speaks_only_for_its_node_and_only_plausibly() {
    let t = now();
    let mut nan = summary("n1", 3, f64::NAN);
    nan.count = 1;
    let mut step = summary("n1", 4, t);
    step.step_us = u32::MAX;
    let mut durs = summary("n1", 5, t);
    durs.dur_p50_us = 5_000;
    let mut batch = TelemetryBatch {
        summaries: vec![
            summary("n1", 1, t),
            summary("n2", 1, t),                          // another node
            summary("n1", 2, t + 10.0 * 365.0 * 86400.0), // ten years ahead
            summary("n1", 2, t - 10.0 * 365.0 * 86400.0), // ten years back
            nan,
            step,
            durs,
        ],
        metrics: vec![metric("n1"), metric("n2")],
        // Serving events speak for their node too: one of n2's, one
        // naming no node, are refused.
        requests: ["n1", "n2", ""]
            .iter()
            .map(|n| keel_model::RequestRecord {
                ts: t,
                node: (!n.is_empty()).then(|| (*n).into()),
                job: Some("j1".into()),
                id: "r1".into(),
                phase: keel_model::RequestPhase::Arrive,
                prompt_tokens: None,
                output_tokens: None,
            })
            .collect(),
    };
    let refused = Refused::default();
    admit("n1", &mut batch, Some(t), &refused);
    assert_eq!(batch.summaries.len(), 1);
    assert_eq!(batch.summaries[0].node.as_str(), "n1");
    assert_eq!(batch.metrics.len(), 1);
    assert_eq!(batch.requests.len(), 1);
    assert_eq!(refused.foreign.load(Ordering::Relaxed), 4);
    assert_eq!(refused.implausible.load(Ordering::Relaxed), 5);
}

struct Ctl {
    _dir: Dir,
    ca: Ca,
    controllers: Vec<ControllerAddr>,
    dir: PathBuf,
}

impl Ctl {
    async fn start(name: &str, peers: Vec<PeerConfig>) -> Ctl {
        Ctl::start_with(name, peers, Vec::new()).await
    }

    async fn start_with(
        name: &str,
        peers: Vec<PeerConfig>,
        executors: Vec<ExecutorAllowed>,
    ) -> Ctl {
        let dir = tmp(name);
        let ca = Ca::generate(Validity::days(1)).unwrap();
        let cfg = controller::Config {
            id: 1,
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.0.join("ctl-1"),
            credentials: issue(&dir.0, &ca, Role::Controller, "ctl-1"),
            peers,
            join: false,
            retention: Default::default(),
            executors,
        };
        let ctl = controller::start(cfg, None).await.unwrap();
        let controllers = vec![ControllerAddr {
            addr: ctl.addr,
            name: "ctl-1".into(),
        }];
        let path = dir.0.clone();
        Ctl {
            _dir: dir,
            ca,
            controllers,
            dir: path,
        }
    }

    fn client(&self, role: Role, name: &str) -> ControllerClient {
        let creds = Credentials::from_dir(&issue(&self.dir, &self.ca, role, name)).unwrap();
        ControllerClient::new(&creds, &self.controllers).unwrap()
    }
}

/// Asks until the controller answers at all (a leader is elected), then
/// gives that answer.
async fn ask(
    c: &ControllerClient,
    topic: &str,
    p: BTreeMap<String, String>,
) -> Result<String, String> {
    for _ in 0..100 {
        match c.ask(topic, p.clone(), Duration::from_secs(2)).await {
            Ok(body) => return Ok(body),
            Err(e) => {
                let e = format!("{e:#}");
                if !e.contains("not applied") && !e.contains("no leader") && !e.contains("connect")
                {
                    return Err(e);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("no answer".into())
}

fn job(name: &str, node: &str) -> String {
    let mut r = JobRecord::state_only(name, JobState::Running, now());
    r.nodes = vec![node.into()];
    r.ranks = BTreeMap::from([(node.into(), vec![0])]);
    serde_json::to_string(&r).unwrap()
}

fn squatter(node: &str, job: Option<&str>) -> Finding {
    Finding {
        ts: now(),
        kind: FindingKind::GpuSquatter,
        cause: Cause::Engine,
        severity: Severity::Warning,
        confidence: 0.9,
        job: job.map(Into::into),
        node: Some(node.into()),
        rank: None,
        gpu: Some(0),
        device: None,
        evidence: Vec::new(),
        basis: None,
        gpu_instance: None,
        related: Vec::new(),
    }
}

/// A sensor registers or ends only jobs placed on its own node; a sensor
/// reports only GPU findings about its own node; a correlator host closes
/// only findings of jobs it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_jobs_findings_and_closes_are_refused() {
    let ctl = Ctl::start("forged", Vec::new()).await;
    let op = ctl.client(Role::Operator, "op");
    let n1 = ctl.client(Role::Sensor, "n1");
    ask(&op, "job", params([("record", job("j1", "n1"))]))
        .await
        .expect("the operator registers j1");

    // A sensor ending (or registering) a job on another node.
    let err = ask(&n1, "job", params([("record", job("j2", "n2"))]))
        .await
        .unwrap_err();
    assert!(
        err.contains("only of jobs with ranks on its own node"),
        "{err}"
    );
    let mut end = JobRecord::state_only("j1", JobState::Failed, now());
    end.ranks = BTreeMap::from([("n9".into(), vec![0])]);
    let err = ask(
        &n1,
        "job",
        params([("record", serde_json::to_string(&end).unwrap())]),
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("only of jobs with ranks on its own node"),
        "{err}"
    );

    // A sensor's finding about another node, or of a kind it does not watch.
    let ack = n1
        .request(
            Message::Finding(squatter("n2", None)),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(
        matches!(&ack, Message::Ack(a) if !a.ok && a.detail.contains("its own node")),
        "{ack:?}"
    );
    let mut straggler = squatter("n1", Some("j1"));
    straggler.kind = FindingKind::TpStraggler;
    let ack = n1
        .request(Message::Finding(straggler), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        matches!(&ack, Message::Ack(a) if !a.ok && a.detail.contains("not tp_straggler")),
        "{ack:?}"
    );
    // Its own node's squatter is taken.
    let ack = n1
        .request(
            Message::Finding(squatter("n1", Some("j1"))),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(matches!(&ack, Message::Ack(a) if a.ok), "{ack:?}");

    // A correlator host that holds no job closes j1's finding; it stays open.
    let corr = ctl.client(Role::Correlator, "corr-x");
    let close = serde_json::to_string(&squatter("n1", Some("j1"))).unwrap();
    let err = ask(&corr, "close_finding", params([("finding", close)]))
        .await
        .unwrap_err();
    assert!(err.contains("does not hold job j1"), "{err}");
    let body = ask(&op, "findings", BTreeMap::new()).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["items"][0]["closed"].is_null(), "{v:#}");
    // A correlator host's own finding about a job it does not hold.
    let ack = corr
        .request(
            Message::Finding(squatter("n1", Some("j1"))),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(
        matches!(&ack, Message::Ack(a) if !a.ok && a.detail.contains("does not hold")),
        "{ack:?}"
    );
}

/// A Raft message whose `from` names a replica id bound to another
/// certificate is dropped and counted (`raft_refused` in `keel status`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_message_from_a_mismatched_id_is_refused() {
    let ctl = Ctl::start(
        "raft",
        vec![PeerConfig {
            id: 2,
            addr: "127.0.0.1:9".parse().unwrap(),
            name: "ctl-2".into(),
        }],
    )
    .await;
    let impostor = ctl.client(Role::Controller, "ctl-3");
    let mut m = raft::prelude::Message {
        from: 2,
        to: 1,
        ..Default::default()
    };
    m.set_msg_type(raft::prelude::MessageType::MsgHeartbeat);
    let bytes = keel_consensus::node::encode_message(&m);
    let ack = impostor
        .request(
            Message::Raft(RaftBytes { to: 1, bytes }),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(matches!(ack, Message::Ack(_)), "{ack:?}");
    let op = ctl.client(Role::Operator, "op");
    let mut refused = 0;
    for _ in 0..50 {
        let s: serde_json::Value =
            serde_json::from_str(&ask(&op, "status", BTreeMap::new()).await.unwrap()).unwrap();
        refused = s["raft_refused"].as_u64().unwrap_or(0);
        if refused > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refused, 1);
}

/// Resident memory of this process, KiB (`VmRSS` of `/proc/self/status`).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Through the push port: 10,000 random datagrams, rank 4,294,967,295,
/// NaN and infinite values, timestamps ten years off, window ids at
/// `u64::MAX`, 100,000 distinct job ids and records about another node.
/// The sensor stays up, counts what it refused, and its memory stays
/// within a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_port_survives_hostile_datagrams_within_bounded_memory() {
    let dir = tmp("push");
    let ca = Ca::generate(Validity::days(1)).unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = SensorConfig {
        node: "n1".into(),
        credentials: issue(&dir.0, &ca, Role::Sensor, "n1"),
        controllers: vec![ControllerAddr {
            addr: "127.0.0.1:9".parse().unwrap(),
            name: "ctl-1".into(),
        }],
        window_len: Some(2),
        sources: vec![SourceConfig::push(format!("udp://127.0.0.1:{port}"))],
        executor: None,
    };
    let (sensor, _) = sensor::start(cfg, None).await.unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let send = |text: &str| {
        let _ = udp.send_to(text.as_bytes(), ("127.0.0.1", port));
    };
    let before = rss_kib();
    let t = now();
    let coll = |job: &str, rank: u64, seq: u64, ts: f64, dur: &str| {
        format!(
            r#"{{"t":"collective","ts":{ts},"node":"n1","job":"{job}","rank":{rank},"op":"allreduce","seq":{seq},"bytes":1,"arrive":{ts},"dur_us":{dur}}}"#
        )
    };
    // Random bytes (a xorshift, so that a failure replays).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..10_000 {
        let mut d = Vec::with_capacity(200);
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            d.push(x as u8);
        }
        let _ = udp.send_to(&d, ("127.0.0.1", port));
        if i % 1_000 == 999 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // The crafted datagrams must not be lost behind the flood in a full
    // socket buffer: let the sensor drain it first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&coll("j", u64::from(u32::MAX), 0, t, "900"));
    send(&coll("j", u64::from(u32::MAX), 1, t, "900"));
    send(&coll("j", 1, 2, t, "NaN"));
    send(&coll("j", 1, 3, t, "1e400"));
    send(&coll("j", 1, 4, t + 10.0 * 365.0 * 86400.0, "900"));
    send(&coll("j", 1, 5, t - 10.0 * 365.0 * 86400.0, "900"));
    send(&coll("j", 1, u64::MAX, t, "900"));
    send(&coll("j", 1, u64::MAX - 1, t, "900"));
    send(&coll("j", 1, 6, t, "900").replace("\"n1\"", "\"n2\""));
    for _ in 0..50 {
        if sensor::stats(&sensor)
            .await
            .is_some_and(|s| s.foreign_dropped >= 1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for j in 0..100_000u32 {
        send(&coll(&format!("job-{j}"), 0, 0, t, "900"));
        if j % 5_000 == 0 {
            // Let the sensor keep up (a UDP socket's buffer is finite).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut stats = None;
    for _ in 0..100 {
        stats = sensor::stats(&sensor).await;
        if stats
            .as_ref()
            .is_some_and(|s| s.events > 0 && s.foreign_dropped >= 1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = stats.expect("the sensor answers after the flood");
    assert_eq!(s.foreign_dropped, 1, "{s:?}");
    assert!(s.edge_implausible >= 2, "the stamps ten years off: {s:?}");
    assert!(
        s.edge_jobs_dropped > 0,
        "100,000 job ids against {}: {s:?}",
        keel_detect::edge::JOBS_MAX
    );
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    // The edge holds at most JOBS_MAX jobs of a few ranks: tens of MiB.
    assert!(grown_mib < 256, "resident memory grew {grown_mib} MiB");
}

/// Narrow roles: a viewer reads and proposes nothing; an approver approves
/// and pauses but applies no policy and proposes no raw command; a
/// scheduler registers jobs and reads nothing else. Each refusal names the
/// role and what it may do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_may_do_only_its_part() {
    let ctl = Ctl::start("roles", Vec::new()).await;
    let viewer = ctl.client(Role::Viewer, "v");
    let approver = ctl.client(Role::Approver, "a");
    let admin = ctl.client(Role::Admin, "ad");
    let scheduler = ctl.client(Role::Scheduler, "s");
    let propose = |command: serde_json::Value| {
        params([
            ("client", "c".to_string()),
            ("seq", "1".to_string()),
            ("command", command.to_string()),
        ])
    };
    let policy = serde_json::json!({"apply_policy": {"name": "default", "document": "# empty\n"}});
    let pause = serde_json::json!({"pause": {"reason": "maintenance", "ts": now()}});

    let status: serde_json::Value = serde_json::from_str(
        &ask(&viewer, "status", BTreeMap::new())
            .await
            .expect("a viewer reads"),
    )
    .unwrap();
    // The replica's own certificate, issued for a day: within the warning.
    let cert = &status["certificate"];
    assert_eq!(cert["days_left"], 0, "{status:#}");
    assert_eq!(cert["expires_soon"], true, "{status:#}");
    assert!(
        cert["not_after"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{status:#}"
    );
    let err = ask(&viewer, "propose", propose(pause.clone()))
        .await
        .unwrap_err();
    assert!(err.contains("a viewer may not ask `propose`"), "{err}");

    let err = ask(&approver, "propose", propose(policy.clone()))
        .await
        .unwrap_err();
    assert!(
        err.contains("a approver may approve, reject or cancel"),
        "{err}"
    );
    let err = ask(
        &approver,
        "member",
        params([("id", "9".into()), ("op", "remove".into())]),
    )
    .await
    .unwrap_err();
    assert!(err.contains("may not ask `member`"), "{err}");
    ask(&approver, "propose", propose(pause))
        .await
        .expect("an approver pauses");

    let err = ask(&scheduler, "findings", BTreeMap::new())
        .await
        .unwrap_err();
    assert!(err.contains("may not ask `findings`"), "{err}");
    let err = ask(&scheduler, "propose", propose(policy.clone()))
        .await
        .unwrap_err();
    assert!(
        err.contains("a scheduler may register and end jobs"),
        "{err}"
    );
    ask(&scheduler, "job", params([("record", job("j1", "n1"))]))
        .await
        .expect("a scheduler registers jobs");

    ask(&admin, "propose", propose(policy))
        .await
        .expect("an admin applies policy");
    // The audit names each certificate: the pause was the approver's.
    let s: serde_json::Value =
        serde_json::from_str(&ask(&admin, "status", BTreeMap::new()).await.unwrap()).unwrap();
    assert!(
        s["paused"]["by"]
            .as_str()
            .is_some_and(|b| b.starts_with("approver:a/")),
        "{s:#}"
    );
}

/// An executor greets only with the nodes and actions the controller's
/// `[[executors]]` allows it; an executor it does not list is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_greedy_executor_greeting_is_refused() {
    let ctl = Ctl::start_with(
        "greeting",
        Vec::new(),
        vec![ExecutorAllowed {
            name: "exec-n1".into(),
            nodes: vec!["n1".into()],
            actions: vec!["retune_nic".into(), "reclaim_zombie".into()],
        }],
    )
    .await;
    let greet = |nodes: &str, actions: &str| {
        params([
            ("nodes", nodes.to_string()),
            ("actions", actions.to_string()),
        ])
    };
    let mine = ctl.client(Role::Executor, "exec-n1");
    ask(&mine, "executor", greet("n1", "retune_nic,reclaim_zombie"))
        .await
        .expect("its own node and actions");
    let err = ask(&mine, "executor", greet("n1,n2", "retune_nic,drain_node"))
        .await
        .unwrap_err();
    assert!(
        err.contains(r#"nodes ["n2"], actions ["drain_node"]"#),
        "{err}"
    );
    let stranger = ctl.client(Role::Executor, "exec-x");
    let err = ask(&stranger, "executor", greet("*", "notify"))
        .await
        .unwrap_err();
    assert!(
        err.contains("not in the controller's [[executors]]"),
        "{err}"
    );
}
