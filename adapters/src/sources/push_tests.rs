use super::*;
use keel_model::{CollectiveRecord, MetricLabels, MetricName, MetricSample, Name};

const COLLECTIVE: &str = r#"{"t":"collective","ts":1763800001.2034,"node":"n02","job":"4242","rank":5,"op":"allreduce","seq":1187,"bytes":16777216,"arrive":1763800001.2021,"dur_us":1312.0}"#;

fn collective(rank: u32, seq: u64) -> Record {
    Record::Collective(CollectiveRecord {
        ts: 1_763_800_001.5,
        node: Name::from("n01"),
        job: Name::from("77"),
        rank,
        op: Name::from("allgather"),
        seq,
        bytes: 4096,
        arrive: 1_763_800_001.25,
        dur_us: 250_000.0,
    })
}

fn metric() -> Record {
    Record::Metric(MetricSample {
        ts: 1_763_800_002.0,
        node: Name::from("n01"),
        name: MetricName::GpuUtil,
        labels: MetricLabels {
            gpu: Some(3),
            ..MetricLabels::default()
        },
        value: 97.0,
    })
}

#[test]
fn one_json_line_is_one_collective() {
    let d = decode_datagram(COLLECTIVE.as_bytes()).unwrap();
    let [Record::Collective(c)] = d.records.as_slice() else {
        panic!("{d:?}")
    };
    assert_eq!((c.rank, c.seq, c.bytes), (5, 1187, 16_777_216));
    assert_eq!((c.node.as_str(), c.job.as_str()), ("n02", "4242"));
    assert_eq!(c.dur_us, 1312.0);
}

#[test]
fn several_json_lines_with_blanks_and_unknowns() {
    let body = format!(
        "{COLLECTIVE}\n\n{{\"t\":\"kernel\",\"ts\":1763800001.0}}\r\n{}\n",
        serde_json::to_string(&metric()).unwrap()
    );
    let d = decode_datagram(body.as_bytes()).unwrap();
    assert_eq!(d.records.len(), 2);
    assert_eq!(d.records[1], metric());
    assert_eq!(
        d.skipped, 1,
        "the unknown record type is skipped, not an error"
    );
}

#[test]
fn a_bad_json_line_rejects_the_datagram_and_names_line_and_field() {
    let bad = r#"{"t":"collective","ts":1763800001.0,"node":"n","job":"1","rank":0,"seq":1,"arrive":1763800001.0}"#;
    let e = decode_datagram(format!("{COLLECTIVE}\n{bad}\n").as_bytes()).unwrap_err();
    let PushError::Json { line, reason } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(*line, 2);
    assert!(reason.contains("dur_us"), "{e}");
    assert!(e.to_string().starts_with("JSON line 2: "), "{e}");
}

#[test]
fn a_messagepack_map_is_a_record() {
    let r = collective(3, 9);
    let bytes = rmp_serde::to_vec_named(&r).unwrap();
    assert!(
        (0x80..=0x8f).contains(&bytes[0]),
        "a fixmap: {:x}",
        bytes[0]
    );
    assert_eq!(decode_datagram(&bytes).unwrap().records, vec![r]);
}

#[test]
fn a_messagepack_array_of_maps_keeps_its_order() {
    let rs: Vec<Record> = (0..20).map(|i| collective(i, 100 + u64::from(i))).collect();
    let mut all = rs.clone();
    all.push(metric());
    let bytes = rmp_serde::to_vec_named(&all).unwrap();
    assert_eq!(bytes[0], 0xdc, "more than 15 items: array16");
    assert_eq!(decode_datagram(&bytes).unwrap().records, all);
}

#[test]
fn messagepack_from_a_c_agent_with_ints_and_floats_mixed() {
    // What a hand-written encoder emits: integer `ts`, float32 `dur_us`,
    // fields in any order, a field keel does not know.
    let v = serde_json::json!({
        "dur_us": 12.5f32, "seq": 7, "rank": 1, "t": "collective", "node": "n9",
        "job": 4242, "arrive": 1763800000, "ts": 1763800001, "comm": "0xdeadbeef"
    });
    let d = decode_datagram(&rmp_serde::to_vec(&v).unwrap()).unwrap();
    let [Record::Collective(c)] = d.records.as_slice() else {
        panic!("{d:?}")
    };
    assert_eq!((c.job.as_str(), c.seq, c.dur_us), ("4242", 7, 12.5));
    assert_eq!(c.op, "", "op is optional");
    assert_eq!(d.unknown_fields, 1);
}

