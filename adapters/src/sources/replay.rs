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
mod tests {
    use super::*;

    fn metric(ts: f64) -> String {
        format!(
            r#"{{"t":"metric","ts":{ts},"node":"n1","name":"DCGM_FI_DEV_GPU_UTIL","labels":{{"gpu":"0"}},"value":1}}"#
        )
    }

    #[test]
    fn every_line_of_an_unknown_metric_is_counted_by_name() {
        let series = crate::sources::series_cache::SERIES_CACHED_MAX + 10;
        let line = |name: &str, i: usize| {
            format!(
                r#"{{"t":"metric","ts":1763800000,"node":"n{i}","name":"{name}","labels":{{}},"value":1}}"#
            )
        };
        let mut text = String::new();
        // Twice round more series than the cache holds, so that it is
        // emptied with counts in it.
        for _ in 0..2 {
            for i in 0..series {
                text += &(line("DCGM_FI_DEV_MEM_CLOCK", i) + "\n");
            }
        }
        for i in 0..5 {
            text += &(line("vendor_other", i % 2) + "\n");
        }
        let (_, stats) = read_all(text.as_bytes());
        assert!(stats.series_cache_resets >= 1);
        let want = BTreeMap::from([
            ("DCGM_FI_DEV_MEM_CLOCK".to_string(), 2 * series as u64),
            ("vendor_other".to_string(), 5),
        ]);
        assert_eq!(stats.unknown_metrics, want);
    }

    #[test]
    fn records_lent_are_the_records_moved_out() {
        let base = 1_763_800_000.0;
        // In order, out of order within the window, and one beyond it.
        let order = [
            0.0, 1.0, 4.0, 2.0, 3.0, 0.5, 6.0, 12.0, 5.5, 10.0, 7.0, 2.0, 13.0,
        ];
        let mut text: String = order.iter().map(|d| metric(base + d) + "\n").collect();
        text.push_str("not json\n");
        let (moved, stats) = read_all(text.as_bytes());
        let mut reader = TraceReader::new(text.as_bytes());
        let mut lent = Vec::new();
        while let Some(r) = reader.next_ref() {
            lent.push(r.clone());
        }
        assert_eq!(lent, moved);
        assert_eq!(reader.stats(), &stats);
        assert_eq!((stats.late, stats.records), (2, order.len() as u64));
    }

    #[test]
    fn puts_records_back_in_time_order_within_the_window() {
        let base = 1_763_800_000.0;
        let order = [0.0, 1.0, 4.0, 2.0, 3.0, 0.5, 6.0, 5.5, 10.0, 7.0];
        let text: String = order.iter().map(|d| metric(base + d) + "\n").collect();
        let (records, stats) = read_all(text.as_bytes());
        let got: Vec<f64> = records.iter().map(|r| r.ts() - base).collect();
        let mut want = order.to_vec();
        want.sort_by(f64::total_cmp);
        assert_eq!(got, want);
        assert_eq!(stats.late, 0);
        assert_eq!(stats.records, order.len() as u64);
    }

    #[test]
    fn a_record_later_than_the_window_is_passed_on_and_counted() {
        let base = 1_763_800_000.0;
        let text = [0.0, 10.0, 20.0, 1.0]
            .iter()
            .map(|d| metric(base + d) + "\n")
            .collect::<String>();
        let (records, stats) = read_all(text.as_bytes());
        assert_eq!(records.len(), 4, "nothing accepted is lost");
        assert_eq!(stats.late, 1);
    }

