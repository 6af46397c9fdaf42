//! A real Prometheus (Debian package `prometheus`) scrapes three controller
//! replicas, each a real process serving its HTTP port, with keel's own
//! alerting rules (`deploy/prometheus/keel.rules.yml`) loaded; the test
//! kills the leader, and `KeelDown` fires for that replica, and for no
//! other. The rules are the file's own, with each `for:` cut to 3 s so the
//! test need not wait the minute the file asks (the expressions are the
//! file's, unchanged); scrapes and evaluations every second.

mod support;

use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{free_port, http_get, wait_for, Cluster};

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Prometheus's answer to an API path, as JSON.
fn api(port: u16, path: &str) -> Option<Value> {
    let (code, body) = http_get(port, path, "application/json")?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

#[test]
fn prometheus_fires_keel_down_for_a_killed_leader_and_for_no_other_replica() {
    let dir = std::env::temp_dir().join(format!("keel-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = Cluster::start(&dir, 3);
    // Each replica again, now with its HTTP port.
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    for (i, port) in ports.iter().enumerate() {
        let name = format!("ctl-{}", i + 1);
        c.kill(&name);
        c.spawn_with_env(
            &format!("{name}b"),
            "controller",
            &dir.join(format!("{name}.toml")),
            &[("KEEL_HTTP", &format!("127.0.0.1:{port}"))],
        );
    }

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/keel.rules.yml")).unwrap();
    let quick: String = rules
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for:") {
            Some(_) => format!("{}for: 3s", &l[..l.len() - l.trim_start().len()]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(quick.contains("alert: KeelDown"), "{quick}");
    std::fs::write(dir.join("keel.rules.yml"), quick).unwrap();
    let targets: Vec<String> = ports.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n  scrape_timeout: 900ms\nrule_files: ['{}']\nscrape_configs:\n  - job_name: keel-controller\n    static_configs:\n      - targets: [{}]\n",
            dir.join("keel.rules.yml").display(),
            targets.join(", ")
        ),
    )
    .unwrap();
    let web = free_port();
    let prom = match Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
    {
        Ok(child) => Prometheus(child),
        Err(e) => panic!("cannot run prometheus: {e} (apt-get install -y prometheus)"),
    };

    // Every replica scraped, and one of them leading.
    let all_up = wait_for(Duration::from_secs(60), || {
        let v = api(web, "/api/v1/targets")?;
        let t = v["data"]["activeTargets"].as_array()?;
        (t.len() == 3 && t.iter().all(|t| t["health"] == "up")).then_some(())
    });
    assert!(
        all_up.is_some(),
        "targets never all up: {:?}\n{}",
        api(web, "/api/v1/targets"),
        (1..=3)
            .map(|i| {
                let log = std::fs::read_to_string(dir.join(format!("ctl-{i}b.log")));
                let log = log.unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "ctl-{i}b.log (last lines, newest first):\n{}",
                    tail.join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    );
    let leader = wait_for(Duration::from_secs(30), || c.leader(&[0, 1, 2])).expect("a leader");
    let led = format!("127.0.0.1:{}", ports[leader as usize - 1]);
    c.kill(&format!("ctl-{leader}b"));

    let firing = |v: &Value| -> Vec<(String, String)> {
        v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing")
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                    a["labels"]["instance"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let fired = wait_for(Duration::from_secs(60), || {
        let f = firing(&api(web, "/api/v1/alerts")?);
        f.iter()
            .any(|(name, inst)| name == "KeelDown" && *inst == led)
            .then_some(f)
    });
    let Some(fired) = fired else {
        panic!(
            "KeelDown never fired for {led}: {:?}",
            api(web, "/api/v1/alerts")
        );
    };
    let down: Vec<&String> = fired
        .iter()
        .filter(|(n, _)| n == "KeelDown")
        .map(|(_, i)| i)
        .collect();
    assert_eq!(down, [&led], "{fired:?}");
    drop(prom);
}
