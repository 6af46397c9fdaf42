//! The controller's configuration file (`keel controller --config FILE`).

use super::history;
use anyhow::{bail, Context, Result};
use keel_transport::Options;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Links between replicas notice a dead peer within about a second.
pub fn replica_options() -> Options {
    Options {
        timing: keel_transport::Timing {
            idle_timeout: Duration::from_millis(1500),
            keep_alive: Duration::from_millis(300),
        },
        ..Options::default()
    }
}

/// `keel controller --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This replica's Raft id (non-zero, unique in the cluster).
    pub id: u64,
    /// Address to listen on for peers, sensors, correlators and operators.
    pub listen: SocketAddr,
    /// Where the Raft log, hard state and snapshots live (created if absent).
    pub data_dir: PathBuf,
    /// A folder with this replica's `cert.pem`, `key.pem` and the cluster
    /// `ca.pem` (the role must be `controller`).
    pub credentials: PathBuf,
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Start as a new member of a running cluster (see `keel controller join`).
    #[serde(default)]
    pub join: bool,
    /// How long closed findings, finished actions and audit events stay in
    /// the replicated state before they move to `<data_dir>/history.jsonl`.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Which executors may greet, with which nodes and actions (`[[executors]]`).
    /// Empty (the default): any executor certificate may greet with any.
    #[serde(default)]
    pub executors: Vec<ExecutorAllowed>,
}

/// `[[executors]]` of the controller's config: what one executor (by its
/// certificate's name) may carry out, and for which nodes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorAllowed {
    pub name: String,
    /// Node names, or `["*"]` for any.
    pub nodes: Vec<String>,
    /// Action names (`reclaim_zombie`, `drain_node`, ...).
    pub actions: Vec<String>,
}

/// Whether executor `name` may greet with `nodes` and `actions` under
/// `allowed` (`[[executors]]`; empty allows anything). The error names
/// what is not allowed.
pub fn executor_may(
    allowed: &[ExecutorAllowed],
    name: &str,
    nodes: &[String],
    actions: &[&str],
) -> std::result::Result<(), String> {
    if allowed.is_empty() {
        return Ok(());
    }
    let Some(a) = allowed.iter().find(|a| a.name == name) else {
        return Err(format!(
            "executor {name} is not in the controller's [[executors]]"
        ));
    };
    let any_node = a.nodes.iter().any(|n| n == "*");
    let nodes_out: Vec<&str> = nodes
        .iter()
        .filter(|n| !any_node && !a.nodes.contains(n))
        .map(String::as_str)
        .collect();
    let actions_out: Vec<&str> = actions
        .iter()
        .copied()
        .filter(|x| !a.actions.iter().any(|y| y == x))
        .collect();
    if nodes_out.is_empty() && actions_out.is_empty() {
        return Ok(());
    }
    Err(format!(
        "executor {name} greeted beyond its [[executors]] entry: nodes {nodes_out:?}, actions {actions_out:?}"
    ))
}

/// `[retention]` of the controller's config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// How long to keep what is closed: seconds, or a duration such as
    /// `"7d"`, `"12h"`, `"30m"` (default 7 days).
    #[serde(default)]
    pub keep: Option<Span>,
    /// How often the leader checks what is due, like `keep` (default 60 s).
    #[serde(default)]
    pub every: Option<Span>,
}

/// A length of time in a config: seconds, or text with a unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Span {
    Seconds(f64),
    Text(String),
}

impl Span {
    pub fn seconds(&self) -> Result<f64> {
        match self {
            Span::Seconds(s) if s.is_finite() && *s >= 0.0 => Ok(*s),
            Span::Seconds(s) => bail!("{s} is not a duration"),
            Span::Text(t) => history::parse_duration(t),
        }
    }
}

impl RetentionConfig {
    /// The retention rules this config asks for.
    pub fn rules(&self) -> Result<keel_consensus::retention::Retention> {
        let mut r = keel_consensus::retention::Retention::default();
        if let Some(keep) = &self.keep {
            r.keep_s = keep.seconds().context("[retention] keep")?;
        }
        if let Some(every) = &self.every {
            r.every_s = every.seconds().context("[retention] every")?;
        }
        Ok(r)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u64,
    pub addr: SocketAddr,
    /// The name in the peer's certificate (checked when connecting).
    pub name: String,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: Config = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        if cfg.id == 0 {
            bail!("{}: field `id` must be non-zero", path.display());
        }
        if cfg.peers.iter().any(|p| p.id == cfg.id) {
            bail!(
                "{}: peer id {} is this replica's own id",
                path.display(),
                cfg.id
            );
        }
        cfg.retention
            .rules()
            .with_context(|| format!("{}", path.display()))?;
        Ok(cfg)
    }
}
