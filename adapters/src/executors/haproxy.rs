//! The router for `remap_requests`: HAProxy's runtime API, over its stats
//! socket (`stats socket PATH level admin` in the `global` section).
//!
//! Command: target `BACKEND/SERVER` (or `SERVER` with a `backend`
//! parameter); `weight` = 0..256, or `P%` of the server's initial weight;
//! `state` = `ready`, `drain` or `maint`; at least one of the two. The
//! current weight (`get weight`) and admin state (`show servers state`) are
//! read first, so that a value already in place is "already done" and a
//! rollback puts back exactly what was there.
//!
//! Names go onto a line-oriented protocol where `;` and newlines separate
//! commands, so they are held to `[A-Za-z0-9._-]+`.

use super::{
    seen_before, summarize, to_roll_back, undo_list, validate, Applied, Change, ExecCommand,
    ExecError, Executor, Journal, Outcome,
};
use keel_model::Action;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read (`show stat` of a few thousand servers).
const MAX_REPLY: u64 = 64 << 20;

/// A server's administrative state, as the runtime API sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    Ready,
    Drain,
    Maint,
}

impl AdminState {
    pub fn wire(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }

    pub fn parse(field: &str, s: &str) -> Result<AdminState, ExecError> {
        match s {
            "ready" => Ok(AdminState::Ready),
            "drain" => Ok(AdminState::Drain),
            "maint" => Ok(AdminState::Maint),
            _ => Err(ExecError::invalid(
                field,
                s,
                "expected ready, drain or maint",
            )),
        }
    }

    /// From `srv_admin_state` of `show servers state`: forced (0x01) or
    /// configured (0x04) maintenance, forced drain (0x08).
    pub fn from_bits(bits: u32) -> AdminState {
        if bits & 0x05 != 0 {
            AdminState::Maint
        } else if bits & 0x08 != 0 {
            AdminState::Drain
        } else {
            AdminState::Ready
        }
    }
}

/// `get weight` answers `CURRENT (initial INITIAL)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weight {
    pub current: u32,
    pub initial: u32,
}

pub fn parse_weight(reply: &str) -> Result<Weight, ExecError> {
    let bad = || ExecError::Parse {
        what: "get weight".into(),
        why: format!("{:?}", reply.trim()),
    };
    let t = reply.trim();
    let (cur, rest) = t.split_once(" (initial ").ok_or_else(bad)?;
    let init = rest.strip_suffix(')').ok_or_else(bad)?;
    Ok(Weight {
        current: cur.trim().parse().map_err(|_| bad())?,
        initial: init.trim().parse().map_err(|_| bad())?,
    })
}

/// One row of `show stat`: a frontend, backend or server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatRow {
    /// `pxname`
    pub proxy: String,
    /// `svname`: a server's name, or `FRONTEND` / `BACKEND`
    pub server: String,
    /// `status`: `UP`, `DOWN`, `DRAIN`, `MAINT`, `no check`, ...
    pub status: String,
    /// `weight`: the effective weight
    pub weight: Option<u32>,
    /// Every column by its header name.
    pub fields: BTreeMap<String, String>,
}

/// Splits one CSV line; HAProxy quotes fields that hold commas or quotes.
fn csv_split(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Parses `show stat` (CSV with a `# pxname,svname,...` header).
pub fn parse_show_stat(text: &str) -> Result<Vec<StatRow>, ExecError> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .ok_or_else(|| ExecError::Parse {
            what: "show stat".into(),
            why: "no `# pxname,...` header".into(),
        })?;
    let names = csv_split(header);
    let mut rows = Vec::new();
    for line in lines {
        let fields: BTreeMap<String, String> = names
            .iter()
            .cloned()
            .zip(csv_split(line))
            .filter(|(k, _)| !k.is_empty())
            .collect();
        let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
        rows.push(StatRow {
            proxy: get("pxname"),
            server: get("svname"),
            status: get("status"),
            weight: get("weight").parse().ok(),
            fields: fields.clone(),
        });
    }
    Ok(rows)
}

