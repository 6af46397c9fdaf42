//! The controller actor: one replica of the Raft-replicated controller.
//!
//! A thin shell around `keel_consensus::node::Node`: it feeds the node ticks
//! (every 50 ms), peers' Raft messages and proposals, then sends what
//! `ready` returned. Raft messages ride the transport's control class (one
//! request each, answered by an ack; a message larger than a chunk, a
//! snapshot, in numbered chunks: `send` and `transfer`). Everything else a
//! peer asks is in `queries` (and `pages`, for answers that could outgrow a
//! frame). A `Drive` message queued behind a burst of events makes one
//! `ready` (one fsync) cover the whole burst. After each `ready`, what
//! retention removed from the state is appended to the on-disk `history`.

mod config;
mod drain;
pub mod history;
pub mod pages;
pub mod queries;
pub mod routing;
pub mod send;
pub mod sessions;
pub mod steward;
pub mod transfer;
mod upkeep;

pub use config::{
    executor_may, replica_options, Config, ExecutorAllowed, PeerConfig, RetentionConfig, Span,
};
pub use drain::{Drain, InFlight};

pub use pages::status;

use anyhow::{Context, Result};
use keel_consensus::node::Node;
use keel_consensus::state::{Outcome, Proposal};
use keel_consensus::storage::DiskStorage;
use keel_consensus::RaftMessage;
use keel_model::RaftChunk;
use keel_transport::{Backoff, Client, Credentials, Link, Server};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, oneshot};

/// Raft's clock: elections after 10-20 ticks of silence (0.5-1 s),
/// heartbeats every 3 (150 ms).
const TICK: Duration = Duration::from_millis(50);
/// Log entries kept past the last snapshot before the next one is taken.
const COMPACT_KEEP: u64 = 10_000;
/// A proposal raft dropped (no leader during an election) is proposed again
/// after this long; the same client and seq make a second copy harmless.
const REPROPOSE_AFTER: Duration = Duration::from_secs(1);
/// The leader's mitigation loop turns every this many ticks (250 ms).
const STEWARD_EVERY: u64 = 5;
/// The leader asks retention what is due every this many ticks (1 s).
const RETENTION_EVERY: u64 = 20;
/// Membership changes waiting to be applied, at most; more are refused.
pub const MEMBER_CHANGES_WAITING: usize = 64;
/// Proposals waiting here to be applied, at most; more are refused (their
/// asker's channel closes at once: an error to it, never a silent loss).
pub const PROPOSALS_WAITING: usize = 65_536;
/// Linearizable status questions waiting for their read index, at most.
pub const READS_WAITING: usize = 1_024;
/// Requests from one connection being answered at once; the next waits.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 64;

/// What a replica applied, for whoever watches (the demo, tests).
#[derive(Debug, Clone)]
pub struct Applied {
    pub replica: u64,
    pub index: u64,
    pub outcome: Outcome,
    /// For a finding just opened: the finding as committed.
    pub finding: Option<keel_consensus::state::FindingEntry>,
}

