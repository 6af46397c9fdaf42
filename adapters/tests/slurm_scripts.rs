//! `deploy/slurm/prolog.sh` and `epilog.sh` under a POSIX shell, with the
//! environment slurmctld gives them and stand-ins for `keel` and `scontrol`
//! that record their argv: what keel is told, that every value stays one
//! argument, and that the scripts never fail a job.

use std::path::{Path, PathBuf};
use std::process::Command;

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/slurm")
        .join(name)
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    /// A fake keel that writes its argv, one per line, and exits `keel_rc`;
    /// a fake scontrol that expands `gpu[01-02]` and answers `show job -d
    /// -o ID` with the file `detail` when a test wrote one (else fails, as
    /// a Slurm without the job would).
    fn new(keel_rc: i32, extra_env: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(
            p("keel"),
            format!("#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > '{}'\nexit {keel_rc}\n", p("argv").display()),
        )
        .unwrap();
        std::fs::write(
            p("scontrol"),
            format!("#!/bin/sh\nif [ \"$1 $2 $3 $4\" = 'show job -d -o' ]; then cat '{}' 2>/dev/null; exit; fi\n[ \"$1 $2 $3\" = 'show hostnames gpu[01-02]' ] || exit 1\nprintf 'gpu01\\ngpu02\\n'\n", p("detail").display()),
        )
        .unwrap();
        for f in ["keel", "scontrol"] {
            Command::new("chmod")
                .args(["+x", &p(f).display().to_string()])
                .status()
                .unwrap();
        }
        std::fs::create_dir(p("creds dir")).unwrap();
        std::fs::write(
            p("slurm.env"),
            format!(
                "# test settings\nKEEL_BIN={}\nKEEL_CONTROLLER=127.0.0.1:7000\nKEEL_NAME=\"controller-1\"\nKEEL_CREDENTIALS={}\nKEEL_SCONTROL={}\n{extra_env}",
                p("keel").display(),
                p("creds dir").display(),
                p("scontrol").display()
            ),
        )
        .unwrap();
        Setup { dir }
    }

    fn run(&self, name: &str, env: &[(&str, &str)]) -> (i32, String) {
        let out = Command::new("sh")
            .arg(script(name))
            .env_clear()
            .env("KEEL_SLURM_ENV", self.dir.path().join("slurm.env"))
            .envs(env.iter().copied())
            .output()
            .expect("sh runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn argv(&self) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(self.dir.path().join("argv")).ok()?;
        Some(text.lines().map(String::from).collect())
    }

    fn creds(&self) -> String {
        self.dir.path().join("creds dir").display().to_string()
    }
}