/// One server of `show servers state BACKEND`: its admin state bits and
/// user weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerState {
    pub admin_bits: u32,
    pub uweight: u32,
    pub iweight: u32,
}

impl ServerState {
    pub fn admin(&self) -> AdminState {
        AdminState::from_bits(self.admin_bits)
    }
}

pub fn parse_servers_state(
    text: &str,
    backend: &str,
    server: &str,
) -> Result<Option<ServerState>, ExecError> {
    let bad = |why: &str| ExecError::Parse {
        what: "show servers state".into(),
        why: why.to_string(),
    };
    let header = text
        .lines()
        .find_map(|l| l.strip_prefix("# "))
        .ok_or_else(|| bad("no `# be_id ...` header"))?;
    let names: Vec<&str> = header.split_whitespace().collect();
    let col = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| bad(&format!("no {name} column")))
    };
    let (be, sv, adm, uw, iw) = (
        col("be_name")?,
        col("srv_name")?,
        col("srv_admin_state")?,
        col("srv_uweight")?,
        col("srv_iweight")?,
    );
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(be) == Some(&backend) && f.get(sv) == Some(&server) {
            let num = |i: usize| {
                f.get(i)
                    .and_then(|v| v.parse::<u32>().ok())
                    .ok_or_else(|| bad(&format!("column {} of {line:?}", names[i])))
            };
            return Ok(Some(ServerState {
                admin_bits: num(adm)?,
                uweight: num(uw)?,
                iweight: num(iw)?,
            }));
        }
    }
    Ok(None)
}

/// A client of one HAProxy runtime API socket.
#[derive(Debug, Clone)]
pub struct RuntimeApi {
    pub socket: PathBuf,
    pub timeout: Duration,
}

