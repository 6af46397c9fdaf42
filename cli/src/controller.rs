//! `keel controller`: one replica of the Raft-replicated controller, and the
//! operator's `keel status`.
//!
//! A thin async shell around `keel_consensus::node::Node`: one task owns the
//! node and feeds it ticks (every 100 ms), peers' Raft messages and
//! operators' proposals, then sends what `ready` returned. Raft messages ride
//! the transport's control class (one request each, answered by an ack);
//! operators ask with `query` messages: topic `status`, or topic `propose`
//! with a JSON command, answered once the proposal is applied here.

use anyhow::{bail, Context, Result};
use keel_consensus::node::{decode_message, encode_message, Node};
use keel_consensus::state::{Command, Outcome, Proposal};
use keel_consensus::storage::DiskStorage;
use keel_consensus::RaftMessage;
use keel_model::{Message, Query, QueryReply, RaftBytes};
use keel_transport::{Backoff, Client, Credentials, Link, Options, Server};
use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Raft's clock: elections after 10-20 ticks of silence (0.5-1 s),
/// heartbeats every 3 (150 ms).
const TICK: Duration = Duration::from_millis(50);
/// Log entries kept past the last snapshot before the next one is taken:
/// the log (and the store's B-tree) stays small, and a replica that falls
/// further behind catches up from the snapshot.
const COMPACT_KEEP: u64 = 10_000;
const RAFT_SEND_TIMEOUT: Duration = Duration::from_secs(2);
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Links between replicas notice a dead peer within about a second: a peer
/// killed outright never closes its connection, and a replica restarted
/// behind a stale connection would wait out a long idle timeout before it
/// hears from the leader again.
fn replica_options() -> Options {
    Options {
        timing: keel_transport::Timing {
            idle_timeout: Duration::from_millis(1500),
            keep_alive: Duration::from_millis(300),
        },
        ..Options::default()
    }
}

/// `keel controller --config FILE`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This replica's Raft id (non-zero, unique in the cluster).
    pub id: u64,
    /// Address to listen on for peers and operators.
    pub listen: SocketAddr,
    /// Where the Raft log, hard state and snapshots live (created if absent).
    pub data_dir: PathBuf,
    /// A folder with this replica's `cert.pem`, `key.pem` and the cluster `ca.pem`
    /// (as `keel cert issue` writes it; the role must be `controller`).
    pub credentials: PathBuf,
    /// The other replicas.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Start as a new member of a running cluster: with no configuration of
    /// its own, it waits to be added (`keel controller join`) and catches up
    /// from the leader's snapshot.
    #[serde(default)]
    pub join: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u64,
    pub addr: SocketAddr,
    /// The name in the peer's certificate (checked when connecting).
    pub name: String,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: Config = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        if cfg.id == 0 {
            bail!("{}: field `id` must be non-zero", path.display());
        }
        if cfg.peers.iter().any(|p| p.id == cfg.id) {
            bail!(
                "{}: peer id {} is this replica's own id",
                path.display(),
                cfg.id
            );
        }
        Ok(cfg)
    }
}

enum Event {
    Raft(RaftMessage),
    /// Add (with where to reach it) or remove a replica.
    Member {
        id: u64,
        add: Option<(SocketAddr, String)>,
    },
    Propose(Vec<u8>, oneshot::Sender<Outcome>),
    /// `true`: a linearizable read (ReadIndex); `false`: this replica's
    /// own view, answered at once (useful when there is no leader).
    Status(oneshot::Sender<String>, bool),
}

pub fn run(config: &Path) -> Result<()> {
    let cfg = Config::load(config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(cfg))
}

