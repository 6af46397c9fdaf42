//! Live Prometheus scrapes: an HTTP/1.1 GET of an exporter's `/metrics`,
//! handed to `prometheus::parse_scrape`.
//!
//! The client is deliberately small (plain `http://`, one request per
//! connection, no redirects, no compression): exporters sit on the node or
//! the next host, serve plain text, and a sensor must not grow an HTTP stack
//! for one GET a second. What it does handle is what real exporters send:
//! `Content-Length`, `Transfer-Encoding: chunked` (Go's net/http for bodies
//! it streams), and bodies ended by closing the connection. Every wait has a
//! deadline, and the body is capped, so a stuck or hostile exporter costs a
//! bounded time and memory.

use super::prometheus::{parse_scrape, ScrapeStats};
use keel_model::{MetricSample, Name, Timestamp};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The largest body taken (a node-exporter scrape is ~100 KiB; a dcgm-exporter
/// on 8 GPUs ~200 KiB).
pub const MAX_BODY: usize = 16 << 20;
/// The status line and headers together.
const MAX_HEAD: u64 = 64 << 10;
/// One chunk-size line.
const MAX_CHUNK_LINE: u64 = 1024;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// `type = "prometheus"`: a Prometheus text endpoint scraped on a timer
/// (dcgm-exporter, vLLM, node-exporter).
#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// `http://host:port/path`.
    pub url: String,
    /// Milliseconds between scrapes (default 1000).
    #[serde(default = "second")]
    pub interval_ms: u64,
    /// Milliseconds a scrape may take (default 800).
    #[serde(default = "scrape_timeout")]
    pub timeout_ms: u64,
}

fn second() -> u64 {
    1000
}

fn scrape_timeout() -> u64 {
    800
}

impl super::Source for PrometheusConfig {
    fn describe(&self) -> String {
        format!("prometheus {}", self.url)
    }

    fn timed(&self, node: &Name) -> super::Opened {
        let target = ScrapeTarget::new(&self.url, node)
            .map(|t| t.with_timeout(super::interval(self.timeout_ms)))
            .map_err(|e| format!("prometheus source: {e}"));
        Some(target.map(|t| {
            let reader: Box<dyn super::Timed> = Box::new(t);
            (super::interval(self.interval_ms), reader)
        }))
    }
}

impl super::Timed for ScrapeTarget {
    fn read(&mut self, now: f64) -> Result<Vec<keel_model::Record>, String> {
        scrape(self, now)
            .map(|(samples, _)| {
                samples
                    .into_iter()
                    .map(keel_model::Record::Metric)
                    .collect()
            })
            .map_err(|e| e.to_string())
    }
}