pub enum ControllerMsg {
    Tick,
    Drive,
    /// A Raft message, with the name on the certificate that sent it.
    Raft(RaftMessage, String),
    /// One chunk of a large Raft message from a peer; answered once taken
    /// (and, for the last one, once the whole message was stepped).
    RaftChunk(RaftChunk, oneshot::Sender<Result<(), String>>),
    /// What became of a Raft message this replica sent (see `send`).
    Sent {
        to: u64,
        bytes: usize,
        snapshot: bool,
        result: Result<(), String>,
    },
    /// Add (with where to reach it) or remove a replica; answered once the
    /// change is applied here, or with why it was not proposed.
    Member {
        id: u64,
        add: Option<(SocketAddr, String)>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Propose(Vec<u8>, oneshot::Sender<Outcome>),
    /// `true`: a linearizable read (ReadIndex); `false`: this replica's view.
    Status(oneshot::Sender<String>, bool),
    /// Runs a read of the replicated state (and the replica's soft state).
    Read(Box<dyn FnOnce(&mut ControllerState) + Send>),
    /// An executor connected to this replica.
    ExecutorConnected(String, keel_transport::Connection),
    /// An executor answered a command (or could not be reached).
    Answered {
        key: String,
        executor: String,
        rollback: bool,
        result: Result<keel_model::Ack, String>,
    },
}

pub struct ControllerActor;

/// Who waits for a membership change to be applied.
type MemberReply = oneshot::Sender<Result<(), String>>;

pub struct ControllerState {
    pub cfg: Config,
    pub node: Node<DiskStorage>,
    creds: Credentials,
    links: HashMap<u64, Arc<Link>>,
    /// Each peer replica's certificate name, by Raft id.
    names: HashMap<u64, String>,
    /// Raft messages refused because their `from` was not the sender's id.
    pub raft_refused: u64,
    myself: ActorRef<ControllerMsg>,
    waiting: Waiting,
    reads: Reads,
    drive_queued: bool,
    server: Option<tokio::task::JoinHandle<()>>,
    pub routing: routing::Routes,
    pub steward: steward::Steward,
    pub sessions: sessions::Sessions,
    sending: send::Sending,
    chunks: transfer::Reassembler,
    members: Vec<(u64, bool, MemberReply)>,
    retention: keel_consensus::retention::Retention,
    last_retention: f64,
    /// History records that could not be written (logged).
    pub history_lost: u64,
    /// Proposals and reads refused because too many were waiting.
    pub refused: u64,
    /// The state digest at an applied index, kept until the state moves
    /// (a digest encodes the whole state).
    digest: (u64, String),
    ticks: u64,
    applied: broadcast::Sender<Applied>,
    /// Set when this replica was removed from the cluster (a clean stop).
    removed: Arc<AtomicBool>,
}

/// What a started replica gives back.
pub struct Started {
    pub actor: ActorRef<ControllerMsg>,
    pub addr: SocketAddr,
    pub applied: broadcast::Sender<Applied>,
    pub join: tokio::task::JoinHandle<()>,
    /// Requests under way; stop taking new ones before stopping the actor.
    pub drain: Arc<Drain>,
    /// True once the replica stopped because it was removed from the cluster.
    pub removed: Arc<AtomicBool>,
}

/// Starts one replica as an actor (optionally under a supervisor).
pub async fn start(cfg: Config, supervisor: Option<ractor::ActorCell>) -> Result<Started> {
    // Checked here too, so that a bad folder is reported as such rather than
    // as an actor that failed to start.
    Credentials::from_dir(&cfg.credentials)
        .with_context(|| format!("credentials in {}", cfg.credentials.display()))?;
    let (applied, _) = broadcast::channel(1024);
    let drain = Arc::new(Drain::default());
    let removed = Arc::new(AtomicBool::new(false));
    let args = (cfg, applied.clone(), drain.clone(), removed.clone());
    let (actor, join) = match supervisor {
        Some(s) => Actor::spawn_linked(None, ControllerActor, args, s).await,
        None => Actor::spawn(None, ControllerActor, args).await,
    }
    .context("starting the controller actor")?;
    let (tx, rx) = oneshot::channel();
    actor
        .cast(ControllerMsg::Read(Box::new(
            move |s: &mut ControllerState| {
                let _ = tx.send(s.cfg.listen);
            },
        )))
        .ok()
        .context("controller actor stopped at once")?;
    let addr = rx.await.context("controller actor stopped at once")?;
    Ok(Started {
        actor,
        addr,
        applied,
        join,
        drain,
        removed,
    })
}

impl Actor for ControllerActor {
    type Msg = ControllerMsg;
    type State = ControllerState;
    type Arguments = (
        Config,
        broadcast::Sender<Applied>,
        Arc<Drain>,
        Arc<AtomicBool>,
    );

