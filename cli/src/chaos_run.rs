//! `keel chaos run [SCENARIO]`: a test cluster of namespace nodes on this
//! machine, a real MPI workload across them, real faults on a schedule,
//! labels written as the faults start and end, and what the controller
//! committed scored against them with `keel eval`'s scoring.
//!
//! The findings are scored at the moment the controller committed them
//! (`opened`), so the latencies are onset -> committed. Everything the run
//! creates is removed when it ends, however it ends short of SIGKILL
//! (SIGINT and SIGTERM stop it cleanly; after a SIGKILL, the next run or
//! `keel chaos clean` sweeps what was left).

use crate::chaos_inject;
use crate::chaos_roles::{Roles, PUSH_PORT};
use crate::eval;
use anyhow::{bail, Context, Result};
use keel_chaos::faults::{self, FaultGuard};
use keel_chaos::live::{self, LiveScenario, Step};
use keel_chaos::testbed::{self, Testbed, PYTHON};
use keel_model::{Finding, Label};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const KEEL_PUSH_PY: &str = include_str!("../../contrib/keel_push.py");
const KEEL_MPI_PY: &str = include_str!("../../contrib/keel_mpi.py");
/// The job id the workload reports under.
pub const JOB: &str = "chaos-1";
/// The upload sink's port on the host's end of the data network.
const SINK_PORT: u16 = 7700;
/// How long after the workload's end the last episode's findings may
/// still be committed before the run is scored (s).
const SETTLE_S: f64 = 3.0;

/// What `keel chaos run` was asked.
pub struct RunOpts {
    pub scenario: Option<String>,
    pub json: bool,
    /// Where configs, logs, labels and findings go (default: a fresh
    /// folder under the temporary directory, kept).
    pub dir: Option<PathBuf>,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Set on SIGINT or SIGTERM: the run stops at its next step and unwinds,
/// reverting every fault.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let f = flag.clone();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return drop(tx.send(Err(e.to_string()))),
        };
        rt.block_on(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (mut term, mut int) = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(t), Ok(i)) => (t, i),
                (Err(e), _) | (_, Err(e)) => return drop(tx.send(Err(e.to_string()))),
            };
            let _ = tx.send(Ok(()));
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            f.store(true, Ordering::SeqCst);
        });
    });
    rx.recv()
        .context("signal handling")?
        .map_err(|e| anyhow::anyhow!("signal handling: {e}"))?;
    Ok(flag)
}

/// Sleeps until `t` (Unix seconds), a little at a time, failing when the
/// run is told to stop or a role died.
fn wait_until(t: f64, stop: &AtomicBool, roles: &mut Roles) -> Result<()> {
    loop {
        if stop.load(Ordering::SeqCst) {
            bail!("stopped by a signal; every fault reverted");
        }
        if let Some(e) = roles.exited() {
            bail!("{e}");
        }
        let left = t - now();
        if left <= 0.0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs_f64(left.min(0.1)));
    }
}

/// One labelled episode of the run.
struct Episode {
    labels: Vec<Label>,
    guard: Option<FaultGuard>,
    /// The ledger key of a fault injected through the executor.
    key: Option<String>,
    /// Its node's CPU control file after the revert, as read then.
    after: Option<String>,
}

