//! Metric lines of a series already read, taken without parsing them again.
//!
//! A scrape writes the same series every interval: the same node, metric
//! name and labels, a new time and a new value. Prometheus keeps a scrape
//! cache for that reason, keyed by the series' text as scraped; this is the
//! same idea for trace lines. A line of the spec's own shape,
//!
//! ```text
//! {"t":"metric","ts":<number><middle: ,"node":..,"name":..,"labels":{..},"value":><number>}
//! ```
//!
//! is looked up by its middle bytes. A hit means the line is byte for byte
//! a line the full parser accepted, but for its two numbers, which are read
//! here (JSON's grammar, the same range checks as `trace_line`). Anything
//! else (another key order, whitespace, a `"NaN"` value, a time out of
//! range, a middle never seen) goes through the full parser, which then
//! teaches the cache the series.

use super::fast_line::number_at;
use super::trace_line::{Parsed, TS_MAX, TS_MIN};
use keel_model::{MetricLabels, MetricName, MetricSample, Name, Record};
use rustc_hash::FxHashMap;

const PREFIX: &[u8] = br#"{"t":"metric","ts":"#;
const VALUE_KEY: &[u8] = br#","value":"#;
/// Series remembered at once. When a new one would pass this, the cache is
/// emptied and starts again (counted in `SeriesCache::resets`): a trace
/// whose series keep changing costs parsing, never memory.
pub const SERIES_CACHED_MAX: usize = 32_768;
/// A longer middle (labels of a few hundred bytes) is not remembered.
const MIDDLE_MAX: usize = 512;

/// What a series' lines have in common.
struct Series {
    node: Name,
    /// The metric, or the name of one keel does not use.
    metric: Result<MetricName, Box<str>>,
    labels: MetricLabels,
    unknown_fields: u32,
}

/// What a line turned out to be, read from the cache.
pub(crate) enum Hit<'c> {
    Sample { record: Record, unknown_fields: u32 },
    UnknownMetric(&'c str),
}

#[derive(Default)]
pub(crate) struct SeriesCache {
    series: FxHashMap<Box<[u8]>, Series>,
    /// Times the cache was emptied for being full.
    pub(crate) resets: u64,
}

/// A line of the cached shape: its time, its middle and its value.
fn split(line: &[u8]) -> Option<(f64, &[u8], f64)> {
    if !line.starts_with(PREFIX) || line.last() != Some(&b'}') {
        return None;
    }
    let (ts, middle_at) = number_at(line, PREFIX.len())?;
    let colon = middle_at + memchr::memrchr(b':', &line[middle_at..])?;
    let middle = &line[middle_at..=colon];
    if middle.len() > MIDDLE_MAX || !middle.ends_with(VALUE_KEY) {
        return None;
    }
    let (value, end) = number_at(line, colon + 1)?;
    (end + 1 == line.len() && (TS_MIN..=TS_MAX).contains(&ts)).then_some((ts, middle, value))
}

