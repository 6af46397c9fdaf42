//! The actor layer with its real parts: a one-replica controller, a
//! correlator host and a sensor, over QUIC on loopback. A correlator that
//! panics is restarted by its host and counted, and its sibling is left
//! alone; a GPU finding is watched by its node's sensor and closed on the
//! controller when it clears, with no correlator at all; a sensor's push
//! source takes collectives from a real UDP socket.

mod common;
use common::{eventually, issue, tmp};
use keel_actors::client::{ControllerAddr, ControllerClient};
use keel_actors::controller::{self, queries::params};
use keel_actors::correlator::{self, CorrelatorConfig, HostMsg};
use keel_actors::sensor::{self, SensorConfig};
use keel_actors::sources::SourceConfig;
use keel_model::{JobRecord, JobState, Role};
use keel_transport::certs::{Ca, Validity};
use keel_transport::Credentials;
use std::collections::BTreeMap;
use std::time::Duration;

fn job(name: &str) -> JobRecord {
    JobRecord {
        ts: 1.0,
        node: None,
        job: name.into(),
        state: JobState::Running,
        tenant: None,
        nodes: vec!["n1".into()],
        ranks: BTreeMap::from([("n1".into(), vec![0, 1])]),
        gpus: BTreeMap::from([(0, 0), (1, 1)]),
        nics: BTreeMap::new(),
        node_gpus: Default::default(),
        tp: Some(2),
        pp: None,
        replica: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_correlator_is_restarted_and_its_sibling_keeps_running() {
    let dir = tmp("supervision");
    let ca = Ca::generate(Validity::days(1)).unwrap();
    let cfg = controller::Config {
        id: 1,
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.0.join("ctl-1"),
        credentials: issue(&dir.0, &ca, Role::Controller, "ctl-1"),
        peers: Vec::new(),
        join: false,
        retention: Default::default(),
        executors: Vec::new(),
    };
    let ctl = controller::start(cfg, None).await.unwrap();
    let controllers = vec![ControllerAddr {
        addr: ctl.addr,
        name: "ctl-1".into(),
    }];
    let host = correlator::start(CorrelatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        credentials: issue(&dir.0, &ca, Role::Correlator, "corr-a"),
        controllers: controllers.clone(),
        check_clock: true,
        detect: Default::default(),
    })
    .await
    .unwrap();
    let op = Credentials::from_dir(&issue(&dir.0, &ca, Role::Operator, "op")).unwrap();
    let client = ControllerClient::new(&op, &controllers).unwrap();
    for name in ["j1", "j2"] {
        let record = serde_json::to_string(&job(name)).unwrap();
        eventually(async || {
            client
                .ask(
                    "job",
                    params([("record", record.clone())]),
                    Duration::from_secs(2),
                )
                .await
                .ok()
        })
        .await
        .expect("job registered");
    }
    let both = eventually(async || {
        let s = correlator::stats(&host.actor).await?;
        (s.jobs.len() == 2).then_some(s)
    })
    .await
    .expect("both jobs assigned to the only host");
    assert_eq!(both.correlator_restarts, 0);

    host.actor.cast(HostMsg::Crash("j1".into())).unwrap();
    let after = eventually(async || {
        let s = correlator::stats(&host.actor).await?;
        (s.correlator_restarts > 0).then_some(s)
    })
    .await
    .expect("the crash was never counted");
    assert_eq!(
        after.correlator_restarts, 1,
        "only the crashed one restarts"
    );
    assert_eq!(after.jobs, vec!["j1", "j2"], "both correlators run again");
}

/// A GPU left held by a job that failed is watched by its node's sensor,
/// not by a correlator: with no correlator host at all, the squatter is
/// found, reported by the sensor's certificate, and closed on the
/// controller once the memory is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_finding_is_watched_by_its_nodes_sensor_until_it_clears() {
    let began = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let dir = tmp("clearing");
    let ca = Ca::generate(Validity::days(1)).unwrap();
    let cfg = controller::Config {
        id: 1,
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.0.join("ctl-1"),
        credentials: issue(&dir.0, &ca, Role::Controller, "ctl-1"),
        peers: Vec::new(),
        join: false,
        retention: Default::default(),
        executors: Vec::new(),
    };
    let ctl = controller::start(cfg, None).await.unwrap();
    let controllers = vec![ControllerAddr {
        addr: ctl.addr,
        name: "ctl-1".into(),
    }];
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (sensor, _) = sensor::start(
        SensorConfig {
            node: "n1".into(),
            credentials: issue(&dir.0, &ca, Role::Sensor, "n1"),
            controllers: controllers.clone(),
            window_len: None,
            sources: vec![SourceConfig::push(format!("udp://127.0.0.1:{port}"))],
            executor: None,
        },
        None,
    )
    .await
    .unwrap();
    let op = Credentials::from_dir(&issue(&dir.0, &ca, Role::Operator, "op")).unwrap();
    let client = ControllerClient::new(&op, &controllers).unwrap();
    let register = async |record: &JobRecord| {
        let record = serde_json::to_string(record).unwrap();
        eventually(async || {
            client
                .ask(
                    "job",
                    params([("record", record.clone())]),
                    Duration::from_secs(2),
                )
                .await
                .ok()
        })
        .await
        .expect("job registered");
    };
    register(&job("j1")).await;
    eventually(async || (sensor::stats(&sensor).await?.jobs_routed == 1).then_some(()))
        .await
        .expect("the job never reached its node's sensor");
    let mut ended = JobRecord::state_only("j1", JobState::Failed, began);
    ended.node = None;
    register(&ended).await;

    // After the failure GPU 0 stays full at 0 % (a second of trace time
    // every 10 ms) until the squatter is open on the controller, then is
    // released, until the finding is closed.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let squatter = async || {
        let body = client
            .ask("findings", BTreeMap::new(), Duration::from_secs(2))
            .await
            .ok()?;
        let page: serde_json::Value = serde_json::from_str(&body).ok()?;
        page["items"]
            .as_array()?
            .iter()
            .find(|e| e["finding"]["kind"] == "gpu_squatter")
            .cloned()
    };
    let (mut ts, mut held, mut f) = (began, true, None);
    for i in 0..6000u32 {
        ts += 1.0;
        let used = if held { 81_000.0 } else { 300.0 };
        let lines: Vec<String> = [
            ("DCGM_FI_DEV_FB_USED", used),
            ("DCGM_FI_DEV_FB_FREE", 81_920.0 - used),
            ("DCGM_FI_DEV_GPU_UTIL", 0.0),
        ]
        .iter()
        .map(|(name, v)| format!(r#"{{"t":"metric","ts":{ts},"node":"n1","name":"{name}","labels":{{"gpu":"0"}},"value":{v}}}"#))
        .collect();
        udp.send_to(lines.join("\n").as_bytes(), ("127.0.0.1", port))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        if i % 20 == 0 {
            if let Some(found) = squatter().await {
                held = false;
                if found["closed"].as_f64().is_some() {
                    f = Some(found);
                    break;
                }
            }
        }
    }
    let Some(f) = f else {
        let body = client
            .ask("findings", BTreeMap::new(), Duration::from_secs(2))
            .await;
        panic!(
            "the squatter was never found and closed: {body:?}; sensor {:?}",
            sensor::stats(&sensor).await
        );
    };
    assert_eq!(f["finding"]["job"], "j1", "{f:#}");
    assert_eq!(f["finding"]["basis"], "job_ended", "{f:#}");
    assert!(
        f["reported_by"]
            .as_str()
            .is_some_and(|r| r.starts_with("findings/sensor:n1@")),
        "{f:#}"
    );
    // Closed on the controller's clock (as findings are opened on it), so
    // that verification compares like with like: after this test began.
    assert!(f["closed"].as_f64().unwrap() >= began, "{f:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_summarises_collectives_pushed_over_udp() {
    let dir = tmp("push");
    let ca = Ca::generate(Validity::days(1)).unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // No controller answers: summaries wait unrouted, but they are made.
    let cfg = SensorConfig {
        node: "n1".into(),
        credentials: issue(&dir.0, &ca, Role::Sensor, "n1"),
        controllers: vec![ControllerAddr {
            addr: "127.0.0.1:9".parse().unwrap(),
            name: "ctl-1".into(),
        }],
        window_len: Some(4),
        sources: vec![SourceConfig::push(format!("udp://127.0.0.1:{port}"))],
        executor: None,
    };
    let (sensor, _) = sensor::start(cfg, None).await.unwrap();
    // The endpoint is bound once the sensor has started.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sent = 0;
    for seq in 0..40u64 {
        let mut lines = String::new();
        for rank in 0..2 {
            let ts = 1_800_000_000.0 + seq as f64 * 0.03;
            lines += &format!(
                "{{\"t\":\"collective\",\"ts\":{ts},\"node\":\"n1\",\"job\":\"j1\",\"rank\":{rank},\"op\":\"allreduce\",\"seq\":{seq},\"bytes\":1024,\"arrive\":{},\"dur_us\":{}}}\n",
                ts - 0.001,
                900 + rank * 100
            );
            sent += 1;
        }
        udp.send_to(lines.as_bytes(), ("127.0.0.1", port)).unwrap();
    }
    let stats = eventually(async || {
        let s = sensor::stats(&sensor).await?;
        (s.events == sent).then_some(s)
    })
    .await
    .expect("pushed collectives never all reached the sensor");
    assert_eq!(stats.summaries_sent, 0, "nowhere to send them yet");
}
