//! Stand-ins and probes for tests of GPU processes on a machine without a
//! GPU, shared by `exec_gpu.rs` and the CLI's end-to-end reclaim test:
//! a stand-in `nvidia-smi` (the NVIDIA driver's tool) that lists real
//! processes as holding GPUs, and reads of `/proc` and Slurm.

#![allow(dead_code)]

use super::sh;
use super::slurm_gres::GresSlurm;
use std::path::Path;
use std::process::Command;

pub const UUIDS: [&str; 4] = [
    "GPU-00000000-1111-2222-3333-000000000000",
    "GPU-00000000-1111-2222-3333-000000000001",
    "GPU-00000000-1111-2222-3333-000000000002",
    "GPU-00000000-1111-2222-3333-000000000003",
];

/// Kills, by pid, what the test started that may outlive it (a leftover
/// escapes Slurm's tracking on purpose), however the test ends.
pub struct Leftovers(pub Vec<u32>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for p in &self.0 {
            if alive(*p) {
                let _ = Command::new("kill")
                    .args(["-s", "KILL", &p.to_string()])
                    .output();
            }
        }
    }
}

/// Whether pid runs (a zombie has exited).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|st| st != "Z")
        })
        .unwrap_or(false)
}

/// The live processes named `comm` whose environment says `SLURM_JOB_ID=job`.
pub fn pids_of_job(job: u64, comm: &str) -> Vec<u32> {
    let want = format!("SLURM_JOB_ID={job}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let name = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        if name.trim() == comm && env.split(|b| *b == 0).any(|v| v == want.as_bytes()) && alive(pid)
        {
            out.push(pid);
        }
    }
    out
}

/// Slurm's state of `job` (`scontrol show job`), or what it said instead.
pub fn job_state(g: &GresSlurm, job: u64) -> String {
    let (_, out, err) = sh(&g.bins.scontrol, &["show", "job", "-o", &job.to_string()]);
    out.split_whitespace()
        .find_map(|f| f.strip_prefix("JobState="))
        .map_or(format!("{out}{err}"), String::from)
}

/// The stand-in `nvidia-smi` in `dir`: GPUs 0-3, and the processes of
/// `apps` (GPU index, pid, MiB).
pub fn fake_nvidia_smi(dir: &Path, apps: &[(usize, u32, u32)]) -> String {
    let gpus: String = UUIDS
        .iter()
        .enumerate()
        .map(|(i, u)| format!("{i}, {u}\n"))
        .collect();
    let procs: String = apps
        .iter()
        .map(|(g, p, m)| format!("{}, {p}, {m}\n", UUIDS[*g]))
        .collect();
    std::fs::write(dir.join("gpus.csv"), gpus).unwrap();
    std::fs::write(dir.join("apps.csv"), procs).unwrap();
    let d = dir.display();
    let script = dir.join("nvidia-smi");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             # Stands in for the NVIDIA driver's nvidia-smi: the same CSV, for\n\
             # the two queries the GPU process executor makes. A process is\n\
             # listed while it lives (not a zombie), as the driver lists it\n\
             # while it holds the GPU.\n\
             case \"$1 $2\" in\n\
             '--query-gpu=index,uuid --format=csv,noheader') cat '{d}/gpus.csv' ;;\n\
             '--query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader,nounits')\n\
               while IFS=, read -r uuid pid mib; do\n\
                 pid=$(echo $pid)\n\
                 state=$(sed 's/.*) //' /proc/$pid/stat 2>/dev/null | cut -d' ' -f1)\n\
                 [ -n \"$state\" ] && [ \"$state\" != Z ] && echo \"$uuid,$pid,$mib\"\n\
               done < '{d}/apps.csv'; true ;;\n\
             *) echo \"unexpected: $*\" >&2; exit 2 ;;\n\
             esac\n"
        ),
    )
    .unwrap();
    sh("chmod", &["+x", &script.display().to_string()]);
    script.display().to_string()
}
