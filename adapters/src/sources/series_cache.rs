//! Metric and collective lines of a series already read, taken without
//! parsing them again.
//!
//! A scrape writes the same series every interval: the same node, metric
//! name and labels, a new time and a new value. Prometheus keeps a scrape
//! cache for that reason, keyed by the series' text as scraped; this is the
//! same idea for trace lines. A rank's collective records likewise repeat
//! its node, job, rank and operation, and only their timings change. A
//! line of one of the spec's own two shapes,
//!
//! ```text
//! {"t":"metric","ts":<number><middle: ,"node":..,"name":..,"labels":{..},"value":><number>}
//! {"t":"collective","ts":<number><middle: ,"node":..,"job":..,"rank":..,"op":..,"seq":><seq>,"bytes":<bytes>,"arrive":<number>,"dur_us":<number>}
//! ```
//!
//! is looked up by its middle bytes. A hit means the line is byte for byte
//! a line the full parser accepted, but for its numbers, which are read
//! here (JSON's grammar, the same range checks as `trace_line`). Anything
//! else (another key order, whitespace, a `"NaN"` value, a time out of
//! range, a middle never seen) goes through the full parser, which then
//! teaches the cache the series.

use super::fast_line::{number_at, uint_at};
use super::trace_line::{Parsed, TS_MAX, TS_MIN};
use hashbrown::HashTable;
use keel_model::{CollectiveRecord, MetricLabels, MetricName, MetricSample, Name, Record};
use memchr::memmem::Finder;
use rustc_hash::FxBuildHasher;
use std::hash::BuildHasher;

const METRIC_PREFIX: &[u8] = br#"{"t":"metric","ts":"#;
const VALUE_KEY: &[u8] = br#","value":"#;
const COLLECTIVE_PREFIX: &[u8] = br#"{"t":"collective","ts":"#;
const SEQ_KEY: &[u8] = br#","seq":"#;
const BYTES_KEY: &[u8] = br#","bytes":"#;
const ARRIVE_KEY: &[u8] = br#","arrive":"#;
const DUR_KEY: &[u8] = br#","dur_us":"#;
/// Keys whose value the cache reads from the line itself: a middle that
/// holds one of them as well is never learned (which of the two counts
/// is the full parser's business).
const OWN_KEYS: [&[u8]; 7] = [
    br#""t":"#,
    br#""ts":"#,
    br#""value":"#,
    br#""seq":"#,
    br#""bytes":"#,
    br#""arrive":"#,
    br#""dur_us":"#,
];
/// Series remembered at once. When a new one would pass this, the cache is
/// emptied and starts again (counted in `SeriesCache::resets`): a trace
/// whose series keep changing costs parsing, never memory.
pub const SERIES_CACHED_MAX: usize = 32_768;
/// A longer middle (labels of a few hundred bytes) is not remembered.
const MIDDLE_MAX: usize = 512;

/// What a series' lines have in common.
enum Series {
    Metric {
        node: Name,
        /// The metric, or the name of one keel does not use.
        metric: Result<MetricName, Box<str>>,
        labels: MetricLabels,
        unknown_fields: u32,
    },
    Collective {
        node: Name,
        job: Name,
        rank: u32,
        op: Name,
        unknown_fields: u32,
    },
}

/// What a line turned out to be, read from the cache.
pub(crate) enum Hit {
    Record {
        record: Record,
        unknown_fields: u32,
    },
    /// A sample of a metric keel does not use, counted here (see
    /// `SeriesCache::take_skipped`).
    UnknownMetric,
}

/// The numbers that change from one line of a series to the next.
#[derive(Clone, Copy, PartialEq)]
enum Tail {
    /// A metric's `value`.
    Value(f64),
    /// A collective's `seq`, `bytes`, `arrive` and `dur_us`.
    Timing {
        seq: u64,
        bytes: u64,
        arrive: f64,
        dur_us: f64,
    },
}

/// No entry.
const NONE: u32 = u32::MAX;

