//! A fast path for the lines that make up nearly every trace: flat objects
//! whose strings carry no escapes, whose values are strings and numbers, and
//! whose only nested object is a metric's `labels`. It borrows every string
//! from the line and never allocates for one that fits inline.
//!
//! Anything else (escapes, job records, unknown keys, odd numbers) returns
//! `None` and goes through serde, which also words the errors. A property test
//! holds the two paths to the same answer on every line the fast one accepts.

use super::trace_line::{Fields, Value};
use keel_model::{Dir, MetricLabels, Name, RequestPhase};
use std::borrow::Cow;

struct Scan<'a> {
    b: &'a [u8],
    s: &'a str,
    i: usize,
}

impl<'a> Scan<'a> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\r' | b'\n') {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    /// A string without escapes or control characters. One scalar pass:
    /// a trace's strings are short (keys, names, label values), too short
    /// for a vectorised search to pay for its setup.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let b = self.b;
        let mut i = start;
        loop {
            match *b.get(i)? {
                b'"' => break,
                b'\\' => return None,
                c if c < 0x20 => return None,
                _ => i += 1,
            }
        }
        self.i = i + 1;
        Some(&self.s[start..i])
    }

    /// A number token, checked against JSON's grammar so that it parses here
    /// exactly when serde would accept it.
    fn number(&mut self) -> Option<&'a str> {
        self.ws();
        let start = self.i;
        let b = self.b;
        let mut i = start;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
            }
            _ => return None,
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            let d = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == d {
                return None;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let d = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == d {
                return None;
            }
        }
        self.i = i;
        Some(&self.s[start..i])
    }

    fn float(&mut self) -> Option<f64> {
        self.number()?.parse().ok().filter(|x: &f64| x.is_finite())
    }

    fn uint<T: std::str::FromStr>(&mut self) -> Option<T> {
        self.number()?.parse().ok()
    }

    fn id(&mut self) -> Option<Name> {
        if self.peek()? == b'"' {
            Some(Name::from(self.string()?))
        } else {
            Some(Name::from(self.uint::<u64>()?.to_string()))
        }
    }

    fn labels(&mut self) -> Option<MetricLabels> {
        let mut l = MetricLabels::default();
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(l);
        }
        // serde refuses a repeated known label; leave those lines to it.
        let mut seen = [false; 6];
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            let val = self.string()?;
            let slot = match key {
                "gpu" => 0,
                "device" => 1,
                "dir" => 2,
                "model_name" => 3,
                "gpu_instance" => 4,
                "cgroup" => 5,
                _ => usize::MAX,
            };
            if slot < seen.len() {
                if seen[slot] {
                    return None;
                }
                seen[slot] = true;
            }
            match key {
                "gpu" => l.gpu = Some(val.trim().parse().ok()?),
                "device" => l.device = Some(Name::from(val)),
                "dir" => {
                    l.dir = Some(match val {
                        "rx" => Dir::Rx,
                        "tx" => Dir::Tx,
                        _ => return None,
                    })
                }
                "model_name" => l.model_name = Some(Name::from(val)),
                "gpu_instance" => l.gpu_instance = Some(val.trim().parse().ok()?),
                "cgroup" => l.cgroup = Some(Name::from(val)),
                _ => {}
            }
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(l);
                }
                _ => return None,
            }
        }
    }

    fn value(&mut self) -> Option<Value> {
        if self.peek()? == b'"' {
            return match self.string()? {
                "NaN" | "+Inf" | "-Inf" | "Inf" | "inf" | "+inf" | "-inf" | "nan" => {
                    Some(Value::NonFinite)
                }
                _ => None,
            };
        }
        // An overflowing number is serde's error to word, not a NaN.
        Some(Value::Finite(self.float()?))
    }
}

/// Scans `text` (the whole line) into `f`, or gives up with `None` (`f`
/// then holds whatever was read before the point it gave up at).
pub(crate) fn scan<'a>(text: &'a str, f: &mut Fields<'a>) -> Option<()> {
    let mut s = Scan {
        b: text.as_bytes(),
        s: text,
        i: 0,
    };
    s.eat(b'{')?;
    if s.peek()? != b'}' {
        loop {
            let key = s.string()?;
            s.eat(b':')?;
            match key {
                "t" => f.t = Some(Cow::Borrowed(s.string()?)),
                "ts" => f.ts = Some(s.float()?),
                "node" => f.node = Some(Cow::Borrowed(s.string()?)),
                "job" => f.job = Some(s.id()?),
                "rank" => f.rank = Some(s.uint()?),
                "op" => f.op = Some(Cow::Borrowed(s.string()?)),
                "seq" => f.seq = Some(s.uint()?),
                "bytes" => f.bytes = Some(s.uint()?),
                "arrive" => f.arrive = Some(s.float()?),
                "dur_us" => f.dur_us = Some(s.float()?),
                "name" => f.name = Some(Cow::Borrowed(s.string()?)),
                "labels" => f.labels = Some(s.labels()?),
                "value" => f.value = Some(s.value()?),
                "id" => f.id = Some(s.id()?),
                "phase" => {
                    f.phase = Some(match s.string()? {
                        "arrive" => RequestPhase::Arrive,
                        "first_token" => RequestPhase::FirstToken,
                        "done" => RequestPhase::Done,
                        _ => return None,
                    })
                }
                "prompt_tokens" => f.prompt_tokens = Some(s.uint()?),
                "output_tokens" => f.output_tokens = Some(s.uint()?),
                _ => return None,
            }
            match s.peek()? {
                b',' => s.i += 1,
                b'}' => break,
                _ => return None,
            }
        }
    }
    s.i += 1;
    s.ws();
    (s.i == s.b.len()).then_some(())
}
