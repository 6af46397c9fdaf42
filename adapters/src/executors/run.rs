//! Running the system's tools: argv only (no shell), `LC_ALL=C` so that the
//! messages parsed are the English ones, output captured and capped, and a
//! deadline after which the program is killed (a Slurm client retries for
//! a long time when the controller is away; an executor must answer).
//!
//! Executors take a [`Runner`] so that what they would run can be checked
//! without running it.

use super::ExecError;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The most output kept per stream (`squeue --json` of a large queue is a
/// few MiB).
pub const MAX_OUTPUT: u64 = 32 << 20;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What a finished program left.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    /// The exit code; None when a signal ended it.
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    pub fn status_text(&self) -> String {
        match self.status {
            Some(c) => format!("exit {c}"),
            None => "killed by a signal".to_string(),
        }
    }

    /// Stdout and stderr together, for matching error messages that
    /// programs print on either.
    pub fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs one argv and returns what it printed, whatever its exit status; an
/// error only when it could not run at all.
pub trait Runner {
    fn run(&mut self, argv: &[String]) -> Result<Output, ExecError>;
}

/// The real thing.
#[derive(Debug, Clone)]
pub struct SystemRunner {
    pub timeout: Duration,
}

impl Default for SystemRunner {
    fn default() -> Self {
        SystemRunner {
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl Runner for SystemRunner {
    fn run(&mut self, argv: &[String]) -> Result<Output, ExecError> {
        run_with_deadline(argv, self.timeout)
    }
}

/// Which Debian package holds a program, for "not found" errors.
pub fn package_of(program: &str) -> &'static str {
    let base = program.rsplit('/').next().unwrap_or(program);
    match base {
        "squeue" | "scontrol" | "scancel" | "sinfo" | "sbatch" => {
            "the Slurm client (Debian: apt-get install -y slurm-client)"
        }
        "ethtool" => "ethtool (Debian: apt-get install -y ethtool)",
        "ip" => "iproute2 (Debian: apt-get install -y iproute2)",
        "haproxy" => "haproxy (Debian: apt-get install -y haproxy)",
        "kill" => "procps (Debian: apt-get install -y procps)",
        "nvidia-smi" => "the NVIDIA driver's utilities (nvidia-smi ships with the driver)",
        _ => "the package that provides it",
    }
}

/// An argv as one readable line, quoting what needs it (for messages only;
/// nothing is ever passed to a shell).
pub fn show(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `argv` and turns a non-zero exit into `ExecError::Failed`.
pub fn checked(runner: &mut dyn Runner, argv: &[String]) -> Result<Output, ExecError> {
    let out = runner.run(argv)?;
    if out.success() {
        Ok(out)
    } else {
        Err(failed(argv, &out))
    }
}

pub fn failed(argv: &[String], out: &Output) -> ExecError {
    let mut stderr = out.stderr.trim().to_string();
    if stderr.is_empty() {
        stderr = out.stdout.trim().to_string();
    }
    if stderr.len() > 2000 {
        let mut cut = 2000;
        while !stderr.is_char_boundary(cut) {
            cut -= 1;
        }
        stderr.truncate(cut);
        stderr.push_str("...");
    }
    ExecError::Failed {
        argv: show(argv),
        status: out.status_text(),
        stderr,
    }
}

/// `argv` as owned strings, from anything string-like.
pub fn argv<I, S>(parts: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    parts.into_iter().map(Into::into).collect()
}

fn run_with_deadline(argv: &[String], timeout: Duration) -> Result<Output, ExecError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(ExecError::invalid("argv", "", "empty command line"));
    };
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => ExecError::Missing {
                program: program.clone(),
                package: package_of(program),
            },
            _ => ExecError::Io {
                what: format!("starting {}", show(argv)),
                error,
            },
        })?;
    // Both pipes are drained on their own threads, so that a program filling
    // one while we wait on the other cannot stall.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(p) = pipe {
                let _ = p.take(MAX_OUTPUT).read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ExecError::Io {
                    what: format!("waiting for {}", show(argv)),
                    error,
                });
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Ok(s) => Ok(Output {
            status: s.code(),
            stdout,
            stderr,
        }),
        Err(()) => Err(ExecError::Failed {
            argv: show(argv),
            status: format!("timed out after {timeout:?}, killed"),
            stderr: stderr.trim().to_string(),
        }),
    }
}

/// A runner that answers from a script and records what it was asked to
/// run: for unit tests of the executors' logic.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Scripted {
    /// (argv prefix, answer), consumed first match first.
    pub answers: Vec<(Vec<String>, Output)>,
    pub ran: Vec<Vec<String>>,
}

#[cfg(test)]
impl Scripted {
    pub fn answer(&mut self, prefix: &[&str], status: i32, stdout: &str, stderr: &str) {
        self.answers.push((
            argv(prefix.iter().copied()),
            Output {
                status: Some(status),
                stdout: stdout.into(),
                stderr: stderr.into(),
            },
        ));
    }
}

#[cfg(test)]
impl Runner for Scripted {
    fn run(&mut self, argv: &[String]) -> Result<Output, ExecError> {
        self.ran.push(argv.to_vec());
        let at = self
            .answers
            .iter()
            .position(|(prefix, _)| argv.starts_with(prefix))
            .ok_or_else(|| ExecError::invalid("argv", &show(argv), "not scripted"))?;
        Ok(self.answers.remove(at).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_names_its_package() {
        let e = SystemRunner::default()
            .run(&argv(["/nonexistent/scontrol", "ping"]))
            .unwrap_err();
        assert!(e.to_string().contains("slurm-client"), "{e}");
    }

    #[test]
    fn output_and_status_come_back_and_a_slow_program_is_killed() {
        let mut r = SystemRunner::default();
        let out = r
            .run(&argv(["sh", "-c", "echo out; echo err >&2; exit 3"]))
            .unwrap();
        assert_eq!(
            (out.status, out.stdout.as_str(), out.stderr.as_str()),
            (Some(3), "out\n", "err\n")
        );
        r.timeout = Duration::from_millis(200);
        let e = r.run(&argv(["sleep", "10"])).unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
    }

    #[test]
    fn show_quotes_what_a_shell_would_split() {
        assert_eq!(
            show(&argv(["scontrol", "update", "Reason=keel: it's slow"])),
            r"scontrol update 'Reason=keel: it'\''s slow'"
        );
    }
}
