use super::*;
use crate::executors::run::Scripted;

/// `ethtool -g` of a virtio_net device (ethtool 6.1).
const RINGS: &str = "Ring parameters for eth0:\nPre-set maximums:\nRX:\t\t1024\nRX Mini:\tn/a\nRX Jumbo:\tn/a\nTX:\t\t1024\nCurrent hardware settings:\nRX:\t\t256\nRX Mini:\tn/a\nRX Jumbo:\tn/a\nTX:\t\t256\nRX Buf Len:\t\tn/a\nCQE Size:\t\tn/a\nTX Push:\toff\nTCP data split:\tn/a\n";
/// `ethtool -l` of a veth on a 2-CPU machine.
const VETH_CHANNELS: &str = "Channel parameters for kv0:\nPre-set maximums:\nRX:\t\t2\nTX:\t\t2\nOther:\t\tn/a\nCombined:\tn/a\nCurrent hardware settings:\nRX:\t\t1\nTX:\t\t1\nOther:\t\tn/a\nCombined:\tn/a\n";
const COALESCE: &str = "Coalesce parameters for eth0:\nAdaptive RX: off  TX: n/a\nstats-block-usecs: n/a\n\nrx-usecs: 0\nrx-frames: 1\nrx-usecs-irq: n/a\n\ntx-usecs: 8\ntx-frames: 1\n";
const UNSUPPORTED: &str = "netlink error: Operation not supported\n";

fn exec() -> NicExecutor<Scripted> {
    NicExecutor::with_runner(Scripted::default(), Journal::in_memory())
}

fn ran(e: &NicExecutor<Scripted>) -> Vec<String> {
    e.runner.ran.iter().map(|a| a.join(" ")).collect()
}