impl RuntimeApi {
    pub fn new(socket: impl Into<PathBuf>) -> RuntimeApi {
        RuntimeApi {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sends one command line and returns the whole answer (the socket is
    /// in non-interactive mode: HAProxy answers and closes).
    pub fn command(&self, line: &str) -> Result<String, ExecError> {
        if line.contains(['\n', '\r', ';']) {
            return Err(ExecError::invalid(
                "runtime API command",
                line,
                "one command per call",
            ));
        }
        let io = |what: &str, error| {
            ExecError::Io {
            what: format!(
                "{what} HAProxy's stats socket {} (is haproxy running with `stats socket {} level admin`?)",
                self.socket.display(),
                self.socket.display()
            ),
            error,
        }
        };
        let mut s = UnixStream::connect(&self.socket).map_err(|e| io("connecting to", e))?;
        s.set_read_timeout(Some(self.timeout))
            .and_then(|_| s.set_write_timeout(Some(self.timeout)))
            .map_err(|e| io("setting timeouts on", e))?;
        s.write_all(format!("{line}\n").as_bytes())
            .map_err(|e| io("writing to", e))?;
        let mut reply = String::new();
        s.take(MAX_REPLY)
            .read_to_string(&mut reply)
            .map_err(|e| io("reading from", e))?;
        if reply.trim_start().starts_with("Permission denied") {
            return Err(ExecError::Failed {
                argv: line.to_string(),
                status: "refused".into(),
                stderr: format!("{}: the stats socket needs `level admin`", reply.trim()),
            });
        }
        Ok(reply)
    }

    /// A command that answers nothing on success; any text is its error.
    fn quiet(&self, line: &str) -> Result<(), ExecError> {
        let reply = self.command(line)?;
        match reply.trim() {
            "" => Ok(()),
            text => Err(ExecError::Failed {
                argv: line.to_string(),
                status: "refused".into(),
                stderr: text.to_string(),
            }),
        }
    }

    pub fn get_weight(&self, backend: &str, server: &str) -> Result<Weight, ExecError> {
        names(backend, server)?;
        let reply = self.command(&format!("get weight {backend}/{server}"))?;
        not_found(&reply, backend, server)?;
        parse_weight(&reply)
    }

    pub fn set_weight(&self, backend: &str, server: &str, weight: u32) -> Result<(), ExecError> {
        names(backend, server)?;
        self.quiet(&format!("set server {backend}/{server} weight {weight}"))
    }

    pub fn set_state(
        &self,
        backend: &str,
        server: &str,
        state: AdminState,
    ) -> Result<(), ExecError> {
        names(backend, server)?;
        self.quiet(&format!(
            "set server {backend}/{server} state {}",
            state.wire()
        ))
    }

    pub fn server_state(&self, backend: &str, server: &str) -> Result<ServerState, ExecError> {
        names(backend, server)?;
        let reply = self.command(&format!("show servers state {backend}"))?;
        not_found(&reply, backend, server)?;
        parse_servers_state(&reply, backend, server)?.ok_or_else(|| ExecError::NotFound {
            what: "HAProxy server",
            name: format!("{backend}/{server}"),
        })
    }

    pub fn show_stat(&self) -> Result<Vec<StatRow>, ExecError> {
        parse_show_stat(&self.command("show stat")?)
    }
}

fn names(backend: &str, server: &str) -> Result<(), ExecError> {
    validate::simple_name("backend", backend)?;
    validate::simple_name("server", server)
}

fn not_found(reply: &str, backend: &str, server: &str) -> Result<(), ExecError> {
    let t = reply.trim();
    if t.starts_with("No such") || t.starts_with("Can't find") {
        return Err(ExecError::NotFound {
            what: "HAProxy server",
            name: format!("{backend}/{server} ({t})"),
        });
    }
    Ok(())
}

/// `remap_requests` through one HAProxy.
pub struct HaproxyExecutor {
    pub api: RuntimeApi,
    journal: Journal,
}

impl HaproxyExecutor {
    pub fn new(socket: impl AsRef<Path>, journal: Journal) -> Self {
        HaproxyExecutor {
            api: RuntimeApi::new(socket.as_ref()),
            journal,
        }
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    fn target(cmd: &ExecCommand) -> Result<(String, String), ExecError> {
        let (backend, server) = match (cmd.target.split_once('/'), cmd.params.get("backend")) {
            (Some((b, s)), None) => (b.to_string(), s.to_string()),
            (None, Some(b)) => (b.clone(), cmd.target.clone()),
            (Some(_), Some(b)) => {
                return Err(ExecError::invalid(
                    "backend",
                    b,
                    "given twice: in the target (BACKEND/SERVER) and as a parameter",
                ))
            }
            (None, None) => {
                return Err(ExecError::invalid(
                    "target",
                    &cmd.target,
                    "expected BACKEND/SERVER (or SERVER with a backend parameter)",
                ))
            }
        };
        validate::simple_name("backend", &backend)?;
        validate::simple_name("server", &server)?;
        Ok((backend, server))
    }

    fn remap(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError> {
        validate::known_params(&cmd.params, &["backend", "weight", "state"])?;
        let (backend, server) = Self::target(cmd)?;
        let weight = cmd
            .params
            .get("weight")
            .map(|w| parse_weight_param(w))
            .transpose()?;
        let state = cmd
            .params
            .get("state")
            .map(|s| AdminState::parse("state", s))
            .transpose()?;
        if weight.is_none() && state.is_none() {
            return Err(ExecError::invalid(
                "params",
                "",
                "remap_requests needs a weight or a state",
            ));
        }
        // Read before writing: what rollback restores, and whether there is
        // anything to do at all.
        let now = self.api.get_weight(&backend, &server)?;
        let mut changes = Vec::new();
        if let Some(w) = weight {
            let want = match w {
                WeightParam::Absolute(n) => n,
                // As HAProxy computes `set weight B/S P%`.
                WeightParam::Percent(p) => now.initial * p / 100,
            };
            if want == now.current {
                changes.push(Change::already("weight", want.to_string()));
            } else {
                self.api.set_weight(&backend, &server, want)?;
                changes.push(Change::applied(
                    "weight",
                    Some(now.current.to_string()),
                    want.to_string(),
                ));
            }
        }
        if let Some(s) = state {
            let now = self.api.server_state(&backend, &server)?;
            if s == now.admin() {
                changes.push(Change::already("state", s.wire()));
            } else if let Err(e) = self.api.set_state(&backend, &server, s) {
                return Err(self.undo_partial(&backend, &server, &changes, e));
            } else {
                changes.push(Change::applied(
                    "state",
                    Some(now.admin().wire().into()),
                    s.wire(),
                ));
            }
        }
        let outcome = if changes
            .iter()
            .any(|c| c.status == super::ChangeStatus::Applied)
        {
            Outcome::Done
        } else {
            Outcome::AlreadyDone
        };
        let detail = format!("{backend}/{server}: {}", summarize(&changes));
        Ok(Applied::new(outcome, changes, detail))
    }

    fn undo_partial(
        &self,
        backend: &str,
        server: &str,
        changes: &[Change],
        e: ExecError,
    ) -> ExecError {
        let undo = match changes
            .iter()
            .find(|c| c.field == "weight" && c.status == super::ChangeStatus::Applied)
        {
            None => return e,
            Some(c) => {
                let old = c
                    .before
                    .as_deref()
                    .and_then(|w| w.parse().ok())
                    .unwrap_or(0);
                match self.api.set_weight(backend, server, old) {
                    Ok(()) => format!("weight put back to {old}"),
                    Err(u) => format!("weight left changed: {u}"),
                }
            }
        };
        ExecError::Partial {
            error: Box::new(e),
            undo,
        }
    }
}

/// A `weight` parameter: absolute (0..256) or a share of the initial weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightParam {
    Absolute(u32),
    Percent(u32),
}

pub fn parse_weight_param(w: &str) -> Result<WeightParam, ExecError> {
    match w.strip_suffix('%') {
        Some(p) => Ok(WeightParam::Percent(
            validate::uint("weight", p, 0, 100)? as u32
        )),
        None => Ok(WeightParam::Absolute(
            validate::uint("weight", w, 0, 256)? as u32
        )),
    }
}

impl Executor for HaproxyExecutor {
    fn name(&self) -> &'static str {
        "haproxy"
    }

    fn handles(&self, action: Action) -> bool {
        action == Action::RemapRequests
    }

    fn apply(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError> {
        if let Some(done) = seen_before(self, &self.journal, cmd)? {
            return Ok(done);
        }
        let applied = self.remap(cmd)?;
        self.journal.record(cmd, &applied)?;
        Ok(applied)
    }

    fn rollback(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError> {
        let applied = match to_roll_back(self, &self.journal, cmd)? {
            Ok(a) => a,
            Err(already) => return Ok(already),
        };
        let (backend, server) = Self::target(cmd)?;
        let mut changes = Vec::new();
        for (field, old) in undo_list(&applied) {
            match field.as_str() {
                "state" => {
                    let now = self.api.server_state(&backend, &server)?;
                    let s = AdminState::parse("previous state", &old)?;
                    if s == now.admin() {
                        changes.push(Change::already("state", old));
                    } else {
                        self.api.set_state(&backend, &server, s)?;
                        changes.push(Change::applied(
                            "state",
                            Some(now.admin().wire().into()),
                            old,
                        ));
                    }
                }
                "weight" => {
                    let now = self.api.get_weight(&backend, &server)?;
                    let w = validate::uint("previous weight", &old, 0, 256)? as u32;
                    if w == now.current {
                        changes.push(Change::already("weight", old));
                    } else {
                        self.api.set_weight(&backend, &server, w)?;
                        changes.push(Change::applied(
                            "weight",
                            Some(now.current.to_string()),
                            old,
                        ));
                    }
                }
                _ => {}
            }
        }
        self.journal.mark_rolled_back(&cmd.idempotency_key)?;
        let detail = format!("rolled back {backend}/{server}: {}", summarize(&changes));
        Ok(Applied::new(Outcome::RolledBack, changes, detail))
    }
}

#[cfg(test)]
#[path = "haproxy_tests.rs"]
mod tests;
