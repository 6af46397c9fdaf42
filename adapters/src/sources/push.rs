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
//!
//! Who may send: on a Unix socket (the default a sensor's config documents)
//! the kernel names each datagram's sending process, and a record that
//! names a job is taken only from a process of that Slurm job
//! (`push_peer::admit`); the socket file is made 0660, owned by a group the
//! config names. On UDP (loopback) nothing tells the sender: any local user
//! may report for any job of the node.

pub use super::push_peer::PushOptions;
use super::push_peer::{admit, claimed_job, Attribution, PeerCache, Refusal, Verdict};
use super::push_unix::{self, Credentials};
use super::trace_line::{build, parse_line, Fields, Parsed};
use keel_model::{JobRecord, Record};
use serde::de::{Deserialize, IgnoredAny};
use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio::io::unix::AsyncFd;

/// Largest datagram read whole; the receive buffer is one byte longer, so a
/// longer Unix datagram shows up as truncated instead of silently cut.
pub const MAX_DATAGRAM: usize = 65_536;
/// Datagrams taken in one `recv` call before handing the batch back.
const MAX_BATCH: usize = 1024;
/// Rejections logged one by one before only every 1000th is.
const LOGGED_REJECTIONS: u64 = 100;
/// Refused records are logged once per sender, and in a summary every this
/// many.
const REFUSAL_SUMMARY_EVERY: u64 = 1000;
/// The Unix socket file's mode: its owner and group may send.
pub const SOCKET_MODE: u32 = 0o660;
/// Where senders' jobs are read.
const PROC: &str = "/proc";

/// `type = "push"`: collective timings (any trace record) pushed by ranks
/// or an NCCL profiler, as JSON lines or MessagePack, on `unix:///PATH` (a
/// datagram socket: each record that names a job is taken only from a
/// process of that Slurm job) or `udp://IP:PORT` (unauthenticated: any
/// local user may report for any job of the node; keep it on loopback).
#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    pub listen: String,
    /// See [`PushOptions::group`].
    #[serde(default)]
    pub group: Option<String>,
    /// See [`PushOptions::allow_unattributed`] (default false).
    #[serde(default)]
    pub allow_unattributed: bool,
}

impl PushConfig {
    /// A push source on `listen` with the default options.
    pub fn new(listen: impl Into<String>) -> PushConfig {
        PushConfig {
            listen: listen.into(),
            group: None,
            allow_unattributed: false,
        }
    }
}

impl super::Source for PushConfig {
    fn describe(&self) -> String {
        format!("push endpoint {}", self.listen)
    }
}

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
    /// Records refused because they name a job other than their sender's
    /// (not in `records`).
    pub refused_foreign_job: u64,
    /// Records naming a job, refused because their sender belongs to none
    /// (or to one not known) and `allow_unattributed` is off.
    pub refused_unattributed: u64,
    /// Senders forgotten early to keep the cache of their jobs bounded
    /// (`push_peer::PEER_CACHE_MAX`).
    pub peers_evicted: u64,
}

impl RecvStats {
    pub fn add(&mut self, o: &RecvStats) {
        self.datagrams += o.datagrams;
        self.records += o.records;
        self.skipped += o.skipped;
        self.unknown_fields += o.unknown_fields;
        self.bad += o.bad;
        self.truncated += o.truncated;
        self.refused_foreign_job += o.refused_foreign_job;
        self.refused_unattributed += o.refused_unattributed;
        self.peers_evicted += o.peers_evicted;
    }

    /// Records refused for who sent them, all reasons together.
    pub fn refused(&self) -> u64 {
        self.refused_foreign_job + self.refused_unattributed
    }
}

/// Plain non-blocking sockets under tokio's readiness, so that `try_recv`
/// asks the kernel itself (tokio's own sockets answer from readiness they
/// have cached, and say "would block" before the runtime first polls them).
enum Sock {
    Udp(AsyncFd<std::net::UdpSocket>),
    Unix(AsyncFd<UnixDatagram>),
}

/// Who sent a datagram, as far as the socket tells.
enum Origin {
    Udp(std::net::SocketAddr),
    Unix(Option<Credentials>),
}

impl Origin {
    /// The sending pid, where the kernel named one.
    fn pid(&self) -> Option<u32> {
        match self {
            Origin::Unix(Some(c)) if c.pid != 0 => Some(c.pid),
            _ => None,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Udp(a) => write!(f, "udp {a}"),
            Origin::Unix(Some(c)) => write!(f, "pid {} (uid {}, gid {})", c.pid, c.uid, c.gid),
            Origin::Unix(None) => f.write_str("an unknown local process"),
        }
    }
}

/// A bound UDP or Unix datagram socket decoding what arrives.
pub struct PushEndpoint {
    sock: Sock,
    buf: Box<[u8]>,
    /// The socket file this endpoint created, removed on drop.
    unix_path: Option<PathBuf>,
    rejected: u64,
    allow_unattributed: bool,
    /// Senders' jobs (Unix sockets).
    peers: PeerCache,
    refused: u64,
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
    /// Binds the socket with the default options.
    pub async fn bind(addr: &PushAddr) -> io::Result<PushEndpoint> {
        Self::bind_with(addr, &PushOptions::default()).await
    }

