//! `keel controller`, `keel sensor`, `keel correlator`: one role per process,
//! each an actor from `keel-actors` on its own runtime; and the operator's
//! questions to a controller.

use anyhow::{bail, Context, Result};
use keel_actors::controller::{self, Config};
use keel_actors::correlator::{self, CorrelatorConfig};
use keel_actors::executor::{self, ExecutorConfig};
use keel_actors::sensor::{self, SensorConfig};
use keel_model::{Message, Query, QueryReply};
use keel_transport::{Client, Credentials, Options};
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

/// `keel controller --config FILE`: runs until removed from the cluster.
pub fn run(config: &Path) -> Result<()> {
    let cfg = Config::load(config)?;
    runtime()?.block_on(async {
        let id = cfg.id;
        let started = controller::start(cfg, None).await?;
        eprintln!("keel controller {id}: listening on {}", started.addr);
        let _ = started.join.await;
        eprintln!("keel controller {id}: stopped");
        Ok(())
    })
}

/// `keel sensor --config FILE`.
pub fn run_sensor(config: &Path) -> Result<()> {
    let cfg = SensorConfig::load(config)?;
    runtime()?.block_on(async {
        let node = cfg.node.clone();
        // Node-local actions (the NIC) are carried out by an executor in
        // the sensor's process, under its own executor certificate.
        let _exec = match cfg.executor.clone() {
            Some(e) => Some(executor::start(e).await?),
            None => None,
        };
        let (_actor, join) = sensor::start(cfg, None).await?;
        eprintln!("keel sensor {node}: running");
        let _ = join.await;
        Ok(())
    })
}

/// `keel correlator --config FILE`.
pub fn run_correlator(config: &Path) -> Result<()> {
    let cfg = CorrelatorConfig::load(config)?;
    runtime()?.block_on(async {
        let host = correlator::start(cfg).await?;
        eprintln!("keel correlator: listening on {}", host.addr);
        let _ = host.join.await;
        Ok(())
    })
}

/// `keel executor --config FILE`.
pub fn run_executor(config: &Path) -> Result<()> {
    let cfg = ExecutorConfig::load(config)?;
    runtime()?.block_on(async {
        let (actor, join) = executor::start(cfg).await?;
        eprintln!("keel executor: running (SIGUSR1 pauses it, SIGUSR2 resumes)");
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
        let _ = join.await;
        Ok(())
    })
}

/// Asks one controller a question as an operator.
pub fn query(
    addr: SocketAddr,
    name: &str,
    creds: &Path,
    topic: &str,
    params: BTreeMap<String, String>,
) -> Result<QueryReply> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let creds = Credentials::from_dir(creds)
            .with_context(|| format!("credentials in {}", creds.display()))?;
        let client = Client::new(&creds, Options::default())?;
        let (conn, _inbox) = client
            .connect(addr, name)
            .await
            .with_context(|| format!("connecting to {name} at {addr}"))?;
        let reply = conn
            .request(
                Message::Query(Query {
                    id: 1,
                    topic: topic.into(),
                    params,
                }),
                Duration::from_secs(15),
            )
            .await
            .with_context(|| format!("asking {name} at {addr}"))?;
        match reply {
            Message::QueryReply(r) => Ok(r),
            other => bail!("{name} answered with {}", other.kind()),
        }
    })
}
