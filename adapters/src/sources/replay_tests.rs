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
