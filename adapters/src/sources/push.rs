//! The push endpoint: ranks, an NCCL profiler plugin or an eBPF agent send
//! their collective timings (and any other trace record) as datagrams,
//! instead of waiting to be scraped, because a collective's timing is an
//! event, not a level a scrape could sample.
//!
//! A datagram holds trace records in either of two encodings:
//! - JSON: one or more lines of `spec/trace-format.md`, newline-separated;
//! - MessagePack: one map with the same field names as the JSON record, or an
//!   array of such maps (what a C agent finds cheapest to write).
//!
//! The first byte tells them apart: `{` (and JSON's leading whitespace) are
//! positive fixints in MessagePack, which no record starts with, and maps and
//! arrays have markers that no JSON text starts with.
//!
//! Decoding is sans-IO (`decode_datagram`); `PushEndpoint` is the thin
//! socket around it. A datagram is accepted or rejected whole: it comes from
//! one sender in one go, so one malformed record means a broken sender, and
//! half of its batch would be worse than none. Rejections are counted and
//! logged with the peer, never fatal.

use super::trace_line::{build, parse_line, Fields, Parsed};
use keel_model::{JobRecord, Record};
use serde::de::{Deserialize, IgnoredAny};
use std::fmt;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use tokio::io::unix::AsyncFd;

/// Largest datagram read whole; the receive buffer is one byte longer, so a
/// longer Unix datagram shows up as truncated instead of silently cut.
pub const MAX_DATAGRAM: usize = 65_536;
/// Datagrams taken in one `recv` call before handing the batch back.
const MAX_BATCH: usize = 1024;
/// Rejections logged one by one before only every 1000th is.
const LOGGED_REJECTIONS: u64 = 100;

/// Why a datagram was rejected, naming the record and field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("empty datagram")]
    Empty,
    #[error("first byte 0x{0:02x} starts neither JSON lines nor a MessagePack map or array")]
    Unrecognised(u8),
    #[error("JSON line {line}: {reason}")]
    Json { line: u64, reason: String },
    /// `item` is the 0-based position in a MessagePack array, `None` for a
    /// datagram of one map.
    #[error("MessagePack {}: {reason}", MsgPackItem(*.item))]
    MsgPack { item: Option<usize>, reason: String },
}

struct MsgPackItem(Option<usize>);

impl fmt::Display for MsgPackItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(i) => write!(f, "item {i}"),
            None => f.write_str("record"),
        }
    }
}

/// The records of one datagram, and what it held that keel does not use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoded {
    pub records: Vec<Record>,
    /// Unknown record types and metrics, non-finite values: skipped, as the
    /// trace reader skips them.
    pub skipped: u32,
    pub unknown_fields: u32,
}

impl Decoded {
    fn take(&mut self, parsed: Parsed) {
        match parsed {
            Parsed::Record {
                record,
                unknown_fields,
            } => {
                self.records.push(record);
                self.unknown_fields += unknown_fields;
            }
            Parsed::UnknownType(_) | Parsed::UnknownMetric(_) | Parsed::NonFinite => {
                self.skipped += 1
            }
            Parsed::Blank => {}
        }
    }
}

/// Decodes one datagram of JSON lines or MessagePack.
pub fn decode_datagram(bytes: &[u8]) -> Result<Decoded, PushError> {
    let first = *bytes.first().ok_or(PushError::Empty)?;
    match first {
        b'{' | b' ' | b'\t' | b'\r' | b'\n' => decode_json(bytes),
        0x80..=0x8f | 0xde | 0xdf => {
            let mut out = Decoded::default();
            let used = decode_msgpack_item(bytes, None, &mut out)?;
            if used != bytes.len() {
                return Err(PushError::MsgPack {
                    item: None,
                    reason: format!("{} bytes after the record", bytes.len() - used),
                });
            }
            Ok(out)
        }
        0x90..=0x9f | 0xdc | 0xdd => decode_msgpack_array(bytes),
        other => Err(PushError::Unrecognised(other)),
    }
}

fn decode_json(bytes: &[u8]) -> Result<Decoded, PushError> {
    let mut out = Decoded::default();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let parsed = parse_line(line, i as u64 + 1).map_err(|e| PushError::Json {
            line: e.line,
            reason: e.reason,
        })?;
        out.take(parsed);
    }
    if out.records.is_empty() && out.skipped == 0 {
        return Err(PushError::Empty);
    }
    Ok(out)
}

