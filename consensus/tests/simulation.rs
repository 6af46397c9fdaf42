//! Deterministic simulation of a 3-replica controller: real `raft::RawNode`s
//! and the real state machine, over a seeded network that drops, delays,
//! duplicates and reorders messages, partitions a node off and crashes and
//! restarts nodes (keeping what they persisted). After every tick and at the
//! end it checks: never two leaders in one term; every replica applies the
//! same entry at the same index (nothing committed is lost or changed); all
//! replicas end in the same state; no ledger action is applied twice. A
//! failing seed is printed and replays exactly.

use keel_consensus::node::{LogStore, Node};
use keel_consensus::state::{ActionStatus, Command, Proposal};
use keel_consensus::storage::DiskStorage;
use keel_model::Action;
use raft::prelude::*;
use raft::storage::MemStorage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};

const REPLICAS: u64 = 3;
const FAULTY_TICKS: u64 = 1500;
const HEAL_TICKS: u64 = 800;

struct Client {
    name: String,
    next_seq: u64,
    /// seq -> (encoded proposal, tick of the last try)
    pending: BTreeMap<u64, (Vec<u8>, u64)>,
}

/// Opens replica `i`'s store as a restarted process would find it.
type Reopen<S> = Box<dyn Fn(usize) -> S>;

struct Sim<S: LogStore + Clone> {
    rng: ChaCha8Rng,
    reopen: Reopen<S>,
    stores: Vec<Option<S>>,
    nodes: Vec<Option<Node<S>>>,
    down_until: Vec<u64>,
    isolated: Option<(u64, u64)>,
    wire: Vec<(u64, u64, Message)>,
    now: u64,
    leaders: HashMap<u64, u64>,
    /// index -> entry data, as first applied by any replica
    log: BTreeMap<u64, Vec<u8>>,
    clients: Vec<Client>,
    planned: u64,
    crashes: u64,
}

impl<S: LogStore + Clone> Sim<S> {
    fn new(seed: u64, reopen: Reopen<S>) -> Sim<S> {
        let stores: Vec<Option<S>> = (0..REPLICAS as usize).map(|i| Some(reopen(i))).collect();
        let nodes = stores
            .iter()
            .enumerate()
            .map(|(i, s)| Some(Node::new(i as u64 + 1, s.clone().unwrap()).unwrap()))
            .collect();
        Sim {
            rng: ChaCha8Rng::seed_from_u64(seed),
            reopen,
            stores,
            nodes,
            down_until: vec![0; REPLICAS as usize],
            isolated: None,
            wire: Vec::new(),
            now: 0,
            leaders: HashMap::new(),
            log: BTreeMap::new(),
            clients: ["planner", "dispatcher"]
                .iter()
                .map(|n| Client {
                    name: n.to_string(),
                    next_seq: 1,
                    pending: BTreeMap::new(),
                })
                .collect(),
            planned: 0,
            crashes: 0,
        }
    }

    fn cut(&self, a: u64, b: u64) -> bool {
        matches!(self.isolated, Some((n, until)) if self.now < until && (n == a || n == b))
    }

    fn tick(&mut self, faults: bool) {
        self.now += 1;
        if faults {
            self.inject_faults();
        }
        for i in 0..REPLICAS as usize {
            if self.nodes[i].is_none() && self.now >= self.down_until[i] {
                // Restart from what was persisted.
                let store = (self.reopen)(i);
                self.stores[i] = Some(store.clone());
                self.nodes[i] = Some(Node::new(i as u64 + 1, store).unwrap());
            }
        }
        // Deliver what is due, in a shuffled order.
        let mut due = Vec::new();
        let mut keep = Vec::new();
        for m in self.wire.drain(..) {
            if m.0 <= self.now {
                due.push(m);
            } else {
                keep.push(m);
            }
        }
        self.wire = keep;
        for i in (1..due.len()).rev() {
            let j = self.rng.gen_range(0..=i);
            due.swap(i, j);
        }
        for (_, to, msg) in due {
            if self.cut(msg.from, to) {
                continue;
            }
            if let Some(n) = self.nodes[to as usize - 1].as_mut() {
                n.step(msg);
            }
        }
        for n in self.nodes.iter_mut().flatten() {
            n.tick();
        }
        self.clients_act(faults);
        for i in 0..REPLICAS as usize {
            let Some(n) = self.nodes[i].as_mut() else {
                continue;
            };
            let out = n.ready();
            for (index, _) in out.applied {
                let data = self.stores[i]
                    .as_ref()
                    .expect("a live node has its store")
                    .entries(
                        index,
                        index + 1,
                        None,
                        raft::GetEntriesContext::empty(false),
                    )
                    .map(|e| e[0].data.to_vec());
                if let Ok(data) = data {
                    match self.log.get(&index) {
                        Some(prev) => assert_eq!(
                            prev,
                            &data,
                            "replica {} applied a different entry at {index}",
                            i + 1
                        ),
                        None => {
                            self.log.insert(index, data.clone());
                        }
                    }
                    if let Ok(p) = Proposal::decode(&data) {
                        if let Some(c) = self.clients.iter_mut().find(|c| c.name == p.client) {
                            c.pending.remove(&p.seq);
                        }
                    }
                }
            }
            for msg in out.messages {
                self.send(msg, faults);
            }
        }
        for n in self.nodes.iter().flatten() {
            if n.is_leader() {
                let prev = *self.leaders.entry(n.term()).or_insert(n.id());
                assert_eq!(prev, n.id(), "two leaders in term {}", n.term());
            }
        }
    }