async fn serve(cfg: Config) -> Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let creds = Credentials::from_dir(&cfg.credentials)
        .with_context(|| format!("credentials in {}", cfg.credentials.display()))?;
    let mut voters: Vec<u64> = cfg.peers.iter().map(|p| p.id).collect();
    voters.push(cfg.id);
    voters.sort_unstable();
    if cfg.join {
        voters.clear();
    }
    let store = DiskStorage::open(&cfg.data_dir.join("raft.redb"), &voters)?;
    let mut node = Node::new(cfg.id, store)?;

    let connect = |addr: SocketAddr, name: &str| -> Result<Arc<Link>> {
        let client = Client::new(&creds, replica_options())?;
        let (link, _inbox) = Link::start(client, addr, name, Backoff::default());
        Ok(Arc::new(link))
    };
    let mut links: HashMap<u64, Arc<Link>> = HashMap::new();
    for p in &cfg.peers {
        links.insert(p.id, connect(p.addr, &p.name)?);
    }
    let mut server = Server::bind(cfg.listen, &creds, replica_options())?;
    eprintln!(
        "keel controller {}: listening on {}",
        cfg.id,
        server.local_addr()?
    );

    let (events, mut inbox) = mpsc::channel::<Event>(4096);
    tokio::spawn(async move {
        while let Some((_conn, mut requests)) = server.accept().await {
            let events = events.clone();
            tokio::spawn(async move {
                while let Some(req) = requests.requests.recv().await {
                    let events = events.clone();
                    tokio::spawn(handle(req, events));
                }
            });
        }
    });

    let mut waiting = Waiting::new();
    let mut reads = Reads::default();
    let mut ticker = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                node.tick();
                repropose(&mut node, &mut waiting);
                node.maybe_compact(COMPACT_KEEP);
            }
            ev = inbox.recv() => {
                let Some(ev) = ev else { return Ok(()) };
                on_event(&mut node, &mut waiting, &mut reads, ev);
                // Take everything already waiting before the next `ready`,
                // so that one fsync covers a whole batch of proposals.
                while let Ok(ev) = inbox.try_recv() {
                    on_event(&mut node, &mut waiting, &mut reads, ev);
                }
            }
        }
        let out = node.ready();
        for m in out.messages {
            if let Some(link) = links.get(&m.to) {
                let link = link.clone();
                let msg = Message::Raft(RaftBytes {
                    to: m.to,
                    bytes: encode_message(&m),
                });
                tokio::spawn(async move {
                    let _ = link.request(msg, RAFT_SEND_TIMEOUT).await;
                });
            }
        }
        for (id, added, context) in out.members {
            if id == cfg.id {
                if !added {
                    eprintln!("keel controller {id}: removed from the cluster; stopping");
                    return Ok(());
                }
                continue;
            }
            if !added {
                links.remove(&id);
            } else if let std::collections::hash_map::Entry::Vacant(slot) = links.entry(id) {
                // The proposer attached "ADDR NAME" to the change.
                let text = String::from_utf8_lossy(&context).to_string();
                let mut parts = text.split_whitespace();
                if let (Some(Ok(addr)), Some(name)) = (parts.next().map(str::parse), parts.next()) {
                    slot.insert(connect(addr, name)?);
                }
            }
        }
        for (ctx, index) in out.reads {
            if let Some(r) = reads.waiting.get_mut(&ctx) {
                r.0 = Some(index);
            }
        }
        for (index, outcome) in out.applied {
            let key = node
                .state_entry_client(index)
                .and_then(|k| waiting.remove(&k));
            for reply in key.into_iter().flat_map(|w| w.2) {
                let _ = reply.send(outcome.clone());
            }
        }
        reads.answer(&node);
    }
}

/// Proposals not yet seen applied here: the proposal, when it was last
/// handed to raft, and who waits for its outcome.
type Waiting = HashMap<(String, u64), (Vec<u8>, std::time::Instant, Vec<oneshot::Sender<Outcome>>)>;

/// A proposal raft dropped (no leader during an election, a leader that
/// stepped down) is proposed again after this long. The same client and
/// sequence number make a second copy harmless: the state machine applies it
/// once.
const REPROPOSE_AFTER: Duration = Duration::from_secs(1);

fn repropose(node: &mut Node<DiskStorage>, waiting: &mut Waiting) {
    let now = std::time::Instant::now();
    waiting.retain(|_, (_, _, senders)| {
        senders.retain(|s| !s.is_closed());
        !senders.is_empty()
    });
    for (data, last, _) in waiting.values_mut() {
        if now.duration_since(*last) >= REPROPOSE_AFTER {
            *last = now;
            let _ = node.propose(data.clone());
        }
    }
}

/// Status questions waiting for their ReadIndex: context -> (index to reach, asker).
#[derive(Default)]
struct Reads {
    next_id: u64,
    waiting: HashMap<Vec<u8>, (Option<u64>, oneshot::Sender<String>)>,
}

impl Reads {
    /// Answers every read whose index this replica has applied.
    fn answer(&mut self, node: &Node<DiskStorage>) {
        let applied = node.state.applied;
        let done: Vec<Vec<u8>> = self
            .waiting
            .iter()
            .filter(|(_, (index, _))| index.is_some_and(|i| applied >= i))
            .map(|(k, _)| k.clone())
            .collect();
        for k in done {
            if let Some((_, reply)) = self.waiting.remove(&k) {
                let _ = reply.send(status(node));
            }
        }
        self.waiting.retain(|_, (_, reply)| !reply.is_closed());
    }
}

fn on_event(node: &mut Node<DiskStorage>, waiting: &mut Waiting, reads: &mut Reads, ev: Event) {
    match ev {
        Event::Raft(m) => node.step(m),
        Event::Propose(data, reply) => {
            if let Ok(p) = Proposal::decode(&data) {
                let entry = waiting
                    .entry((p.client, p.seq))
                    .or_insert_with(|| (data.clone(), std::time::Instant::now(), Vec::new()));
                entry.2.push(reply);
                let _ = node.propose(data);
            }
        }
        Event::Status(reply, false) => {
            let _ = reply.send(status(node));
        }
        Event::Status(reply, true) => {
            // Linearizable: answered once this replica has applied
            // everything committed when the question arrived (ReadIndex).
            reads.next_id += 1;
            let ctx = reads.next_id.to_be_bytes().to_vec();
            reads.waiting.insert(ctx.clone(), (None, reply));
            node.read_index(ctx);
        }
        Event::Member { id, add } => {
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
            let _ = node.propose_conf_change(context, cc);
        }
    }
}