fn decode_msgpack_array(bytes: &[u8]) -> Result<Decoded, PushError> {
    let whole = |reason: String| PushError::MsgPack { item: None, reason };
    let (len, header) = match bytes {
        [b @ 0x90..=0x9f, ..] => (usize::from(b & 0x0f), 1),
        [0xdc, a, b, ..] => (usize::from(u16::from_be_bytes([*a, *b])), 3),
        [0xdd, a, b, c, d, ..] => (u32::from_be_bytes([*a, *b, *c, *d]) as usize, 5),
        _ => return Err(whole("array header cut short".into())),
    };
    let mut rest = &bytes[header..];
    let mut out = Decoded::default();
    for i in 0..len {
        if rest.is_empty() {
            return Err(whole(format!("array says {len} items, datagram holds {i}")));
        }
        let used = decode_msgpack_item(rest, Some(i), &mut out)?;
        rest = &rest[used..];
    }
    if !rest.is_empty() {
        return Err(whole(format!("{} bytes after the array", rest.len())));
    }
    Ok(out)
}

/// Decodes the record at the start of `bytes`; returns how many bytes it took.
fn decode_msgpack_item(
    bytes: &[u8],
    item: Option<usize>,
    out: &mut Decoded,
) -> Result<usize, PushError> {
    let err = |reason: String| PushError::MsgPack { item, reason };
    // Measured first, so that a job record (parsed twice) and the next array
    // item both know where this one ends.
    let mut de = rmp_serde::Deserializer::new(io::Cursor::new(bytes));
    IgnoredAny::deserialize(&mut de).map_err(|e| err(format!("not MessagePack: {e}")))?;
    let used = de.position() as usize;
    let span = &bytes[..used];
    let fields: Fields =
        rmp_serde::from_slice(span).map_err(|e| err(format!("bad record: {e}")))?;
    let parsed = build(fields, || {
        rmp_serde::from_slice::<JobRecord>(span).map_err(|e| format!("job record: {e}"))
    })
    .map_err(err)?;
    out.take(parsed);
    Ok(used)
}

/// Where the endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushAddr {
    Udp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for PushAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushAddr::Udp(a) => write!(f, "udp://{a}"),
            PushAddr::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

impl std::str::FromStr for PushAddr {
    type Err = String;

    /// `udp://HOST:PORT` (or bare `HOST:PORT`) with a numeric host, or
    /// `unix:///PATH` (or a bare absolute path).
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix://") {
            return Ok(PushAddr::Unix(PathBuf::from(p)));
        }
        if s.starts_with('/') {
            return Ok(PushAddr::Unix(PathBuf::from(s)));
        }
        let a = s.strip_prefix("udp://").unwrap_or(s);
        a.parse()
            .map(PushAddr::Udp)
            .map_err(|e| format!("push address {s:?}: {e} (want udp://IP:PORT or unix:///PATH)"))
    }
}

/// What one `recv` took in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecvStats {
    pub datagrams: u64,
    pub records: u64,
    pub skipped: u64,
    pub unknown_fields: u64,
    /// Datagrams rejected whole (malformed or truncated).
    pub bad: u64,
    pub truncated: u64,
}

impl RecvStats {
    pub fn add(&mut self, o: &RecvStats) {
        self.datagrams += o.datagrams;
        self.records += o.records;
        self.skipped += o.skipped;
        self.unknown_fields += o.unknown_fields;
        self.bad += o.bad;
        self.truncated += o.truncated;
    }
}

/// Plain non-blocking sockets under tokio's readiness, so that `try_recv`
/// asks the kernel itself (tokio's own sockets answer from readiness they
/// have cached, and say "would block" before the runtime first polls them).
enum Sock {
    Udp(AsyncFd<std::net::UdpSocket>),
    Unix(AsyncFd<UnixDatagram>),
}

/// A bound UDP or Unix datagram socket decoding what arrives.
pub struct PushEndpoint {
    sock: Sock,
    buf: Box<[u8]>,
    /// The socket file this endpoint created, removed on drop.
    unix_path: Option<PathBuf>,
    rejected: u64,
}

fn register<T: std::os::fd::AsRawFd>(socket: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: the socket is moved into the AsyncFd, which owns it and so
    // keeps its descriptor open and unchanged until the AsyncFd is dropped.
    unsafe { AsyncFd::register(socket) }.map_err(io::Error::from)
}

fn named(addr: &PushAddr, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("push endpoint {addr}: {what}: {e}"))
}

