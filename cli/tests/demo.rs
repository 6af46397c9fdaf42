//! `keel demo` as the README's first command runs it, on a machine without
//! `haproxy` and without being asked to use Slurm: every action is still
//! carried out by the real executor (through the demo's webhook receiver,
//! which says it moved no traffic), Slurm is never called, and nothing
//! fails. `haproxy` is hidden by running the demo with a `PATH` without
//! `/usr/sbin` (where Debian installs it).

mod support;

use support::keel;

#[test]
fn the_demo_closes_its_loop_without_haproxy_and_never_calls_slurm() {
    let out = keel()
        .args(["demo", "--speed", "4"])
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{err}");
    assert!(text.contains("Slurm: not used"), "{text}");
    assert!(!text.contains("submitted job"), "{text}");
    assert!(
        text.contains("remap_requests goes to a webhook receiver"),
        "{text}"
    );
    let acked: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("-> acknowledged") && l.contains("remap_requests"))
        .collect();
    assert!(!acked.is_empty(), "no remap_requests carried out:\n{text}");
    assert!(
        acked.iter().all(|l| l.contains("HTTP/1.1 200")),
        "{acked:?}"
    );
    assert!(!text.contains("-> failed"), "an action failed:\n{text}");
    // What the receiver was told is what the ledger says was carried out.
    let told = text
        .lines()
        .skip_while(|l| !l.contains("webhook receiver (standing in"))
        .skip(1)
        .take_while(|l| l.starts_with("    apply") || l.starts_with("    rollback"))
        .filter(|l| l.contains("apply remap_requests"))
        .count();
    assert_eq!(told, acked.len(), "{text}");
}