    /// Binds the socket (within a tokio runtime, which then drives it); a
    /// Unix path left behind by a process that is gone is replaced, one that
    /// still answers is an error. A Unix socket is made [`SOCKET_MODE`],
    /// owned by `options.group` when given, and told to pass each sender's
    /// credentials; options on a UDP address are an error (UDP tells no
    /// sender).
    pub async fn bind_with(addr: &PushAddr, options: &PushOptions) -> io::Result<PushEndpoint> {
        let endpoint = |sock, unix_path| PushEndpoint {
            sock,
            buf: vec![0; MAX_DATAGRAM + 1].into_boxed_slice(),
            unix_path,
            rejected: 0,
            allow_unattributed: options.allow_unattributed,
            peers: PeerCache::default(),
            refused: 0,
        };
        match addr {
            PushAddr::Udp(a) => {
                if *options != PushOptions::default() {
                    return Err(named(
                        addr,
                        "options",
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "`group` and `allow_unattributed` apply to unix:// sockets only (UDP tells no sender)",
                        ),
                    ));
                }
                let s = std::net::UdpSocket::bind(a).map_err(|e| named(addr, "bind", e))?;
                s.set_nonblocking(true)?;
                Ok(endpoint(Sock::Udp(register(s)?), None))
            }
            PushAddr::Unix(p) => {
                // Looked up first, so that a missing group leaves no file.
                let gid = match &options.group {
                    Some(g) => Some(push_unix::group_id(g).map_err(|e| named(addr, "group", e))?),
                    None => None,
                };
                remove_stale_socket(p).map_err(|e| named(addr, "stale socket", e))?;
                let s = UnixDatagram::bind(p).map_err(|e| named(addr, "bind", e))?;
                // A datagram that lands before SO_PASSCRED is set carries no
                // sender and is screened as such.
                let ready = push_unix::prepare(&s, p, gid, options.group.as_deref())
                    .map_err(|e| named(addr, "setup", e))
                    .and_then(|()| register(s));
                match ready {
                    Ok(s) => Ok(endpoint(Sock::Unix(s), Some(p.clone()))),
                    Err(e) => {
                        let _ = std::fs::remove_file(p);
                        Err(e)
                    }
                }
            }
        }
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
        let evicted = self.peers.evicted;
        for _ in 0..MAX_BATCH {
            let got = match &self.sock {
                Sock::Udp(s) => s
                    .get_ref()
                    .recv_from(&mut self.buf)
                    .map(|(n, a)| (n, Origin::Udp(a))),
                Sock::Unix(s) => {
                    push_unix::recv_with_credentials(s.get_ref().as_raw_fd(), &mut self.buf)
                        .map(|(n, c)| (n, Origin::Unix(c)))
                }
            };
            let (n, from) = match got {
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
                    &from,
                    &format!("longer than {MAX_DATAGRAM} bytes, truncated"),
                );
                continue;
            }
            match decode_datagram(&self.buf[..n]) {
                Ok(mut d) => {
                    if let Origin::Unix(_) = from {
                        self.screen(&from, &mut d.records, &mut stats);
                    }
                    stats.records += d.records.len() as u64;
                    stats.skipped += u64::from(d.skipped);
                    stats.unknown_fields += u64::from(d.unknown_fields);
                    out.extend(d.records);
                }
                Err(e) => {
                    stats.bad += 1;
                    self.reject(&from, &e.to_string());
                }
            }
        }
        stats.peers_evicted = self.peers.evicted - evicted;
        Ok(stats)
    }

    /// Keeps the records their sender may push (`push_peer::admit`),
    /// counting and logging the rest. `/proc` is read only for a datagram
    /// that names a job, and once per sender and `PEER_TTL`.
    fn screen(&mut self, from: &Origin, records: &mut Vec<Record>, stats: &mut RecvStats) {
        if !records.iter().any(|r| claimed_job(r).is_some()) {
            return;
        }
        let now = Instant::now();
        let pid = from.pid();
        let sender = match pid {
            None => Attribution::Unknown,
            Some(pid) => match self.peers.get(pid, now) {
                Some(p) => p.job,
                None => self.peers.insert(pid, attribute(pid), now).job,
            },
        };
        let allow = self.allow_unattributed;
        let mut refused = Vec::new();
        records.retain(|r| match admit(sender.job(), allow, r) {
            Verdict::Take => true,
            Verdict::Refuse(why) => {
                refused.push((why, claimed_job(r).unwrap_or_default().to_string()));
                false
            }
        });
        for (why, claimed) in refused {
            match why {
                Refusal::ForeignJob => stats.refused_foreign_job += 1,
                Refusal::Unattributed => stats.refused_unattributed += 1,
            }
            self.refused += 1;
            let first = match pid.and_then(|p| self.peers.get(p, now)) {
                Some(p) => !std::mem::replace(&mut p.logged, true),
                None => self.refused == 1,
            };
            if first {
                tracing::warn!(
                    pid,
                    reason = why.wire(),
                    claimed_job = %claimed,
                    "push record refused: {from}, of {sender}, may report only for its own job (logged once per sender)"
                );
            }
            if self.refused.is_multiple_of(REFUSAL_SUMMARY_EVERY) {
                tracing::warn!(
                    refused = self.refused,
                    "push records refused so far for who sent them"
                );
            }
        }
    }

    fn reject(&mut self, peer: &Origin, why: &str) {
        self.rejected += 1;
        let n = self.rejected;
        if n <= LOGGED_REJECTIONS || n.is_multiple_of(1000) {
            tracing::warn!(%peer, rejected = n, "push datagram rejected: {why}");
        }
    }
}

/// The Slurm job of sending process `pid`, read from `/proc`.
fn attribute(pid: u32) -> Attribution {
    match crate::proc_job::job_of(Path::new(PROC), pid) {
        Ok(Some(Some(job))) => Attribution::Job(job),
        Ok(Some(None)) => Attribution::NoJob,
        Ok(None) => Attribution::Unknown,
        Err(e) => {
            tracing::debug!(pid, error = %e, "a push sender's job is unreadable");
            Attribution::Unknown
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
