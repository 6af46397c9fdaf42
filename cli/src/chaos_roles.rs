//! The keel side of `keel chaos run`: certificates, configs and processes
//! of the test cluster's roles (three controllers, a correlator host and an
//! executor on the host's end of the management network; a sensor inside
//! each node's namespace), each stopped when the `Roles` is dropped.

use anyhow::{bail, Context, Result};
use keel_chaos::testbed::Testbed;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The UDP port of every node's push endpoint, on its own loopback.
pub const PUSH_PORT: u16 = 7600;
/// How often each sensor reads its node's counters (ms): four times a
/// second, so that a fault shows within the 2 s the harness promises.
pub const LINUX_INTERVAL_MS: u64 = 250;

/// Collectives per edge summary. The default (2) is set for jobs that
/// step at ~30 Hz; the test job steps at 10 Hz, and one collective per
/// summary gives the correlator's window as many summaries per second.
pub const WINDOW_LEN: u64 = 1;

/// The running roles; dropping it stops them (SIGTERM, then SIGKILL).
pub struct Roles {
    pub dir: PathBuf,
    exe: PathBuf,
    procs: Vec<(String, Child)>,
    ctl_ports: Vec<u16>,
    roles_cgroup: Option<PathBuf>,
}

fn free_port(ip: &str) -> Result<u16> {
    let s = std::net::UdpSocket::bind((ip, 0)).with_context(|| format!("binding {ip}"))?;
    Ok(s.local_addr()?.port())
}

impl Roles {
    /// Issues every certificate and starts the controllers, the correlator
    /// host and the executor; `sensors` starts the rest.
    pub fn start(tb: &Testbed, dir: &Path) -> Result<Roles> {
        let exe = std::env::current_exe().context("the keel binary")?;
        let mut r = Roles {
            dir: dir.to_path_buf(),
            exe,
            procs: Vec::new(),
            ctl_ports: Vec::new(),
            roles_cgroup: tb.roles_cgroup(),
        };
        r.keel(&[
            "cert",
            "init",
            "--out",
            &dir.join("ca").display().to_string(),
        ])?;
        r.issue("operator", "op")?;
        let host = Testbed::host_mgmt_ip();
        for _ in 0..3 {
            r.ctl_ports.push(free_port(&host)?);
        }
        for i in 0..3 {
            let creds = r.issue("controller", &format!("ctl-{}", i + 1))?;
            let mut cfg = format!(
                "id = {}\nlisten = \"{host}:{}\"\ndata_dir = \"{}\"\ncredentials = \"{}\"\n",
                i + 1,
                r.ctl_ports[i],
                dir.join(format!("data-{}", i + 1)).display(),
                creds.display()
            );
            for j in (0..3).filter(|&j| j != i) {
                cfg += &format!(
                    "[[peers]]\nid = {}\naddr = \"{host}:{}\"\nname = \"ctl-{}\"\n",
                    j + 1,
                    r.ctl_ports[j],
                    j + 1
                );
            }
            r.spawn_role(&format!("ctl-{}", i + 1), "controller", &cfg, None)?;
        }
        let creds = r.issue("correlator", "corr-a")?;
        // Four ranks share this machine's cores: a small lateness must
        // outlast a burst of scheduling jitter (`weak_window`,
        // detect/src/config.rs) before it is a straggler.
        let cfg = format!(
            "listen = \"{host}:{}\"\ncredentials = \"{}\"\n{}\n[detect.straggler]\nweak_window = 32\n",
            free_port(&host)?,
            creds.display(),
            r.controllers_toml()
        );
        r.spawn_role("corr-a", "correlator", &cfg, None)?;
        let creds = r.issue("executor", "exec-1")?;
        let cfg = format!(
            "credentials = \"{}\"\nstate_dir = \"{}\"\n{}\n[log]\n\n{}",
            creds.display(),
            dir.join("executor-state").display(),
            r.controllers_toml(),
            chaos_toml(tb)
        );
        r.spawn_role("exec-1", "executor", &cfg, None)?;
        Ok(r)
    }

    /// A sensor inside each node's namespace: the push endpoint on the
    /// node's loopback, and the `linux` source reading the node's own
    /// `/proc/net/snmp`, links and CPU cgroup.
    pub fn sensors(&mut self, tb: &Testbed) -> Result<()> {
        for i in 0..tb.nodes {
            let node = keel_chaos::live::node_name(i);
            let creds = self.issue("sensor", &node)?;
            let cgroup = tb
                .sensor_cgroup(i)
                .map(|d| format!("cgroup = \"{}\"\n", d.display()))
                .unwrap_or_default();
            let cfg = format!(
                "node = \"{node}\"\ncredentials = \"{}\"\nwindow_len = {WINDOW_LEN}\n{}\n[[source]]\ntype = \"push\"\nlisten = \"udp://127.0.0.1:{PUSH_PORT}\"\n\n[[source]]\ntype = \"linux\"\ninterval_ms = {LINUX_INTERVAL_MS}\n{cgroup}",
                creds.display(),
                self.controllers_toml()
            );
            self.spawn_role(
                &format!("sensor-{node}"),
                "sensor",
                &cfg,
                Some(&Testbed::ns(i)),
            )?;
        }
        Ok(())
    }

