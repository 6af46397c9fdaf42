//! The squatter loop end to end on a real Slurm with GPUs, with the
//! shipped default policy: 3 `keel controller` replicas, the node's `keel
//! sensor` and a `keel executor` with `[slurm]` (discovery) and `[gpu]`
//! (the node's GPU processes), against the one-node Slurm whose GPUs are
//! faked as GRES (`adapters/tests/slurm_gres`) and real processes.
//!
//! Two jobs share the node. Job B serves on its GPU; job A starts a
//! process that leaves Slurm's tracking (its own session) and fails, so
//! the process keeps "its" GPU. keel learns both jobs and their GPU
//! indices from Slurm, names job A and A's GPU (`job_ended`), and its
//! node executor kills only the leftover; the finding closes and the
//! action is verified, while B's process runs on. Then keel's record of B
//! is made wrong (B registered by hand on another GPU, as a broken prolog
//! would): keel now takes B's GPU for one no job holds, plans a reclaim,
//! and the node executor refuses it at the source — the process belongs
//! to running job B — which `keel actions` shows with the reason.
//!
//! There is no GPU here: the readings are simulated by the test (a GPU is
//! full while a process the stand-in `nvidia-smi` lists on it lives), and
//! `nvidia-smi` is a script standing in for the driver's tool
//! (`adapters/tests/gpu_host`). Slurm, `/proc`, the processes and `kill`
//! are real. Needs root and the Debian packages slurm-wlm and munge.

mod support;

#[path = "../../adapters/tests/gpu_host/mod.rs"]
mod gpu_host;
#[path = "../../adapters/tests/slurm_gres/mod.rs"]
mod slurm_gres;
#[path = "../../adapters/tests/slurm_host/mod.rs"]
mod slurm_host;

use gpu_host::{alive, fake_nvidia_smi, job_state, pids_of_job, Leftovers};
use serde_json::Value;
use slurm_gres::GresSlurm;
use slurm_host::{sh, wait_for};
use std::net::UdpSocket;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{free_port, Cluster};

const FB_MIB: u64 = 143_771; // an H200

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The GPU index Slurm allocated to `job` (`scontrol show job -d`'s IDX).
fn gpu_of(g: &GresSlurm, job: u64) -> u32 {
    let (_, out, err) = sh(&g.bins.scontrol, &["show", "job", "-d", &job.to_string()]);
    out.split("IDX:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no GPU index for job {job}: {out}{err}"))
}

