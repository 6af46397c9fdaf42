//! Trace replay: a streaming, tolerant reader of JSON Lines traces.
//!
//! Memory does not grow with the trace: lines are read one at a time (each
//! capped in length), and the only buffer is the reorder window, which holds
//! the last `REORDER_WINDOW_S` seconds of records so that records written up to
//! that far out of order come out in time order. Bad lines are counted and
//! reported by line number; the replay always goes on.

use super::reorder::Reorder;
use super::series_cache::{Hit, SeriesCache};
use super::trace_line::{parse_line, LineError, Parsed};
use keel_model::Record;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// The spec lets records arrive up to 5 s out of order.
pub const REORDER_WINDOW_S: f64 = 5.0;
/// Records the reorder window holds at most (about 160 bytes each). A
/// trace that packs more into 5 s (a file repeating one instant) has its
/// earliest record released before its time, counted in
/// `ReadStats::released_early`: order may suffer, nothing is lost.
pub const REORDER_RECORDS_MAX: usize = 1 << 20;
/// A longer line is garbage (the longest real record, a job of thousands of
/// ranks, is far below this); it is skipped without being held in memory.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Malformed lines reported one by one; past this many (a file that is not
/// a trace at all) the rest are only counted, so the report stays readable.
const KEPT_ERRORS: usize = 1000;
/// Distinct unknown names remembered for the summary.
const KEPT_NAMES: usize = 32;

/// `type = "replay"`: a recorded trace (`spec/trace-format.md`), played in
/// real time or faster; the sensor takes only its own node's records.
#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    pub path: std::path::PathBuf,
    /// Trace seconds per wall second (default 1).
    #[serde(default = "one")]
    pub speed: f64,
    /// Unix time at which the trace's first moment is played (several
    /// sensors replaying one trace share it); default: at start.
    #[serde(default)]
    pub start_at: Option<f64>,
    /// The trace time played at `start_at`; default: the first record's.
    #[serde(default)]
    pub t0: Option<f64>,
}

fn one() -> f64 {
    1.0
}

impl super::Source for ReplayConfig {
    fn describe(&self) -> String {
        format!("replay {} at {}x", self.path.display(), self.speed)
    }
}

/// What the reader saw, for the summary on stderr.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadStats {
    pub lines: u64,
    pub bytes: u64,
    pub records: u64,
    pub malformed: u64,
    pub non_finite: u64,
    pub unknown_fields: u64,
    pub unknown_types: BTreeMap<String, u64>,
    pub unknown_metrics: BTreeMap<String, u64>,
    /// Records more than the reorder window older than the newest seen: passed
    /// on as they are (never dropped), but out of order.
    pub late: u64,
    /// Malformed lines, with their numbers and reasons (the first `KEPT_ERRORS`).
    pub errors: Vec<LineError>,
    /// Records released before the reorder window's time because it held
    /// `REORDER_RECORDS_MAX`.
    pub released_early: u64,
    /// Times the cache of metric series was emptied for holding
    /// `SERIES_CACHED_MAX` (a trace of ever new series; costs speed only).
    pub series_cache_resets: u64,
}

impl ReadStats {
    fn note_error(&mut self, e: LineError) {
        self.malformed += 1;
        if self.errors.len() < KEPT_ERRORS {
            self.errors.push(e);
        }
    }

    /// Counts `n` lines of `name`; allocates only for a name not seen before.
    fn note_name(map: &mut BTreeMap<String, u64>, name: &str, n: u64) {
        let full = map.len() >= KEPT_NAMES;
        match map.get_mut(name) {
            Some(count) => *count += n,
            None if !full => {
                map.insert(name.to_string(), n);
            }
            None => *map.entry("(others)".into()).or_insert(0) += n,
        }
    }

    /// Counts one parsed line; its record, if it is one.
    fn take(&mut self, parsed: Result<Parsed<'_>, LineError>) -> Option<Record> {
        match parsed {
            Ok(Parsed::Record {
                record,
                unknown_fields,
            }) => {
                self.unknown_fields += u64::from(unknown_fields);
                self.records += 1;
                return Some(record);
            }
            Ok(Parsed::UnknownType(t)) => ReadStats::note_name(&mut self.unknown_types, &t, 1),
            Ok(Parsed::UnknownMetric(m)) => ReadStats::note_name(&mut self.unknown_metrics, &m, 1),
            Ok(Parsed::NonFinite) => self.non_finite += 1,
            Ok(Parsed::Blank) => {}
            Err(e) => self.note_error(e),
        }
        None
    }

    pub fn unknown_type_count(&self) -> u64 {
        self.unknown_types.values().sum()
    }

