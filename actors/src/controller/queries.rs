//! What peers ask a controller replica, and its answers.
//!
//! Topics by role (a peer's role comes from its certificate):
//! - sensors: `routes` (which correlator host holds each job with ranks on
//!   my node), `job` (a job I saw start, change or end);
//! - correlator hosts: `hello` (I am alive at ADDR; which jobs are mine?),
//!   `finding` messages, `close_finding`;
//! - executors: `executor` (I carry out these actions, on these nodes),
//!   `job` (a job discovered in Slurm);
//! - operators: `status`, `findings`, `job`, `jobs`, `propose`, `member`,
//!   `routes`, `actions` (the ledger and its audit trail), `history` (what
//!   retention moved out of the state), `explain` (which rule a finding
//!   matches, and why).
//!
//! Lists come in pages (`pages`). A proposal made here on a peer's behalf
//! runs in a session of this replica (`sessions`); one that was not applied
//! (rejected, too large, not committed in time) is an error to the peer.
//!
//! Which correlator host is alive is soft state of each replica (hosts greet
//! every replica), so routing works on any replica, leader or not, and
//! keeps working through an election; `routes` and `hello` are answered in
//! `routing`, from the replica's routing index.

pub use super::routing::Route;

use super::{ControllerMsg, ControllerState};
use crate::sources::unix_now;
use anyhow::{bail, Context, Result};
use keel_consensus::node::MAX_PROPOSAL_BYTES;
use keel_consensus::state::{Command, Outcome, Proposal};
use keel_model::{Ack, Action, Finding, JobRecord, Message, Query, QueryReply, Role};
use keel_transport::Request;
use ractor::ActorRef;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::oneshot;

const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers one request from a peer.
pub async fn handle(req: Request, me: ActorRef<ControllerMsg>) {
    let peer = req.peer.clone();
    let reply = match &req.msg {
        Message::Raft(r) => match keel_consensus::node::decode_message(&r.bytes) {
            Ok(m) if peer.role == Role::Controller => {
                let _ = me.cast(ControllerMsg::Raft(m, peer.name.clone()));
                ack(true, String::new())
            }
            Ok(_) => ack(false, "raft messages come from controllers only".into()),
            Err(e) => ack(false, format!("bad raft message: {e}")),
        },
        Message::RaftChunk(c) if peer.role == Role::Controller => {
            let (tx, rx) = oneshot::channel();
            match me.cast(ControllerMsg::RaftChunk(c.clone(), tx)) {
                Err(_) => ack(false, "controller stopping".into()),
                Ok(()) => match rx.await {
                    Ok(Ok(())) => ack(true, String::new()),
                    Ok(Err(e)) => ack(false, e),
                    Err(_) => ack(false, "controller stopping".into()),
                },
            }
        }
        Message::Finding(f) if reporter_may(peer.role, &peer.name, f).is_err() => {
            let why = reporter_may(peer.role, &peer.name, f).unwrap_err();
            tracing::warn!(peer = %peer.name, role = %peer.role, kind = %f.kind.wire(), node = ?f.node, "finding refused: {why}");
            ack(false, why)
        }
        Message::Finding(f) => match assigned(&me, peer.role, &peer.name, f, false).await {
            Err(why) => {
                tracing::warn!(peer = %peer.name, kind = %f.kind.wire(), job = ?f.job, "finding refused: {why}");
                ack(false, why)
            }
            Ok(()) => match open_finding(&me, &identity(peer.role, &peer.name), f.clone()).await {
                Ok(outcome) => ack(true, serde_json::to_string(&outcome).unwrap_or_default()),
                Err(e) => ack(false, format!("{e:#}")),
            },
        },
        Message::Query(q) => {
            Message::QueryReply(match answer(q, peer.role, &peer.name, &me).await {
                Ok(body) => QueryReply {
                    id: q.id,
                    ok: true,
                    body,
                },
                Err(e) => QueryReply {
                    id: q.id,
                    ok: false,
                    body: format!("{e:#}"),
                },
            })
        }
        other => ack(
            false,
            format!("a controller takes no {} here", other.kind()),
        ),
    };
    let _ = req.reply(reply).await;
}

