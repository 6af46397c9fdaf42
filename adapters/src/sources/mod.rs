//! Telemetry sources, one module (or folder) each, each with its config
//! type beside it, and the registry that maps a sensor config's
//! `[[source]]` table to them by its `type`:
//!
//! ```toml
//! [[source]]
//! type = "nccl_inspector"
//! dir = "/var/log/nccl-inspector"
//! ```
//!
//! A source read on a timer implements [`Timed`] and opens itself from
//! its config ([`Source::timed`]), so that the sensor runs it without
//! knowing it: adding one touches its own module and one line of
//! `registry!` below. (`replay` and `push` are driven by the sensor
//! itself: one plays a trace against the sensor's clock, the other waits
//! on a socket.)

mod fast_line;
pub mod linux;
pub mod nccl_inspector;
pub mod nvml;
pub mod prometheus;
pub mod push;
pub mod push_peer;
mod push_unix;
mod reorder;
pub mod replay;
pub mod scrape;
pub mod series_cache;
pub mod trace_line;

use keel_model::{Name, Record};
use serde::{Deserialize, Deserializer, Serialize};
use std::time::Duration;

/// What [`Source::timed`] gives: `None` for a source the sensor drives
/// itself; else how often to read the source and its reader, or why it
/// cannot be opened.
pub type Opened = Option<Result<(Duration, Box<dyn Timed>), String>>;

/// What every source's config says about its source.
pub trait Source {
    /// One line for logs: which source, reading what.
    fn describe(&self) -> String;

    /// For a source read on a timer: how often, and the reader for the
    /// sensor of `node`; the error says why it cannot be opened. `None`
    /// for a source the sensor drives itself (`replay`, `push`).
    fn timed(&self, _node: &Name) -> Opened {
        None
    }
}

/// A source read on a timer: a scrape, counters, NVML, dump files.
pub trait Timed: Send + 'static {
    /// One reading at `now` (Unix seconds, the sensor's clock): the
    /// records read, or why nothing could be read this time. It may block
    /// (the sensor calls it off its own thread).
    fn read(&mut self, now: f64) -> Result<Vec<Record>, String>;

    /// What the source refused or dropped since it was opened.
    fn counters(&self) -> SourceCounters {
        SourceCounters::default()
    }
}

/// What a source refused or dropped, since it was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SourceCounters {
    /// Input that did not parse or held a value out of range.
    pub bad: u64,
    /// Input dropped at one of the source's bounds.
    pub dropped: u64,
    /// The last bad input, named (`file:line: why`).
    pub last_error: Option<String>,
}

/// The interval of a timed source, at least 10 ms.
pub fn interval(ms: u64) -> Duration {
    Duration::from_millis(ms.max(10))
}

