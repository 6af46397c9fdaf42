//! `keel controller`, `keel sensor`, `keel correlator`: one role per process,
//! each an actor from `keel-actors` on its own runtime; and the operator's
//! questions to a controller.

use crate::context::{Replica, Target};
use crate::failover;
use anyhow::{bail, Context, Result};
use keel_actors::controller::{self, Config};
use keel_actors::correlator::{self, CorrelatorConfig};
use keel_actors::executor::{self, ExecutorConfig};
use keel_actors::sensor::{self, SensorConfig};
use keel_model::{Message, Query, QueryReply};
use keel_transport::expiry::{OffsetDateTime, EXPIRY_CHECK_EVERY};
use keel_transport::{reload, Client, Credentials, Options, TransportError};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Worker threads of a role process's runtime unless `--worker-threads`
/// says otherwise.
pub const DEFAULT_WORKER_THREADS: usize = 2;
static WORKER_THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// `--worker-threads N`: set once, before a role's runtime starts.
pub fn set_worker_threads(n: usize) {
    let _ = WORKER_THREADS.set(n.max(1));
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    let threads = *WORKER_THREADS.get().unwrap_or(&DEFAULT_WORKER_THREADS);
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?)
}

/// How long a stopping process waits for the requests and messages under
/// way (SIGTERM, SIGINT) before it exits anyway.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Resolves on SIGTERM or SIGINT.
async fn stop_asked() -> Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Keeps a role's credentials current: on SIGHUP every credentials folder
/// the process read is read again (certificate, key, CA, CRL) and used for
/// the connections to come; at start and then daily, a certificate that
/// ends within [`keel_transport::expiry::EXPIRY_WARNING_DAYS`] days is
/// warned about.
async fn credentials_upkeep(mut hup: tokio::signal::unix::Signal) {
    let mut daily = tokio::time::interval(EXPIRY_CHECK_EVERY);
    loop {
        tokio::select! {
            _ = hup.recv() => reload_credentials(),
            _ = daily.tick() => warn_expiring(OffsetDateTime::now_utc()),
        }
    }
}

/// What SIGHUP does: every folder read again, each outcome logged.
pub fn reload_credentials() {
    for (dir, r) in reload::reload_all() {
        match r {
            Ok(n) => tracing::info!(
                dir = %dir.display(),
                servers = n.servers,
                clients = n.clients,
                "credentials reloaded"
            ),
            Err(e) => tracing::warn!(
                dir = %dir.display(),
                error = %e,
                "credentials not reloaded; the previous ones stay in use"
            ),
        }
    }
}

fn warn_expiring(now: OffsetDateTime) {
    for (dir, e) in reload::expiries() {
        match e {
            Ok(e) if e.should_warn(now) => tracing::warn!(
                dir = %dir.display(),
                not_after = %e.not_after_rfc3339(),
                days_left = e.days_left(now),
                "certificate expires soon: renew it (keel cert request, keel cert sign) and send SIGHUP"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "certificate expiry unknown")
            }
        }
    }
}

/// Runs a role until its actor stops or a stop is asked. An actor that
/// stops on its own has died: an error (the process exits non-zero). On
/// SIGTERM or SIGINT, `stop` lets it finish what it holds (bounded by
/// [`STOP_GRACE`]), and the process exits 0.
async fn until_stopped<F>(
    what: &str,
    mut join: tokio::task::JoinHandle<()>,
    stop: impl FnOnce() -> F,
) -> Result<()>
where
    F: std::future::Future<Output = ()>,
{
    // Taken before anything else, so that a SIGHUP never kills the process.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let upkeep = tokio::spawn(credentials_upkeep(hup));
    let r = until_stopped_inner(what, &mut join, stop).await;
    upkeep.abort();
    r
}

async fn until_stopped_inner<F>(
    what: &str,
    join: &mut tokio::task::JoinHandle<()>,
    stop: impl FnOnce() -> F,
) -> Result<()>
where
    F: std::future::Future<Output = ()>,
{
    tokio::select! {
        _ = &mut *join => bail!("{what}: its actor stopped unexpectedly"),
        signal = stop_asked() => {
            let signal = signal?;
            tracing::info!("{signal}: stopping {what}");
            let _ = tokio::time::timeout(STOP_GRACE, stop()).await;
            let _ = tokio::time::timeout(STOP_GRACE, join).await;
            eprintln!("{what}: stopped ({signal})");
            Ok(())
        }
    }
}

