//! Which controller replicas an operator's command asks, and as whom.
//!
//! Looked up in this order: the flags (`--controller`, `--name`,
//! `--credentials`); then the environment (`KEEL_CONTROLLER`,
//! `KEEL_CONTROLLERS`: comma lists of `NAME=ADDR`; `KEEL_CREDENTIALS`); then
//! the first context file that exists of `$KEEL_CONFIG`,
//! `$XDG_CONFIG_HOME/keel/cli.toml` (`~/.config/keel/cli.toml` without it)
//! and `/etc/keel/cli.toml`:
//!
//! ```toml
//! credentials = "/etc/keel/op"   # a folder with an operator certificate
//! [[controllers]]
//! name = "ctl-1"                  # the name in the replica's certificate
//! addr = "10.0.0.11:7400"
//! ```
//!
//! The replicas are asked in order: the first one that can be reached answers.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A context file (`cli.toml`).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    /// A folder with an operator certificate; relative to the file's folder.
    pub credentials: Option<PathBuf>,
    #[serde(default)]
    pub controllers: Vec<Replica>,
}

/// One controller replica: the name in its certificate, and where it listens.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Replica {
    pub name: String,
    /// `HOST:PORT` or `IP:PORT`
    pub addr: String,
}

/// What the command line gave.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub controller: Option<String>,
    pub name: Option<String>,
    pub credentials: Option<PathBuf>,
}

/// The replicas to ask, in order, and the operator's credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub replicas: Vec<Replica>,
    pub credentials: PathBuf,
}

/// A place a context file may be.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub path: PathBuf,
    /// `$KEEL_CONFIG` names a file that must exist.
    pub required: bool,
}

/// Reads a context file; an error names the file and the line.
pub fn parse_file(path: &Path, text: &str) -> Result<CliConfig> {
    let mut cfg: CliConfig = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |s| {
            text[..s.start.min(text.len())].matches('\n').count() + 1
        });
        anyhow::anyhow!("{}:{line}: {}", path.display(), e.message().trim_end())
    })?;
    for (i, r) in cfg.controllers.iter().enumerate() {
        if r.name.trim().is_empty() || r.addr.trim().is_empty() {
            bail!(
                "{}: controller {} of [[controllers]] needs a name and an addr",
                path.display(),
                i + 1
            );
        }
    }
    if let Some(c) = cfg.credentials.take() {
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.credentials = Some(if c.is_relative() { base.join(c) } else { c });
    }
    Ok(cfg)
}

/// `NAME=ADDR,NAME=ADDR` (the value of `var`).
pub fn parse_list(var: &str, value: &str) -> Result<Vec<Replica>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| match item.split_once('=') {
            Some((name, addr)) if !name.trim().is_empty() && !addr.trim().is_empty() => {
                Ok(Replica {
                    name: name.trim().to_string(),
                    addr: addr.trim().to_string(),
                })
            }
            _ => bail!("{var}: {item:?} is not NAME=ADDR (e.g. ctl-1=10.0.0.11:7400)"),
        })
        .collect()
}

/// Where context files are looked for, in order.
pub fn candidates(env: &dyn Fn(&str) -> Option<String>) -> Vec<Candidate> {
    let mut out = Vec::new();
    if let Some(p) = env("KEEL_CONFIG").filter(|p| !p.is_empty()) {
        out.push(Candidate {
            path: p.into(),
            required: true,
        });
    }
    let config_home = env("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".config")));
    if let Some(dir) = config_home {
        out.push(Candidate {
            path: dir.join("keel").join("cli.toml"),
            required: false,
        });
    }
    out.push(Candidate {
        path: "/etc/keel/cli.toml".into(),
        required: false,
    });
    out
}

/// The first context file that exists, read; and what was tried, for errors.
struct Files<'a> {
    candidates: &'a [Candidate],
    read: Option<Option<(PathBuf, CliConfig)>>,
}

impl Files<'_> {
    fn get(&mut self) -> Result<Option<&(PathBuf, CliConfig)>> {
        if self.read.is_none() {
            let mut found = None;
            for c in self.candidates {
                match std::fs::read_to_string(&c.path) {
                    Ok(text) => {
                        found = Some((c.path.clone(), parse_file(&c.path, &text)?));
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && !c.required => {}
                    Err(e) => {
                        let how = if c.required { "KEEL_CONFIG=" } else { "" };
                        return Err(e).with_context(|| format!("{how}{}", c.path.display()));
                    }
                }
            }
            self.read = Some(found);
        }
        Ok(self.read.as_ref().and_then(Option::as_ref))
    }

    /// What was tried, for an error saying nothing was found.
    fn tried(&mut self, what: &str) -> String {
        let found = self.get().ok().flatten().map(|(p, _)| p.clone());
        let mut parts = Vec::new();
        if !self.candidates.iter().any(|c| c.required) {
            parts.push("$KEEL_CONFIG (unset)".to_string());
        }
        for c in self.candidates {
            let state = match &found {
                Some(p) if p == &c.path => format!("has no {what}"),
                Some(_) => "not read".into(),
                None => "not found".into(),
            };
            parts.push(format!("{} ({state})", c.path.display()));
        }
        parts.join(", ")
    }
}

