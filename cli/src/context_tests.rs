use super::*;
use std::collections::BTreeMap;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| m.get(k).cloned()
}

fn replica(name: &str, addr: &str) -> Replica {
    Replica {
        name: name.into(),
        addr: addr.into(),
    }
}

const FILE: &str = r#"
credentials = "op"

[[controllers]]
name = "ctl-1"
addr = "10.0.0.11:7400"

[[controllers]]
name = "ctl-2"
addr = "10.0.0.12:7400"
"#;

/// A context file in a fresh folder, and the candidates that find it.
fn with_file(text: &str) -> (tempfile::TempDir, Vec<Candidate>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cli.toml");
    std::fs::write(&path, text).unwrap();
    let c = vec![
        Candidate {
            path: dir.path().join("absent.toml"),
            required: false,
        },
        Candidate {
            path,
            required: false,
        },
    ];
    (dir, c)
}

#[test]
fn a_file_gives_replicas_in_order_and_credentials_beside_it() {
    let (dir, c) = with_file(FILE);
    let t = resolve(&Flags::default(), &env_of(&[]), &c).unwrap();
    assert_eq!(
        t.replicas,
        vec![
            replica("ctl-1", "10.0.0.11:7400"),
            replica("ctl-2", "10.0.0.12:7400")
        ]
    );
    assert_eq!(t.credentials, dir.path().join("op"));
}

#[test]
fn flags_win_over_the_environment_which_wins_over_the_file() {
    let (_dir, c) = with_file(FILE);
    let env = env_of(&[
        ("KEEL_CONTROLLERS", "env-1=1.1.1.1:1, env-2=1.1.1.2:1"),
        ("KEEL_CREDENTIALS", "/env/op"),
    ]);
    let t = resolve(&Flags::default(), &env, &c).unwrap();
    assert_eq!(t.replicas[0], replica("env-1", "1.1.1.1:1"));
    assert_eq!(t.replicas.len(), 2);
    assert_eq!(t.credentials, PathBuf::from("/env/op"));
    let flags = Flags {
        controller: Some("9.9.9.9:9".into()),
        name: Some("flag".into()),
        credentials: Some("/flag/op".into()),
    };
    let t = resolve(&flags, &env, &c).unwrap();
    assert_eq!(t.replicas, vec![replica("flag", "9.9.9.9:9")]);
    assert_eq!(t.credentials, PathBuf::from("/flag/op"));
}

#[test]
fn name_alone_picks_a_known_replica_and_controller_alone_finds_its_name() {
    let (_dir, c) = with_file(FILE);
    let by_name = Flags {
        name: Some("ctl-2".into()),
        ..Flags::default()
    };
    let t = resolve(&by_name, &env_of(&[]), &c).unwrap();
    assert_eq!(t.replicas, vec![replica("ctl-2", "10.0.0.12:7400")]);
    let by_addr = Flags {
        controller: Some("10.0.0.11:7400".into()),
        ..Flags::default()
    };
    let t = resolve(&by_addr, &env_of(&[]), &c).unwrap();
    assert_eq!(t.replicas, vec![replica("ctl-1", "10.0.0.11:7400")]);
    let unknown = Flags {
        name: Some("ctl-9".into()),
        ..Flags::default()
    };
    let e = format!("{:#}", resolve(&unknown, &env_of(&[]), &c).unwrap_err());
    assert!(e.contains("ctl-1") && e.contains("ctl-2"), "{e}");
}

#[test]
fn nothing_anywhere_says_what_was_tried() {
    let dir = tempfile::tempdir().unwrap();
    let env_map = [("HOME", dir.path().to_str().unwrap())];
    let env = env_of(&env_map);
    let c = candidates(&env);
    let e = format!("{:#}", resolve(&Flags::default(), &env, &c).unwrap_err());
    for want in [
        "--controller",
        "KEEL_CONTROLLER",
        "KEEL_CONTROLLERS",
        "$KEEL_CONFIG (unset)",
        ".config/keel/cli.toml (not found)",
        "/etc/keel/cli.toml",
    ] {
        assert!(e.contains(want), "{want:?} missing from: {e}");
    }
    // Replicas but no credentials: that is named too.
    let env = env_of(&[("KEEL_CONTROLLER", "ctl-1=127.0.0.1:1")]);
    let e = format!("{:#}", resolve(&Flags::default(), &env, &[]).unwrap_err());
    assert!(
        e.contains("--credentials") && e.contains("KEEL_CREDENTIALS"),
        "{e}"
    );
}

#[test]
fn candidates_follow_keel_config_then_xdg_then_etc() {
    let env = env_of(&[("KEEL_CONFIG", "/a/k.toml"), ("XDG_CONFIG_HOME", "/x")]);
    let c: Vec<PathBuf> = candidates(&env).into_iter().map(|c| c.path).collect();
    assert_eq!(
        c,
        vec![
            PathBuf::from("/a/k.toml"),
            PathBuf::from("/x/keel/cli.toml"),
            PathBuf::from("/etc/keel/cli.toml")
        ]
    );
    let env = env_of(&[("HOME", "/home/op")]);
    assert_eq!(
        candidates(&env)[0].path,
        PathBuf::from("/home/op/.config/keel/cli.toml")
    );
}

#[test]
fn a_missing_keel_config_file_is_an_error() {
    let c = [Candidate {
        path: "/nonexistent/keel-cli.toml".into(),
        required: true,
    }];
    let e = format!(
        "{:#}",
        resolve(&Flags::default(), &env_of(&[]), &c).unwrap_err()
    );
    assert!(e.contains("KEEL_CONFIG=/nonexistent/keel-cli.toml"), "{e}");
}

#[test]
fn file_errors_name_the_file_and_line() {
    let p = Path::new("/etc/keel/cli.toml");
    let e = parse_file(
        p,
        "credentials = \"op\"\n[[controllers]]\nname = \"a\"\naddress = \"x\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("/etc/keel/cli.toml:4:"), "{e}");
    assert!(e.contains("address"), "{e}");
    let e = parse_file(p, "\n\ncredentials = \n")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("/etc/keel/cli.toml:3:"), "{e}");
    let e = parse_file(p, "[[controllers]]\nname = \"\"\naddr = \"x:1\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs a name"), "{e}");
}

#[test]
fn environment_lists_are_name_equals_addr() {
    assert_eq!(
        parse_list("KEEL_CONTROLLERS", "a=h:1,b=h:2,").unwrap(),
        vec![replica("a", "h:1"), replica("b", "h:2")]
    );
    let e = parse_list("KEEL_CONTROLLERS", "h:1")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("KEEL_CONTROLLERS") && e.contains("NAME=ADDR"),
        "{e}"
    );
}
