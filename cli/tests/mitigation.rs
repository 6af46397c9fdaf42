//! Closing the loop with real processes and real systems: 5 `keel
//! controller` replicas, a `keel correlator`, 2 `keel sensor`s fed through
//! their push endpoints, and a `keel executor` acting on a real HAProxy
//! (started by the test) and a real one-node Slurm
//! (`tests/setup/slurm-one-node.sh`).
//!
//! The GPUs and ranks are simulated by the test, and they react to what
//! keel does, so that verification is real: ranks of job `svc-a` report
//! their collectives, rank 2 arriving late while its replica's HAProxy
//! weight is above 32 (less traffic lets it keep up); a GPU of node n02
//! reports its memory full at 0% utilisation, and its engine hung, for as
//! long as the Slurm job is in `squeue`. The straggler must lead to one
//! `remap_requests` (HAProxy's weight visibly changes), verified when its
//! finding clears and carried out exactly once although the controller
//! leader is killed between the dispatch and the acknowledgement: the
//! executor is paused (SIGUSR1) before each dispatch and resumed (SIGUSR2)
//! after the kill, so the command reaches it from a dead leader, and the
//! next leader sends it again under the same key. The squatter leads to a
//! `reclaim_zombie` that waits for `keel action approve` (the job is
//! RUNNING), is delivered across a leader kill too, and is refused by the
//! executor's check at Slurm: the finding names the simulated node n02, and
//! Slurm runs the job elsewhere, so nothing is cancelled on a wrong target.
//!
//! Needs root (Slurm) and the Debian packages haproxy, slurm-wlm and munge;
//! without them it fails saying what is missing.

mod support;

use keel_adapters::executors::haproxy::RuntimeApi;
use serde_json::Value;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{free_port, ok, wait_for, Cluster};

const POLICY: &str = r#"
# Any straggler: take load off its replica. The simulated ranks carry no
# host, PCIe or GPU counters, so the cause keel attributes is not the point
# here (deploy/policies/default.toml matches on it).
[[rule]]
name = "straggler-remap"
action = "remap_requests"
mode = "auto"
cooldown_s = 300
verify_s = 60
on_failure = "rollback"
[rule.match]
kind = "tp_straggler"
[rule.params]
weight = 32

[[rule]]
name = "squatter-reclaim"
action = "reclaim_zombie"
mode = "auto"
cooldown_s = 3600
verify_s = 60
[rule.match]
kind = "gpu_squatter"
"#;

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn sh(program: &str, args: &[&str]) -> (bool, String) {
    match Command::new(program).args(args).env("LC_ALL", "C").output() {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        ),
        Err(e) => panic!("cannot run {program}: {e} (apt-get install -y slurm-wlm munge haproxy)"),
    }
}

fn setup_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/setup/slurm-one-node.sh")
}

/// Slurm and HAProxy, given back however the test ends.
struct Systems {
    haproxy: Child,
    socket: PathBuf,
    _servers: [TcpListener; 2],
    jobs: Vec<u64>,
    slurm_started: Vec<String>,
    _lock: std::fs::File,
}

impl Drop for Systems {
    fn drop(&mut self) {
        let _ = self.haproxy.kill();
        let _ = self.haproxy.wait();
        for j in &self.jobs {
            let _ = Command::new("scancel").arg(j.to_string()).output();
        }
        if !self.slurm_started.is_empty() {
            let mut args = vec![setup_script().display().to_string(), "stop".into()];
            args.extend(self.slurm_started.iter().cloned());
            let _ = Command::new("sh").args(&args).output();
        }
    }
}

fn start_systems(dir: &Path) -> Systems {
    let (_, uid) = sh("id", &["-u"]);
    assert_eq!(
        uid.trim(),
        "0",
        "this test starts munged, slurmctld and slurmd: it needs root, and runs as uid {}",
        uid.trim()
    );
    let lock = std::fs::File::create("/tmp/keel-slurm-test.lock").unwrap();
    lock.lock().unwrap();
    let (started, out) = sh("sh", &[&setup_script().display().to_string(), "start"]);
    assert!(started, "{} failed:\n{out}", setup_script().display());
    let slurm_started = out
        .lines()
        .find_map(|l| l.strip_prefix("started:"))
        .unwrap_or("")
        .split_whitespace()
        .map(String::from)
        .collect();
    let servers = [
        TcpListener::bind("127.0.0.1:0").unwrap(),
        TcpListener::bind("127.0.0.1:0").unwrap(),
    ];
    let socket = dir.join("haproxy.sock");
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n    stats socket {} mode 600 level admin\n\
             defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n\
             backend llm\n    balance roundrobin\n    server a 127.0.0.1:{} weight 100\n    server b 127.0.0.1:{} weight 100\n",
            socket.display(),
            servers[0].local_addr().unwrap().port(),
            servers[1].local_addr().unwrap().port(),
        ),
    )
    .unwrap();
    let haproxy = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start haproxy ({e}): apt-get install -y haproxy"));
    let s = Systems {
        haproxy,
        socket,
        _servers: servers,
        jobs: Vec::new(),
        slurm_started,
        _lock: lock,
    };
    wait_for(Duration::from_secs(20), || {
        RuntimeApi::new(&s.socket).command("show info").ok()
    })
    .expect("haproxy's stats socket never answered");
    s
}

