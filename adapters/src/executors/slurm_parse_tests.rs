use super::*;

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
    assert_eq!(r.gpus[&3], 1);
    assert!(jobs[0].to_record(5.0, 0).ranks.is_empty());
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
    assert_eq!(job_state("CANCELLED"), JobState::Cancelled);
    assert_eq!(job_state("COMPLETING"), JobState::Completing);
    assert_eq!(job_state("REQUEUE_HOLD"), JobState::Pending);
    assert_eq!(job_state("SPECIAL_EXIT"), JobState::Other);
    assert!(job_state("BOOT_FAIL").is_finished());
}