/// `keel controller --config FILE`: runs until stopped (SIGTERM), or
/// removed from the cluster; exits non-zero if its actor dies.
pub fn run(config: &Path) -> Result<()> {
    let cfg = Config::load(config)?;
    runtime()?.block_on(async {
        let id = cfg.id;
        let started = controller::start(cfg, None).await?;
        eprintln!("keel controller {id}: listening on {}", started.addr);
        crate::http::serve_with(
            "controller",
            crate::probes::controller_probe(started.actor.clone(), &started.applied),
            Some(crate::dashboard::router(vec![started.actor.clone()])),
        )
        .await?;
        let what = format!("keel controller {id}");
        let (drain, actor, removed) = (started.drain, started.actor, started.removed);
        let r = until_stopped(&what, started.join, || async move {
            // Refuse new requests, finish those under way (proposals wait
            // for their commit), then stop the actor.
            drain.stop_taking();
            let _ = tokio::time::timeout(STOP_GRACE, drain.idle()).await;
            actor.stop(Some("stop asked".into()));
        })
        .await;
        match r {
            Err(_) if removed.load(std::sync::atomic::Ordering::SeqCst) => {
                eprintln!("{what}: removed from the cluster; stopped");
                Ok(())
            }
            r => r,
        }
    })
}

/// `keel sensor --config FILE`.
pub fn run_sensor(config: &Path) -> Result<()> {
    let cfg = SensorConfig::load(config)?;
    runtime()?.block_on(async {
        let node = cfg.node.clone();
        // Node-local actions (the NIC) are carried out by an executor in
        // the sensor's process, under its own executor certificate.
        let exec = match cfg.executor.clone() {
            Some(e) => Some(executor::start(e).await?),
            None => None,
        };
        let (actor, join) = sensor::start(cfg, None).await?;
        eprintln!("keel sensor {node}: running");
        crate::http::serve("sensor", crate::probes::sensor_probe(actor.clone())).await?;
        until_stopped(&format!("keel sensor {node}"), join, || async move {
            let _ = actor.drain();
            if let Some((e, _)) = exec {
                let _ = e.drain();
            }
        })
        .await
    })
}

/// `keel correlator --config FILE`.
pub fn run_correlator(config: &Path) -> Result<()> {
    let cfg = CorrelatorConfig::load(config)?;
    runtime()?.block_on(async {
        let host = correlator::start(cfg).await?;
        eprintln!("keel correlator: listening on {}", host.addr);
        crate::http::serve(
            "correlator",
            crate::probes::correlator_probe(host.actor.clone()),
        )
        .await?;
        let actor = host.actor;
        until_stopped("keel correlator", host.join, || async move {
            let _ = actor.drain();
        })
        .await
    })
}

/// `keel executor --config FILE`.
pub fn run_executor(config: &Path) -> Result<()> {
    let cfg = ExecutorConfig::load(config)?;
    runtime()?.block_on(async {
        let (actor, join) = executor::start(cfg).await?;
        eprintln!("keel executor: running (SIGUSR1 pauses it, SIGUSR2 resumes)");
        crate::http::serve("executor", crate::probes::executor_probe(actor.clone())).await?;
        // A paused executor keeps its links and greetings, and holds the
        // commands it receives unapplied until resumed: for maintenance
        // windows, when nothing may change under an operator's hands.
        use tokio::signal::unix::{signal, SignalKind};
        let (mut pause, mut resume) = (
            signal(SignalKind::user_defined1())?,
            signal(SignalKind::user_defined2())?,
        );
        let a = actor.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = pause.recv() => {
                        tracing::warn!("paused: commands wait until SIGUSR2");
                        let _ = a.cast(executor::ExecutorMsg::Hold(true));
                    }
                    _ = resume.recv() => {
                        tracing::warn!("resumed");
                        let _ = a.cast(executor::ExecutorMsg::Hold(false));
                    }
                }
            }
        });
        until_stopped("keel executor", join, || async move {
            let _ = actor.drain();
        })
        .await
    })
}

/// A connection to one controller replica, as an operator, for the
/// questions of one command (many pages, many proposals).
pub struct Operator {
    rt: tokio::runtime::Runtime,
    conn: keel_transport::Connection,
    _client: Client,
    who: String,
    name: String,
    next_id: std::sync::atomic::AtomicU64,
}

/// How long one question may wait for its answer.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(15);