#[test]
fn ethtool_output_is_read() {
    let r = parse_ethtool_sections(NicGroup::Rings, RINGS);
    assert_eq!(r.current[&NicParam::RxRing], Some(256));
    assert_eq!(r.max[&NicParam::TxRing], Some(1024));
    let c = parse_ethtool_sections(NicGroup::Channels, VETH_CHANNELS);
    assert_eq!(c.current[&NicParam::RxChannels], Some(1));
    assert_eq!(c.current[&NicParam::Combined], None);
    assert_eq!(c.max[&NicParam::TxChannels], Some(2));
    let co = parse_ethtool_coalesce(COALESCE);
    assert_eq!(
        (
            co.current[&NicParam::RxUsecs],
            co.current[&NicParam::TxUsecs]
        ),
        (Some(0), Some(8))
    );
    let q = parse_ip_link(r#"[{"ifindex":6,"ifname":"kv0","txqlen":1000}]"#).unwrap();
    assert_eq!(q.current[&NicParam::TxQueueLen], Some(1000));
}

#[test]
fn argv_is_inspectable_without_running_anything() {
    let e = exec().in_netns("ns1").unwrap();
    let cmd = ExecCommand::new(Action::RetuneNic, "eth0", "k")
        .param("rx_ring", "1024")
        .param("tx_ring", "512")
        .param("rx_usecs", "50")
        .param("txqueuelen", "5000");
    let all: Vec<String> = e
        .argv_for(&cmd)
        .unwrap()
        .iter()
        .map(|a| a.join(" "))
        .collect();
    assert_eq!(
        all,
        [
            "ip netns exec ns1 ethtool -G eth0 rx 1024 tx 512",
            "ip netns exec ns1 ethtool -C eth0 rx-usecs 50",
            "ip netns exec ns1 ip link set dev eth0 txqueuelen 5000",
        ]
    );
    assert!(e.runner.ran.is_empty());
}

#[test]
fn bad_input_names_the_field_and_runs_nothing() {
    let mut e = exec();
    let cases = [
        (
            ExecCommand::new(Action::RetuneNic, "eth0 reboot", "k").param("txqueuelen", "1"),
            "target",
        ),
        (
            ExecCommand::new(Action::RetuneNic, "-s", "k").param("txqueuelen", "1"),
            "target",
        ),
        (
            ExecCommand::new(Action::RetuneNic, "eth0", "k").param("rx_ring", "0"),
            "rx_ring",
        ),
        (
            ExecCommand::new(Action::RetuneNic, "eth0", "k").param("rx_usecs", "-5"),
            "rx_usecs",
        ),
        (
            ExecCommand::new(Action::RetuneNic, "eth0", "k").param("rings", "5"),
            "params",
        ),
        (ExecCommand::new(Action::RetuneNic, "eth0", "k"), "params"),
    ];
    for (cmd, field) in cases {
        match e.apply(&cmd) {
            Err(ExecError::Invalid { field: f, .. }) => assert_eq!(f, field, "{cmd:?}"),
            other => panic!("{cmd:?}: {other:?}"),
        }
    }
    assert!(e.runner.ran.is_empty());
    assert!(exec().in_netns("a b").is_err());
}

#[test]
fn unsupported_settings_are_reported_and_the_rest_applied() {
    let mut e = exec();
    e.runner.answer(&["ethtool", "-g"], 81, "", UNSUPPORTED);
    e.runner.answer(&["ethtool", "-l"], 0, VETH_CHANNELS, "");
    e.runner
        .answer(&["ethtool", "-L", "kv0", "rx", "2"], 0, "", "");
    let cmd = ExecCommand::new(Action::RetuneNic, "kv0", "k")
        .param("rx_ring", "512")
        .param("rx_channels", "2")
        .param("combined", "2");
    let a = e.apply(&cmd).unwrap();
    assert_eq!(a.outcome, Outcome::Done);
    let status = |f: &str| {
        a.changes
            .iter()
            .find(|c| c.field == f)
            .unwrap()
            .status
            .clone()
    };
    assert_eq!(status("rx_channels"), ChangeStatus::Applied);
    assert!(
        matches!(status("rx_ring"), ChangeStatus::Unsupported(w) if w.contains("ethtool -g kv0"))
    );
    assert!(matches!(status("combined"), ChangeStatus::Unsupported(w) if w.contains("n/a")));
    assert_eq!(
        a.previous(),
        [("rx_channels".to_string(), "1".to_string())].into()
    );
    assert!(a.detail.contains("rx_ring unsupported"), "{}", a.detail);
}

#[test]
fn nothing_supported_is_an_error() {
    let mut e = exec();
    e.runner.answer(&["ethtool", "-c"], 1, "", UNSUPPORTED);
    let cmd = ExecCommand::new(Action::RetuneNic, "kv0", "k").param("rx_usecs", "10");
    let err = e.apply(&cmd).unwrap_err();
    assert!(matches!(err, ExecError::Unsupported { .. }), "{err}");
    assert!(e.journal.get("k").is_none());
}

#[test]
fn a_value_over_the_maximum_changes_nothing() {
    let mut e = exec();
    e.runner.answer(&["ethtool", "-g"], 0, RINGS, "");
    e.runner.answer(&["ethtool", "-l"], 0, VETH_CHANNELS, "");
    let cmd = ExecCommand::new(Action::RetuneNic, "eth0", "k")
        .param("rx_ring", "512")
        .param("rx_channels", "8");
    let err = e.apply(&cmd).unwrap_err().to_string();
    assert!(err.contains("maximum of 2"), "{err}");
    assert!(!ran(&e)
        .iter()
        .any(|a| a.contains(" -G ") || a.contains(" -L ")));
}

#[test]
fn a_failure_half_way_undoes_what_was_applied() {
    let mut e = exec();
    e.runner.answer(&["ethtool", "-g"], 0, RINGS, "");
    e.runner
        .answer(&["ip", "-j", "link"], 0, r#"[{"txqlen":1000}]"#, "");
    e.runner
        .answer(&["ethtool", "-G", "eth0", "rx", "512"], 0, "", "");
    e.runner.answer(
        &["ip", "link", "set"],
        2,
        "",
        "RTNETLINK answers: Operation not permitted",
    );
    e.runner.answer(
        &["ethtool", "-g"],
        0,
        &RINGS.replacen("RX:\t\t256", "RX:\t\t512", 1),
        "",
    );
    e.runner
        .answer(&["ethtool", "-G", "eth0", "rx", "256"], 0, "", "");
    let cmd = ExecCommand::new(Action::RetuneNic, "eth0", "k")
        .param("rx_ring", "512")
        .param("txqueuelen", "2000");
    let err = e.apply(&cmd).unwrap_err();
    assert!(matches!(err, ExecError::Partial { .. }), "{err}");
    assert!(
        err.to_string().contains("undone: rx_ring 256 -> 512"),
        "{err}"
    );
    assert_eq!(ran(&e).last().unwrap(), "ethtool -G eth0 rx 256");
}

#[test]
fn rollback_restores_and_then_is_already_done() {
    let mut e = exec();
    e.runner.answer(&["ethtool", "-c"], 0, COALESCE, "");
    e.runner
        .answer(&["ethtool", "-C", "eth0", "rx-usecs", "50"], 0, "", "");
    let cmd = ExecCommand::new(Action::RetuneNic, "eth0", "k")
        .param("rx_usecs", "50")
        .param("tx_usecs", "8");
    let a = e.apply(&cmd).unwrap();
    assert_eq!(a.outcome, Outcome::Done);
    assert_eq!(
        a.changes
            .iter()
            .filter(|c| c.status == ChangeStatus::AlreadySet)
            .count(),
        1
    );
    e.runner.answer(
        &["ethtool", "-c"],
        0,
        &COALESCE.replace("rx-usecs: 0", "rx-usecs: 50"),
        "",
    );
    e.runner
        .answer(&["ethtool", "-C", "eth0", "rx-usecs", "0"], 0, "", "");
    let r = e.rollback(&cmd).unwrap();
    assert_eq!(r.outcome, Outcome::RolledBack);
    assert_eq!(ran(&e).last().unwrap(), "ethtool -C eth0 rx-usecs 0");
    assert_eq!(e.rollback(&cmd).unwrap().outcome, Outcome::AlreadyDone);
    assert_eq!(e.apply(&cmd).unwrap().outcome, Outcome::AlreadyDone);
}

#[test]
fn a_missing_interface_is_not_found() {
    let mut e = exec();
    e.runner.answer(
        &["ip", "-j", "link"],
        1,
        "",
        "Device \"nope0\" does not exist.",
    );
    let cmd = ExecCommand::new(Action::RetuneNic, "nope0", "k").param("txqueuelen", "10");
    let err = e.apply(&cmd).unwrap_err();
    assert!(
        matches!(
            err,
            ExecError::NotFound {
                what: "interface",
                ..
            }
        ),
        "{err}"
    );
}

/// `ethtool -g` of an mlx5 ConnectX-4 Lx (shared/data/wild entry 13).
fn mlx5_rings() -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/wild/13-ethtool-mlx5-cx4lx/ethtool-g.txt");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn ring_maxima_survive_output_without_section_headers() {
    let with = mlx5_rings();
    let r = parse_ethtool_sections(NicGroup::Rings, &with);
    assert_eq!(
        (r.max[&NicParam::RxRing], r.current[&NicParam::RxRing]),
        (Some(8192), Some(1024))
    );
    // The same output with its section headers gone.
    let without: String = with
        .lines()
        .filter(|l| !l.starts_with("Pre-set") && !l.starts_with("Current hardware"))
        .map(|l| format!("{l}\n"))
        .collect();
    let r = parse_ethtool_sections(NicGroup::Rings, &without);
    assert_eq!(r.max[&NicParam::RxRing], Some(8192));
    assert_eq!(r.max[&NicParam::TxRing], Some(8192));
    assert_eq!(r.current[&NicParam::RxRing], Some(1024));
    assert_eq!(r.current[&NicParam::TxRing], Some(1024));
    // So a size over the maximum never reaches ethtool -G.
    let mut e = exec();
    e.runner.answer(&["ethtool", "-g"], 0, &without, "");
    e.runner.answer(&["ethtool", "-G"], 0, "", "");
    let cmd = ExecCommand::new(Action::RetuneNic, "eth0", "k").param("rx_ring", "16384");
    let err = e.apply(&cmd).unwrap_err().to_string();
    assert!(err.contains("maximum of 8192"), "{err}");
    assert!(!ran(&e).iter().any(|a| a.contains(" -G ")), "{:?}", ran(&e));
}

#[test]
fn a_ring_size_without_a_stated_maximum_is_refused() {
    // Each value once, no headers: the current sizes, maxima unknown.
    let once = "Ring parameters for eth0:\nRX:\t\t1024\nTX:\t\t1024\n";
    let r = parse_ethtool_sections(NicGroup::Rings, once);
    assert_eq!(r.current[&NicParam::RxRing], Some(1024));
    assert!(r.max.is_empty());
    let mut e = exec();
    e.runner.answer(&["ethtool", "-g"], 0, once, "");
    e.runner.answer(&["ethtool", "-G"], 0, "", "");
    let cmd = ExecCommand::new(Action::RetuneNic, "eth0", "k").param("rx_ring", "2048");
    let err = e.apply(&cmd).unwrap_err().to_string();
    assert!(err.contains("no maximum"), "{err}");
    assert!(!ran(&e).iter().any(|a| a.contains(" -G ")), "{:?}", ran(&e));
}