    #[test]
    fn malformed_lines_are_reported_by_number_and_the_replay_goes_on() {
        let base = 1_763_800_000.0;
        let text = format!(
            "{}\nnot json\n{{\"t\":\"metric\"\n\n{}\n\"NaN\"\n{}",
            metric(base),
            metric(base + 1.0),
            metric(base + 2.0) // no trailing newline
        );
        let (records, stats) = read_all(text.as_bytes());
        assert_eq!(records.len(), 3);
        assert_eq!(stats.lines, 7);
        assert_eq!(stats.malformed, 3);
        let lines: Vec<u64> = stats.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 6]);
        assert!(stats.to_string().contains("line 2: bad JSON"));
    }

    #[test]
    fn a_flood_of_one_instant_is_held_to_the_bound_and_nothing_is_lost() {
        let n = REORDER_RECORDS_MAX + 10;
        let line = metric(1_763_800_000.0) + "\n";
        let text = line.repeat(n);
        let mut reader = TraceReader::new(text.as_bytes());
        let mut got = 0;
        let mut most = 0;
        while reader.next().is_some() {
            got += 1;
            most = most.max(reader.window.len());
        }
        assert_eq!(got, n, "nothing accepted is lost");
        assert!(most <= REORDER_RECORDS_MAX, "held {most}");
        assert_eq!(reader.stats().released_early, 11);
    }

    #[test]
    fn a_byte_order_mark_before_the_first_line_is_ignored() {
        let text = format!(
            "\u{feff}{}\n{}\n",
            metric(1_763_800_000.0),
            metric(1_763_800_001.0)
        );
        let (records, stats) = read_all(text.as_bytes());
        assert_eq!((records.len(), stats.malformed), (2, 0), "{stats}");
    }

    #[test]
    fn an_oversize_line_is_skipped_without_buffering_it() {
        let base = 1_763_800_000.0;
        let huge = "x".repeat(MAX_LINE_BYTES + 10);
        let text = format!("{huge}\n{}\n", metric(base));
        let (records, stats) = read_all(text.as_bytes());
        assert_eq!(records.len(), 1);
        assert_eq!(stats.malformed, 1);
        assert!(stats.errors[0].reason.contains("longer than"));
    }

    /// A source that hands out at most `step` bytes a read (a pipe, a slow
    /// disk), so that lines and numbers straddle the reader's refills.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn an_oversize_line_read_a_little_at_a_time_is_skipped_once() {
        let base = 1_763_800_000.0;
        let huge = "y".repeat(3 * MAX_LINE_BYTES);
        let text = format!("{}\n{huge}\n{}\n", metric(base), metric(base + 1.0));
        let mut reader = TraceReader::new(Trickle {
            data: text.as_bytes(),
            step: 100_003,
        });
        let records: Vec<Record> = reader.by_ref().collect();
        assert_eq!(records.len(), 2);
        let stats = reader.stats();
        assert_eq!((stats.lines, stats.malformed), (3, 1));
        assert_eq!(stats.errors[0].line, 2);
        assert_eq!(stats.bytes, text.len() as u64);
    }

    proptest::proptest! {
        /// However the input is cut into reads, the same records come out
        /// and the same lines are counted and reported.
        #[test]
        fn the_same_records_whatever_the_reads(
            kinds in proptest::collection::vec(0u8..5, 0..60),
            step in 1usize..300,
            newline_at_end in proptest::prelude::any::<bool>(),
        ) {
            let base = 1_763_800_000.0;
            let lines: Vec<String> = kinds
                .iter()
                .enumerate()
                .map(|(i, k)| match k {
                    0 | 1 => metric(base + (i % 7) as f64),
                    2 => String::new(),
                    3 => "{\"t\":\"metric\",\"ts\":17".into(),
                    _ => format!(
                        r#"{{"t":"collective","ts":{},"node":"n","job":"1","rank":0,"op":"allreduce","seq":{i},"bytes":1,"arrive":{},"dur_us":5.5}}"#,
                        base + i as f64 * 0.1,
                        base + i as f64 * 0.1
                    ),
                })
                .collect();
            let mut text = lines.join("\n");
            if newline_at_end {
                text.push('\n');
            }
            let (whole, whole_stats) = read_all(text.as_bytes());
            let mut reader = TraceReader::new(Trickle { data: text.as_bytes(), step });
            let pieces: Vec<Record> = reader.by_ref().collect();
            proptest::prop_assert_eq!(&pieces, &whole);
            proptest::prop_assert_eq!(reader.stats(), &whole_stats);
        }
    }
}