    async fn pre_start(
        &self,
        myself: ActorRef<ControllerMsg>,
        (mut cfg, applied, drain, removed): Self::Arguments,
    ) -> Result<ControllerState, ActorProcessingErr> {
        let retention = cfg.retention.rules()?;
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
        // The log, snapshots and history are the cluster's state: this
        // process's alone.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making {} private (0700)", cfg.data_dir.display()))?;
        }
        let creds = Credentials::from_dir(&cfg.credentials)
            .with_context(|| format!("credentials in {}", cfg.credentials.display()))?;
        let mut voters: Vec<u64> = cfg.peers.iter().map(|p| p.id).collect();
        voters.push(cfg.id);
        voters.sort_unstable();
        if cfg.join {
            voters.clear();
        }
        let store = DiskStorage::open(&cfg.data_dir.join("raft.redb"), &voters)?;
        let node = Node::new(cfg.id, store.clone())?;
        let routes = routing::Routes::new(store, &node.state, epoch(cfg.id));
        let mut links = HashMap::new();
        let mut names = HashMap::new();
        for p in &cfg.peers {
            links.insert(p.id, connect(&creds, p.addr, &p.name)?);
            names.insert(p.id, p.name.clone());
        }
        let mut server = Server::bind(cfg.listen, &creds, replica_options())?;
        cfg.listen = server.local_addr()?;
        tracing::info!(id = cfg.id, addr = %cfg.listen, "controller listening");
        let me = myself.clone();
        let handle = tokio::spawn(async move {
            while let Some((conn, mut inbox)) = server.accept().await {
                if conn.peer().role == keel_model::Role::Executor {
                    let name = conn.peer().name.clone();
                    let _ = me.cast(ControllerMsg::ExecutorConnected(name, conn));
                }
                let me = me.clone();
                let drain = drain.clone();
                // A connection's requests are answered concurrently, up to a
                // bound; past it the next waits, and the transport pushes
                // back on that peer alone (a replica's Raft messages never
                // wait behind a busy client).
                let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS_IN_FLIGHT));
                tokio::spawn(async move {
                    while let Some(req) = inbox.requests.recv().await {
                        let Ok(permit) = in_flight.clone().acquire_owned().await else {
                            return;
                        };
                        match drain.enter() {
                            Some(guard) => {
                                let me = me.clone();
                                tokio::spawn(async move {
                                    queries::handle(req, me).await;
                                    drop(guard);
                                    drop(permit);
                                });
                            }
                            None => {
                                let _ = req
                                    .reply(queries::ack(false, "replica stopping".into()))
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        myself.send_interval(TICK, || ControllerMsg::Tick);
        Ok(ControllerState {
            sessions: sessions::Sessions::new(cfg.id),
            cfg,
            node,
            creds,
            links,
            names,
            raft_refused: 0,
            myself: myself.clone(),
            waiting: HashMap::new(),
            reads: Reads::default(),
            drive_queued: false,
            server: Some(handle),
            routing: routes,
            steward: steward::Steward::default(),
            sending: send::Sending::default(),
            chunks: transfer::Reassembler::default(),
            members: Vec::new(),
            retention,
            last_retention: 0.0,
            history_lost: 0,
            refused: 0,
            digest: (u64::MAX, String::new()),
            ticks: 0,
            applied,
            removed,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ControllerMsg>,
        state: &mut ControllerState,
    ) -> Result<(), ActorProcessingErr> {
        // Dropping the accept task drops the server endpoint, which closes
        // every connection: peers see this replica gone at once.
        if let Some(h) = state.server.take() {
            h.abort();
        }
        state.links.clear();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ControllerMsg>,
        msg: ControllerMsg,
        state: &mut ControllerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ControllerMsg::Tick => {
                state.node.tick();
                state.ticks += 1;
                if state.ticks.is_multiple_of(STEWARD_EVERY) {
                    steward::turn(state, &myself);
                }
                if state.ticks.is_multiple_of(RETENTION_EVERY) {
                    upkeep::retain(state);
                }
                repropose(state);
                state.node.maybe_compact(COMPACT_KEEP);
                if drive(state)? {
                    myself.stop(Some("removed from the cluster".into()));
                }
            }
            ControllerMsg::Drive => {
                state.drive_queued = false;
                if drive(state)? {
                    myself.stop(Some("removed from the cluster".into()));
                }
            }
            ControllerMsg::Read(f) => f(state),
            ControllerMsg::Sent {
                to,
                bytes,
                snapshot,
                result,
            } => {
                send::sent(state, to, bytes, snapshot, result);
                if !state.drive_queued {
                    state.drive_queued = true;
                    let _ = myself.cast(ControllerMsg::Drive);
                }
            }
            ControllerMsg::ExecutorConnected(name, conn) => state.steward.connected(name, conn),
            ControllerMsg::Answered {
                key,
                executor,
                rollback,
                result,
            } => {
                steward::answered(state, key, executor, rollback, result);
                if !state.drive_queued {
                    state.drive_queued = true;
                    let _ = myself.cast(ControllerMsg::Drive);
                }
            }
            other => {
                on_event(state, other);
                if !state.drive_queued {
                    state.drive_queued = true;
                    let _ = myself.cast(ControllerMsg::Drive);
                }
            }
        }
        Ok(())
    }
}

/// A routing epoch for this start of replica `id`: never 0 (a first
/// question's), and different at each start.
fn epoch(id: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ id.rotate_left(48)) | 1
}

fn connect(creds: &Credentials, addr: SocketAddr, name: &str) -> Result<Arc<Link>> {
    let client = Client::new(creds, replica_options())?.expecting(keel_model::Role::Controller);
    let (link, _inbox) = Link::start(client, addr, name, Backoff::default());
    Ok(Arc::new(link))
}

/// Proposals not yet seen applied here: the proposal, when it was last
/// handed to raft, and who waits for its outcome.
type Waiting = HashMap<(String, u64), (Vec<u8>, Instant, Vec<oneshot::Sender<Outcome>>)>;

fn repropose(state: &mut ControllerState) {
    let now = Instant::now();
    state.waiting.retain(|_, (_, _, senders)| {
        senders.retain(|s| !s.is_closed());
        !senders.is_empty()
    });
    state.members.retain(|(_, _, reply)| !reply.is_closed());
    for (data, last, _) in state.waiting.values_mut() {
        if now.duration_since(*last) >= REPROPOSE_AFTER {
            *last = now;
            let _ = state.node.propose(data.clone());
        }
    }
}

/// Hands a proposal to raft and remembers who waits for its outcome.
fn propose_here(state: &mut ControllerState, data: Vec<u8>, reply: oneshot::Sender<Outcome>) {
    if let Ok(p) = Proposal::decode(&data) {
        let key = (p.client, p.seq);
        if state.waiting.len() >= PROPOSALS_WAITING && !state.waiting.contains_key(&key) {
            state.refused += 1;
            tracing::warn!(
                refused_total = state.refused,
                "too many proposals waiting; refused"
            );
            return;
        }
        let entry = state
            .waiting
            .entry(key)
            .or_insert_with(|| (data.clone(), Instant::now(), Vec::new()));
        entry.2.push(reply);
        let _ = state.node.propose(data);
    }
}

/// Status questions waiting for their ReadIndex: context -> (index, asker).
#[derive(Default)]
struct Reads {
    next_id: u64,
    waiting: HashMap<Vec<u8>, (Option<u64>, oneshot::Sender<String>)>,
}

fn on_event(state: &mut ControllerState, ev: ControllerMsg) {
    match ev {
        ControllerMsg::Raft(m, sender) => match state.names.get(&m.from) {
            // Replica ids are bound to certificate names (the `[[peers]]`
            // and membership changes say which): another replica's
            // certificate cannot speak for this id.
            Some(name) if *name != sender => {
                state.raft_refused += 1;
                tracing::warn!(from = m.from, %sender, expected = %name, refused = state.raft_refused, "raft message refused: its `from` is not the sender's replica id");
            }
            _ => state.node.step(m),
        },
        ControllerMsg::RaftChunk(c, reply) => {
            let _ = reply.send(send::take_chunk(state, c));
        }
        ControllerMsg::Propose(data, reply) => propose_here(state, data, reply),
        ControllerMsg::Status(reply, false) => {
            let _ = reply.send(status_of(state));
        }
        ControllerMsg::Status(reply, true) => {
            if state.reads.waiting.len() >= READS_WAITING {
                state.refused += 1;
                return;
            }
            state.reads.next_id += 1;
            let ctx = state.reads.next_id.to_be_bytes().to_vec();
            state.reads.waiting.insert(ctx.clone(), (None, reply));
            state.node.read_index(ctx);
        }
        ControllerMsg::Member { id, add, reply } => {
            if state.members.len() >= MEMBER_CHANGES_WAITING {
                let _ = reply.send(Err("too many membership changes waiting".into()));
                return;
            }
            let added = add.is_some();
            let mut change = ConfChangeSingle {
                node_id: id,
                ..Default::default()
            };
            let context = match &add {
                Some((addr, name)) => {
                    change.set_change_type(ConfChangeType::AddNode);
                    format!("{addr} {name}").into_bytes()
                }
                None => {
                    change.set_change_type(ConfChangeType::RemoveNode);
                    Vec::new()
                }
            };
            let mut cc = ConfChangeV2::default();
            cc.set_changes(vec![change].into());
            match state.node.propose_conf_change(context, cc) {
                Ok(()) => state.members.push((id, added, reply)),
                Err(e) => {
                    let _ = reply.send(Err(format!("not proposed: {e}")));
                }
            }
        }
        ControllerMsg::Tick
        | ControllerMsg::Sent { .. }
        | ControllerMsg::Drive
        | ControllerMsg::Read(_)
        | ControllerMsg::ExecutorConnected(..)
        | ControllerMsg::Answered { .. } => {}
    }
}

/// One round of `ready`: send, apply, answer. `Ok(true)` when this replica
/// was removed from the cluster and should stop.
fn drive(state: &mut ControllerState) -> Result<bool> {
    let out = state.node.ready();
    for m in out.messages {
        send::raft(state, m);
    }
    let me = state.cfg.id;
    for (id, added, context) in out.members {
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut state.members)
            .into_iter()
            .partition(|(i, a, _)| *i == id && *a == added);
        state.members = waiting;
        for (_, _, reply) in done {
            let _ = reply.send(Ok(()));
        }
        if id == me {
            if !added {
                tracing::warn!(id, "removed from the cluster; stopping");
                state.removed.store(true, Ordering::SeqCst);
                return Ok(true);
            }
            continue;
        }
        if !added {
            state.links.remove(&id);
            state.names.remove(&id);
        } else if let std::collections::hash_map::Entry::Vacant(slot) = state.links.entry(id) {
            // The proposer attached "ADDR NAME" to the change.
            let text = String::from_utf8_lossy(&context).to_string();
            let mut parts = text.split_whitespace();
            if let (Some(Ok(addr)), Some(name)) = (parts.next().map(str::parse), parts.next()) {
                slot.insert(connect(&state.creds, addr, name)?);
                state.names.insert(id, name.to_string());
            }
        }
    }
    for (ctx, index) in out.reads {
        if let Some(r) = state.reads.waiting.get_mut(&ctx) {
            r.0 = Some(index);
        }
    }
    state.routing.applied(&state.node.state, &out.applied);
    for (index, outcome) in out.applied {
        let key = state
            .node
            .state_entry_client(index)
            .and_then(|k| state.waiting.remove(&k));
        for reply in key.into_iter().flat_map(|w| w.2) {
            let _ = reply.send(outcome.clone());
        }
        let finding = match outcome {
            Outcome::FindingOpened(id) => state.node.state.findings.get(&id).cloned(),
            _ => None,
        };
        let _ = state.applied.send(Applied {
            replica: me,
            index,
            outcome,
            finding,
        });
    }
    answer_reads(state);
    upkeep::keep_history(state);
    Ok(false)
}

fn answer_reads(state: &mut ControllerState) {
    let applied = state.node.state.applied;
    let done: Vec<Vec<u8>> = state
        .reads
        .waiting
        .iter()
        .filter(|(_, (index, _))| index.is_some_and(|i| applied >= i))
        .map(|(k, _)| k.clone())
        .collect();
    for k in done {
        if let Some((_, reply)) = state.reads.waiting.remove(&k) {
            let _ = reply.send(status_of(state));
        }
    }
    state
        .reads
        .waiting
        .retain(|_, (_, reply)| !reply.is_closed());
}

/// `keel status`, with the digest computed once per applied index.
fn status_of(state: &mut ControllerState) -> String {
    let applied = state.node.state.applied;
    if state.digest.0 != applied {
        state.digest = (applied, state.node.state.digest());
    }
    let mut v: serde_json::Value =
        serde_json::from_str(&pages::status_with(&state.node, &state.digest.1)).unwrap_or_default();
    v["raft_refused"] = state.raft_refused.into();
    v["certificate"] = pages::certificate(
        &state.creds,
        keel_transport::expiry::OffsetDateTime::now_utc(),
    );
    v.to_string()
}