/// The flags, else the environment, else the first context file.
pub fn resolve(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<String>,
    candidates: &[Candidate],
) -> Result<Target> {
    let mut files = Files {
        candidates,
        read: None,
    };
    let mut from_env = Vec::new();
    for var in ["KEEL_CONTROLLER", "KEEL_CONTROLLERS"] {
        if let Some(v) = env(var) {
            from_env.extend(parse_list(var, &v)?);
        }
    }
    // The replicas the environment or the file name, for --name alone or
    // --controller alone.
    let known = |files: &mut Files| -> Result<Vec<Replica>> {
        if !from_env.is_empty() {
            return Ok(from_env.clone());
        }
        Ok(files
            .get()?
            .map(|(_, c)| c.controllers.clone())
            .unwrap_or_default())
    };
    let replicas = match (&flags.controller, &flags.name) {
        (Some(addr), Some(name)) => vec![Replica {
            name: name.clone(),
            addr: addr.clone(),
        }],
        (Some(addr), None) => {
            let Some(r) = known(&mut files)?.into_iter().find(|r| &r.addr == addr) else {
                bail!(
                    "--controller {addr}: give --name too (the name in its certificate); \
                     no replica of KEEL_CONTROLLER(S) or the context file is at {addr}"
                );
            };
            vec![r]
        }
        (None, Some(name)) => {
            let all = known(&mut files)?;
            let Some(r) = all.iter().find(|r| &r.name == name) else {
                let names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
                bail!(
                    "--name {name}: give --controller ADDR too; the known replicas are {names:?} \
                     (KEEL_CONTROLLER(S), else the context file)"
                );
            };
            vec![r.clone()]
        }
        (None, None) => {
            let all = known(&mut files)?;
            if all.is_empty() {
                bail!(
                    "no controller to ask: give --controller ADDR --name NAME, or set \
                     KEEL_CONTROLLER / KEEL_CONTROLLERS (NAME=ADDR,...), or list \
                     [[controllers]] in a context file; tried {}",
                    files.tried("[[controllers]]")
                );
            }
            all
        }
    };
    let credentials = match (&flags.credentials, env("KEEL_CREDENTIALS")) {
        (Some(c), _) => c.clone(),
        (None, Some(c)) if !c.is_empty() => c.into(),
        _ => match files.get()?.and_then(|(_, c)| c.credentials.clone()) {
            Some(c) => c,
            None => bail!(
                "no operator credentials: give --credentials DIR, or set KEEL_CREDENTIALS, \
                 or `credentials = \"DIR\"` in a context file; tried {}",
                files.tried("credentials")
            ),
        },
    };
    Ok(Target {
        replicas,
        credentials,
    })
}

/// [`resolve`] with this process's environment and files.
pub fn resolve_here(flags: &Flags) -> Result<Target> {
    let env = |k: &str| std::env::var(k).ok();
    resolve(flags, &env, &candidates(&env))
}

/// The lookup, for `keel --help` and the manual page.
pub const ABOUT: &str = "\
Commands that ask the controller (findings, jobs, routes, status, actions, \
pause, resume, job, policy apply/explain, action, chaos inject, controller \
join/leave) find its replicas and the operator's credentials in this order: \
the flags --controller ADDR --name NAME --credentials DIR; then \
KEEL_CONTROLLER / KEEL_CONTROLLERS (NAME=ADDR,...) and KEEL_CREDENTIALS; then \
the first of $KEEL_CONFIG, $XDG_CONFIG_HOME/keel/cli.toml \
(~/.config/keel/cli.toml) and /etc/keel/cli.toml, a TOML file with \
`credentials = \"DIR\"` and [[controllers]] tables of name and addr. The \
replicas are tried in order: one that cannot be reached is passed over (-v \
says which one answered); one that refuses is an error.";

/// Which controller to ask, and as whom: each flag optional, the rest from
/// the environment or the context file (see [`resolve`]).
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct ControllerAt {
    /// The controller's address (default: KEEL_CONTROLLER(S), else the
    /// context file's [[controllers]], tried in order)
    #[arg(long, value_name = "ADDR")]
    pub(crate) controller: Option<String>,
    /// The name in the controller's certificate (alone: that replica of the
    /// context)
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// A folder with an operator certificate (`keel cert issue --role
    /// operator`; default: KEEL_CREDENTIALS, else the context file's)
    #[arg(long, value_name = "DIR")]
    pub(crate) credentials: Option<PathBuf>,
    /// Say on standard error which replica answered
    #[arg(short = 'v', long)]
    pub(crate) verbose: bool,
}

impl ControllerAt {
    /// One replica, named outright.
    pub(crate) fn one(addr: std::net::SocketAddr, name: &str, credentials: PathBuf) -> Self {
        ControllerAt {
            controller: Some(addr.to_string()),
            name: Some(name.to_string()),
            credentials: Some(credentials),
            verbose: false,
        }
    }

    /// The replicas to ask and the credentials, from the flags, the
    /// environment or the context file.
    pub(crate) fn target(&self) -> Result<Target> {
        resolve_here(&Flags {
            controller: self.controller.clone(),
            name: self.name.clone(),
            credentials: self.credentials.clone(),
        })
    }
}

#[cfg(test)]
#[path = "context_tests.rs"]
mod tests;
