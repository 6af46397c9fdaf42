//! `inject_fault` (`keel chaos inject`): a bounded fault in one node that
//! this executor's `[chaos]` section opens to chaos, reverted on the
//! controller's rollback, at its own deadline (the executor keeps it even
//! when no controller is left to ask), and when the executor stops. A
//! fault a killed executor left is reverted when it starts again (the
//! active faults are written to `state_dir/chaos-active.json`).
//!
//! - `host`: the node's CPU cgroup (`cgroup`) limited to `host_cpu_share`
//!   of one CPU: cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`; the value
//!   found before is put back.
//! - `network`: a `tbf` root qdisc (`net_rate`) on the node's link
//!   (`link`, inside `netns` where given); one already there is left alone
//!   and the injection refused.
//! - `pcie`, `gpu`: refused; this executor has no GPU fault.
//!
//! The target is checked where it lives at the moment of the injection:
//! the cgroup's control file, the link.

use keel_adapters::executors::{Applied, ExecCommand, ExecError, Executor, Outcome};
use keel_model::action::INJECT_MAX_S;
use keel_model::Action;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// `[chaos]` of an executor's config: the nodes open to chaos.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChaosConfig {
    /// Node name -> where its faults go. A node not listed is not open to
    /// chaos: an injection there is refused.
    #[serde(default)]
    pub nodes: BTreeMap<String, ChaosNode>,
    /// The longest injection taken, seconds (at most 600).
    #[serde(default = "max_s")]
    pub max_s: f64,
    /// The share of one CPU a `host` fault leaves the node (0.01..1).
    #[serde(default = "host_cpu_share")]
    pub host_cpu_share: f64,
    /// A `network` fault's `tbf` rate.
    #[serde(default = "net_rate")]
    pub net_rate: String,
}

/// Where one node's faults go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChaosNode {
    /// `host`: the cgroup the node's ranks run in.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// `network`: the node's data link.
    #[serde(default)]
    pub link: Option<String>,
    /// The network namespace `link` lives in.
    #[serde(default)]
    pub netns: Option<String>,
}

fn max_s() -> f64 {
    INJECT_MAX_S
}
fn host_cpu_share() -> f64 {
    0.1
}
fn net_rate() -> String {
    "100mbit".into()
}

/// The CPU period of a `host` fault's quota (µs): short, so that the
/// rank's work is cut into many periods.
const PERIOD_US: u64 = 10_000;

impl ChaosConfig {
    pub fn check(&self) -> anyhow::Result<()> {
        if !(self.max_s > 0.0 && self.max_s <= INJECT_MAX_S) {
            anyhow::bail!("[chaos] max_s must be in (0, {INJECT_MAX_S}]");
        }
        if !(0.01..=1.0).contains(&self.host_cpu_share) {
            anyhow::bail!("[chaos] host_cpu_share must be in 0.01..1");
        }
        Ok(())
    }
}

