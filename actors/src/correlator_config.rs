//! A correlator host's configuration (`keel correlator --config FILE`),
//! the detectors' thresholds included, checked where it is read.

use anyhow::{Context, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::client::ControllerAddr;

/// `keel correlator --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrelatorConfig {
    /// Where sensors reach this host.
    pub listen: SocketAddr,
    /// The address announced to the controller when `listen` is a wildcard.
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// `cert.pem`, `key.pem` and `ca.pem`; the role must be `correlator`.
    pub credentials: PathBuf,
    pub controllers: Vec<ControllerAddr>,
    /// Whether a summary's time is checked against this host's clock
    /// (within `keel_detect::edge::CLOCK_GAP_MAX_S`). Turn it off only
    /// for hosts fed by replayed traces, whose time is not now (`keel
    /// demo`, `keel live`).
    #[serde(default = "yes")]
    pub check_clock: bool,
    /// The detectors' thresholds (`[detect]`, `[detect.straggler]`, ...):
    /// any field of `keel_detect::Config` left out keeps its documented
    /// default (`detect/src/config.rs`).
    #[serde(default)]
    pub detect: keel_detect::Config,
}

fn yes() -> bool {
    true
}

impl CorrelatorConfig {
    pub fn load(path: &Path) -> Result<CorrelatorConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        // toml's errors name the line, column and key.
        let cfg: CorrelatorConfig =
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        if let Some(table) = toml::from_str::<toml::Table>(&text)
            .ok()
            .and_then(|t| t.get("detect").cloned())
        {
            check_thresholds("detect", &table)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        Ok(cfg)
    }
}

/// Every threshold is a finite number, none negative: a NaN or a negative
/// window would silently switch a detector off.
fn check_thresholds(at: &str, v: &toml::Value) -> std::result::Result<(), String> {
    match v {
        toml::Value::Float(x) if !x.is_finite() || *x < 0.0 => Err(format!(
            "`{at}` = {x}: a threshold must be a finite number, not negative"
        )),
        toml::Value::Integer(x) if *x < 0 => {
            Err(format!("`{at}` = {x}: a threshold must not be negative"))
        }
        toml::Value::Table(t) => t
            .iter()
            .try_for_each(|(k, v)| check_thresholds(&format!("{at}.{k}"), v)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod config_tests {
    use super::CorrelatorConfig;

    fn load(extra: &str) -> anyhow::Result<CorrelatorConfig> {
        let dir = std::env::temp_dir().join(format!("keel-corr-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("c{}.toml", extra.len()));
        std::fs::write(
            &path,
            format!("listen = \"127.0.0.1:7500\"\ncredentials = \"/x\"\ncontrollers = []\n{extra}"),
        )
        .unwrap();
        CorrelatorConfig::load(&path)
    }

    #[test]
    fn thresholds_are_set_per_detector_and_checked_where_they_are_read() {
        let c = load("[detect.straggler]\nlate_share = 0.05\n[detect.hang]\nmin_silence_s = 4.0\n")
            .unwrap();
        assert_eq!(c.detect.straggler.late_share, 0.05);
        assert_eq!(c.detect.hang.min_silence_s, 4.0);
        // The rest keep their defaults.
        let d = keel_detect::Config::default();
        assert_eq!(c.detect.straggler.window, d.straggler.window);
        assert_eq!(c.detect.squatter, d.squatter);

        let e = format!(
            "{:#}",
            load("[detect.straggler]\nlate_shar = 0.05\n").unwrap_err()
        );
        assert!(e.contains("late_shar") && e.contains("line 5"), "{e}");
        let e = format!(
            "{:#}",
            load("[detect.straggler]\nlate_share = \"x\"\n").unwrap_err()
        );
        assert!(e.contains("line 5"), "{e}");
        let e = format!(
            "{:#}",
            load("[detect.straggler]\nlate_share = -0.1\n").unwrap_err()
        );
        assert!(e.contains("detect.straggler.late_share"), "{e}");
        let e = format!(
            "{:#}",
            load("[detect.straggler]\nlate_share = nan\n").unwrap_err()
        );
        assert!(e.contains("finite"), "{e}");
    }
}