    fn controllers_toml(&self) -> String {
        let host = Testbed::host_mgmt_ip();
        self.ctl_ports
            .iter()
            .enumerate()
            .map(|(j, p)| {
                format!(
                    "[[controllers]]\naddr = \"{host}:{p}\"\nname = \"ctl-{}\"\n",
                    j + 1
                )
            })
            .collect()
    }

    /// Runs `keel ARGS` to completion; its standard output.
    pub fn keel(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.exe)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .with_context(|| format!("keel {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "keel {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn issue(&self, role: &str, name: &str) -> Result<PathBuf> {
        let out = self.dir.join(format!("{role}-{name}"));
        self.keel(&[
            "cert",
            "issue",
            "--role",
            role,
            "--name",
            name,
            "--ca",
            &self.dir.join("ca").display().to_string(),
            "--out",
            &out.display().to_string(),
        ])?;
        Ok(out)
    }

    /// Writes NAME.toml and starts `keel ROLE --config NAME.toml` (inside
    /// namespace `ns` where given), logging to NAME.log.
    fn spawn_role(&mut self, name: &str, role: &str, cfg: &str, ns: Option<&str>) -> Result<()> {
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, cfg).with_context(|| format!("writing {}", path.display()))?;
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.exe);
                c
            }
            None => Command::new(&self.exe),
        };
        cmd.arg(role)
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        self.adopt(name, child);
        Ok(())
    }

    /// Keeps `child` to stop it with the rest, in the roles' cgroup so that
    /// a later `sweep` finds it even if this process is killed.
    pub fn adopt(&mut self, name: &str, child: Child) {
        if let Some(dir) = &self.roles_cgroup {
            // Best effort: without it only `sweep`'s safety net is lost.
            let _ = Testbed::enter(dir, child.id());
        }
        self.procs.push((name.to_string(), child));
    }

    /// The arguments that point a CLI command at controller `i` as the operator.
    pub fn at(&self, i: usize) -> Vec<String> {
        vec![
            "--controller".into(),
            format!("{}:{}", Testbed::host_mgmt_ip(), self.ctl_ports[i]),
            "--name".into(),
            format!("ctl-{}", i + 1),
            "--credentials".into(),
            self.dir.join("operator-op").display().to_string(),
        ]
    }

    /// Controller `i`, as the operator.
    pub fn controller_at(&self, i: usize) -> crate::ControllerAt {
        crate::ControllerAt::one(
            std::net::SocketAddr::new(
                Testbed::host_mgmt_ip()
                    .parse()
                    .unwrap_or([127, 0, 0, 1].into()),
                self.ctl_ports[i],
            ),
            &format!("ctl-{}", i + 1),
            self.dir.join("operator-op"),
        )
    }

    /// `keel ARGS` against the first controller that answers.
    pub fn ask(&self, args: &[&str]) -> Result<String> {
        let mut last = None;
        for i in 0..self.ctl_ports.len() {
            let at = self.at(i);
            let mut all: Vec<&str> = args.to_vec();
            all.extend(at.iter().map(String::as_str));
            match self.keel(&all) {
                Ok(out) => return Ok(out),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no controller")))
    }

    /// `ask` again until it succeeds or `limit` passes.
    pub fn ask_until(&self, args: &[&str], limit: Duration) -> Result<String> {
        let until = Instant::now() + limit;
        loop {
            match self.ask(args) {
                Ok(v) => return Ok(v),
                Err(e) if Instant::now() > until => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// A role that exited already, with its status (the workload may end
    /// well).
    pub fn exited(&mut self) -> Option<String> {
        self.procs.iter_mut().find_map(|(n, c)| {
            c.try_wait()
                .ok()
                .flatten()
                .filter(|s| !(n == "mpirun" && s.success()))
                .map(|s| format!("{n} exited: {s} (see {n}.log)"))
        })
    }
}

/// The executor's `[chaos]`: every node of the test bed open to chaos,
/// its CPU cgroup for `host` faults and its data link for `network` ones.
fn chaos_toml(tb: &Testbed) -> String {
    let mut out = "[chaos]\n".to_string();
    for i in 0..tb.nodes {
        out += &format!(
            "[chaos.nodes.{}]\nnetns = \"{}\"\nlink = \"{}\"\n",
            keel_chaos::live::node_name(i),
            Testbed::ns(i),
            keel_chaos::testbed::DATA_IF
        );
        if let Some(cg) = tb.cgroup(i) {
            out += &format!("cgroup = \"{}\"\n", cg.display());
        }
    }
    out
}

impl Drop for Roles {
    fn drop(&mut self) {
        for (_, c) in &self.procs {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let until = Instant::now() + Duration::from_secs(5);
        for (_, c) in &mut self.procs {
            while Instant::now() < until && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
