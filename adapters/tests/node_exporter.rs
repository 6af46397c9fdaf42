//! Scrapes a real `prometheus-node-exporter` over loopback, and checks that
//! the samples keel takes from it agree, name for name and unit for unit,
//! with what `LinuxSource` reads from the same kernel counters in between.
//!
//! Needs the exporter installed (`apt-get install -y prometheus-node-exporter`);
//! without it the test fails rather than skips, so that a CI image missing it
//! cannot pass by testing nothing.

use keel_adapters::sources::linux::{IfaceFilter, LinuxSource};
use keel_adapters::sources::scrape::{scrape, ScrapeErrorKind, ScrapeTarget};
use keel_model::{MetricName, MetricSample};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

const BINARIES: [&str; 2] = ["prometheus-node-exporter", "node_exporter"];

/// The exporter process, killed when the test ends however it ends.
struct Exporter {
    child: Child,
    port: u16,
    log: Vec<String>,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn start() -> Exporter {
    let port = free_port();
    let args = [
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--collector.disable-defaults".into(),
        "--collector.netstat".into(),
        "--collector.netdev".into(),
        "--collector.pressure".into(),
        // Debian's build leaves `lo` out by default; the test needs it.
        "--collector.netdev.device-exclude=^$".into(),
    ];
    let mut child = None;
    for bin in BINARIES {
        match Command::new(bin)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => {
                child = Some(c);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot start {bin}: {e}"),
        }
    }
    let Some(mut child) = child else {
        panic!(
            "prometheus-node-exporter is not installed (looked for {BINARIES:?} on PATH): \
             install it with `apt-get install -y prometheus-node-exporter`"
        )
    };
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut exporter = Exporter {
        child,
        port,
        log: Vec::new(),
    };
    // The exporter logs these once its socket is bound; if it exits instead
    // (port taken, bad flag), stderr ends and the log says why.
    loop {
        match rx.recv() {
            Ok(line) => {
                let ready = line.contains("TLS is disabled") || line.contains("Listening on");
                exporter.log.push(line);
                if ready {
                    break;
                }
            }
            Err(_) => panic!(
                "node-exporter exited before listening:\n{}",
                exporter.log.join("\n")
            ),
        }
    }
    std::thread::spawn(move || while rx.recv().is_ok() {});
    exporter
}

fn scrape_when_up(exporter: &mut Exporter, target: &ScrapeTarget, ts: f64) -> Vec<MetricSample> {
    loop {
        match scrape(target, ts) {
            Ok((samples, stats)) => {
                assert!(stats.malformed.is_empty(), "{:?}", stats.malformed);
                assert!(stats.unknown > 0, "go_* and others are counted, not taken");
                return samples;
            }
            // Older exporters log "Listening on" just before they listen.
            Err(e) if matches!(e.kind, ScrapeErrorKind::Connect(_)) => {
                if let Some(status) = exporter.child.try_wait().unwrap() {
                    panic!(
                        "node-exporter exited ({status}): {}",
                        exporter.log.join("\n")
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn value(s: &[MetricSample], name: MetricName, dev: Option<&str>) -> f64 {
    s.iter()
        .find(|x| x.name == name && x.labels.device.as_deref() == dev)
        .unwrap_or_else(|| panic!("no {} {dev:?} in {} samples", name.wire(), s.len()))
        .value
}

#[test]
fn a_real_node_exporter_scrape_agrees_with_the_kernel() {
    let mut exporter = start();
    let url = format!("http://127.0.0.1:{}/metrics", exporter.port);
    let target = ScrapeTarget::new(&url, "n-test").unwrap();
    let linux = LinuxSource::new("n-test").with_interfaces(IfaceFilter::only(["lo"]));
    let psi = std::path::Path::new("/proc/pressure/cpu").exists();

    let a = scrape_when_up(&mut exporter, &target, 1.0e9);
    let (direct, stats) = linux.read(1.0e9 + 0.5);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    let b = scrape_when_up(&mut exporter, &target, 1.0e9 + 1.0);

    assert!(a.iter().all(|s| s.node == "n-test" && s.ts == 1.0e9));
    let mut checked = vec![
        (MetricName::TcpOutSegs, None),
        (MetricName::TcpRetransSegs, None),
        (MetricName::NetRxBytes, Some("lo")),
        (MetricName::NetTxBytes, Some("lo")),
        (MetricName::NetRxDrop, Some("lo")),
        (MetricName::NetTxDrop, Some("lo")),
    ];
    if psi {
        checked.push((MetricName::CpuPressureWaiting, None));
    }
    // Counters read in the order a, direct, b: the kernel's reading sits
    // between the exporter's two, which holds only if name, label and unit
    // (seconds, not microseconds, for PSI) all match.
    for (name, dev) in checked {
        let (x, y, z) = (
            value(&a, name, dev),
            value(&direct, name, dev),
            value(&b, name, dev),
        );
        assert!(
            x <= y && y <= z,
            "{} {dev:?}: {x} <= {y} <= {z}",
            name.wire()
        );
    }
    // Scrape a's own response crossed loopback before scrape b read it.
    assert!(
        value(&b, MetricName::NetRxBytes, Some("lo"))
            > value(&a, MetricName::NetRxBytes, Some("lo"))
    );
    assert!(value(&b, MetricName::TcpOutSegs, None) > value(&a, MetricName::TcpOutSegs, None));
}
