//! Executors: carry the controller's commands out on real systems.
//!
//! Each executor is thin: it validates every id in the command, reads the
//! state it is about to change, runs the system's own tool (without a shell)
//! or speaks its API, and reports what it changed together with what was
//! there before, so that `rollback` can put it back. They are idempotent in
//! two ways: a command whose idempotency key was already applied is answered
//! from memory (the [`Journal`]) without touching anything, and a command
//! whose desired state already holds (a job already gone, a node already
//! drained, a weight already set) is answered "already done".
//!
//! - [`slurm`]: `reclaim_zombie`, `drain_node`, `resume_node`,
//!   `rebalance_ranks`, and job discovery;
//! - [`haproxy`]: `remap_requests` through HAProxy's runtime API;
//! - [`webhook`]: any action, as a JSON POST to another router or tool;
//! - [`nic`]: `retune_nic` with `ethtool` and `ip`;
//! - [`gpu_process`]: `reclaim_zombie` of a leftover process on this node's
//!   GPU, with `nvidia-smi`, `/proc` and `kill`.

pub mod gpu_process;
mod gpu_process_check;
pub mod haproxy;
pub mod journal;
pub mod log;
pub mod nic;
pub mod run;
pub mod slurm;
mod slurm_check;
pub mod slurm_gres;
mod slurm_parse;
mod slurm_text;
pub mod validate;
pub mod webhook;

pub use journal::Journal;

use keel_model::{Ack, Action, Command};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// What an executor is asked to do: `keel_model::Command` without the
/// per-delivery id, which only the acknowledgement needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecCommand {
    pub action: Action,
    pub target: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    pub idempotency_key: String,
}

impl ExecCommand {
    pub fn new(action: Action, target: impl Into<String>, key: impl Into<String>) -> Self {
        ExecCommand {
            action,
            target: target.into(),
            params: BTreeMap::new(),
            idempotency_key: key.into(),
        }
    }

    pub fn param(mut self, name: &str, value: impl Into<String>) -> Self {
        self.params.insert(name.to_string(), value.into());
        self
    }
}

impl From<&Command> for ExecCommand {
    fn from(c: &Command) -> Self {
        ExecCommand {
            action: c.action,
            target: c.target.clone(),
            params: c.params.clone(),
            idempotency_key: c.idempotency_key.clone(),
        }
    }
}

/// Whether anything was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The system was changed (some settings may still be unsupported: see
    /// the changes).
    Done,
    /// Nothing was changed: the key was applied before, or the desired state
    /// already held.
    AlreadyDone,
    /// A rollback put the previous state back.
    RolledBack,
}

/// What happened to one field of the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "why")]
pub enum ChangeStatus {
    /// Changed from `before` to `after`.
    Applied,
    /// It already had the desired value.
    AlreadySet,
    /// The device or system cannot do it; nothing was changed.
    Unsupported(String),
}

/// One field of the target, before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The command parameter (or the state) it concerns, e.g. `weight`,
    /// `rx_ring`, `state`.
    pub field: String,
    /// The value found before acting (None: the system does not report it).
    pub before: Option<String>,
    /// The value asked for.
    pub after: Option<String>,
    pub status: ChangeStatus,
}

impl Change {
    pub fn applied(field: &str, before: Option<String>, after: impl Into<String>) -> Change {
        Change {
            field: field.to_string(),
            before,
            after: Some(after.into()),
            status: ChangeStatus::Applied,
        }
    }

    pub fn already(field: &str, value: impl Into<String>) -> Change {
        let v = value.into();
        Change {
            field: field.to_string(),
            before: Some(v.clone()),
            after: Some(v),
            status: ChangeStatus::AlreadySet,
        }
    }

    pub fn unsupported(field: &str, after: Option<String>, why: impl Into<String>) -> Change {
        Change {
            field: field.to_string(),
            before: None,
            after,
            status: ChangeStatus::Unsupported(why.into()),
        }
    }
}