/// A parsed `http://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    /// Accepts `http://HOST[:PORT][/PATH][?QUERY]` only; HOST may be a name,
    /// an IPv4 address or a bracketed IPv6 address.
    pub fn parse(url: &str) -> Result<Url, ScrapeError> {
        let bad = |why: &str| ScrapeError {
            url: url.to_string(),
            kind: ScrapeErrorKind::BadUrl(why.to_string()),
        };
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => return Err(bad(&format!("scheme {scheme:?} is not http"))),
            None => return Err(bad("not an http:// URL")),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("bad IPv6 address"));
            }
            (host, after)
        } else {
            match authority.find(':') {
                Some(c) => authority.split_at(c),
                None => (authority, ""),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
        {
            return Err(bad("bad character in the host"));
        }
        let port = match port {
            "" => 80,
            p => match p.strip_prefix(':').map(str::parse::<u16>) {
                Some(Ok(p)) if p != 0 => p,
                _ => return Err(bad("bad port")),
            },
        };
        // The path goes into the request line as it is: anything that could
        // end or split that line is refused rather than escaped.
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("space or control character in the path"));
        }
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        Ok(Url {
            host: host.to_string(),
            port,
            path,
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

/// One exporter to scrape, and the node its samples belong to.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeTarget {
    pub url: Url,
    pub node: Name,
    /// For the whole scrape: connect, request and response together.
    pub timeout: Duration,
}

impl ScrapeTarget {
    pub fn new(url: &str, node: &str) -> Result<ScrapeTarget, ScrapeError> {
        Ok(ScrapeTarget {
            url: Url::parse(url)?,
            node: Name::from(node),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    pub fn with_timeout(mut self, timeout: Duration) -> ScrapeTarget {
        self.timeout = timeout;
        self
    }
}

/// A failed scrape, naming the URL.
#[derive(Debug, thiserror::Error)]
#[error("scrape {url}: {kind}")]
pub struct ScrapeError {
    pub url: String,
    pub kind: ScrapeErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ScrapeErrorKind {
    #[error("bad URL: {0}")]
    BadUrl(String),
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    #[error("{0}")]
    Io(io::Error),
    /// The status line as the server sent it.
    #[error("server answered {0:?}")]
    Status(String),
    #[error("bad response: {0}")]
    Protocol(String),
    #[error("body over {0} bytes")]
    TooLarge(usize),
}

/// Fetches `target` and parses what it serves, stamping samples with `ts`
/// (the caller's clock, so that every source of a sensor shares one).
pub fn scrape(
    target: &ScrapeTarget,
    ts: Timestamp,
) -> Result<(Vec<MetricSample>, ScrapeStats), ScrapeError> {
    let body = fetch(&target.url, target.timeout)?;
    Ok(parse_scrape(&body, &target.node, ts))
}

/// GETs `url` and returns its body as text.
pub fn fetch(url: &Url, timeout: Duration) -> Result<String, ScrapeError> {
    let err = |kind| ScrapeError {
        url: url.to_string(),
        kind,
    };
    let deadline = Instant::now() + timeout;
    let stream = connect(url, deadline, timeout).map_err(err)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/plain;version=0.0.4;q=1,text/plain;q=0.5\r\nAccept-Encoding: identity\r\nUser-Agent: keel\r\nConnection: close\r\n\r\n",
        url.path,
        url.authority()
    );
    let mut stream = Deadline {
        stream,
        deadline,
        timeout,
    };
    stream
        .write_all(request.as_bytes())
        .map_err(|e| err(io_kind(e, timeout)))?;
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let body = read_response(&mut reader, MAX_BODY).map_err(|k| {
        err(match k {
            ScrapeErrorKind::Io(e) => io_kind(e, timeout),
            k => k,
        })
    })?;
    String::from_utf8(body).map_err(|e| {
        err(ScrapeErrorKind::Protocol(format!(
            "body is not UTF-8 (at byte {})",
            e.utf8_error().valid_up_to()
        )))
    })
}

fn io_kind(e: io::Error, timeout: Duration) -> ScrapeErrorKind {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ScrapeErrorKind::TimedOut(timeout),
        _ => ScrapeErrorKind::Io(e),
    }
}

fn connect(url: &Url, deadline: Instant, timeout: Duration) -> Result<TcpStream, ScrapeErrorKind> {
    // Name resolution has no timeout in std; exporters are addressed by IP
    // or by names in /etc/hosts, where it does not wait.
    let addrs = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(ScrapeErrorKind::Connect)?;
    let mut last = None;
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ScrapeErrorKind::TimedOut(timeout));
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) if e.kind() == io::ErrorKind::TimedOut => ScrapeErrorKind::TimedOut(timeout),
        Some(e) => ScrapeErrorKind::Connect(e),
        None => ScrapeErrorKind::Connect(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no address for {}", url.host),
        )),
    })
}

/// A stream whose every read and write waits at most until one deadline, so
/// that an exporter dribbling a byte at a time cannot hold a scrape forever.
struct Deadline {
    stream: TcpStream,
    deadline: Instant,
    timeout: Duration,
}

impl Deadline {
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {:?}", self.timeout),
            ))
        } else {
            Ok(left)
        }
    }
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        self.stream.read(buf)
    }
}