async fn handle(req: keel_transport::Request, events: mpsc::Sender<Event>) {
    let reply = match &req.msg {
        Message::Raft(r) => match decode_message(&r.bytes) {
            Ok(m) => {
                let _ = events.send(Event::Raft(m)).await;
                Message::Ack(keel_model::Ack {
                    id: 0,
                    ok: true,
                    detail: String::new(),
                })
            }
            Err(e) => Message::Ack(keel_model::Ack {
                id: 0,
                ok: false,
                detail: format!("bad raft message: {e}"),
            }),
        },
        Message::Query(q) => Message::QueryReply(answer(q, &events).await),
        _ => Message::Ack(keel_model::Ack {
            id: 0,
            ok: false,
            detail: "not for a controller".into(),
        }),
    };
    let _ = req.reply(reply).await;
}

async fn answer(q: &Query, events: &mpsc::Sender<Event>) -> QueryReply {
    let fail = |body: String| QueryReply {
        id: q.id,
        ok: false,
        body,
    };
    match q.topic.as_str() {
        "status" => {
            let (tx, rx) = oneshot::channel();
            let consistent = q.params.get("consistent").is_some_and(|v| v == "true");
            if events.send(Event::Status(tx, consistent)).await.is_err() {
                return fail("controller stopping".into());
            }
            match rx.await {
                Ok(body) => QueryReply {
                    id: q.id,
                    ok: true,
                    body,
                },
                Err(_) => fail("controller stopping".into()),
            }
        }
        "propose" => {
            let parsed = (|| -> Result<Vec<u8>> {
                let client = q.params.get("client").context("param `client`")?.clone();
                let seq: u64 = q
                    .params
                    .get("seq")
                    .context("param `seq`")?
                    .parse()
                    .context("param `seq`")?;
                let command: Command =
                    serde_json::from_str(q.params.get("command").context("param `command`")?)
                        .context("param `command`")?;
                Ok(Proposal {
                    client,
                    seq,
                    command,
                }
                .encode())
            })();
            let data = match parsed {
                Ok(d) => d,
                Err(e) => return fail(format!("{e:#}")),
            };
            let (tx, rx) = oneshot::channel();
            if events.send(Event::Propose(data, tx)).await.is_err() {
                return fail("controller stopping".into());
            }
            match tokio::time::timeout(PROPOSE_TIMEOUT, rx).await {
                Ok(Ok(outcome)) => QueryReply {
                    id: q.id,
                    ok: !matches!(outcome, Outcome::Rejected(_)),
                    body: serde_json::to_string(&outcome).unwrap_or_default(),
                },
                _ => fail(
                    "not applied in time (no leader?); retry with the same client and seq".into(),
                ),
            }
        }
        "member" => {
            let parsed = (|| -> Result<Event> {
                let id: u64 = q
                    .params
                    .get("id")
                    .context("param `id`")?
                    .parse()
                    .context("param `id`")?;
                let add = match q.params.get("op").map(String::as_str) {
                    Some("add") => {
                        let addr = q
                            .params
                            .get("addr")
                            .context("param `addr`")?
                            .parse()
                            .context("param `addr`")?;
                        Some((addr, q.params.get("name").context("param `name`")?.clone()))
                    }
                    Some("remove") => None,
                    _ => bail!("param `op` must be add or remove"),
                };
                Ok(Event::Member { id, add })
            })();
            match parsed {
                Ok(ev) => {
                    if events.send(ev).await.is_err() {
                        return fail("controller stopping".into());
                    }
                    QueryReply {
                        id: q.id,
                        ok: true,
                        body: "\"proposed\"".into(),
                    }
                }
                Err(e) => fail(format!("{e:#}")),
            }
        }
        other => fail(format!("unknown query topic {other:?}")),
    }
}

fn status<S: keel_consensus::node::LogStore + Clone>(node: &Node<S>) -> String {
    let s = &node.state;
    let ledger: BTreeMap<&String, String> = s
        .ledger
        .iter()
        .map(|(k, e)| (k, format!("{:?} {} {}", e.status, e.action, e.target)))
        .collect();
    serde_json::json!({
        "id": node.id(),
        "leader": node.leader_id(),
        "term": node.term(),
        "commit": node.commit_index(),
        "applied": s.applied,
        "members": node.voters(),
        "jobs": s.jobs.keys().collect::<Vec<_>>(),
        "open_findings": s.open_findings().count(),
        "policies": s.policies.iter().map(|(k, v)| (k.clone(), v.len())).collect::<BTreeMap<_, _>>(),
        "ledger": ledger,
    })
    .to_string()
}

/// `keel status`: asks one controller for its view.
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