/// The node's GPUs as dcgm-exporter would report them, once a second: a
/// GPU is 92 % full at 0 % utilisation while a process listed on it lives,
/// and empty otherwise.
fn simulate_gpus(node: String, port: u16, on: Vec<(u32, u32)>, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        while !stop.load(Ordering::Relaxed) {
            let now = unix_now();
            let mut lines = Vec::new();
            for gpu in 0..4u32 {
                let held = on.iter().any(|&(g, pid)| g == gpu && alive(pid));
                let used = if held { FB_MIB * 92 / 100 } else { 0 };
                for (name, v) in [
                    ("DCGM_FI_DEV_FB_USED", used),
                    ("DCGM_FI_DEV_FB_FREE", FB_MIB - used),
                    ("DCGM_FI_DEV_GPU_UTIL", 0),
                ] {
                    lines.push(format!(
                        r#"{{"t":"metric","ts":{now:.3},"node":"{node}","name":"{name}","labels":{{"gpu":"{gpu}"}},"value":{v}}}"#
                    ));
                }
            }
            let _ = udp.send_to(lines.join("\n").as_bytes(), ("127.0.0.1", port));
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}

/// The ledger's `reclaim_zombie` entry for `target`, once `done` holds.
fn reclaim_entry(c: &Cluster, target: &str, done: impl Fn(&Value) -> bool) -> Value {
    support::wait_for(Duration::from_secs(120), || {
        let v = (0..3).find_map(|i| c.ask(i, &["actions", "--json"]))?;
        let e = v["ledger"]
            .as_array()?
            .iter()
            .find(|e| e["action"] == "reclaim_zombie" && e["target"] == target)?
            .clone();
        done(&e).then_some(e)
    })
    .unwrap_or_else(|| {
        let v = (0..3).find_map(|i| c.ask(i, &["actions", "--json"]));
        let f = (0..3).find_map(|i| c.ask(i, &["findings", "--json"]));
        panic!(
            "no settled reclaim of {target}\nactions: {v:#?}\nfindings: {f:#?}\n{}",
            c.logs()
        )
    })
}

#[test]
fn a_leftover_is_reclaimed_on_the_right_gpu_and_a_wrong_target_is_refused_at_the_source() {
    let host = slurm_host::start();
    let node = host.node.clone();
    let mut g = GresSlurm::start(&node);
    let dir = std::env::temp_dir().join(format!("keel-reclaim-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let mut c = Cluster::start(&dir, 3);
    let controllers = c.controllers_toml();
    let push = free_port();
    let creds = c.issue("sensor", &node);
    let cfg = format!(
        "node = \"{node}\"\ncredentials = \"{}\"\n{controllers}\n[[source]]\nkind = \"push\"\nlisten = \"udp://127.0.0.1:{push}\"\n",
        creds.display()
    );
    let path = dir.join("sensor.toml");
    std::fs::write(&path, cfg).unwrap();
    c.spawn("sensor", "sensor", &path);
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policies/default.toml");
    support::wait_for(Duration::from_secs(30), || {
        c.ask(0, &["policy", "apply", policy.to_str().unwrap()])
    })
    .unwrap_or_else(|| panic!("the default policy never applied\n{}", c.logs()));

    // The node's executor reads the GRES Slurm through its wrappers, and
    // discovers the jobs from their start.
    let nvidia_smi = fake_nvidia_smi(&dir, &[]);
    let creds = c.issue("executor", "exec-1");
    let cfg = format!(
        "credentials = \"{}\"\nstate_dir = \"{}\"\nnodes = [\"{node}\"]\n{controllers}\n\
         [slurm]\ndiscover_every_s = 1\nranks_per_node = 1\n\n\
         [gpu]\nnvidia_smi = \"{nvidia_smi}\"\ngrace_s = 2\nscontrol = \"{}\"\n\n[log]\n",
        creds.display(),
        dir.join("executor-state").display(),
        g.bins.scontrol,
    );
    let path = dir.join("executor.toml");
    std::fs::write(&path, cfg).unwrap();
    let wrappers = Path::new(&g.bins.scontrol)
        .parent()
        .unwrap()
        .display()
        .to_string();
    let path_env = format!("{wrappers}:{}", std::env::var("PATH").unwrap_or_default());
    c.spawn_with_env("executor", "executor", &path, &[("PATH", &path_env)]);

    // B serves on its GPU; A leaves a process behind and fails.
    let b = g.submit("gpu:h200:1");
    let a = g.submit_wrap(
        "gpu:h200:1",
        "setsid sleep 600 </dev/null >/dev/null 2>&1 & sleep 5; exit 1",
    );
    // Slurm shows the GPU indices of running jobs only.
    let mut ga = None;
    wait_for("A running", || {
        let sa = job_state(&g, a);
        if sa == "RUNNING" {
            ga = Some(gpu_of(&g, a));
        }
        (ga.is_some(), sa)
    });
    let (ga, gb) = (ga.unwrap(), gpu_of(&g, b));
    assert_ne!(ga, gb);
    let mut left = Leftovers(Vec::new());
    let (mut serving, mut leftover) = (Vec::new(), Vec::new());
    wait_for("B running, A failed with its leftover", || {
        serving = pids_of_job(b, "sleep");
        leftover = pids_of_job(a, "sleep");
        let (sb, sa) = (job_state(&g, b), job_state(&g, a));
        (
            sb == "RUNNING" && sa == "FAILED" && serving.len() == 1 && leftover.len() == 1,
            format!("B {sb} {serving:?}, A {sa} {leftover:?}"),
        )
    });
    let (bp, lp) = (serving[0], leftover[0]);
    left.0.push(lp);
    fake_nvidia_smi(
        &dir,
        &[(ga as usize, lp, 80_000), (gb as usize, bp, 90_000)],
    );

    let stop = Arc::new(AtomicBool::new(false));
    simulate_gpus(node.clone(), push, vec![(ga, lp), (gb, bp)], stop.clone());
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop = Stop(stop);

    // keel names job A and A's GPU, and kills only the leftover.
    let target = format!("node/{node}/gpu/{ga}");
    let done = reclaim_entry(&c, &target, |e| {
        matches!(e["status"].as_str(), Some("verified" | "failed"))
    });
    assert_eq!(done["status"], "verified", "{done:#}");
    assert_eq!(done["params"]["job"], a.to_string(), "{done:#}");
    assert!(!alive(lp), "the leftover {lp} still runs");
    assert!(alive(bp), "B's process {bp} was killed");
    assert_eq!(job_state(&g, b), "RUNNING");
    let findings = (0..3)
        .find_map(|i| c.ask(i, &["findings", "--json"]))
        .unwrap();
    let squat: Vec<&Value> = findings
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["finding"]["kind"] == "gpu_squatter")
        .collect();
    assert_eq!(squat.len(), 1, "{findings:#}");
    let f = &squat[0]["finding"];
    assert_eq!(
        (f["job"].as_str(), f["gpu"].as_u64(), f["basis"].as_str()),
        (
            Some(&*a.to_string()),
            Some(u64::from(ga)),
            Some("job_ended")
        ),
        "{f:#}"
    );
    assert!(!squat[0]["closed"].is_null(), "{:#}", squat[0]);

    // keel's record of B goes wrong: B registered on another GPU. B's real
    // GPU now looks like one no job holds; the reclaim planned for it is
    // refused on the node, where the process is seen to be B's.
    let wrong = (0..4u32).find(|x| *x != ga && *x != gb).unwrap();
    support::wait_for(Duration::from_secs(30), || {
        c.ask(
            0,
            &[
                "job",
                "register",
                "--job",
                &b.to_string(),
                "--ranks",
                &format!("{node}=0"),
                "--node-gpus",
                &format!("{node}={wrong}"),
            ],
        )
    })
    .unwrap_or_else(|| panic!("B never registered by hand\n{}", c.logs()));
    let refused = reclaim_entry(&c, &format!("node/{node}/gpu/{gb}"), |e| {
        matches!(e["status"].as_str(), Some("verified" | "failed"))
    });
    assert_eq!(refused["status"], "failed", "{refused:#}");
    // The executor's answer, as the audit trail recorded it.
    let audit = (0..3)
        .find_map(|i| c.ask(i, &["actions", "--json"]))
        .unwrap()["audit"]
        .clone();
    let detail: String = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["key"] == refused["key"])
        .filter_map(|e| e["detail"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        detail.contains(&format!("pid {bp}"))
            && detail.contains(&format!("running job {b} (RUNNING)"))
            && detail.contains("not killed"),
        "{refused:#}\n{detail}"
    );
    assert!(alive(bp), "B's process {bp} was killed on a wrong target");
    assert_eq!(job_state(&g, b), "RUNNING");
    // `keel actions` (the table) shows both, with the reason in the audit.
    let (ok, table, err) = c.run_at(0, &["actions"]);
    assert!(ok, "{err}");
    assert!(table.contains(&format!("node/{node}/gpu/{ga}")), "{table}");
    assert!(
        table.contains(&format!("running job {b} (RUNNING)")),
        "{table}"
    );
}
