//! A test cluster: one CA, certificates on demand, real quinn endpoints on
//! 127.0.0.1, and the transport's log lines captured so tests can read them.

#![allow(dead_code)]

use keel_model::{Role, Summary};
use keel_transport::certs::{Ca, Validity};
use keel_transport::{Client, Credentials, Options, Server};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// A generous guard against hangs; never a speed assertion.
pub const GUARD: Duration = Duration::from_secs(20);

pub struct Cluster {
    pub ca: Ca,
}

impl Cluster {
    pub fn new() -> Self {
        logs();
        Cluster {
            ca: Ca::generate(Validity::days(30)).unwrap(),
        }
    }

    pub fn creds(&self, role: Role, name: &str) -> Credentials {
        self.creds_valid(role, name, Validity::days(1))
    }

    pub fn creds_valid(&self, role: Role, name: &str, v: Validity) -> Credentials {
        Credentials::new(
            self.ca.pem.cert.clone(),
            self.ca.issue(role, name, v).unwrap(),
        )
    }

    pub fn server(&self, role: Role, name: &str, opts: Options) -> Server {
        Server::bind(local(0), &self.creds(role, name), opts).unwrap()
    }

    pub fn client(&self, role: Role, name: &str, opts: Options) -> Client {
        Client::new(&self.creds(role, name), opts).unwrap()
    }
}

pub fn local(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

pub fn summary(i: u64) -> Summary {
    Summary {
        node: "node-0017".into(),
        job: "job-42".into(),
        rank: (i % 64) as u32,
        window: 7,
        window_end: 1_700_000_000.0 + i as f64,
        count: 120,
        step_us: 33_000,
        dur_p50_us: 8_400,
        dur_p99_us: 31_000,
        offset_us: 0,
    }
}

#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line the transport wrote so far, in this test binary.
pub fn logs() -> Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("keel_transport=info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        logs
    })
    .clone()
}

/// The refusal log lines that mention all of `needles`.
pub fn refusal_lines(needles: &[&str]) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().0.lock().unwrap()).to_string();
    text.lines()
        .filter(|l| l.contains("refused") && needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

/// Wait until `f` holds, polling; panics after [`GUARD`].
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < GUARD, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
