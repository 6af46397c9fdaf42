//! Real faults on a namespace node, each held by a guard that reverts it
//! when dropped (at its episode's end, and on any exit that unwinds).
//!
//! - `host`: the node's CPU cgroup limited to `HOST_CPU_SHARE` of one CPU
//!   (cgroup v1 `cpu.cfs_quota_us`, v2 `cpu.max`); where neither is
//!   writable, `HOGS` busy processes pinned to the rank's CPU (named
//!   `kc-hog`, and bounded by `timeout` so that even a killed harness
//!   leaves none for long).
//! - `network`: on the node's data link, egress, a `tbf` rate limit
//!   (`NET_RATE`) and an nftables rule dropping `NET_DROP_PCT` % of its
//!   TCP packets at random: its TCP really retransmits.

use crate::live::LiveCause;
use crate::testbed::{hog_cpu, run, run_input, CpuControl, SysError, Testbed, DATA_IF, NFT_TABLE};
use std::process::{Child, Command, Stdio};

/// The share of one CPU a `host` fault leaves the node.
pub const HOST_CPU_SHARE: f64 = 0.05;
/// Busy processes per `host` fault where no cgroup can limit the CPU.
pub const HOGS: usize = 3;
/// A `network` fault's rate limit on the node's data link.
pub const NET_RATE: &str = "50mbit";
/// The share of the node's outgoing TCP packets a `network` fault drops, %.
pub const NET_DROP_PCT: u32 = 15;

/// An injected fault; dropping it reverts it.
#[derive(Debug)]
pub struct FaultGuard {
    what: Applied,
    /// What it did, for the log.
    pub description: String,
}

#[derive(Debug)]
enum Applied {
    Quota(CpuControl, std::path::PathBuf),
    Hogs(Vec<Child>),
    Net(String),
    Reverted,
}

/// Injects `cause` into node `i` for at most `max_s` seconds (the bound
/// only matters to hogs, which end on their own).
pub fn inject(
    tb: &Testbed,
    cause: LiveCause,
    i: usize,
    max_s: f64,
) -> Result<FaultGuard, SysError> {
    match cause {
        LiveCause::Host => match tb.cgroup(i) {
            Some(dir) => {
                tb.cpu.set_quota(&dir, Some(HOST_CPU_SHARE))?;
                Ok(FaultGuard {
                    description: format!(
                        "{}: CPU quota {:.0}% of one CPU ({})",
                        Testbed::ns(i),
                        HOST_CPU_SHARE * 100.0,
                        dir.display()
                    ),
                    what: Applied::Quota(tb.cpu.clone(), dir),
                })
            }
            None => {
                let cpu = hog_cpu(i).to_string();
                let secs = format!("{}", max_s.ceil().max(1.0) as u64);
                let mut hogs = Vec::new();
                for _ in 0..HOGS {
                    let child = Command::new("timeout")
                        .args([
                            &secs,
                            "taskset",
                            "-c",
                            &cpu,
                            "sh",
                            "-c",
                            "while :; do :; done",
                            "kc-hog",
                        ])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .map_err(|e| SysError {
                            cmd: "timeout taskset sh (hog)".into(),
                            reason: e.to_string(),
                        })?;
                    hogs.push(child);
                }
                Ok(FaultGuard {
                    description: format!("{}: {HOGS} hogs pinned to CPU {cpu}", Testbed::ns(i)),
                    what: Applied::Hogs(hogs),
                })
            }
        },
        LiveCause::Network => {
            let ns = Testbed::ns(i);
            let guard = FaultGuard {
                description: format!(
                    "{ns}: {DATA_IF} egress tbf {NET_RATE}, {NET_DROP_PCT}% of TCP dropped"
                ),
                what: Applied::Net(ns.clone()),
            };
            // The guard exists before the first change: a half-applied
            // fault is reverted too.
            run(
                "ip",
                &[
                    "netns", "exec", &ns, "tc", "qdisc", "add", "dev", DATA_IF, "root", "tbf",
                    "rate", NET_RATE, "burst", "32kbit", "latency", "50ms",
                ],
            )?;
            let rules = format!(
                "table inet {NFT_TABLE} {{\n chain out {{\n  type filter hook output priority 0;\n  oifname \"{DATA_IF}\" meta l4proto tcp numgen random mod 100 < {NET_DROP_PCT} drop\n }}\n}}\n"
            );
            run_input(
                "ip",
                &["netns", "exec", &ns, "nft", "-f", "-"],
                Some(&rules),
            )?;
            Ok(guard)
        }
    }
}

impl FaultGuard {
    /// Reverts the fault now; errors are reported, and the rest of the
    /// revert still done.
    pub fn revert(&mut self) -> Vec<SysError> {
        let mut errors = Vec::new();
        match std::mem::replace(&mut self.what, Applied::Reverted) {
            Applied::Quota(cpu, dir) => errors.extend(cpu.set_quota(&dir, None).err()),
            Applied::Hogs(mut hogs) => {
                // SIGTERM to `timeout`, which passes it on to its hog.
                for h in &mut hogs {
                    errors.extend(run("kill", &["-TERM", &h.id().to_string()]).err());
                    let _ = h.wait();
                }
            }
            Applied::Net(ns) => {
                // Absent already (a half-applied fault) is fine.
                let _ = run(
                    "ip",
                    &[
                        "netns", "exec", &ns, "tc", "qdisc", "del", "dev", DATA_IF, "root",
                    ],
                );
                let _ = run(
                    "ip",
                    &[
                        "netns", "exec", &ns, "nft", "delete", "table", "inet", NFT_TABLE,
                    ],
                );
                if run(
                    "ip",
                    &[
                        "netns", "exec", &ns, "nft", "list", "table", "inet", NFT_TABLE,
                    ],
                )
                .is_ok()
                {
                    errors.push(SysError {
                        cmd: format!("nft delete table inet {NFT_TABLE} in {ns}"),
                        reason: "the table is still there".into(),
                    });
                }
            }
            Applied::Reverted => {}
        }
        errors
    }
}

impl Drop for FaultGuard {
    fn drop(&mut self) {
        for e in self.revert() {
            eprintln!("reverting a fault: {e}");
        }
    }
}