#[test]
fn messagepack_errors_name_the_item_and_field() {
    let good = serde_json::to_value(collective(0, 1)).unwrap();
    let mut bad = good.clone();
    bad.as_object_mut().unwrap().remove("seq");
    let bytes = rmp_serde::to_vec(&vec![good.clone(), good, bad]).unwrap();
    let e = decode_datagram(&bytes).unwrap_err();
    assert!(
        matches!(&e, PushError::MsgPack { item: Some(2), reason } if reason.contains("`seq`")),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("MessagePack item 2: "), "{e}");
}

#[test]
fn a_nan_in_messagepack_is_skipped_like_the_string_nan() {
    let mut v = serde_json::to_value(metric()).unwrap();
    v["value"] = serde_json::json!(0.0);
    let mut bytes = rmp_serde::to_vec(&v).unwrap();
    // serde_json cannot hold a NaN; patch the float64 0.0 that encodes `value`.
    let zero = [0xcb, 0, 0, 0, 0, 0, 0, 0, 0];
    let at = bytes.windows(9).position(|w| w == zero).unwrap();
    bytes[at + 1..at + 9].copy_from_slice(&f64::NAN.to_be_bytes());
    let d = decode_datagram(&bytes).unwrap();
    assert_eq!((d.records.len(), d.skipped), (0, 1));
}

#[test]
fn garbage_is_rejected_with_a_reason() {
    let one = rmp_serde::to_vec_named(&collective(1, 1)).unwrap();
    let mut trailing = one.clone();
    trailing.extend_from_slice(b"xyz");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "empty"),
        (b"\n\n".to_vec(), "empty"),
        (vec![0x01, 0x02], "first byte 0x01"),
        (b"hello".to_vec(), "first byte 0x68"),
        (one[..one.len() - 3].to_vec(), "not MessagePack"),
        (trailing, "3 bytes after the record"),
        (vec![0x93, 0x80], "item 0: missing field `t`"),
        (
            vec![0x91, 0x05],
            "item 0: bad record: invalid type: integer",
        ),
        (
            [&[0x92][..], &one].concat(),
            "array says 2 items, datagram holds 1",
        ),
        (vec![0xdd, 0xff], "array header cut short"),
        (b"{\"t\":".to_vec(), "JSON line 1: bad JSON"),
        (b"\xff".to_vec(), "first byte 0xff"),
    ];
    for (bytes, want) in cases {
        let e = decode_datagram(&bytes).unwrap_err().to_string();
        assert!(e.contains(want), "{bytes:x?}: {e:?} lacks {want:?}");
    }
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
        let _ = decode_datagram(&bytes);
    }

    #[test]
    fn cut_or_flipped_messagepack_never_panics(cut in 0usize..200, flip in 0usize..200, x in 0u8..=255) {
        let mut bytes = rmp_serde::to_vec_named(&vec![collective(1, 2), metric()]).unwrap();
        let n = bytes.len();
        bytes[flip % n] ^= x;
        bytes.truncate(cut % (n + 1));
        let _ = decode_datagram(&bytes);
    }
}

#[test]
fn addresses_parse_and_print() {
    let a: PushAddr = "127.0.0.1:9400".parse().unwrap();
    assert_eq!(a.to_string(), "udp://127.0.0.1:9400");
    assert_eq!(
        "udp://[::1]:1".parse::<PushAddr>().unwrap().to_string(),
        "udp://[::1]:1"
    );
    let u: PushAddr = "unix:///run/keel.sock".parse().unwrap();
    assert_eq!(u, PushAddr::Unix("/run/keel.sock".into()));
    assert_eq!(
        "/run/k".parse::<PushAddr>().unwrap(),
        PushAddr::Unix("/run/k".into())
    );
    let e = "localhost:9400".parse::<PushAddr>().unwrap_err();
    assert!(e.contains("localhost:9400"), "{e}");
}

#[tokio::test]
async fn udp_round_trip_counts_the_bad_and_keeps_the_good() {
    let mut ep = PushEndpoint::bind(&"127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let PushAddr::Udp(to) = ep.local_addr().unwrap() else {
        panic!("not udp")
    };
    let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.send_to(COLLECTIVE.as_bytes(), to).unwrap();
    tx.send_to(b"\x01garbage", to).unwrap();
    tx.send_to(
        &rmp_serde::to_vec_named(&vec![collective(2, 5), metric()]).unwrap(),
        to,
    )
    .unwrap();
    let (mut out, mut total) = (Vec::new(), RecvStats::default());
    while total.datagrams < 3 {
        total.add(&ep.recv(&mut out).await.unwrap());
    }
    assert_eq!((total.records, total.bad, total.truncated), (3, 1, 0));
    assert_eq!(out.len(), 3);
    assert!(matches!(&out[0], Record::Collective(c) if c.rank == 5));
    assert_eq!(out[1..], [collective(2, 5), metric()]);
    assert_eq!(ep.try_recv(&mut out).unwrap(), RecvStats::default());
}