pub(crate) fn ack(ok: bool, detail: String) -> Message {
    Message::Ack(Ack { id: 0, ok, detail })
}

/// Runs `f` inside the actor, on its state, and returns what it returns.
async fn read<T: Send + 'static>(
    me: &ActorRef<ControllerMsg>,
    f: impl FnOnce(&mut ControllerState) -> T + Send + 'static,
) -> Result<T> {
    let (tx, rx) = oneshot::channel();
    me.cast(ControllerMsg::Read(Box::new(move |s| {
        let _ = tx.send(f(s));
    })))
    .ok()
    .context("controller stopping")?;
    rx.await.context("controller stopping")
}

/// Proposes and waits until the proposal is applied on this replica. An
/// error unless it was: too large, not committed within
/// `PROPOSE_TIMEOUT`, or rejected by the state machine.
async fn propose(me: &ActorRef<ControllerMsg>, proposal: Proposal) -> Result<Outcome> {
    let data = proposal.encode();
    if data.len() > MAX_PROPOSAL_BYTES {
        bail!(
            "proposal too large: {} bytes, at most {MAX_PROPOSAL_BYTES}",
            data.len()
        );
    }
    let (tx, rx) = oneshot::channel();
    me.cast(ControllerMsg::Propose(data, tx))
        .ok()
        .context("controller stopping")?;
    let outcome = match tokio::time::timeout(PROPOSE_TIMEOUT, rx).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => bail!("refused: too many proposals waiting on this replica, or it is stopping"),
        Err(_) => bail!(
            "not applied within {PROPOSE_TIMEOUT:?} (no leader?); retry with the same client and seq"
        ),
    };
    match &outcome {
        Outcome::Rejected(r) => bail!("rejected: {}", serde_json::to_string(r)?),
        Outcome::Duplicate(first) if matches!(**first, Outcome::Rejected(_)) => {
            bail!("rejected before: {}", serde_json::to_string(first)?)
        }
        _ => Ok(outcome),
    }
}

/// Proposes `command` on `peer`'s behalf, in this replica's session for
/// (`prefix`, `peer`).
async fn propose_for(
    me: &ActorRef<ControllerMsg>,
    prefix: &'static str,
    peer: &str,
    command: Command,
) -> Result<Outcome> {
    let peer = peer.to_string();
    let (client, seq) = read(me, move |s| s.sessions.next(prefix, &peer)).await?;
    propose(
        me,
        Proposal {
            client,
            seq,
            command,
        },
    )
    .await
}

async fn open_finding(
    me: &ActorRef<ControllerMsg>,
    reporter: &str,
    finding: Finding,
) -> Result<Outcome> {
    let command = Command::OpenFinding {
        finding,
        opened: unix_now(),
    };
    propose_for(me, "findings", reporter, command).await
}

/// Whether `peer` (of `role`) may open or close `f`: a correlator any
/// finding; a sensor only the node-watched kinds
/// ([`keel_model::FindingKind::NODE_WATCHED`]) about its own node (its
/// certificate's name); nobody else. The error says why not.
pub(crate) fn reporter_may(role: Role, peer: &str, f: &Finding) -> Result<(), String> {
    match role {
        Role::Correlator => Ok(()),
        Role::Sensor => {
            if !keel_model::FindingKind::NODE_WATCHED.contains(&f.kind) {
                return Err(format!(
                    "a sensor reports only {} findings, not {}",
                    keel_model::FindingKind::NODE_WATCHED
                        .iter()
                        .map(|k| k.wire())
                        .collect::<Vec<_>>()
                        .join(" and "),
                    f.kind.wire()
                ));
            }
            match f.node.as_deref() {
                Some(n) if n == peer => Ok(()),
                other => Err(format!(
                    "sensor {peer} reports only about its own node, not {}",
                    other.unwrap_or("no node")
                )),
            }
        }
        other => Err(format!("a {other} reports no findings")),
    }
}

