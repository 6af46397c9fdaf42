//! A role process's HTTP port (`--http ADDR`): `/metrics` in Prometheus's
//! text format (through `prometheus-client`), `/healthz` (the process is
//! up and its actor answers) and `/readyz` (it can do its work: see each
//! role's probe). Served by `axum`; off unless asked for.
//!
//! The metrics are read from the role's own counters at each scrape (the
//! actors keep them; nothing is counted twice), so a scrape costs one
//! message to the actor.

use anyhow::{Context, Result};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use keel_actors::{controller, correlator, executor, sensor};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use ractor::ActorRef;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

static ADDR: OnceLock<SocketAddr> = OnceLock::new();

/// `--http ADDR` (or `KEEL_HTTP`): where role processes serve their port.
pub fn set_addr(addr: SocketAddr) {
    let _ = ADDR.set(addr);
}

/// One reading: the metric's name (after `keel_`), its help, and value.
type Reading = (&'static str, &'static str, f64);

/// Reads a role's counters (None: the actor did not answer).
type Read =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Option<Vec<Reading>>> + Send>> + Send + Sync>;
/// Whether a role is ready, from its readings (Err says why not).
type Ready = Box<dyn Fn(&[Reading]) -> Result<(), String> + Send + Sync>;

/// What a role answers: its readings, and whether it is ready.
pub struct Probe {
    pub read: Read,
    pub ready: Ready,
}

/// Serves `probe` on the address `--http` gave, if any; the task runs until
/// the process ends.
pub async fn serve(role: &'static str, probe: Probe) -> Result<()> {
    let Some(addr) = ADDR.get().copied() else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--http {addr}"))?;
    eprintln!("keel {role}: /metrics, /healthz and /readyz on http://{addr}");
    let probe = Arc::new(probe);
    let (m, h, r) = (probe.clone(), probe.clone(), probe);
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let p = m.clone();
                async move {
                    match (p.read)().await {
                        Some(readings) => (
                            StatusCode::OK,
                            [(
                                header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )],
                            exposition(role, &readings),
                        )
                            .into_response(),
                        None => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the actor does not answer\n",
                        )
                            .into_response(),
                    }
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let p = h.clone();
                async move {
                    match (p.read)().await {
                        Some(_) => (StatusCode::OK, "ok\n".to_string()),
                        None => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the actor does not answer\n".into(),
                        ),
                    }
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let p = r.clone();
                async move {
                    match (p.read)().await {
                        None => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the actor does not answer\n".to_string(),
                        ),
                        Some(readings) => match (p.ready)(&readings) {
                            Ok(()) => (StatusCode::OK, "ready\n".into()),
                            Err(why) => (
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!("not ready: {why}\n"),
                            ),
                        },
                    }
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the HTTP port stopped");
        }
    });
    Ok(())
}

