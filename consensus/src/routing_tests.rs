use super::*;
use std::collections::BTreeMap;

const EPOCH: u64 = 7;
const NO_LIMIT: usize = usize::MAX;

/// What a follower holds: its jobs and the cursor of its last answer.
type Follower = (BTreeMap<Name, JobRecord>, Option<(u64, u64)>);

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn job(name: &str, state: JobState, nodes: &[&str], ts: f64) -> JobRecord {
    let mut r = JobRecord::state_only(name, state, ts);
    r.nodes = nodes.iter().map(|n| Name::from(*n)).collect();
    r.ranks = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (Name::from(*n), vec![i as u32]))
        .collect();
    r
}

fn running(name: &str, nodes: &[&str]) -> JobRecord {
    job(name, JobState::Running, nodes, 0.0)
}

fn size(r: &JobRecord) -> usize {
    r.job.len() + 64
}

/// A host's whole set, reassembled from pages as a correlator host does.
fn follow(
    r: &Routing,
    host: &str,
    held: &mut BTreeMap<Name, JobRecord>,
    at: &mut Option<(u64, u64)>,
    budget: usize,
) -> usize {
    let mut pages = 0;
    loop {
        let (epoch, since) = at.map_or((None, 0), |(e, v)| (Some(e), v));
        let d = r.assigned(host, epoch, since, budget, size);
        pages += 1;
        if d.reset {
            held.clear();
        }
        for j in &d.removed {
            held.remove(j);
        }
        for j in d.changed {
            held.insert(j.job.clone(), j);
        }
        *at = Some((d.epoch, d.version));
        if !d.more {
            return pages;
        }
    }
}

#[test]
fn pending_jobs_get_no_correlator_until_they_run() {
    let mut r = Routing::new(EPOCH);
    assert!(r.hello("corr-a", addr(1), 0.0));
    r.job(&job("j1", JobState::Pending, &["n1"], 0.0), 0.0);
    assert_eq!(r.jobs(), 0);
    assert_eq!(r.host_of("j1"), None);
    let d = r.assigned("corr-a", None, 0, NO_LIMIT, size);
    assert!(d.changed.is_empty(), "{d:?}");
    assert!(r.routes("n1", None, 0, NO_LIMIT, |_| 1).changed.is_empty());
    r.job(&running("j1", &["n1"]), 1.0);
    assert_eq!(r.host_of("j1"), Some("corr-a"));
    let d = r.assigned("corr-a", None, 0, NO_LIMIT, size);
    assert_eq!(d.changed.len(), 1);
    // Requeued: pending again, it leaves its host.
    let v = d.version;
    r.job(&job("j1", JobState::Pending, &["n1"], 2.0), 2.0);
    let d = r.assigned("corr-a", Some(EPOCH), v, NO_LIMIT, size);
    assert_eq!(d.removed, vec![Name::from("j1")]);
    assert!(d.changed.is_empty());
}

