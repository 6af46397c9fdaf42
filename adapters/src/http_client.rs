//! HTTP for scrapes and webhooks, through `ureq` (TLS by rustls over ring,
//! as the rest of keel): `http://` and `https://`, bearer and basic
//! authentication (secrets read from files at each request, so a rotated
//! token is picked up, as Prometheus does), an extra CA for exporters and
//! receivers behind a private one, no redirects, one deadline for the whole
//! exchange, and a cap on what is read back.

use serde::Deserialize;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `basic_auth = { username = "...", password_file = "..." }`, under
/// Prometheus's names.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    /// A file holding the password (its trailing newline is dropped).
    pub password_file: PathBuf,
}

/// `tls_config = { ca_file = "..." }`: a CA (PEM) trusted besides the
/// public roots (`webpki-roots`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// How to reach an endpoint: its credentials and trust.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Access {
    /// A file holding a bearer token (`Authorization: Bearer ...`).
    pub bearer_token_file: Option<PathBuf>,
    pub basic_auth: Option<BasicAuth>,
    pub tls_config: Option<TlsConfig>,
}

/// What went wrong, in the terms a scrape or a webhook reports.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL: {0}")]
    BadUrl(String),
    #[error("connect: {0}")]
    Connect(String),
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The server answered with a status outside 2xx: the status line and
    /// the start of the body.
    #[error("server answered {0:?}")]
    Status(String, String),
    #[error("bad response: {0}")]
    Protocol(String),
    #[error("body over {0} bytes")]
    TooLarge(usize),
    /// A credential or CA file could not be read or used.
    #[error("{0}")]
    Credentials(String),
}

/// An answer: its status, status line (`HTTP/1.1 200 OK`) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub status_line: String,
    pub body: Vec<u8>,
}

/// A client for one endpoint's access settings.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    access: Access,
    timeout: Duration,
}

impl Client {
    /// Errors: the CA file cannot be read or holds no certificate.
    pub fn new(access: &Access, timeout: Duration) -> Result<Client, HttpError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(ca) = access.tls_config.as_ref().and_then(|t| t.ca_file.as_ref()) {
            let pem = std::fs::read(ca)
                .map_err(|e| HttpError::Credentials(format!("ca_file {}: {e}", ca.display())))?;
            let mut n = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| {
                    HttpError::Credentials(format!("ca_file {}: {e}", ca.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    HttpError::Credentials(format!("ca_file {}: {e}", ca.display()))
                })?;
                n += 1;
            }
            if n == 0 {
                return Err(HttpError::Credentials(format!(
                    "ca_file {}: no PEM certificate in it",
                    ca.display()
                )));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpError::Credentials(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let agent = ureq::AgentBuilder::new()
            .timeout(timeout)
            .redirects(0)
            .user_agent("keel")
            .tls_config(Arc::new(tls))
            .build();
        Ok(Client {
            agent,
            access: access.clone(),
            timeout,
        })
    }

    /// GETs `url`; the body as text, at most `cap` bytes.
    pub fn get_text(&self, url: &str, accept: &str, cap: usize) -> Result<String, HttpError> {
        let req = self
            .authorize(self.agent.get(url))?
            .set("Accept", accept)
            .set("Accept-Encoding", "identity");
        let r = req.call();
        // Asked for identity; a body encoded anyway is not text to parse.
        if let Ok(resp) | Err(ureq::Error::Status(_, resp)) = &r {
            if let Some(enc) = resp
                .header("Content-Encoding")
                .filter(|e| !e.eq_ignore_ascii_case("identity"))
            {
                return Err(HttpError::Protocol(format!(
                    "Content-Encoding {enc:?} not supported"
                )));
            }
        }
        let reply = self.send(r, cap)?;
        if !(200..300).contains(&reply.status) {
            return Err(HttpError::Status(reply.status_line, snippet(&reply.body)));
        }
        String::from_utf8(reply.body).map_err(|e| {
            HttpError::Protocol(format!(
                "body is not UTF-8 (at byte {})",
                e.utf8_error().valid_up_to()
            ))
        })
    }

    /// POSTs `body` as JSON with extra `headers`; the answer whatever its
    /// status (at most `cap` bytes of its body).
    pub fn post_json(
        &self,
        url: &str,
        body: &[u8],
        headers: &[(&str, &str)],
        cap: usize,
    ) -> Result<Reply, HttpError> {
        let mut req = self
            .authorize(self.agent.post(url))?
            .set("Content-Type", "application/json");
        for (k, v) in headers {
            req = req.set(k, v);
        }
        self.send(req.send_bytes(body), cap)
    }

    fn authorize(&self, req: ureq::Request) -> Result<ureq::Request, HttpError> {
        let secret = |p: &Path| {
            std::fs::read_to_string(p)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| HttpError::Credentials(format!("{}: {e}", p.display())))
        };
        if let Some(f) = &self.access.bearer_token_file {
            return Ok(req.set("Authorization", &format!("Bearer {}", secret(f)?)));
        }
        if let Some(b) = &self.access.basic_auth {
            use base64::Engine;
            let pair = format!("{}:{}", b.username, secret(&b.password_file)?);
            let enc = base64::engine::general_purpose::STANDARD.encode(pair);
            return Ok(req.set("Authorization", &format!("Basic {enc}")));
        }
        Ok(req)
    }

    fn send(&self, r: Result<ureq::Response, ureq::Error>, cap: usize) -> Result<Reply, HttpError> {
        let resp = match r {
            Ok(resp) | Err(ureq::Error::Status(_, resp)) => resp,
            Err(ureq::Error::Transport(t)) => return Err(self.transport(&t)),
        };
        let status = resp.status();
        let status_line = format!("{} {} {}", resp.http_version(), status, resp.status_text());
        let mut body = Vec::new();
        resp.into_reader()
            .take(cap as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                    HttpError::TimedOut(self.timeout)
                }
                _ => HttpError::Protocol(e.to_string()),
            })?;
        if body.len() > cap {
            return Err(HttpError::TooLarge(cap));
        }
        Ok(Reply {
            status,
            status_line,
            body,
        })
    }

    fn transport(&self, t: &ureq::Transport) -> HttpError {
        use ureq::ErrorKind as K;
        let text = t.to_string();
        let timed_out = text.contains("timed out")
            || t.source()
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .is_some_and(|e| {
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                    )
                });
        if timed_out {
            return HttpError::TimedOut(self.timeout);
        }
        match t.kind() {
            K::InvalidUrl | K::UnknownScheme => HttpError::BadUrl(text),
            K::Dns | K::ConnectionFailed | K::Io => HttpError::Connect(text),
            _ => HttpError::Protocol(text),
        }
    }
}

use std::error::Error as _;

/// The start of a body, as text, for errors and details.
pub fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    s.chars().take(300).collect()
}
