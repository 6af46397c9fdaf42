//! The on-disk history: what retention removed from the replicated state
//! (closed findings, finished actions, audit events, old policy versions,
//! ended jobs), kept as JSON lines in `<data_dir>/history.jsonl` so that
//! `keel findings --since` and `keel actions --since` still read it.
//!
//! Every replica applies the same `Expire` at the same log index, so every
//! replica writes the same records, in the same order. One batch (the
//! records one `ready` expired) is one write and one fsync. The file is
//! append-only and is not rotated by keel: it grows by what retention
//! removes (a few hundred bytes per finding or action); an operator who
//! wants it bounded moves it aside (keel opens it afresh for every batch
//! and every read, so a rename is safe at any time) and archives it.
//!
//! Reading pages through the file by byte offset: a page never splits a
//! line, and a line still being written (no newline yet) is left for the
//! next read.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::io::{BufRead, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The history file in a replica's data folder.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("history.jsonl")
}

/// Appends `records` as JSON lines with one write and one fsync.
pub fn append<T: Serialize>(file: &Path, records: &[T]) -> std::io::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut buf = Vec::new();
    for r in records {
        serde_json::to_writer(&mut buf, r)?;
        buf.push(b'\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?;
    f.write_all(&buf)?;
    f.sync_data()
}

/// One page of history records.
#[derive(Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Page {
    pub items: Vec<serde_json::Value>,
    /// The byte offset to ask for next; `None` at the end of the file.
    pub next: Option<u64>,
    /// Lines that were not JSON records of a known shape (skipped).
    #[serde(default)]
    pub unreadable: u64,
}

/// Reads records from byte `offset` on: those of `kind` (when given) whose
/// time (`ts_of`) is at or after `since`, until about `max_bytes` of them
/// are gathered. A missing file is an empty history.
pub fn read_page(
    file: &Path,
    kind: Option<&str>,
    since: f64,
    offset: u64,
    max_bytes: usize,
    ts_of: impl Fn(&serde_json::Value) -> Option<f64>,
) -> Result<Page> {
    let f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Page::default()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", file.display())),
    };
    let mut r = std::io::BufReader::new(f);
    r.seek(SeekFrom::Start(offset))
        .with_context(|| format!("{}: seeking to {offset}", file.display()))?;
    let mut page = Page::default();
    let (mut at, mut gathered) = (offset, 0usize);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {}", file.display()))?;
        if n == 0 || line.last() != Some(&b'\n') {
            // The end, or a line not yet whole.
            return Ok(page);
        }
        at += n as u64;
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else {
            page.unreadable += 1;
            continue;
        };
        let Some(ts) = ts_of(&v) else {
            page.unreadable += 1;
            continue;
        };
        if kind.is_some_and(|k| v["kind"] != k) || ts < since {
            continue;
        }
        gathered += n;
        page.items.push(v);
        if gathered >= max_bytes {
            page.next = Some(at);
            return Ok(page);
        }
    }
}

/// A length of time: `90`, `90s`, `15m`, `12h`, `7d` or `2w` (seconds when
/// no unit is given).
pub fn parse_duration(text: &str) -> Result<f64> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("{text:?} is not a duration (e.g. 90s, 15m, 12h, 7d)"))?;
    let scale = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        "w" => 7.0 * 86_400.0,
        other => bail!("{text:?}: unknown unit {other:?} (s, m, h, d or w)"),
    };
    if !(n.is_finite() && n >= 0.0) {
        bail!("{text:?}: a duration is a non-negative number");
    }
    Ok(n * scale)
}

/// `--since`: a duration back from `now` (`2h`, `7d`), a Unix time in
/// seconds (`1795000000`), or a UTC time (`2026-11-30T10:00:00Z`, the `Z`
/// and the seconds optional). Returns Unix seconds.
pub fn parse_since(text: &str, now: f64) -> Result<f64> {
    let t = text.trim();
    if let Ok(unix) = t.parse::<f64>() {
        if unix.is_finite() {
            return Ok(unix);
        }
    }
    if t.contains('-') && t.contains('T') {
        return parse_utc(t).with_context(|| format!("--since {text:?}"));
    }
    let d = parse_duration(t)
        .with_context(|| format!("--since {text:?}: a duration, a Unix time or a UTC time"))?;
    Ok(now - d)
}

fn parse_utc(t: &str) -> Result<f64> {
    let t = t.trim_end_matches('Z');
    let (date, time) = t.split_once('T').context("expected DATE T TIME")?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().context("bad date"))
        .collect::<Result<_>>()?;
    let tm: Vec<f64> = time
        .split(':')
        .map(|x| x.parse().context("bad time"))
        .collect::<Result<_>>()?;
    let ([y, m, day], [hh, mm, rest @ ..]) = (d[..].try_into().unwrap_or([0, 0, 0]), &tm[..])
    else {
        bail!("expected YYYY-MM-DDTHH:MM[:SS]Z");
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        bail!("no such date");
    }
    let ss = rest.first().copied().unwrap_or(0.0);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days as f64 * 86_400.0 + hh * 3600.0 + mm * 60.0 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(v: &serde_json::Value) -> Option<f64> {
        v["ts"].as_f64()
    }

    #[test]
    fn appended_batches_read_back_in_pages() {
        let dir = std::env::temp_dir().join(format!("keel-history-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = path(&dir);
        let _ = std::fs::remove_file(&file);
        let recs: Vec<serde_json::Value> = (0..100)
            .map(|i| serde_json::json!({"kind": if i % 2 == 0 {"finding"} else {"audit"}, "ts": i as f64}))
            .collect();
        append(&file, &recs[..60]).unwrap();
        append(&file, &recs[60..]).unwrap();
        // A line being written is not read yet.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap()
            .write_all(b"{\"kind\":\"fin")
            .unwrap();
        let mut got = Vec::new();
        let mut offset = 0;
        let mut pages = 0;
        loop {
            let p = read_page(&file, Some("finding"), 10.0, offset, 200, ts).unwrap();
            pages += 1;
            got.extend(p.items);
            match p.next {
                Some(n) => offset = n,
                None => break,
            }
        }
        assert!(pages > 3, "{pages} pages");
        let want: Vec<serde_json::Value> = recs
            .iter()
            .filter(|r| r["kind"] == "finding" && r["ts"].as_f64().unwrap() >= 10.0)
            .cloned()
            .collect();
        assert_eq!(got, want);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_history_file_is_an_empty_history() {
        let p = read_page(
            Path::new("/nonexistent/history.jsonl"),
            None,
            0.0,
            0,
            10,
            ts,
        )
        .unwrap();
        assert_eq!(p, Page::default());
    }

    #[test]
    fn durations_and_times_parse() {
        assert_eq!(parse_duration("7d").unwrap(), 604_800.0);
        assert_eq!(parse_duration("90").unwrap(), 90.0);
        assert_eq!(parse_duration("15m").unwrap(), 900.0);
        assert!(parse_duration("7y").is_err());
        assert!(parse_duration("-3s").is_err());
        assert_eq!(parse_since("2h", 10_000.0).unwrap(), 2_800.0);
        assert_eq!(parse_since("1795000000", 0.0).unwrap(), 1_795_000_000.0);
        assert_eq!(parse_since("1970-01-02T00:00:00Z", 0.0).unwrap(), 86_400.0);
        assert_eq!(
            parse_since("2026-11-30T10:00Z", 0.0).unwrap(),
            1_796_032_800.0
        );
        assert!(parse_since("2026-13-01T00:00Z", 0.0).is_err());
        assert!(parse_since("yesterday", 0.0).is_err());
    }
}