macro_rules! registry {
    ($($(#[$doc:meta])* $variant:ident($config:ty) = $name:literal,)*) => {
        /// One `[[source]]` table of a sensor's config, chosen by its
        /// `type` (the older spelling `kind` is still read, with a warning).
        #[derive(Debug, Clone, PartialEq)]
        pub enum SourceConfig {
            $($(#[$doc])* $variant($config),)*
        }

        impl SourceConfig {
            /// Every `type` a `[[source]]` may name.
            pub const TYPES: &'static [&'static str] = &[$($name),*];

            /// This source's `type`.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $(SourceConfig::$variant(_) => $name,)*
                }
            }

            fn source(&self) -> &dyn Source {
                match self {
                    $(SourceConfig::$variant(c) => c,)*
                }
            }

            fn of_type(ty: &str, table: serde_json::Value) -> Result<SourceConfig, String> {
                match ty {
                    $($name => serde_json::from_value::<$config>(table)
                        .map(SourceConfig::$variant)
                        .map_err(|e| format!("source type {ty:?}: {e}")),)*
                    other => Err(format!(
                        "unknown source type {other:?}, expected one of {:?}",
                        SourceConfig::TYPES
                    )),
                }
            }
        }
    };
}

registry! {
    /// A recorded trace (`spec/trace-format.md`), played in real time or faster.
    Replay(replay::ReplayConfig) = "replay",
    /// A Prometheus text endpoint: dcgm-exporter, vLLM, node-exporter.
    Prometheus(scrape::PrometheusConfig) = "prometheus",
    /// `/proc/net/snmp`, `/sys/class/net/*/statistics`, `/proc/pressure/cpu`.
    Linux(linux::LinuxConfig) = "linux",
    /// Collective timings and other trace records pushed as datagrams.
    Push(push::PushConfig) = "push",
    /// GPU readings from NVML (builds with the `nvml` feature).
    Nvml(nvml::NvmlConfig) = "nvml",
    /// NCCL Inspector's per-rank collective records, tailed from its dump files.
    NcclInspector(nccl_inspector::NcclInspectorConfig) = "nccl_inspector",
}

impl SourceConfig {
    /// A push source on `listen` with the default options.
    pub fn push(listen: impl Into<String>) -> SourceConfig {
        SourceConfig::Push(push::PushConfig::new(listen))
    }

    /// One line for logs: which source, reading what.
    pub fn describe(&self) -> String {
        self.source().describe()
    }

    /// See [`Source::timed`].
    pub fn timed(&self, node: &Name) -> Opened {
        self.source().timed(node)
    }
}

impl<'de> Deserialize<'de> for SourceConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let ty = match (table.remove("type"), table.remove("kind")) {
            (Some(_), Some(_)) => {
                return Err(D::Error::custom(
                    "a [[source]] names its type once: `type`, not also `kind`",
                ))
            }
            (Some(t), None) => t,
            (None, Some(t)) => {
                tracing::warn!(
                    kind = %t,
                    "a [[source]] names its type with `kind`, the older spelling: write `type = {t}`"
                );
                t
            }
            (None, None) => {
                return Err(D::Error::custom(format!(
                    "a [[source]] needs `type`, one of {:?}",
                    SourceConfig::TYPES
                )))
            }
        };
        let serde_json::Value::String(ty) = ty else {
            return Err(D::Error::custom(format!(
                "a [[source]]'s `type` is a string, not {ty}"
            )));
        };
        SourceConfig::of_type(&ty, serde_json::Value::Object(table)).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<SourceConfig, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_source_is_named_by_type_and_kind_is_still_read() {
        let by_type = one(r#"{"type":"push","listen":"udp://127.0.0.1:7600"}"#).unwrap();
        let by_kind = one(r#"{"kind":"push","listen":"udp://127.0.0.1:7600"}"#).unwrap();
        assert_eq!(by_type, by_kind);
        assert_eq!(by_type, SourceConfig::push("udp://127.0.0.1:7600"));
        assert_eq!(by_type.type_name(), "push");
        let inspector =
            one(r#"{"type":"nccl_inspector","dir":"/var/log/nccl-inspector"}"#).unwrap();
        assert_eq!(
            inspector,
            SourceConfig::NcclInspector(nccl_inspector::NcclInspectorConfig::new(
                "/var/log/nccl-inspector"
            ))
        );
        assert!(inspector.describe().contains("/var/log/nccl-inspector"));
    }

    #[test]
    fn a_source_table_names_its_type_once_and_only_known_fields() {
        let both = one(r#"{"type":"push","kind":"push","listen":"/s"}"#).unwrap_err();
        assert!(both.contains("not also `kind`"), "{both}");
        let none = one(r#"{"listen":"/s"}"#).unwrap_err();
        assert!(
            none.contains("needs `type`") && none.contains("nccl_inspector"),
            "{none}"
        );
        let unknown = one(r#"{"type":"kafka"}"#).unwrap_err();
        assert!(
            unknown.contains("unknown source type \"kafka\""),
            "{unknown}"
        );
        let typo = one(r#"{"type":"linux","intervall_ms":5}"#).unwrap_err();
        assert!(typo.contains("intervall_ms"), "{typo}");
        let number = one(r#"{"type":3}"#).unwrap_err();
        assert!(number.contains("is a string"), "{number}");
    }
}
