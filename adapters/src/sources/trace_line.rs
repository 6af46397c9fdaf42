//! Parsing one trace line into a `Record`.
//!
//! A hand-driven serde visitor rather than a derived struct: it lets the
//! reader count unknown fields (a derive would drop them silently, `flatten`
//! would buffer every line), borrows strings straight from the line, and
//! decides the record type only once every field has been seen, since `t`
//! need not come first.

use keel_model::{
    CollectiveRecord, JobRecord, MetricLabels, MetricName, MetricSample, Name, Record,
    RequestPhase, RequestRecord,
};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// Earliest and latest plausible trace times (2001 .. 2286): a `ts` outside
/// them is garbage, and letting it in would wreck the reorder window.
pub const TS_MIN: f64 = 1.0e9;
pub const TS_MAX: f64 = 1.0e10;

/// What one line turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed<'a> {
    Record {
        record: Record,
        /// Fields the spec does not define for this record type.
        unknown_fields: u32,
    },
    /// A record type keel does not know (`t` names it); ignored and counted.
    UnknownType(Cow<'a, str>),
    /// A metric keel does not use; ignored and counted. Borrowed from the
    /// line where it can be: exporters write many metrics keel skips.
    UnknownMetric(Cow<'a, str>),
    /// A sample whose value is `"NaN"`, `"+Inf"` or `"-Inf"`; skipped and counted.
    NonFinite,
    /// Nothing on the line.
    Blank,
}

/// Why a line was rejected; the reader adds the line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: u64,
    pub reason: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// A metric value: a number, or the strings Prometheus text writes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value {
    Finite(f64),
    NonFinite,
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number or \"NaN\"/\"+Inf\"/\"-Inf\"")
            }
            // JSON cannot spell a non-finite number, but MessagePack can.
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
                Ok(if v.is_finite() {
                    Value::Finite(v)
                } else {
                    Value::NonFinite
                })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Finite(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
                Ok(Value::Finite(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
                match v.trim().parse::<f64>() {
                    Ok(x) if x.is_finite() => Ok(Value::Finite(x)),
                    Ok(_) => Ok(Value::NonFinite),
                    Err(_) => Err(E::custom(format!("value {v:?} is not a number"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A string borrowed from the line when it has no escapes. serde's own
/// `Cow<str>` always allocates; this one borrows like `#[serde(borrow)]`.
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// Job ids are strings in the spec; Slurm-fed tools sometimes write numbers.
struct Id(Name);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an integer id")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                Ok(Id(Name::from(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                Ok(Id(Name::from(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
                Ok(Id(Name::from(v.to_string())))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Default)]
pub(crate) struct Fields<'a> {
    pub(crate) t: Option<Cow<'a, str>>,
    pub(crate) ts: Option<f64>,
    pub(crate) node: Option<Cow<'a, str>>,
    pub(crate) job: Option<Name>,
    pub(crate) rank: Option<u32>,
    pub(crate) op: Option<Cow<'a, str>>,
    pub(crate) seq: Option<u64>,
    pub(crate) bytes: Option<u64>,
    pub(crate) arrive: Option<f64>,
    pub(crate) dur_us: Option<f64>,
    pub(crate) name: Option<Cow<'a, str>>,
    pub(crate) labels: Option<MetricLabels>,
    pub(crate) value: Option<Value>,
    pub(crate) id: Option<Name>,
    pub(crate) phase: Option<RequestPhase>,
    pub(crate) prompt_tokens: Option<u32>,
    pub(crate) output_tokens: Option<u32>,
    /// Keys only a job record has; it is parsed again whole when `t` is "job".
    pub(crate) job_keys: u32,
    pub(crate) unknown: u32,
}

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Fields<'a>, M::Error> {
                let mut f = Fields::default();
                while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
                    match key.as_ref() {
                        "t" => f.t = Some(map.next_value::<Str>()?.0),
                        "ts" => f.ts = Some(map.next_value()?),
                        "node" => f.node = map.next_value::<Option<Str>>()?.map(|s| s.0),
                        "job" => f.job = map.next_value::<Option<Id>>()?.map(|i| i.0),
                        "rank" => f.rank = Some(map.next_value()?),
                        "op" => f.op = Some(map.next_value::<Str>()?.0),
                        "seq" => f.seq = Some(map.next_value()?),
                        "bytes" => f.bytes = Some(map.next_value()?),
                        "arrive" => f.arrive = Some(map.next_value()?),
                        "dur_us" => f.dur_us = Some(map.next_value()?),
                        "name" => f.name = Some(map.next_value::<Str>()?.0),
                        "labels" => f.labels = Some(map.next_value()?),
                        "value" => f.value = Some(map.next_value()?),
                        "id" => f.id = Some(map.next_value::<Id>()?.0),
                        "phase" => f.phase = Some(map.next_value()?),
                        "prompt_tokens" => f.prompt_tokens = map.next_value()?,
                        "output_tokens" => f.output_tokens = map.next_value()?,
                        "state" | "tenant" | "nodes" | "ranks" | "gpus" | "nics" | "tp" | "pp"
                        | "replica" => {
                            map.next_value::<IgnoredAny>()?;
                            f.job_keys += 1;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            f.unknown += 1;
                        }
                    }
                }
                Ok(f)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// serde_json's message, placed by column alone: the reader names the
/// file's line, and serde's own "line 1" would be a second, different one.
fn bad_json(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let what = msg
        .rsplit_once(" at line ")
        .map_or(msg.as_str(), |(m, _)| m);
    format!("bad JSON at column {}: {what}", e.column())
}

/// A name longer than `NAME_LEN_MAX` is no node's or job's (the edge and
/// the correlator refuse it too): refused where it enters.
fn name_ok(name: Option<&str>, field: &str) -> Result<(), String> {
    match name {
        Some(n) if n.len() > keel_model::NAME_LEN_MAX => Err(format!(
            "field `{field}` is {} bytes, more than {}",
            n.len(),
            keel_model::NAME_LEN_MAX
        )),
        _ => Ok(()),
    }
}

fn need<T>(field: Option<T>, t: &str, name: &str) -> Result<T, String> {
    field.ok_or_else(|| format!("{t} record: missing field `{name}`"))
}

fn finite(x: f64, name: &str) -> Result<f64, String> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(format!("field `{name}` is not finite"))
    }
}

/// Parses one line (without its newline). `line` numbers the error.
pub fn parse_line(bytes: &[u8], line: u64) -> Result<Parsed<'_>, LineError> {
    parse(bytes, true).map_err(|reason| LineError { line, reason })
}

