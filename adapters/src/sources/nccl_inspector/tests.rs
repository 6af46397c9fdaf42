//! The Inspector source on NVIDIA's own example records
//! (`shared/data/wild` entry 16) and on dump files written the way the
//! plugin writes them: one compact object per line, appended.

use super::record::{parse, Entry, Timing, EXEC_TIME_MAX_US};
use super::*;
use keel_model::CollectiveRecord;
use std::io::Write;

fn example(name: &str) -> String {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/wild/16-nccl-inspector-examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The example as the plugin writes it into a dump file: on one line.
fn one_line(text: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    serde_json::to_string(&v).unwrap()
}

fn collective(text: &str) -> record::Collective {
    match parse(text) {
        Ok(Entry::Collective(c)) => c,
        other => panic!("not a collective: {other:?}"),
    }
}

#[test]
fn the_basic_example_maps_onto_a_collective_ending_when_it_was_written() {
    let c = collective(&example("inspector-basic.json"));
    assert_eq!(c.comm.id, "0x7f8c496ae9f661");
    assert_eq!(
        (c.comm.n_ranks, c.comm.nnodes, c.comm.name.as_deref()),
        (8, 1, None)
    );
    assert_eq!((c.rank, c.op.as_str(), c.seq), (2, "allreduce", 1407));
    assert_eq!(
        c.bytes, 17_179_869_184,
        "an all-reduce's size is its buffer"
    );
    assert_eq!(c.dur_us, 61_974.0);
    assert_eq!(c.timing, Timing::Unstated);
    // No kernel stamps in a basic record: it ended by dump_timestamp_us.
    assert!((c.ts - 1_748_030_377.748_202).abs() < 1e-6, "{}", c.ts);
    assert!((c.ts - c.arrive - 0.061_974).abs() < 1e-6);
}

#[test]
fn the_verbose_example_ends_at_its_last_kernel_stop() {
    let c = collective(&example("inspector-verbose.json"));
    assert_eq!((c.rank, c.op.as_str(), c.seq), (4, "reducescatter", 1231));
    assert_eq!(c.timing, Timing::KernelGpu);
    assert_eq!(
        c.bytes,
        2_147_483_648 * 8,
        "NCCL counts a reduce-scatter per rank"
    );
    assert!((c.ts - 1_752_867_229.275_811).abs() < 1e-6, "{}", c.ts);
    assert!((c.arrive - (1_752_867_229.275_811 - 0.041_057)).abs() < 1e-6);
    let r = c.into_record(&"n1".into(), &"4242".into());
    assert_eq!(
        (r.node.as_str(), r.job.as_str(), r.rank, r.seq),
        ("n1", "4242", 4, 1231)
    );
}

#[test]
fn a_field_out_of_range_is_refused_naming_it() {
    let base = one_line(&example("inspector-verbose.json"));
    let cases = [
        ("\"rank\":4", "\"rank\":8", "header.rank"),
        ("\"rank\":4", "\"rank\":-1", "header.rank"),
        ("\"n_ranks\":8", "\"n_ranks\":0", "header.n_ranks"),
        (
            "\"coll_exec_time_us\":41057",
            "\"coll_exec_time_us\":600000001",
            "coll_exec_time_us",
        ),
        (
            "\"dump_timestamp_us\":1752867229276385",
            "\"dump_timestamp_us\":17",
            "dump_timestamp_us",
        ),
        (
            "\"kernel_stop_ts\":1752867229275811",
            "\"kernel_stop_ts\":1752867339275811",
            "kernel_stop_ts",
        ),
        (
            "\"coll\":\"ReduceScatter\"",
            "\"coll\":\"a b\"",
            "coll_perf.coll",
        ),
        ("\"kernel_gpu\"", "\"gpu_magic\"", "coll_timing_source"),
        ("\"coll_sn\":1231", "\"coll_sn\":-3", "bad JSON"),
    ];
    for (from, to, field) in cases {
        assert!(base.contains(from), "{from}");
        let e = parse(&base.replace(from, to)).unwrap_err();
        assert!(e.contains(field), "{to}: {e}");
    }
    assert!(parse("{\"header\":1}").is_err());
    assert_eq!(EXEC_TIME_MAX_US as f64, keel_detect::edge::DUR_MAX_US);
}

#[test]
fn bandwidth_written_as_nan_and_unknown_fields_are_ignored_and_p2p_skipped() {
    let base = one_line(&example("inspector-verbose.json"));
    let nan = base
        .replace("418.439467", "\"nan\"")
        .replace("\"coll_sn\"", "\"future_field\":[1,2],\"coll_sn\"");
    assert_eq!(collective(&nan).seq, 1231);
    let p2p = r#"{"header":{"id":"0x1","comm_name":"pp","rank":0,"n_ranks":2,"nnodes":2},
        "metadata":{"inspector_output_format_version":"v4.0","git_rev":"","rec_mechanism":"nccl_profiler_interface",
        "dump_timestamp_us":1752867229276385,"hostname":"h","pid":1},
        "p2p_perf":{"p2p":"Send","p2p_sn":3,"p2p_peer":1,"p2p_msg_size_bytes":8192,"p2p_exec_time_us":12,
        "p2p_timing_source":"kernel_gpu","p2p_algobw_gbs":0.6,"p2p_busbw_gbs":0.6}}"#;
    assert_eq!(parse(p2p), Ok(Entry::P2p));
}

