//! Each role as a real process with its HTTP port (`KEEL_HTTP`, the
//! environment form of `--http`): `/metrics` in Prometheus's text format
//! with the role's own counters (each exposition passes the real
//! `promtool check metrics`, Debian package `prometheus`), `/healthz`, and
//! `/readyz` saying why not: an executor and a sensor whose only
//! controller is unreachable are alive but not ready.

mod support;

use std::io::Write;
use std::time::Duration;
use support::{free_port, http_get, wait_for, Cluster};

/// One plain HTTP/1.0 GET: the status code and the body.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get(port, path, "*/*")
}

/// `promtool check metrics` on an exposition: its complaints, if any.
fn promtool(body: &str) -> Result<(), String> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool: {e} (apt-get install -y prometheus)"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}

/// The value of `keel_NAME{role="ROLE"}` in an exposition.
fn value(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(&format!("keel_{name}{{")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn every_role_serves_metrics_health_and_readiness() {
    let dir = std::env::temp_dir().join(format!("keel-http-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = Cluster::start(&dir, 1);
    // The replica again, now with its port.
    c.kill("ctl-1");
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let at = |i: usize| format!("127.0.0.1:{}", ports[i]);
    c.spawn_with_env(
        "ctl-1b",
        "controller",
        &dir.join("ctl-1.toml"),
        &[("KEEL_HTTP", &at(0))],
    );
    let controllers = c.controllers_toml();

    let creds = c.issue("sensor", "n01");
    let cfg = format!(
        "node = \"n01\"\ncredentials = \"{}\"\n{controllers}\n[[source]]\nkind = \"push\"\nlisten = \"udp://127.0.0.1:{}\"\n",
        creds.display(),
        free_port()
    );
    std::fs::write(dir.join("sensor.toml"), cfg).unwrap();
    c.spawn_with_env(
        "sensor",
        "sensor",
        &dir.join("sensor.toml"),
        &[("KEEL_HTTP", &at(1))],
    );

    let creds = c.issue("correlator", "corr-a");
    let cfg = format!(
        "listen = \"127.0.0.1:{}\"\ncredentials = \"{}\"\n{controllers}",
        free_port(),
        creds.display()
    );
    std::fs::write(dir.join("corr.toml"), cfg).unwrap();
    c.spawn_with_env(
        "corr-a",
        "correlator",
        &dir.join("corr.toml"),
        &[("KEEL_HTTP", &at(2))],
    );

    let creds = c.issue("executor", "exec-1");
    let cfg = format!(
        "credentials = \"{}\"\n{controllers}\n[log]\n",
        creds.display()
    );
    std::fs::write(dir.join("exec.toml"), cfg).unwrap();
    c.spawn_with_env(
        "executor",
        "executor",
        &dir.join("exec.toml"),
        &[("KEEL_HTTP", &at(3))],
    );

    // The controller: Raft's view, ready once it leads (one replica).
    let ready = wait_for(Duration::from_secs(30), || {
        let (code, _) = get(ports[0], "/readyz")?;
        (code == 200).then_some(())
    });
    assert!(
        ready.is_some(),
        "the replica never got ready: {:?} {:?}\n{}",
        get(ports[0], "/readyz"),
        get(ports[0], "/metrics"),
        c.logs()
    );
    let (code, body) = get(ports[0], "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("# TYPE keel_raft_term gauge"), "{body}");
    assert!(
        body.contains("keel_raft_term{role=\"controller\"}"),
        "{body}"
    );
    assert_eq!(value(&body, "raft_leader"), Some(1.0), "{body}");
    assert!(value(&body, "raft_commit_index") >= Some(1.0), "{body}");
    assert!(value(&body, "raft_applied_index").is_some(), "{body}");
    // OpenMetrics to who asks for it, as Prometheus does.
    let (_, open) = http_get(
        ports[0],
        "/metrics",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    )
    .unwrap();
    assert!(
        open.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF: {open}"
    );
    promtool(&body).unwrap_or_else(|e| panic!("controller: {e}\n{body}"));
    // Counted by label, and kept as the replica applies.
    for family in [
        "# TYPE keel_findings_by gauge",
        "# TYPE keel_ledger_actions_by gauge",
        "# TYPE keel_findings_opened_total counter",
        "# TYPE keel_finding_commit_delay_seconds histogram",
        "keel_finding_commit_delay_seconds_bucket{role=\"controller\",le=\"1.0\"} 0",
    ] {
        assert!(body.contains(family), "{family}: {body}");
    }

    // The other roles: alive, ready, with their counters.
    for (i, role, metric) in [
        (1, "sensor", "collectives_total"),
        (2, "correlator", "correlators"),
        (3, "executor", "commands_total"),
    ] {
        let ok = wait_for(Duration::from_secs(30), || {
            let (code, _) = get(ports[i], "/healthz")?;
            (code == 200).then_some(())
        });
        assert!(ok.is_some(), "{role} never healthy\n{}", c.logs());
        let (code, body) = get(ports[i], "/metrics").unwrap();
        assert_eq!(code, 200, "{role}");
        assert!(
            body.contains(&format!("keel_{metric}{{role=\"{role}\"}} ")),
            "{role}: {body}"
        );
        let ready = wait_for(Duration::from_secs(30), || {
            let (code, _) = get(ports[i], "/readyz")?;
            (code == 200).then_some(())
        });
        assert!(ready.is_some(), "{role}: {:?}", get(ports[i], "/readyz"));
        promtool(&body).unwrap_or_else(|e| panic!("{role}: {e}\n{body}"));
    }

    // Alive but not ready: an executor and a sensor whose only controller
    // does not answer, each saying why.
    let dead = format!(
        "[[controllers]]\naddr = \"127.0.0.1:{}\"\nname = \"ctl-1\"\n",
        free_port()
    );
    let lone: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let creds = c.issue("executor", "exec-2");
    let cfg = format!("credentials = \"{}\"\n{dead}\n[log]\n", creds.display());
    std::fs::write(dir.join("exec2.toml"), cfg).unwrap();
    c.spawn_with_env(
        "executor-2",
        "executor",
        &dir.join("exec2.toml"),
        &[("KEEL_HTTP", &format!("127.0.0.1:{}", lone[0]))],
    );
    let creds = c.issue("sensor", "n02");
    let cfg = format!(
        "node = \"n02\"\ncredentials = \"{}\"\n{dead}\n[[source]]\nkind = \"push\"\nlisten = \"udp://127.0.0.1:{}\"\n",
        creds.display(),
        free_port()
    );
    std::fs::write(dir.join("sensor2.toml"), cfg).unwrap();
    c.spawn_with_env(
        "sensor-2",
        "sensor",
        &dir.join("sensor2.toml"),
        &[("KEEL_HTTP", &format!("127.0.0.1:{}", lone[1]))],
    );
    for (port, why) in [
        (
            lone[0],
            "no controller leader has taken this executor's greeting",
        ),
        (
            lone[1],
            "the controller has not answered with this node's routes",
        ),
    ] {
        let up = wait_for(Duration::from_secs(30), || {
            let (code, _) = get(port, "/healthz")?;
            (code == 200).then_some(())
        });
        assert!(up.is_some(), "never alive\n{}", c.logs());
        let (code, body) = get(port, "/readyz").unwrap();
        assert_eq!(code, 503, "{body}");
        assert!(body.contains(why), "{body}");
    }
}