impl SeriesCache {
    /// Reads `line` if its series is known.
    pub(crate) fn read(&self, line: &[u8]) -> Option<Hit<'_>> {
        let (ts, middle, value) = split(line)?;
        let s = self.series.get(middle)?;
        Some(match &s.metric {
            Ok(name) => Hit::Sample {
                record: Record::Metric(MetricSample {
                    ts,
                    node: s.node.clone(),
                    name: *name,
                    labels: s.labels.clone(),
                    value,
                }),
                unknown_fields: s.unknown_fields,
            },
            Err(unknown) => Hit::UnknownMetric(unknown),
        })
    }

    /// Remembers the series of a line the full parser read as `parsed`.
    pub(crate) fn learn(&mut self, line: &[u8], parsed: &Parsed<'_>) {
        let Some((ts, middle, value)) = split(line) else {
            return;
        };
        // The line's own `t`, `ts` and `value` must be the ones `split`
        // found: a repeated key in the middle would override them.
        for key in [&br#""t":"#[..], br#""ts":"#, br#""value":"#] {
            if memchr::memmem::find(&middle[..middle.len() - VALUE_KEY.len()], key).is_some() {
                return;
            }
        }
        let series = match parsed {
            Parsed::Record {
                record: Record::Metric(m),
                unknown_fields,
            } if m.ts == ts && m.value == value => Series {
                node: m.node.clone(),
                metric: Ok(m.name),
                labels: m.labels.clone(),
                unknown_fields: *unknown_fields,
            },
            Parsed::UnknownMetric(name) => Series {
                node: Name::default(),
                metric: Err(name.as_ref().into()),
                labels: MetricLabels::default(),
                unknown_fields: 0,
            },
            _ => return,
        };
        if self.series.len() >= SERIES_CACHED_MAX {
            self.series.clear();
            self.resets += 1;
        }
        self.series.insert(middle.into(), series);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::trace_line::parse_line;
    use proptest::prelude::*;

    /// Reads `lines` through the cache as the reader does, and each line
    /// through the full parser alone; both must say the same.
    fn agree(lines: &[String]) -> Result<usize, TestCaseError> {
        let mut cache = SeriesCache::default();
        let mut hits = 0;
        for (n, line) in lines.iter().enumerate() {
            let full = parse_line(line.as_bytes(), n as u64 + 1);
            match cache.read(line.as_bytes()) {
                Some(Hit::Sample {
                    record,
                    unknown_fields,
                }) => {
                    hits += 1;
                    prop_assert_eq!(
                        full,
                        Ok(Parsed::Record {
                            record,
                            unknown_fields
                        }),
                        "{}",
                        line
                    );
                }
                Some(Hit::UnknownMetric(name)) => {
                    hits += 1;
                    prop_assert_eq!(full, Ok(Parsed::UnknownMetric(name.into())), "{}", line);
                }
                None => {
                    if let Ok(p) = &full {
                        cache.learn(line.as_bytes(), p);
                    }
                }
            }
        }
        Ok(hits)
    }

    fn middle() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            r#","node":"n1","name":"DCGM_FI_DEV_GPU_UTIL","labels":{"gpu":"0"},"value":"#,
            r#","node":"n1","name":"DCGM_FI_DEV_GPU_UTIL","labels":{"gpu":"1","UUID":"GPU-1"},"value":"#,
            r#","node":"n2","name":"foo_total","labels":{},"value":"#,
            r#","node":"n2","name":"node_network_receive_bytes_total","labels":{"device":"eth0"},"extra":1,"value":"#,
            r#","node":"n2","name":"DCGM_FI_DEV_GPU_UTIL","labels":{"gpu":"0"},"ts":5,"value":"#,
            r#","node":"n2","name":"DCGM_FI_DEV_GPU_UTIL","labels":{"gpu":"0"},"value":"value":"#,
            r#","node":"n\u0033","name":"DCGM_FI_DEV_GPU_UTIL","value":"#,
            r#" ,"node":"n1","name":"DCGM_FI_DEV_FB_USED","labels":{"gpu":"0"},"value":"#,
            r#","node":"n1","name":"DCGM_FI_DEV_GPU_UTIL","labels":{"gpu":"0","gpu":"1"},"value":"#,
        ])
        .prop_map(String::from)
    }

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            (1.0e9f64..1.0e10).prop_map(|v| v.to_string()),
            (-1.0e6f64..1.0e6).prop_map(|v| v.to_string()),
            prop::sample::select(vec![
                "0", "-0", "01", "1.", "1e400", "5", "\"NaN\"", "1e-3", "1 ", "-", "97.0"
            ])
            .prop_map(String::from),
        ]
    }

    proptest! {
        /// A line read from the cache reads as the full parser reads it,
        /// whatever its numbers, and odd middles are never learned wrong.
        #[test]
        fn the_cache_and_the_parser_agree(
            parts in prop::collection::vec((number(), middle(), number(), any::<bool>()), 1..40)
        ) {
            let lines: Vec<String> = parts
                .iter()
                .map(|(ts, mid, v, tail)| {
                    format!("{}{ts}{mid}{v}{}", std::str::from_utf8(PREFIX).unwrap(), if *tail { "}" } else { "} " })
                })
                .collect();
            agree(&lines)?;
        }
    }

    #[test]
    fn a_series_seen_once_is_read_from_the_cache_after() {
        let lines: Vec<String> = (0..10)
            .map(|i| {
                format!(
                    r#"{{"t":"metric","ts":{},"node":"n1","name":"DCGM_FI_DEV_GPU_UTIL","labels":{{"gpu":"0","UUID":"GPU-x"}},"value":{i}.5}}"#,
                    1_763_800_000 + i
                )
            })
            .collect();
        assert_eq!(agree(&lines).unwrap(), 9);
    }
}
