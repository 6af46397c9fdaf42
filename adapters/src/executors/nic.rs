//! The node agent's `retune_nic`: ring sizes, channels and interrupt
//! coalescing with `ethtool`, the transmit queue length with `ip`.
//!
//! Command: target an interface name; parameters (at least one), each a
//! whole number:
//!
//! | parameter | reads | sets |
//! | --- | --- | --- |
//! | `rx_ring`, `tx_ring` | `ethtool -g IF` | `ethtool -G IF rx N tx N` |
//! | `rx_channels`, `tx_channels`, `combined` | `ethtool -l IF` | `ethtool -L IF rx N tx N combined N` |
//! | `rx_usecs`, `tx_usecs` | `ethtool -c IF` | `ethtool -C IF rx-usecs N tx-usecs N` |
//! | `txqueuelen` | `ip -j link show dev IF` | `ip link set dev IF txqueuelen N` |
//!
//! Everything is read before anything is changed, so that a value over the
//! device's maximum is refused before the first change, and so that the
//! previous values are on record for rollback. Devices differ in what they
//! support (a veth has channels and a queue length, but no rings or
//! coalescing): a setting the device does not support is reported as such,
//! per setting, and the others are still applied. Only when nothing
//! requested is supported is the command an error. A real failure half-way
//! undoes what was already applied.

use super::run::{argv, Runner, SystemRunner};
use super::{
    seen_before, summarize, to_roll_back, validate, Applied, Change, ChangeStatus, ExecCommand,
    ExecError, Executor, Journal, Outcome,
};
use keel_model::Action;
use std::collections::BTreeMap;

/// One tunable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NicParam {
    RxRing,
    TxRing,
    RxChannels,
    TxChannels,
    Combined,
    RxUsecs,
    TxUsecs,
    TxQueueLen,
}

/// The tunables that one tool invocation reads and sets together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NicGroup {
    Rings,
    Channels,
    Coalesce,
    TxQueue,
}

impl NicParam {
    pub const ALL: &'static [NicParam] = &[
        NicParam::RxRing,
        NicParam::TxRing,
        NicParam::RxChannels,
        NicParam::TxChannels,
        NicParam::Combined,
        NicParam::RxUsecs,
        NicParam::TxUsecs,
        NicParam::TxQueueLen,
    ];

    /// The command parameter's name.
    pub fn name(self) -> &'static str {
        match self {
            NicParam::RxRing => "rx_ring",
            NicParam::TxRing => "tx_ring",
            NicParam::RxChannels => "rx_channels",
            NicParam::TxChannels => "tx_channels",
            NicParam::Combined => "combined",
            NicParam::RxUsecs => "rx_usecs",
            NicParam::TxUsecs => "tx_usecs",
            NicParam::TxQueueLen => "txqueuelen",
        }
    }

    pub fn from_name(s: &str) -> Option<NicParam> {
        NicParam::ALL.iter().copied().find(|p| p.name() == s)
    }

    pub fn group(self) -> NicGroup {
        match self {
            NicParam::RxRing | NicParam::TxRing => NicGroup::Rings,
            NicParam::RxChannels | NicParam::TxChannels | NicParam::Combined => NicGroup::Channels,
            NicParam::RxUsecs | NicParam::TxUsecs => NicGroup::Coalesce,
            NicParam::TxQueueLen => NicGroup::TxQueue,
        }
    }

    /// The keyword on the setting tool's command line.
    fn keyword(self) -> &'static str {
        match self {
            NicParam::RxRing | NicParam::RxChannels => "rx",
            NicParam::TxRing | NicParam::TxChannels => "tx",
            NicParam::Combined => "combined",
            NicParam::RxUsecs => "rx-usecs",
            NicParam::TxUsecs => "tx-usecs",
            NicParam::TxQueueLen => "txqueuelen",
        }
    }

    /// The label in `ethtool -g/-l/-c` output.
    fn label(self) -> &'static str {
        match self {
            NicParam::RxRing | NicParam::RxChannels => "RX",
            NicParam::TxRing | NicParam::TxChannels => "TX",
            NicParam::Combined => "Combined",
            NicParam::RxUsecs => "rx-usecs",
            NicParam::TxUsecs => "tx-usecs",
            NicParam::TxQueueLen => "txqlen",
        }
    }

    /// Accepted values: wide enough for any real device, narrow enough to
    /// catch a unit mistake (milliseconds given as microseconds...).
    fn range(self) -> (u64, u64) {
        match self.group() {
            NicGroup::Rings => (1, 1 << 20),
            NicGroup::Channels => (0, 65_536),
            NicGroup::Coalesce => (0, 10_000_000),
            NicGroup::TxQueue => (0, 1 << 24),
        }
    }
}

