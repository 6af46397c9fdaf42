//! A fast path for the lines that make up nearly every trace: flat objects
//! whose strings carry no escapes, whose values are strings and numbers, and
//! whose only nested object is a metric's `labels`. It works on the line's
//! bytes, borrows every string it keeps from the line and never allocates
//! for one that fits inline.
//!
//! Anything else (escapes, job records, unknown keys, odd numbers) returns
//! `None` and goes through serde, which also words the errors. A property test
//! holds the two paths to the same answer on every line the fast one accepts.
//!
//! The line is not checked as UTF-8 as a whole first: outside strings the
//! scanner accepts only ASCII, and a string holding a byte above 0x7f is
//! checked on its own. A line the scanner accepts is therefore valid UTF-8,
//! as serde would have required.

use super::trace_line::{Fields, Value};
use keel_model::{Dir, MetricLabels, Name, RequestPhase};
use std::borrow::Cow;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `w` that is zero; exact up to and including
/// the lowest such byte (bytes above it may be flagged falsely).
#[inline]
fn zero_bytes(w: u64) -> u64 {
    w.wrapping_sub(ONES) & !w & HIGHS
}

/// High bit set in each byte of `w` that ends a plain run of string bytes:
/// `"`, `\`, a control character (< 0x20) or a byte above 0x7f. The lowest
/// flagged byte is always a true one.
#[inline]
fn stops(w: u64) -> u64 {
    zero_bytes(w ^ (ONES * u64::from(b'"')))
        | zero_bytes(w ^ (ONES * u64::from(b'\\')))
        | (w.wrapping_sub(ONES * 0x20) & !w & HIGHS)
        | (w & HIGHS)
}

/// Exact powers of ten as `f64` (10^0 ..= 10^22).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// A JSON number token, with its digits gathered as it was scanned.
struct Number<'a> {
    text: &'a [u8],
    negative: bool,
    /// All digits before the exponent, as one integer (valid when
    /// `digits <= 19`).
    mantissa: u64,
    digits: u32,
    /// Digits after the point.
    fraction: u32,
    /// The written exponent (`e..`), saturated far beyond any `f64`'s.
    exponent: i32,
    has_point_or_exponent: bool,
}

impl Number<'_> {
    /// The nearest `f64`, or `None` if it is not finite. Exact (Clinger's
    /// fast path) when the digits fit in 2^53 and the power of ten in
    /// 10^22, which covers timestamps and exporter values; the rest are
    /// handed to the standard library's parser.
    fn float(&self) -> Option<f64> {
        let e = self.exponent.saturating_sub(self.fraction as i32);
        let x = if self.digits <= 19 && self.mantissa <= 1 << 53 && (-22..=22).contains(&e) {
            let m = self.mantissa as f64;
            let x = if e < 0 {
                m / POW10[(-e) as usize]
            } else {
                m * POW10[e as usize]
            };
            if self.negative {
                -x
            } else {
                x
            }
        } else {
            std::str::from_utf8(self.text).ok()?.parse().ok()?
        };
        x.is_finite().then_some(x)
    }

    /// A non-negative integer written without point or exponent, if it fits `T`.
    fn uint<T: TryFrom<u64>>(&self) -> Option<T> {
        if self.negative || self.has_point_or_exponent || self.digits > 19 {
            return None;
        }
        T::try_from(self.mantissa).ok()
    }
}