#[test]
fn a_job_comes_from_the_dump_folder_name() {
    assert_eq!(
        job_of_folder("nccl-inspector-4242").as_deref(),
        Some("4242")
    );
    assert_eq!(job_of_folder("4242").as_deref(), Some("4242"));
    assert_eq!(job_of_folder("nccl-inspector-unknown-jobid"), None);
    assert_eq!(job_of_folder(".hidden"), None);
    assert_eq!(job_of_folder("a/b"), None);
    assert_eq!(job_of_folder(&"9".repeat(65)), None);
}

/// The source's config over `dir`, on the host that wrote the files.
fn config(dir: impl Into<std::path::PathBuf>) -> NcclInspectorConfig {
    let mut cfg = NcclInspectorConfig::new(dir);
    cfg.hostname = Some("gpu-node-01".into());
    cfg
}

#[test]
fn only_this_hosts_files_are_read_from_a_shared_folder() {
    let dir = tempfile::tempdir().unwrap();
    let verbose = one_line(&example("inspector-verbose.json"));
    let mut mine = dump(dir.path(), "7", 1);
    let folder = dir.path().join("7");
    for other in [
        "gpu-node-02-pid1.log",
        "gpu-node-0-pid1.log",
        "gpu-node-01-pidx.log",
    ] {
        std::fs::write(folder.join(other), format!("{verbose}\n")).unwrap();
    }
    writeln!(mine, "{verbose}").unwrap();
    let mut cfg = config(dir.path());
    cfg.from_start = true;
    let mut tail = InspectorTail::new(cfg, &"n1".into());
    let mut out = Vec::new();
    tail.poll(&mut out).unwrap();
    tail.poll(&mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!((tail.stats().files, tail.stats().files_other_host), (1, 3));
}

/// A dump file as one process of a job writes it.
fn dump(dir: &Path, job: &str, pid: u32) -> std::fs::File {
    let folder = dir.join(job);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(folder.join(format!("gpu-node-01-pid{pid}.log")))
        .unwrap()
}

fn records(out: &[Record]) -> Vec<&CollectiveRecord> {
    out.iter()
        .map(|r| match r {
            Record::Collective(c) => c,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn the_tail_reads_new_files_and_appended_lines_and_names_a_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut tail = InspectorTail::new(config(dir.path()), &"n1".into());
    let mut out = Vec::new();
    tail.poll(&mut out).unwrap();
    assert!(out.is_empty());

    let verbose = one_line(&example("inspector-verbose.json"));
    let basic = one_line(&example("inspector-basic.json"));
    let mut a = dump(dir.path(), "nccl-inspector-4242", 438776);
    writeln!(a, "{verbose}").unwrap();
    writeln!(a, "{{\"header\": oops").unwrap();
    // Half a line: the rest comes with the next write.
    let next = verbose.replace("\"coll_sn\":1231", "\"coll_sn\":1232");
    let (head, rest) = next.split_at(100);
    write!(a, "{head}").unwrap();
    a.flush().unwrap();
    tail.poll(&mut out).unwrap();
    let got = records(&out);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].job.as_str(), got[0].node.as_str(), got[0].seq),
        ("4242", "n1", 1231)
    );
    let s = tail.stats().clone();
    assert_eq!((s.files, s.lines, s.bad_lines, s.collectives), (1, 2, 1, 1));
    let e = s.last_error.unwrap();
    assert!(e.contains("gpu-node-01-pid438776.log:2: bad JSON"), "{e}");

    out.clear();
    writeln!(a, "{rest}").unwrap();
    // A second process of another job, whose communicator differs.
    let mut b = dump(dir.path(), "77", 1639453);
    writeln!(b, "{basic}").unwrap();
    tail.poll(&mut out).unwrap();
    let mut got: Vec<(String, u64)> = records(&out)
        .iter()
        .map(|c| (c.job.to_string(), c.seq))
        .collect();
    got.sort();
    assert_eq!(got, [("4242".into(), 1232), ("77".into(), 1407)]);
    assert_eq!(tail.stats().files, 2);

    // Nothing new: nothing read.
    out.clear();
    tail.poll(&mut out).unwrap();
    assert!(out.is_empty());
    assert_eq!(tail.stats().lines, 4);
}