impl NicGroup {
    fn params(self) -> impl Iterator<Item = NicParam> {
        NicParam::ALL
            .iter()
            .copied()
            .filter(move |p| p.group() == self)
    }
}

/// What one read of a group found: current values and, where the tool
/// shows them, the maxima; None is the tool's `n/a`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupValues {
    pub current: BTreeMap<NicParam, Option<u32>>,
    pub max: BTreeMap<NicParam, Option<u32>>,
}

fn value(s: &str) -> Option<u32> {
    s.trim().parse().ok()
}

/// Parses `ethtool -g` or `ethtool -l` output (sections of `Label: value`).
/// Without the section headers, a label seen twice is first the maximum
/// (ethtool prints maxima first), one seen once a current value.
pub fn parse_ethtool_sections(group: NicGroup, text: &str) -> GroupValues {
    let mut out = GroupValues::default();
    let mut in_max = false;
    let mut headers = false;
    let mut seen: Vec<(NicParam, Option<u32>)> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("Pre-set maximums") {
            in_max = true;
            headers = true;
            continue;
        }
        if t.starts_with("Current hardware settings") {
            in_max = false;
            headers = true;
            continue;
        }
        let Some((label, v)) = t.split_once(':') else {
            continue;
        };
        for p in group.params().filter(|p| p.label() == label.trim()) {
            seen.push((p, value(v)));
            let map = if in_max {
                &mut out.max
            } else {
                &mut out.current
            };
            map.insert(p, value(v));
        }
    }
    if !headers {
        out = GroupValues::default();
        for (p, v) in seen {
            if out.current.contains_key(&p) && !out.max.contains_key(&p) {
                // The first one was the maximum.
                let first = out.current.remove(&p).flatten();
                out.max.insert(p, first);
            }
            out.current.insert(p, v);
        }
    }
    out
}

/// Parses `ethtool -c` output (`rx-usecs: 3` lines).
pub fn parse_ethtool_coalesce(text: &str) -> GroupValues {
    let mut out = GroupValues::default();
    for line in text.lines() {
        if let Some((k, v)) = line.trim().split_once(':') {
            if let Some(p) = NicGroup::Coalesce.params().find(|p| p.label() == k.trim()) {
                out.current.insert(p, value(v));
            }
        }
    }
    out
}

/// Parses `ip -j link show dev IF` for the transmit queue length.
pub fn parse_ip_link(text: &str) -> Result<GroupValues, ExecError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| ExecError::Parse {
        what: "ip -j link show".into(),
        why: e.to_string(),
    })?;
    let qlen = v
        .get(0)
        .and_then(|l| l.get("txqlen"))
        .and_then(serde_json::Value::as_u64)
        .and_then(|n| u32::try_from(n).ok());
    let mut out = GroupValues::default();
    out.current.insert(NicParam::TxQueueLen, qlen);
    Ok(out)
}

fn says_unsupported(text: &str) -> bool {
    text.to_ascii_lowercase().contains("not supported")
}

fn says_no_device(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("no such device") || t.contains("no device matches") || t.contains("does not exist")
}

/// Parses and checks a command's parameters.
pub fn parse_params(cmd: &ExecCommand) -> Result<Vec<(NicParam, u32)>, ExecError> {
    let names: Vec<&str> = NicParam::ALL.iter().map(|p| p.name()).collect();
    validate::known_params(&cmd.params, &names)?;
    let mut out = Vec::new();
    for (k, v) in &cmd.params {
        let Some(p) = NicParam::from_name(k) else {
            continue;
        };
        let (lo, hi) = p.range();
        out.push((p, validate::uint(k, v, lo, hi)? as u32));
    }
    if out.is_empty() {
        return Err(ExecError::invalid(
            "params",
            "",
            format!("retune_nic needs at least one of {}", names.join(", ")),
        ));
    }
    out.sort();
    Ok(out)
}