/// Reads the decimal digits from `i` on into `m` (wrapping: the caller
/// counts them) and returns where they end.
#[inline]
fn digits(b: &[u8], mut i: usize, m: &mut u64) -> usize {
    let mut x = *m;
    while let Some(&c) = b.get(i) {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        x = x.wrapping_mul(10).wrapping_add(u64::from(d));
        i += 1;
    }
    *m = x;
    i
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    /// Skips JSON whitespace. Lines as writers write them have none, so
    /// the first byte is looked at before any loop.
    #[inline]
    fn ws(&mut self) {
        if self.b.get(self.i).is_some_and(|&c| c > b' ') {
            return;
        }
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\r' | b'\n') {
            self.i += 1;
        }
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    #[inline]
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    /// A string without escapes or control characters, as bytes, always
    /// valid UTF-8. Eight bytes at a time: label values (UUIDs, model
    /// names) are long enough for that to pay. A byte above 0x7f makes the
    /// string checked as UTF-8 on its own.
    #[inline]
    fn raw_string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let b = self.b;
        let start = self.i;
        let mut i = start;
        loop {
            let Some(chunk) = b.get(i..i + 8) else {
                return self.string_tail(start, i);
            };
            let m = stops(u64::from_le_bytes(chunk.try_into().ok()?));
            if m == 0 {
                i += 8;
                continue;
            }
            i += (m.trailing_zeros() / 8) as usize;
            if b[i] == b'"' {
                self.i = i + 1;
                return Some(&b[start..i]);
            }
            return self.string_tail(start, i);
        }
    }

    /// The rest of a string from `i` on, a byte at a time: the last few
    /// bytes of a line, or a string with an escape, a control character or
    /// a byte above 0x7f in it.
    #[cold]
    fn string_tail(&mut self, start: usize, mut i: usize) -> Option<&'a [u8]> {
        let b = self.b;
        let mut ascii = true;
        loop {
            match *b.get(i)? {
                b'"' => break,
                b'\\' => return None,
                c if c < 0x20 => return None,
                c => {
                    ascii &= c < 0x80;
                    i += 1;
                }
            }
        }
        self.i = i + 1;
        let s = &b[start..i];
        if !ascii {
            std::str::from_utf8(s).ok()?;
        }
        Some(s)
    }

    /// A string as `&str`.
    #[inline]
    fn string(&mut self) -> Option<&'a str> {
        let s = self.raw_string()?;
        // SAFETY: `raw_string` returns only bytes below 0x80 (checked
        // eight at a time in `stops`, one at a time in `string_tail`) or a
        // slice that `std::str::from_utf8` accepted; either is UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(s) })
    }

    /// A number token, checked against JSON's grammar so that it parses here
    /// exactly when serde would accept it, with its digits gathered.
    fn number(&mut self) -> Option<Number<'a>> {
        self.ws();
        let b = self.b;
        let start = self.i;
        let mut i = start;
        let negative = b.get(i) == Some(&b'-');
        if negative {
            i += 1;
        }
        let int_at = i;
        let mut mantissa = 0u64;
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i = digits(b, i, &mut mantissa),
            _ => return None,
        }
        let mut fraction = 0;
        let mut exponent = 0i32;
        let mut has_point_or_exponent = false;
        if b.get(i) == Some(&b'.') {
            has_point_or_exponent = true;
            let d = i + 1;
            i = digits(b, d, &mut mantissa);
            if i == d {
                return None;
            }
            fraction = (i - d) as u32;
        }
        // Digits gathered, the point not counted.
        let count = (i - int_at) as u32 - u32::from(has_point_or_exponent);
        if matches!(b.get(i), Some(b'e' | b'E')) {
            has_point_or_exponent = true;
            i += 1;
            let minus = b.get(i) == Some(&b'-');
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let d = i;
            while let Some(&c @ b'0'..=b'9') = b.get(i) {
                exponent = exponent
                    .saturating_mul(10)
                    .saturating_add(i32::from(c - b'0'));
                i += 1;
            }
            if i == d {
                return None;
            }
            if minus {
                exponent = -exponent;
            }
        }
        self.i = i;
        Some(Number {
            text: &b[start..i],
            negative,
            mantissa,
            digits: count,
            fraction,
            exponent,
            has_point_or_exponent,
        })
    }

    /// A number written the common way, `123` or `123.456` (no sign, no
    /// exponent, no leading zero, at most 19 digits), read in one pass:
    /// its value as digits, how many follow the point, where it ends.
    /// `None` for any other form, which `number` then reads in full.
    #[inline]
    fn plain(&self) -> Option<(u64, usize, usize)> {
        let b = self.b;
        let start = self.i;
        let mut i = start;
        let mut m = 0u64;
        i = digits(b, i, &mut m);
        let whole = i - start;
        if whole == 0 || (whole > 1 && b[start] == b'0') {
            return None;
        }
        let mut fraction = 0;
        if b.get(i) == Some(&b'.') {
            let d = i + 1;
            i = digits(b, d, &mut m);
            fraction = i - d;
            if fraction == 0 {
                return None;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) || whole + fraction > 19 {
            return None;
        }
        Some((m, fraction, i))
    }

    fn float(&mut self) -> Option<f64> {
        self.ws();
        if let Some((m, fraction, end)) = self.plain() {
            if m <= 1 << 53 && fraction < POW10.len() {
                self.i = end;
                // Both exact, so the one division rounds correctly.
                return Some(m as f64 / POW10[fraction]);
            }
        }
        self.number()?.float()
    }

    fn uint<T: TryFrom<u64>>(&mut self) -> Option<T> {
        self.ws();
        if let Some((m, 0, end)) = self.plain() {
            self.i = end;
            return T::try_from(m).ok();
        }
        self.number()?.uint()
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
        let mut once = |slot: usize| (!std::mem::replace(&mut seen[slot], true)).then_some(());
        loop {
            let key = self.raw_string()?;
            self.eat(b':')?;
            match key {
                b"gpu" => {
                    once(0)?;
                    l.gpu = Some(self.string()?.trim().parse().ok()?);
                }
                b"device" => {
                    once(1)?;
                    l.device = Some(Name::from(self.string()?));
                }
                b"dir" => {
                    once(2)?;
                    l.dir = Some(match self.raw_string()? {
                        b"rx" => Dir::Rx,
                        b"tx" => Dir::Tx,
                        _ => return None,
                    });
                }
                b"model_name" => {
                    once(3)?;
                    l.model_name = Some(Name::from(self.string()?));
                }
                b"gpu_instance" => {
                    once(4)?;
                    l.gpu_instance = Some(self.string()?.trim().parse().ok()?);
                }
                b"cgroup" => {
                    once(5)?;
                    l.cgroup = Some(Name::from(self.string()?));
                }
                _ => {
                    self.raw_string()?;
                }
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
            return match self.raw_string()? {
                b"NaN" | b"+Inf" | b"-Inf" | b"Inf" | b"inf" | b"+inf" | b"-inf" | b"nan" => {
                    Some(Value::NonFinite)
                }
                _ => None,
            };
        }
        // An overflowing number is serde's error to word, not a NaN.
        Some(Value::Finite(self.float()?))
    }
}

/// The finite JSON number starting at `at` in `line` (after any
/// whitespace), and where it ends; `None` if there is none there.
pub(crate) fn number_at(line: &[u8], at: usize) -> Option<(f64, usize)> {
    let mut s = Scan { b: line, i: at };
    let x = s.float()?;
    Some((x, s.i))
}

/// The non-negative JSON integer starting at `at` in `line` (after any
/// whitespace), and where it ends; `None` if there is none there or it
/// does not fit a `u64`.
pub(crate) fn uint_at(line: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut s = Scan { b: line, i: at };
    let x = s.uint()?;
    Some((x, s.i))
}

/// Scans `line` (the whole line, without its newline) into `f`, or gives up
/// with `None` (`f` then holds whatever was read before the point it gave
/// up at).
pub(crate) fn scan<'a>(line: &'a [u8], f: &mut Fields<'a>) -> Option<()> {
    let mut s = Scan { b: line, i: 0 };
    s.eat(b'{')?;
    if s.peek()? != b'}' {
        loop {
            let key = s.raw_string()?;
            s.eat(b':')?;
            match key {
                b"t" => f.t = Some(Cow::Borrowed(s.string()?)),
                b"ts" => f.ts = Some(s.float()?),
                b"node" => f.node = Some(Cow::Borrowed(s.string()?)),
                b"job" => f.job = Some(s.id()?),
                b"rank" => f.rank = Some(s.uint()?),
                b"op" => f.op = Some(Cow::Borrowed(s.string()?)),
                b"seq" => f.seq = Some(s.uint()?),
                b"bytes" => f.bytes = Some(s.uint()?),
                b"arrive" => f.arrive = Some(s.float()?),
                b"dur_us" => f.dur_us = Some(s.float()?),
                b"name" => f.name = Some(Cow::Borrowed(s.string()?)),
                b"labels" => f.labels = Some(s.labels()?),
                b"value" => f.value = Some(s.value()?),
                b"id" => f.id = Some(s.id()?),
                b"phase" => {
                    f.phase = Some(match s.raw_string()? {
                        b"arrive" => RequestPhase::Arrive,
                        b"first_token" => RequestPhase::FirstToken,
                        b"done" => RequestPhase::Done,
                        _ => return None,
                    })
                }
                b"prompt_tokens" => f.prompt_tokens = Some(s.uint()?),
                b"output_tokens" => f.output_tokens = Some(s.uint()?),
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw(s: &[u8]) -> Option<&[u8]> {
        Scan { b: s, i: 0 }.raw_string()
    }

    #[test]
    fn a_string_ends_at_its_quote_wherever_that_falls_in_a_word() {
        for n in 0..40 {
            let body = "a".repeat(n);
            let line = format!("\"{body}\",\"x\"");
            assert_eq!(raw(line.as_bytes()), Some(body.as_bytes()), "length {n}");
        }
    }

    #[test]
    fn escapes_and_control_characters_are_refused_at_any_offset() {
        for n in 0..20 {
            for bad in [b'\\', b'\n', 0x01, 0x1f] {
                let mut line = vec![b'"'];
                line.extend(std::iter::repeat_n(b'a', n));
                line.push(bad);
                line.extend(b"bcdefghijk\"");
                assert_eq!(raw(&line), None, "byte {bad:#x} at {n}");
            }
        }
        assert_eq!(raw(b"\"abc"), None, "an unterminated string");
    }

    #[test]
    fn bytes_above_ascii_are_kept_only_as_valid_utf8() {
        assert_eq!(
            raw("\"Tesla ü-100 and more\"".as_bytes()),
            Some("Tesla ü-100 and more".as_bytes())
        );
        assert_eq!(raw(b"\"abcdefgh\xff\xfeij\""), None);
        // A byte just below the quote must not be taken for it.
        assert_eq!(raw(b"\"\x7f!#\""), Some(&b"\x7f!#"[..]));
    }

    fn float(s: &str) -> Option<f64> {
        Scan {
            b: s.as_bytes(),
            i: 0,
        }
        .float()
    }

    #[test]
    fn numbers_parse_as_the_standard_library_parses_them() {
        for s in [
            "0",
            "-0",
            "1763800001.2034",
            "0.1",
            "97.0",
            "1e22",
            "1e23",
            "123456789012345678901234",
            "9007199254740993",
            "2.5e-3",
            "1E+2",
            "0.000000000000000000000001",
            "1795677841.685",
        ] {
            let want: f64 = s.parse().unwrap();
            assert_eq!(float(s).map(f64::to_bits), Some(want.to_bits()), "{s}");
        }
        assert_eq!(float("1e400"), None, "not finite");
        assert_eq!(float("1."), None);
        assert_eq!(float(".5"), None);
        assert_eq!(float("-"), None);
    }

    proptest! {
        #[test]
        fn any_decimal_parses_exactly(m in any::<u64>(), point in 0usize..21, e in -30i32..30, neg in any::<bool>()) {
            let digits = m.to_string();
            let p = point.min(digits.len());
            let mut s = String::new();
            if neg { s.push('-'); }
            s.push_str(&digits[..digits.len() - p]);
            if s.is_empty() || s == "-" { s.push('0'); }
            if p > 0 { s.push('.'); s.push_str(&digits[digits.len() - p..]); }
            if e != 0 { s.push_str(&format!("e{e}")); }
            let want: f64 = s.parse().unwrap();
            prop_assert_eq!(float(&s).map(f64::to_bits), Some(want.to_bits()), "{}", s);
        }
    }
}
