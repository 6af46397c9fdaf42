use super::*;
use std::collections::BTreeMap;

/// `squeue --json` of Slurm 22.05.8 (openapi/v0.0.38), fields trimmed.
const SQUEUE_22_05: &str = r#"{"meta": {"plugin": {"type": "openapi/v0.0.38", "name": "Slurm OpenAPI v0.0.38"}, "Slurm": {"version": {"major": 22, "micro": 8, "minor": 5}, "release": "22.05.8"}}, "errors": [], "jobs": [
 {"account": "", "job_id": 1, "job_state": "RUNNING", "nodes": "vm", "user_name": "root", "user_id": 0, "partition": "debug", "name": "wrap", "excluded_nodes": "", "state_reason": "None", "node_count": 1, "array_job_id": 0, "array_task_id": null},
 {"account": "ml", "job_id": 7, "job_state": "PENDING", "nodes": "", "user_name": "ann", "partition": "gpu", "name": "train", "excluded_nodes": "gpu[03-04]", "state_reason": "Resources"}]}"#;

/// The later shape (v0.0.39+): states are lists, numbers are objects.
const SQUEUE_23_11: &str = r#"{"jobs": [{"job_id": {"set": true, "infinite": false, "number": 42}, "job_state": ["RUNNING", "COMPLETING"], "nodes": "gpu[01-02]", "user_name": "bob", "account": "", "partition": "gpu", "name": "serve"}], "meta": {}, "errors": [], "warnings": []}"#;

#[test]
fn squeue_22_05_json_is_read() {
    let jobs = parse_squeue_json(SQUEUE_22_05).unwrap();
    assert_eq!(jobs.len(), 2);
    let j = &jobs[0];
    assert_eq!(
        (
            j.job_id,
            j.state.as_str(),
            j.user.as_str(),
            j.partition.as_str()
        ),
        (1, "RUNNING", "root", "debug")
    );
    assert_eq!(j.nodes, ["vm"]);
    assert_eq!(j.job_state(), JobState::Running);
    assert_eq!(jobs[1].excluded_nodes, ["gpu03", "gpu04"]);
    assert_eq!(jobs[1].job_state(), JobState::Pending);
}

#[test]
fn later_squeue_json_is_read_too() {
    let jobs = parse_squeue_json(SQUEUE_23_11).unwrap();
    assert_eq!(jobs[0].job_id, 42);
    assert_eq!(jobs[0].state, "RUNNING");
    assert_eq!(jobs[0].nodes, ["gpu01", "gpu02"]);
}

