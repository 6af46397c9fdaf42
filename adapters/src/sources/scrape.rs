//! Live Prometheus scrapes: a GET of an exporter's `/metrics` through
//! `crate::http_client` (`ureq`: `http://` or `https://`, bearer or basic
//! authentication, an extra CA), handed to `prometheus::parse_scrape`. Every
//! scrape has a deadline and the body is capped, so a stuck or hostile
//! exporter costs a bounded time and memory.

use super::prometheus::{parse_scrape, ScrapeStats};
use crate::http_client::{Access, BasicAuth, Client, HttpError, TlsConfig};
use keel_model::{MetricSample, Name, Timestamp};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The largest body taken (a node-exporter scrape is ~100 KiB; a dcgm-exporter
/// on 8 GPUs ~200 KiB).
pub const MAX_BODY: usize = 16 << 20;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// `type = "prometheus"`: a Prometheus text endpoint scraped on a timer
/// (dcgm-exporter, vLLM, node-exporter).
#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// `http://host:port/path` or `https://...`.
    pub url: String,
    /// A file holding a bearer token sent with each scrape (an
    /// authenticated vLLM, dcgm-exporter behind web-config).
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// `{ username, password_file }`: HTTP basic authentication.
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    /// `{ ca_file }`: a CA trusted besides the public roots, for `https://`.
    #[serde(default)]
    pub tls_config: Option<TlsConfig>,
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
        let access = Access {
            bearer_token_file: self.bearer_token_file.clone(),
            basic_auth: self.basic_auth.clone(),
            tls_config: self.tls_config.clone(),
        };
        let target = ScrapeTarget::new(&self.url, node)
            .map(|t| t.with_timeout(super::interval(self.timeout_ms)))
            .and_then(|t| t.with_access(access))
            .map_err(|e| format!("prometheus source: {e}"));
        Some(target.map(|target| {
            let reader: Box<dyn super::Timed> = Box::new(Scraper {
                target,
                counters: super::SourceCounters::default(),
            });
            (super::interval(self.interval_ms), reader)
        }))
    }
}

/// A scrape target read on a timer, counting what its exporter serves
/// that is not valid exposition format (so that an exporter whose every
/// line is malformed does not pass for a healthy one with no GPUs).
struct Scraper {
    target: ScrapeTarget,
    counters: super::SourceCounters,
}

impl super::Timed for Scraper {
    fn read(&mut self, now: f64) -> Result<Vec<keel_model::Record>, String> {
        let (samples, stats) = scrape(&self.target, now).map_err(|e| e.to_string())?;
        if let Some((line, why)) = stats.malformed.last() {
            self.counters.bad += stats.malformed.len() as u64;
            self.counters.last_error = Some(format!(
                "{} line {line}: {why} ({} malformed lines in this scrape)",
                self.target.url,
                stats.malformed.len()
            ));
        }
        Ok(samples
            .into_iter()
            .map(keel_model::Record::Metric)
            .collect())
    }

    fn counters(&self) -> super::SourceCounters {
        self.counters.clone()
    }
}

/// A parsed `http://host:port/path` (or `https://`) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `https://`.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    /// Accepts `http://` or `https://HOST[:PORT][/PATH][?QUERY]` only; HOST
    /// may be a name, an IPv4 address or a bracketed IPv6 address.
    pub fn parse(url: &str) -> Result<Url, ScrapeError> {
        let bad = |why: &str| ScrapeError {
            url: url.to_string(),
            kind: ScrapeErrorKind::BadUrl(why.to_string()),
        };
        let (tls, rest) = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (false, rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
            Some((scheme, _)) => {
                return Err(bad(&format!("scheme {scheme:?} is not http or https")))
            }
            None => return Err(bad("not an http:// or https:// URL")),
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
            "" if tls => 443,
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
            tls,
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
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

/// One exporter to scrape, and the node its samples belong to.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeTarget {
    pub url: Url,
    pub node: Name,
    /// For the whole scrape: connect, request and response together.
    pub timeout: Duration,
    pub access: Access,
}

impl ScrapeTarget {
    pub fn new(url: &str, node: &str) -> Result<ScrapeTarget, ScrapeError> {
        Ok(ScrapeTarget {
            url: Url::parse(url)?,
            node: Name::from(node),
            timeout: DEFAULT_TIMEOUT,
            access: Access::default(),
        })
    }

    pub fn with_timeout(mut self, timeout: Duration) -> ScrapeTarget {
        self.timeout = timeout;
        self
    }

    /// With credentials and trust; errors: a CA file that cannot be used.
    pub fn with_access(mut self, access: Access) -> Result<ScrapeTarget, ScrapeError> {
        Client::new(&access, self.timeout).map_err(|e| ScrapeError {
            url: self.url.to_string(),
            kind: ScrapeErrorKind::from(e),
        })?;
        self.access = access;
        Ok(self)
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
    Connect(String),
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The status line as the server sent it.
    #[error("server answered {0:?}")]
    Status(String),
    #[error("bad response: {0}")]
    Protocol(String),
    #[error("body over {0} bytes")]
    TooLarge(usize),
    /// A token, password or CA file that cannot be read or used.
    #[error("{0}")]
    Credentials(String),
}

impl From<HttpError> for ScrapeErrorKind {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::BadUrl(s) => ScrapeErrorKind::BadUrl(s),
            HttpError::Connect(s) => ScrapeErrorKind::Connect(s),
            HttpError::TimedOut(d) => ScrapeErrorKind::TimedOut(d),
            HttpError::Status(line, _) => ScrapeErrorKind::Status(line),
            HttpError::Protocol(s) => ScrapeErrorKind::Protocol(s),
            HttpError::TooLarge(n) => ScrapeErrorKind::TooLarge(n),
            HttpError::Credentials(s) => ScrapeErrorKind::Credentials(s),
        }
    }
}

/// Fetches `target` and parses what it serves, stamping samples with `ts`
/// (the caller's clock, so that every source of a sensor shares one).
pub fn scrape(
    target: &ScrapeTarget,
    ts: Timestamp,
) -> Result<(Vec<MetricSample>, ScrapeStats), ScrapeError> {
    let body = fetch_with(&target.url, target.timeout, &target.access)?;
    Ok(parse_scrape(&body, &target.node, ts))
}

/// The `Accept` header of a scrape: the classic text format first.
const ACCEPT: &str = "text/plain;version=0.0.4;q=1,text/plain;q=0.5";

/// GETs `url` without credentials and returns its body as text.
pub fn fetch(url: &Url, timeout: Duration) -> Result<String, ScrapeError> {
    fetch_with(url, timeout, &Access::default())
}

/// GETs `url` with `access` and returns its body as text (at most
/// [`MAX_BODY`] bytes).
pub fn fetch_with(url: &Url, timeout: Duration, access: &Access) -> Result<String, ScrapeError> {
    let err = |kind| ScrapeError {
        url: url.to_string(),
        kind,
    };
    let client = Client::new(access, timeout).map_err(|e| err(e.into()))?;
    client
        .get_text(&url.to_string(), ACCEPT, MAX_BODY)
        .map_err(|e| err(e.into()))
}

#[cfg(test)]
#[path = "scrape_tests.rs"]
mod tests;
