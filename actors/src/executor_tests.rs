//! Target and parameter translation: what each system is asked.

use super::*;

fn cmd(action: Action, target: &str, params: &[(&str, &str)]) -> Command {
    Command {
        id: 1,
        action,
        target: target.into(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        idempotency_key: "k".into(),
        rollback: false,
    }
}

#[test]
fn policy_targets_become_what_each_system_calls_them() {
    let c = translate(&Kind::Slurm, &cmd(Action::ReclaimZombie, "job/4242", &[])).unwrap();
    assert_eq!(c.target, "4242");
    let c = translate(
        &Kind::Slurm,
        &cmd(
            Action::RebalanceRanks,
            "job/7",
            &[("exclude", "n3"), ("rank", "5")],
        ),
    )
    .unwrap();
    assert_eq!((c.target.as_str(), c.params["node"].as_str()), ("7", "n3"));
    assert!(!c.params.contains_key("rank"));
    let replicas = Kind::Haproxy(BTreeMap::from([("j1".into(), "llm/a".into())]));
    let c = translate(
        &replicas,
        &cmd(Action::RemapRequests, "job/j1", &[("share", "0.5")]),
    )
    .unwrap();
    assert_eq!(
        (c.target.as_str(), c.params["weight"].as_str()),
        ("llm/a", "50%")
    );
    let c = translate(
        &Kind::Nic,
        &cmd(Action::RetuneNic, "node/n1/eth0", &[("channels", "8")]),
    )
    .unwrap();
    assert_eq!(
        (c.target.as_str(), c.params["combined"].as_str()),
        ("eth0", "8")
    );
}

#[test]
fn what_a_system_cannot_do_is_refused_with_the_reason() {
    let unknown = Kind::Haproxy(BTreeMap::new());
    let e = translate(
        &unknown,
        &cmd(Action::RemapRequests, "job/j9", &[("weight", "3")]),
    );
    assert!(e.unwrap_err().to_string().contains("[haproxy.replicas]"));
    let e = translate(
        &Kind::Slurm,
        &cmd(Action::ReclaimZombie, "job/1", &[("signal", "KILL")]),
    );
    assert!(e.unwrap_err().to_string().contains("scancel"));
    let e = translate(&Kind::Slurm, &cmd(Action::DrainNode, "link/a/b", &[]));
    assert!(e.is_err());
}