#[test]
fn only_the_jobs_widest_communicator_is_taken_unless_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let verbose = one_line(&example("inspector-verbose.json"));
    let narrow = verbose
        .replace("0xe62dedaa97644a", "0xabc")
        .replace("\"n_ranks\":8", "\"n_ranks\":2")
        .replace("\"rank\":4", "\"rank\":0");
    let mut f = dump(dir.path(), "5", 9);
    writeln!(f, "{narrow}").unwrap();
    writeln!(f, "{verbose}").unwrap();
    writeln!(f, "{narrow}").unwrap();
    let mut cfg = config(dir.path());
    cfg.from_start = true;
    let mut tail = InspectorTail::new(cfg.clone(), &"n1".into());
    let mut out = Vec::new();
    tail.poll(&mut out).unwrap();
    // The narrow one until the wider appears, then only the wider.
    let ranks: Vec<u32> = records(&out).iter().map(|c| c.rank).collect();
    assert_eq!(ranks, [0, 4]);
    assert_eq!(tail.stats().other_comm, 1);

    let named = verbose.replace("\"rank\":4", "\"comm_name\":\"tp\",\"rank\":4");
    writeln!(f, "{named}").unwrap();
    cfg.comm_name = Some("tp".into());
    let mut tail = InspectorTail::new(cfg, &"n1".into());
    out.clear();
    tail.poll(&mut out).unwrap();
    assert_eq!(records(&out).len(), 1);
    assert_eq!(tail.stats().other_comm, 3);
}

#[test]
fn files_present_at_start_are_read_from_their_end_and_strays_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let verbose = one_line(&example("inspector-verbose.json"));
    let mut old = dump(dir.path(), "1", 1);
    writeln!(old, "{verbose}").unwrap();
    let mut unknown = dump(dir.path(), "nccl-inspector-unknown-jobid", 2);
    writeln!(unknown, "{verbose}").unwrap();
    std::fs::write(dir.path().join("host-pid3.log"), format!("{verbose}\n")).unwrap();
    let mut tail = InspectorTail::new(config(dir.path()), &"n1".into());
    let mut out = Vec::new();
    tail.poll(&mut out).unwrap();
    assert!(out.is_empty(), "what was there at start is old");
    writeln!(old, "{verbose}").unwrap();
    tail.poll(&mut out).unwrap();
    assert_eq!(out.len(), 1, "what is appended is read");
    assert_eq!(tail.stats().files_without_job, 2);

    // A file that shrinks (a new process reusing the pid) is read again.
    std::fs::write(
        dir.path().join("1/gpu-node-01-pid1.log"),
        format!("{verbose}\n"),
    )
    .unwrap();
    out.clear();
    tail.poll(&mut out).unwrap();
    assert_eq!((out.len(), tail.stats().restarts), (1, 1));

    assert!(
        InspectorTail::new(config(dir.path().join("no")), &"n1".into())
            .poll(&mut out)
            .unwrap_err()
            .contains("listing")
    );
}

