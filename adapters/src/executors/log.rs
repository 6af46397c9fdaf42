//! `notify` to the log: one `warn` line per notification (target
//! `keel::notify`), for a person reading the journal or an alerting rule
//! that matches on it. Idempotent like every executor: a key seen before is
//! not logged again.

use super::{
    seen_before, to_roll_back, Applied, ExecCommand, ExecError, Executor, Journal, Outcome,
};
use keel_model::Action;

pub struct LogExecutor {
    journal: Journal,
}

impl LogExecutor {
    pub fn new(journal: Journal) -> Self {
        LogExecutor { journal }
    }
}

impl Executor for LogExecutor {
    fn name(&self) -> &'static str {
        "log"
    }

    fn handles(&self, action: Action) -> bool {
        action == Action::Notify
    }

    fn apply(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError> {
        if let Some(done) = seen_before(self, &self.journal, cmd)? {
            return Ok(done);
        }
        let message = cmd
            .params
            .get("message")
            .cloned()
            .unwrap_or_else(|| format!("keel: {}", cmd.target));
        tracing::warn!(target: "keel::notify", about = cmd.target, key = cmd.idempotency_key, "{message}");
        let applied = Applied::new(Outcome::Done, Vec::new(), format!("logged: {message}"));
        self.journal.record(cmd, &applied)?;
        Ok(applied)
    }

    fn rollback(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError> {
        if let Err(already) = to_roll_back(self, &self.journal, cmd)? {
            return Ok(already);
        }
        Err(ExecError::NotReversible {
            action: Action::Notify,
            why: "a notification stays sent".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_is_logged_once_per_key() {
        let mut e = LogExecutor::new(Journal::in_memory());
        let cmd = ExecCommand::new(Action::Notify, "job/7", "f1/n/notify/job/7")
            .param("message", "rank 3 is late");
        assert_eq!(e.apply(&cmd).unwrap().outcome, Outcome::Done);
        assert_eq!(e.apply(&cmd).unwrap().outcome, Outcome::AlreadyDone);
        let drain = ExecCommand::new(Action::DrainNode, "n1", "k2");
        assert!(matches!(
            e.apply(&drain),
            Err(ExecError::WrongAction { .. })
        ));
        assert!(matches!(
            e.rollback(&cmd),
            Err(ExecError::NotReversible { .. })
        ));
    }
}