    pub fn unknown_metric_count(&self) -> u64 {
        self.unknown_metrics.values().sum()
    }
}

impl fmt::Display for ReadStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "read {} lines, {} records; {} malformed, {} non-finite values skipped, {} late (> {REORDER_WINDOW_S} s out of order)",
            self.lines, self.records, self.malformed, self.non_finite, self.late
        )?;
        let list = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k} x{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.unknown_types.is_empty() {
            writeln!(
                f,
                "ignored {} records of unknown type: {}",
                self.unknown_type_count(),
                list(&self.unknown_types)
            )?;
        }
        if !self.unknown_metrics.is_empty() {
            writeln!(
                f,
                "ignored {} samples of unknown metrics: {}",
                self.unknown_metric_count(),
                list(&self.unknown_metrics)
            )?;
        }
        if self.unknown_fields > 0 {
            writeln!(f, "ignored {} unknown fields", self.unknown_fields)?;
        }
        if self.released_early > 0 {
            writeln!(
                f,
                "{} records released before the reorder window's time: more than {REORDER_RECORDS_MAX} records within {REORDER_WINDOW_S} s",
                self.released_early
            )?;
        }
        if self.series_cache_resets > 0 {
            writeln!(
                f,
                "the cache of metric series filled up {} times (more than {} series; slower, nothing lost)",
                self.series_cache_resets,
                super::series_cache::SERIES_CACHED_MAX
            )?;
        }
        for e in &self.errors {
            writeln!(f, "  {e}")?;
        }
        if self.malformed > self.errors.len() as u64 {
            writeln!(
                f,
                "  ... and {} more malformed lines",
                self.malformed - self.errors.len() as u64
            )?;
        }
        Ok(())
    }
}

/// Bytes asked of the source at a time: small enough that a chunk the
/// kernel has just copied is still in the core's own cache (256 KiB of L2
/// and up on current x86 servers) when it is parsed.
const CHUNK: usize = 1 << 17;

/// Streams time-ordered records out of a JSON Lines trace.
///
/// Reads the source in `CHUNK`s into a buffer of its own and parses each
/// line where it lies there (a line is copied only when the buffer is
/// compacted under it). The buffer holds at most one chunk more than the
/// longest line accepted, `MAX_LINE_BYTES`.
pub struct TraceReader<R> {
    src: R,
    buf: Vec<u8>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// The source has ended (or failed).
    src_done: bool,
    /// Inside an oversize line, already counted: its bytes are dropped up
    /// to its newline.
    skipping: bool,
    stats: ReadStats,
    window: Reorder<Record>,
    cache: SeriesCache,
    eof: bool,
    /// The record `next_ref` lent last, released at the next call.
    lent: Lent,
    /// A record passed on outside the window (late), while lent.
    aside: Option<Record>,
}

/// Where the record last lent by `TraceReader::next_ref` lies.
#[derive(Clone, Copy)]
enum Lent {
    Nothing,
    /// The head of a window lane (`true`: the late lane).
    Window(bool),
    Aside,
}

/// Opens a trace file, or standard input for `-`.
pub fn open_trace(path: &Path) -> io::Result<TraceReader<Box<dyn Read>>> {
    let src: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(io::stdin())
    } else {
        let file = File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Box::new(file)
    };
    Ok(TraceReader::new(src))
}

impl<R: Read> TraceReader<R> {
    pub fn new(src: R) -> Self {
        TraceReader {
            src,
            buf: Vec::new(),
            start: 0,
            end: 0,
            src_done: false,
            skipping: false,
            stats: ReadStats::default(),
            window: Reorder::new(REORDER_WINDOW_S),
            cache: SeriesCache::default(),
            eof: false,
            lent: Lent::Nothing,
            aside: None,
        }
    }

    /// What the reader saw so far (the lines of unknown metrics it read
    /// from its series cache are added up here).
    pub fn stats(&mut self) -> &ReadStats {
        let metrics = &mut self.stats.unknown_metrics;
        self.cache
            .take_skipped(|name, n| ReadStats::note_name(metrics, name, n));
        &self.stats
    }

    /// Bytes consumed so far (for progress).
    pub fn bytes_read(&self) -> u64 {
        self.stats.bytes
    }