#[test]
fn a_changed_format_is_an_error_not_an_empty_queue() {
    assert!(parse_squeue_json("{}").is_err());
    assert!(parse_squeue_json(r#"{"jobs": [{"id": 3}]}"#).is_err());
    assert!(parse_squeue_json("not json").is_err());
    assert_eq!(parse_squeue_json(r#"{"jobs": []}"#).unwrap(), vec![]);
}

#[test]
fn a_job_becomes_a_job_record() {
    let jobs = parse_squeue_json(SQUEUE_23_11).unwrap();
    let r = jobs[0].to_record(5.0, 2);
    assert_eq!(r.job, "42");
    assert_eq!(r.state, JobState::Running);
    assert_eq!(r.tenant.as_deref(), Some("bob"));
    assert_eq!(r.nodes, ["gpu01", "gpu02"]);
    assert_eq!(r.ranks[&Name::from("gpu02")], vec![2, 3]);
    // Slurm named no GPU: the rank guess stays in `gpus`, never in node_gpus.
    assert_eq!(r.gpus[&3], 1);
    assert!(r.node_gpus.is_empty());
    assert!(jobs[0].to_record(5.0, 0).ranks.is_empty());
}

#[test]
fn allocated_gpus_reach_the_record() {
    let text = "JobId=5 JobName=s UserId=u(1) Account=a JobState=RUNNING Reason=None ExcNodeList=(null) NodeList=g[1-2] Partition=p Nodes=g1 CPU_IDs=0 Mem=0 GRES=gpu:2(IDX:4,6) Nodes=g2 CPU_IDs=0 Mem=0 GRES=gpu:2(IDX:0-1)\n";
    let j = &parse_scontrol_jobs(text).unwrap()[0];
    let r = j.to_record(1.0, 2);
    assert_eq!(r.node_gpus[&Name::from("g1")], vec![4, 6]);
    assert_eq!(r.node_gpus[&Name::from("g2")], vec![0, 1]);
    // Rank i on a node runs on its i-th allocated GPU.
    assert_eq!((r.gpus[&0], r.gpus[&1], r.gpus[&2]), (4, 6, 0));
}

#[test]
fn scontrol_job_lines_are_read() {
    let line = "JobId=1 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901759 Account=(null) QOS=(null) JobState=RUNNING Reason=None Dependency=(null) Requeue=1 AllocNode:Sid=localhost:22767 ReqNodeList=(null) ExcNodeList=(null) NodeList=vm BatchHost=vm NumNodes=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,node=1,billing=1 Partition=debug Power=";
    let jobs = parse_scontrol_jobs(line).unwrap();
    assert_eq!(jobs.len(), 1);
    let j = &jobs[0];
    assert_eq!(
        (
            j.job_id,
            j.name.as_str(),
            j.user.as_str(),
            j.account.as_str()
        ),
        (1, "wrap", "root", "")
    );
    assert_eq!(
        (j.state.as_str(), j.nodes.clone()),
        ("RUNNING", vec!["vm".to_string()])
    );
    assert!(j.excluded_nodes.is_empty());
    let kv = parse_kv(line);
    assert_eq!(kv["TRES"], "cpu=1,node=1,billing=1");
    assert_eq!(kv["Power"], "");
    assert!(parse_scontrol_jobs("No jobs in the system\n")
        .unwrap()
        .is_empty());
}

#[test]
fn values_with_spaces_stay_whole() {
    let line = "NodeName=vm Arch=x86_64 CoresPerSocket=1  CPUAlloc=0 OS=Linux 6.1.0 #1 SMP PREEMPT_DYNAMIC @0  RealMemory=21695 State=IDLE+DRAIN ThreadsPerCore=1 ExtSensorsTemp=n/s Reason=keel: tp straggler on vm [root@2026-11-23T14:06:08]";
    let n = parse_scontrol_node(line).unwrap();
    assert_eq!(n.name, "vm");
    assert_eq!(n.state, "IDLE+DRAIN");
    assert!(n.is_drained() && !n.is_down());
    assert_eq!(n.reason, "keel: tp straggler on vm");
    assert_eq!(
        parse_kv(line)["OS"],
        "Linux 6.1.0 #1 SMP PREEMPT_DYNAMIC @0"
    );
    let idle = parse_scontrol_node("NodeName=a State=IDLE Reason=(null)").unwrap();
    assert!(!idle.is_drained());
    assert_eq!(idle.reason, "");
    assert!(parse_scontrol_node("DOWN+DRAIN").is_err());
}

#[test]
fn hostlists_expand_like_slurm() {
    assert_eq!(expand_hostlist("").unwrap(), Vec::<String>::new());
    assert_eq!(expand_hostlist("vm").unwrap(), ["vm"]);
    assert_eq!(
        expand_hostlist("gpu[01-03,10],cpu-a").unwrap(),
        ["gpu01", "gpu02", "gpu03", "gpu10", "cpu-a"]
    );
    assert_eq!(
        expand_hostlist("r[1-2]-n[8-9]").unwrap(),
        ["r1-n8", "r1-n9", "r2-n8", "r2-n9"]
    );
    assert_eq!(
        expand_hostlist("n[098-100]").unwrap(),
        ["n098", "n099", "n100"]
    );
    for bad in ["n[1-", "n]1", "n[a-b]", "n[3-1]", "n[1-99999999]"] {
        assert!(expand_hostlist(bad).is_err(), "{bad}");
    }
}

#[test]
fn slurm_states_map_onto_keel_states() {
    let s = |n| known_job_state(n).unwrap();
    assert_eq!(s("CANCELLED"), JobState::Cancelled);
    assert_eq!(s("COMPLETING"), JobState::Completing);
    assert_eq!(s("REQUEUE_HOLD"), JobState::Pending);
    assert_eq!(s("SPECIAL_EXIT"), JobState::Pending);
    assert_eq!(s("STAGE_OUT"), JobState::Completing);
    assert!(s("BOOT_FAIL").is_finished());
    assert_eq!(known_job_state("REVOKED"), None);
}

#[test]
fn a_state_that_cannot_be_read_is_an_error_naming_job_and_field() {
    let cases = [
        (
            r#"{"jobs": [{"job_id": 9, "job_state": "WEIRD"}]}"#,
            "\"WEIRD\"",
        ),
        (r#"{"jobs": [{"job_id": 9}]}"#, "no job_state"),
        (
            r#"{"jobs": [{"job_id": 9, "job_state": null}]}"#,
            "no job_state",
        ),
        (
            r#"{"jobs": [{"job_id": 9, "job_state": []}]}"#,
            "empty list",
        ),
        (
            r#"{"jobs": [{"job_id": 9, "job_state": ["NEW_THING"]}]}"#,
            "NEW_THING",
        ),
        (r#"{"jobs": [{"job_id": 9, "job_state": 3}]}"#, "neither"),
    ];
    for (doc, says) in cases {
        let e = parse_squeue_json(doc).unwrap_err().to_string();
        assert!(
            e.contains("job 9") && e.contains("job_state") && e.contains(says),
            "{doc}: {e}"
        );
    }
    for text in [
        "JobId=9 JobState=REVOKED NodeList=(null)",
        "JobId=9 NodeList=(null)",
    ] {
        let e = parse_scontrol_jobs(text).unwrap_err().to_string();
        assert!(e.contains("job 9") && e.contains("JobState"), "{text}: {e}");
    }
}

/// The folder of real outputs (`shared/data/wild`, beside the repository).
fn wild(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/wild")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// (id, state, nodes, GPUs: Some(node -> indices) when known).
type Expect<'a> = (
    u64,
    &'a str,
    &'a [&'a str],
    Option<&'a [(&'a str, &'a [u32])]>,
);

fn check(jobs: &[SlurmJob], expect: &[Expect]) {
    assert_eq!(jobs.len(), expect.len(), "{jobs:?}");
    for (j, (id, state, nodes, gpus)) in jobs.iter().zip(expect) {
        assert_eq!((j.job_id, j.state.as_str()), (*id, *state), "{j:?}");
        assert_eq!(j.nodes, *nodes, "job {id}");
        assert_ne!(j.job_state(), JobState::Other, "job {id}");
        match (gpus, &j.gpus) {
            (Some(want), Gpus::Known(m)) => {
                let want: BTreeMap<String, Vec<u32>> = want
                    .iter()
                    .map(|(n, g)| (n.to_string(), g.to_vec()))
                    .collect();
                assert_eq!(m, &want, "job {id}");
            }
            (None, Gpus::Unknown(_)) => {}
            (w, got) => panic!("job {id}: want {w:?}, got {got:?}"),
        }
    }
}

const NONE: &[(&str, &[u32])] = &[];

#[test]
fn fixture_03_slurm_23_11_squeue_json() {
    let jobs = parse_squeue_json(&wild("03-slurm-23.11-jobs/squeue.json")).unwrap();
    let u = None; // gres_detail is empty: which GPUs is unknown
    check(
        &jobs,
        &[
            (776, "TIMEOUT", &["cn1"], u),
            (777, "COMPLETED", &["cn1"], u),
            (778, "FAILED", &["cn1"], u),
            (779, "RUNNING", &["cn1"], u),
            (780, "COMPLETED", &["cn1"], u),
            (781, "COMPLETED", &["cn4"], u),
            (782, "RUNNING", &["cn1"], u),
            (783, "RUNNING", &["cn1"], u),
            (784, "RUNNING", &["cn4"], u),
            (785, "COMPLETED", &["cn1"], u),
            (786, "COMPLETED", &["cn1"], u),
            (787, "PENDING", &[], Some(NONE)),
            (788, "RUNNING", &["cn1"], u),
            (789, "PENDING", &[], Some(NONE)),
        ],
    );
    assert_eq!(jobs[0].reason, "TimeLimit");
}

#[test]
fn fixture_04_slurm_24_05_scontrol_json() {
    let jobs = parse_squeue_json(&wild("04-slurm-24.05-job-timeout/scontrol-job.json")).unwrap();
    check(&jobs, &[(649717, "TIMEOUT", &["cn001"], None)]);
    assert!(jobs[0].job_state().is_finished());
}

#[test]
fn fixture_06_slurm_24_11_scontrol_json() {
    let jobs = parse_squeue_json(&wild("06-slurm-24.11-job-failed/scontrol-job.json")).unwrap();
    check(&jobs, &[(6359, "FAILED", &["cn1"], None)]);
    assert_eq!(jobs[0].job_state(), JobState::Failed);
}

#[test]
fn fixture_07_slurm_21_08_squeue_mixed() {
    let jobs = parse_squeue_json(&wild("07-slurm-21.08-squeue-mixed/squeue.json")).unwrap();
    check(
        &jobs,
        &[
            (26515966, "RUNNING", &["gpu-node-01"], None),
            (58948420, "PENDING", &[], Some(NONE)),
        ],
    );
}

#[test]
fn fixture_24_scontrol_show_job_text_with_gres_indices() {
    let jobs = parse_scontrol_jobs(&wild(
        "24-slurm-scontrol-show-job-multi/scontrol-show-job.txt",
    ))
    .unwrap();
    check(
        &jobs,
        &[
            (
                1,
                "RUNNING",
                &["node-63", "node-64", "node-65"],
                Some(&[("node-63", &[]), ("node-64", &[]), ("node-65", &[])]),
            ),
            (
                2398617,
                "COMPLETED",
                &["node-44"],
                Some(&[("node-44", &[])]),
            ),
            (
                153291,
                "RUNNING",
                &["node-06"],
                Some(&[("node-06", &[0, 2, 3, 5])]),
            ),
            (134238037, "PENDING", &[], Some(NONE)),
            (
                2423559,
                "RUNNING",
                &["gpu-node-08"],
                Some(&[("gpu-node-08", &[5])]),
            ),
            (20547, "PENDING", &[], Some(NONE)),
            (1306093, "RUNNING", &["node-12"], Some(&[("node-12", &[])])),
            (
                25686416,
                "RUNNING",
                &["node-005"],
                Some(&[("node-005", &[3])]),
            ),
            (
                25687666,
                "RUNNING",
                &["node-001"],
                Some(&[("node-001", &[1])]),
            ),
        ],
    );
    assert_eq!(jobs[3].reason, "AssocGrpCpuLimit");
    assert_eq!(
        (jobs[2].user.as_str(), jobs[2].account.as_str()),
        ("user3", "account3")
    );
    let r = jobs[2].to_record(0.0, 4);
    assert_eq!(r.node_gpus[&Name::from("node-06")], vec![0, 2, 3, 5]);
    assert_eq!(r.gpus[&1], 2);
}

#[test]
fn scontrol_text_without_detail_leaves_gpus_unknown() {
    let jobs = parse_scontrol_jobs(&job_line_text()).unwrap();
    assert!(
        matches!(&jobs[0].gpus, Gpus::Unknown(w) if w.contains("-d")),
        "{jobs:?}"
    );
    // A detail line that misses one of the job's nodes: unknown too.
    let t = "JobId=3 JobState=RUNNING NodeList=a,b Nodes=a CPU_IDs=0 Mem=0 GRES=gpu:1(IDX:0)";
    let j = &parse_scontrol_jobs(t).unwrap()[0];
    assert!(
        matches!(&j.gpus, Gpus::Unknown(w) if w.contains("b: no detail")),
        "{j:?}"
    );
    let t = "JobId=3 JobState=RUNNING NodeList=a Nodes=a CPU_IDs=0 Mem=0 GRES=gpu:2(CNT:2)";
    let j = &parse_scontrol_jobs(t).unwrap()[0];
    assert!(
        matches!(&j.gpus, Gpus::Unknown(w) if w.contains("IDX")),
        "{j:?}"
    );
}

fn job_line_text() -> String {
    "JobId=1 JobName=wrap UserId=root(0) JobState=RUNNING NodeList=vm Partition=debug\n".into()
}

#[test]
fn json_gres_detail_is_read_per_node() {
    let doc = r#"{"jobs": [{"job_id": 4, "job_state": ["RUNNING"], "nodes": "g[1-2]", "gres_detail": ["gpu:a100:2(IDX:0,2)", "gpu:a100:1(IDX:7)"]}]}"#;
    let j = &parse_squeue_json(doc).unwrap()[0];
    assert_eq!(j.gpus.on("g1"), Ok(Some(&[0u32, 2][..])));
    assert_eq!(j.gpus.on("g2"), Ok(Some(&[7u32][..])));
    assert_eq!(j.gpus.on("g3"), Ok(None));
}