impl Operator {
    /// Connects to the first replica of `replicas` that can be reached:
    /// one that cannot (no connection, no handshake in time) is passed
    /// over, one that refuses us is an error. With `verbose`, says on
    /// standard error which one answered and which were passed over.
    /// Returns the connection and the index of its replica.
    pub fn connect_first(
        replicas: &[Replica],
        creds: &Path,
        verbose: bool,
    ) -> Result<(Operator, usize)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = rt.block_on(async {
            let c = Credentials::from_dir(creds)
                .with_context(|| format!("credentials in {}", creds.display()))?;
            anyhow::Ok(Client::new(&c, Options::default())?.expecting(keel_model::Role::Controller))
        })?;
        let mut missed: Vec<String> = Vec::new();
        for (i, r) in replicas.iter().enumerate() {
            let at = format!("{} at {}", r.name, r.addr);
            let tried = resolve_addr(&r.addr).and_then(|addr| {
                rt.block_on(client.connect(addr, &r.name))
                    .map(|(conn, _inbox)| (conn, addr))
                    .map_err(anyhow::Error::new)
            });
            match tried {
                Ok((conn, addr)) => {
                    if verbose {
                        eprintln!("keel: {} at {addr} answered", r.name);
                    }
                    return Ok((
                        Operator {
                            rt,
                            conn,
                            _client: client,
                            who: format!("{} at {addr}", r.name),
                            name: r.name.clone(),
                            next_id: 1.into(),
                        },
                        i,
                    ));
                }
                Err(e)
                    if replicas.len() > 1 && failover::fails_over(failover::classify_any(&e)) =>
                {
                    if verbose {
                        eprintln!("keel: {at} not reached ({e:#}); trying the next replica");
                    }
                    missed.push(format!("{at}: {e:#}"));
                }
                Err(e) => return Err(e.context(format!("connecting to {at}"))),
            }
        }
        bail!(
            "no controller replica could be reached:\n  {}",
            missed.join("\n  ")
        )
    }

    /// The name (in its certificate) of the replica this connection reaches.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The controller's answer, `ok` or not.
    pub fn query(&self, topic: &str, params: BTreeMap<String, String>) -> Result<QueryReply> {
        self.rt.block_on(self.query_async(topic, params))
    }

    pub async fn query_async(
        &self,
        topic: &str,
        params: BTreeMap<String, String>,
    ) -> Result<QueryReply> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let q = Message::Query(Query {
            id,
            topic: topic.into(),
            params,
        });
        let reply = self
            .conn
            .request(q, ASK_TIMEOUT)
            .await
            .with_context(|| format!("asking {}", self.who))?;
        match reply {
            Message::QueryReply(r) => Ok(r),
            other => bail!("{} answered with {}", self.who, other.kind()),
        }
    }

    /// The body of an `ok` answer; a refusal is an error.
    pub fn ask(&self, topic: &str, params: BTreeMap<String, String>) -> Result<String> {
        let r = self.query(topic, params)?;
        if !r.ok {
            bail!("{}: {}", self.who, r.body);
        }
        Ok(r.body)
    }

    /// Every page of a paged answer: asks with `offset_key` = the `next_key`
    /// of the page before until it is null, and gathers the `items_key`
    /// lists. Returns the items and the last page (for its other fields).
    pub fn all_pages(
        &self,
        topic: &str,
        params: BTreeMap<String, String>,
        items_key: &str,
        offset_key: &str,
        next_key: &str,
    ) -> Result<(Vec<serde_json::Value>, serde_json::Value)> {
        let mut items = Vec::new();
        let mut params = params;
        loop {
            let body = self.ask(topic, params.clone())?;
            let page: serde_json::Value = serde_json::from_str(&body)
                .with_context(|| format!("{}: `{topic}` answered {body:?}", self.who))?;
            if let Some(list) = page[items_key].as_array() {
                items.extend(list.iter().cloned());
            }
            match page[next_key].as_u64() {
                Some(next) => {
                    params.insert(offset_key.to_string(), next.to_string());
                }
                None => return Ok((items, page)),
            }
        }
    }

    /// The connection itself, for requests made concurrently.
    pub fn connection(&self) -> keel_transport::Connection {
        self.conn.clone()
    }

    /// Runs `f` on this connection's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

/// `HOST:PORT` or `IP:PORT`, to its first address.
fn resolve_addr(addr: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let mut all = addr
        .to_socket_addrs()
        .map_err(|e| TransportError::Connect {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            name: addr.to_string(),
            detail: format!("not an address: {e}"),
        })?;
    all.next().with_context(|| format!("{addr}: no address"))
}

/// Asks the first replica of the context that can be reached a question,
/// as an operator: the replica that answered (its name) and its answer,
/// `ok` or not. A question that went unanswered (the replica died or timed
/// out under it) is asked of the next replica; a proposal carries its own
/// session and sequence number, so that one applied twice counts once.
pub fn query(
    target: &Target,
    verbose: bool,
    topic: &str,
    params: BTreeMap<String, String>,
) -> Result<(String, QueryReply)> {
    let mut start = 0;
    loop {
        let (op, i) =
            Operator::connect_first(&target.replicas[start..], &target.credentials, verbose)?;
        match op.query(topic, params.clone()) {
            Ok(r) => return Ok((op.name, r)),
            Err(e)
                if start + i + 1 < target.replicas.len()
                    && failover::fails_over(failover::classify_any(&e)) =>
            {
                if verbose {
                    eprintln!("keel: {e:#}; trying the next replica");
                }
                start += i + 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_role_whose_actor_stops_on_its_own_is_an_error() {
        let join = tokio::spawn(async {});
        let r = until_stopped("keel test", join, || async {}).await;
        let e = format!("{:#}", r.expect_err("a dead actor is not a clean exit"));
        assert!(e.contains("stopped unexpectedly"), "{e}");
    }
}
