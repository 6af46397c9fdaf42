//! `deploy/deb/build.sh` packs the built `keel` into a Debian package with
//! Debian's own `dpkg-deb`: the test builds it from this test's binary, and
//! checks what an operator's `apt install ./keel_*.deb` would get: the
//! binary (which runs), a unit per role, the example configurations as
//! conffiles, the default policy, the alerting rules and the dashboard.

mod support;

use std::path::Path;
use std::process::Command;

#[test]
fn the_debian_package_holds_the_binary_the_units_and_the_configs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::temp_dir().join(format!("keel-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new("sh")
        .arg(root.join("deploy/deb/build.sh"))
        .arg(env!("CARGO_BIN_EXE_keel"))
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(deb.ends_with(".deb"), "{deb}");

    let field = |name: &str| {
        let o = Command::new("dpkg-deb")
            .args(["--field", &deb, name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(field("Package"), "keel");
    assert!(!field("Version").is_empty());

    let x = dir.join("root");
    let o = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&x)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "usr/bin/keel",
        "lib/systemd/system/keel-controller.service",
        "lib/systemd/system/keel-correlator.service",
        "lib/systemd/system/keel-executor.service",
        "lib/systemd/system/keel-sensor.service",
        "etc/keel/controller.toml",
        "etc/keel/sensor.toml",
        "etc/keel/policies/default.toml",
        "usr/share/keel/prometheus/keel.rules.yml",
        "usr/share/keel/grafana/keel.json",
    ] {
        assert!(x.join(f).is_file(), "{f} not in the package");
    }
    // The units start the binary where the package puts it.
    let unit = std::fs::read_to_string(x.join("lib/systemd/system/keel-sensor.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/keel "), "{unit}");
    // The packaged binary runs, and the packaged policy passes its check.
    let v = Command::new(x.join("usr/bin/keel"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(v.status.success() && String::from_utf8_lossy(&v.stdout).starts_with("keel "));
    let check = Command::new(x.join("usr/bin/keel"))
        .args(["policy", "check"])
        .arg(x.join("etc/keel/policies/default.toml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Configurations are conffiles: an administrator's edits survive upgrades.
    let ctl = Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(dir.join("DEBIAN"))
        .output()
        .unwrap();
    assert!(ctl.status.success());
    let conffiles = std::fs::read_to_string(dir.join("DEBIAN/conffiles")).unwrap();
    assert!(conffiles.contains("/etc/keel/sensor.toml"), "{conffiles}");
    std::fs::remove_dir_all(&dir).ok();
}
