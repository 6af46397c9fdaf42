//! `inject_fault` through a real controller and executor: proposed under
//! an operator's certificate, dispatched, applied by the executor's
//! `[chaos]` (a CPU quota written to the node's cgroup file), rolled back
//! by the leader when its time is up, the file back as it was, every step
//! in the audit trail. A cancel while it acts reverts it at once. The
//! cgroup is a folder with a `cpu.max` file: no root needed.

mod common;
use common::{eventually, issue, now, tmp};
use keel_actors::client::{ControllerAddr, ControllerClient};
use keel_actors::controller::{self, queries::params};
use keel_actors::executor::{self, ChaosConfig, ChaosNode, ExecutorConfig};
use keel_model::{JobRecord, JobState, Role};
use keel_transport::certs::{Ca, Validity};
use keel_transport::Credentials;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

async fn ask(c: &ControllerClient, topic: &str, p: BTreeMap<String, String>) -> Option<String> {
    c.ask(topic, p, Duration::from_secs(2)).await.ok()
}

async fn status_of(op: &ControllerClient, key: &str) -> (String, Vec<String>, String) {
    let body = ask(op, "actions", BTreeMap::new())
        .await
        .unwrap_or_default();
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let e = v["ledger"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["key"] == key);
    let steps = v["audit"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["key"] == key)
        .map(|a| {
            format!(
                "{}:{}",
                a["to"].as_str().unwrap_or(""),
                a["by"].as_str().unwrap_or("")
            )
        })
        .collect();
    (
        e.and_then(|e| e["status"].as_str())
            .unwrap_or("")
            .to_string(),
        steps,
        e.and_then(|e| e["detail"].as_str())
            .unwrap_or("")
            .to_string(),
    )
}

fn plan(key: &str, dur: &str) -> String {
    json!({"plan_action": {
        "key": key, "action": "inject_fault", "target": "node/n2",
        "params": {"cause": "host", "duration_s": dur, "job": "j1", "rank": "1"},
        "finding": null, "ts": now(), "reason": "test",
        "handling": {"rule": "operator", "mode": "auto", "verify_s": null, "on_failure": "rollback"},
    }})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injection_is_applied_and_rolled_back_through_the_ledger() {
    let dir = tmp("inject");
    let cg = dir.0.join("cg-n2");
    std::fs::create_dir_all(&cg).unwrap();
    std::fs::write(cg.join("cpu.max"), "max 100000").unwrap();
    let ca = Ca::generate(Validity::days(1)).unwrap();
    let ctl = controller::start(
        controller::Config {
            id: 1,
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.0.join("ctl-1"),
            credentials: issue(&dir.0, &ca, Role::Controller, "ctl-1"),
            peers: Vec::new(),
            join: false,
            retention: Default::default(),
            executors: Vec::new(),
        },
        None,
    )
    .await
    .unwrap();
    let controllers = vec![ControllerAddr {
        addr: ctl.addr,
        name: "ctl-1".into(),
    }];
    let nodes = BTreeMap::from([(
        "n2".to_string(),
        ChaosNode {
            cgroup: Some(cg.clone()),
            ..Default::default()
        },
    )]);
    let cfg: ExecutorConfig = toml::from_str(&format!(
        "credentials = {:?}\n",
        issue(&dir.0, &ca, Role::Executor, "exec-1")
            .display()
            .to_string()
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let cfg = ExecutorConfig {
        controllers: controllers.clone(),
        state_dir: Some(dir.0.join("exec")),
        chaos: Some(ChaosConfig {
            nodes,
            max_s: 600.0,
            host_cpu_share: 0.1,
            net_rate: "100mbit".into(),
        }),
        ..cfg
    };
    let (_exec, _) = executor::start(cfg).await.unwrap();
    let creds = Credentials::from_dir(&issue(&dir.0, &ca, Role::Operator, "op")).unwrap();
    let op = ControllerClient::new(&creds, &controllers).unwrap();
    let mut job = JobRecord::state_only("j1", JobState::Running, now());
    job.nodes = vec!["n1".into(), "n2".into()];
    job.ranks = BTreeMap::from([("n1".into(), vec![0]), ("n2".into(), vec![1])]);
    let record = serde_json::to_string(&job).unwrap();
    eventually(async || ask(&op, "job", params([("record", record.clone())])).await)
        .await
        .expect("job registered");

    let propose = |cmd: String, seq: u64| {
        params([
            ("client", "t".to_string()),
            ("seq", seq.to_string()),
            ("command", cmd),
        ])
    };
    // Bounded: 601 s is refused where it enters the state, with the reason.
    let err = op
        .ask(
            "propose",
            propose(plan("chaos/long", "601"), 1),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("at most 600"), "{err:#}");

    ask(&op, "propose", propose(plan("chaos/a", "1.5"), 2))
        .await
        .expect("injection committed");
    let acting = eventually(async || {
        let (s, _, _) = status_of(&op, "chaos/a").await;
        (s == "acknowledged").then_some(())
    })
    .await;
    assert!(acting.is_some(), "{:?}", status_of(&op, "chaos/a").await);
    assert_eq!(
        std::fs::read_to_string(cg.join("cpu.max")).unwrap(),
        "1000 10000"
    );
    let done = eventually(async || {
        let (s, steps, detail) = status_of(&op, "chaos/a").await;
        (s == "rolled_back").then_some((steps, detail))
    })
    .await;
    let (steps, detail) = done.expect("rolled back");
    assert_eq!(
        std::fs::read_to_string(cg.join("cpu.max")).unwrap(),
        "max 100000"
    );
    let to: Vec<&str> = steps.iter().map(|s| s.split(':').next().unwrap()).collect();
    assert_eq!(
        to,
        ["planned", "dispatched", "acknowledged", "rolled_back"],
        "{steps:?}"
    );
    assert!(steps[0].contains("operator:op/t"), "{steps:?}");
    assert!(detail.contains("reverted"), "{detail}");

    // Cancelled while it acts (60 s): reverted at once.
    ask(&op, "propose", propose(plan("chaos/b", "60"), 3))
        .await
        .expect("second injection committed");
    eventually(async || {
        let (s, _, _) = status_of(&op, "chaos/b").await;
        (s == "acknowledged").then_some(())
    })
    .await
    .expect("acknowledged");
    let cancel = json!({"transition": {"key": "chaos/b", "to": "cancelled", "ts": now(), "detail": "by hand"}});
    ask(&op, "propose", propose(cancel.to_string(), 4))
        .await
        .expect("cancel committed");
    let (steps, _) = eventually(async || {
        let (s, steps, detail) = status_of(&op, "chaos/b").await;
        (s == "rolled_back").then_some((steps, detail))
    })
    .await
    .expect("reverted after the cancel");
    let to: Vec<&str> = steps.iter().map(|s| s.split(':').next().unwrap()).collect();
    assert_eq!(
        to,
        [
            "planned",
            "dispatched",
            "acknowledged",
            "failed",
            "rolled_back"
        ],
        "{steps:?}"
    );
    assert_eq!(
        std::fs::read_to_string(cg.join("cpu.max")).unwrap(),
        "max 100000"
    );
}