pub struct NicExecutor<R: Runner = SystemRunner> {
    runner: R,
    journal: Journal,
    /// Run every tool inside this network namespace (`ip netns exec NS`).
    netns: Option<String>,
    pub ethtool: String,
    pub ip: String,
}

impl NicExecutor<SystemRunner> {
    pub fn new(journal: Journal) -> Self {
        NicExecutor::with_runner(SystemRunner::default(), journal)
    }
}

impl<R: Runner> NicExecutor<R> {
    pub fn with_runner(runner: R, journal: Journal) -> Self {
        NicExecutor {
            runner,
            journal,
            netns: None,
            ethtool: "ethtool".into(),
            ip: "ip".into(),
        }
    }

    /// Acts on the interfaces of network namespace `ns` (a node agent in
    /// the host namespace tuning a container's device, or a test's veth).
    pub fn in_netns(mut self, ns: &str) -> Result<Self, ExecError> {
        validate::simple_name("netns", ns)?;
        self.netns = Some(ns.to_string());
        Ok(self)
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    fn wrap(&self, mut a: Vec<String>) -> Vec<String> {
        if let Some(ns) = &self.netns {
            let mut w = argv([self.ip.as_str(), "netns", "exec", ns.as_str()]);
            w.append(&mut a);
            a = w;
        }
        a
    }

    /// The argv that reads `group` of `ifname`.
    pub fn read_argv(&self, ifname: &str, group: NicGroup) -> Vec<String> {
        let a = match group {
            NicGroup::Rings => argv([self.ethtool.as_str(), "-g", ifname]),
            NicGroup::Channels => argv([self.ethtool.as_str(), "-l", ifname]),
            NicGroup::Coalesce => argv([self.ethtool.as_str(), "-c", ifname]),
            NicGroup::TxQueue => argv([self.ip.as_str(), "-j", "link", "show", "dev", ifname]),
        };
        self.wrap(a)
    }

    /// The argv that sets `values` (all of one group) on `ifname`.
    pub fn set_argv(
        &self,
        ifname: &str,
        group: NicGroup,
        values: &[(NicParam, u32)],
    ) -> Vec<String> {
        let mut a = match group {
            NicGroup::Rings => argv([self.ethtool.as_str(), "-G", ifname]),
            NicGroup::Channels => argv([self.ethtool.as_str(), "-L", ifname]),
            NicGroup::Coalesce => argv([self.ethtool.as_str(), "-C", ifname]),
            NicGroup::TxQueue => argv([self.ip.as_str(), "link", "set", "dev", ifname]),
        };
        for (p, v) in values.iter().filter(|(p, _)| p.group() == group) {
            a.push(p.keyword().to_string());
            a.push(v.to_string());
        }
        self.wrap(a)
    }

    /// Every argv that `cmd` would run to set its values, one per group, in
    /// order; nothing is run. (What it reads first: [`Self::read_argv`].)
    pub fn argv_for(&self, cmd: &ExecCommand) -> Result<Vec<Vec<String>>, ExecError> {
        validate::ifname("target", &cmd.target)?;
        let values = parse_params(cmd)?;
        Ok(groups(&values)
            .into_iter()
            .map(|g| self.set_argv(&cmd.target, g, &values))
            .collect())
    }

    /// Reads `group` of `ifname`: Ok(Err(why)) when the device does not
    /// support it.
    pub fn read(
        &mut self,
        ifname: &str,
        group: NicGroup,
    ) -> Result<Result<GroupValues, String>, ExecError> {
        let a = self.read_argv(ifname, group);
        let out = self.runner.run(&a)?;
        if !out.success() {
            let text = out.text();
            if says_no_device(&text) {
                return Err(ExecError::NotFound {
                    what: "interface",
                    name: ifname.to_string(),
                });
            }
            if says_unsupported(&text) {
                return Ok(Err(format!(
                    "`{}`: {}",
                    super::run::show(&a),
                    first_line(&text)
                )));
            }
            return Err(super::run::failed(&a, &out));
        }
        Ok(Ok(match group {
            NicGroup::Rings | NicGroup::Channels => parse_ethtool_sections(group, &out.stdout),
            NicGroup::Coalesce => parse_ethtool_coalesce(&out.stdout),
            NicGroup::TxQueue => parse_ip_link(&out.stdout)?,
        }))
    }

    /// Runs one group's setting: Ok(Err(why)) when unsupported.
    fn set(
        &mut self,
        ifname: &str,
        group: NicGroup,
        values: &[(NicParam, u32)],
    ) -> Result<Result<(), String>, ExecError> {
        let a = self.set_argv(ifname, group, values);
        let out = self.runner.run(&a)?;
        if out.success() {
            return Ok(Ok(()));
        }
        let text = out.text();
        if says_unsupported(&text) {
            return Ok(Err(format!(
                "`{}`: {}",
                super::run::show(&a),
                first_line(&text)
            )));
        }
        Err(super::run::failed(&a, &out))
    }

    fn retune(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError> {
        validate::ifname("target", &cmd.target)?;
        let values = parse_params(cmd)?;
        let ifname = cmd.target.as_str();
        // Phase 1: read everything, decide per setting.
        let mut changes: BTreeMap<NicParam, Change> = BTreeMap::new();
        let mut todo: BTreeMap<NicGroup, Vec<(NicParam, u32)>> = BTreeMap::new();
        for group in groups(&values) {
            let read = self.read(ifname, group)?;
            for &(p, want) in values.iter().filter(|(p, _)| p.group() == group) {
                let want_s = want.to_string();
                let found = match &read {
                    Err(why) => {
                        changes.insert(p, Change::unsupported(p.name(), Some(want_s), why.clone()));
                        continue;
                    }
                    Ok(v) => v,
                };
                let Some(Some(now)) = found.current.get(&p).copied() else {
                    let why = format!("{ifname} reports no {} value (n/a)", p.name());
                    changes.insert(p, Change::unsupported(p.name(), Some(want_s), why));
                    continue;
                };
                match found.max.get(&p).copied() {
                    Some(Some(max)) if want > max => {
                        return Err(ExecError::invalid(
                            p.name(),
                            &want_s,
                            format!("over {ifname}'s maximum of {max}; nothing was changed"),
                        ));
                    }
                    // Ring sizes only under a maximum the device stated.
                    None | Some(None) if group == NicGroup::Rings && want != now => {
                        return Err(ExecError::invalid(
                            p.name(),
                            &want_s,
                            format!(
                                "`ethtool -g {ifname}` states no maximum for it, so the size cannot be checked; nothing was changed"
                            ),
                        ));
                    }
                    _ => {}
                }
                if now == want {
                    changes.insert(p, Change::already(p.name(), want_s));
                } else {
                    changes.insert(p, Change::applied(p.name(), Some(now.to_string()), want_s));
                    todo.entry(group).or_default().push((p, want));
                }
            }
        }
        // Phase 2: apply group by group; undo on a real failure.
        let mut done: Vec<NicGroup> = Vec::new();
        for (group, set) in &todo {
            match self.set(ifname, *group, set) {
                Ok(Ok(())) => done.push(*group),
                Ok(Err(why)) => {
                    for (p, _) in set {
                        if let Some(c) = changes.get_mut(p) {
                            c.status = ChangeStatus::Unsupported(why.clone());
                        }
                    }
                }
                Err(e) => {
                    let applied: Vec<Change> = changes
                        .values()
                        .filter(|c| c.status == ChangeStatus::Applied)
                        .filter(|c| {
                            NicParam::from_name(&c.field).is_some_and(|p| done.contains(&p.group()))
                        })
                        .cloned()
                        .collect();
                    let undo = match self.restore(ifname, &applied) {
                        Ok(_) if applied.is_empty() => "nothing had been changed".to_string(),
                        Ok(_) => format!("undone: {}", summarize(&applied)),
                        Err(u) => format!("undoing {} failed too: {u}", summarize(&applied)),
                    };
                    return Err(ExecError::Partial {
                        error: Box::new(e),
                        undo,
                    });
                }
            }
        }
        let changes: Vec<Change> = changes.into_values().collect();
        let any = |s: fn(&ChangeStatus) -> bool| changes.iter().any(|c| s(&c.status));
        let outcome = if any(|s| *s == ChangeStatus::Applied) {
            Outcome::Done
        } else if any(|s| *s == ChangeStatus::AlreadySet) {
            Outcome::AlreadyDone
        } else {
            return Err(ExecError::Unsupported {
                target: ifname.to_string(),
                why: summarize(&changes),
            });
        };
        let detail = format!("{ifname}: {}", summarize(&changes));
        Ok(Applied::new(outcome, changes, detail))
    }

    /// Sets each applied change's field back to its `before`, group by
    /// group; returns what it did.
    fn restore(&mut self, ifname: &str, applied: &[Change]) -> Result<Vec<Change>, ExecError> {
        let mut by_group: BTreeMap<NicGroup, Vec<(NicParam, u32)>> = BTreeMap::new();
        for c in applied.iter().filter(|c| c.status == ChangeStatus::Applied) {
            let (Some(p), Some(before)) = (NicParam::from_name(&c.field), c.before.as_deref())
            else {
                continue;
            };
            let v = validate::uint(p.name(), before, 0, u32::MAX as u64)? as u32;
            by_group.entry(p.group()).or_default().push((p, v));
        }
        let mut out = Vec::new();
        // Last applied first, as they were applied in group order.
        for (group, want) in by_group.into_iter().rev() {
            let now = match self.read(ifname, group)? {
                Ok(v) => v,
                Err(why) => {
                    return Err(ExecError::Unsupported {
                        target: ifname.to_string(),
                        why,
                    })
                }
            };
            let mut set = Vec::new();
            for (p, v) in want {
                match now.current.get(&p).copied().flatten() {
                    Some(n) if n == v => out.push(Change::already(p.name(), v.to_string())),
                    n => {
                        out.push(Change::applied(
                            p.name(),
                            n.map(|n| n.to_string()),
                            v.to_string(),
                        ));
                        set.push((p, v));
                    }
                }
            }
            if !set.is_empty() {
                if let Err(why) = self.set(ifname, group, &set)? {
                    return Err(ExecError::Unsupported {
                        target: ifname.to_string(),
                        why,
                    });
                }
            }
        }
        Ok(out)
    }
}

fn groups(values: &[(NicParam, u32)]) -> Vec<NicGroup> {
    let mut g: Vec<NicGroup> = values.iter().map(|(p, _)| p.group()).collect();
    g.sort();
    g.dedup();
    g
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| says_unsupported(l))
        .or_else(|| text.lines().map(str::trim).find(|l| !l.is_empty()))
        .unwrap_or("")
        .to_string()
}

impl<R: Runner> Executor for NicExecutor<R> {
    fn name(&self) -> &'static str {
        "nic"
    }

    fn handles(&self, action: Action) -> bool {
        action == Action::RetuneNic
    }

    fn apply(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError> {
        if let Some(done) = seen_before(self, &self.journal, cmd)? {
            return Ok(done);
        }
        let applied = self.retune(cmd)?;
        self.journal.record(cmd, &applied)?;
        Ok(applied)
    }

    fn rollback(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError> {
        let applied = match to_roll_back(self, &self.journal, cmd)? {
            Ok(a) => a,
            Err(already) => return Ok(already),
        };
        validate::ifname("target", &cmd.target)?;
        let changes = self.restore(&cmd.target, &applied.changes)?;
        self.journal.mark_rolled_back(&cmd.idempotency_key)?;
        let detail = if changes.is_empty() {
            format!("nothing to roll back on {}: it changed nothing", cmd.target)
        } else {
            format!("rolled back {}: {}", cmd.target, summarize(&changes))
        };
        Ok(Applied::new(Outcome::RolledBack, changes, detail))
    }
}

#[cfg(test)]
#[path = "nic_tests.rs"]
mod tests;
