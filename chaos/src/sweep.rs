//! Finding and removing what `keel chaos run` creates: everything is
//! named with `testbed::PREFIX` (nftables tables with `NFT_TABLE`), and
//! every process it starts sits in one of its cgroups or namespaces, so a
//! sweep finds them even after the harness was killed.

use crate::testbed::{run, CGROUP_VIEW, NFT_TABLE, PREFIX};
use std::path::{Path, PathBuf};

fn names_with_prefix(list: &str) -> Vec<String> {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|n| {
            n.trim_end_matches(':')
                .split('@')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .filter(|n| n.starts_with(PREFIX))
        .collect()
}

/// Our cgroup directories under each hierarchy root.
fn our_cgroups() -> Vec<PathBuf> {
    let mut v = Vec::new();
    for root in ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup"] {
        if let Ok(rd) = std::fs::read_dir(root) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(PREFIX) && e.path().is_dir() {
                    v.push(e.path());
                }
            }
        }
    }
    v
}

fn pids_in(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Hog processes are started as `kc-hog` (their argv[0]).
fn hog_pids() -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"kc-hog"))
        })
        .collect()
}

fn kill(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let args: Vec<String> = std::iter::once("-KILL".to_string())
        .chain(pids.iter().map(u32::to_string))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _ = run("kill", &args);
}

/// Removes everything named with the prefix: the processes in our
/// namespaces and cgroups and the hogs, the namespaces (with their links,
/// qdiscs and nftables), the bridges, the cgroups. Returns what it found.
pub fn sweep() -> Vec<String> {
    let mut found = Vec::new();
    let nss = names_with_prefix(&run("ip", &["netns", "list"]).unwrap_or_default());
    let cgroups = our_cgroups();
    for _ in 0..20 {
        let mut pids: Vec<u32> = hog_pids();
        for ns in &nss {
            pids.extend(
                run("ip", &["netns", "pids", ns])
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        for d in &cgroups {
            pids.extend(pids_in(d));
        }
        pids.retain(|p| *p != std::process::id());
        if pids.is_empty() {
            break;
        }
        found.push(format!("{} processes", pids.len()));
        kill(&pids);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if mounted(CGROUP_VIEW) {
        found.push(format!("mount {CGROUP_VIEW}"));
        let _ = run("umount", &[CGROUP_VIEW]);
    }
    let _ = std::fs::remove_dir(CGROUP_VIEW);
    for ns in &nss {
        found.push(format!("netns {ns}"));
        let _ = run("ip", &["netns", "del", ns]);
    }
    for link in names_with_prefix(
        &run("ip", &["-o", "link", "show"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(": ").map(|x| x.1))
            .collect::<Vec<_>>()
            .join("\n"),
    ) {
        found.push(format!("link {link}"));
        let _ = run("ip", &["link", "del", &link]);
    }
    for line in run("nft", &["list", "tables"]).unwrap_or_default().lines() {
        // `table FAMILY NAME`
        let w: Vec<&str> = line.split_whitespace().collect();
        if let [_, family, name] = w[..] {
            if name.starts_with(NFT_TABLE) {
                found.push(format!("nft table {family} {name}"));
                let _ = run("nft", &["delete", "table", family, name]);
            }
        }
    }
    for d in cgroups {
        found.push(format!("cgroup {}", d.display()));
        // A cgroup goes once its last task has.
        for _ in 0..50 {
            if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    found
}

fn mounted(target: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().nth(1) == Some(target))
    })
}

/// What the harness may have left on this machine: namespaces, links,
/// qdiscs and nftables tables of ours, cgroups, hog and workload processes.
/// Empty when the machine is clean.
pub fn leftovers() -> Vec<String> {
    let mut v: Vec<String> = names_with_prefix(&run("ip", &["netns", "list"]).unwrap_or_default())
        .into_iter()
        .map(|n| format!("netns {n}"))
        .collect();
    let links = run("ip", &["-o", "link", "show"]).unwrap_or_default();
    for l in links
        .lines()
        .filter_map(|l| l.split_once(": ").map(|x| x.1))
    {
        if l.starts_with(PREFIX) {
            v.push(format!("link {}", l.split([':', '@']).next().unwrap_or(l)));
        }
    }
    let qdiscs = run("tc", &["qdisc", "show"]).unwrap_or_default();
    v.extend(
        qdiscs
            .lines()
            .filter(|l| l.contains(" dev kc") || l.contains("tbf"))
            .map(|l| format!("qdisc {l}")),
    );
    let tables = run("nft", &["list", "tables"]).unwrap_or_default();
    v.extend(
        tables
            .lines()
            .filter(|l| l.contains(NFT_TABLE))
            .map(|l| format!("nft {l}")),
    );
    v.extend(
        our_cgroups()
            .into_iter()
            .map(|d| format!("cgroup {}", d.display())),
    );
    v.extend(hog_pids().into_iter().map(|p| format!("hog process {p}")));
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(11).any(|w| w == b"keel_mpi.py"))
            {
                v.push(format!("workload process {pid}"));
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_names_are_swept() {
        let list = "kc-n01 (id: 3)\nother\nkc-n02\n";
        assert_eq!(names_with_prefix(list), vec!["kc-n01", "kc-n02"]);
        assert_eq!(names_with_prefix("kc-1d@if5: <UP>\nlo: x\n"), vec!["kc-1d"]);
    }
}