#[test]
fn ten_thousand_jobs_a_host_lost_only_its_jobs_move() {
    let mut r = Routing::new(EPOCH);
    let hosts = ["corr-a", "corr-b", "corr-c", "corr-d"];
    for (i, h) in hosts.iter().enumerate() {
        assert!(r.hello(h, addr(i as u16 + 1), 0.0));
    }
    for i in 0..10_000 {
        r.job(
            &running(&format!("job-{i}"), &[&format!("n{}", i % 500)]),
            0.0,
        );
    }
    let before: BTreeMap<String, String> = (0..10_000)
        .map(|i| {
            let j = format!("job-{i}");
            let h = r.host_of(&j).unwrap().to_string();
            (j, h)
        })
        .collect();
    // Every host follows its set; so does a sensor of one node.
    let mut held: BTreeMap<&str, Follower> = BTreeMap::new();
    for h in hosts {
        let (set, at) = held.entry(h).or_default();
        follow(&r, h, set, at, NO_LIMIT);
        let expected = before.values().filter(|x| *x == h).count();
        assert_eq!(set.len(), expected, "{h}");
        assert!(expected > 1_500, "{h}: {expected}");
    }
    let node_v = r.version();

    // corr-b stops greeting; the others go on.
    for t in 1..=3 {
        for (i, h) in hosts.iter().enumerate() {
            if *h != "corr-b" {
                r.hello(h, addr(i as u16 + 1), t as f64);
            }
        }
        r.expire(t as f64);
    }
    assert!(r.hosts().all(|h| h != "corr-b"));
    let mut moved = 0;
    for (j, was) in &before {
        let now = r.host_of(j).unwrap();
        if was == "corr-b" {
            moved += 1;
            assert_ne!(now, "corr-b");
        } else {
            assert_eq!(now, was, "{j} moved though its host stayed");
        }
    }
    assert!(moved > 1_500);
    // Each survivor's delta holds exactly the jobs it took over, and
    // removes nothing.
    for h in ["corr-a", "corr-c", "corr-d"] {
        let (set, at) = held.get_mut(h).unwrap();
        let before_len = set.len();
        let (e, v) = at.unwrap();
        let d = r.assigned(h, Some(e), v, NO_LIMIT, size);
        assert!(!d.reset);
        assert!(d.removed.is_empty(), "{h}: {:?}", d.removed.len());
        let took = before
            .iter()
            .filter(|(j, was)| *was == "corr-b" && r.host_of(j) == Some(h))
            .count();
        assert_eq!(d.changed.len(), took, "{h}");
        assert!(d.changed.iter().all(|j| before[j.job.as_str()] == "corr-b"));
        follow(&r, h, set, at, NO_LIMIT);
        assert_eq!(set.len(), before_len + took);
    }
    // A sensor's node sees its routes change only for jobs that moved;
    // nothing is removed from it.
    let d = r.routes("n0", Some(EPOCH), node_v, NO_LIMIT, |_| 1);
    assert!(d.removed.is_empty());
    let on_b = (0..10_000)
        .step_by(500)
        .filter(|i| before[&format!("job-{i}")] == "corr-b")
        .count();
    assert!(on_b > 0);
    assert_eq!(d.changed.len(), on_b);
    assert!(d
        .changed
        .iter()
        .all(|x| x.host.as_deref() != Some("corr-b")));
    // An unchanged version after that: empty.
    let again = r.routes("n0", Some(EPOCH), d.version, NO_LIMIT, |_| 1);
    assert!(again.changed.is_empty() && again.removed.is_empty());
}

#[test]
fn an_unchanged_version_gets_an_empty_answer() {
    let mut r = Routing::new(EPOCH);
    r.hello("corr-a", addr(1), 0.0);
    for i in 0..100 {
        r.job(&running(&format!("j{i}"), &["n1"]), 0.0);
    }
    let full = r.assigned("corr-a", None, 0, NO_LIMIT, size);
    assert!(full.reset);
    assert_eq!(full.changed.len(), 100);
    let again = r.assigned("corr-a", Some(full.epoch), full.version, NO_LIMIT, size);
    assert!(!again.reset && !again.more);
    assert!(again.changed.is_empty() && again.removed.is_empty());
    assert_eq!(again.version, full.version);
    // Greetings and unchanged records change nothing either.
    r.hello("corr-a", addr(1), 1.0);
    r.job(&running("j1", &["n1"]), 1.0);
    let routes = r.routes("n1", None, 0, NO_LIMIT, |_| 1);
    let still = r.routes("n1", Some(EPOCH), routes.version, NO_LIMIT, |_| 1);
    assert!(still.changed.is_empty() && still.removed.is_empty());
    // Another epoch (a restarted replica) is answered with everything.
    let other = r.assigned("corr-a", Some(EPOCH + 1), full.version, NO_LIMIT, size);
    assert!(other.reset);
    assert_eq!(other.changed.len(), 100);
}

