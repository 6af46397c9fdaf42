//! The HAProxy executor against a real `haproxy` (Debian package `haproxy`:
//! `apt-get install -y haproxy`), started by the test with one backend of
//! two servers pointed at TCP listeners the test holds, and an admin stats
//! socket. Every change is checked through HAProxy's own `get weight` and
//! `show stat`. Without haproxy the test fails, saying so.

use keel_adapters::executors::haproxy::{AdminState, HaproxyExecutor, RuntimeApi, StatRow};
use keel_adapters::{ChangeStatus, ExecCommand, ExecError, Executor, Journal, Outcome};
use keel_model::Action;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// haproxy, stopped when the test ends however it ends.
struct Haproxy {
    child: Child,
    _servers: [TcpListener; 2],
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Haproxy {
    let dir = tempfile::tempdir().unwrap();
    let servers = [
        TcpListener::bind("127.0.0.1:0").unwrap(),
        TcpListener::bind("127.0.0.1:0").unwrap(),
    ];
    let port = |i: usize| servers[i].local_addr().unwrap().port();
    let socket = dir.path().join("admin.sock");
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n    stats socket {} mode 600 level admin\n\
             defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n\
             backend replicas\n    balance roundrobin\n    server r1 127.0.0.1:{} weight 10\n    server r2 127.0.0.1:{} weight 20\n",
            socket.display(),
            port(0),
            port(1)
        ),
    )
    .unwrap();
    let child = match Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("cannot start haproxy ({e}): install it (apt-get install -y haproxy)"),
    };
    let mut h = Haproxy {
        child,
        _servers: servers,
        _dir: dir,
        socket,
    };
    let end = Instant::now() + Duration::from_secs(20);
    while RuntimeApi::new(&h.socket).command("show info").is_err() {
        if let Ok(Some(status)) = h.child.try_wait() {
            panic!("haproxy exited ({status}) before its stats socket answered");
        }
        assert!(
            Instant::now() < end,
            "haproxy's stats socket did not answer within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    h
}

fn stat(socket: &Path, server: &str) -> StatRow {
    RuntimeApi::new(socket)
        .show_stat()
        .unwrap()
        .into_iter()
        .find(|r| r.proxy == "replicas" && r.server == server)
        .unwrap_or_else(|| panic!("no replicas/{server} in show stat"))
}

fn weight(socket: &Path, server: &str) -> (u32, u32) {
    let w = RuntimeApi::new(socket)
        .get_weight("replicas", server)
        .unwrap();
    (w.current, w.initial)
}

#[test]
fn weights_and_states_change_through_the_runtime_api_and_roll_back() {
    let h = start();
    let s = h.socket.as_path();
    let mut exec = HaproxyExecutor::new(s, Journal::in_memory());
    assert_eq!(weight(s, "r1"), (10, 10));

    // An absolute weight: read first, then set; HAProxy's stats agree.
    let w5 = ExecCommand::new(Action::RemapRequests, "replicas/r1", "remap-1").param("weight", "5");
    let a = exec.apply(&w5).unwrap();
    assert_eq!(a.outcome, Outcome::Done, "{a:?}");
    assert_eq!(a.previous()["weight"], "10");
    assert_eq!(weight(s, "r1"), (5, 10));
    assert_eq!(stat(s, "r1").weight, Some(5));
    assert_eq!(
        stat(s, "r2").weight,
        Some(20),
        "the other server is untouched"
    );

    // The same key again, and a new key for the weight already set: nothing runs.
    assert_eq!(exec.apply(&w5).unwrap().outcome, Outcome::AlreadyDone);
    let same =
        ExecCommand::new(Action::RemapRequests, "replicas/r1", "remap-2").param("weight", "5");
    let a = exec.apply(&same).unwrap();
    assert_eq!(a.outcome, Outcome::AlreadyDone);
    assert_eq!(a.changes[0].status, ChangeStatus::AlreadySet);

    // A share of the initial weight, with the server named by parameter.
    let half = ExecCommand::new(Action::RemapRequests, "r2", "remap-3")
        .param("backend", "replicas")
        .param("weight", "25%");
    exec.apply(&half).unwrap();
    assert_eq!(weight(s, "r2"), (5, 20));

    // Drain: new requests stop; show stat says DRAIN.
    let drain =
        ExecCommand::new(Action::RemapRequests, "replicas/r2", "remap-4").param("state", "drain");
    assert_eq!(exec.apply(&drain).unwrap().outcome, Outcome::Done);
    assert_eq!(stat(s, "r2").status, "DRAIN");
    assert_eq!(
        RuntimeApi::new(s)
            .server_state("replicas", "r2")
            .unwrap()
            .admin(),
        AdminState::Drain
    );

    // Rollbacks restore exactly what was there, and only once.
    let r = exec.rollback(&drain).unwrap();
    assert_eq!(r.outcome, Outcome::RolledBack, "{r:?}");
    assert_ne!(stat(s, "r2").status, "DRAIN");
    assert_eq!(exec.rollback(&w5).unwrap().outcome, Outcome::RolledBack);
    assert_eq!(weight(s, "r1"), (10, 10));
    assert_eq!(stat(s, "r1").weight, Some(10));
    assert_eq!(exec.rollback(&w5).unwrap().outcome, Outcome::AlreadyDone);
    exec.rollback(&half).unwrap();
    assert_eq!(weight(s, "r2"), (20, 20));
    // remap-2 changed nothing, so its rollback changes nothing either.
    let r = exec.rollback(&same).unwrap();
    assert!(r.changes.is_empty(), "{r:?}");
    assert_eq!(weight(s, "r1"), (10, 10));

    // Weight and state together, rolled back together.
    let both = ExecCommand::new(Action::RemapRequests, "replicas/r1", "remap-5")
        .param("weight", "0")
        .param("state", "maint");
    exec.apply(&both).unwrap();
    assert!(
        stat(s, "r1").status.starts_with("MAINT"),
        "{}",
        stat(s, "r1").status
    );
    exec.rollback(&both).unwrap();
    assert_eq!(weight(s, "r1"), (10, 10));
    assert!(!stat(s, "r1").status.starts_with("MAINT"));

    // HAProxy's refusals come back as errors naming what was wrong.
    let err = exec
        .apply(
            &ExecCommand::new(Action::RemapRequests, "replicas/r9", "remap-6").param("weight", "1"),
        )
        .unwrap_err();
    assert!(matches!(err, ExecError::NotFound { .. }), "{err}");
    assert!(exec
        .rollback(&ExecCommand::new(
            Action::RemapRequests,
            "replicas/r1",
            "never"
        ))
        .is_err());
}
