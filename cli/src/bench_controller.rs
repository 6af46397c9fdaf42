//! `keel bench controller`: commits per second and commit latency of a
//! 3-replica controller on loopback (real processes, fsync on), then the
//! time from SIGKILLing the leader to the next commit.

use crate::demo::TempDir;
use anyhow::{bail, Context, Result};
use keel_model::{Message, Query};
use keel_transport::{Client, Credentials, Options};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn keel() -> Result<Command> {
    Ok(Command::new(std::env::current_exe()?))
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{:?}: {}", cmd, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Child processes, killed when dropped.
pub(crate) struct Procs(pub(crate) Vec<Option<Child>>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.0.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Certificates in `dir` (a CA in `ca/`, replicas `c1`..`c3`, an operator
/// in `op/`) and three controller replicas listening on `ports`.
pub(crate) fn start(dir: &Path, ports: &[u16]) -> Result<Procs> {
    start_with(dir, ports, "", false)
}

/// `start`, with `extra` appended to each replica's config, and each
/// replica's log appended to `dir/cN.log` when `logs`.
pub(crate) fn start_with(dir: &Path, ports: &[u16], extra: &str, logs: bool) -> Result<Procs> {
    run_ok(keel()?.args(["cert", "init", "--out"]).arg(dir.join("ca")))?;
    for name in ["c1", "c2", "c3"] {
        run_ok(
            keel()?
                .args([
                    "cert",
                    "issue",
                    "--role",
                    "controller",
                    "--name",
                    name,
                    "--ca",
                ])
                .arg(dir.join("ca"))
                .arg("--out")
                .arg(dir.join(name)),
        )?;
    }
    run_ok(
        keel()?
            .args([
                "cert", "issue", "--role", "operator", "--name", "bench", "--ca",
            ])
            .arg(dir.join("ca"))
            .arg("--out")
            .arg(dir.join("op")),
    )?;
    let mut procs = Vec::new();
    for i in 0..3 {
        let mut cfg = format!(
            "id = {}\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\ncredentials = \"{}\"\n",
            i + 1,
            ports[i],
            dir.join(format!("data{}", i + 1)).display(),
            dir.join(format!("c{}", i + 1)).display()
        );
        for j in (0..3).filter(|&j| j != i) {
            cfg += &format!(
                "[[peers]]\nid = {}\naddr = \"127.0.0.1:{}\"\nname = \"c{}\"\n",
                j + 1,
                ports[j],
                j + 1
            );
        }
        cfg += extra;
        std::fs::write(dir.join(format!("c{}.toml", i + 1)), cfg)?;
        procs.push(Some(spawn_replica(dir, i, logs)?));
    }
    Ok(Procs(procs))
}

/// Starts replica `i` (0-based) of `start_with` from its config in `dir`.
pub(crate) fn spawn_replica(dir: &Path, i: usize, logs: bool) -> Result<Child> {
    let stderr = if logs {
        Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("c{}.log", i + 1)))?,
        )
    } else {
        Stdio::null()
    };
    Ok(keel()?
        .arg("controller")
        .arg("--config")
        .arg(dir.join(format!("c{}.toml", i + 1)))
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()?)
}

pub(crate) fn query(topic: &str, params: BTreeMap<String, String>) -> Message {
    Message::Query(Query {
        id: 0,
        topic: topic.into(),
        params,
    })
}

fn proposal(client: &str, seq: u64) -> BTreeMap<String, String> {
    let command =
        serde_json::json!({"register_node": {"node": format!("n{seq}"), "gpus": 8, "nics": []}});
    [
        ("client", client.to_string()),
        ("seq", seq.to_string()),
        ("command", command.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

pub fn run(seconds: f64, concurrency: usize) -> Result<()> {
    let tmp = TempDir::new("keel-bench-controller")?;
    let ports: Vec<u16> = (0..3)
        .map(|_| {
            Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        })
        .collect::<Result<_>>()?;
    let mut procs = start(&tmp.0, &ports)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let creds = Credentials::from_dir(&tmp.0.join("op"))?;
        let client = Client::new(&creds, Options::default())?;
        let addr = |i: usize| -> SocketAddr { format!("127.0.0.1:{}", ports[i]).parse().expect("address") };
        // Find the leader.
        let deadline = Instant::now() + Duration::from_secs(30);
        let leader = loop {
            if Instant::now() > deadline {
                bail!("no leader within 30 s");
            }
            if let Ok((conn, _)) = client.connect(addr(0), "c1").await {
                if let Ok(Message::QueryReply(r)) = conn.request(query("status", BTreeMap::new()), Duration::from_secs(2)).await {
                    let v: serde_json::Value = serde_json::from_str(&r.body)?;
                    if let Some(l) = v["leader"].as_u64().filter(|&l| l != 0) {
                        break l as usize - 1;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (conn, _) = client.connect(addr(leader), &format!("c{}", leader + 1)).await?;
        let conn = Arc::new(conn);
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        let mut tasks = Vec::new();
        for w in 0..concurrency {
            let conn = conn.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut seq = 0u64;
                let name = format!("bench-{w}");
                while Instant::now() < end {
                    seq += 1;
                    let t = Instant::now();
                    match conn.request(query("propose", proposal(&name, seq)), Duration::from_secs(10)).await {
                        Ok(Message::QueryReply(r)) if r.ok => lat.push(t.elapsed().as_secs_f64()),
                        _ => {}
                    }
                }
                lat
            }));
        }
        let started = Instant::now();
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await?);
        }
        let took = started.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        let q = |p: f64| lat.get(((p * lat.len() as f64) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(f64::NAN) * 1000.0;
        println!(
            "3 replicas on loopback, fsync on, {concurrency} proposals in flight: {} commits in {took:.1} s = {:.0} commits/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            lat.len(),
            lat.len() as f64 / took,
            q(0.5),
            q(0.99),
            q(1.0)
        );

        // Failover: kill the leader, time until a proposal through another replica commits.
        let other = (leader + 1) % 3;
        let (conn2, _) = client.connect(addr(other), &format!("c{}", other + 1)).await?;
        if let Some(mut p) = procs.0[leader].take() {
            p.kill().context("killing the leader")?;
            p.wait()?;
        }
        let killed = Instant::now();
        let mut seq = 0;
        loop {
            seq += 1;
            if let Ok(Message::QueryReply(r)) = conn2.request(query("propose", proposal("failover", seq)), Duration::from_millis(500)).await {
                if r.ok {
                    break;
                }
            }
            if killed.elapsed() > Duration::from_secs(30) {
                bail!("no commit within 30 s of killing the leader");
            }
        }
        println!("failover: leader c{} killed (SIGKILL); next commit through c{} after {:.2} s", leader + 1, other + 1, killed.elapsed().as_secs_f64());
        Ok(())
    })
}