impl Write for Deadline {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

fn protocol(why: impl Into<String>) -> ScrapeErrorKind {
    ScrapeErrorKind::Protocol(why.into())
}

/// One CRLF- (or LF-) terminated line, without its terminator, taken out
/// of `budget` bytes shared by a section (`limit` is the section's whole
/// allowance, for the message).
fn read_line<R: BufRead>(
    r: &mut R,
    budget: &mut u64,
    limit: u64,
    what: &str,
) -> Result<String, ScrapeErrorKind> {
    let mut buf = Vec::new();
    r.take(*budget)
        .read_until(b'\n', &mut buf)
        .map_err(ScrapeErrorKind::Io)?;
    *budget -= buf.len() as u64;
    if buf.last() != Some(&b'\n') {
        return Err(protocol(if *budget == 0 {
            format!("{what} longer than {limit} bytes")
        } else {
            format!("connection closed in the {what}")
        }));
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// What the headers said about the body.
#[derive(Debug, Default)]
struct Head {
    length: Option<u64>,
    chunked: bool,
}

fn read_head<R: BufRead>(r: &mut R) -> Result<Head, ScrapeErrorKind> {
    let mut budget = MAX_HEAD;
    loop {
        let status = read_line(r, &mut budget, MAX_HEAD, "status line")?;
        let mut parts = status.splitn(3, ' ');
        let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if !version.starts_with("HTTP/1.") || code.len() != 3 {
            return Err(protocol(format!("not an HTTP/1.x status line: {status:?}")));
        }
        let code: u16 = code
            .parse()
            .map_err(|_| protocol(format!("bad status code in {status:?}")))?;
        let mut head = Head::default();
        loop {
            let line = read_line(r, &mut budget, MAX_HEAD, "headers")?;
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| protocol(format!("bad header line {line:?}")))?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let n: u64 = value
                    .parse()
                    .map_err(|_| protocol(format!("bad Content-Length {value:?}")))?;
                if head.length.is_some_and(|m| m != n) {
                    return Err(protocol("conflicting Content-Length headers"));
                }
                head.length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                for coding in value.split(',').map(str::trim) {
                    if coding.eq_ignore_ascii_case("chunked") {
                        head.chunked = true;
                    } else if !coding.eq_ignore_ascii_case("identity") {
                        return Err(protocol(format!(
                            "Transfer-Encoding {coding:?} not supported"
                        )));
                    }
                }
            } else if name.eq_ignore_ascii_case("content-encoding")
                && !value.eq_ignore_ascii_case("identity")
            {
                return Err(protocol(format!(
                    "Content-Encoding {value:?} although identity was asked for"
                )));
            }
        }
        match code {
            // Interim answers (100 Continue, 103 Early Hints) precede the real one.
            100..=199 => continue,
            200 => return Ok(head),
            _ => return Err(ScrapeErrorKind::Status(status)),
        }
    }
}

/// Reads one response and returns its body, sans-IO over any `BufRead`.
fn read_response<R: BufRead>(r: &mut R, cap: usize) -> Result<Vec<u8>, ScrapeErrorKind> {
    let head = read_head(r)?;
    let mut body = Vec::new();
    if head.chunked {
        // Chunked wins over Content-Length when a server sends both (RFC 9112 6.3).
        loop {
            let mut line_budget = MAX_CHUNK_LINE;
            let line = read_line(r, &mut line_budget, MAX_CHUNK_LINE, "chunk size line")?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size, 16)
                .map_err(|_| protocol(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line; their values are not needed.
                let mut budget = MAX_HEAD;
                while !read_line(r, &mut budget, MAX_HEAD, "trailers")?.is_empty() {}
                return Ok(body);
            }
            if body.len() as u64 + size > cap as u64 {
                return Err(ScrapeErrorKind::TooLarge(cap));
            }
            read_exact_into(r, size, &mut body, "chunk")?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => protocol("connection closed after a chunk"),
                _ => ScrapeErrorKind::Io(e),
            })?;
            if crlf != *b"\r\n" {
                return Err(protocol("chunk not followed by CRLF"));
            }
        }
    }
    match head.length {
        Some(n) if n > cap as u64 => Err(ScrapeErrorKind::TooLarge(cap)),
        Some(n) => {
            read_exact_into(r, n, &mut body, "body")?;
            Ok(body)
        }
        None => {
            r.take(cap as u64 + 1)
                .read_to_end(&mut body)
                .map_err(ScrapeErrorKind::Io)?;
            if body.len() > cap {
                return Err(ScrapeErrorKind::TooLarge(cap));
            }
            Ok(body)
        }
    }
}

fn read_exact_into<R: Read>(
    r: &mut R,
    n: u64,
    body: &mut Vec<u8>,
    what: &str,
) -> Result<(), ScrapeErrorKind> {
    let got = r.take(n).read_to_end(body).map_err(ScrapeErrorKind::Io)?;
    if (got as u64) < n {
        return Err(protocol(format!(
            "connection closed {got} bytes into a {n}-byte {what}"
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "scrape_tests.rs"]
mod tests;
