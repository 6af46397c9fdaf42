//! A generic router (or anything else) behind an HTTP endpoint: each
//! command is POSTed as JSON to a configured URL, and a 2xx answer means
//! done. For routers without HAProxy's runtime API, and for `notify`.
//!
//! The body: `{"phase": "apply"|"rollback", "action", "target", "params",
//! "idempotency_key"}`, with the key also in an `Idempotency-Key` header, so
//! that the receiver can drop a retry that this executor did not (it
//! remembers keys too, but a restart without a journal file forgets them).
//!
//! The client is as small as the scrape client it shares its URL rules with
//! (plain `http://`, one request per connection); every wait has a deadline.

use super::{
    seen_before, to_roll_back, validate, Applied, Change, ExecCommand, ExecError, Executor,
    Journal, Outcome,
};
use crate::http_client::{snippet, Access, Client, HttpError};
use crate::sources::scrape::Url;
use keel_model::Action;
use std::time::Duration;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an answer read; only its status and the start of its body matter.
const MAX_ANSWER: usize = 1 << 20;

/// What the POSTed body looks like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// keel's own: `{"phase", "action", "target", "params",
    /// "idempotency_key"}`, for a router or script that acts on it.
    #[default]
    Keel,
    /// Alertmanager's API (`POST /api/v2/alerts`): one alert named
    /// `keel_ACTION`, labelled with the target, annotated with the
    /// parameters; a rollback resolves it (`endsAt` now).
    Alertmanager,
    /// A Slack-style incoming webhook: `{"text": "..."}`.
    Slack,
}

pub struct WebhookExecutor {
    pub url: Url,
    actions: Vec<Action>,
    pub timeout: Duration,
    journal: Journal,
    format: Format,
    client: Client,
}

/// What the endpoint answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The status line as sent.
    pub status_line: String,
    /// The start of the body.
    pub body: String,
}

impl WebhookExecutor {
    /// Posts the given `actions` to `url` (`http://` or `https://HOST[:PORT]/PATH`)
    /// in keel's own format, without credentials.
    pub fn new(url: &str, actions: &[Action], journal: Journal) -> Result<Self, ExecError> {
        Self::with(url, actions, journal, Format::Keel, &Access::default())
    }

    /// [`new`](Self::new) with a body `format` and `access` (a bearer token
    /// or basic authentication, an extra CA). Errors: a bad URL, a CA file
    /// that cannot be used.
    pub fn with(
        url: &str,
        actions: &[Action],
        journal: Journal,
        format: Format,
        access: &Access,
    ) -> Result<Self, ExecError> {
        let parsed =
            Url::parse(url).map_err(|e| ExecError::invalid("url", url, e.kind.to_string()))?;
        let client = Client::new(access, DEFAULT_TIMEOUT)
            .map_err(|e| ExecError::invalid("webhook", url, e.to_string()))?;
        Ok(WebhookExecutor {
            url: parsed,
            actions: actions.to_vec(),
            timeout: DEFAULT_TIMEOUT,
            journal,
            format,
            client,
        })
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The JSON body sent for `cmd` in `phase`.
    pub fn body(cmd: &ExecCommand, phase: &str) -> Vec<u8> {
        let v = serde_json::json!({
            "phase": phase,
            "action": cmd.action,
            "target": cmd.target,
            "params": cmd.params,
            "idempotency_key": cmd.idempotency_key,
        });
        v.to_string().into_bytes()
    }

    fn check(cmd: &ExecCommand) -> Result<(), ExecError> {
        validate::text("target", &cmd.target, 255)?;
        for (k, v) in &cmd.params {
            validate::text("params", k, 100)?;
            if v.chars().any(char::is_control) {
                return Err(ExecError::invalid(
                    k,
                    v,
                    "control characters are not allowed",
                ));
            }
        }
        Ok(())
    }

    /// The body in this executor's format, at `now` (Unix seconds).
    pub fn body_as(format: Format, cmd: &ExecCommand, phase: &str, now: f64) -> Vec<u8> {
        match format {
            Format::Keel => Self::body(cmd, phase),
            Format::Alertmanager => {
                let at = rfc3339(now);
                let mut alert = serde_json::json!({
                    "labels": {
                        "alertname": format!("keel_{}", cmd.action.wire()),
                        "action": cmd.action.wire(),
                        "target": cmd.target,
                        "source": "keel",
                    },
                    "annotations": {
                        "summary": format!("keel: {} {} {}", phase, cmd.action.wire(), cmd.target),
                        "params": serde_json::to_string(&cmd.params).unwrap_or_default(),
                        "idempotency_key": cmd.idempotency_key,
                    },
                    "startsAt": at,
                });
                if phase == "rollback" {
                    alert["endsAt"] = serde_json::Value::String(at);
                }
                serde_json::Value::Array(vec![alert])
                    .to_string()
                    .into_bytes()
            }
            Format::Slack => {
                let params: Vec<String> =
                    cmd.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                serde_json::json!({
                    "text": format!(
                        "keel: {phase} {} on {}{} (key {})",
                        cmd.action.wire(),
                        cmd.target,
                        if params.is_empty() { String::new() } else { format!(" ({})", params.join(", ")) },
                        cmd.idempotency_key
                    )
                })
                .to_string()
                .into_bytes()
            }
        }
    }

    fn send(&self, cmd: &ExecCommand, phase: &str) -> Result<Answer, ExecError> {
        validate::key(&cmd.idempotency_key)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let body = Self::body_as(self.format, cmd, phase, now);
        let url = self.url.to_string();
        let reply = self
            .client
            .post_json(
                &url,
                &body,
                &[("Idempotency-Key", &cmd.idempotency_key)],
                MAX_ANSWER,
            )
            .map_err(|e| match e {
                HttpError::TimedOut(_) | HttpError::Connect(_) | HttpError::Protocol(_) => {
                    ExecError::Io {
                        what: format!("POST {url}"),
                        error: std::io::Error::other(e.to_string()),
                    }
                }
                e => ExecError::Failed {
                    argv: format!("POST {url}"),
                    status: e.to_string(),
                    stderr: String::new(),
                },
            })?;
        let answer = Answer {
            status: reply.status,
            status_line: reply.status_line,
            body: snippet(&reply.body),
        };
        if (200..300).contains(&answer.status) {
            Ok(answer)
        } else {
            Err(ExecError::Failed {
                argv: format!("POST {}", self.url),
                status: answer.status_line,
                stderr: answer.body,
            })
        }
    }

    fn done(&self, outcome: Outcome, phase: &str, cmd: &ExecCommand, a: &Answer) -> Applied {
        let detail = format!(
            "{phase} {} {} posted to {}: {}{}",
            cmd.action,
            cmd.target,
            self.url,
            a.status_line,
            if a.body.trim().is_empty() {
                String::new()
            } else {
                format!(" {}", a.body.trim())
            }
        );
        Applied::new(
            outcome,
            vec![Change::applied("webhook", None, a.status.to_string())],
            detail,
        )
    }
}

impl Executor for WebhookExecutor {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn handles(&self, action: Action) -> bool {
        self.actions.contains(&action)
    }

