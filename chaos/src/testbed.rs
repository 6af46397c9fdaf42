//! The machine side of `keel chaos run`: nodes as network namespaces, each
//! with a data link and a management link (veth pairs to two bridges, in
//! ranges only the harness uses), a CPU cgroup per node, and the real
//! faults (`faults`). Everything it creates is named with the prefix
//! `kc-` (nftables: table `kc_chaos`), so that `sweep` can remove what any
//! earlier run left, and `leftovers` can prove nothing is left.
//!
//! A thin layer over `ip`, `tc`, `nft` and cgroupfs; the decisions live in
//! `live`.

use crate::live::Need;
pub use crate::sweep::{leftovers, sweep};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every name the harness creates starts with this.
pub const PREFIX: &str = "kc-";
/// The data network (the workload's traffic): `10.213.77.0/24`, the host
/// side of the bridge at `.1`, node `i` at `.11 + i`.
pub const DATA_NET: &str = "10.213.77";
/// The management network (keel's own traffic): `10.213.78.0/24`.
pub const MGMT_NET: &str = "10.213.78";
/// The node-side names of the two links inside every namespace.
pub const DATA_IF: &str = "kc0";
pub const MGMT_IF: &str = "kcm";
/// Where the CPU cgroup hierarchy is bind-mounted for the sensors: `ip
/// netns exec` gives its command a fresh `/sys`, without the cgroup mounts.
pub const CGROUP_VIEW: &str = "/run/kc-cgroup";
/// The least TCP retransmission timeout on the data network, as
/// datacenters set it (`ip route ... rto_min`).
pub const RTO_MIN: &str = "10ms";
/// The nftables tables a network fault adds (family `bridge`, in the
/// host's namespace) start with this.
pub const NFT_TABLE: &str = "kc_chaos";

/// A command that failed, with what it said.
#[derive(Debug, thiserror::Error)]
#[error("{cmd}: {reason}")]
pub struct SysError {
    pub cmd: String,
    pub reason: String,
}

/// Runs `program args`, its standard output when it succeeds.
pub fn run(program: &str, args: &[&str]) -> Result<String, SysError> {
    run_input(program, args, None)
}

