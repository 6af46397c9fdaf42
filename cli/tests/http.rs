//! Each role as a real process with its HTTP port (`KEEL_HTTP`, the
//! environment form of `--http`): `/metrics` in Prometheus's text format
//! with the role's own counters, `/healthz`, and `/readyz` saying why not.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::{free_port, wait_for, Cluster};

/// One plain HTTP/1.0 GET: the status code and the body.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|b| b.1.to_string())?;
    Some((code, body))
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
    assert!(
        body.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF: {body}"
    );

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
        assert_eq!(get(ports[i], "/readyz").unwrap().0, 200, "{role}");
    }
}
