//! rustls configurations for keel's QUIC: TLS 1.3 only, ALPN `keel/1`, and
//! mutual authentication under the cluster CA in both directions. The server
//! refuses a client without a certificate from the CA during the handshake;
//! the client checks the server's certificate against the name it dialled.

use crate::certs::{self, CertError, Pem};
use crate::RefusalReason;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// The one application protocol keel speaks.
pub const ALPN: &[u8] = b"keel/1";

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{what}: bad PEM: {why}")]
    Pem { what: &'static str, why: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
    #[error(transparent)]
    Cert(#[from] CertError),
}

/// What a process needs to take part: the cluster CA and its own certificate.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub ca_pem: String,
    /// `None` only to test that the server refuses a client without one.
    pub own: Option<Pem>,
}

impl Credentials {
    pub fn new(ca_pem: impl Into<String>, own: Pem) -> Self {
        Credentials {
            ca_pem: ca_pem.into(),
            own: Some(own),
        }
    }

    /// The files `keel cert issue` wrote in `dir`.
    /// Reads `DIR/ca.pem`, `DIR/cert.pem` and `DIR/key.pem`; a key that
    /// group or others may read is refused (`CertError::KeyReadable`).
    pub fn from_dir(dir: &Path) -> Result<Self, TlsError> {
        certs::check_key_mode(&dir.join(certs::NODE_KEY))?;
        Ok(Credentials {
            ca_pem: certs::read_file(&dir.join(certs::CA_CERT))?,
            own: Some(Pem {
                cert: certs::read_file(&dir.join(certs::NODE_CERT))?,
                key: certs::read_file(&dir.join(certs::NODE_KEY))?,
            }),
        })
    }
}

/// Timers every connection shares.
#[derive(Debug, Clone)]
pub struct Timing {
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// Pings keep a quiet but healthy connection from reaching the idle timeout.
    pub keep_alive: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError::Pem {
            what: "CA certificate",
            why: e.to_string(),
        })?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem {
            what: "CA certificate",
            why: "no certificate found".into(),
        });
    }
    Ok(Arc::new(roots))
}

fn own(pem: &Pem) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: "certificate",
            why: e.to_string(),
        })?;
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).map_err(|e| TlsError::Pem {
        what: "private key",
        why: e.to_string(),
    })?;
    Ok((chain, key))
}

fn transport(timing: &Timing) -> Result<Arc<quinn::TransportConfig>, TlsError> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        timing
            .idle_timeout
            .try_into()
            .map_err(|e: quinn::VarIntBoundsExceeded| TlsError::Quic(e.to_string()))?,
    ));
    t.keep_alive_interval(Some(timing.keep_alive));
    // Control requests each take a stream; allow many in flight.
    t.max_concurrent_bidi_streams(1024u32.into());
    Ok(Arc::new(t))
}

/// A QUIC server configuration that requires a client certificate from the CA.
pub fn server_config(
    creds: &Credentials,
    timing: &Timing,
) -> Result<quinn::ServerConfig, TlsError> {
    let own_pem = creds.own.as_ref().ok_or(TlsError::Pem {
        what: "certificate",
        why: "a server needs its own certificate".into(),
    })?;
    let (chain, key) = own(own_pem)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(&creds.ca_pem)?,
        provider(),
    )
    .build()
    .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(transport(timing)?);
    Ok(cfg)
}

/// A QUIC client configuration presenting this process's certificate.
pub fn client_config(
    creds: &Credentials,
    timing: &Timing,
) -> Result<quinn::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&creds.ca_pem)?);
    let mut tls = match &creds.own {
        Some(pem) => {
            let (chain, key) = own(pem)?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport(timing)?);
    Ok(cfg)
}

/// TLS alerts (RFC 8446) that name why a handshake failed.
const ALERT_CERTIFICATE_EXPIRED: u8 = 45;
const ALERT_UNKNOWN_CA: u8 = 48;
const ALERT_CERTIFICATE_REQUIRED: u8 = 116;

/// Why a handshake failed, from the connection error quinn reports: the TLS
/// alert our side sent (QUIC carries it as error code 0x100 + alert), or, if
/// there is none, the error's text.
pub fn classify_handshake_error(e: &quinn::ConnectionError) -> RefusalReason {
    let code = match e {
        quinn::ConnectionError::TransportError(t) => Some(u64::from(t.code)),
        quinn::ConnectionError::ConnectionClosed(c) => Some(u64::from(c.error_code)),
        _ => None,
    };
    match code
        .and_then(|c| c.checked_sub(0x100))
        .filter(|a| *a < 0x100)
    {
        Some(a) if a == ALERT_CERTIFICATE_REQUIRED as u64 => RefusalReason::NoCert,
        Some(a) if a == ALERT_UNKNOWN_CA as u64 => RefusalReason::UnknownCa,
        Some(a) if a == ALERT_CERTIFICATE_EXPIRED as u64 => RefusalReason::Expired,
        _ => {
            let text = e.to_string();
            if text.contains("no certificates") {
                RefusalReason::NoCert
            } else if text.contains("UnknownIssuer") {
                RefusalReason::UnknownCa
            } else if text.contains("Expired") || text.contains("NotValidYet") {
                RefusalReason::Expired
            } else {
                RefusalReason::BadCert
            }
        }
    }
}