#[tokio::test]
async fn unix_round_trip_replaces_a_stale_socket_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("push.sock");
    // A socket file whose owner is gone.
    drop(std::os::unix::net::UnixDatagram::bind(&path).unwrap());
    let addr = PushAddr::Unix(path.clone());
    let mut ep = PushEndpoint::bind(&addr).await.unwrap();
    let again = PushEndpoint::bind(&addr).await.err().expect("in use");
    assert!(again.to_string().contains("another process"), "{again}");

    let tx = std::os::unix::net::UnixDatagram::unbound().unwrap();
    // A reading names no job: any local process may send it.
    tx.send_to(&rmp_serde::to_vec_named(&metric()).unwrap(), &path)
        .unwrap();
    tx.send_to(&vec![b' '; MAX_DATAGRAM + 10], &path).unwrap();
    let (mut out, mut total) = (Vec::new(), RecvStats::default());
    while total.datagrams < 2 {
        total.add(&ep.recv(&mut out).await.unwrap());
    }
    assert_eq!((total.records, total.bad, total.truncated), (1, 1, 1));
    assert_eq!(out, [metric()]);
    drop(ep);
    assert!(!path.exists(), "the socket file is removed on drop");
}

fn mode_and_gid(path: &std::path::Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.mode() & 0o7777, m.gid())
}

#[tokio::test]
async fn the_unix_socket_is_0660_and_given_the_configured_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("push.sock");
    let addr = PushAddr::Unix(path.clone());
    let ep = PushEndpoint::bind(&addr).await.unwrap();
    // SAFETY: getegid cannot fail and touches no memory.
    let own_gid = unsafe { libc::getegid() };
    assert_eq!(mode_and_gid(&path), (0o660, own_gid));
    drop(ep);

    // The process's own group, by name: a group it may always chown to.
    let out = std::process::Command::new("id")
        .arg("-gn")
        .output()
        .unwrap();
    let group = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let options = PushOptions {
        group: Some(group.clone()),
        allow_unattributed: false,
    };
    let _ep = PushEndpoint::bind_with(&addr, &options).await.unwrap();
    assert_eq!(mode_and_gid(&path), (0o660, own_gid), "group {group}");
}

#[tokio::test]
async fn a_group_that_does_not_exist_stops_the_endpoint_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("push.sock");
    let options = PushOptions {
        group: Some("keel-no-such-group".into()),
        allow_unattributed: false,
    };
    let e = PushEndpoint::bind_with(&PushAddr::Unix(path.clone()), &options)
        .await
        .err()
        .expect("refused");
    let text = e.to_string();
    assert!(
        text.contains("\"keel-no-such-group\" does not exist"),
        "{text}"
    );
    assert!(text.contains("push.sock"), "names the endpoint: {text}");
    assert!(!path.exists());
}

#[tokio::test]
async fn sender_options_on_udp_are_refused() {
    let options = PushOptions {
        group: None,
        allow_unattributed: true,
    };
    let e = PushEndpoint::bind_with(&"127.0.0.1:0".parse().unwrap(), &options)
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("unix:// sockets only"), "{e}");
}

#[tokio::test]
async fn a_regular_file_at_the_socket_path_is_never_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-socket");
    std::fs::write(&path, "data").unwrap();
    let e = PushEndpoint::bind(&PushAddr::Unix(path.clone()))
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert!(
        e.to_string().contains("not-a-socket"),
        "names the path: {e}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
}

#[tokio::test]
async fn recv_waits_for_a_datagram_sent_later() {
    let mut ep = PushEndpoint::bind(&"127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let PushAddr::Udp(to) = ep.local_addr().unwrap() else {
        panic!("not udp")
    };
    let mut out = Vec::new();
    assert_eq!(
        ep.try_recv(&mut out).unwrap().datagrams,
        0,
        "nothing sent yet"
    );
    let sender = tokio::spawn(async move {
        let tx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        tx.send_to(COLLECTIVE.as_bytes(), to).await.unwrap();
    });
    let stats = ep.recv(&mut out).await.unwrap();
    sender.await.unwrap();
    assert_eq!((stats.datagrams, stats.records), (1, 1));
    assert!(matches!(&out[0], Record::Collective(c) if c.seq == 1187));
}