#[test]
fn answers_are_paged_within_the_budget_and_add_up() {
    let mut r = Routing::new(EPOCH);
    r.hello("corr-a", addr(1), 0.0);
    for i in 0..5_000 {
        r.job(&running(&format!("j{i}"), &["n1"]), 0.0);
    }
    let budget = 64 * 1024;
    let first = r.assigned("corr-a", None, 0, budget, size);
    assert!(first.more);
    let bytes: usize = first.changed.iter().map(size).sum();
    assert!(bytes <= budget + size(&first.changed[0]), "{bytes}");
    let mut held = BTreeMap::new();
    let mut at = None;
    let pages = follow(&r, "corr-a", &mut held, &mut at, budget);
    assert!(pages > 3, "{pages}");
    assert_eq!(held.len(), 5_000);
    // Changes between pages are not lost: end some jobs, follow again.
    for i in 0..10 {
        r.job(
            &job(&format!("j{i}"), JobState::Completed, &["n1"], 0.0),
            5.0,
        );
    }
    r.hello("corr-a", addr(1), 5.0 + LINGER_S);
    r.expire(5.0 + LINGER_S);
    follow(&r, "corr-a", &mut held, &mut at, budget);
    assert_eq!(held.len(), 4_990);
}

#[test]
fn an_ended_job_lingers_then_leaves() {
    let mut r = Routing::new(EPOCH);
    r.hello("corr-a", addr(1), 0.0);
    r.job(&running("j1", &["n1"]), 0.0);
    let d = r.routes("n1", None, 0, NO_LIMIT, |_| 1);
    assert!(!d.changed[0].ended);
    r.job(&job("j1", JobState::Completed, &["n1"], 10.0), 10.0);
    r.hello("corr-a", addr(1), 10.0 + LINGER_S - 1.0);
    r.expire(10.0 + LINGER_S - 1.0);
    let d2 = r.routes("n1", Some(EPOCH), d.version, NO_LIMIT, |_| 1);
    assert_eq!(d2.changed.len(), 1);
    assert!(d2.changed[0].ended);
    assert_eq!(d2.changed[0].host.as_deref(), Some("corr-a"));
    r.hello("corr-a", addr(1), 10.0 + LINGER_S);
    r.expire(10.0 + LINGER_S);
    assert_eq!(r.jobs(), 0);
    let d3 = r.routes("n1", Some(EPOCH), d2.version, NO_LIMIT, |_| 1);
    assert_eq!(d3.removed, vec![Name::from("j1")]);
    // An end seen only after a restart lingers for what is left.
    let mut fresh = Routing::new(EPOCH + 1);
    fresh.hello("corr-a", addr(1), 100.0);
    let ended = job("j2", JobState::Failed, &["n1"], 50.0);
    let never_ran = job("j3", JobState::Cancelled, &[], 99.0);
    let long_ago = job("j4", JobState::Completed, &["n1"], 100.0 - LINGER_S - 1.0);
    fresh.resync([&ended, &never_ran, &long_ago], 100.0);
    assert_eq!(fresh.host_of("j2"), Some("corr-a"));
    assert_eq!(fresh.jobs(), 1);
    fresh.hello("corr-a", addr(1), 50.0 + LINGER_S);
    fresh.expire(50.0 + LINGER_S);
    assert_eq!(fresh.jobs(), 0);
}

#[test]
fn a_job_that_leaves_a_node_is_removed_from_its_routes() {
    let mut r = Routing::new(EPOCH);
    r.hello("corr-a", addr(1), 0.0);
    r.job(&running("j1", &["n1", "n2"]), 0.0);
    let v = r.version();
    r.job(&running("j1", &["n2"]), 1.0);
    let d = r.routes("n1", Some(EPOCH), v, NO_LIMIT, |_| 1);
    assert_eq!(d.removed, vec![Name::from("j1")]);
    assert!(d.changed.is_empty());
    let d = r.routes("n2", Some(EPOCH), v, NO_LIMIT, |_| 1);
    assert_eq!(d.changed.len(), 1);
    assert!(d.removed.is_empty());
}

