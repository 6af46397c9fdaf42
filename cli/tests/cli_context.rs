//! The operator's CLI without flags: three real controller replicas, a
//! context file (`cli.toml`) that lists a dead address first, and `keel`
//! commands that find the replicas there, pass the dead one over, and print
//! tables by default and the controller's JSON with `--json`. Then the
//! generated completions and manual page.

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use support::{free_port, keel, wait_for, Cluster};

/// `keel ARGS` with no context from this process's environment: only the
/// file `config` (through KEEL_CONFIG) and `env`.
fn keel_with(config: Option<&Path>, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd: Command = keel();
    for var in [
        "KEEL_CONTROLLER",
        "KEEL_CONTROLLERS",
        "KEEL_CREDENTIALS",
        "KEEL_CONFIG",
        "XDG_CONFIG_HOME",
    ] {
        cmd.env_remove(var);
    }
    if let Some(c) = config {
        cmd.env("KEEL_CONFIG", c);
    }
    cmd.envs(env.iter().copied()).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn commands_need_no_flags_and_pass_a_dead_replica_over() {
    let dir = std::env::temp_dir().join(format!("keel-cli-context-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let c = Cluster::start(&dir, 3);
    let live = |i: usize| format!("127.0.0.1:{}", c.ctl_ports[i]);
    // Nothing listens on the first address; the credentials are relative
    // to the file's folder.
    let dead = format!("127.0.0.1:{}", free_port());
    let mut file = format!(
        "credentials = \"operator-op\"\n[[controllers]]\nname = \"ctl-0\"\naddr = \"{dead}\"\n"
    );
    for i in 0..3 {
        file += &format!(
            "[[controllers]]\nname = \"ctl-{}\"\naddr = \"{}\"\n",
            i + 1,
            live(i)
        );
    }
    let config = dir.join("cli.toml");
    std::fs::write(&config, file).unwrap();
    assert!(
        wait_for(Duration::from_secs(60), || c.leader(&[0, 1, 2])).is_some(),
        "no leader\n{}",
        c.logs()
    );

    // `keel status`, no flags: the dead replica is passed over, and -v
    // says which one answered (on standard error; standard output is the
    // table alone).
    let out = keel_with(Some(&config), &[], &["status", "-v"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}\n{}", c.logs());
    assert!(
        stderr.contains("ctl-0") && stderr.contains("trying the next"),
        "{stderr}"
    );
    assert!(stderr.contains("ctl-1 at"), "{stderr}");
    for row in ["FIELD", "leader", "term", "commit", "applied", "members"] {
        assert!(stdout.contains(row), "{row:?} missing:\n{stdout}");
    }
    assert!(!stdout.contains("ctl-0"), "{stdout}");

    // `--json`: the controller's JSON, the same shape as ever.
    let out = keel_with(Some(&config), &[], &["findings", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("a JSON array");
    assert!(v.is_array(), "{v}");
    // Without -v, nothing about failover is said.
    assert!(
        !text(&out.stderr).contains("ctl-0"),
        "{}",
        text(&out.stderr)
    );

    // The environment wins over the file: only live replicas here. The
    // default output is a table with its header row.
    let env = format!("ctl-2={},ctl-3={}", live(1), live(2));
    let vars = [("KEEL_CONTROLLERS", env.as_str())];
    let out = keel_with(Some(&config), &vars, &["findings", "--open"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for col in ["ID", "KIND", "CAUSE", "OPENED", "findings, 0 open"] {
        assert!(stdout.contains(col), "{col:?} missing:\n{stdout}");
    }
    let out = keel_with(Some(&config), &vars, &["jobs"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("STATE"), "{}", text(&out.stdout));

    // A refusal from a replica that answered is not asked around: it is
    // the error, naming that replica.
    let out = keel_with(Some(&config), &vars, &["policy", "explain", "424242", "-v"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(stderr.contains("keel: ctl-2:"), "{stderr}");
    assert!(!stderr.contains("ctl-3"), "{stderr}");

    // An unknown kind is refused before anything is asked, naming the kinds.
    let out = keel_with(Some(&config), &[], &["findings", "--kind", "not_a_kind"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("not_a_kind") && stderr.contains("tp_straggler"),
        "{stderr}"
    );

    // No context anywhere: the error says what was tried.
    let home = dir.join("empty-home");
    let home = home.to_str().unwrap();
    let out = keel_with(None, &[("HOME", home)], &["status"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    for want in [
        "--controller",
        "KEEL_CONTROLLERS",
        "$KEEL_CONFIG",
        "cli.toml",
    ] {
        assert!(stderr.contains(want), "{want:?} missing: {stderr}");
    }

    // A context file with a mistake: its path and line.
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "credentials = \"op\"\n[[controllers]]\nnmae = \"x\"\n",
    )
    .unwrap();
    let out = keel_with(Some(&bad), &[], &["status"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{}:3:", bad.display())),
        "{stderr}"
    );
}

#[test]
fn completions_and_the_manual_come_from_the_command_line() {
    let out = keel_with(None, &[], &["completions", "bash"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let script = text(&out.stdout);
    assert!(
        script.contains("keel") && script.contains("findings"),
        "{script}"
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = keel_with(None, &[], &["completions", shell]);
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
    let out = keel_with(None, &[], &["man"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(page.starts_with('.'), "{page}");
    assert!(page.contains("\n.TH keel 1"), "{page}");
    assert!(
        page.contains("KEEL_CONFIG"),
        "the context file is in the manual"
    );
    let dir = std::env::temp_dir().join(format!("keel-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = keel_with(None, &[], &["man", "--out", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for page in ["keel.1", "keel-findings.1", "keel-chaos-inject.1"] {
        let p = dir.join(page);
        let body = std::fs::read_to_string(&p).unwrap_or_else(|_| panic!("{page} missing"));
        assert!(body.contains(".TH"), "{page}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
