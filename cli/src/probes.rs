//! What each role's HTTP port reads from its actor (`crate::http`): the
//! readings for `/metrics`, and when the role is ready (`/readyz`).

use crate::http::{Kept, Labeled, Probe, Readings};
use keel_actors::{controller, correlator, executor, sensor};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use ractor::ActorRef;

/// Entries a replica may be behind its commit index and be ready (Raft's
/// own entries, a leader's empty one and membership changes, reach the
/// commit index without being applied to the state).
const READY_LAG: u64 = 16;

/// Upper bounds (s) of the commit-delay histogram's buckets: from a
/// correlator's conclusion to the controller's commit, a few hundred
/// milliseconds on a healthy cluster; seconds mean a slow leader election
/// or a correlator that could not reach the controller.
const COMMIT_DELAY_BUCKETS: [f64; 9] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];

/// The controller: Raft's view and the replicated state's sizes, from
/// `keel status`, with findings and actions counted by label; and, kept
/// as this replica applies them, findings opened by kind and cause and the
/// delay from each finding's conclusion (its `ts`, the correlator's clock)
/// to its commit (`opened`, the proposer's clock). Ready when it knows a
/// leader and has applied what it knows committed, within [`READY_LAG`]
/// entries.
pub fn controller_probe(
    actor: ActorRef<controller::ControllerMsg>,
    applied: &tokio::sync::broadcast::Sender<controller::Applied>,
) -> Probe {
    let opened = Family::<Vec<(String, String)>, Counter>::default();
    let delay = Histogram::new(COMMIT_DELAY_BUCKETS);
    let mut rx = applied.subscribe();
    let (o, d) = (opened.clone(), delay.clone());
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(a) => {
                    let Some(e) = a.finding else { continue };
                    o.get_or_create(&vec![
                        ("kind".into(), e.finding.kind.wire().into()),
                        ("cause".into(), e.finding.cause.wire().into()),
                    ])
                    .inc();
                    let lag = e.opened - e.finding.ts;
                    if lag.is_finite() {
                        d.observe(lag.max(0.0));
                    }
                }
                // Missed some (a slow scrape task): counting goes on.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    });
    let kept: Kept = Box::new(move |r| {
        r.register(
            "findings_opened",
            "findings this replica applied as opened, by kind and cause (since it started)",
            opened.clone(),
        );
        r.register(
            "finding_commit_delay_seconds",
            "seconds from a finding's conclusion at its correlator to its commit",
            delay.clone(),
        );
    });
    Probe {
        kept: Some(kept),
        read: Box::new(move || {
            let a = actor.clone();
            Box::pin(async move {
                let (tx, rx) = tokio::sync::oneshot::channel();
                a.cast(controller::ControllerMsg::Status(tx, false)).ok()?;
                let s: serde_json::Value = serde_json::from_str(&rx.await.ok()?).ok()?;
                let n = |k: &str| s[k].as_f64().unwrap_or(0.0);
                let plain = vec![
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
                        "ledger_actions_failed",
                        "actions in the ledger whose status is failed",
                        n("actions_failed"),
                    ),
                    (
                        "finding_open_oldest_age_seconds",
                        "seconds since the oldest open finding was opened (0: none open)",
                        s["oldest_open_finding_opened"].as_f64().map_or(0.0, |t| {
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0.0, |d| d.as_secs_f64());
                            (now - t).max(0.0)
                        }),
                    ),
                    (
                        "certificate_expires_in_seconds",
                        "seconds until this replica's own certificate expires (whole days)",
                        s["certificate"]["days_left"].as_f64().unwrap_or(0.0) * 86_400.0,
                    ),
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
                ];
                let by = |key: &str, labels: &[&str]| -> Vec<(Vec<(String, String)>, f64)> {
                    s[key]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|x| {
                            let l = labels
                                .iter()
                                .map(|k| (k.to_string(), x[*k].as_str().unwrap_or("").to_string()))
                                .collect();
                            (l, x["n"].as_f64().unwrap_or(0.0))
                        })
                        .collect()
                };
                Some(Readings {
                    plain,
                    labeled: vec![
                        Labeled {
                            name: "findings_by",
                            help: "findings in the replicated state, by kind, cause and state (open, closed)",
                            series: by("findings_by", &["kind", "cause", "state"]),
                        },
                        Labeled {
                            name: "ledger_actions_by",
                            help: "actions in the ledger, by action, status and the rule that planned them",
                            series: by("actions_by", &["action", "status", "rule"]),
                        },
                    ],
                })
            })
        }),
        ready: Box::new(|r| {
            let get = |k: &str| r.get(k).unwrap_or(0.0);
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
                    (
                        "routes_age_seconds",
                        "seconds since the controller last answered with this node's routes (-1: never)",
                        s.routes_ago_s.unwrap_or(-1.0),
                    ),
                    (
                        "source_failure_age_seconds",
                        "seconds since a source last failed and was restarted (-1: never)",
                        s.source_failed_ago_s.unwrap_or(-1.0),
                    ),
                ].into())
            })
        }),
        ready: Box::new(|r| {
            fresh(r, "routes_age_seconds", "the controller has not answered with this node's routes (the correlator of each job is unknown)")?;
            match r.get("source_failure_age_seconds") {
                Some(a) if (0.0..SOURCE_SETTLE_S).contains(&a) => Err(format!(
                    "a source failed {a:.0} s ago and was restarted (see the log)"
                )),
                _ => Ok(()),
            }
        }),
        kept: None,
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
                    (
                        "assignment_age_seconds",
                        "seconds since the controller last answered with this host's assigned jobs (-1: never)",
                        s.assigned_ago_s.unwrap_or(-1.0),
                    ),
                ].into())
            })
        }),
        ready: Box::new(|r| {
            fresh(
                r,
                "assignment_age_seconds",
                "the controller has not answered with this host's assigned jobs",
            )
        }),
        kept: None,
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
                    (
                        "greeting_age_seconds",
                        "seconds since a controller leader last took this executor's greeting (-1: never)",
                        s.greeted_ago_s.unwrap_or(-1.0),
                    ),
                ].into())
            })
        }),
        ready: Box::new(|r| {
            fresh(r, "greeting_age_seconds", "no controller leader has taken this executor's greeting (it would get no commands)")?;
            if r.get("commands_held").is_some_and(|h| h > 0.0) {
                return Err("paused (SIGUSR1): commands wait".into());
            }
            Ok(())
        }),
        kept: None,
    }
}

/// How old (s) the last answer from the controller may be and the role
/// still be ready: the roles ask every 0.5-1 s, so this is many missed
/// answers in a row (a leader election takes a few seconds).
const ANSWER_STALE_S: f64 = 10.0;
/// How long (s) after a source failed the sensor is not ready.
const SOURCE_SETTLE_S: f64 = 30.0;

/// Ok when reading `name` (an age in seconds, -1 for never) is within
/// [`ANSWER_STALE_S`]; else why not.
fn fresh(r: &Readings, name: &str, what: &str) -> Result<(), String> {
    match r.get(name) {
        Some(a) if (0.0..=ANSWER_STALE_S).contains(&a) => Ok(()),
        Some(a) if a >= 0.0 => Err(format!("{what} for {a:.0} s")),
        _ => Err(format!("{what} yet")),
    }
}
