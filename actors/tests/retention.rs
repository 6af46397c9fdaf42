//! Retention on a real one-replica controller over QUIC: a closed finding
//! older than `[retention] keep` leaves the replicated state at a committed
//! index, lands in `<data_dir>/history.jsonl`, and the `history` topic still
//! answers it (filtered by kind and time). A proposal the state machine
//! rejects is an error to the operator who asked, not a success.

mod common;
use common::{eventually, issue, now, Dir};
use keel_actors::client::{ControllerAddr, ControllerClient};
use keel_actors::controller::{self, queries::params, RetentionConfig, Span};
use keel_model::{Cause, Finding, FindingKind, Role, Severity};
use keel_transport::certs::{Ca, Validity};
use keel_transport::Credentials;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_finding_moves_to_the_history_and_is_still_read() {
    let dir = Dir(std::env::temp_dir().join(format!("keel-retention-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let ca = Ca::generate(Validity::days(1)).unwrap();
    let data_dir = dir.0.join("ctl-1");
    let cfg = controller::Config {
        id: 1,
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.clone(),
        credentials: issue(&dir.0, &ca, Role::Controller, "ctl-1"),
        peers: Vec::new(),
        join: false,
        retention: RetentionConfig {
            keep: Some(Span::Text("0s".into())),
            every: Some(Span::Seconds(0.5)),
        },
        executors: Vec::new(),
    };
    let ctl = controller::start(cfg, None).await.unwrap();
    let creds = Credentials::from_dir(&issue(&dir.0, &ca, Role::Operator, "op")).unwrap();
    let client = ControllerClient::new(
        &creds,
        &[ControllerAddr {
            addr: ctl.addr,
            name: "ctl-1".into(),
        }],
    )
    .unwrap();
    let ask = async |topic: &str, p: BTreeMap<String, String>| {
        client.ask(topic, p, Duration::from_secs(15)).await
    };
    let finding = Finding {
        ts: now() - 20.0,
        kind: FindingKind::ALL[0],
        cause: Cause::Network,
        severity: Severity::Warning,
        confidence: 0.9,
        job: Some("j1".into()),
        node: Some("n1".into()),
        rank: Some(3),
        gpu: Some(3),
        device: Some("eth0".into()),
        evidence: vec!["slow".into()],
        basis: None,
        gpu_instance: None,
        related: Vec::new(),
    };
    let open = json!({"open_finding": {"finding": finding, "opened": now() - 20.0}});
    let opened = eventually(async || {
        ask("propose", params([("command", open.to_string())]))
            .await
            .ok()
    })
    .await
    .expect("the finding was never opened");
    let id = serde_json::from_str::<Value>(&opened).unwrap()["finding_opened"]
        .as_u64()
        .unwrap_or_else(|| panic!("{opened}"));
    let close = json!({"close_finding": {"id": id, "ts": now() - 10.0}});
    ask("propose", params([("command", close.to_string())]))
        .await
        .unwrap();
    // Closing it again is rejected by the state machine: an error, not "ok".
    let again = ask("propose", params([("command", close.to_string())])).await;
    let err = format!("{:#}", again.expect_err("a rejected proposal answered ok"));
    assert!(err.contains("rejected"), "{err}");

    // Retention takes it out of the state...
    eventually(async || {
        let body = ask("findings", BTreeMap::new()).await.ok()?;
        let page: Value = serde_json::from_str(&body).ok()?;
        (page["total"] == 0).then_some(())
    })
    .await
    .expect("the closed finding never left the state");
    // ...into the history file, and the history topic reads it back.
    let text = std::fs::read_to_string(data_dir.join("history.jsonl")).unwrap();
    assert!(
        text.lines().any(|l| l.contains("\"kind\":\"finding\"")),
        "{text}"
    );
    let body = ask(
        "history",
        params([
            ("kind", "finding".to_string()),
            ("since", (now() - 60.0).to_string()),
        ]),
    )
    .await
    .unwrap();
    let page: Value = serde_json::from_str(&body).unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    assert_eq!(items[0]["id"], id);
    assert_eq!(items[0]["finding"]["rank"], 3);
    assert!(page["next"].is_null(), "{page}");
    let later = ask(
        "history",
        params([
            ("kind", "finding".to_string()),
            ("since", (now() + 60.0).to_string()),
        ]),
    )
    .await
    .unwrap();
    let later: Value = serde_json::from_str(&later).unwrap();
    assert_eq!(later["items"], json!([]), "{later}");
    let status: Value =
        serde_json::from_str(&ask("status", BTreeMap::new()).await.unwrap()).unwrap();
    assert_eq!(status["findings"], 0, "{status}");
    assert_eq!(
        status["digest"].as_str().map(str::len),
        Some(16),
        "{status}"
    );
    ctl.actor.stop(None);
}