#[test]
fn a_line_longer_than_the_bound_is_skipped_and_the_next_read() {
    let dir = tempfile::tempdir().unwrap();
    let verbose = one_line(&example("inspector-verbose.json"));
    let mut f = dump(dir.path(), "1", 1);
    let mut cfg = config(dir.path());
    cfg.from_start = true;
    let mut tail = InspectorTail::new(cfg, &"n1".into());
    let mut out = Vec::new();
    f.write_all(&vec![b'x'; LINE_MAX + 10]).unwrap();
    tail.poll(&mut out).unwrap();
    writeln!(f, "yyy").unwrap();
    writeln!(f, "{verbose}").unwrap();
    tail.poll(&mut out).unwrap();
    let s = tail.stats();
    assert_eq!((out.len(), s.long_lines, s.bad_lines), (1, 1, 0), "{s:?}");
}

#[test]
fn at_most_files_max_files_are_followed_and_the_rest_counted() {
    let dir = tempfile::tempdir().unwrap();
    let verbose = one_line(&example("inspector-verbose.json"));
    for pid in 0..FILES_MAX as u32 + 3 {
        writeln!(dump(dir.path(), "1", pid), "{verbose}").unwrap();
    }
    let mut cfg = config(dir.path());
    cfg.from_start = true;
    let mut tail = InspectorTail::new(cfg, &"n1".into());
    let mut out = Vec::new();
    tail.poll(&mut out).unwrap();
    let s = tail.stats().clone();
    assert_eq!((s.files, s.files_refused), (FILES_MAX as u64, 3));
    assert_eq!(out.len(), FILES_MAX);
    // The files followed are not read again, nor forgotten.
    out.clear();
    tail.poll(&mut out).unwrap();
    assert!(out.is_empty());
    assert_eq!(tail.stats().files, FILES_MAX as u64);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

    /// Whatever a dump file holds, the tail neither panics nor hands on a
    /// collective outside the bounds: bytes of the real record cut, spliced
    /// and overwritten at random, and random bytes.
    #[test]
    fn any_bytes_in_a_dump_file_are_read_without_panic_and_within_bounds(
        cuts in proptest::collection::vec((0usize..1200, 0usize..1200, proptest::prelude::any::<u8>()), 0..8),
        noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
    ) {
        let line = one_line(&example("inspector-verbose.json"));
        let mut bytes = line.clone().into_bytes();
        for (at, len, b) in cuts {
            let at = at.min(bytes.len());
            let end = (at + len % 40).min(bytes.len());
            bytes.splice(at..end, [b]);
        }
        let dir = tempfile::tempdir().unwrap();
        let mut f = dump(dir.path(), "1", 1);
        let mut cfg = config(dir.path());
        cfg.from_start = true;
        let mut tail = InspectorTail::new(cfg, &"n1".into());
        f.write_all(&bytes).unwrap();
        f.write_all(b"\n").unwrap();
        f.write_all(&noise).unwrap();
        f.write_all(b"\n").unwrap();
        writeln!(f, "{line}").unwrap();
        let mut out = Vec::new();
        tail.poll(&mut out).unwrap();
        for c in records(&out) {
            proptest::prop_assert!(c.dur_us <= keel_detect::edge::DUR_MAX_US);
            proptest::prop_assert!(c.ts.is_finite() && c.arrive <= c.ts);
            proptest::prop_assert!(c.rank < 1 << 24);
        }
        let s = tail.stats();
        proptest::prop_assert!(s.collectives >= 1, "the intact last line is read: {:?}", s);
        proptest::prop_assert_eq!(s.lines, s.collectives + s.bad_lines + s.p2p + s.host_timed + s.other_comm);
    }
}
