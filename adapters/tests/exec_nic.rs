//! The NIC executor on a real veth pair in a network namespace that the
//! test makes (and deletes, however it ends). A veth supports channels
//! (`ethtool -L rx/tx`, up to the CPU count) and the transmit queue length,
//! not rings or coalescing: those are applied and read back for real, and
//! for the others the test checks the command lines and that they are
//! reported unsupported.
//!
//! Needs root (namespaces and links) and the Debian packages `iproute2`
//! and `ethtool`; without them the test fails, saying so.

use keel_adapters::executors::nic::{
    parse_ethtool_sections, parse_ip_link, NicExecutor, NicGroup, NicParam,
};
use keel_adapters::{ChangeStatus, ExecCommand, ExecError, Executor, Journal, Outcome};
use keel_model::Action;
use std::process::Command;

const IF: &str = "kv0";

fn run(args: &[&str]) -> (bool, String) {
    match Command::new(args[0]).args(&args[1..]).env("LC_ALL", "C").output() {
        Ok(o) => (
            o.status.success(),
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        ),
        Err(e) => panic!(
            "cannot run {} ({e}): install iproute2 and ethtool (apt-get install -y iproute2 ethtool)",
            args[0]
        ),
    }
}

/// A namespace with a veth pair in it, deleted on drop (which deletes the pair).
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let (_, uid) = run(&["id", "-u"]);
        assert_eq!(
            uid.trim(),
            "0",
            "this test makes a network namespace and a veth pair: it needs root, and runs as uid {}",
            uid.trim()
        );
        run(&["ethtool", "--version"]);
        let name = format!("keel-nic-{}", std::process::id());
        let (ok, out) = run(&["ip", "netns", "add", &name]);
        assert!(
            ok,
            "ip netns add {name} failed (root denied, or no netns support?): {out}"
        );
        let ns = Netns(name);
        let (ok, out) = run(&[
            "ip", "-n", &ns.0, "link", "add", IF, "type", "veth", "peer", "name", "kv1",
        ]);
        assert!(
            ok,
            "making a veth pair failed (is the veth module available?): {out}"
        );
        ns
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", self.0.as_str()];
        all.extend_from_slice(args);
        let (ok, out) = run(&all);
        assert!(ok, "{all:?}: {out}");
        out
    }

    fn channels(&self) -> (Option<u32>, Option<u32>, Option<u32>) {
        let v = parse_ethtool_sections(NicGroup::Channels, &self.exec(&["ethtool", "-l", IF]));
        let rx = v.current.get(&NicParam::RxChannels).copied().flatten();
        let tx = v.current.get(&NicParam::TxChannels).copied().flatten();
        let max = v.max.get(&NicParam::RxChannels).copied().flatten();
        (rx, tx, max)
    }

    fn txqueuelen(&self) -> Option<u32> {
        let v = parse_ip_link(&self.exec(&["ip", "-j", "link", "show", "dev", IF])).unwrap();
        v.current[&NicParam::TxQueueLen]
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn status<'a>(a: &'a keel_adapters::Applied, field: &str) -> &'a ChangeStatus {
    &a.changes
        .iter()
        .find(|c| c.field == field)
        .unwrap_or_else(|| panic!("no {field} in {a:?}"))
        .status
}

