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
use crate::sources::scrape::Url;
use keel_model::Action;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an answer read; only its status and the start of its body matter.
const MAX_ANSWER: u64 = 1 << 20;
/// How much of the answer's body goes into details and errors.
const SNIPPET: usize = 300;

pub struct WebhookExecutor {
    pub url: Url,
    actions: Vec<Action>,
    pub timeout: Duration,
    journal: Journal,
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
    /// Posts the given `actions` to `url` (`http://HOST[:PORT]/PATH`).
    pub fn new(url: &str, actions: &[Action], journal: Journal) -> Result<Self, ExecError> {
        let url =
            Url::parse(url).map_err(|e| ExecError::invalid("url", url, e.kind.to_string()))?;
        Ok(WebhookExecutor {
            url,
            actions: actions.to_vec(),
            timeout: DEFAULT_TIMEOUT,
            journal,
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

    fn send(&self, cmd: &ExecCommand, phase: &str) -> Result<Answer, ExecError> {
        let answer = post(
            &self.url,
            &Self::body(cmd, phase),
            &cmd.idempotency_key,
            self.timeout,
        )?;
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

/// POSTs `body` as JSON and returns the status and the start of the answer.
pub fn post(url: &Url, body: &[u8], key: &str, timeout: Duration) -> Result<Answer, ExecError> {
    validate::key(key)?;
    let io = |what: &str, error: std::io::Error| ExecError::Io {
        what: format!("{what} {url}"),
        error,
    };
    let deadline = Instant::now() + timeout;
    let left = || {
        let d = deadline.saturating_duration_since(Instant::now());
        if d.is_zero() {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("timed out after {timeout:?}"),
            ))
        } else {
            Ok(d)
        }
    };
    // Name resolution has no timeout in std; webhook hosts are addressed by
    // IP or by names that resolve locally.
    let addrs: Vec<_> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| io("resolving", e))?
        .collect();
    let mut stream = None;
    let mut last = None;
    for addr in addrs {
        match left().and_then(|d| TcpStream::connect_timeout(&addr, d)) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut s = match (stream, last) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(io("connecting to", e)),
        (None, None) => {
            return Err(io(
                "resolving",
                std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            ))
        }
    };
    let host = if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: keel\r\nContent-Type: application/json\r\nContent-Length: {}\r\nIdempotency-Key: {key}\r\nConnection: close\r\n\r\n",
        url.path,
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    left()
        .and_then(|d| s.set_write_timeout(Some(d)))
        .and_then(|_| s.write_all(&request))
        .map_err(|e| io("sending to", e))?;
    // Read to the end (the request asked the server to close), each read
    // bounded by what is left of the deadline.
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        left()
            .and_then(|d| s.set_read_timeout(Some(d)))
            .map_err(|e| io("reading from", e))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.len() as u64 >= MAX_ANSWER {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io("reading from", e)),
        }
    }
    parse_answer(&answer).ok_or_else(|| ExecError::Parse {
        what: format!("POST {url}"),
        why: format!(
            "not an HTTP/1.x answer: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(80)])
        ),
    })
}

/// The status and the start of the body of a raw HTTP/1.x answer.
pub fn parse_answer(raw: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))
        .unwrap_or((&text, ""));
    let status_line = head.lines().next()?.trim().to_string();
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let mut body: String = body.chars().take(SNIPPET).collect();
    if body.len() < text.len() - head.len() && body.chars().count() == SNIPPET {
        body.push_str("...");
    }
    Some(Answer {
        status,
        status_line,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read() {
        let a = parse_answer(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!(
            (a.status, a.status_line.as_str(), a.body.as_str()),
            (202, "HTTP/1.1 202 Accepted", "ok")
        );
        assert_eq!(
            parse_answer(b"HTTP/1.0 500 Oops\r\n\r\n").unwrap().status,
            500
        );
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n").is_none());
        assert!(parse_answer(b"").is_none());
    }

    #[test]
    fn bad_urls_and_targets_are_refused() {
        assert!(
            WebhookExecutor::new("https://x/y", &[Action::Notify], Journal::in_memory()).is_err()
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