fn write_labels(path: &Path, episodes: &[Episode]) -> Result<()> {
    let mut text = String::new();
    for l in episodes.iter().flat_map(|e| &e.labels) {
        text += &serde_json::to_string(l)?;
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Starts the upload sink and `mpirun` with one rank per node; returns
/// when rank 0 has announced the workload's start time.
fn start_workload(tb: &Testbed, sc: &LiveScenario, roles: &mut Roles) -> Result<f64> {
    let dir = roles.dir.join("contrib");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("keel_push.py"), KEEL_PUSH_PY)?;
    let script = dir.join("keel_mpi.py");
    std::fs::write(&script, KEEL_MPI_PY)?;
    let script = script.display().to_string();
    let sink = format!("{}:{SINK_PORT}", Testbed::host_data_ip());
    let seconds = format!("{}", sc.seconds);
    let record = roles.dir.join("ranks");
    std::fs::create_dir_all(&record)?;
    let record = record.display().to_string();
    let child = Command::new(PYTHON)
        .args([&script, "--serve", "--sink", &sink, "--seconds"])
        .arg(format!("{}", sc.seconds + 60.0))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(roles.dir.join("sink.log"))?)
        .spawn()
        .context("starting the upload sink")?;
    let pid = child.id();
    roles.adopt("sink", child);
    if let Some(dir) = tb.sink_cgroup() {
        Testbed::enter(&dir, pid)?;
    }
    let net = format!("{}.0/24", testbed::DATA_NET);
    let mut mpirun = Command::new("mpirun");
    mpirun.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "--mca",
        "btl",
        "tcp,self",
    ]);
    for p in ["btl_tcp_if_include", "oob_tcp_if_include"] {
        mpirun.args(["--mca", p, &net]);
    }
    for i in 0..tb.nodes {
        if i > 0 {
            mpirun.arg(":");
        }
        let node = live::node_name(i);
        let argv: Vec<String> = [
            PYTHON,
            &script,
            "--push",
            &format!("udp://127.0.0.1:{PUSH_PORT}"),
            "--job",
            JOB,
            "--node",
            &node,
            "--sink",
            &sink,
            "--seconds",
            &seconds,
            "--record",
            &record,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        mpirun.args(["-np", "1"]).args(tb.rank_argv(i, &argv));
    }
    // The ranks reach mpirun's PMIx server from their namespaces over the
    // data network (by default it listens on loopback only).
    mpirun
        .env("PMIX_MCA_ptl_tcp_remote_connections", "1")
        .env("PMIX_MCA_ptl_tcp_if_include", &net)
        .env("PMIX_MCA_ptl_tcp_disable_ipv6_family", "1")
        .env("OPENBLAS_NUM_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(roles.dir.join("workload.err"))?);
    let mut child = mpirun.spawn().context("starting mpirun")?;
    let out = child.stdout.take().context("mpirun's output")?;
    roles.adopt("mpirun", child);
    let (tx, rx) = std::sync::mpsc::channel();
    let log = roles.dir.join("workload.log");
    std::thread::spawn(move || {
        let mut text = String::new();
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(t) = line
                .strip_prefix("start=")
                .and_then(|t| t.parse::<f64>().ok())
            {
                let _ = tx.send(t);
            }
            text += &line;
            text.push('\n');
            let _ = std::fs::write(&log, &text);
        }
    });
    rx.recv_timeout(Duration::from_secs(60)).map_err(|_| {
        anyhow::anyhow!(
            "the workload never started (see {})",
            roles.dir.join("workload.err").display()
        )
    })
}

/// The run itself, between the test bed's build and its removal.
fn episodes(
    sc: &LiveScenario,
    tb: &Testbed,
    dir: &Path,
    stop: &AtomicBool,
) -> Result<(Vec<Label>, Vec<Finding>, Vec<Value>)> {
    let mut roles = Roles::start(tb, dir)?;
    roles.sensors(tb)?;
    let ranks: Vec<String> = (0..tb.nodes)
        .map(|i| format!("--ranks={}={i}", live::node_name(i)))
        .collect();
    let mut args = vec!["job", "register", "--job", JOB];
    args.extend(ranks.iter().map(String::as_str));
    roles
        .ask_until(&args, Duration::from_secs(60))
        .context("registering the job with the controllers")?;
    let start = start_workload(tb, sc, &mut roles)?;
    eprintln!(
        "chaos: workload started; {} nodes, {:.0} s",
        tb.nodes, sc.seconds
    );
    let labels_path = dir.join("labels.jsonl");
    let mut eps: Vec<Episode> = sc
        .faults
        .iter()
        .map(|_| Episode {
            labels: Vec::new(),
            guard: None,
            key: None,
            after: None,
        })
        .collect();
    let at = roles.controller_at(0);
    for (offset, step) in live::schedule(sc) {
        wait_until(start + offset, stop, &mut roles)?;
        match step {
            Step::Start(i) if sc.faults[i].via_executor => {
                let f = sc.faults[i];
                let (key, onset) = inject_via_executor(&roles, &at, f)?;
                eprintln!(
                    "chaos: +{:.1}s {} fault through the executor: {key}",
                    onset - start,
                    f.cause.wire()
                );
                let node = live::node_name(f.node);
                eps[i].labels =
                    live::labels(f.cause, JOB, &node, f.node as u32, onset, onset + f.dur_s);
                eps[i].key = Some(key);
            }
            Step::Stop(i) if eps[i].key.is_some() => {
                // The controller rolls it back when its time is up (and
                // the executor at its own deadline): the ledger says when.
                let key = eps[i].key.clone().unwrap_or_default();
                let v =
                    chaos_inject::wait_for(&at, &key, &["rolled_back"], Duration::from_secs(15))?;
                let r = chaos_inject::report(&v, &[], &key);
                if r["status"] != "rolled_back" {
                    bail!("injection {key} not rolled back: {r}");
                }
                let end = r["end"].as_f64().unwrap_or_else(now);
                eps[i].after = tb.cgroup(sc.faults[i].node).map(|d| cpu_control(&d));
                eprintln!("chaos: +{:.1}s injection {key} rolled back", end - start);
                for l in &mut eps[i].labels {
                    l.end = end;
                }
            }
            Step::Start(i) => {
                let f = sc.faults[i];
                let guard = faults::inject(tb, f.cause, f.node, f.dur_s + 5.0)?;
                let onset = now();
                eprintln!(
                    "chaos: +{:.1}s {} fault: {}",
                    onset - start,
                    f.cause.wire(),
                    guard.description
                );
                let node = live::node_name(f.node);
                eps[i].labels =
                    live::labels(f.cause, JOB, &node, f.node as u32, onset, onset + f.dur_s);
                eps[i].guard = Some(guard);
            }
            Step::Stop(i) => {
                if let Some(mut g) = eps[i].guard.take() {
                    for e in g.revert() {
                        eprintln!("chaos: reverting: {e}");
                    }
                }
                let end = now();
                eprintln!("chaos: +{:.1}s fault {} reverted", end - start, i + 1);
                for l in &mut eps[i].labels {
                    l.end = end;
                }
            }
        }
        write_labels(&labels_path, &eps)?;
    }
    wait_until(start + sc.seconds + SETTLE_S, stop, &mut roles)?;
    let text = roles.ask_until(&["findings", "--json"], Duration::from_secs(20))?;
    let entries: Vec<Value> = serde_json::from_str(&text).context("the controller's findings")?;
    let (ledger, _) = chaos_inject::fetch(&at)?;
    let injections: Vec<Value> = eps
        .iter()
        .filter_map(|e| {
            let mut r = chaos_inject::report(&ledger, &entries, e.key.as_ref()?);
            r["cpu_after_revert"] = json!(e.after);
            Some(r)
        })
        .collect();
    let mut findings = Vec::new();
    let mut lines = String::new();
    for e in entries {
        let mut f: Finding =
            serde_json::from_value(e["finding"].clone()).context("a committed finding")?;
        // Scored at the moment it was committed.
        if let Some(opened) = e["opened"].as_f64().filter(|t| *t > 0.0) {
            f.ts = opened;
        }
        lines += &serde_json::to_string(&f)?;
        lines.push('\n');
        findings.push(f);
    }
    std::fs::write(dir.join("findings.jsonl"), lines)?;
    let labels = eps.into_iter().flat_map(|e| e.labels).collect();
    Ok((labels, findings, injections))
}

