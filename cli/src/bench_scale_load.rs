//! The load of `keel bench scale`: proposals that build the simulated
//! cluster, sensors asking for their routes, correlator hosts greeting every
//! replica, and the loss of one host.

use crate::bench_controller::query;
use anyhow::{bail, Context, Result};
use keel_model::{JobRecord, Message};
use keel_transport::Connection;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a sensor asks for its routes (the sensor's `ROUTES_EVERY`),
/// and a correlator host says hello (the correlator's `HELLO_EVERY`).
pub const POLL: Duration = Duration::from_millis(500);
/// Requests in flight at once, per kind of load.
pub const IN_FLIGHT: usize = 64;
/// A request unanswered this long counts as failed.
const ASK: Duration = Duration::from_secs(10);

/// One simulated correlator host's latest assignment (from replica 1).
#[derive(Default)]
pub struct HostView {
    pub jobs: HashSet<String>,
    /// When the last answered `hello` was sent.
    pub last_hello: Option<Instant>,
}

/// What the load tasks share and count.
pub struct Load {
    pub stop: AtomicBool,
    pub errors: AtomicUsize,
    pub views: Vec<Mutex<HostView>>,
    pub silenced: Vec<AtomicBool>,
    /// Seconds per answered request.
    pub hello_lat: Mutex<Vec<f64>>,
    pub routes_lat: Mutex<Vec<f64>>,
    pub hello_bytes: AtomicUsize,
    pub hello_count: AtomicUsize,
    pub polls: AtomicUsize,
}

impl Load {
    pub fn new(hosts: usize) -> Load {
        Load {
            stop: AtomicBool::new(false),
            errors: AtomicUsize::new(0),
            views: (0..hosts).map(|_| Mutex::default()).collect(),
            silenced: (0..hosts).map(|_| AtomicBool::new(false)).collect(),
            hello_lat: Mutex::default(),
            routes_lat: Mutex::default(),
            hello_bytes: AtomicUsize::new(0),
            hello_count: AtomicUsize::new(0),
            polls: AtomicUsize::new(0),
        }
    }

    fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn params(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Sends `msg`; the reply body of an answered query (or acknowledgement).
pub async fn ask(conn: &Connection, msg: Message) -> Result<String> {
    match conn.request(msg, ASK).await? {
        Message::QueryReply(r) if r.ok => Ok(r.body),
        Message::Ack(a) if a.ok => Ok(a.detail),
        Message::QueryReply(r) => bail!("refused: {}", r.body),
        Message::Ack(a) => bail!("refused: {}", a.detail),
        other => bail!("answered {}", other.kind()),
    }
}

/// An item of an answer: only its job's name is read.
#[derive(serde::Deserialize)]
struct Item {
    job: String,
}

/// A versioned answer of the controller's routing index (`routes` with a
/// cursor, `hello`): what changed since the cursor.
#[derive(serde::Deserialize)]
struct Delta {
    epoch: u64,
    version: u64,
    #[serde(default)]
    reset: bool,
    #[serde(default)]
    more: bool,
    #[serde(default)]
    changed: Vec<Item>,
    #[serde(default)]
    removed: Vec<String>,
}

/// A `routes` or `hello` answer: a delta, or (from a controller that
/// recomputes every answer) the whole list.
enum Answer {
    Delta(Delta),
    List(Vec<Item>),
}

fn answer(body: &str) -> Option<Answer> {
    serde_json::from_str(body)
        .map(Answer::Delta)
        .or_else(|_| serde_json::from_str(body).map(Answer::List))
        .ok()
}

/// Follows a cursor: the params that ask for what changed after it.
fn with_cursor(mut p: BTreeMap<String, String>, cursor: (u64, u64)) -> BTreeMap<String, String> {
    p.insert("epoch".into(), cursor.0.to_string());
    p.insert("since".into(), cursor.1.to_string());
    p
}

/// Proposes every command (JSON) through `conn`, `IN_FLIGHT` at once, one
/// client session with increasing sequence numbers; a failed proposal is
/// retried under its own number.
pub async fn commit_all(conn: &Arc<Connection>, commands: Vec<String>) -> Result<()> {
    let commands = Arc::new(commands);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (conn, commands, next) = (conn.clone(), commands.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(c) = commands.get(i) else {
                    return Ok::<(), anyhow::Error>(());
                };
                let p = params(&[
                    ("client", "bench-scale".into()),
                    ("seq", (i + 1).to_string()),
                    ("command", c.clone()),
                ]);
                let mut tries = 0;
                while let Err(e) = ask(&conn, query("propose", p.clone())).await {
                    tries += 1;
                    if tries == 5 {
                        bail!("proposal {i} not committed: {e:#}");
                    }
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// Host `h` greets every replica every `POLL` until stopped or silenced,
/// as `keel correlator` does: the same greeting to all; the replica that
/// answered first is the source whose changes it follows (with a cursor,
/// the others refuse to answer, which is a greeting heard); pages follow
/// at once while the answer says there is more.
pub fn spawn_host(load: Arc<Load>, h: usize, conns: Vec<Arc<Connection>>) {
    let advertise = format!("127.0.0.1:{}", 20_000 + h);
    tokio::spawn(async move {
        let mut source: Option<(usize, (u64, u64))> = None;
        let mut silent = 0;
        while !load.stop.load(Ordering::Relaxed) {
            let round = Instant::now();
            let mut more = !load.silenced[h].load(Ordering::Relaxed);
            while more {
                more = false;
                let mut p = params(&[("addr", advertise.clone())]);
                if let Some((_, cursor)) = source {
                    p = with_cursor(p, cursor);
                }
                for (i, c) in conns.iter().enumerate() {
                    let t = Instant::now();
                    let r = ask(c, query("hello", p.clone())).await;
                    let is_source = source.is_none_or(|(s, _)| s == i);
                    match r {
                        Ok(body) => {
                            load.hello_lat
                                .lock()
                                .unwrap()
                                .push(t.elapsed().as_secs_f64());
                            load.hello_bytes.fetch_add(body.len(), Ordering::Relaxed);
                            load.hello_count.fetch_add(1, Ordering::Relaxed);
                            if !is_source {
                                continue;
                            }
                            silent = 0;
                            let mut v = load.views[h].lock().unwrap();
                            match answer(&body) {
                                Some(Answer::Delta(d)) => {
                                    source = Some((i, (d.epoch, d.version)));
                                    if d.reset {
                                        v.jobs.clear();
                                    }
                                    for job in &d.removed {
                                        v.jobs.remove(job);
                                    }
                                    v.jobs.extend(d.changed.into_iter().map(|j| j.job));
                                    more = d.more;
                                }
                                Some(Answer::List(jobs)) => {
                                    v.jobs = jobs.into_iter().map(|j| j.job).collect();
                                }
                                None => {}
                            }
                            v.last_hello = Some(t);
                        }
                        // A replica that is not the source heard the greeting.
                        Err(e) if !is_source && format!("{e:#}").contains("greeted") => {
                            load.hello_lat
                                .lock()
                                .unwrap()
                                .push(t.elapsed().as_secs_f64());
                            load.hello_count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            load.failed();
                            if is_source {
                                silent += 1;
                                if silent >= 3 {
                                    source = None;
                                }
                            }
                        }
                    }
                }
            }
            tokio::time::sleep(POLL.saturating_sub(round.elapsed())).await;
        }
    });
}

/// The sensors of nodes `0..n` ask for their routes every `POLL`, node `i`
/// of replica `i mod 3`, following their cursors as `keel sensor` does (a
/// controller without a routing index ignores them and answers in full);
/// a round starts when the last one is answered.
pub fn spawn_sensors(load: Arc<Load>, conns: Vec<Arc<Connection>>, n: usize) {
    let cursors: Arc<Vec<Mutex<(u64, u64)>>> =
        Arc::new((0..n).map(|_| Mutex::new((0, 0))).collect());
    tokio::spawn(async move {
        let sem = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        while !load.stop.load(Ordering::Relaxed) {
            let round = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..n {
                let Ok(permit) = sem.clone().acquire_owned().await else {
                    return;
                };
                let (conn, load, cursors) = (
                    conns[i % conns.len()].clone(),
                    load.clone(),
                    cursors.clone(),
                );
                tasks.spawn(async move {
                    let node = crate::bench_scale::node_name(i).to_string();
                    loop {
                        let cursor = *cursors[i].lock().unwrap();
                        let p = with_cursor(params(&[("node", node.clone())]), cursor);
                        let t = Instant::now();
                        match ask(&conn, query("routes", p)).await {
                            Ok(body) => {
                                load.routes_lat
                                    .lock()
                                    .unwrap()
                                    .push(t.elapsed().as_secs_f64());
                                load.polls.fetch_add(1, Ordering::Relaxed);
                                if let Some(Answer::Delta(d)) = answer(&body) {
                                    *cursors[i].lock().unwrap() = (d.epoch, d.version);
                                    if d.more {
                                        continue;
                                    }
                                }
                            }
                            Err(_) => {
                                load.failed();
                                *cursors[i].lock().unwrap() = (0, 0);
                            }
                        }
                        break;
                    }
                    drop(permit);
                });
            }
            while tasks.join_next().await.is_some() {}
            tokio::time::sleep(POLL.saturating_sub(round.elapsed())).await;
        }
    });
}

/// Silences host 0 and times, from its last `hello`, how long until (1) the
/// `routes` a sensor of one of its jobs asks, on every replica, name
/// another host, and (2) another host's `hello` hands that job over.
pub async fn lose_host(
    load: &Load,
    conns: &[Arc<Connection>],
    hosts: usize,
    running: &[JobRecord],
) -> Result<(f64, f64)> {
    // A running job host 0 holds, and a node it runs on.
    let job = {
        let v = load.views[0].lock().unwrap();
        let mut jobs: Vec<&String> = v.jobs.iter().filter(|j| j.starts_with("run-")).collect();
        jobs.sort();
        jobs.first().map(|j| j.to_string())
    }
    .context("host-0 was given no running job")?;
    let node = running
        .iter()
        .find(|r| r.job == job.as_str())
        .and_then(|r| r.nodes.first())
        .context("job placement")?
        .to_string();
    load.silenced[0].store(true, Ordering::Relaxed);
    // The hello in flight when silenced may still land: wait it out.
    tokio::time::sleep(POLL).await;
    let last = load.views[0]
        .lock()
        .unwrap()
        .last_hello
        .context("host-0 never greeted")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut routes_at = None;
    let mut takeover_at = None;
    while routes_at.is_none() || takeover_at.is_none() {
        if Instant::now() > deadline {
            bail!("host-0's job {job} did not move within 30 s");
        }
        if routes_at.is_none() {
            let mut moved = 0;
            for c in conns {
                let body = ask(c, query("routes", params(&[("node", node.clone())])))
                    .await
                    .unwrap_or_default();
                let routes: Vec<serde_json::Value> =
                    serde_json::from_str(&body).unwrap_or_default();
                if routes.iter().any(|r| {
                    r["job"] == job.as_str() && r["host"].as_str().is_some_and(|h| h != "host-0")
                }) {
                    moved += 1;
                }
            }
            if moved == conns.len() {
                routes_at = Some(Instant::now());
            }
        }
        if takeover_at.is_none() {
            takeover_at = (1..hosts).find_map(|h| {
                let v = load.views[h].lock().unwrap();
                v.jobs.contains(&job).then_some(v.last_hello).flatten()
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let since = |t: Option<Instant>| {
        t.map_or(f64::NAN, |t| {
            t.saturating_duration_since(last).as_secs_f64()
        })
    };
    Ok((since(routes_at), since(takeover_at)))
}