/// `run`, with `input` on standard input.
pub fn run_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String, SysError> {
    use std::io::Write;
    let cmd = format!("{program} {}", args.join(" "));
    let err = |reason: String| SysError {
        cmd: cmd.clone(),
        reason,
    };
    let mut c = Command::new(program);
    c.args(args)
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().map_err(|e| err(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        if let Some(text) = input {
            stdin
                .write_all(text.as_bytes())
                .map_err(|e| err(e.to_string()))?;
        }
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn on_path(program: &str) -> bool {
    run("sh", &["-c", &format!("command -v {program}")]).is_ok()
}

/// The interpreter the workload runs under: Debian's, which has the
/// python3-mpi4py and python3-numpy packages (another `python3` may come
/// first on PATH).
pub const PYTHON: &str = "/usr/bin/python3";

/// The needs this machine does not meet, each with its remedy.
pub fn missing(needs: &[Need]) -> Vec<String> {
    let mut out = Vec::new();
    for &n in needs {
        let ok = match n {
            Need::Root => std::fs::read_to_string("/proc/self/status")
                .map(|s| {
                    s.lines()
                        .find(|l| l.starts_with("Uid:"))
                        .and_then(|l| l.split_whitespace().nth(2))
                        == Some("0")
                })
                .unwrap_or(false),
            Need::Mpi => on_path("mpirun") && run(PYTHON, &["-c", "import mpi4py, numpy"]).is_ok(),
            Need::Iproute => on_path("ip") && on_path("tc"),
            Need::Nft => on_path("nft"),
        };
        if !ok {
            out.push(format!("{n:?}: {}", n.remedy()));
        }
    }
    out
}

/// The CPU quota's period (µs), 10 ms: far shorter than a training step (100 ms
/// in the workload, more in real jobs), so that a throttled rank is slowed
/// in every step, as by a neighbour taking its CPU; a period as long as
/// the step throttles some steps fully and leaves others alone.
pub const QUOTA_PERIOD_US: u64 = 10_000;

/// How many times the default CPU weight the workload's cgroups (the ranks,
/// the upload sink) get. On a real cluster the ranks own their cores and
/// keel runs on the DPU or a spare core; on one small machine they share
/// it with a dozen keel processes, and the weight is what keeps keel's own
/// bursts from making a healthy rank late. A fault's quota still caps it.
pub const WORKLOAD_WEIGHT: u64 = 8;

/// How a node's CPU can be limited on this machine.
#[derive(Debug, Clone, PartialEq)]
pub enum CpuControl {
    /// cgroup v1's `cpu` hierarchy mounted here (`cpu.cfs_quota_us`).
    V1(PathBuf),
    /// cgroup v2 with the `cpu` controller (`cpu.max`) at this root.
    V2(PathBuf),
    /// Neither is writable: hog processes pinned to the rank's CPU.
    Hog,
}

impl CpuControl {
    /// What this machine offers, v2 first.
    pub fn detect() -> CpuControl {
        let v2 = Path::new("/sys/fs/cgroup");
        if std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "cpu"))
        {
            return CpuControl::V2(v2.into());
        }
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        if v1.join("cpu.cfs_quota_us").exists() {
            return CpuControl::V1(v1.into());
        }
        CpuControl::Hog
    }

    /// The cgroup directory of `name` (none for `Hog`).
    pub fn dir(&self, name: &str) -> Option<PathBuf> {
        match self {
            CpuControl::V1(root) | CpuControl::V2(root) => Some(root.join(name)),
            CpuControl::Hog => None,
        }
    }

    /// Gives the cgroup at `dir` `WORKLOAD_WEIGHT` times the default CPU
    /// weight.
    pub fn set_weight(&self, dir: &Path) -> Result<(), SysError> {
        let (file, value) = match self {
            CpuControl::V1(_) => ("cpu.shares", 1024 * WORKLOAD_WEIGHT),
            CpuControl::V2(_) => ("cpu.weight", 100 * WORKLOAD_WEIGHT),
            CpuControl::Hog => return Ok(()),
        };
        std::fs::write(dir.join(file), value.to_string()).map_err(|e| SysError {
            cmd: format!("echo {value} > {}", dir.join(file).display()),
            reason: e.to_string(),
        })
    }

    /// Limits the cgroup at `dir` to `share` of one CPU (0 < share), over
    /// a `QUOTA_PERIOD_US` period; `None` lifts the limit.
    pub fn set_quota(&self, dir: &Path, share: Option<f64>) -> Result<(), SysError> {
        let write = |file: &str, text: String| {
            std::fs::write(dir.join(file), &text).map_err(|e| SysError {
                cmd: format!("echo {text} > {}", dir.join(file).display()),
                reason: e.to_string(),
            })
        };
        let period = QUOTA_PERIOD_US;
        // The kernel's least quota is 1 ms.
        let quota = share.map(|s| ((s * period as f64) as u64).max(1000));
        match self {
            CpuControl::V1(_) => {
                write("cpu.cfs_period_us", period.to_string())?;
                write(
                    "cpu.cfs_quota_us",
                    quota.map_or("-1".into(), |q| q.to_string()),
                )
            }
            CpuControl::V2(_) => write(
                "cpu.max",
                format!("{} {period}", quota.map_or("max".into(), |q| q.to_string())),
            ),
            CpuControl::Hog => Ok(()),
        }
    }
}

/// The test cluster's nodes, removed (with whatever is left in them) when
/// dropped.
#[derive(Debug)]
pub struct Testbed {
    pub nodes: usize,
    pub cpu: CpuControl,
}

impl Testbed {
    /// A namespace's name: `kc-n01`.
    pub fn ns(i: usize) -> String {
        format!("{PREFIX}{}", crate::live::node_name(i))
    }

    pub fn data_ip(i: usize) -> String {
        format!("{DATA_NET}.{}", 11 + i)
    }

    pub fn mgmt_ip(i: usize) -> String {
        format!("{MGMT_NET}.{}", 11 + i)
    }

    /// The host side of node `i`'s data link (a port of the data bridge).
    pub fn host_data_link(i: usize) -> String {
        format!("{PREFIX}{}d", i + 1)
    }

    /// The host's end of the data network.
    pub fn host_data_ip() -> String {
        format!("{DATA_NET}.1")
    }

    /// The host's end of the management network (where controllers and the
    /// correlator host listen).
    pub fn host_mgmt_ip() -> String {
        format!("{MGMT_NET}.1")
    }

    /// Node `i`'s CPU cgroup (the rank runs in it; its sensor reads it).
    pub fn cgroup(&self, i: usize) -> Option<PathBuf> {
        self.cpu.dir(&Testbed::ns(i))
    }

    /// Node `i`'s CPU cgroup as its sensor, inside the namespace, sees it.
    pub fn sensor_cgroup(&self, i: usize) -> Option<PathBuf> {
        self.cgroup(i)
            .map(|_| Path::new(CGROUP_VIEW).join(Testbed::ns(i)))
    }

    /// The cgroup that holds every other process the harness starts, so
    /// that `sweep` finds them even after the harness was killed.
    pub fn roles_cgroup(&self) -> Option<PathBuf> {
        self.cpu.dir(&format!("{PREFIX}roles"))
    }

    /// The upload sink's cgroup: on the workload's critical path, so it
    /// weighs as the ranks do.
    pub fn sink_cgroup(&self) -> Option<PathBuf> {
        self.cpu.dir(&format!("{PREFIX}sink"))
    }

    /// Removes what an earlier run left, then builds `nodes` namespace nodes.
    pub fn build(nodes: usize) -> Result<Testbed, SysError> {
        sweep();
        let tb = Testbed {
            nodes,
            cpu: CpuControl::detect(),
        };
        for (br, net) in [("kc-brd", DATA_NET), ("kc-brm", MGMT_NET)] {
            run("ip", &["link", "add", br, "type", "bridge"])?;
            run("ip", &["addr", "add", &format!("{net}.1/24"), "dev", br])?;
            run("ip", &["link", "set", br, "up"])?;
        }
        for i in 0..nodes {
            let ns = Testbed::ns(i);
            run("ip", &["netns", "add", &ns])?;
            for (side, br, inner, ip) in [
                ("d", "kc-brd", DATA_IF, Testbed::data_ip(i)),
                ("m", "kc-brm", MGMT_IF, Testbed::mgmt_ip(i)),
            ] {
                let host = format!("{PREFIX}{}{side}", i + 1);
                run(
                    "ip",
                    &[
                        "link", "add", &host, "type", "veth", "peer", "name", inner, "netns", &ns,
                    ],
                )?;
                run("ip", &["link", "set", &host, "master", br, "up"])?;
                run(
                    "ip",
                    &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", inner],
                )?;
                run("ip", &["-n", &ns, "link", "set", inner, "up"])?;
            }
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            // A datacenter fabric's TCP: a lost segment is sent again
            // after RTO_MIN, not Linux's 200 ms default (made for the
            // Internet's round trips, a thousand times these).
            let data_ip = Testbed::data_ip(i);
            run(
                "ip",
                &[
                    "-n",
                    &ns,
                    "route",
                    "change",
                    &format!("{DATA_NET}.0/24"),
                    "dev",
                    DATA_IF,
                    "proto",
                    "kernel",
                    "scope",
                    "link",
                    "src",
                    &data_ip,
                    "rto_min",
                    RTO_MIN,
                ],
            )?;
        }
        if let CpuControl::V2(root) = &tb.cpu {
            // Best effort: where it is already on, or cannot be, cpu.max
            // says so below.
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+cpu");
        }
        let mut workload: Vec<PathBuf> = (0..nodes).filter_map(|i| tb.cgroup(i)).collect();
        workload.extend(tb.sink_cgroup());
        for d in workload.iter().chain(tb.roles_cgroup().iter()) {
            std::fs::create_dir_all(d).map_err(|e| SysError {
                cmd: format!("mkdir {}", d.display()),
                reason: e.to_string(),
            })?;
        }
        for d in &workload {
            tb.cpu.set_weight(d)?;
        }
        if let CpuControl::V1(root) | CpuControl::V2(root) = &tb.cpu {
            std::fs::create_dir_all(CGROUP_VIEW).map_err(|e| SysError {
                cmd: format!("mkdir {CGROUP_VIEW}"),
                reason: e.to_string(),
            })?;
            run(
                "mount",
                &["--bind", &root.display().to_string(), CGROUP_VIEW],
            )?;
        }
        Ok(tb)
    }

    /// Moves process `pid` into the cgroup at `dir`.
    pub fn enter(dir: &Path, pid: u32) -> Result<(), SysError> {
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).map_err(|e| SysError {
            cmd: format!("echo {pid} > {}/cgroup.procs", dir.display()),
            reason: e.to_string(),
        })
    }

    /// The argv that starts `argv` as node `i`'s rank: in its cgroup (or
    /// pinned to one CPU where only hogs can take it), in its namespace.
    pub fn rank_argv(&self, i: usize, argv: &[String]) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        if let Some(dir) = self.cgroup(i) {
            v.extend(["sh".into(), "-c".into()]);
            v.push(format!(
                "echo $$ > {}/cgroup.procs && exec \"$@\"",
                dir.display()
            ));
            v.push("kc-rank".into());
        }
        v.extend(["ip".into(), "netns".into(), "exec".into(), Testbed::ns(i)]);
        if self.cpu == CpuControl::Hog {
            v.extend(["taskset".into(), "-c".into(), hog_cpu(i).to_string()]);
        }
        v.extend(argv.iter().cloned());
        v
    }
}

/// The CPU that node `i`'s rank is pinned to when hogs take it.
pub fn hog_cpu(i: usize) -> usize {
    i % std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Drop for Testbed {
    fn drop(&mut self) {
        sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rank_runs_in_its_cgroup_and_namespace() {
        let tb = Testbed {
            nodes: 2,
            cpu: CpuControl::V1("/cg/cpu".into()),
        };
        let argv = tb.rank_argv(1, &["python3".into(), "w.py".into()]);
        assert_eq!(argv[0], "sh");
        assert!(argv[2].contains("/cg/cpu/kc-n02/cgroup.procs"), "{argv:?}");
        assert_eq!(&argv[4..8], ["ip", "netns", "exec", "kc-n02"]);
        assert_eq!(&argv[8..], ["python3", "w.py"]);
        let hog = Testbed {
            nodes: 2,
            cpu: CpuControl::Hog,
        };
        let argv = hog.rank_argv(0, &["python3".into()]);
        assert_eq!(
            &argv[..6],
            ["ip", "netns", "exec", "kc-n01", "taskset", "-c"]
        );
        std::mem::forget(tb);
        std::mem::forget(hog);
    }
}