/// The last `ts` read from a line's text and its value. A scrape stamps
/// all its series with one time, so most lines repeat the one before's:
/// comparing 16 bytes is cheaper than reading 14 digits again.
#[derive(Default)]
struct LastTs {
    text: u128,
    /// Bytes of `text` that are the number (0: none yet).
    len: usize,
    value: f64,
}

impl LastTs {
    /// `line[at..]` as a little-endian word, if 16 bytes are there.
    fn word(line: &[u8], at: usize) -> Option<u128> {
        Some(u128::from_le_bytes(line.get(at..at + 16)?.try_into().ok()?))
    }

    /// The number at `at` and where it ends, as `number_at` reads it.
    fn read(&mut self, line: &[u8], at: usize) -> Option<(f64, usize)> {
        if let (1..=16, Some(word)) = (self.len, Self::word(line, at)) {
            let mask = u128::MAX >> (128 - 8 * self.len);
            // The same text, and the number ends where it ended: nothing
            // after it could make it another number.
            let ends = !matches!(
                line.get(at + self.len),
                Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
            );
            if (word ^ self.text) & mask == 0 && ends {
                return Some((self.value, at + self.len));
            }
        }
        let (value, end) = number_at(line, at)?;
        let len = end - at;
        if let (1..=16, Some(word), Some(b'0'..=b'9')) = (len, Self::word(line, at), line.get(at)) {
            *self = LastTs {
                text: word,
                len,
                value,
            };
        }
        Some((value, end))
    }
}

/// One series: where its middle lies in `SeriesCache::keys`, and the
/// series whose line followed its own last time.
struct Entry {
    at: usize,
    len: usize,
    series: Series,
    next: u32,
    /// Lines of an unknown metric read from the cache and not yet handed
    /// to the reader's summary.
    skipped: u64,
}

/// The series seen, each by its middle.
///
/// An exporter writes a scrape's series in the same order every time, so
/// the series that followed a line's last time is tried first: one
/// comparison of bytes, no hashing. Only when that guess is wrong is the
/// middle hashed and looked up. Middles are kept once, one after another
/// in `keys`, in the order they were learned, which is the order they come
/// back in.
pub(crate) struct SeriesCache {
    /// Entry numbers, by their middle's hash.
    table: HashTable<u32>,
    entries: Vec<Entry>,
    keys: Vec<u8>,
    hasher: FxBuildHasher,
    /// The entry of the last line read from the cache or learned.
    last: u32,
    last_ts: LastTs,
    seq_key: Finder<'static>,
    /// Times the cache was emptied for being full.
    pub(crate) resets: u64,
}

impl Default for SeriesCache {
    fn default() -> Self {
        SeriesCache {
            table: HashTable::new(),
            entries: Vec::new(),
            keys: Vec::new(),
            hasher: FxBuildHasher,
            last: NONE,
            last_ts: LastTs::default(),
            seq_key: Finder::new(SEQ_KEY),
            resets: 0,
        }
    }
}

/// Hands each unknown metric's lines counted in `entries` to `f`, and
/// starts their counts again.
fn take_skipped(entries: &mut [Entry], mut f: impl FnMut(&str, u64)) {
    for e in entries.iter_mut().filter(|e| e.skipped > 0) {
        if let Series::Metric {
            metric: Err(name), ..
        } = &e.series
        {
            f(name, std::mem::take(&mut e.skipped));
        }
    }
}

/// The middle of entry `i`.
fn key<'k>(entries: &[Entry], keys: &'k [u8], i: u32) -> &'k [u8] {
    let e = &entries[i as usize];
    &keys[e.at..e.at + e.len]
}

/// `line[at..]` starts with `key`; where it ends.
fn key_at(line: &[u8], at: usize, key: &[u8]) -> Option<usize> {
    line.get(at..)?.starts_with(key).then_some(at + key.len())
}

