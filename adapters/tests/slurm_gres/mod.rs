//! A one-node Slurm with GPUs faked as GRES, for `exec_slurm.rs` and
//! `exec_gpu.rs`.

use super::{sh, wait_for};
use std::process::Command;
use std::time::{Duration, Instant};

/// A second one-node Slurm beside the first, with GPUs faked as GRES: its
/// own slurm.conf (other ports, state and spool under a temporary folder),
/// `gres.conf` naming character devices made with mknod (major 195, as
/// NVIDIA's), so that Slurm allocates GPU indices as on a GPU node: two
/// whole GPUs (`h200`, indices 0-1) and two typed as MIG instances
/// (`1g.18gb`, indices 2-3). Its clients are reached through wrappers that
/// set `SLURM_CONF`. Stopped, and its folder removed, on drop.
pub struct GresSlurm {
    dir: tempfile::TempDir,
    pub bins: keel_adapters::executors::slurm::SlurmBins,
    jobs: Vec<u64>,
}

impl GresSlurm {
    fn conf(&self) -> String {
        self.dir.path().join("slurm.conf").display().to_string()
    }

    pub fn start(node: &str) -> GresSlurm {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        for sub in ["state", "spool", "log", "run", "bin"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        for i in 0..4 {
            let dev = format!("{d}/nvidia{i}");
            let (ok, _, err) = sh("mknod", &[&dev, "c", "195", &i.to_string()]);
            assert!(ok, "mknod {dev}: {err}");
        }
        // Four CPUs whatever the host has (config_overrides): three jobs of
        // one CPU each run at once.
        let cpus = 4;
        std::fs::write(
            dir.path().join("slurm.conf"),
            format!(
                "ClusterName=keelgres\nSlurmctldHost={node}\nSlurmctldPort=7917\nSlurmdPort=7918\n\
                 AuthType=auth/munge\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
                 SlurmUser=root\nSlurmdUser=root\nStateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
                 SlurmctldPidFile={d}/run/slurmctld.pid\nSlurmdPidFile={d}/run/slurmd.pid\n\
                 SlurmctldLogFile={d}/log/slurmctld.log\nSlurmdLogFile={d}/log/slurmd.log\n\
                 SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nReturnToService=2\n\
                 AccountingStorageType=accounting_storage/none\nJobCompType=jobcomp/none\nMpiDefault=none\n\
                 GresTypes=gpu\nSlurmdParameters=config_overrides\n\
                 NodeName={node} CPUs={cpus} RealMemory=1000 Gres=gpu:h200:2,gpu:1g.18gb:2 State=UNKNOWN\n\
                 PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("gres.conf"),
            format!("Name=gpu Type=h200 File={d}/nvidia[0-1]\nName=gpu Type=1g.18gb File={d}/nvidia[2-3]\n"),
        )
        .unwrap();
        let conf = dir.path().join("slurm.conf").display().to_string();
        // The wrappers name the real programs by path: a process that has
        // the wrappers' folder first on its PATH must not find them again.
        let wrap = |name: &str| {
            let p = dir.path().join("bin").join(name);
            let (_, real, _) = sh("sh", &["-c", &format!("command -v {name}")]);
            let real = real.trim();
            assert!(!real.is_empty(), "{name} not found: install slurm-wlm");
            std::fs::write(
                &p,
                format!("#!/bin/sh\nSLURM_CONF='{conf}' exec {real} \"$@\"\n"),
            )
            .unwrap();
            sh("chmod", &["+x", &p.display().to_string()]);
            p.display().to_string()
        };
        let bins = keel_adapters::executors::slurm::SlurmBins {
            squeue: wrap("squeue"),
            scontrol: wrap("scontrol"),
            scancel: wrap("scancel"),
        };
        let c = GresSlurm {
            dir,
            bins,
            jobs: Vec::new(),
        };
        let daemon = |program: &str, args: &[&str]| {
            let out = Command::new(program)
                .args(args)
                .env("SLURM_CONF", c.conf())
                .output()
                .unwrap_or_else(|e| panic!("{program}: {e}"));
            assert!(
                out.status.success(),
                "{program}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        daemon("slurmctld", &[]);
        wait_for("the GRES slurmctld answering", || {
            let (_, out, err) = sh(&c.bins.scontrol, &["ping"]);
            (out.contains("is UP"), format!("{out}{err}"))
        });
        daemon("slurmd", &["-N", node]);
        wait_for("the GRES node idle with its GPUs", || {
            let (_, out, err) = sh(&c.bins.scontrol, &["show", "node", "-o", node]);
            (
                out.contains("State=IDLE") && out.contains("gpu:h200:2"),
                format!("{out}{err}"),
            )
        });
        c
    }

    /// A job holding `gres` that sleeps 300 s.
    pub fn submit(&mut self, gres: &str) -> u64 {
        self.submit_wrap(gres, "sleep 300")
    }

    /// A job holding `gres` whose batch script is `script` (`sbatch --wrap`).
    pub fn submit_wrap(&mut self, gres: &str, script: &str) -> u64 {
        let out = Command::new("sbatch")
            .args([
                "--parsable",
                "--gres",
                gres,
                "-o",
                "/dev/null",
                "--chdir",
                "/tmp",
                "--wrap",
                script,
            ])
            .env("SLURM_CONF", self.conf())
            .output()
            .expect("sbatch runs");
        assert!(
            out.status.success(),
            "sbatch --gres {gres}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(';')
            .next()
            .unwrap_or("")
            .parse()
            .expect("a job id");
        self.jobs.push(id);
        id
    }
}

impl Drop for GresSlurm {
    fn drop(&mut self) {
        for j in &self.jobs {
            let _ = Command::new(&self.bins.scancel).arg(j.to_string()).output();
        }
        for pid in ["slurmd", "slurmctld"] {
            let f = self.dir.path().join("run").join(format!("{pid}.pid"));
            if let Ok(p) = std::fs::read_to_string(&f) {
                let p = p.trim().to_string();
                let _ = Command::new("kill").arg(&p).output();
                let end = Instant::now() + Duration::from_secs(10);
                while Instant::now() < end
                    && Command::new("kill")
                        .args(["-0", &p])
                        .output()
                        .is_ok_and(|o| o.status.success())
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}
