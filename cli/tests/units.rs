//! The systemd units in `deploy/systemd/`: each passes `systemd-analyze
//! verify` and carries the hardening an operator expects, and the sensor's
//! unit runs as systemd would run it — its own unprivileged user, its key
//! given as a credential — and reads its key.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{free_port, keel, ok, wait_for};

fn units() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    let mut v: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

/// The values of `key=` in a unit, in order.
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

fn tool(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn every_role_has_a_hardened_unit_that_systemd_analyze_verifies() {
    let units = units();
    let names: Vec<&str> = units.iter().map(|(n, _)| n.as_str()).collect();
    for role in ["controller", "correlator", "executor", "sensor"] {
        assert!(
            names.contains(&format!("keel-{role}.service").as_str()),
            "no unit for {role}: {names:?}"
        );
    }
    for (name, unit) in &units {
        for must in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "Restart=on-failure",
            "LoadCredential=key.pem:",
        ] {
            assert!(unit.contains(must), "{name} lacks {must}");
        }
        let caps = values(unit, "CapabilityBoundingSet");
        let want = if name == "keel-executor.service" {
            // Only the NIC executor's one capability, for ethtool.
            vec!["CAP_NET_ADMIN"]
        } else {
            vec![""]
        };
        assert_eq!(caps, want, "{name}: capabilities");
    }

    if !tool("systemd-analyze") {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing (Debian package systemd)"
        );
        eprintln!("systemd-analyze not installed: verify skipped");
        return;
    }
    // As shipped, but with ExecStart pointing at this build's binary
    // (verify checks that the executable exists).
    let dir = std::env::temp_dir().join(format!("keel-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut paths = Vec::new();
    for (name, unit) in &units {
        let path = dir.join(name);
        std::fs::write(
            &path,
            unit.replace("/usr/bin/keel", env!("CARGO_BIN_EXE_keel")),
        )
        .unwrap();
        paths.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    // verify only warns about some mistakes (an unknown key, a bad value).
    let complaints: Vec<&str> = said
        .lines()
        .filter(|l| paths.iter().any(|p| l.contains(&*p.to_string_lossy())))
        .collect();
    assert!(complaints.is_empty(), "{complaints:?}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The user a `DynamicUser=yes` unit runs as, stood in for by a system
/// user of its own (systemd allocates one the same way: no home, no shell,
/// no groups).
const UNIT_USER: &str = "keel-unit-test";

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[test]
fn the_sensor_unit_runs_as_its_own_user_and_reads_its_key_from_its_credentials() {
    if !is_root() || !tool("setpriv") || !tool("useradd") {
        assert!(
            std::env::var_os("CI").is_none(),
            "needs root, setpriv, useradd"
        );
        eprintln!("not root: skipped");
        return;
    }
    let (_, unit) = units()
        .into_iter()
        .find(|(n, _)| n == "keel-sensor.service")
        .unwrap();
    assert!(unit.contains("DynamicUser=yes"));
    if Command::new("id")
        .arg(UNIT_USER)
        .output()
        .is_ok_and(|o| !o.status.success())
    {
        ok(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            UNIT_USER,
        ]));
    }
    let dir = std::env::temp_dir().join(format!("keel-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    ok(keel().args(["cert", "init", "--out"]).arg(dir.join("ca")));
    // What an operator has under /etc/keel/tls: root's, the key 0600.
    let etc = dir.join("etc");
    ok(keel()
        .args(["cert", "issue", "--role", "sensor", "--name", "n01", "--ca"])
        .arg(dir.join("ca"))
        .arg("--out")
        .arg(&etc));

    // What systemd makes of LoadCredential=ID:PATH: /run/credentials/UNIT/ID,
    // owned by the service's user, 0400, in a folder 0500.
    let creds = dir.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    for spec in values(&unit, "LoadCredential") {
        let (id, from) = spec.split_once(':').unwrap();
        let file = Path::new(from).file_name().unwrap();
        std::fs::copy(etc.join(file), creds.join(id)).unwrap();
    }
    ok(Command::new("chown")
        .args(["-R", &format!("{UNIT_USER}:{UNIT_USER}")])
        .arg(&creds));
    ok(Command::new("chmod").arg("0400").args(
        std::fs::read_dir(&creds)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect::<Vec<PathBuf>>(),
    ));
    ok(Command::new("chmod").arg("0500").arg(&creds));
    ok(Command::new("chmod").arg("0755").arg(&dir));

    let config = |credentials: &Path| {
        format!(
            "node = \"n01\"\ncredentials = \"{}\"\n[[controllers]]\naddr = \"127.0.0.1:{}\"\nname = \"ctl-1\"\n[[source]]\ntype = \"push\"\nlisten = \"udp://127.0.0.1:{}\"\n",
            credentials.display(),
            free_port(),
            free_port()
        )
    };
    std::fs::write(dir.join("sensor.toml"), config(&creds)).unwrap();
    std::fs::write(dir.join("sensor-etc.toml"), config(&etc)).unwrap();

    // The unit's ExecStart, with this build's binary, a free HTTP port and
    // the test's config; run as the unit's user.
    let exec = values(&unit, "ExecStart")[0];
    let port = free_port();
    let args: Vec<String> = exec
        .split_whitespace()
        .skip(1)
        .map(|a| match a {
            "/etc/keel/sensor.toml" => dir.join("sensor.toml").display().to_string(),
            a if a.starts_with("127.0.0.1:") => format!("127.0.0.1:{port}"),
            a => a.to_string(),
        })
        .collect();
    let as_unit = |args: &[String]| {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={UNIT_USER}"),
            &format!("--regid={UNIT_USER}"),
            "--clear-groups",
            env!("CARGO_BIN_EXE_keel"),
        ])
        .args(args);
        c
    };
    let log = std::fs::File::create(dir.join("sensor.log")).unwrap();
    let mut child = as_unit(&args).stderr(log).spawn().unwrap();
    let healthy = wait_for(Duration::from_secs(20), || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        use std::io::{Read, Write};
        write!(s, "GET /healthz HTTP/1.0\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        (text.split_whitespace().nth(1) == Some("200")).then_some(())
    });
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let said = std::fs::read_to_string(dir.join("sensor.log")).unwrap_or_default();
    assert!(
        healthy.is_some() && exited.is_none(),
        "the sensor did not come up as {UNIT_USER}: {said}"
    );

    // Without the credential, from root's own 0600 key, the same user is
    // refused at start, naming the file.
    let out = as_unit(&[
        "sensor".into(),
        "--config".into(),
        dir.join("sensor-etc.toml").display().to_string(),
    ])
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("key.pem") && err.contains("Permission denied"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
