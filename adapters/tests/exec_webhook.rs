//! The webhook executor against a real HTTP endpoint on loopback (a small
//! server the test runs): what it posts, and how it takes the answers.

use keel_adapters::{ExecCommand, ExecError, Executor, Journal, Outcome, WebhookExecutor};
use keel_model::Action;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;

/// One request as the server saw it.
struct Seen {
    head: String,
    body: serde_json::Value,
}

/// Serves one answer per connection, in order, and reports each request.
fn serve(answers: Vec<&'static str>) -> (String, mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/keel", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for answer in answers {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut r = BufReader::new(stream);
            let mut head = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0u8; len];
            let _ = r.read_exact(&mut body);
            let _ = tx.send(Seen {
                head,
                body: serde_json::from_slice(&body).unwrap_or_default(),
            });
            let _ = r.get_mut().write_all(answer.as_bytes());
        }
    });
    (url, rx)
}

#[test]
fn commands_are_posted_once_and_errors_are_errors() {
    let (url, seen) = serve(vec![
        "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nshifted!",
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 13\r\n\r\nrouter is off",
        "HTTP/1.0 204 No Content\r\n\r\n",
    ]);
    let mut exec = WebhookExecutor::new(
        &url,
        &[Action::RemapRequests, Action::Notify],
        Journal::in_memory(),
    )
    .unwrap();
    let cmd = ExecCommand::new(Action::RemapRequests, "replica-3", "act-1").param("weight", "50%");

    let a = exec.apply(&cmd).unwrap();
    assert_eq!(a.outcome, Outcome::Done);
    assert!(
        a.detail.contains("200 OK") && a.detail.contains("shifted!"),
        "{}",
        a.detail
    );
    let s = seen.recv().unwrap();
    assert!(
        s.head.starts_with("POST /hooks/keel HTTP/1.1\r\n"),
        "{}",
        s.head
    );
    assert!(s.head.contains("Idempotency-Key: act-1\r\n"), "{}", s.head);
    assert!(
        s.head.contains("Content-Type: application/json\r\n"),
        "{}",
        s.head
    );
    assert_eq!(s.body["action"], "remap_requests");
    assert_eq!(s.body["target"], "replica-3");
    assert_eq!(s.body["params"]["weight"], "50%");
    assert_eq!(s.body["phase"], "apply");

    // The same key: nothing is posted.
    assert_eq!(exec.apply(&cmd).unwrap().outcome, Outcome::AlreadyDone);

    // A non-2xx answer is an error carrying the status and body.
    let other =
        ExecCommand::new(Action::Notify, "oncall", "act-2").param("text", "straggler on n3");
    let err = exec.apply(&other).unwrap_err();
    assert!(matches!(err, ExecError::Failed { .. }), "{err}");
    assert!(
        err.to_string().contains("503") && err.to_string().contains("router is off"),
        "{err}"
    );
    assert!(
        exec.journal().get("act-2").is_none(),
        "a refused command is not remembered as done"
    );
    seen.recv().unwrap();

    // Rollback posts the same command in phase rollback.
    let r = exec.rollback(&cmd).unwrap();
    assert_eq!(r.outcome, Outcome::RolledBack);
    let s = seen.recv().unwrap();
    assert_eq!(s.body["phase"], "rollback");
    assert_eq!(s.body["idempotency_key"], "act-1");
    assert_eq!(exec.rollback(&cmd).unwrap().outcome, Outcome::AlreadyDone);

    // Nobody listening: an error naming the URL.
    drop(seen);
    let mut gone = WebhookExecutor::new(
        "http://127.0.0.1:1/x",
        &[Action::Notify],
        Journal::in_memory(),
    )
    .unwrap();
    let err = gone
        .apply(&ExecCommand::new(Action::Notify, "oncall", "act-3"))
        .unwrap_err();
    assert!(err.to_string().contains("http://127.0.0.1:1/x"), "{err}");
}