/// A collective's timings from `at` to the end of the line:
/// `<seq>,"bytes":<bytes>,"arrive":<number>,"dur_us":<number>}`, with the
/// full parser's checks (`dur_us` not negative).
fn timing(line: &[u8], at: usize) -> Option<Tail> {
    let (seq, at) = uint_at(line, at)?;
    let (bytes, at) = uint_at(line, key_at(line, at, BYTES_KEY)?)?;
    let (arrive, at) = number_at(line, key_at(line, at, ARRIVE_KEY)?)?;
    let (dur_us, at) = number_at(line, key_at(line, at, DUR_KEY)?)?;
    (at + 1 == line.len() && dur_us >= 0.0).then_some(Tail::Timing {
        seq,
        bytes,
        arrive,
        dur_us,
    })
}

impl SeriesCache {
    /// A line of a cached shape: its time, its middle and its tail.
    fn split<'l>(&mut self, line: &'l [u8]) -> Option<(f64, &'l [u8], Tail)> {
        if line.last() != Some(&b'}') {
            return None;
        }
        let (ts, middle, tail) = if line.starts_with(METRIC_PREFIX) {
            let (ts, middle_at) = self.last_ts.read(line, METRIC_PREFIX.len())?;
            let colon = middle_at + memchr::memrchr(b':', &line[middle_at..])?;
            let middle = &line[middle_at..=colon];
            if !middle.ends_with(VALUE_KEY) {
                return None;
            }
            let (value, end) = number_at(line, colon + 1)?;
            if end + 1 != line.len() {
                return None;
            }
            (ts, middle, Tail::Value(value))
        } else if line.starts_with(COLLECTIVE_PREFIX) {
            let (ts, middle_at) = self.last_ts.read(line, COLLECTIVE_PREFIX.len())?;
            let seq_at = middle_at + self.seq_key.find(&line[middle_at..])? + SEQ_KEY.len();
            (ts, &line[middle_at..seq_at], timing(line, seq_at)?)
        } else {
            return None;
        };
        (middle.len() <= MIDDLE_MAX && (TS_MIN..=TS_MAX).contains(&ts))
            .then_some((ts, middle, tail))
    }

    /// The entry whose middle is `middle`: the one that followed the last
    /// line's series last time, or else the one the table holds.
    fn find(&self, middle: &[u8]) -> Option<u32> {
        let guess = self
            .entries
            .get(self.last as usize)
            .map_or(NONE, |e| e.next);
        if guess != NONE && key(&self.entries, &self.keys, guess) == middle {
            return Some(guess);
        }
        let (entries, keys) = (&self.entries, &self.keys);
        self.table
            .find(self.hasher.hash_one(middle), |&i| {
                key(entries, keys, i) == middle
            })
            .copied()
    }

    /// Hands the lines of unknown metrics read from the cache since the
    /// last call to `f`, by name, in the order the names were first seen.
    pub(crate) fn take_skipped(&mut self, f: impl FnMut(&str, u64)) {
        take_skipped(&mut self.entries, f);
    }

    /// Notes that entry `i`'s line followed the last one.
    fn followed_by(&mut self, i: u32) {
        if let Some(e) = self.entries.get_mut(self.last as usize) {
            e.next = i;
        }
        self.last = i;
    }

    /// Reads `line` if its series is known.
    pub(crate) fn read(&mut self, line: &[u8]) -> Option<Hit> {
        let (ts, middle, tail) = self.split(line)?;
        let i = self.find(middle)?;
        self.followed_by(i);
        let entry = &mut self.entries[i as usize];
        if let (Series::Metric { metric: Err(_), .. }, Tail::Value(_)) = (&entry.series, tail) {
            // Counted here: a map lookup by name for every such line costs
            // more than reading it.
            entry.skipped += 1;
            return Some(Hit::UnknownMetric);
        }
        let hit = match (&entry.series, tail) {
            (
                Series::Metric {
                    node,
                    metric,
                    labels,
                    unknown_fields,
                },
                Tail::Value(value),
            ) => match metric {
                Ok(name) => Hit::Record {
                    record: Record::Metric(MetricSample {
                        ts,
                        node: node.clone(),
                        name: *name,
                        labels: labels.clone(),
                        value,
                    }),
                    unknown_fields: *unknown_fields,
                },
                Err(_) => return None,
            },
            (
                Series::Collective {
                    node,
                    job,
                    rank,
                    op,
                    unknown_fields,
                },
                Tail::Timing {
                    seq,
                    bytes,
                    arrive,
                    dur_us,
                },
            ) => Hit::Record {
                record: Record::Collective(CollectiveRecord {
                    ts,
                    node: node.clone(),
                    job: job.clone(),
                    rank: *rank,
                    op: op.clone(),
                    seq,
                    bytes,
                    arrive,
                    dur_us,
                }),
                unknown_fields: *unknown_fields,
            },
            // A middle ends with `"value":` or `"seq":`, never both.
            _ => return None,
        };
        Some(hit)
    }

    /// Remembers the series of a line the full parser read as `parsed`.
    /// When the cache is full and emptied, the lines of unknown metrics it
    /// counted are handed to `skipped` first, as `take_skipped` does.
    pub(crate) fn learn(
        &mut self,
        line: &[u8],
        parsed: &Parsed<'_>,
        skipped: impl FnMut(&str, u64),
    ) {
        let Some((ts, middle, tail)) = self.split(line) else {
            return;
        };
        // The line's own `t`, `ts` and tail must be the ones `split`
        // found: a repeated key in the middle would override them.
        let keys = match tail {
            Tail::Value(_) => &middle[..middle.len() - VALUE_KEY.len()],
            Tail::Timing { .. } => &middle[..middle.len() - SEQ_KEY.len()],
        };
        if OWN_KEYS
            .iter()
            .any(|key| memchr::memmem::find(keys, key).is_some())
        {
            return;
        }
        let series = match (parsed, tail) {
            (
                Parsed::Record {
                    record: Record::Metric(m),
                    unknown_fields,
                },
                Tail::Value(value),
            ) if m.ts == ts && m.value == value => Series::Metric {
                node: m.node.clone(),
                metric: Ok(m.name),
                labels: m.labels.clone(),
                unknown_fields: *unknown_fields,
            },
            (Parsed::UnknownMetric(name), Tail::Value(_)) => Series::Metric {
                node: Name::default(),
                metric: Err(name.as_ref().into()),
                labels: MetricLabels::default(),
                unknown_fields: 0,
            },
            (
                Parsed::Record {
                    record: Record::Collective(c),
                    unknown_fields,
                },
                Tail::Timing { .. },
            ) if c.ts == ts
                && tail
                    == (Tail::Timing {
                        seq: c.seq,
                        bytes: c.bytes,
                        arrive: c.arrive,
                        dur_us: c.dur_us,
                    }) =>
            {
                Series::Collective {
                    node: c.node.clone(),
                    job: c.job.clone(),
                    rank: c.rank,
                    op: c.op.clone(),
                    unknown_fields: *unknown_fields,
                }
            }
            _ => return,
        };
        if self.find(middle).is_some() {
            return;
        }
        if self.entries.len() >= SERIES_CACHED_MAX {
            take_skipped(&mut self.entries, skipped);
            self.table.clear();
            self.entries.clear();
            self.keys.clear();
            self.last = NONE;
            self.resets += 1;
        }
        let i = self.entries.len() as u32;
        self.entries.push(Entry {
            at: self.keys.len(),
            len: middle.len(),
            series,
            next: NONE,
            skipped: 0,
        });
        self.keys.extend_from_slice(middle);
        let (entries, keys, hasher) = (&self.entries, &self.keys, &self.hasher);
        self.table.insert_unique(hasher.hash_one(middle), i, |&j| {
            hasher.hash_one(key(entries, keys, j))
        });
        self.followed_by(i);
    }
}

#[cfg(test)]
#[path = "series_cache_tests.rs"]
mod tests;