fn weight(socket: &Path) -> Option<u32> {
    RuntimeApi::new(socket)
        .get_weight("llm", "a")
        .ok()
        .map(|w| w.current)
}

fn in_squeue(id: u64) -> bool {
    let (_, out) = sh("squeue", &["-h", "-o", "%i"]);
    out.lines().any(|l| l.trim() == id.to_string())
}

/// The simulated ranks and GPU: they report through the sensors' push
/// endpoints and react to HAProxy's weight and Slurm's queue.
struct Workload {
    straggle: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn run_workload(n01: u16, n02: u16, socket: PathBuf, squatter: u64) -> Workload {
    let w = Workload {
        straggle: Arc::new(AtomicBool::new(false)),
        stop: Arc::new(AtomicBool::new(false)),
        sent: Arc::new(AtomicU64::new(0)),
    };
    let (straggle, stop, sent) = (w.straggle.clone(), w.stop.clone(), w.sent.clone());
    std::thread::spawn(move || {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (mut seq, mut last_check, mut last_metric) = (0u64, 0.0, 0.0);
        let (mut heavy, mut held) = (true, true);
        while !stop.load(Ordering::Relaxed) {
            let now = unix_now();
            if now - last_check >= 0.25 {
                last_check = now;
                heavy = weight(&socket).is_none_or(|w| w > 32);
            }
            seq += 1;
            let late = straggle.load(Ordering::Relaxed) && heavy;
            let lines: Vec<String> = (0..4)
                .map(|rank| {
                    let wait = if rank == 2 && late { 0.001 } else { 0.010 };
                    format!(
                        r#"{{"t":"collective","ts":{now:.6},"node":"n01","job":"svc-a","rank":{rank},"op":"allreduce","seq":{seq},"bytes":1048576,"arrive":{:.6},"dur_us":{:.1}}}"#,
                        now - wait,
                        wait * 1e6
                    )
                })
                .collect();
            let _ = udp.send_to(lines.join("\n").as_bytes(), ("127.0.0.1", n01));
            if now - last_metric >= 1.0 {
                last_metric = now;
                held = held && in_squeue(squatter);
                let (used, free) = if held { (77_000, 2_000) } else { (0, 79_000) };
                let m = |name: &str, v: u32| {
                    format!(
                        r#"{{"t":"metric","ts":{now:.3},"node":"n02","name":"{name}","labels":{{"gpu":"0"}},"value":{v}}}"#
                    )
                };
                // The job's engine is hung while it holds the GPU: requests
                // wait and none run (what makes a RUNNING job's idle GPU a
                // squatter rather than an idle reservation).
                let (waiting, running) = if held { (5, 0) } else { (0, 0) };
                let e = |name: &str, v: u32| {
                    format!(
                        r#"{{"t":"metric","ts":{now:.3},"node":"n02","name":"{name}","labels":{{"model_name":"sim"}},"value":{v}}}"#
                    )
                };
                let text = [
                    m("DCGM_FI_DEV_FB_USED", used),
                    m("DCGM_FI_DEV_FB_FREE", free),
                    m("DCGM_FI_DEV_GPU_UTIL", 0),
                    e("vllm:num_requests_waiting", waiting),
                    e("vllm:num_requests_running", running),
                ]
                .join("\n");
                let _ = udp.send_to(text.as_bytes(), ("127.0.0.1", n02));
            }
            sent.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    w
}

fn signal(c: &Cluster, name: &str, sig: &str) {
    let (_, Some(child)) = c.procs.iter().find(|(n, _)| n == name).unwrap() else {
        panic!("{name} is not running");
    };
    ok(Command::new("kill").args([sig, &child.id().to_string()]));
}

/// The ledger's entries for `action`, from the first replica that answers.
fn entries(c: &Cluster, alive: &[usize], action: &str) -> Vec<Value> {
    alive
        .iter()
        .find_map(|&i| c.ask(i, &["actions", "--json"]))
        .and_then(|v| v["ledger"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["action"] == action)
        .collect()
}

fn status_of(c: &Cluster, alive: &[usize], action: &str) -> Option<String> {
    let e = entries(c, alive, action);
    e.first()?["status"].as_str().map(String::from)
}

/// Pauses the executor, lets `trigger` start the condition, waits for the
/// action's dispatch, kills the leader, resumes the executor; returns the
/// replicas still alive.
fn kill_leader_between_dispatch_and_ack(
    c: &mut Cluster,
    alive: &[usize],
    action: &str,
    within: Duration,
    trigger: impl FnOnce() + Send + 'static,
) -> Vec<usize> {
    signal(c, "executor", "-USR1");
    let trigger = std::thread::spawn(trigger);
    // Sent by the leader and received, never acknowledged.
    let held = format!("\"action\":\"{action}\"");
    wait_for(within, || {
        let log = std::fs::read_to_string(c.dir.join("executor.log")).ok()?;
        log.lines()
            .any(|l| l.contains("command held: paused") && l.contains(&held))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{action} never reached the executor\n{}", c.logs()));
    assert_eq!(status_of(c, alive, action).as_deref(), Some("dispatched"));
    trigger.join().expect("the trigger failed");
    let leader = c.leader(alive).expect("no leader");
    c.kill(&format!("ctl-{leader}"));
    signal(c, "executor", "-USR2");
    alive
        .iter()
        .copied()
        .filter(|i| *i as u64 + 1 != leader)
        .collect()
}

#[test]
fn findings_are_mitigated_through_real_haproxy_and_slurm_once_across_leader_kills() {
    // Every process of this test logs JSON lines (the only test of this
    // binary: no other thread reads the environment).
    std::env::set_var("KEEL_LOG_FORMAT", "json");
    let dir = std::env::temp_dir().join(format!("keel-mitigation-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut sys = start_systems(&dir);
    let (_, out) = sh(
        "sbatch",
        &[
            "--parsable",
            "-J",
            "keel-squatter",
            "-o",
            "/dev/null",
            "--chdir",
            "/tmp",
            "--wrap",
            "sleep 600",
        ],
    );
    let squatter: u64 = out
        .trim()
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("sbatch: {out}"));
    sys.jobs.push(squatter);
    assert!(wait_for(Duration::from_secs(30), || in_squeue(squatter)
        .then_some(()))
    .is_some());
    assert_eq!(weight(&sys.socket), Some(100));

    let mut c = Cluster::start(&dir, 5);
    let controllers = c.controllers_toml();
    c.start_correlators(&["corr-a"]);
    let push = [free_port(), free_port()];
    for (node, port) in [("n01", push[0]), ("n02", push[1])] {
        let creds = c.issue("sensor", node);
        let cfg = format!(
            "node = \"{node}\"\ncredentials = \"{}\"\n{controllers}\n[[source]]\nkind = \"push\"\nlisten = \"udp://127.0.0.1:{port}\"\n",
            creds.display()
        );
        let path = dir.join(format!("sensor-{node}.toml"));
        std::fs::write(&path, cfg).unwrap();
        c.spawn(&format!("sensor-{node}"), "sensor", &path);
    }
    let creds = c.issue("executor", "exec-1");
    let cfg = format!(
        "credentials = \"{}\"\nstate_dir = \"{}\"\n{controllers}\n[slurm]\n\n[haproxy]\nsocket = \"{}\"\n[haproxy.replicas]\nsvc-a = \"llm/a\"\n",
        creds.display(),
        dir.join("executor-state").display(),
        sys.socket.display()
    );
    let path = dir.join("executor.toml");
    std::fs::write(&path, cfg).unwrap();
    c.spawn("executor", "executor", &path);

    let mut alive: Vec<usize> = (0..5).collect();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    wait_for(Duration::from_secs(30), || {
        c.ask(0, &["policy", "apply", policy.to_str().unwrap()])
    })
    .unwrap_or_else(|| panic!("policy never applied\n{}", c.logs()));
    for (job, ranks) in [("svc-a", "n01=0,1,2,3"), (&*squatter.to_string(), "n02=0")] {
        wait_for(Duration::from_secs(30), || {
            c.ask(0, &["job", "register", "--job", job, "--ranks", ranks])
        })
        .unwrap_or_else(|| panic!("job {job} never registered\n{}", c.logs()));
    }
    wait_for(Duration::from_secs(30), || {
        let v = c.ask(0, &["actions", "--json"])?;
        v["executors"].get("exec-1").map(|_| ())
    })
    .unwrap_or_else(|| panic!("the executor never greeted\n{}", c.logs()));

    // Healthy first, so the ranks' habits are learned; then the straggler.
    let work = run_workload(push[0], push[1], sys.socket.clone(), squatter);
    std::thread::sleep(Duration::from_secs(5));
    alive = kill_leader_between_dispatch_and_ack(
        &mut c,
        &alive,
        "remap_requests",
        Duration::from_secs(60),
        {
            let straggle = work.straggle.clone();
            move || straggle.store(true, Ordering::Relaxed)
        },
    );
    wait_for(Duration::from_secs(90), || {
        (status_of(&c, &alive, "remap_requests").as_deref() == Some("verified")).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "remap never verified: {:?}\n{}",
            entries(&c, &alive, "remap_requests"),
            c.logs()
        )
    });
    assert_eq!(weight(&sys.socket), Some(32), "HAProxy's weight for llm/a");
    let remap = entries(&c, &alive, "remap_requests");
    assert_eq!(remap.len(), 1, "{remap:?}");
    assert_eq!(remap[0]["target"], "job/svc-a");
    assert!(
        remap[0]["dispatches"].as_u64() >= Some(2),
        "not sent again by the new leader: {remap:?}"
    );

    // `keel policy explain` says which rule matched and what the ledger holds.
    let explain = alive
        .iter()
        .find_map(|&i| c.ask_text(i, &["policy", "explain", "1"]))
        .expect("no replica explains finding 1");
    assert!(
        explain.contains("straggler-remap (remap_requests): matched"),
        "{explain}"
    );
    assert!(explain.contains("verified"), "{explain}");

    // A second version of the policy: reclaims now wait for a person.
    let v2 = dir.join("policy-v2.toml");
    std::fs::write(
        &v2,
        POLICY.replace(
            "action = \"reclaim_zombie\"\nmode = \"auto\"",
            "action = \"reclaim_zombie\"\nmode = \"approve\"",
        ),
    )
    .unwrap();
    let ctl = alive[0];
    c.ask(ctl, &["policy", "apply", v2.to_str().unwrap()])
        .unwrap_or_else(|| panic!("policy v2 not applied\n{}", c.logs()));

    // The squatter: its finding comes once its engine has been hung for 30 s
    // (requests waiting, none running) with the memory full at 0%; the
    // reclaim is planned, waits for approval, and nothing reaches Slurm
    // until `keel action approve`.
    let approver = c.view();
    alive = kill_leader_between_dispatch_and_ack(
        &mut c,
        &alive,
        "reclaim_zombie",
        Duration::from_secs(150),
        move || {
            let planned = wait_for(Duration::from_secs(150), || {
                let e = entries(&approver, &[ctl], "reclaim_zombie");
                (e.first()?["status"] == "planned").then_some(())
            });
            assert!(planned.is_some(), "the reclaim was never planned");
            std::thread::sleep(Duration::from_secs(2));
            assert_eq!(
                entries(&approver, &[ctl], "reclaim_zombie")[0]["status"],
                "planned",
                "acted without approval"
            );
            assert!(in_squeue(squatter), "the job went without approval");
            approver
                .ask_text(ctl, &["action", "approve", "f2/"])
                .expect("keel action approve failed");
        },
    );
    // The executor checks the target at Slurm at the moment of acting: the
    // finding is about the simulated node n02, and Slurm runs the job on
    // this machine's node, so `scancel` is refused with the reason, and the
    // job keeps running. (A reclaim whose target holds is carried out in
    // adapters/tests/exec_slurm.rs, on a Slurm with GPUs.)
    let failed = wait_for(Duration::from_secs(120), || {
        let e = entries(&c, &alive, "reclaim_zombie");
        let e = e.first()?;
        (e["status"] == "failed").then(|| e["detail"].as_str().unwrap_or("").to_string())
    })
    .unwrap_or_else(|| {
        panic!(
            "reclaim never refused: {:?}\n{}",
            entries(&c, &alive, "reclaim_zombie"),
            c.logs()
        )
    });
    assert!(
        failed.contains("does not run on it") && failed.contains("not cancelled"),
        "{failed}"
    );
    assert!(
        in_squeue(squatter),
        "job {squatter} was cancelled on a wrong target"
    );
    let _ = sh("scancel", &[&squatter.to_string()]);
    // The executor's discovery sees it leave Slurm's queue: keel knows it ended.
    let ended = wait_for(Duration::from_secs(60), || {
        let job = squatter.to_string();
        let s = alive
            .iter()
            .find_map(|&i| c.ask(i, &["jobs", "--json", "--job", &job]))?;
        let state = s.as_array()?.first()?["state"].as_str()?.to_string();
        matches!(
            state.as_str(),
            "COMPLETED"
                | "FAILED"
                | "TIMEOUT"
                | "OUT_OF_MEMORY"
                | "CANCELLED"
                | "NODE_FAIL"
                | "PREEMPTED"
        )
        .then_some(())
    });
    assert!(
        ended.is_some(),
        "keel never learned that job {squatter} ended\n{}",
        c.logs()
    );
    // The GPU is watched by its node's sensor, whatever became of the job
    // and its correlator: the finding was reported by n02's sensor, and it
    // closes once the memory is released.
    let closed = wait_for(Duration::from_secs(60), || {
        let all = alive
            .iter()
            .find_map(|&i| c.ask(i, &["findings", "--json"]))?;
        let f = all
            .as_array()?
            .iter()
            .find(|f| f["finding"]["kind"] == "gpu_squatter")?
            .clone();
        (!f["closed"].is_null()).then_some(f)
    })
    .unwrap_or_else(|| panic!("the squatter finding never closed\n{}", c.logs()));
    assert!(
        closed["reported_by"]
            .as_str()
            .is_some_and(|r| r.starts_with("findings/sensor:n02@")),
        "{closed:#}"
    );
    let reclaim = entries(&c, &alive, "reclaim_zombie");
    assert_eq!(reclaim.len(), 1, "{reclaim:?}");
    assert_eq!(reclaim[0]["target"], format!("job/{squatter}"));
    assert!(reclaim[0]["dispatches"].as_u64() >= Some(2), "{reclaim:?}");

    // Exactly once on the systems: the executor carried each key out once
    // and answered every other delivery "already done".
    let log = std::fs::read_to_string(dir.join("executor.log")).unwrap();
    // Every delivery of the reclaim (one per leader) was refused, never
    // carried out.
    let reclaim_key = reclaim[0]["key"].as_str().unwrap();
    let deliveries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("command carried out") && l.contains(reclaim_key))
        .collect();
    assert!(!deliveries.is_empty());
    assert!(
        deliveries.iter().all(|l| l.contains("\"ok\":false")),
        "{deliveries:#?}"
    );
    let key = remap[0]["key"].as_str().unwrap();
    let carried: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("command carried out") && l.contains(key))
        .collect();
    let fresh = carried
        .iter()
        .filter(|l| !l.contains("already done"))
        .count();
    assert_eq!(fresh, 1, "{key} carried out {fresh} times: {carried:#?}");
    assert!(carried.len() >= 2, "{key}: {carried:#?}");
    // One grep for the action's key in every process's log follows it from
    // the finding's plan through dispatch and acknowledgement to
    // verification, whichever replica led each step.
    let mut steps: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap_or_default().lines() {
            if !line.contains(key) {
                continue;
            }
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("{}: not a JSON log line ({e}): {line}", path.display())
            });
            let f = &v["fields"];
            let step = match f["message"].as_str().unwrap_or_default() {
                "ledger" => format!("ledger {}", f["to"].as_str().unwrap_or("?")),
                m => m.to_string(),
            };
            if step == "planning" {
                assert!(f["finding"].as_u64().is_some(), "{line}");
            }
            steps.push(step);
        }
    }
    for want in [
        "planning",
        "ledger dispatched",
        "sending command",
        "command carried out",
        "ledger acknowledged",
        "ledger verified",
    ] {
        assert!(
            steps.iter().any(|s| s == want),
            "grep {key}: no {want:?} among {steps:?}"
        );
    }
    // Every transition is in the audit trail, ending verified.
    let audit = alive
        .iter()
        .find_map(|&i| c.ask(i, &["actions", "--json"]))
        .unwrap()["audit"]
        .clone();
    let trail: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["key"] == remap[0]["key"])
        .filter_map(|a| a["to"].as_str())
        .collect();
    assert_eq!(
        trail,
        [
            "planned",
            "dispatched",
            "dispatched",
            "acknowledged",
            "verified"
        ],
        "{audit:#}"
    );
    let approved = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == reclaim[0]["key"] && a["to"] == "approved")
        .unwrap_or_else(|| panic!("no approval in the audit trail: {audit:#}"));
    // Who approved is the certificate that asked (the test's operator
    // certificate is named `op`), not a name the CLI chose.
    assert!(
        approved["by"].as_str().unwrap().starts_with("operator:op/"),
        "{approved}"
    );
    assert!(work.sent.load(Ordering::Relaxed) > 0);
}
