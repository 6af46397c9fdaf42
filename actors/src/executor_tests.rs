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

#[test]
fn a_gpu_target_of_this_node_becomes_its_index_and_another_nodes_is_refused() {
    let gpu = Kind::Gpu(vec!["n1".into()]);
    let c = translate(
        &gpu,
        &cmd(
            Action::ReclaimZombie,
            "node/n1/gpu/3",
            &[("job", "77"), ("signal", "TERM")],
        ),
    )
    .unwrap();
    assert_eq!(c.target, "3");
    assert_eq!(
        (
            c.params["node"].as_str(),
            c.params["gpu"].as_str(),
            c.params["job"].as_str()
        ),
        ("n1", "3", "77")
    );
    assert!(!c.params.contains_key("signal"));
    let e = translate(&gpu, &cmd(Action::ReclaimZombie, "node/n2/gpu/3", &[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("node n2 is not this executor's"), "{e}");
    for (target, params) in [
        ("node/n1/gpu/3", &[("gpu", "4")][..]),
        ("node/n1/gpu/3", &[("node", "n2")][..]),
        ("node/n1/gpu/3", &[("signal", "KILL")][..]),
        ("job/77", &[][..]),
        ("node/n1/eth0", &[][..]),
    ] {
        assert!(
            translate(&gpu, &cmd(Action::ReclaimZombie, target, params)).is_err(),
            "{target} {params:?}"
        );
    }
    // A Slurm section does not take a GPU target.
    assert!(translate(
        &Kind::Slurm,
        &cmd(Action::ReclaimZombie, "node/n1/gpu/3", &[])
    )
    .is_err());
}

#[test]
fn each_target_form_goes_to_the_section_that_takes_it() {
    let gpu = Kind::Gpu(vec!["n1".into()]);
    assert!(gpu.accepts("node/n1/gpu/0") && !gpu.accepts("job/7") && !gpu.accepts("node/n1"));
    assert!(Kind::Slurm.accepts("job/7") && Kind::Slurm.accepts("node/n1"));
    assert!(!Kind::Slurm.accepts("node/n1/gpu/0"));
    assert!(Kind::Nic.accepts("node/n1/eth0") && !Kind::Nic.accepts("node/n1/gpu/0"));
    assert!(Kind::AsIs.accepts("node/n1/gpu/0"));
}

fn config(top: &str, sections: &str) -> ExecutorConfig {
    toml::from_str(&format!(
        "credentials = \"/x\"\n{top}\n[[controllers]]\nname = \"c1\"\naddr = \"127.0.0.1:1\"\n{sections}"
    ))
    .unwrap()
}

#[test]
fn the_gpu_section_acts_on_named_nodes_only_and_has_defaults() {
    let e = config("", "[gpu]\n").check().unwrap_err().to_string();
    assert!(e.contains("[gpu] acts on this node only"), "{e}");
    let cfg = config("nodes = [\"n1\"]", "[gpu]\ngrace_s = 3\n");
    cfg.check().unwrap();
    let g = cfg.gpu.unwrap();
    assert_eq!(
        (g.nvidia_smi.as_str(), g.grace_s, g.scontrol.as_str()),
        ("nvidia-smi", 3, "scontrol")
    );
    assert!(toml::from_str::<ExecutorConfig>("credentials = \"/x\"\n[gpu]\ngrace = 3\n").is_err());
}

#[test]
fn a_reclaim_goes_to_slurm_for_a_job_and_to_the_gpu_section_for_a_gpu() {
    let slots = vec![
        Slot {
            exec: Box::new(SlurmExecutor::new(Journal::in_memory())),
            kind: Kind::Slurm,
        },
        Slot {
            exec: Box::new(GpuProcessExecutor::new(Journal::in_memory())),
            kind: Kind::Gpu(vec!["n1".into()]),
        },
    ];
    let at = |target: &str| pick(&slots, Action::ReclaimZombie, target);
    assert_eq!(at("job/7"), Some(0));
    assert_eq!(at("node/n1/gpu/0"), Some(1));
    // No section takes that form: the first that carries the action out
    // refuses it, saying why.
    assert_eq!(at("link/a/b"), Some(0));
    assert_eq!(pick(&slots[1..], Action::ReclaimZombie, "job/7"), Some(0));
    assert_eq!(pick(&slots, Action::RetuneNic, "node/n1/eth0"), None);
    assert_eq!(pick(&slots, Action::DrainNode, "node/n1"), Some(0));
}

#[test]
fn a_chaos_section_takes_inject_fault_on_the_nodes_it_opens() {
    let cfg = config(
        "",
        "[chaos]\nmax_s = 120\n[chaos.nodes.n2]\ncgroup = \"/sys/fs/cgroup/n2\"\nlink = \"eth1\"\n",
    );
    cfg.check().unwrap();
    let c = cfg.chaos.as_ref().unwrap();
    assert_eq!(c.nodes["n2"].link.as_deref(), Some("eth1"));
    assert_eq!(c.host_cpu_share, 0.1);
    let e = config("", "[chaos]\nmax_s = 900\n").check().unwrap_err();
    assert!(e.to_string().contains("max_s"), "{e}");
    let slots = slots(&cfg).unwrap();
    assert_eq!(pick(&slots, Action::InjectFault, "node/n2"), Some(0));
    assert!(Kind::Chaos.accepts("node/n2") && !Kind::Chaos.accepts("job/7"));
    let c = translate(
        &Kind::Chaos,
        &cmd(Action::InjectFault, "node/n2", &[("cause", "host")]),
    )
    .unwrap();
    assert_eq!(c.target, "node/n2");
}