#[test]
fn no_host_then_one_takes_every_job() {
    let mut r = Routing::new(EPOCH);
    for i in 0..50 {
        r.job(&running(&format!("j{i}"), &["n1"]), 0.0);
    }
    assert!(r.all_routes().iter().all(|x| x.host.is_none()));
    r.hello("corr-a", addr(9), 0.0);
    let all = r.all_routes();
    assert_eq!(all.len(), 50);
    assert!(all
        .iter()
        .all(|x| x.host.as_deref() == Some("corr-a") && x.addr == Some(addr(9))));
    // Losing it leaves them unassigned again, and tells the host.
    let v = r.version();
    r.expire(HOST_TTL_S);
    assert!(r.all_routes().iter().all(|x| x.host.is_none()));
    let d = r.assigned("corr-a", Some(EPOCH), v, NO_LIMIT, size);
    assert_eq!(d.removed.len(), 50);
}

#[test]
fn a_version_older_than_the_removals_kept_gets_everything() {
    let mut r = Routing::new(EPOCH);
    r.max_removals = 10;
    r.hello("corr-a", addr(1), 0.0);
    r.job(&running("keep", &["n1"]), 0.0);
    let v = r.version();
    for i in 0..20 {
        let name = format!("j{i}");
        r.job(&running(&name, &["n1"]), 0.0);
        r.job(&job(&name, JobState::Pending, &["n1"], 0.0), 0.0);
    }
    let d = r.assigned("corr-a", Some(EPOCH), v, NO_LIMIT, size);
    assert!(d.reset);
    assert_eq!(d.changed.len(), 1);
    assert!(d.removed.is_empty());
}

#[test]
fn too_many_hosts_are_refused_and_counted() {
    let mut r = Routing::new(EPOCH);
    for i in 0..MAX_HOSTS {
        assert!(r.hello(&format!("h{i}"), addr(1), 0.0));
    }
    assert!(!r.hello("one-more", addr(1), 0.0));
    assert_eq!(r.hosts_refused, 1);
    assert!(r.hello("h0", addr(1), 1.0));
}

#[test]
fn a_nodes_routes_carry_the_job_cut_to_that_node() {
    let mut r = Routing::new(EPOCH);
    let mut rec = running("j1", &["n1", "n2"]);
    rec.ranks = [("n1".into(), vec![0, 1]), ("n2".into(), vec![2])].into();
    rec.gpus = [(0, 0), (1, 3), (2, 0)].into();
    rec.node_gpus = [("n1".into(), vec![0, 3]), ("n2".into(), vec![0])].into();
    r.job(&rec, 1.0);
    let d = r.routes("n1", None, 0, NO_LIMIT, |_| 1);
    let cut = d.changed[0]
        .record
        .clone()
        .expect("a node's route carries the record");
    assert_eq!(cut.job, rec.job);
    assert_eq!(cut.state, JobState::Running);
    assert_eq!(
        cut.ranks.keys().map(|n| n.as_str()).collect::<Vec<_>>(),
        ["n1"]
    );
    assert_eq!(cut.gpus, [(0, 0), (1, 3)].into());
    assert_eq!(
        cut.node_gpus.keys().map(|n| n.as_str()).collect::<Vec<_>>(),
        ["n1"]
    );
    // Its end reaches the node with the placement kept.
    r.job(&job("j1", JobState::Failed, &[], 5.0), 5.0);
    let d2 = r.routes("n1", Some(EPOCH), d.version, NO_LIMIT, |_| 1);
    let ended = d2.changed[0].record.clone().unwrap();
    assert_eq!(ended.state, JobState::Failed);
    assert_eq!(ended.node_gpus["n1"], vec![0, 3]);
    // `keel routes` (no node) carries none.
    assert!(r.all_routes()[0].record.is_none());
}