/// The topics that only read.
const READS: &[&str] = &[
    "status", "routes", "actions", "jobs", "history", "explain", "findings",
];

fn allowed(role: Role, topic: &str) -> bool {
    match role {
        Role::Controller | Role::Operator | Role::Admin => true,
        Role::Viewer => READS.contains(&topic),
        // Its proposals are checked command by command (`may_propose`).
        Role::Approver => READS.contains(&topic) || topic == "propose",
        Role::Scheduler => matches!(topic, "job" | "propose" | "status"),
        Role::Sensor => matches!(topic, "routes" | "job" | "status" | "close_finding"),
        Role::Correlator => matches!(topic, "hello" | "close_finding" | "routes" | "status"),
        // Slurm's executor also reports the jobs it discovers.
        Role::Executor => matches!(topic, "executor" | "job"),
    }
}

/// Whether `role` may propose `command` (the `propose` topic): an admin
/// (or an operator) anything; an approver only to approve, reject or
/// cancel an action, and to pause or resume automation; a scheduler only
/// job records. The error names the role and what it may do.
pub(crate) fn may_propose(role: Role, command: &Command) -> Result<(), String> {
    use keel_model::ActionStatus as S;
    let ok = match role {
        Role::Admin | Role::Operator | Role::Controller => true,
        Role::Approver => matches!(
            command,
            Command::Transition {
                to: S::Approved | S::Rejected | S::Cancelled,
                ..
            } | Command::Pause { .. }
                | Command::Resume { .. }
        ),
        Role::Scheduler => matches!(command, Command::Job { .. }),
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let may = match role {
        Role::Approver => "approve, reject or cancel actions, and pause or resume automation",
        Role::Scheduler => "register and end jobs",
        _ => "propose nothing",
    };
    Err(format!(
        "a {role} may {may}; this proposal needs an admin certificate"
    ))
}

fn param<'a>(q: &'a Query, key: &str) -> Result<&'a String> {
    q.params
        .get(key)
        .with_context(|| format!("param `{key}` missing"))
}

/// Whether correlator host `peer` holds what `f` is about: its job (or,
/// for a finding without one, a job on its node). A close may also come
/// for a job no longer routed at all (ended, its correlator gone). Other
/// roles pass (their own checks are `reporter_may`'s).
async fn assigned(
    me: &ActorRef<ControllerMsg>,
    role: Role,
    peer: &str,
    f: &Finding,
    closing: bool,
) -> Result<(), String> {
    if role != Role::Correlator {
        return Ok(());
    }
    let (peer_s, job, node) = (peer.to_string(), f.job.clone(), f.node.clone());
    let ok = read(me, move |s| {
        let r = &s.routing.index;
        match (&job, &node) {
            (Some(j), _) => r.host_of(j) == Some(peer_s.as_str()) || (closing && !r.routed(j)),
            (None, Some(n)) => r.host_on_node(&peer_s, n),
            (None, None) => true,
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "correlator host {peer} does not hold {}",
            f.job
                .as_deref()
                .map(|j| format!("job {j}"))
                .or_else(|| f.node.as_deref().map(|n| format!("a job on {n}")))
                .unwrap_or_default()
        ))
    }
}

/// Who a peer is, as its certificate says: `ROLE:NAME`. Every session a
/// peer proposes in starts with it, so that the ledger's `reported_by`,
/// `applied_by` and the audit's `by` name the certificate that asked,
/// never a name the client chose.
pub(crate) fn identity(role: Role, name: &str) -> String {
    format!("{role}:{name}")
}

