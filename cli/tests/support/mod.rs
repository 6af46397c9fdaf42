//! What the end-to-end tests share: the `keel` binary, a cluster of real
//! processes killed when the test ends, and waiting without wall-clock
//! assertions.

#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One plain HTTP/1.0 GET on loopback with an `Accept` header: the status
/// code and the body (None: no answer).
pub fn http_get(port: u16, path: &str, accept: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: localhost\r\nAccept: {accept}\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|b| b.1.to_string())?;
    Some((code, body))
}

pub fn keel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keel"))
}

/// A port free for both UDP and TCP (QUIC listens on one, HTTP on the
/// other) below Linux's ephemeral range (32768-60999): a server restarted
/// on it does not find it taken by some client's socket, as an ephemeral
/// port freed by a stopped server can be.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos().into());
    for _ in 0..1000 {
        // A mixed counter (splitmix64): another test binary picks others.
        let mut x = seed.wrapping_add(NEXT.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed));
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let port = 20_000 + ((x ^ (x >> 31)) % 12_000) as u16;
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every process of the cluster, killed when the test ends however it ends.
pub struct Cluster {
    pub dir: PathBuf,
    pub procs: Vec<(String, Option<Child>)>,
    pub ctl_ports: Vec<u16>,
    /// A view (`Cluster::view`) asks, and leaves processes and files alone.
    pub view: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, p) in self.procs.iter_mut() {
            if let Some(p) = p.as_mut() {
                let _ = p.kill();
                let _ = p.wait();
            }
        }
        if !self.view && std::env::var_os("KEEL_KEEP_TEST_DIR").is_none() {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }
}