    /// Reads more of the source into the buffer, after moving what is left
    /// unread to its front. An I/O error ends the input and is reported on
    /// the line where it happened.
    fn fill(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < self.end + CHUNK {
            self.buf.resize(self.end + CHUNK, 0);
        }
        loop {
            match self.src.read(&mut self.buf[self.end..]) {
                Ok(0) => self.src_done = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.stats.note_error(LineError {
                        line: self.stats.lines + 1,
                        reason: format!("read error, input ends here: {e}"),
                    });
                    self.src_done = true;
                }
            }
            return;
        }
    }

    /// Reads lines until one yields a record (or input ends).
    fn pull(&mut self) -> Option<Record> {
        loop {
            let unread = &self.buf[self.start..self.end];
            let (len, used) = match memchr::memchr(b'\n', unread) {
                Some(i) => (i, i + 1),
                None if self.src_done && !unread.is_empty() => (unread.len(), unread.len()),
                None if self.src_done => return None,
                None => {
                    let n = unread.len();
                    if n > MAX_LINE_BYTES {
                        self.oversize();
                        self.stats.bytes += n as u64;
                        self.start = self.end;
                    }
                    self.fill();
                    continue;
                }
            };
            let at = self.start;
            self.start += used;
            self.stats.bytes += used as u64;
            if std::mem::take(&mut self.skipping) {
                continue;
            }
            if len > MAX_LINE_BYTES {
                self.oversize();
                self.skipping = false;
                continue;
            }
            self.stats.lines += 1;
            let mut line = &self.buf[at..at + len];
            if self.stats.lines == 1 {
                // A byte-order mark some editors write first (RFC 8259
                // lets a reader ignore it).
                line = line.strip_prefix(b"\xef\xbb\xbf").unwrap_or(line);
            }
            match self.cache.read(line) {
                Some(Hit::Record {
                    record,
                    unknown_fields,
                }) => {
                    self.stats.unknown_fields += u64::from(unknown_fields);
                    self.stats.records += 1;
                    return Some(record);
                }
                // Counted in the cache, and in `stats` when asked for.
                Some(Hit::UnknownMetric) => continue,
                None => {}
            }
            let parsed = parse_line(line, self.stats.lines);
            if let Ok(p) = &parsed {
                let metrics = &mut self.stats.unknown_metrics;
                self.cache
                    .learn(line, p, |name, n| ReadStats::note_name(metrics, name, n));
                self.stats.series_cache_resets = self.cache.resets;
            }
            if let Some(r) = self.stats.take(parsed) {
                return Some(r);
            }
        }
    }

    /// Counts the line being read as too long, and skips the rest of it.
    fn oversize(&mut self) {
        if self.skipping {
            return;
        }
        self.stats.lines += 1;
        self.stats.note_error(LineError {
            line: self.stats.lines,
            reason: format!("line longer than {MAX_LINE_BYTES} bytes"),
        });
        self.skipping = true;
    }
}

impl<R: Read> TraceReader<R> {
    /// Releases the record lent by the last `next_ref`.
    fn settle(&mut self) {
        match std::mem::replace(&mut self.lent, Lent::Nothing) {
            Lent::Nothing => {}
            Lent::Window(late) => {
                self.window.pop(late);
            }
            Lent::Aside => self.aside = None,
        }
    }

    /// Reads until a record can be released, and says where it lies.
    fn advance(&mut self) -> Option<Lent> {
        self.settle();
        while !self.eof {
            if let Some(late) = self.window.ready_lane() {
                return Some(Lent::Window(late));
            }
            if self.window.len() >= REORDER_RECORDS_MAX {
                self.stats.released_early += 1;
                return self.window.earliest().map(Lent::Window);
            }
            let Some(record) = self.pull() else {
                self.eof = true;
                break;
            };
            if let Err(record) = self.window.push(record.ts(), record) {
                // Beyond the window: the records it belongs among are gone.
                self.stats.late += 1;
                self.aside = Some(record);
                return Some(Lent::Aside);
            }
        }
        self.window.earliest().map(Lent::Window)
    }

    /// The next record in time order, as `next` gives it, but lent where
    /// it lies in the reorder window instead of moved out: a record is
    /// some 150 bytes, and a replay that only reads each one (the
    /// detectors) need not copy it. It is released at the next call.
    pub fn next_ref(&mut self) -> Option<&Record> {
        let at = self.advance()?;
        self.lent = at;
        match at {
            Lent::Window(late) => self.window.head(late),
            Lent::Aside => self.aside.as_ref(),
            Lent::Nothing => None,
        }
    }
}

impl<R: Read> Iterator for TraceReader<R> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        match self.advance()? {
            Lent::Window(late) => self.window.pop(late),
            Lent::Aside => self.aside.take(),
            Lent::Nothing => None,
        }
    }
}

/// Reads everything from `r`: convenient for tests and small traces.
pub fn read_all<R: Read>(r: R) -> (Vec<Record>, ReadStats) {
    let mut reader = TraceReader::new(r);
    let records: Vec<Record> = reader.by_ref().collect();
    let stats = reader.stats().clone();
    (records, stats)
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