/// The readings in Prometheus's text format, each a gauge `keel_NAME` with
/// the label `role`.
pub fn exposition(role: &str, readings: &[Reading]) -> String {
    let mut registry = Registry::with_prefix_and_labels(
        "keel",
        [(
            std::borrow::Cow::Borrowed("role"),
            std::borrow::Cow::Owned(role.to_string()),
        )]
        .into_iter(),
    );
    for (name, help, value) in readings {
        let g = Gauge::<f64, AtomicU64>::default();
        g.set(*value);
        registry.register(*name, *help, g);
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// Entries a replica may be behind its commit index and be ready (Raft's
/// own entries, a leader's empty one and membership changes, reach the
/// commit index without being applied to the state).
const READY_LAG: u64 = 16;

/// The controller: Raft's view and the replicated state's sizes, from
/// `keel status`; ready when it knows a leader and has applied what it
/// knows committed, within [`READY_LAG`] entries.
pub fn controller_probe(actor: ActorRef<controller::ControllerMsg>) -> Probe {
    Probe {
        read: Box::new(move || {
            let a = actor.clone();
            Box::pin(async move {
                let (tx, rx) = tokio::sync::oneshot::channel();
                a.cast(controller::ControllerMsg::Status(tx, false)).ok()?;
                let s: serde_json::Value = serde_json::from_str(&rx.await.ok()?).ok()?;
                let n = |k: &str| s[k].as_f64().unwrap_or(0.0);
                Some(vec![
                    ("raft_term", "Raft term", n("term")),
                    (
                        "raft_leader",
                        "Raft id of the leader this replica knows (0: none)",
                        n("leader"),
                    ),
                    ("raft_commit_index", "Raft commit index", n("commit")),
                    (
                        "raft_applied_index",
                        "log index applied to the state machine",
                        n("applied"),
                    ),
                    (
                        "raft_refused_total",
                        "Raft messages refused: from an id bound to another certificate",
                        n("raft_refused"),
                    ),
                    ("jobs", "jobs in the replicated state", n("jobs")),
                    ("jobs_running", "jobs running", n("running_jobs")),
                    (
                        "findings",
                        "findings in the replicated state",
                        n("findings"),
                    ),
                    ("findings_open", "findings open", n("open_findings")),
                    ("ledger_actions", "actions in the ledger", n("ledger")),
                    (
                        "automation_paused",
                        "1 while `keel pause` holds",
                        f64::from(u8::from(!s["paused"].is_null())),
                    ),
                    (
                        "breaker_tripped",
                        "1 while the circuit breaker holds",
                        f64::from(u8::from(!s["breaker_tripped"].is_null())),
                    ),
                ])
            })
        }),
        ready: Box::new(|r| {
            let get = |k: &str| r.iter().find(|x| x.0 == k).map_or(0.0, |x| x.2);
            if get("raft_leader") == 0.0 {
                return Err("no leader known".into());
            }
            let behind = get("raft_commit_index") - get("raft_applied_index");
            if behind > READY_LAG as f64 {
                return Err(format!(
                    "applying the log: {behind} entries behind its commit index"
                ));
            }
            Ok(())
        }),
    }
}

/// A sensor: its telemetry and refusals; ready once a job on its node is
/// routed (a correlator to send to) or none runs there.
pub fn sensor_probe(actor: ActorRef<sensor::SensorMsg>) -> Probe {
    Probe {
        read: Box::new(move || {
            let a = actor.clone();
            Box::pin(async move {
                let s = sensor::stats(&a).await?;
                Some(vec![
                    (
                        "collectives_total",
                        "collective events taken",
                        s.events as f64,
                    ),
                    (
                        "summaries_sent_total",
                        "window summaries sent to correlators",
                        s.summaries_sent as f64,
                    ),
                    (
                        "summaries_dropped_total",
                        "summaries dropped while no correlator was known",
                        s.unrouted_dropped as f64,
                    ),
                    (
                        "readings_sent_total",
                        "readings sent to correlators",
                        s.metrics_sent as f64,
                    ),
                    (
                        "source_restarts_total",
                        "sources restarted after failing",
                        s.source_restarts as f64,
                    ),
                    (
                        "jobs_routed",
                        "jobs on this node the controller routes",
                        s.jobs_routed as f64,
                    ),
                    (
                        "foreign_dropped_total",
                        "records about another node refused",
                        s.foreign_dropped as f64,
                    ),
                    (
                        "edge_implausible_total",
                        "collectives refused: impossible stamp or duration",
                        s.edge_implausible as f64,
                    ),
                    (
                        "edge_jobs_dropped_total",
                        "collectives dropped at the edge's job bound",
                        s.edge_jobs_dropped as f64,
                    ),
                    (
                        "edge_ranks_dropped_total",
                        "collectives dropped at the edge's rank bound",
                        s.edge_ranks_dropped as f64,
                    ),
                    (
                        "reports_dropped_total",
                        "GPU finding reports dropped while the controller did not answer",
                        s.reports_dropped as f64,
                    ),
                    (
                        "metrics_dropped_total",
                        "metric series dropped past METRICS_MAX in one flush",
                        s.metrics_dropped as f64,
                    ),
                    (
                        "source_bad_total",
                        "input the timed sources refused (bad lines, values out of range)",
                        s.source_bad as f64,
                    ),
                    (
                        "source_dropped_total",
                        "input the timed sources dropped at their bounds",
                        s.source_dropped as f64,
                    ),
                ])
            })
        }),
        ready: Box::new(|_| Ok(())),
    }
}

/// A correlator host: its jobs, inputs and refusals.
pub fn correlator_probe(actor: ActorRef<correlator::HostMsg>) -> Probe {
    Probe {
        read: Box::new(move || {
            let a = actor.clone();
            Box::pin(async move {
                let s = correlator::stats(&a).await?;
                Some(vec![
                    (
                        "correlators",
                        "jobs this host correlates",
                        s.jobs.len() as f64,
                    ),
                    (
                        "summaries_total",
                        "summaries handed to correlators",
                        s.summaries as f64,
                    ),
                    (
                        "summaries_unassigned_total",
                        "summaries for jobs this host does not hold",
                        s.unassigned_summaries as f64,
                    ),
                    (
                        "correlator_restarts_total",
                        "correlators restarted after failing",
                        s.correlator_restarts as f64,
                    ),
                    (
                        "assigned_refused_total",
                        "jobs refused at the host's bound",
                        s.assigned_refused as f64,
                    ),
                    (
                        "telemetry_dropped_total",
                        "sensor batches dropped at intake",
                        s.telemetry_dropped as f64,
                    ),
                    (
                        "correlator_dropped_total",
                        "inputs dropped before slow correlators",
                        s.correlator_dropped as f64,
                    ),
                    (
                        "refused_foreign_total",
                        "telemetry about another node than its sensor's",
                        s.refused_foreign as f64,
                    ),
                    (
                        "refused_implausible_total",
                        "summaries no sensor's edge could have made",
                        s.refused_implausible as f64,
                    ),
                    (
                        "refused_undeclared_total",
                        "summaries for a rank beyond the job's declared size",
                        s.refused_undeclared as f64,
                    ),
                    (
                        "reports_dropped_total",
                        "finding reports dropped while the controller did not answer",
                        s.reports_dropped as f64,
                    ),
                ])
            })
        }),
        ready: Box::new(|_| Ok(())),
    }
}

/// An executor: commands by outcome.
pub fn executor_probe(actor: ActorRef<executor::ExecutorMsg>) -> Probe {
    Probe {
        read: Box::new(move || {
            let a = actor.clone();
            Box::pin(async move {
                let s = executor::stats(&a).await?;
                Some(vec![
                    ("commands_total", "commands received", s.commands as f64),
                    (
                        "commands_applied_total",
                        "commands that changed a system",
                        s.applied as f64,
                    ),
                    (
                        "commands_already_done_total",
                        "commands answered already done",
                        s.already_done as f64,
                    ),
                    (
                        "commands_refused_total",
                        "commands refused or failed",
                        s.refused as f64,
                    ),
                    (
                        "commands_held",
                        "commands waiting while paused (SIGUSR1)",
                        s.held as f64,
                    ),
                ])
            })
        }),
        ready: Box::new(|r| {
            if r.iter().any(|x| x.0 == "commands_held" && x.2 > 0.0) {
                return Err("paused (SIGUSR1): commands wait".into());
            }
            Ok(())
        }),
    }
}
