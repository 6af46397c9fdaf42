//! The simulation engine behind `tests/simulation.rs` (see there for what
//! it checks).

use keel_consensus::node::{LogStore, Node};
use keel_consensus::state::{ActionStatus, Command, Proposal};
use keel_model::Action;
use raft::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Replica ids the simulation may use: 1-3 start, 4 and 5 join later.
const IDS: usize = 5;
const FIRST: u64 = 3;
const FAULTY_TICKS: u64 = 1500;
const HEAL_TICKS: u64 = 2500;
/// Log entries kept past the last snapshot: small, so that every run
/// compacts often and lagging replicas catch up from snapshots.
const KEEP: u64 = 40;
/// Ticks between two membership steps, and before a step is proposed again.
const STEP_GAP: u64 = 120;
const STEP_RETRY: u64 = 40;

/// Opens replica `i`'s store as a restarted process would find it; `voters`
/// is the configuration a brand-new store starts with (empty: it joins).
pub type Opened<S> = Box<dyn Fn(usize, &[u64]) -> S>;

struct Client {
    name: String,
    next_seq: u64,
    /// seq -> (encoded proposal, tick of the last try)
    pending: BTreeMap<u64, (Vec<u8>, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Add(u64),
    Remove(u64),
}

struct Sim<S: LogStore + Clone> {
    rng: ChaCha8Rng,
    opened: Opened<S>,
    nodes: Vec<Option<Node<S>>>,
    /// Created and not removed: the simulation's members.
    member: Vec<bool>,
    /// Joined after the start (a fresh store opens empty).
    joiner: Vec<bool>,
    down_until: Vec<u64>,
    isolated: Option<(u64, u64)>,
    wire: Vec<(u64, u64, Message)>,
    now: u64,
    leaders: HashMap<u64, u64>,
    /// index -> entry data, as first applied by any replica
    log: BTreeMap<u64, Vec<u8>>,
    /// applied index -> state digest, as first seen on any replica
    digests: BTreeMap<u64, String>,
    applied_seen: Vec<u64>,
    clients: Vec<Client>,
    planned: u64,
    crashes: u64,
    snapshots: u64,
    plan: VecDeque<Step>,
    /// The step in progress and the tick it was last proposed.
    proposing: Option<(Step, u64)>,
    next_step_at: u64,
}

impl<S: LogStore + Clone> Sim<S> {
    fn new(seed: u64, opened: Opened<S>) -> Sim<S> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let voters: Vec<u64> = (1..=FIRST).collect();
        let mut nodes: Vec<Option<Node<S>>> = (0..IDS).map(|_| None).collect();
        let mut member = vec![false; IDS];
        for i in 0..FIRST as usize {
            nodes[i] = Some(Node::new(i as u64 + 1, opened(i, &voters)).unwrap());
            member[i] = true;
        }
        let replaced = rng.gen_range(1..=FIRST);
        let plan = VecDeque::from([
            Step::Add(4),
            Step::Remove(replaced),
            Step::Add(5),
            Step::Remove(4),
        ]);
        let next_step_at = rng.gen_range(100..400);
        Sim {
            rng,
            opened,
            nodes,
            member,
            joiner: vec![false; IDS],
            down_until: vec![0; IDS],
            isolated: None,
            wire: Vec::new(),
            now: 0,
            leaders: HashMap::new(),
            log: BTreeMap::new(),
            digests: BTreeMap::new(),
            applied_seen: vec![0; IDS],
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
            snapshots: 0,
            plan,
            proposing: None,
            next_step_at,
        }
    }

    fn cut(&self, a: u64, b: u64) -> bool {
        matches!(self.isolated, Some((n, until)) if self.now < until && (n == a || n == b))
    }

    fn live(&self) -> Vec<usize> {
        (0..IDS)
            .filter(|&i| self.member[i] && self.nodes[i].is_some())
            .collect()
    }

    fn open(&self, i: usize) -> S {
        let voters: Vec<u64> = if self.joiner[i] {
            Vec::new()
        } else {
            (1..=FIRST).collect()
        };
        (self.opened)(i, &voters)
    }

    fn tick(&mut self, faults: bool) {
        self.now += 1;
        if faults {
            self.inject_faults();
        }
        for i in 0..IDS {
            if self.member[i] && self.nodes[i].is_none() && self.now >= self.down_until[i] {
                // Restart from what was persisted: the state machine comes
                // back from the store's snapshot, then the entries after it.
                let store = self.open(i);
                self.nodes[i] = Some(Node::new(i as u64 + 1, store).unwrap());
            }
        }
        self.deliver();
        for n in self.nodes.iter_mut().flatten() {
            n.tick();
        }
        self.clients_act(faults);
        self.change_membership();
        for i in 0..IDS {
            self.drive(i, faults);
        }
        for n in self.nodes.iter().flatten() {
            if n.is_leader() {
                let prev = *self.leaders.entry(n.term()).or_insert(n.id());
                assert_eq!(prev, n.id(), "two leaders in term {}", n.term());
            }
        }
    }