    fn send(&mut self, msg: Message, faults: bool) {
        let to = msg.to;
        if faults && self.rng.gen_bool(0.05) {
            return; // dropped
        }
        let delay = if faults { self.rng.gen_range(0..4) } else { 0 };
        if faults && self.rng.gen_bool(0.03) {
            self.wire.push((self.now + delay + 2, to, msg.clone()));
        }
        self.wire.push((self.now + delay, to, msg));
    }

    fn inject_faults(&mut self) {
        if self.rng.gen_bool(0.006) {
            // Half the crashes take the leader: that is where failover hurts.
            let leader = self
                .nodes
                .iter()
                .flatten()
                .find(|n| n.is_leader())
                .map(|n| n.id() as usize - 1);
            let i = match leader {
                Some(l) if self.rng.gen_bool(0.5) => l,
                _ => self.rng.gen_range(0..REPLICAS as usize),
            };
            if self.nodes[i].is_some() {
                self.nodes[i] = None;
                self.stores[i] = None;
                self.crashes += 1;
                self.down_until[i] = self.now + self.rng.gen_range(5..60);
            }
        }
        if self.isolated.is_none_or(|(_, until)| self.now >= until) && self.rng.gen_bool(0.004) {
            let n = self.rng.gen_range(1..=REPLICAS);
            self.isolated = Some((n, self.now + self.rng.gen_range(10..80)));
        }
    }

    fn clients_act(&mut self, faults: bool) {
        // The planner plans a new action now and then; the dispatcher
        // dispatches (and re-dispatches, as a new leader would) the planned ones.
        if faults && self.now.is_multiple_of(7) {
            self.planned += 1;
            let key = format!("action-{}", self.planned);
            self.submit(
                0,
                Command::PlanAction {
                    key,
                    action: Action::RemapRequests,
                    target: "be/r1".into(),
                    params: BTreeMap::new(),
                    finding: None,
                    ts: self.now as f64,
                    reason: "tp_straggler".into(),
                    handling: Default::default(),
                },
            );
        }
        if faults && self.now.is_multiple_of(11) && self.planned > 0 {
            let k = self.rng.gen_range(1..=self.planned);
            self.submit(
                1,
                Command::Transition {
                    key: format!("action-{k}"),
                    to: ActionStatus::Dispatched,
                    ts: self.now as f64,
                    detail: "sent".into(),
                },
            );
        }
        // Retry what has not been seen applied after 20 ticks (same seq).
        let now = self.now;
        let live: Vec<usize> = (0..REPLICAS as usize)
            .filter(|&i| self.nodes[i].is_some())
            .collect();
        if live.is_empty() {
            return;
        }
        for c in 0..self.clients.len() {
            let retry: Vec<(u64, Vec<u8>)> = self.clients[c]
                .pending
                .iter()
                .filter(|(_, (_, at))| now - at >= 20)
                .map(|(s, (d, _))| (*s, d.clone()))
                .collect();
            for (seq, data) in retry {
                let i = live[self.rng.gen_range(0..live.len())];
                let _ = self.nodes[i].as_mut().unwrap().propose(data.clone());
                self.clients[c].pending.insert(seq, (data, now));
            }
        }
    }

    fn submit(&mut self, client: usize, command: Command) {
        let c = &mut self.clients[client];
        let seq = c.next_seq;
        c.next_seq += 1;
        let data = Proposal {
            client: c.name.clone(),
            seq,
            command,
        }
        .encode();
        c.pending.insert(seq, (data.clone(), self.now));
        let live: Vec<usize> = (0..REPLICAS as usize)
            .filter(|&i| self.nodes[i].is_some())
            .collect();
        if let Some(&i) = live.get(self.rng.gen_range(0..live.len().max(1))) {
            let _ = self.nodes[i].as_mut().unwrap().propose(data);
        }
    }
}