fn tail(s: &Setup) -> Vec<String> {
    [
        "--controller",
        "127.0.0.1:7000",
        "--name",
        "controller-1",
        "--credentials",
        &s.creds(),
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn the_prolog_registers_the_job_with_its_ranks() {
    let s = Setup::new(0, "KEEL_RANKS_PER_NODE=2\n");
    let (rc, err) = s.run(
        "prolog.sh",
        &[
            ("SLURM_JOB_ID", "42"),
            ("SLURM_JOB_NODELIST", "gpu[01-02]"),
            ("SLURM_JOB_ACCOUNT", "ml team"),
            ("SLURM_JOB_USER", "ann"),
        ],
    );
    assert_eq!(rc, 0, "{err}");
    let mut want: Vec<String> = [
        "job",
        "register",
        "--job",
        "42",
        "--ranks",
        "gpu01=0,1",
        "--ranks",
        "gpu02=2,3",
        "--gpus",
        "0=0,1=1,2=0,3=1",
        "--tenant",
        "ml team",
    ]
    .map(String::from)
    .to_vec();
    want.extend(tail(&s));
    assert_eq!(s.argv().unwrap(), want);
}

#[test]
fn a_plain_node_list_needs_no_scontrol_and_the_user_is_the_tenant() {
    let s = Setup::new(0, "KEEL_SCONTROL=/nonexistent\n");
    let (rc, err) = s.run(
        "prolog.sh",
        &[
            ("SLURM_JOB_ID", "7"),
            ("SLURM_JOB_NODELIST", "vm"),
            ("SLURM_JOB_USER", "root"),
        ],
    );
    assert_eq!(rc, 0, "{err}");
    let argv = s.argv().unwrap();
    assert_eq!(
        argv[..10],
        ["job", "register", "--job", "7", "--ranks", "vm=0", "--gpus", "0=0", "--tenant", "root"]
    );
}

#[test]
fn a_one_node_job_gets_its_gpus_from_slurm_job_gpus() {
    for (var, value) in [
        ("SLURM_JOB_GPUS", "0,2-3"),
        ("SLURM_STEP_GPUS", "0,2-3"),
        ("CUDA_VISIBLE_DEVICES", "0,2-3"),
    ] {
        let s = Setup::new(0, "KEEL_RANKS_PER_NODE=3\n");
        let (rc, err) = s.run(
            "prolog.sh",
            &[
                ("SLURM_JOB_ID", "7"),
                ("SLURM_JOB_NODELIST", "vm"),
                (var, value),
            ],
        );
        assert_eq!(rc, 0, "{err}");
        assert_eq!(
            s.argv().unwrap()[..10],
            [
                "job",
                "register",
                "--job",
                "7",
                "--ranks",
                "vm=0,1,2",
                "--node-gpus",
                "vm=0,2-3",
                "--gpus",
                "0=0,1=1,2=2"
            ],
            "{var}"
        );
    }
}

#[test]
fn gpus_not_in_the_environment_come_from_scontrol_detail_or_stay_unknown() {
    // UUIDs in CUDA_VISIBLE_DEVICES name no index: scontrol is asked.
    let s = Setup::new(0, "");
    let detail = "JobId=42 JobState=RUNNING NodeList=gpu[01-02] Nodes=gpu01 CPU_IDs=0 Mem=0 GRES=gpu:1(IDX:5) Nodes=gpu02 CPU_IDs=0 Mem=0 GRES=gpu:1(IDX:0)\n";
    std::fs::write(s.dir.path().join("detail"), detail).unwrap();
    let (rc, err) = s.run(
        "prolog.sh",
        &[
            ("SLURM_JOB_ID", "42"),
            ("SLURM_JOB_NODELIST", "gpu[01-02]"),
            ("CUDA_VISIBLE_DEVICES", "GPU-0b1c"),
        ],
    );
    assert_eq!(rc, 0, "{err}");
    let argv = s.argv().unwrap();
    assert!(!argv.contains(&"--node-gpus".to_string()), "{argv:?}");
    let at = argv
        .iter()
        .position(|a| a == "--slurm-detail")
        .expect("detail passed");
    assert_eq!(argv[at + 1], detail.trim_end());
    // Nothing from Slurm: no GPU indices at all, and it is logged.
    let s = Setup::new(0, "");
    let (rc, err) = s.run(
        "prolog.sh",
        &[("SLURM_JOB_ID", "42"), ("SLURM_JOB_NODELIST", "gpu[01-02]")],
    );
    assert_eq!(rc, 0);
    assert!(err.contains("GPU indices of job 42 unknown"), "{err}");
    let argv = s.argv().unwrap();
    assert!(
        !argv
            .iter()
            .any(|a| a == "--node-gpus" || a == "--slurm-detail"),
        "{argv:?}"
    );
}

#[test]
fn the_epilog_reports_how_the_job_ended() {
    for (code2, state) in [
        ("0:0", "COMPLETED"),
        ("3:0", "FAILED"),
        ("0:15", "CANCELLED"),
    ] {
        let s = Setup::new(0, "");
        let (rc, err) = s.run(
            "epilog.sh",
            &[("SLURM_JOB_ID", "42"), ("SLURM_JOB_EXIT_CODE2", code2)],
        );
        assert_eq!(rc, 0, "{err}");
        let mut want: Vec<String> = ["job", "end", "--job", "42", "--state", state]
            .map(String::from)
            .to_vec();
        want.extend(tail(&s));
        assert_eq!(s.argv().unwrap(), want, "{code2}");
    }
    // Only the wait(2) status: 9 is SIGKILL, 256 is exit 1.
    for (raw, state) in [("9", "CANCELLED"), ("256", "FAILED")] {
        let s = Setup::new(0, "");
        s.run(
            "epilog.sh",
            &[("SLURM_JOB_ID", "42"), ("SLURM_JOB_EXIT_CODE", raw)],
        );
        assert_eq!(s.argv().unwrap()[5], state, "{raw}");
    }
}

#[test]
fn bad_input_or_a_failing_keel_never_fails_the_job() {
    // A job id that is not one: keel is not called.
    let s = Setup::new(0, "");
    let (rc, err) = s.run(
        "prolog.sh",
        &[("SLURM_JOB_ID", "42; reboot"), ("SLURM_JOB_NODELIST", "vm")],
    );
    assert_eq!(rc, 0);
    assert!(err.contains("is not a job id"), "{err}");
    assert!(s.argv().is_none());
    // A node name that is not one.
    let (rc, err) = s.run(
        "prolog.sh",
        &[("SLURM_JOB_ID", "42"), ("SLURM_JOB_NODELIST", "vm,-x")],
    );
    assert_eq!(rc, 0);
    assert!(err.contains("is not valid"), "{err}");
    assert!(s.argv().is_none());
    // keel fails: logged, exit 0 all the same.
    let s = Setup::new(3, "");
    let (rc, err) = s.run("epilog.sh", &[("SLURM_JOB_ID", "42")]);
    assert_eq!(rc, 0);
    assert!(err.contains("failed (exit 3)"), "{err}");
    // Not configured: said so, exit 0.
    let s = Setup::new(0, "");
    std::fs::write(
        s.dir.path().join("slurm.env"),
        "KEEL_BIN=/bin/true\nBOGUS=1\n",
    )
    .unwrap();
    let (rc, err) = s.run(
        "prolog.sh",
        &[("SLURM_JOB_ID", "42"), ("SLURM_JOB_NODELIST", "vm")],
    );
    assert_eq!(rc, 0);
    assert!(
        err.contains("unknown key BOGUS") && err.contains("KEEL_CONTROLLER"),
        "{err}"
    );
    let (rc, err) =
        Setup::new(0, "").run_with_env_file("prolog.sh", Path::new("/nonexistent/slurm.env"));
    assert_eq!(rc, 0);
    assert!(err.contains("cannot read /nonexistent/slurm.env"), "{err}");
}

impl Setup {
    fn run_with_env_file(&self, name: &str, env_file: &Path) -> (i32, String) {
        let out = Command::new("sh")
            .arg(script(name))
            .env_clear()
            .env("KEEL_SLURM_ENV", env_file)
            .env("SLURM_JOB_ID", "1")
            .env("SLURM_JOB_NODELIST", "vm")
            .output()
            .expect("sh runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}