/// The result of `apply` or `rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub outcome: Outcome,
    /// Per field: what was found, asked for and done. The `before` of each
    /// `Applied` change is what a rollback restores.
    pub changes: Vec<Change>,
    /// One line for people and for the acknowledgement.
    pub detail: String,
}

impl Applied {
    pub fn new(outcome: Outcome, changes: Vec<Change>, detail: impl Into<String>) -> Applied {
        Applied {
            outcome,
            changes,
            detail: detail.into(),
        }
    }

    /// The previous value of every field that was changed: what rollback restores.
    pub fn previous(&self) -> BTreeMap<String, String> {
        self.changes
            .iter()
            .filter(|c| c.status == ChangeStatus::Applied)
            .filter_map(|c| Some((c.field.clone(), c.before.clone()?)))
            .collect()
    }

    /// The fields the system could not change.
    pub fn unsupported(&self) -> impl Iterator<Item = &Change> {
        self.changes
            .iter()
            .filter(|c| matches!(c.status, ChangeStatus::Unsupported(_)))
    }

    /// The acknowledgement for command `id`.
    pub fn ack(&self, id: u64) -> Ack {
        Ack {
            id,
            ok: true,
            detail: self.detail.clone(),
        }
    }
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// Why a command was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A field of the command is malformed; nothing was run.
    #[error("invalid {field} {value:?}: {why}")]
    Invalid {
        field: String,
        value: String,
        why: String,
    },
    /// This executor does not carry out that action.
    #[error("{executor} does not carry out {action}")]
    WrongAction {
        executor: &'static str,
        action: Action,
    },
    /// The same idempotency key came with a different action or target.
    #[error("idempotency key {key:?} was used for {was}, not for {now}")]
    KeyConflict {
        key: String,
        was: String,
        now: String,
    },
    /// A program the executor needs is not installed.
    #[error("{program} not found: install {package}")]
    Missing {
        program: String,
        package: &'static str,
    },
    /// A program ran and failed.
    #[error("`{argv}` failed ({status}): {stderr}")]
    Failed {
        argv: String,
        status: String,
        stderr: String,
    },
    /// A program or API answered something this executor cannot read.
    #[error("unexpected output from {what}: {why}")]
    Parse { what: String, why: String },
    /// The target does not exist (no such job, node, server or interface).
    #[error("{what} {name:?} not found")]
    NotFound { what: &'static str, name: String },
    /// Nothing requested could be done on this target.
    #[error("nothing applied to {target}: {why}")]
    Unsupported { target: String, why: String },
    /// The action cannot be undone (a cancelled job stays cancelled).
    #[error("{action} cannot be rolled back: {why}")]
    NotReversible { action: Action, why: String },
    /// Rollback of a key this executor has no record of.
    #[error("no applied command with idempotency key {0:?} to roll back")]
    NothingToRollback(String),
    /// A change failed part-way; what was applied before it was undone (or
    /// not, as `undo` says).
    #[error("{error}; {undo}")]
    Partial { error: Box<ExecError>, undo: String },
    #[error("{what}: {error}")]
    Io {
        what: String,
        #[source]
        error: std::io::Error,
    },
}

impl ExecError {
    pub fn invalid(field: &str, value: &str, why: impl Into<String>) -> ExecError {
        ExecError::Invalid {
            field: field.to_string(),
            value: value.to_string(),
            why: why.into(),
        }
    }

    /// The negative acknowledgement for command `id`.
    pub fn ack(&self, id: u64) -> Ack {
        Ack {
            id,
            ok: false,
            detail: self.to_string(),
        }
    }
}

/// One kind of executor.
pub trait Executor {
    /// Its name in messages (`slurm`, `haproxy`, `webhook`, `nic`, `gpu`).
    fn name(&self) -> &'static str;

    /// Whether it carries out `action`.
    fn handles(&self, action: Action) -> bool;