    fn apply(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError> {
        Self::check(cmd)?;
        if let Some(done) = seen_before(self, &self.journal, cmd)? {
            return Ok(done);
        }
        let answer = self.send(cmd, "apply")?;
        let applied = self.done(Outcome::Done, "apply", cmd, &answer);
        self.journal.record(cmd, &applied)?;
        Ok(applied)
    }

    fn rollback(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError> {
        Self::check(cmd)?;
        if let Err(already) = to_roll_back(self, &self.journal, cmd)? {
            return Ok(already);
        }
        let answer = self.send(cmd, "rollback")?;
        self.journal.mark_rolled_back(&cmd.idempotency_key)?;
        Ok(self.done(Outcome::RolledBack, "rollback", cmd, &answer))
    }
}

/// `now` (Unix seconds) as RFC 3339 in UTC, as Alertmanager wants it.
fn rfc3339(now: f64) -> String {
    time::OffsetDateTime::from_unix_timestamp(now as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alertmanager_and_slack_bodies() {
        let cmd = ExecCommand::new(Action::DrainNode, "node/n3", "k9").param("reason", "ecc");
        let v: serde_json::Value = serde_json::from_slice(&WebhookExecutor::body_as(
            Format::Alertmanager,
            &cmd,
            "apply",
            1_796_000_000.0,
        ))
        .unwrap();
        assert_eq!(v[0]["labels"]["alertname"], "keel_drain_node");
        assert_eq!(v[0]["labels"]["target"], "node/n3");
        assert_eq!(v[0]["startsAt"], "2026-11-30T00:53:20Z");
        assert!(v[0].get("endsAt").is_none());
        let v: serde_json::Value = serde_json::from_slice(&WebhookExecutor::body_as(
            Format::Alertmanager,
            &cmd,
            "rollback",
            1_796_000_000.0,
        ))
        .unwrap();
        assert_eq!(v[0]["endsAt"], "2026-11-30T00:53:20Z");
        let v: serde_json::Value =
            serde_json::from_slice(&WebhookExecutor::body_as(Format::Slack, &cmd, "apply", 0.0))
                .unwrap();
        assert_eq!(
            v["text"],
            "keel: apply drain_node on node/n3 (reason=ecc) (key k9)"
        );
    }

    #[test]
    fn bad_urls_and_targets_are_refused() {
        assert!(
            WebhookExecutor::new("ftp://x/y", &[Action::Notify], Journal::in_memory()).is_err()
        );
        let mut e = WebhookExecutor::new(
            "http://127.0.0.1:9/hook",
            &[Action::Notify],
            Journal::in_memory(),
        )
        .unwrap();
        let err = e
            .apply(&ExecCommand::new(Action::Notify, "a\r\nb", "k"))
            .unwrap_err();
        assert!(
            matches!(err, ExecError::Invalid { ref field, .. } if field == "target"),
            "{err}"
        );
        let err = e
            .apply(&ExecCommand::new(Action::DrainNode, "n1", "k"))
            .unwrap_err();
        assert!(matches!(err, ExecError::WrongAction { .. }), "{err}");
    }

    #[test]
    fn the_body_carries_the_command() {
        let cmd = ExecCommand::new(Action::RemapRequests, "replica-3", "k1").param("weight", "50%");
        let v: serde_json::Value =
            serde_json::from_slice(&WebhookExecutor::body(&cmd, "apply")).unwrap();
        assert_eq!(v["action"], "remap_requests");
        assert_eq!(v["params"]["weight"], "50%");
        assert_eq!(v["idempotency_key"], "k1");
        assert_eq!(v["phase"], "apply");
    }
}