impl PushEndpoint {
    /// Binds the socket (within a tokio runtime, which then drives it); a
    /// Unix path left behind by a process that is gone is replaced, one that
    /// still answers is an error.
    pub async fn bind(addr: &PushAddr) -> io::Result<PushEndpoint> {
        let (sock, unix_path) = match addr {
            PushAddr::Udp(a) => {
                let s = std::net::UdpSocket::bind(a).map_err(|e| named(addr, "bind", e))?;
                s.set_nonblocking(true)?;
                (Sock::Udp(register(s)?), None)
            }
            PushAddr::Unix(p) => {
                remove_stale_socket(p).map_err(|e| named(addr, "stale socket", e))?;
                let s = UnixDatagram::bind(p).map_err(|e| named(addr, "bind", e))?;
                s.set_nonblocking(true)?;
                (Sock::Unix(register(s)?), Some(p.clone()))
            }
        };
        Ok(PushEndpoint {
            sock,
            buf: vec![0; MAX_DATAGRAM + 1].into_boxed_slice(),
            unix_path,
            rejected: 0,
        })
    }

    /// The bound address (with the port the system chose for port 0).
    pub fn local_addr(&self) -> io::Result<PushAddr> {
        match &self.sock {
            Sock::Udp(s) => s.get_ref().local_addr().map(PushAddr::Udp),
            Sock::Unix(_) => Ok(PushAddr::Unix(self.unix_path.clone().unwrap_or_default())),
        }
    }

    /// Waits for at least one datagram, then takes whatever else is already
    /// queued (up to a batch), appending the records to `out`. Bad datagrams
    /// are counted and logged; only a socket error is returned.
    pub async fn recv(&mut self, out: &mut Vec<Record>) -> io::Result<RecvStats> {
        loop {
            // Cleared before reading: a datagram that lands after the read
            // raises readiness again, so none is left waiting unseen.
            match &self.sock {
                Sock::Udp(s) => s.readable().await?.clear_ready(),
                Sock::Unix(s) => s.readable().await?.clear_ready(),
            }
            let stats = self.try_recv(out)?;
            if stats.datagrams > 0 {
                return Ok(stats);
            }
        }
    }

    /// Takes the datagrams already queued (up to a batch) without waiting.
    pub fn try_recv(&mut self, out: &mut Vec<Record>) -> io::Result<RecvStats> {
        let mut stats = RecvStats::default();
        for _ in 0..MAX_BATCH {
            let got = match &self.sock {
                Sock::Udp(s) => s
                    .get_ref()
                    .recv_from(&mut self.buf)
                    .map(|(n, a)| (n, a.to_string())),
                Sock::Unix(s) => s.get_ref().recv_from(&mut self.buf).map(|(n, a)| {
                    let peer = a.as_pathname().map_or_else(
                        || "an unnamed unix socket".to_string(),
                        |p| p.display().to_string(),
                    );
                    (n, peer)
                }),
            };
            let (n, peer) = match got {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            stats.datagrams += 1;
            if n > MAX_DATAGRAM {
                stats.bad += 1;
                stats.truncated += 1;
                self.reject(
                    &peer,
                    &format!("longer than {MAX_DATAGRAM} bytes, truncated"),
                );
                continue;
            }
            match decode_datagram(&self.buf[..n]) {
                Ok(d) => {
                    stats.records += d.records.len() as u64;
                    stats.skipped += u64::from(d.skipped);
                    stats.unknown_fields += u64::from(d.unknown_fields);
                    out.extend(d.records);
                }
                Err(e) => {
                    stats.bad += 1;
                    self.reject(&peer, &e.to_string());
                }
            }
        }
        Ok(stats)
    }

    fn reject(&mut self, peer: &str, why: &str) {
        self.rejected += 1;
        let n = self.rejected;
        if n <= LOGGED_REJECTIONS || n.is_multiple_of(1000) {
            tracing::warn!(peer, rejected = n, "push datagram rejected: {why}");
        }
    }
}

impl Drop for PushEndpoint {
    fn drop(&mut self) {
        if let Some(p) = &self.unix_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Removes a socket file nobody listens on any more; leaves anything else
/// alone, so that a typo in the path never deletes a real file.
fn remove_stale_socket(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        ));
    }
    let probe = UnixDatagram::unbound()?;
    if probe.connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is listening on it",
        ));
    }
    std::fs::remove_file(path)
}

#[cfg(test)]
#[path = "push_tests.rs"]
mod tests;