    /// Carries `cmd` out, once: a key seen before, or a desired state that
    /// already holds, gives `Outcome::AlreadyDone` and changes nothing.
    fn apply(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError>;

    /// Puts back what the command with `cmd.idempotency_key` changed, from the
    /// journal's record of it. A second rollback is `AlreadyDone`.
    fn rollback(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError>;

    /// `apply` (or `rollback`, when the command asks for it), answered as a
    /// `keel_model::Ack`.
    fn handle(&mut self, cmd: &Command) -> Ack {
        let exec = ExecCommand::from(cmd);
        let done = if cmd.rollback {
            self.rollback(&exec)
        } else {
            self.apply(&exec)
        };
        match done {
            Ok(a) => a.ack(cmd.id),
            Err(e) => e.ack(cmd.id),
        }
    }
}

/// The shared front of `apply`: refuses an action the executor does not
/// handle, and answers a key seen before from the journal. `Ok(None)` means
/// "go ahead".
pub(crate) fn seen_before(
    exec: &dyn Executor,
    journal: &Journal,
    cmd: &ExecCommand,
) -> Result<Option<Applied>, ExecError> {
    if !exec.handles(cmd.action) {
        return Err(ExecError::WrongAction {
            executor: exec.name(),
            action: cmd.action,
        });
    }
    validate::key(&cmd.idempotency_key)?;
    let Some(entry) = journal.get(&cmd.idempotency_key) else {
        return Ok(None);
    };
    entry.check_same(cmd)?;
    let mut again = entry.applied.clone();
    again.outcome = Outcome::AlreadyDone;
    again.detail = format!(
        "already done (idempotency key {:?}{}): {}",
        cmd.idempotency_key,
        if entry.rolled_back {
            ", since rolled back"
        } else {
            ""
        },
        entry.applied.detail
    );
    Ok(Some(again))
}

/// The shared front of `rollback`: the journal's record of the key, or why
/// there is nothing to do. `Ok(Err(applied))` is a rollback already done.
pub(crate) fn to_roll_back(
    exec: &dyn Executor,
    journal: &Journal,
    cmd: &ExecCommand,
) -> Result<Result<Applied, Applied>, ExecError> {
    if !exec.handles(cmd.action) {
        return Err(ExecError::WrongAction {
            executor: exec.name(),
            action: cmd.action,
        });
    }
    validate::key(&cmd.idempotency_key)?;
    let entry = journal
        .get(&cmd.idempotency_key)
        .ok_or_else(|| ExecError::NothingToRollback(cmd.idempotency_key.clone()))?;
    entry.check_same(cmd)?;
    if entry.rolled_back {
        return Ok(Err(Applied::new(
            Outcome::AlreadyDone,
            Vec::new(),
            format!(
                "already rolled back (idempotency key {:?})",
                cmd.idempotency_key
            ),
        )));
    }
    Ok(Ok(entry.applied.clone()))
}

/// The changes to undo, last first, with the value each goes back to.
pub(crate) fn undo_list(applied: &Applied) -> Vec<(String, String)> {
    applied
        .changes
        .iter()
        .rev()
        .filter(|c| c.status == ChangeStatus::Applied)
        .filter_map(|c| Some((c.field.clone(), c.before.clone()?)))
        .collect()
}

/// A one-line summary of changes: `weight 10 -> 5, state ready (already)`.
pub(crate) fn summarize(changes: &[Change]) -> String {
    let parts: Vec<String> = changes
        .iter()
        .map(|c| {
            let before = c.before.as_deref().unwrap_or("?");
            let after = c.after.as_deref().unwrap_or("?");
            match &c.status {
                ChangeStatus::Applied => format!("{} {before} -> {after}", c.field),
                ChangeStatus::AlreadySet => format!("{} {after} (already)", c.field),
                ChangeStatus::Unsupported(why) => format!("{} unsupported ({why})", c.field),
            }
        })
        .collect();
    parts.join(", ")
}