/// `keel chaos inject` of fault `f` on its rank, as an operator runs it;
/// returns the ledger key and the onset once the executor acknowledged.
fn inject_via_executor(
    roles: &Roles,
    at: &crate::ControllerAt,
    f: live::LiveFault,
) -> Result<(String, f64)> {
    let target = format!("job/{JOB}/rank/{}", f.node);
    let dur = format!("{}s", f.dur_s);
    let out = roles.ask(&[
        "chaos",
        "inject",
        "--cause",
        f.cause.wire(),
        "--target",
        &target,
        "--for",
        &dur,
    ])?;
    let key = out.trim().to_string();
    let v = chaos_inject::wait_for(
        at,
        &key,
        &["acknowledged", "failed", "rolled_back"],
        Duration::from_secs(10),
    )?;
    let r = chaos_inject::report(&v, &[], &key);
    if r["status"] != "acknowledged" {
        bail!("injection {key} not acknowledged: {r}");
    }
    let onset = chaos_inject::onset(&v, &key).context("the injection's onset")?;
    Ok((key, onset))
}

/// The CPU limit of the cgroup at `dir`: `cpu.max` (v2), else
/// `cpu.cfs_quota_us` (v1, -1 for none).
fn cpu_control(dir: &Path) -> String {
    ["cpu.max", "cpu.cfs_quota_us"]
        .iter()
        .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Each label with the first finding that detected it: (label, latency, cause).
fn detail(labels: &[Label], findings: &[Finding]) -> Vec<Value> {
    labels
        .iter()
        .map(|l| {
            let first = findings
                .iter()
                .filter(|f| {
                    f.kind == l.kind
                        && f.locus().is_some()
                        && f.locus() == l.locus()
                        && f.ts >= l.onset
                        && f.ts <= l.end + keel_detect::score::LATE_SLACK_S
                })
                .min_by(|a, b| a.ts.total_cmp(&b.ts));
            json!({
                "label": l,
                "committed": first.is_some(),
                "latency_s": first.map(|f| f.ts - l.onset),
                "cause": first.map(|f| f.cause),
                "evidence": first.map(|f| f.evidence.clone()),
            })
        })
        .collect()
}

/// `keel chaos run`.
pub fn run(o: RunOpts) -> Result<()> {
    let name = o.scenario.unwrap_or_else(|| live::DEFAULT_LIVE.to_string());
    let sc = live::live_scenario(&name)?;
    let missing = testbed::missing(&sc.needs());
    if !missing.is_empty() {
        bail!(
            "scenario {name} cannot run on this machine: {}",
            missing.join("; ")
        );
    }
    let stop = stop_flag()?;
    let dir = o
        .dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("keel-chaos-{}", std::process::id())));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = {
        let tb = Testbed::build(sc.nodes).context("building the namespace nodes")?;
        eprintln!(
            "chaos: {} nodes up ({:?}); files in {}",
            tb.nodes,
            tb.cpu,
            dir.display()
        );
        episodes(&sc, &tb, &dir, &stop)
        // The roles, the faults and then the test bed are gone here.
    };
    let left = testbed::leftovers();
    let (labels, findings, injections) = result?;
    let card = keel_detect::score::score(&labels, &findings);
    let episodes = detail(&labels, &findings);
    if o.json {
        let mut v = eval::to_json(&card);
        v["chaos"] = json!({
            "scenario": sc.name,
            "dir": dir,
            "episodes": episodes,
            "findings": findings,
            "injections": injections,
            "leftovers": left,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "scenario {} ({} nodes, {:.0} s): {}",
            sc.name, sc.nodes, sc.seconds, sc.about
        );
        for e in &episodes {
            let l = &e["label"];
            println!(
                "  {} {} rank {} node {}: {}",
                l["kind"].as_str().unwrap_or("?"),
                l["cause"].as_str().unwrap_or("?"),
                l["rank"],
                l["node"].as_str().unwrap_or("?"),
                match e["latency_s"].as_f64() {
                    Some(t) => format!(
                        "committed after {t:.2} s, cause {}",
                        e["cause"].as_str().unwrap_or("?")
                    ),
                    None => "not committed".into(),
                }
            );
        }
        for r in &injections {
            println!(
                "  injection {}: {}, reverted ({}); found: {}",
                r["key"].as_str().unwrap_or("?"),
                r["status"].as_str().unwrap_or("?"),
                r["cpu_after_revert"].as_str().unwrap_or("?"),
                match &r["finding"] {
                    Value::Null => "no".to_string(),
                    f => format!(
                        "{} cause {} after {:.2} s",
                        f["kind"].as_str().unwrap_or("?"),
                        f["cause"].as_str().unwrap_or("?"),
                        f["latency_s"].as_f64().unwrap_or(f64::NAN)
                    ),
                }
            );
        }
        print!("{}", eval::table(&card));
        println!("files: {}", dir.display());
        if !left.is_empty() {
            println!("left on this machine: {}", left.join(", "));
        }
    }
    if !left.is_empty() {
        bail!(
            "the run left {} things behind: {}",
            left.len(),
            left.join(", ")
        );
    }
    Ok(())
}