/// How to undo one applied fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Undo {
    /// Write `value` back to `file`.
    Write { file: PathBuf, value: String },
    /// Delete the root qdisc of `link` (in `netns`).
    Qdisc { netns: Option<String>, link: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Active {
    node: String,
    cause: String,
    undo: Vec<Undo>,
    #[serde(skip)]
    started: Option<Instant>,
}

/// What the executor did under each key.
#[derive(Debug, Default)]
struct Book {
    active: BTreeMap<String, Active>,
    /// Keys applied and since reverted, with how.
    reverted: BTreeMap<String, String>,
    state_file: Option<PathBuf>,
}

impl Book {
    fn save(&self) {
        if let Some(f) = &self.state_file {
            if let Ok(text) = serde_json::to_string(&self.active) {
                if let Err(e) = std::fs::write(f, text) {
                    tracing::warn!(file = %f.display(), error = %e, "writing the active chaos faults");
                }
            }
        }
    }

    /// Reverts `key` if it is active: what was done, or the errors.
    fn revert(&mut self, key: &str, why: &str) -> Option<Result<String, String>> {
        let a = self.active.remove(key)?;
        let ran = a
            .started
            .map(|s| format!(" after {:.1} s", s.elapsed().as_secs_f64()))
            .unwrap_or_default();
        let errors: Vec<String> = a.undo.iter().rev().filter_map(|u| undo(u).err()).collect();
        self.save();
        let done = format!("{} fault on {} reverted{ran} ({why})", a.cause, a.node);
        if errors.is_empty() {
            self.reverted.insert(key.to_string(), done.clone());
            Some(Ok(done))
        } else {
            Some(Err(format!("{done}, with errors: {}", errors.join("; "))))
        }
    }
}

/// The `[chaos]` section as an executor.
pub struct ChaosExecutor {
    cfg: ChaosConfig,
    book: Arc<Mutex<Book>>,
}

impl ChaosExecutor {
    /// Reverts what a killed executor left (from `state_dir`), then is ready.
    pub fn new(cfg: ChaosConfig, state_dir: Option<&Path>) -> ChaosExecutor {
        let state_file = state_dir.map(|d| d.join("chaos-active.json"));
        let left: BTreeMap<String, Active> = state_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let mut book = Book {
            active: left,
            reverted: BTreeMap::new(),
            state_file,
        };
        let keys: Vec<String> = book.active.keys().cloned().collect();
        for k in keys {
            match book.revert(&k, "left by an earlier run of this executor") {
                Some(Ok(d)) => tracing::warn!(key = k, "{d}"),
                Some(Err(e)) => tracing::error!(key = k, "{e}"),
                None => {}
            }
        }
        book.save();
        ChaosExecutor {
            cfg,
            book: Arc::new(Mutex::new(book)),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node of `node/N` open to chaos here, or why not.
    fn node<'a>(&'a self, target: &str) -> Result<(String, &'a ChaosNode), ExecError> {
        let n = match target.split('/').collect::<Vec<_>>().as_slice() {
            ["node", n] if !n.is_empty() => n.to_string(),
            _ => return Err(ExecError::invalid("target", target, "expected node/NODE")),
        };
        match self.cfg.nodes.get(&n) {
            Some(c) => Ok((n, c)),
            None => {
                Err(ExecError::Unsupported {
                    target: target.into(),
                    why: format!(
                    "node {n} is not open to chaos on this executor (its [chaos.nodes] lists {})",
                    if self.cfg.nodes.is_empty() {
                        "none".to_string()
                    } else {
                        self.cfg.nodes.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ),
                })
            }
        }
    }

    fn apply_host(&self, node: &str, c: &ChaosNode) -> Result<(Vec<Undo>, String), ExecError> {
        let dir = c.cgroup.as_ref().ok_or_else(|| ExecError::Unsupported {
            target: format!("node/{node}"),
            why: "no `cgroup` in its [chaos.nodes] entry: nothing to throttle".into(),
        })?;
        let quota = ((self.cfg.host_cpu_share * PERIOD_US as f64) as u64).max(1000);
        let v2 = dir.join("cpu.max");
        let v1 = dir.join("cpu.cfs_quota_us");
        let read = |f: &Path| {
            std::fs::read_to_string(f)
                .map(|s| s.trim().to_string())
                .map_err(|e| ExecError::Io {
                    what: format!("reading {} (the node's cgroup, checked now)", f.display()),
                    error: e,
                })
        };
        let write = |f: &Path, v: &str| {
            std::fs::write(f, v).map_err(|e| ExecError::Io {
                what: format!("writing {v:?} to {}", f.display()),
                error: e,
            })
        };
        if v2.exists() {
            let before = read(&v2)?;
            let after = format!("{quota} {PERIOD_US}");
            write(&v2, &after)?;
            let undo = vec![Undo::Write {
                file: v2.clone(),
                value: before.clone(),
            }];
            return Ok((undo, format!("{}: {after} (was {before})", v2.display())));
        }
        let period = dir.join("cpu.cfs_period_us");
        let (q0, p0) = (read(&v1)?, read(&period)?);
        let mut undo = vec![Undo::Write {
            file: period.clone(),
            value: p0.clone(),
        }];
        write(&period, &PERIOD_US.to_string())?;
        undo.push(Undo::Write {
            file: v1.clone(),
            value: q0.clone(),
        });
        if let Err(e) = write(&v1, &quota.to_string()) {
            for u in undo.iter().rev() {
                let _ = self::undo(u);
            }
            return Err(e);
        }
        Ok((
            undo,
            format!(
                "{}: quota {quota} per {PERIOD_US} µs (was {q0} per {p0})",
                dir.display()
            ),
        ))
    }

    fn apply_network(&self, node: &str, c: &ChaosNode) -> Result<(Vec<Undo>, String), ExecError> {
        let link = c.link.clone().ok_or_else(|| ExecError::Unsupported {
            target: format!("node/{node}"),
            why: "no `link` in its [chaos.nodes] entry: nothing to shape".into(),
        })?;
        let rate = &self.cfg.net_rate;
        // `add`, not `replace`: a root qdisc already there (someone's own)
        // makes the injection fail instead of being overwritten.
        tc(
            c.netns.as_deref(),
            &[
                "qdisc", "add", "dev", &link, "root", "tbf", "rate", rate, "burst", "32kbit",
                "latency", "50ms",
            ],
        )?;
        let at = c
            .netns
            .as_deref()
            .map(|n| format!(" in {n}"))
            .unwrap_or_default();
        Ok((
            vec![Undo::Qdisc {
                netns: c.netns.clone(),
                link: link.clone(),
            }],
            format!("{link}{at}: egress tbf {rate}"),
        ))
    }
}

fn tc(netns: Option<&str>, args: &[&str]) -> Result<(), ExecError> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "tc"]);
            c
        }
        None => Command::new("tc"),
    };
    let argv = format!("tc {}", args.join(" "));
    let out = cmd.args(args).output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ExecError::Missing {
            program: "tc".into(),
            package: "iproute2",
        },
        _ => ExecError::Io {
            what: argv.clone(),
            error: e,
        },
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ExecError::Failed {
            argv,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn undo(u: &Undo) -> Result<(), String> {
    match u {
        Undo::Write { file, value } => {
            std::fs::write(file, value).map_err(|e| format!("{}: {e}", file.display()))
        }
        Undo::Qdisc { netns, link } => {
            tc(netns.as_deref(), &["qdisc", "del", "dev", link, "root"]).map_err(|e| e.to_string())
        }
    }
}

/// Reverts `key` at `until`, unless it was reverted before (the book is
/// gone when the executor is).
fn deadline(book: Weak<Mutex<Book>>, key: String, until: Instant) {
    std::thread::spawn(move || {
        while Instant::now() < until {
            std::thread::sleep(
                until
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(200)),
            );
            if book.strong_count() == 0 {
                return;
            }
        }
        let Some(book) = book.upgrade() else { return };
        let mut b = book.lock().unwrap_or_else(|p| p.into_inner());
        match b.revert(&key, "its deadline, kept by the executor") {
            Some(Ok(d)) => tracing::info!(key, "{d}"),
            Some(Err(e)) => tracing::error!(key, "{e}"),
            None => {}
        }
    });
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Executor for ChaosExecutor {
    fn name(&self) -> &'static str {
        "chaos"
    }

    fn handles(&self, action: Action) -> bool {
        action == Action::InjectFault
    }

    fn apply(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError> {
        if cmd.action != Action::InjectFault {
            return Err(ExecError::WrongAction {
                executor: "chaos",
                action: cmd.action,
            });
        }
        {
            let b = self.book();
            if b.active.contains_key(&cmd.idempotency_key) {
                return Ok(Applied::new(
                    Outcome::AlreadyDone,
                    Vec::new(),
                    "already done: the fault is on",
                ));
            }
            if let Some(how) = b.reverted.get(&cmd.idempotency_key) {
                return Ok(Applied::new(
                    Outcome::AlreadyDone,
                    Vec::new(),
                    format!("already done, and since reverted: {how}"),
                ));
            }
        }
        let (node, c) = self.node(&cmd.target)?;
        let c = c.clone();
        let cause = cmd.params.get("cause").cloned().unwrap_or_default();
        let dur_text = cmd.params.get("duration_s").cloned().unwrap_or_default();
        let dur = dur_text
            .parse::<f64>()
            .ok()
            .filter(|d| *d > 0.0 && *d <= self.cfg.max_s)
            .ok_or_else(|| {
                ExecError::invalid(
                    "duration_s",
                    &dur_text,
                    format!(
                        "more than 0 and at most {} s ([chaos] max_s)",
                        self.cfg.max_s
                    ),
                )
            })?;
        let (undo, what) = match cause.as_str() {
            "host" => self.apply_host(&node, &c)?,
            "network" => self.apply_network(&node, &c)?,
            "pcie" | "gpu" => {
                return Err(ExecError::Unsupported {
                    target: cmd.target.clone(),
                    why: format!(
                        "this executor injects host and network faults only; a {cause} fault needs a GPU on the node and is not built"
                    ),
                })
            }
            other => return Err(ExecError::invalid("cause", other, "host, network, pcie or gpu")),
        };
        let from = unix_now();
        let started = Instant::now();
        {
            let mut b = self.book();
            b.active.insert(
                cmd.idempotency_key.clone(),
                Active {
                    node: node.clone(),
                    cause: cause.clone(),
                    undo,
                    started: Some(started),
                },
            );
            b.save();
        }
        deadline(
            Arc::downgrade(&self.book),
            cmd.idempotency_key.clone(),
            started + Duration::from_secs_f64(dur),
        );
        Ok(Applied::new(
            Outcome::Done,
            Vec::new(),
            format!("{cause} fault on {node} for {dur} s from {from:.3}: {what}"),
        ))
    }

    fn rollback(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError> {
        let mut b = self.book();
        match b.revert(&cmd.idempotency_key, "rolled back by the controller") {
            Some(Ok(d)) => Ok(Applied::new(Outcome::RolledBack, Vec::new(), d)),
            Some(Err(e)) => Err(ExecError::Unsupported {
                target: cmd.target.clone(),
                why: e,
            }),
            None => Ok(Applied::new(
                Outcome::AlreadyDone,
                Vec::new(),
                match b.reverted.get(&cmd.idempotency_key) {
                    Some(how) => format!("already reverted: {how}"),
                    None => "nothing applied under this key: nothing to revert".into(),
                },
            )),
        }
    }
}

impl Drop for ChaosExecutor {
    /// The executor stops: every fault still on is reverted.
    fn drop(&mut self) {
        let mut b = self.book();
        let keys: Vec<String> = b.active.keys().cloned().collect();
        for k in keys {
            match b.revert(&k, "the executor stopped") {
                Some(Ok(d)) => tracing::warn!(key = k, "{d}"),
                Some(Err(e)) => tracing::error!(key = k, "{e}"),
                None => {}
            }
        }
    }
}

#[cfg(test)]
#[path = "executor_chaos_tests.rs"]
mod tests;
