//! `keel chaos run gpu`: the live run on one GPU host (two GPUs, a
//! two-rank NCCL job; `docs/chaos.md`, "On GPUs"), carried out by the
//! driver `contrib/keel_gpu_chaos.py` that this binary carries. It refuses
//! to start, naming each missing piece, where the machine lacks a GPU,
//! torch or NVML.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

const DRIVER: &str = include_str!("../../contrib/keel_gpu_chaos.py");
const JOB: &str = include_str!("../../contrib/keel_torch_job.py");
const PUSH: &str = include_str!("../../contrib/keel_push.py");

/// Its line in `keel chaos run --list`.
pub const ABOUT: &str = "one host, 2 GPUs: gpu, host and pcie stragglers in a two-rank NCCL job, then a squatter (needs the GPUs, torch, and keel built with --features nvml)";

/// The python that has torch: `KEEL_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("KEEL_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// What the machine lacks for the GPU run, each with its remedy.
pub fn missing() -> Vec<String> {
    let mut out = Vec::new();
    if !cfg!(feature = "nvml") {
        out.push("NVML: this keel was built without it (cargo build --release -p keel-cli --features nvml)".into());
    }
    let gpus = Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or(0, |o| String::from_utf8_lossy(&o.stdout).lines().count());
    if gpus < 2 {
        out.push(format!(
            "GPUs: {gpus} found by `nvidia-smi -L`, 2 needed (an NVIDIA driver and two GPUs)"
        ));
    }
    let torch = Command::new(python())
        .args([
            "-c",
            "import torch, sys; sys.exit(0 if torch.cuda.device_count() >= 2 else 1)",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !torch {
        out.push(format!(
            "torch: `{}` cannot import torch with two CUDA devices (set KEEL_PYTHON to the python that can)",
            python()
        ));
    }
    out
}

/// Runs the driver into `dir`, passing `--json`'s wish on as its summary.
pub fn run(dir: Option<PathBuf>) -> Result<()> {
    let missing = missing();
    if !missing.is_empty() {
        bail!(
            "scenario gpu cannot run on this machine: {}",
            missing.join("; ")
        );
    }
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("keel-chaos-gpu-{}", std::process::id()))
    });
    let contrib = dir.join("contrib");
    std::fs::create_dir_all(&contrib).with_context(|| format!("creating {}", contrib.display()))?;
    for (name, text) in [
        ("keel_gpu_chaos.py", DRIVER),
        ("keel_torch_job.py", JOB),
        ("keel_push.py", PUSH),
    ] {
        std::fs::write(contrib.join(name), text)?;
    }
    let keel = std::env::current_exe().context("this keel's path")?;
    let status = Command::new(python())
        .arg(contrib.join("keel_gpu_chaos.py"))
        .arg("--keel")
        .arg(&keel)
        .arg("--dir")
        .arg(run_dir(&dir))
        .status()
        .context("starting the GPU driver")?;
    if !status.success() {
        bail!(
            "the GPU run failed ({status}); its files are in {}",
            dir.display()
        );
    }
    Ok(())
}

fn run_dir(dir: &Path) -> PathBuf {
    dir.join("run")
}