/// `keel chaos clean`: removes whatever an earlier run left (after a SIGKILL).
pub fn clean() -> Result<()> {
    for what in testbed::sweep() {
        eprintln!("removed {what}");
    }
    let left = testbed::leftovers();
    if !left.is_empty() {
        bail!("still there: {}", left.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_model::{Cause, FindingKind, Severity};

    fn finding(kind: FindingKind, cause: Cause, rank: Option<u32>, ts: f64) -> Finding {
        Finding {
            basis: None,
            gpu_instance: None,
            related: Vec::new(),
            ts,
            kind,
            cause,
            severity: Severity::Warning,
            confidence: 0.8,
            job: rank.map(|_| JOB.into()),
            node: Some("n03".into()),
            rank,
            gpu: None,
            device: None,
            evidence: vec!["e".into()],
        }
    }

    #[test]
    fn each_label_gets_its_first_matching_finding() {
        let labels = live::labels(live::LiveCause::Network, JOB, "n03", 2, 100.0, 110.0);
        let findings = vec![
            // Before the onset: not this episode's.
            finding(FindingKind::TpStraggler, Cause::Unknown, Some(2), 99.0),
            finding(FindingKind::TpStraggler, Cause::Network, Some(2), 101.5),
            finding(FindingKind::TpStraggler, Cause::Host, Some(2), 103.0),
            // Another rank: no match.
            finding(FindingKind::TpStraggler, Cause::Network, Some(1), 100.5),
        ];
        let d = detail(&labels, &findings);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0]["committed"], true);
        assert_eq!(d[0]["latency_s"].as_f64(), Some(1.5));
        assert_eq!(d[0]["cause"], "network");
        // No retransmit_storm finding: the storm label is not committed.
        assert_eq!(d[1]["committed"], false);
        assert!(d[1]["latency_s"].is_null());
        // The same scoring as `keel eval`: two false positives.
        let card = keel_detect::score::score(&labels, &findings);
        assert_eq!(card.overall().false_positives, 2);
    }

    #[test]
    fn labels_are_written_one_line_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.jsonl");
        let eps = vec![Episode {
            labels: live::labels(live::LiveCause::Host, JOB, "n02", 1, 5.0, 15.0),
            guard: None,
            key: None,
            after: None,
        }];
        write_labels(&path, &eps).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let back: Vec<Label> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, eps[0].labels);
    }
}
