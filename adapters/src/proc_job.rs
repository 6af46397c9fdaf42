//! Which Slurm job a process belongs to, read from `/proc`: a `job_<id>`
//! component of `/proc/PID/cgroup` (as Slurm's proctrack/cgroup places
//! tasks), else `SLURM_JOB_ID` in `/proc/PID/environ` (proctrack/linuxproc),
//! else none. The GPU process executor asks it before killing a process;
//! the push endpoint asks it of each sender, to let a process report only
//! for its own job.
//!
//! The cgroup is set by `slurmstepd` and a job's processes cannot leave it;
//! the environment is the process's own, so a process outside every Slurm
//! cgroup may claim any job by setting `SLURM_JOB_ID`. The parsers are
//! sans-IO; [`job_of`] is the thin read around them.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The longest `/proc/PID/environ` read (Linux allows a few MiB; a Slurm
/// task's is a few KiB).
pub const MAX_ENVIRON: u64 = 4 << 20;
/// The longest `/proc/PID/cgroup` read (one line under cgroup v2, a dozen
/// under v1).
pub const MAX_CGROUP: u64 = 64 << 10;

/// The Slurm job named by a `/proc/PID/cgroup`, as Slurm's proctrack/cgroup
/// places tasks: a path component `job_<id>`, under cgroup v2
/// (`0::/system.slice/slurmstepd.scope/job_123/step_0/user/task_0`) or v1
/// (`4:memory:/slurm/uid_0/job_123/step_batch`). None when no line names a
/// job; an error when lines name different jobs or a line is malformed.
pub fn job_from_cgroup(text: &str) -> Result<Option<u64>, String> {
    let mut found: Option<u64> = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(_), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("cgroup line {line:?} is not ID:CONTROLLERS:PATH"));
        };
        for c in path.split('/') {
            let Some(id) = c.strip_prefix("job_") else {
                continue;
            };
            let Ok(id) = crate::executors::validate::job_id("cgroup", id) else {
                continue;
            };
            match found {
                Some(f) if f != id => {
                    return Err(format!("cgroups name two jobs, {f} and {id}"));
                }
                _ => found = Some(id),
            }
        }
    }
    Ok(found)
}

/// `SLURM_JOB_ID` in a `/proc/PID/environ` (NUL-separated `KEY=VALUE`):
/// how a node whose Slurm tracks processes without cgroups
/// (proctrack/linuxproc) tells a task's job. None when absent; an error
/// when it is not a job id.
pub fn job_from_environ(environ: &[u8]) -> Result<Option<u64>, String> {
    for var in environ.split(|b| *b == 0) {
        if let Some(v) = var.strip_prefix(b"SLURM_JOB_ID=") {
            let v = String::from_utf8_lossy(v);
            return crate::executors::validate::job_id("SLURM_JOB_ID", &v)
                .map(Some)
                .map_err(|e| e.to_string());
        }
    }
    Ok(None)
}

/// Why a process's job could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcJobError {
    #[error("reading {}: {error}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("{}: {why}", path.display())]
    Parse { path: PathBuf, why: String },
}

impl ProcJobError {
    /// The file at fault.
    pub fn path(&self) -> &Path {
        match self {
            ProcJobError::Io { path, .. } | ProcJobError::Parse { path, .. } => path,
        }
    }
}

