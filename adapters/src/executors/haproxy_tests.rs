use super::*;

#[test]
fn weights_and_states_are_read() {
    assert_eq!(
        parse_weight("5 (initial 10)\n\n").unwrap(),
        Weight {
            current: 5,
            initial: 10
        }
    );
    assert!(parse_weight("No such server.\n").is_err());
    let text = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change\n3 be 1 s1 127.0.0.1 2 8 5 10 0\n3 be 2 s2 127.0.0.1 2 0 20 20 1\n\n";
    let s1 = parse_servers_state(text, "be", "s1").unwrap().unwrap();
    assert_eq!(
        (s1.admin(), s1.uweight, s1.iweight),
        (AdminState::Drain, 5, 10)
    );
    assert_eq!(
        parse_servers_state(text, "be", "s2")
            .unwrap()
            .unwrap()
            .admin(),
        AdminState::Ready
    );
    assert_eq!(parse_servers_state(text, "be", "s3").unwrap(), None);
    assert_eq!(AdminState::from_bits(0x01), AdminState::Maint);
}

#[test]
fn show_stat_is_read_by_header() {
    let text = "# pxname,svname,qcur,status,weight,check_desc\nfe,FRONTEND,,OPEN,,\nbe,s1,0,DRAIN,5,\"Layer4, ok\"\nbe,s2,0,no check,20,\n\n";
    let rows = parse_show_stat(text).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        (
            rows[1].server.as_str(),
            rows[1].status.as_str(),
            rows[1].weight
        ),
        ("s1", "DRAIN", Some(5))
    );
    assert_eq!(rows[1].fields["check_desc"], "Layer4, ok");
    assert_eq!(rows[0].weight, None);
    assert!(parse_show_stat("Unknown command\n").is_err());
}

#[test]
fn targets_and_parameters_are_checked_before_any_socket() {
    let mut e = HaproxyExecutor::new("/nonexistent/haproxy.sock", Journal::in_memory());
    let cases = [
        (
            ExecCommand::new(Action::RemapRequests, "be/s1;shutdown", "k").param("weight", "1"),
            "server",
        ),
        (
            ExecCommand::new(Action::RemapRequests, "be x/s1", "k").param("weight", "1"),
            "backend",
        ),
        (
            ExecCommand::new(Action::RemapRequests, "s1", "k").param("weight", "1"),
            "target",
        ),
        (
            ExecCommand::new(Action::RemapRequests, "be/s1", "k").param("weight", "300"),
            "weight",
        ),
        (
            ExecCommand::new(Action::RemapRequests, "be/s1", "k").param("weight", "150%"),
            "weight",
        ),
        (
            ExecCommand::new(Action::RemapRequests, "be/s1", "k").param("state", "up"),
            "state",
        ),
        (
            ExecCommand::new(Action::RemapRequests, "be/s1", "k"),
            "params",
        ),
    ];
    for (cmd, field) in cases {
        match e.apply(&cmd) {
            Err(ExecError::Invalid { field: f, .. }) => assert_eq!(f, field, "{cmd:?}"),
            other => panic!("{cmd:?}: {other:?}"),
        }
    }
    let err = e
        .apply(&ExecCommand::new(Action::RemapRequests, "be/s1", "k").param("weight", "1"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("level admin"), "{err}");
}
