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
            Some(Hit::Record {
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
            Some(Hit::UnknownMetric) => {
                hits += 1;
                prop_assert!(matches!(full, Ok(Parsed::UnknownMetric(_))), "{}", line);
            }
            None => {
                if let Ok(p) = &full {
                    cache.learn(line.as_bytes(), p, |_, _| {});
                }
            }
        }
    }
    Ok(hits)
}

/// Lines of `prefix`, a time, a middle and a tail each, closed with
/// or without a space after.
fn lines(prefix: &[u8], parts: &[(String, String, String, bool)]) -> Vec<String> {
    let prefix = std::str::from_utf8(prefix).unwrap();
    parts
        .iter()
        .map(|(ts, mid, tail, tight)| {
            format!("{prefix}{ts}{mid}{tail}{}", if *tight { "}" } else { "} " })
        })
        .collect()
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
        // One scrape's time again and again, and numbers that begin
        // with it but are not it.
        prop::sample::select(vec![
            "1763800000.5",
            "1763800000.5",
            "1763800000.51",
            "1763800000.5e0",
            "1763800000.5E-1",
            "1763800000",
            "1763800000.",
            "1763800000.123456789",
            "1763800000.1234567891",
        ])
        .prop_map(String::from),
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
        agree(&lines(METRIC_PREFIX, &parts))?;
    }
}

fn collective_middle() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        r#","node":"n1","job":"4242","rank":0,"op":"allreduce","seq":"#,
        r#","node":"n1","job":"4242","rank":1,"op":"allreduce","seq":"#,
        r#","node":"n2","job":4242,"rank":3,"op":"allgather","seq":"#,
        r#","node":"n2","job":"4242","rank":3,"op":"allreduce","extra":[1],"seq":"#,
        r#","node":"n2","job":"4242","rank":3,"ts":5,"seq":"#,
        r#","node":"n2","job":"4242","rank":3,"dur_us":5,"seq":"#,
        r#","node":"n2","job":"4242","rank":-3,"seq":"#,
        r#","node":"n\u0033","job":"4242","rank":3,"seq":"#,
        r#","job":"4242","rank":3,"seq":"#,
        r#" ,"node":"n1","job":"4242","rank":0,"seq":"#,
    ])
    .prop_map(String::from)
}

/// `<seq>,"bytes":..,"arrive":..,"dur_us":..`, now and then not quite.
fn collective_tail() -> impl Strategy<Value = String> {
    let uint = prop_oneof![
        (0u64..1 << 40).prop_map(|v| v.to_string()),
        prop::sample::select(vec!["-1", "1.5", "1e3", "18446744073709551616", " 7", "01"])
            .prop_map(String::from),
    ];
    (uint.clone(), uint, number(), number(), 0..4u8).prop_map(|(seq, bytes, a, d, odd)| match odd {
        0 => format!(r#"{seq},"arrive":{a},"dur_us":{d}"#),
        1 => format!(r#"{seq},"bytes":{bytes},"dur_us":{d},"arrive":{a}"#),
        _ => format!(r#"{seq},"bytes":{bytes},"arrive":{a},"dur_us":{d}"#),
    })
}

proptest! {
    /// Collective lines likewise: the cache takes only what the full
    /// parser would read the same way.
    #[test]
    fn collectives_from_the_cache_read_as_the_parser_reads_them(
        parts in prop::collection::vec((number(), collective_middle(), collective_tail(), any::<bool>()), 1..40)
    ) {
        agree(&lines(COLLECTIVE_PREFIX, &parts))?;
    }
}

#[test]
fn a_ranks_collectives_after_its_first_are_read_from_the_cache() {
    let lines: Vec<String> = (0..10)
        .map(|i| {
            format!(
                r#"{{"t":"collective","ts":{}.25,"node":"n1","job":"7","rank":1,"op":"allreduce","seq":{i},"bytes":16777216,"arrive":{}.2,"dur_us":{}31.5}}"#,
                1_763_800_000 + i,
                1_763_800_000 + i,
                i + 1
            )
        })
        .collect();
    assert_eq!(agree(&lines).unwrap(), 9);
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