/// Reads at most `max` bytes of `ROOT/PID/FILE`; None when the process is
/// gone (no such file, or ESRCH: it exited between open and read).
pub fn read_proc_file(
    root: &Path,
    pid: u32,
    file: &str,
    max: u64,
) -> Result<Option<Vec<u8>>, ProcJobError> {
    let path = root.join(pid.to_string()).join(file);
    let mut buf = Vec::new();
    let read = std::fs::File::open(&path).and_then(|f| f.take(max).read_to_end(&mut buf).map(drop));
    match read {
        Ok(()) => Ok(Some(buf)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(3) => {
            Ok(None)
        }
        Err(error) => Err(ProcJobError::Io { path, error }),
    }
}

/// The Slurm job of process `pid` under `root` (`/proc`): its cgroup's,
/// else its environment's, else `Some(None)`. `None` when the process is
/// gone.
pub fn job_of(root: &Path, pid: u32) -> Result<Option<Option<u64>>, ProcJobError> {
    let parse = |file: &str, why: String| ProcJobError::Parse {
        path: root.join(pid.to_string()).join(file),
        why,
    };
    let Some(cgroup) = read_proc_file(root, pid, "cgroup", MAX_CGROUP)? else {
        return Ok(None);
    };
    let job = job_from_cgroup(&String::from_utf8_lossy(&cgroup)).map_err(|w| parse("cgroup", w))?;
    if job.is_some() {
        return Ok(Some(job));
    }
    let Some(environ) = read_proc_file(root, pid, "environ", MAX_ENVIRON)? else {
        return Ok(None);
    };
    job_from_environ(&environ)
        .map(Some)
        .map_err(|w| parse("environ", w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slurm_job_comes_from_the_cgroup_v1_or_v2_else_the_environment() {
        let v2 = "0::/system.slice/slurmstepd.scope/job_123/step_0/user/task_0\n";
        assert_eq!(job_from_cgroup(v2), Ok(Some(123)));
        let v1 = "12:pids:/slurm/uid_0/job_77/step_batch\n4:memory:/slurm/uid_0/job_77/step_batch/task_0\n1:name=systemd:/user.slice\n";
        assert_eq!(job_from_cgroup(v1), Ok(Some(77)));
        for none in [
            "0::/\n",
            "0::/user.slice/user-0.slice/session-3.scope\n",
            "0::/system.slice/job_abc/x\n",
            "0::/system.slice/myjob_5/x\n",
        ] {
            assert_eq!(job_from_cgroup(none), Ok(None), "{none}");
        }
        assert!(
            job_from_cgroup("4:memory:/slurm/job_1\n5:pids:/slurm/job_2\n")
                .unwrap_err()
                .contains("two jobs")
        );
        assert!(job_from_cgroup("garbage\n").is_err());

        let env = b"PATH=/usr/bin\0SLURM_JOB_ID=4242\0SLURM_JOBID=4242\0";
        assert_eq!(job_from_environ(env), Ok(Some(4242)));
        assert_eq!(job_from_environ(b"PATH=/usr/bin\0HOME=/root\0"), Ok(None));
        assert_eq!(job_from_environ(b""), Ok(None));
        assert!(job_from_environ(b"SLURM_JOB_ID=12;x\0").is_err());
    }

    #[test]
    fn a_process_job_is_its_cgroup_s_then_its_environment_s_else_none() {
        let dir = tempfile::tempdir().unwrap();
        let proc = |pid: u32, cgroup: &str, environ: &[u8]| {
            let d = dir.path().join(pid.to_string());
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("cgroup"), cgroup).unwrap();
            std::fs::write(d.join("environ"), environ).unwrap();
        };
        proc(
            10,
            "0::/system.slice/slurmstepd.scope/job_7/step_0\n",
            b"SLURM_JOB_ID=8\0",
        );
        proc(11, "0::/user.slice\n", b"SLURM_JOB_ID=8\0");
        proc(12, "0::/user.slice\n", b"HOME=/\0");
        proc(13, "0::/user.slice\n", b"SLURM_JOB_ID=x\0");
        let root = dir.path();
        assert_eq!(job_of(root, 10).unwrap(), Some(Some(7)), "the cgroup wins");
        assert_eq!(job_of(root, 11).unwrap(), Some(Some(8)));
        assert_eq!(job_of(root, 12).unwrap(), Some(None));
        assert_eq!(job_of(root, 99).unwrap(), None, "gone");
        let e = job_of(root, 13).unwrap_err();
        assert!(e.path().ends_with("13/environ"), "{e}");
    }
}