impl Cluster {
    /// A CA, an operator certificate and `n` controller replicas in `dir`.
    pub fn start(dir: &Path, n: usize) -> Cluster {
        ok(keel().args(["cert", "init", "--out"]).arg(dir.join("ca")));
        let ctl_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            procs: Vec::new(),
            ctl_ports: ctl_ports.clone(),
            view: false,
        };
        c.issue("operator", "op");
        for i in 0..n {
            let creds = c.issue("controller", &format!("ctl-{}", i + 1));
            let mut cfg = format!(
                "id = {}\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\ncredentials = \"{}\"\n",
                i + 1,
                ctl_ports[i],
                dir.join(format!("data-{}", i + 1)).display(),
                creds.display()
            );
            for j in (0..n).filter(|&j| j != i) {
                cfg += &format!(
                    "[[peers]]\nid = {}\naddr = \"127.0.0.1:{}\"\nname = \"ctl-{}\"\n",
                    j + 1,
                    ctl_ports[j],
                    j + 1
                );
            }
            let path = dir.join(format!("ctl-{}.toml", i + 1));
            std::fs::write(&path, cfg).unwrap();
            c.spawn(&format!("ctl-{}", i + 1), "controller", &path);
        }
        c
    }

    /// The `[[controllers]]` tables of a sensor's, correlator's or executor's config.
    pub fn controllers_toml(&self) -> String {
        self.ctl_ports
            .iter()
            .enumerate()
            .map(|(j, port)| {
                format!(
                    "[[controllers]]\naddr = \"127.0.0.1:{port}\"\nname = \"ctl-{}\"\n",
                    j + 1
                )
            })
            .collect()
    }

    pub fn start_correlators(&mut self, hosts: &[&str]) {
        self.start_correlators_with(hosts, "");
    }

    /// `start_correlators` with more of their config (`check_clock = false`
    /// for hosts fed by replayed traces).
    pub fn start_correlators_with(&mut self, hosts: &[&str], extra: &str) {
        for host in hosts {
            let creds = self.issue("correlator", host);
            let cfg = format!(
                "listen = \"127.0.0.1:{}\"\ncredentials = \"{}\"\n{extra}{}",
                free_port(),
                creds.display(),
                self.controllers_toml()
            );
            let path = self.dir.join(format!("{host}.toml"));
            std::fs::write(&path, cfg).unwrap();
            self.spawn(host, "correlator", &path);
        }
    }

    /// A view that asks questions and owns no process (for another thread).
    pub fn view(&self) -> Cluster {
        Cluster {
            dir: self.dir.clone(),
            procs: Vec::new(),
            ctl_ports: self.ctl_ports.clone(),
            view: true,
        }
    }

    /// The leader's id, as the first replica that answers says.
    pub fn leader(&self, alive: &[usize]) -> Option<u64> {
        alive.iter().find_map(|&i| {
            let s = self.ask(i, &["status", "--json"])?;
            s["leader"].as_u64().filter(|l| *l > 0)
        })
    }

    pub fn issue(&self, role: &str, name: &str) -> PathBuf {
        let out = self.dir.join(format!("{role}-{name}"));
        ok(keel()
            .args(["cert", "issue", "--role", role, "--name", name, "--ca"])
            .arg(self.dir.join("ca"))
            .arg("--out")
            .arg(&out));
        out
    }

    pub fn spawn(&mut self, name: &str, role: &str, config: &Path) {
        self.spawn_with_env(name, role, config, &[]);
    }

    /// `spawn`, with these environment variables set for the process.
    pub fn spawn_with_env(&mut self, name: &str, role: &str, config: &Path, env: &[(&str, &str)]) {
        // Appended to: a restarted process's log follows its first life's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .unwrap();
        let child = keel()
            .arg(role)
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.push((name.to_string(), Some(child)));
    }

    pub fn kill(&mut self, name: &str) {
        let (_, p) = self
            .procs
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no process {name}"));
        let mut child = p.take().unwrap_or_else(|| panic!("{name} already killed"));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts again, from its config file, a process `kill`ed or
    /// `terminate`d before (same name, same data folder).
    pub fn restart(&mut self, name: &str, role: &str) {
        let i = self
            .procs
            .iter()
            .position(|(n, p)| n == name && p.is_none())
            .unwrap_or_else(|| panic!("no stopped process {name}"));
        self.procs.remove(i);
        let config = self.dir.join(format!("{name}.toml"));
        self.spawn(name, role, &config);
    }

    /// Stops a process with SIGTERM and waits for it (a bounded wait, so a
    /// process that ignores it fails the test); its exit status.
    pub fn terminate(&mut self, name: &str) -> std::process::ExitStatus {
        let (_, p) = self
            .procs
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no process {name}"));
        let mut child = p.take().unwrap_or_else(|| panic!("{name} already stopped"));
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM {name}");
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > until {
                let _ = child.kill();
                panic!("{name} ignored SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How a started process ended, if it has.
    pub fn exited(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        self.procs
            .iter_mut()
            .find(|(n, _)| n == name)
            .and_then(|(_, p)| p.as_mut())
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The process id of a running process.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, p)| p.as_ref())
            .map(Child::id)
    }

    /// A new controller replica (`join = true`, the existing replicas as
    /// peers), started and listening; its index for `ask`. Add it with
    /// `keel controller join --id {index + 1} ...` (see `join_args`).
    pub fn start_joiner(&mut self) -> usize {
        let i = self.ctl_ports.len();
        let port = free_port();
        let creds = self.issue("controller", &format!("ctl-{}", i + 1));
        let mut cfg = format!(
            "id = {}\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\ncredentials = \"{}\"\njoin = true\n",
            i + 1,
            port,
            self.dir.join(format!("data-{}", i + 1)).display(),
            creds.display()
        );
        for (j, p) in self.ctl_ports.iter().enumerate() {
            cfg += &format!(
                "[[peers]]\nid = {}\naddr = \"127.0.0.1:{}\"\nname = \"ctl-{}\"\n",
                j + 1,
                p,
                j + 1
            );
        }
        self.ctl_ports.push(port);
        let path = self.dir.join(format!("ctl-{}.toml", i + 1));
        std::fs::write(&path, cfg).unwrap();
        self.spawn(&format!("ctl-{}", i + 1), "controller", &path);
        i
    }

    /// `keel controller join` arguments that add replica `joiner`, asked
    /// of replica `via`.
    pub fn join_args(&self, joiner: usize, via: usize) -> Vec<String> {
        let mut args: Vec<String> = [
            "controller",
            "join",
            "--id",
            &(joiner + 1).to_string(),
            "--addr",
            &format!("127.0.0.1:{}", self.ctl_ports[joiner]),
            "--member-name",
            &format!("ctl-{}", joiner + 1),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.at(via));
        args
    }

    /// The arguments that point a CLI command at controller `i` as the operator.
    pub fn at(&self, i: usize) -> Vec<String> {
        vec![
            "--controller".into(),
            format!("127.0.0.1:{}", self.ctl_ports[i]),
            "--name".into(),
            format!("ctl-{}", i + 1),
            "--credentials".into(),
            self.dir.join("operator-op").display().to_string(),
        ]
    }

    /// Runs `keel ARGS` against controller `i` as the operator: exit
    /// status, standard output, standard error.
    pub fn run_at(&self, i: usize, args: &[&str]) -> (bool, String, String) {
        let out = keel().args(args).args(self.at(i)).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Asks controller `i` (0-based) as the operator.
    pub fn ask(&self, i: usize, args: &[&str]) -> Option<Value> {
        serde_json::from_str(&self.ask_text(i, args)?).ok()
    }

    /// Asks controller `i` as the operator; its standard output, if it succeeded.
    pub fn ask_text(&self, i: usize, args: &[&str]) -> Option<String> {
        let out = keel()
            .args(args)
            .arg("--controller")
            .arg(format!("127.0.0.1:{}", self.ctl_ports[i]))
            .args(["--name", &format!("ctl-{}", i + 1), "--credentials"])
            .arg(self.dir.join("operator-op"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (name, _) in &self.procs {
            let text =
                std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            s += &format!("--- {name} (last lines)\n");
            for l in tail.iter().rev() {
                s += l;
                s += "\n";
            }
        }
        s
    }
}

/// Waits until `f` returns something, up to `limit`; the limit only
/// bounds a failing run.
pub fn wait_for<T>(limit: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    wait_every(limit, Duration::from_millis(250), f)
}

/// `wait_for`, asking every `every`.
pub fn wait_every<T>(
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(every);
    }
    None
}