async fn answer(q: &Query, role: Role, peer: &str, me: &ActorRef<ControllerMsg>) -> Result<String> {
    if !allowed(role, &q.topic) {
        tracing::warn!(%peer, %role, topic = %q.topic, "request refused: not allowed for the role");
        bail!("a {role} may not ask `{}`", q.topic);
    }
    let who = identity(role, peer);
    let who = who.as_str();
    match q.topic.as_str() {
        "status" => {
            let (tx, rx) = oneshot::channel();
            let consistent = q.params.get("consistent").is_some_and(|v| v == "true");
            me.cast(ControllerMsg::Status(tx, consistent))
                .ok()
                .context("controller stopping")?;
            rx.await.context("controller stopping")
        }
        "routes" => {
            let q = q.clone();
            read(me, move |s| super::routing::routes(s, &q)).await?
        }
        "hello" => {
            let (q, host) = (q.clone(), peer.to_string());
            read(me, move |s| super::routing::hello(s, &host, &q)).await?
        }
        "job" => {
            let incoming: JobRecord = serde_json::from_str(param(q, "record")?)
                .context("param `record` is not a job record")?;
            // An end without placement (`keel job end`, an epilog) keeps the
            // placement known, so that the job's correlator can linger.
            let (record, unchanged) = read(me, move |s| {
                let mut r = incoming;
                if let Some(known) = s.node.state.jobs.get(&r.job) {
                    r.keep_placement_of(known);
                    let same = known == &r;
                    (r, same)
                } else {
                    (r, false)
                }
            })
            .await?;
            // A sensor tells of the jobs on its own node only (what its
            // node's prolog, epilog or push client says).
            if role == Role::Sensor && !record.ranks.contains_key(peer) {
                tracing::warn!(%peer, job = %record.job, "job record refused: not placed on the sensor's node");
                bail!(
                    "sensor {peer} tells only of jobs with ranks on its own node; job {} has none there",
                    record.job
                );
            }
            if unchanged {
                return Ok("\"unchanged\"".into());
            }
            let outcome = propose_for(me, "jobs", who, Command::Job { record }).await?;
            Ok(serde_json::to_string(&outcome)?)
        }
        "close_finding" => {
            let finding: Finding = serde_json::from_str(param(q, "finding")?)
                .context("param `finding` is not a finding")?;
            if let Err(why) = assigned(me, role, peer, &finding, true).await {
                tracing::warn!(%peer, kind = %finding.kind.wire(), "finding close refused: {why}");
                bail!(why);
            }
            // An operator (or a replica) may close any finding by hand.
            let by_hand = matches!(role, Role::Operator | Role::Controller);
            if let Err(why) =
                reporter_may(role, peer, &finding)
                    .or_else(|e| if by_hand { Ok(()) } else { Err(e) })
            {
                tracing::warn!(%peer, %role, kind = %finding.kind.wire(), "finding close refused: {why}");
                bail!(why);
            }
            // The controller's clock, like `opened`: verification compares the two.
            let ts = unix_now();
            let id = read(me, move |s| s.node.state.open_finding_like(&finding)).await?;
            let Some(id) = id else {
                return Ok("\"not open\"".into());
            };
            let outcome =
                propose_for(me, "closings", who, Command::CloseFinding { id, ts }).await?;
            Ok(serde_json::to_string(&outcome)?)
        }
        "executor" => {
            let actions = param(q, "actions")?
                .split(',')
                .filter(|a| !a.is_empty())
                .map(|a| {
                    Action::ALL
                        .iter()
                        .copied()
                        .find(|x| x.wire() == a)
                        .with_context(|| format!("param `actions`: unknown action {a:?}"))
                })
                .collect::<Result<Vec<Action>>>()?;
            let nodes: Vec<String> = param(q, "nodes")?
                .split(',')
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect();
            let name = peer.to_string();
            let wires: Vec<&str> = actions.iter().map(|a| a.wire()).collect();
            let may = {
                let (n, w, ns) = (
                    name.clone(),
                    wires.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
                    nodes.clone(),
                );
                read(me, move |s| {
                    let w: Vec<&str> = w.iter().map(String::as_str).collect();
                    super::config::executor_may(&s.cfg.executors, &n, &ns, &w)
                })
                .await?
            };
            if let Err(why) = may {
                tracing::warn!(%peer, "executor greeting refused: {why}");
                bail!(why);
            }
            read(me, move |s| s.steward.greeted(&name, actions, nodes)).await?;
            Ok("\"ok\"".into())
        }
        "actions" => {
            let q = q.clone();
            read(me, move |s| super::pages::actions(s, &q)).await?
        }
        "jobs" => {
            let (offset, limit) = super::pages::window(q)?;
            let job = q.params.get("job").cloned();
            read(me, move |s| {
                super::pages::jobs(s, job.as_deref(), offset, limit)
            })
            .await
        }
        "history" => {
            let since: f64 = match q.params.get("since") {
                Some(v) => v.parse().context("param `since`: Unix seconds")?,
                None => 0.0,
            };
            let offset: u64 = match q.params.get("offset") {
                Some(v) => v.parse().context("param `offset`")?,
                None => 0,
            };
            let kind = q.params.get("kind").cloned();
            let dir = read(me, |s| s.cfg.data_dir.clone()).await?;
            let page = tokio::task::spawn_blocking(move || {
                super::history::read_page(
                    &super::history::path(&dir),
                    kind.as_deref(),
                    since,
                    offset,
                    super::pages::PAGE_BYTES,
                    super::pages::history_ts,
                )
            })
            .await
            .context("reading the history")??;
            Ok(serde_json::to_string(&page)?)
        }
        "explain" => {
            let id: u64 = param(q, "finding")?.parse().context("param `finding`")?;
            read(me, move |s| super::steward::explain(s, id)).await?
        }
        "findings" => {
            let (offset, limit) = super::pages::window(q)?;
            read(me, move |s| super::pages::findings(s, offset, limit)).await
        }
        "propose" => {
            let command: Command =
                serde_json::from_str(param(q, "command")?).context("param `command`")?;
            if let Err(why) = may_propose(role, &command) {
                tracing::warn!(%peer, %role, "proposal refused: {why}");
                bail!(why);
            }
            // A client that names its own session (and retries under it) is
            // answered once per seq; one that does not runs in this
            // replica's session for it.
            let outcome = match (q.params.get("client"), q.params.get("seq")) {
                (Some(client), Some(seq)) => {
                    let seq: u64 = seq.parse().context("param `seq`")?;
                    if seq == 0 {
                        bail!("param `seq`: sequence numbers start at 1");
                    }
                    // The session is the certificate's: a client names only
                    // its part after the identity.
                    let client = format!("{who}/{client}");
                    propose(
                        me,
                        Proposal {
                            client,
                            seq,
                            command,
                        },
                    )
                    .await?
                }
                (None, None) => propose_for(me, "ops", who, command).await?,
                _ => bail!("give both `client` and `seq`, or neither"),
            };
            Ok(serde_json::to_string(&outcome)?)
        }
        "member" => {
            let id: u64 = param(q, "id")?.parse().context("param `id`")?;
            let add = match q.params.get("op").map(String::as_str) {
                Some("add") => {
                    let addr = param(q, "addr")?.parse().context("param `addr`")?;
                    Some((addr, param(q, "name")?.clone()))
                }
                Some("remove") => None,
                _ => bail!("param `op` must be add or remove"),
            };
            let (tx, rx) = oneshot::channel();
            me.cast(ControllerMsg::Member { id, add, reply: tx })
                .ok()
                .context("controller stopping")?;
            match tokio::time::timeout(PROPOSE_TIMEOUT, rx).await {
                Ok(Ok(Ok(()))) => Ok("\"applied\"".into()),
                Ok(Ok(Err(e))) => bail!("membership change: {e}"),
                Ok(Err(_)) => bail!("controller stopping"),
                Err(_) => bail!(
                    "membership change not applied within {PROPOSE_TIMEOUT:?} (no leader, or another change under way?)"
                ),
            }
        }
        other => bail!("unknown query topic {other:?}"),
    }
}

/// Query parameters from pairs, for callers.
pub fn params<const N: usize>(pairs: [(&str, String); N]) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}
