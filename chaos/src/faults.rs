//! Real faults on a namespace node, each held by a guard that reverts it
//! when dropped (at its episode's end, and on any exit that unwinds).
//!
//! - `host`: the node's CPU cgroup limited to `HOST_CPU_SHARE` of one CPU
//!   (cgroup v1 `cpu.cfs_quota_us`, v2 `cpu.max`); where neither is
//!   writable, `HOGS` busy processes pinned to the rank's CPU (named
//!   `kc-hog`, and bounded by `timeout` so that even a killed harness
//!   leaves none for long).
//! - `network`: on the node's data link, a `tbf` rate limit (`NET_RATE`)
//!   on its egress inside the node, and an nftables rule on the bridge
//!   port the link plugs into (the switch, in the host's namespace)
//!   dropping `NET_DROP_PCT` % of the TCP packets the node sends: lost on
//!   the wire, so the node's TCP really retransmits (a drop in the node's
//!   own output hook would not: the stack sees it and sends again, never
//!   counting a retransmit).

use crate::live::LiveCause;
use crate::testbed::{hog_cpu, run, run_input, CpuControl, SysError, Testbed, DATA_IF, NFT_TABLE};
use std::process::{Child, Command, Stdio};

/// The share of one CPU a `host` fault leaves the node: the kernel's least
/// quota (1 ms) per `QUOTA_PERIOD_US` period, so that the rank's step
/// (4 ms of compute, and its sends) is cut into several periods and
/// finishes tens of ms late every time.
pub const HOST_CPU_SHARE: f64 = 0.1;
/// Busy processes per `host` fault where no cgroup can limit the CPU.
pub const HOGS: usize = 3;
/// A `network` fault's rate limit on the node's data link.
pub const NET_RATE: &str = "100mbit";
/// The share of the node's outgoing TCP packets a `network` fault drops, %.
pub const NET_DROP_PCT: u32 = 20;

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
    /// The node's namespace and the bridge's nftables table.
    Net(String, String),
    Reverted,
}

/// The nftables table (family `bridge`) of a network fault on node `i`.
pub fn nft_table(i: usize) -> String {
    format!("{NFT_TABLE}_{}", i + 1)
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
                    "{ns}: {DATA_IF} egress tbf {NET_RATE}, {NET_DROP_PCT}% of its TCP dropped at the bridge"
                ),
                what: Applied::Net(ns.clone(), nft_table(i)),
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
                "table bridge {} {{\n chain lossy {{\n  type filter hook forward priority 0;\n  iifname \"{}\" meta l4proto tcp numgen random mod 100 < {NET_DROP_PCT} drop\n }}\n}}\n",
                nft_table(i),
                Testbed::host_data_link(i)
            );
            run_input("nft", &["-f", "-"], Some(&rules))?;
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
            Applied::Net(ns, table) => {
                // Absent already (a half-applied fault) is fine.
                let _ = run("nft", &["delete", "table", "bridge", &table]);
                let _ = run(
                    "ip",
                    &[
                        "netns", "exec", &ns, "tc", "qdisc", "del", "dev", DATA_IF, "root",
                    ],
                );
                if run("nft", &["list", "table", "bridge", &table]).is_ok() {
                    errors.push(SysError {
                        cmd: format!("nft delete table bridge {table}"),
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