fn parse(bytes: &[u8], fast: bool) -> Result<Parsed<'_>, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Parsed::Blank);
    }
    // Filled in place: the fields are large enough for moves to cost. A
    // line the fast scanner accepts is valid UTF-8 (it checks as it goes).
    let mut f = Fields::default();
    if !fast || super::fast_line::scan(bytes, &mut f).is_none() {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 ({e})"))?;
        f = serde_json::from_str(text).map_err(|e| bad_json(&e))?;
    }
    build(f, || {
        serde_json::from_slice(bytes).map_err(|e| format!("job record: {e}"))
    })
}

/// Turns the fields of one record into a `Parsed`, whatever encoding they
/// came in. Job records are rare and nested, so `job` parses the whole
/// record again, from the same bytes, only when `t` says "job".
pub(crate) fn build<'a>(
    f: Fields<'a>,
    job: impl FnOnce() -> Result<JobRecord, String>,
) -> Result<Parsed<'a>, String> {
    let t = f.t.as_deref().ok_or("missing field `t`")?;
    let ts = finite(need(f.ts, t, "ts")?, "ts")?;
    if !(TS_MIN..=TS_MAX).contains(&ts) {
        return Err(format!(
            "field `ts` = {ts} is not a plausible Unix time in seconds"
        ));
    }
    let unknown = f.unknown;
    name_ok(f.node.as_deref(), "node")?;
    name_ok(f.job.as_deref(), "job")?;
    let node = f.node.as_deref().map(Name::from);
    let record = match t {
        "collective" => {
            let arrive = finite(need(f.arrive, t, "arrive")?, "arrive")?;
            let dur_us = finite(need(f.dur_us, t, "dur_us")?, "dur_us")?;
            if dur_us < 0.0 {
                return Err(format!("field `dur_us` = {dur_us} is negative"));
            }
            Record::Collective(CollectiveRecord {
                ts,
                node: need(node, t, "node")?,
                job: need(f.job, t, "job")?,
                rank: need(f.rank, t, "rank")?,
                op: f.op.as_deref().map(Name::from).unwrap_or_default(),
                seq: need(f.seq, t, "seq")?,
                bytes: f.bytes.unwrap_or(0),
                arrive,
                dur_us,
            })
        }
        "metric" => {
            let raw_name = need(f.name, t, "name")?;
            let Some(name) = MetricName::from_wire(&raw_name) else {
                return Ok(Parsed::UnknownMetric(raw_name));
            };
            let value = match need(f.value, t, "value")? {
                Value::Finite(v) => v,
                Value::NonFinite => return Ok(Parsed::NonFinite),
            };
            let labels = f.labels.unwrap_or_default();
            labels.check()?;
            Record::Metric(MetricSample {
                ts,
                node: need(node, t, "node")?,
                name,
                labels,
                value,
            })
        }
        "job" => Record::Job(Box::new(job()?)),
        "request" => Record::Request(RequestRecord {
            ts,
            node,
            job: f.job,
            id: need(f.id, t, "id")?,
            phase: need(f.phase, t, "phase")?,
            prompt_tokens: f.prompt_tokens,
            output_tokens: f.output_tokens,
        }),
        other => return Ok(Parsed::UnknownType(Cow::Owned(other.to_string()))),
    };
    let unknown_fields = if matches!(record, Record::Job(_)) {
        unknown
    } else {
        unknown + f.job_keys
    };
    Ok(Parsed::Record {
        record,
        unknown_fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("\"t\":\"metric\"".to_string()),
            Just("\"t\":\"collective\"".to_string()),
            Just("\"t\":\"request\"".to_string()),
            Just("\"t\":\"x\"".to_string()),
            (1.0e9f64..1.0e10).prop_map(|v| format!("\"ts\":{v}")),
            Just("\"ts\":1e400".to_string()),
            Just("\"ts\":\"1763800000\"".to_string()),
            prop::sample::select(vec![
                "\"node\":\"n1\"",
                "\"node\":null",
                "\"node\":\"n\\u0031\"",
                "\"node\":3"
            ])
            .prop_map(String::from),
            prop::sample::select(vec![
                "\"job\":\"7\"",
                "\"job\":7",
                "\"job\":-7",
                "\"job\":7.5",
                "\"job\":null"
            ])
            .prop_map(String::from),
            prop::sample::select(vec![
                "\"rank\":1",
                "\"rank\":-1",
                "\"rank\":1.0",
                "\"rank\":1e2",
                "\"rank\":01",
                "\"rank\":4294967296"
            ])
            .prop_map(String::from),
            prop::sample::select(vec![
                "\"seq\":5",
                "\"bytes\":7",
                "\"arrive\":1763800000.5",
                "\"dur_us\":12.5",
                "\"dur_us\":-1",
                "\"dur_us\":1.",
                "\"dur_us\":.5"
            ])
            .prop_map(String::from),
            prop::sample::select(vec![
                "\"name\":\"DCGM_FI_DEV_GPU_UTIL\"",
                "\"name\":\"vllm:gpu_cache_usage_perc\"",
                "\"name\":\"other\""
            ])
            .prop_map(String::from),
            prop::sample::select(vec![
                "\"labels\":{\"gpu\":\"1\"}",
                "\"labels\":{\"gpu\":\" 2\",\"UUID\":\"x\"}",
                "\"labels\":{\"gpu\":1}",
                "\"labels\":{}",
                "\"labels\":{\"dir\":\"rx\",\"device\":\"mlx5_0\"}",
                "\"labels\":{\"dir\":\"up\"}",
                "\"labels\":{\"gpu\":\"1\",\"gpu\":\"2\"}",
                "\"labels\":[]"
            ])
            .prop_map(String::from),
            prop::sample::select(vec![
                "\"value\":1",
                "\"value\":-2.5e3",
                "\"value\":\"NaN\"",
                "\"value\":\"+Inf\"",
                "\"value\":\"1.5\"",
                "\"value\":1e999",
                "\"value\":\"x\"",
                "\"value\":true"
            ])
            .prop_map(String::from),
            prop::sample::select(vec![
                "\"id\":\"r1\"",
                "\"phase\":\"done\"",
                "\"phase\":\"nope\"",
                "\"prompt_tokens\":5",
                "\"output_tokens\":null",
                "\"extra\":[1,{\"a\":2}]",
                "\"state\":\"RUNNING\""
            ])
            .prop_map(String::from),
        ]
    }

    proptest! {
        /// The fast path and serde agree on every line the fast path accepts.
        #[test]
        fn fast_and_general_parsers_agree(
            base in 0usize..3,
            pieces in prop::collection::vec(piece(), 0..5),
            ws in any::<bool>(),
        ) {
            // A valid record first, so that the pieces after it (which
            // override its keys) test agreement on accepted records too.
            let bases = [
                r#""t":"metric","ts":1763800001.0,"node":"n1","name":"DCGM_FI_DEV_GPU_UTIL","labels":{"gpu":"0"},"value":1"#,
                r#""t":"collective","ts":1763800001.2,"node":"n2","job":"4242","rank":5,"op":"allreduce","seq":1,"bytes":1,"arrive":1763800001.1,"dur_us":1312.0"#,
                r#""t":"request","ts":1763800001.5,"node":"n1","job":"4242","id":"req-91","phase":"arrive","prompt_tokens":812"#,
            ];
            let sep = if ws { " , " } else { "," };
            let mut all = vec![bases[base].to_string()];
            all.extend(pieces);
            let line = format!("{{{}}}", all.join(sep));
            let fast = parse(line.as_bytes(), true);
            let slow = parse(line.as_bytes(), false);
            match (&fast, &slow) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "{}", line),
                (Err(_), Err(_)) => {}
                _ => prop_assert!(false, "{}: fast {:?} vs general {:?}", line, fast, slow),
            }
        }
    }

    fn ok(line: &str) -> Parsed<'_> {
        parse_line(line.as_bytes(), 1).expect("parses")
    }

    #[test]
    fn parses_the_specs_examples() {
        let job = ok(
            r#"{"t":"job","ts":1763800000.0,"job":"4242","state":"RUNNING","tenant":"team-a","nodes":["n01","n02"],"ranks":{"n01":[0,1,2,3],"n02":[4,5,6,7]},"gpus":{"0":0,"1":1,"2":2,"3":3,"4":0,"5":1,"6":2,"7":3},"nics":{"0":"mlx5_0","1":"mlx5_1","2":"mlx5_2","3":"mlx5_3","4":"mlx5_0","5":"mlx5_1","6":"mlx5_2","7":"mlx5_3"},"tp":8,"pp":1,"replica":"r1"}"#,
        );
        let Parsed::Record {
            record: Record::Job(job),
            unknown_fields: 0,
        } = job
        else {
            panic!("not a job: {job:?}")
        };
        assert_eq!(job.node_of(5).map(|n| n.as_str()), Some("n02"));
        assert_eq!(job.gpus[&5], 1);
        assert_eq!(job.nics[&7], "mlx5_3");

        let c = ok(
            r#"{"t":"collective","ts":1763800001.2034,"node":"n02","job":"4242","rank":5,"op":"allreduce","seq":1187,"bytes":16777216,"arrive":1763800001.2021,"dur_us":1312.0}"#,
        );
        assert!(
            matches!(c, Parsed::Record { record: Record::Collective(ref c), .. } if c.rank == 5 && c.seq == 1187)
        );

        let m = ok(
            r#"{"t":"metric","ts":1763800001.0,"node":"n02","name":"DCGM_FI_DEV_GPU_UTIL","labels":{"gpu":"1"},"value":97.0}"#,
        );
        assert!(
            matches!(m, Parsed::Record { record: Record::Metric(ref m), .. } if m.labels.gpu == Some(1) && m.value == 97.0)
        );
    }

    #[test]
    fn counts_unknown_fields_types_and_metrics() {
        let p = ok(
            r#"{"t":"metric","ts":1763800001.0,"node":"n","name":"DCGM_FI_DEV_GPU_UTIL","labels":{"gpu":"0","UUID":"GPU-1"},"value":1,"extra":{"a":[1,2]}}"#,
        );
        assert!(matches!(
            p,
            Parsed::Record {
                unknown_fields: 1,
                ..
            }
        ));
        assert_eq!(
            ok(r#"{"t":"kernel","ts":1763800001.0}"#),
            Parsed::UnknownType("kernel".into())
        );
        assert_eq!(
            ok(r#"{"t":"metric","ts":1763800001.0,"node":"n","name":"foo_bar","value":1}"#),
            Parsed::UnknownMetric("foo_bar".into())
        );
    }

    #[test]
    fn non_finite_values_are_skipped_not_errors() {
        for v in ["\"NaN\"", "\"+Inf\"", "\"-Inf\""] {
            let line = format!(
                r#"{{"t":"metric","ts":1763800001.0,"node":"n","name":"DCGM_FI_DEV_GPU_UTIL","labels":{{"gpu":"0"}},"value":{v}}}"#
            );
            assert_eq!(ok(&line), Parsed::NonFinite);
        }
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let e = parse_line(br#"{"t":"collective","ts":1763800001.0,"node":"n","job":"1","rank":0,"seq":1,"arrive":1763800001.0}"#, 42).unwrap_err();
        assert_eq!(e.line, 42);
        assert!(e.reason.contains("dur_us"), "{e}");
        let e = parse_line(br#"{"t":"metric","ts":17638"#, 7).unwrap_err();
        assert!(
            e.to_string().starts_with("line 7: bad JSON at column"),
            "{e}"
        );
        assert!(!e.to_string().contains("line 1"), "one line number: {e}");
        let e = parse_line(
            br#"{"t":"metric","ts":5,"node":"n","name":"DCGM_FI_DEV_GPU_UTIL","value":1}"#,
            1,
        )
        .unwrap_err();
        assert!(e.reason.contains("ts"), "{e}");
        let e = parse_line(b"\xff\xfe", 3).unwrap_err();
        assert!(e.reason.contains("UTF-8"));
    }

    #[test]
    fn an_overlong_label_value_is_refused_with_its_name() {
        let long = "x".repeat(keel_model::LABEL_VALUE_MAX + 1);
        let line = format!(
            r#"{{"t":"metric","ts":1763800001.0,"node":"n","name":"cgroup_cpu_total_seconds","labels":{{"cgroup":"/{long}"}},"value":1}}"#
        );
        let e = parse_line(line.as_bytes(), 9).unwrap_err();
        assert!(e.reason.contains("`cgroup`"), "{e}");
        assert_eq!(e.line, 9);
    }

    #[test]
    fn a_node_name_longer_than_a_dns_name_is_refused() {
        let node = "n".repeat(keel_model::NAME_LEN_MAX + 1);
        let line = format!(
            r#"{{"t":"metric","ts":1763800001.0,"node":"{node}","name":"DCGM_FI_DEV_GPU_UTIL","labels":{{"gpu":"0"}},"value":1}}"#
        );
        let e = parse_line(line.as_bytes(), 2).unwrap_err();
        assert!(e.reason.contains("`node`"), "{e}");
    }

    #[test]
    fn old_vllm_cache_metric_name_is_the_same_gauge() {
        let p = ok(
            r#"{"t":"metric","ts":1763800001.0,"node":"n","name":"vllm:gpu_cache_usage_perc","labels":{"model_name":"m"},"value":0.5}"#,
        );
        assert!(
            matches!(p, Parsed::Record { record: Record::Metric(ref m), .. } if m.name == MetricName::VllmKvCacheUsage)
        );
    }
}