#[test]
fn a_veth_is_retuned_for_real_and_rolled_back_and_the_rest_reported() {
    let ns = Netns::new();
    let mut exec = NicExecutor::new(Journal::in_memory())
        .in_netns(&ns.0)
        .unwrap();
    let (rx0, tx0, max) = ns.channels();
    let (rx0, tx0) = (
        rx0.expect("veth reports rx channels"),
        tx0.expect("veth reports tx channels"),
    );
    let max = max.expect("veth reports a channel maximum");
    let q0 = ns.txqueuelen().expect("ip reports txqlen");
    // Another channel count where the machine allows one (veth's maximum is
    // the CPU count).
    let rx1 = if rx0 < max { max } else { (rx0 - 1).max(1) };
    let q1 = if q0 == 500 { 600 } else { 500 };

    let cmd = ExecCommand::new(Action::RetuneNic, IF, "nic-1")
        .param("rx_channels", rx1.to_string())
        .param("txqueuelen", q1.to_string())
        .param("rx_ring", "512")
        .param("rx_usecs", "50")
        .param("combined", "1");
    let a = exec.apply(&cmd).unwrap();
    assert_eq!(a.outcome, Outcome::Done, "{a:?}");
    // Applied for real, read back with the tools themselves.
    assert_eq!(ns.txqueuelen(), Some(q1));
    assert_eq!(*status(&a, "txqueuelen"), ChangeStatus::Applied);
    assert_eq!(ns.channels().0, Some(rx1));
    assert_eq!(
        *status(&a, "rx_channels"),
        if rx1 == rx0 {
            ChangeStatus::AlreadySet
        } else {
            ChangeStatus::Applied
        }
    );
    // What a veth cannot do is reported per setting, with the tool's words.
    for (field, tool) in [
        ("rx_ring", "ethtool -g kv0"),
        ("rx_usecs", "ethtool -c kv0"),
    ] {
        match status(&a, field) {
            ChangeStatus::Unsupported(why) => {
                assert!(
                    why.contains(tool) && why.contains("not supported"),
                    "{field}: {why}"
                )
            }
            other => panic!("{field} on a veth: {other:?}"),
        }
    }
    assert!(
        matches!(status(&a, "combined"), ChangeStatus::Unsupported(_)),
        "{a:?}"
    );
    assert!(a.detail.contains("rx_ring unsupported"), "{}", a.detail);

    // Idempotent: the same key is answered from memory.
    assert_eq!(exec.apply(&cmd).unwrap().outcome, Outcome::AlreadyDone);
    let same = ExecCommand::new(Action::RetuneNic, IF, "nic-2").param("txqueuelen", q1.to_string());
    assert_eq!(exec.apply(&same).unwrap().outcome, Outcome::AlreadyDone);

    // Rollback restores the values read before, and only once.
    let r = exec.rollback(&cmd).unwrap();
    assert_eq!(r.outcome, Outcome::RolledBack, "{r:?}");
    assert_eq!(ns.txqueuelen(), Some(q0));
    assert_eq!((ns.channels().0, ns.channels().1), (Some(rx0), Some(tx0)));
    assert_eq!(exec.rollback(&cmd).unwrap().outcome, Outcome::AlreadyDone);

    // The command lines for what a veth cannot run, as a real NIC would get them.
    let rings = ExecCommand::new(Action::RetuneNic, IF, "nic-3")
        .param("rx_ring", "1024")
        .param("tx_ring", "1024")
        .param("rx_usecs", "50")
        .param("tx_usecs", "25");
    let lines: Vec<String> = exec
        .argv_for(&rings)
        .unwrap()
        .iter()
        .map(|a| a.join(" "))
        .collect();
    assert_eq!(
        lines,
        [
            format!("ip netns exec {} ethtool -G kv0 rx 1024 tx 1024", ns.0),
            format!(
                "ip netns exec {} ethtool -C kv0 rx-usecs 50 tx-usecs 25",
                ns.0
            ),
        ]
    );
    // Run on the veth, nothing of it is supported: an error saying so.
    let err = exec.apply(&rings).unwrap_err();
    assert!(matches!(err, ExecError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("rx_ring unsupported"), "{err}");

    // Over the device's maximum: refused before anything changes.
    let over = ExecCommand::new(Action::RetuneNic, IF, "nic-4")
        .param("txqueuelen", "777")
        .param("rx_channels", (max + 1).to_string());
    let err = exec.apply(&over).unwrap_err();
    assert!(
        matches!(err, ExecError::Invalid { ref field, .. } if field == "rx_channels"),
        "{err}"
    );
    assert_eq!(ns.txqueuelen(), Some(q0), "nothing was changed");

    // An interface that is not there.
    let err = exec
        .apply(&ExecCommand::new(Action::RetuneNic, "nope0", "nic-5").param("txqueuelen", "10"))
        .unwrap_err();
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