fn in_memory() -> Reopen<MemStorage> {
    let voters: Vec<u64> = (1..=REPLICAS).collect();
    // The "disk" of each replica: what survives its crash.
    let disks: Vec<MemStorage> = (0..REPLICAS)
        .map(|_| MemStorage::new_with_conf_state(ConfState::from((voters.clone(), vec![]))))
        .collect();
    Box::new(move |i| disks[i].clone())
}

fn on_disk(seed: u64) -> Reopen<DiskStorage> {
    let dir = std::env::temp_dir().join(format!("keel-sim-{}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Box::new(move |i| {
        DiskStorage::open(&dir.join(format!("replica-{}.redb", i + 1)), &[1, 2, 3]).unwrap()
    })
}

fn run<S: LogStore + Clone>(seed: u64, reopen: Reopen<S>) {
    let mut sim = Sim::new(seed, reopen);
    for _ in 0..FAULTY_TICKS {
        sim.tick(true);
    }
    sim.isolated = None;
    for _ in 0..HEAL_TICKS {
        sim.tick(false);
        let settled = sim.clients.iter().all(|c| c.pending.is_empty())
            && sim.nodes.iter().all(|n| n.is_some())
            && {
                let applied: Vec<u64> = sim
                    .nodes
                    .iter()
                    .flatten()
                    .map(|n| n.state.applied)
                    .collect();
                applied.windows(2).all(|w| w[0] == w[1])
            };
        if settled && sim.now > FAULTY_TICKS + 50 {
            break;
        }
    }
    let nodes: Vec<&Node<S>> = sim.nodes.iter().flatten().collect();
    assert_eq!(
        nodes.len(),
        REPLICAS as usize,
        "seed {seed}: a replica is still down"
    );
    for c in &sim.clients {
        assert!(
            c.pending.is_empty(),
            "seed {seed}: {} proposals of {} never applied",
            c.pending.len(),
            c.name
        );
    }
    let snap = nodes[0].state.snapshot();
    for n in &nodes[1..] {
        assert_eq!(
            n.state.snapshot(),
            snap,
            "seed {seed}: replica {} differs from replica {}",
            n.id(),
            nodes[0].id()
        );
    }
    let state = &nodes[0].state;
    assert_eq!(
        state.ledger.len() as u64,
        sim.planned,
        "seed {seed}: every planned action once"
    );
    let mut planned_events: HashMap<&str, u32> = HashMap::new();
    for e in &state.audit {
        if e.to == ActionStatus::Planned {
            *planned_events.entry(&e.key).or_default() += 1;
        }
    }
    assert!(
        planned_events.values().all(|&n| n == 1),
        "seed {seed}: an action planned twice"
    );
    // Every dispatcher proposal was applied exactly once: dispatch counts add
    // up to the dispatcher's accepted transitions, whatever the retries.
    let dispatches: u32 = state.ledger.values().map(|e| e.dispatches).sum();
    let accepted = state
        .audit
        .iter()
        .filter(|e| e.to == ActionStatus::Dispatched)
        .count() as u32;
    assert_eq!(dispatches, accepted, "seed {seed}");
    // The run did real work: leaders came and went, and most was committed.
    assert!(!sim.leaders.is_empty(), "seed {seed}: no leader ever");
    assert!(
        sim.planned >= 50 && state.applied >= sim.planned,
        "seed {seed}: too little committed"
    );
    if std::env::var("KEEL_SIM_VERBOSE").is_ok() {
        eprintln!(
            "seed {seed}: {} terms with a leader, {} entries applied, {} actions, {} dispatches, {} crashes",
            sim.leaders.len(),
            state.applied,
            state.ledger.len(),
            dispatches,
            sim.crashes
        );
    }
}

#[test]
fn five_hundred_seeds_of_faults_keep_every_invariant() {
    let seeds: u64 = std::env::var("KEEL_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    for seed in 0..seeds {
        run(seed, in_memory());
    }
}

/// The same faults over the real store: a crashed replica is reopened from
/// its redb file, so a restart sees exactly what was fsynced.
#[test]
fn replicas_restarted_from_their_redb_files_keep_every_invariant() {
    for seed in 0..3 {
        run(seed, on_disk(seed));
        let dir = std::env::temp_dir().join(format!("keel-sim-{}-{seed}", std::process::id()));
        std::fs::remove_dir_all(dir).ok();
    }
}
