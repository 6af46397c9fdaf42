//! The applied-key memory of an executor: which idempotency keys it carried
//! out, what each changed, and whether it was rolled back.
//!
//! In memory, optionally mirrored to a JSON file (rewritten whole, through a
//! temporary file and a rename, so that a crash leaves the old or the new
//! version and never half of one). The file is what lets an executor that
//! restarts between applying a command and acknowledging it answer the
//! controller's retry "already done" instead of acting twice, and still roll
//! the change back later.

use super::{Applied, ExecCommand, ExecError};
use keel_model::Action;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// How many keys are kept; the oldest go first. The controller retries a
/// command for minutes, not for thousands of commands.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// One applied key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub action: Action,
    pub target: String,
    pub applied: Applied,
    #[serde(default)]
    pub rolled_back: bool,
    /// Insertion order, for eviction.
    #[serde(default)]
    pub seq: u64,
}

impl Entry {
    /// A key may come back only with the same action and target: anything
    /// else is a controller bug, and acting on it could do the wrong thing once.
    pub fn check_same(&self, cmd: &ExecCommand) -> Result<(), ExecError> {
        if self.action == cmd.action && self.target == cmd.target {
            Ok(())
        } else {
            Err(ExecError::KeyConflict {
                key: cmd.idempotency_key.clone(),
                was: format!("{} {}", self.action, self.target),
                now: format!("{} {}", cmd.action, cmd.target),
            })
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    entries: BTreeMap<String, Entry>,
}

/// The applied keys of one executor.
#[derive(Debug)]
pub struct Journal {
    entries: BTreeMap<String, Entry>,
    path: Option<PathBuf>,
    capacity: usize,
    next_seq: u64,
}

impl Default for Journal {
    fn default() -> Self {
        Journal::in_memory()
    }
}

impl Journal {
    /// Keys kept in memory only: lost when the process ends.
    pub fn in_memory() -> Journal {
        Journal {
            entries: BTreeMap::new(),
            path: None,
            capacity: DEFAULT_CAPACITY,
            next_seq: 0,
        }
    }

    /// Keys kept in memory and in the JSON file at `path`, read now if it
    /// exists (a missing file is an empty journal; an unreadable one is an
    /// error, since starting empty would forget what was applied).
    pub fn open(path: impl Into<PathBuf>) -> Result<Journal, ExecError> {
        let path = path.into();
        let entries = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<File>(&bytes)
                    .map_err(|e| ExecError::Parse {
                        what: path.display().to_string(),
                        why: e.to_string(),
                    })?
                    .entries
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => {
                return Err(ExecError::Io {
                    what: format!("reading {}", path.display()),
                    error,
                })
            }
        };
        let next_seq = entries.values().map(|e| e.seq + 1).max().unwrap_or(0);
        Ok(Journal {
            entries,
            path: Some(path),
            capacity: DEFAULT_CAPACITY,
            next_seq,
        })
    }

    pub fn with_capacity(mut self, capacity: usize) -> Journal {
        self.capacity = capacity.max(1);
        self
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Remembers that `cmd` was applied with this result.
    pub fn record(&mut self, cmd: &ExecCommand, applied: &Applied) -> Result<(), ExecError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert(
            cmd.idempotency_key.clone(),
            Entry {
                action: cmd.action,
                target: cmd.target.clone(),
                applied: applied.clone(),
                rolled_back: false,
                seq,
            },
        );
        while self.entries.len() > self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.seq)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.entries.remove(&k),
                None => break,
            };
        }
        self.save()
    }

    /// Marks the key rolled back.
    pub fn mark_rolled_back(&mut self, key: &str) -> Result<(), ExecError> {
        if let Some(e) = self.entries.get_mut(key) {
            e.rolled_back = true;
        }
        self.save()
    }

    fn save(&self) -> Result<(), ExecError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |what: &str, error| ExecError::Io {
            what: format!("{what} {}", path.display()),
            error,
        };
        let body = serde_json::to_vec_pretty(&File {
            entries: self.entries.clone(),
        })
        .map_err(|e| ExecError::Parse {
            what: "the journal".into(),
            why: e.to_string(),
        })?;
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
        f.write_all(&body).map_err(|e| io("writing", e))?;
        // The rename is only as durable as the data under it.
        f.sync_all().map_err(|e| io("syncing", e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("renaming onto", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executors::{Change, Outcome};

    fn cmd(key: &str) -> ExecCommand {
        ExecCommand::new(Action::DrainNode, "n1", key)
    }

    fn done() -> Applied {
        Applied::new(
            Outcome::Done,
            vec![Change::applied("state", Some("IDLE".into()), "DRAIN")],
            "drained",
        )
    }

    #[test]
    fn a_journal_file_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.json");
        let mut j = Journal::open(&path).unwrap();
        j.record(&cmd("k1"), &done()).unwrap();
        j.mark_rolled_back("k1").unwrap();
        let j = Journal::open(&path).unwrap();
        let e = j.get("k1").unwrap();
        assert!(e.rolled_back);
        assert_eq!(e.applied, done());
    }

    #[test]
    fn the_oldest_keys_go_first() {
        let mut j = Journal::in_memory().with_capacity(2);
        for k in ["a", "b", "c"] {
            j.record(&cmd(k), &done()).unwrap();
        }
        assert!(j.get("a").is_none());
        assert!(j.get("b").is_some() && j.get("c").is_some());
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.json");
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(Journal::open(&path), Err(ExecError::Parse { .. })));
    }

    #[test]
    fn a_key_reused_for_another_target_is_refused() {
        let mut j = Journal::in_memory();
        j.record(&cmd("k"), &done()).unwrap();
        let other = ExecCommand::new(Action::DrainNode, "n2", "k");
        assert!(matches!(
            j.get("k").unwrap().check_same(&other),
            Err(ExecError::KeyConflict { .. })
        ));
    }
}