    /// Delivers what is due, in a shuffled order; tells a snapshot's sender
    /// whether it arrived.
    fn deliver(&mut self) {
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
            let from = msg.from;
            let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            let cut = self.cut(from, to);
            let mut arrived = false;
            if !cut {
                if let Some(n) = self.nodes.get_mut(to as usize - 1).and_then(Option::as_mut) {
                    n.step(msg);
                    arrived = true;
                }
            }
            if snapshot {
                self.snapshots += 1;
                if let Some(s) = self
                    .nodes
                    .get_mut(from as usize - 1)
                    .and_then(Option::as_mut)
                {
                    s.report_snapshot(to, arrived);
                }
            }
        }
    }

    /// One `ready` round of replica `i`, with every check on what it applied.
    fn drive(&mut self, i: usize, faults: bool) {
        let Some(n) = self.nodes[i].as_mut() else {
            return;
        };
        let out = n.ready();
        let id = i as u64 + 1;
        for (index, _) in out.applied {
            let data = n.state_entry_data(index);
            if let Some(data) = data {
                match self.log.get(&index) {
                    Some(prev) => assert_eq!(
                        prev, &data,
                        "replica {id} applied a different entry at {index}"
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
        n.maybe_compact(KEEP);
        let applied = n.state.applied;
        if applied != self.applied_seen[i] {
            self.applied_seen[i] = applied;
            let digest = n.state.digest();
            let first = self
                .digests
                .entry(applied)
                .or_insert_with(|| digest.clone());
            assert_eq!(
                first, &digest,
                "replica {id} holds another state at applied index {applied}"
            );
        }
        for (changed, added, _) in out.members {
            self.member_changed(changed, added);
        }
        let mut failed = Vec::new();
        for msg in out.messages {
            if let Some(to) = self.send(msg, faults) {
                failed.push(to);
            }
        }
        if let Some(n) = self.nodes[i].as_mut() {
            for to in failed {
                n.report_snapshot(to, false);
            }
        }
    }

    /// A membership change applied on some replica.
    fn member_changed(&mut self, id: u64, added: bool) {
        let step = if added {
            Step::Add(id)
        } else {
            Step::Remove(id)
        };
        if let Some((s, _)) = self.proposing {
            if s == step {
                self.proposing = None;
                self.next_step_at = self.now + STEP_GAP;
            }
        }
        if !added && self.member[id as usize - 1] {
            // Gone for good: a removed replica stops (as the controller does).
            let i = id as usize - 1;
            self.member[i] = false;
            self.nodes[i] = None;
        }
    }

    fn change_membership(&mut self) {
        let leader = self
            .live()
            .into_iter()
            .find(|&i| self.nodes[i].as_ref().is_some_and(|n| n.is_leader()));
        let Some(l) = leader else {
            return;
        };
        let step = match self.proposing {
            Some((s, at)) if self.now - at >= STEP_RETRY => s,
            Some(_) => return,
            None if self.now >= self.next_step_at => match self.plan.pop_front() {
                Some(s) => s,
                None => return,
            },
            None => return,
        };
        self.proposing = Some((step, self.now));
        let mut change = ConfChangeSingle::default();
        match step {
            Step::Add(id) => {
                change.node_id = id;
                change.set_change_type(ConfChangeType::AddNode);
                let i = id as usize - 1;
                if !self.member[i] {
                    self.member[i] = true;
                    self.joiner[i] = true;
                    let store = self.open(i);
                    self.nodes[i] = Some(Node::new(id, store).unwrap());
                }
            }
            Step::Remove(id) => {
                change.node_id = id;
                change.set_change_type(ConfChangeType::RemoveNode);
            }
        }
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![change].into());
        if let Some(n) = self.nodes[l].as_mut() {
            let _ = n.propose_conf_change(Vec::new(), cc);
        }
    }

    /// Puts `msg` on the wire; returns the receiver of a snapshot that was
    /// dropped (its sender is told it failed).
    fn send(&mut self, msg: Message, faults: bool) -> Option<u64> {
        let to = msg.to;
        if faults && self.rng.gen_bool(0.05) {
            return (msg.get_msg_type() == MessageType::MsgSnapshot).then_some(to);
        }
        let delay = if faults { self.rng.gen_range(0..4) } else { 0 };
        if faults && self.rng.gen_bool(0.03) {
            self.wire.push((self.now + delay + 2, to, msg.clone()));
        }
        self.wire.push((self.now + delay, to, msg));
        None
    }

    fn inject_faults(&mut self) {
        if self.rng.gen_bool(0.006) {
            // Half the crashes take the leader: that is where failover hurts.
            let live = self.live();
            let leader = live
                .iter()
                .copied()
                .find(|&i| self.nodes[i].as_ref().is_some_and(|n| n.is_leader()));
            let i = match leader {
                Some(l) if self.rng.gen_bool(0.5) => Some(l),
                _ if live.is_empty() => None,
                _ => Some(live[self.rng.gen_range(0..live.len())]),
            };
            if let Some(i) = i {
                self.nodes[i] = None;
                self.crashes += 1;
                self.down_until[i] = self.now + self.rng.gen_range(5..60);
            }
        }
        if self.isolated.is_none_or(|(_, until)| self.now >= until) && self.rng.gen_bool(0.004) {
            let n = self.rng.gen_range(1..=IDS as u64);
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
        let live = self.live();
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
        let live = self.live();
        if let Some(&i) = live.get(self.rng.gen_range(0..live.len().max(1))) {
            let _ = self.nodes[i].as_mut().unwrap().propose(data);
        }
    }

    fn settled(&self) -> bool {
        let live = self.live();
        let applied: Vec<u64> = live
            .iter()
            .filter_map(|&i| self.nodes[i].as_ref())
            .map(|n| n.state.applied)
            .collect();
        self.clients.iter().all(|c| c.pending.is_empty())
            && self.plan.is_empty()
            && self.proposing.is_none()
            && (0..IDS).all(|i| !self.member[i] || self.nodes[i].is_some())
            && applied.windows(2).all(|w| w[0] == w[1])
    }
}

/// Runs one seed; panics with what broke.
pub fn run<S: LogStore + Clone>(seed: u64, opened: Opened<S>) {
    let mut sim = Sim::new(seed, opened);
    for _ in 0..FAULTY_TICKS {
        sim.tick(true);
    }
    sim.isolated = None;
    for _ in 0..HEAL_TICKS {
        sim.tick(false);
        if sim.settled() && sim.now > FAULTY_TICKS + 50 {
            break;
        }
    }
    assert!(
        sim.plan.is_empty() && sim.proposing.is_none(),
        "membership steps left undone: {:?} {:?}",
        sim.proposing,
        sim.plan
    );
    let members: Vec<u64> = (0..IDS)
        .filter(|&i| sim.member[i])
        .map(|i| i as u64 + 1)
        .collect();
    assert_eq!(members.len(), FIRST as usize, "3 -> 4 -> 3 ends with 3");
    let nodes: Vec<&Node<S>> = sim.nodes.iter().flatten().collect();
    assert_eq!(
        nodes.iter().map(|n| n.id()).collect::<Vec<_>>(),
        members,
        "a member is still down"
    );
    for n in &nodes {
        assert_eq!(n.voters(), members, "replica {} sees other members", n.id());
    }
    for c in &sim.clients {
        assert!(
            c.pending.is_empty(),
            "{} proposals of {} never applied",
            c.pending.len(),
            c.name
        );
    }
    let snap = nodes[0].state.snapshot();
    for n in &nodes[1..] {
        assert_eq!(
            n.state.snapshot(),
            snap,
            "replica {} differs from replica {}",
            n.id(),
            nodes[0].id()
        );
    }
    let state = &nodes[0].state;
    assert_eq!(
        state.ledger.len() as u64,
        sim.planned,
        "every planned action once"
    );
    let mut planned_events: HashMap<&str, u32> = HashMap::new();
    for e in &state.audit {
        if e.to == ActionStatus::Planned {
            *planned_events.entry(&e.key).or_default() += 1;
        }
    }
    assert!(
        planned_events.values().all(|&n| n == 1),
        "an action planned twice"
    );
    // Every dispatcher proposal was applied exactly once: dispatch counts add
    // up to the dispatcher's accepted transitions, whatever the retries.
    let dispatches: u32 = state.ledger.values().map(|e| e.dispatches).sum();
    let accepted = state
        .audit
        .iter()
        .filter(|e| e.to == ActionStatus::Dispatched)
        .count() as u32;
    assert_eq!(dispatches, accepted, "a dispatch applied twice or lost");
    // The run did real work: leaders came and went, most was committed, and
    // snapshots travelled.
    assert!(!sim.leaders.is_empty(), "no leader ever");
    assert!(
        sim.planned >= 50 && state.applied >= sim.planned,
        "too little committed"
    );
    if std::env::var("KEEL_SIM_VERBOSE").is_ok() {
        eprintln!(
            "seed {seed}: {} terms with a leader, {} entries applied, {} actions, {} dispatches, {} crashes, {} snapshots sent, members {members:?}",
            sim.leaders.len(),
            state.applied,
            state.ledger.len(),
            dispatches,
            sim.crashes,
            sim.snapshots,
        );
    }
}
