//! rustls configurations for keel's QUIC: TLS 1.3 only, ALPN `keel/1`, and
//! mutual authentication under the cluster CA in both directions. The server
//! refuses a client without a certificate from the CA during the handshake;
//! the client checks the server's certificate against the name it dialled.

use crate::certs::{self, CertError, Pem};
use crate::expiry::Expiry;
use crate::{revocation, RefusalReason};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
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

/// What a process needs to take part: the cluster CA, its own certificate,
/// and the CA's revocation list if there is one.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub ca_pem: String,
    /// `None` only to test that the server refuses a client without one.
    pub own: Option<Pem>,
    /// The CA's CRL (`crl.pem`): peers whose certificate it lists are refused.
    pub crl_pem: Option<String>,
    /// The folder these were read from, read again on reload.
    pub dir: Option<PathBuf>,
}

impl Credentials {
    pub fn new(ca_pem: impl Into<String>, own: Pem) -> Self {
        Credentials {
            ca_pem: ca_pem.into(),
            own: Some(own),
            crl_pem: None,
            dir: None,
        }
    }

    /// The same, checking peers against `crl_pem` too.
    pub fn with_crl(mut self, crl_pem: impl Into<String>) -> Self {
        self.crl_pem = Some(crl_pem.into());
        self
    }

    /// The files `keel cert issue` (or `keel cert request` and `sign`) wrote
    /// in `dir`: `ca.pem`, `cert.pem`, `key.pem`, and `crl.pem` when present.
    /// A key that group or others may read is refused
    /// (`CertError::KeyReadable`), and so is a CRL the CA did not sign.
    pub fn from_dir(dir: &Path) -> Result<Self, TlsError> {
        let creds = Self::read_dir(dir)?;
        crate::reload::loaded(&creds);
        Ok(creds)
    }

    /// [`Credentials::from_dir`] without recording them as this folder's latest.
    pub(crate) fn read_dir(dir: &Path) -> Result<Self, TlsError> {
        certs::check_key_mode(&dir.join(certs::NODE_KEY))?;
        let ca_pem = certs::read_file(&dir.join(certs::CA_CERT))?;
        let crl_path = dir.join(certs::CRL);
        let crl_pem = match crl_path.exists() {
            true => Some(certs::read_file(&crl_path)?),
            false => None,
        };
        if let Some(crl) = &crl_pem {
            revocation::load_crls(crl, &ca_pem).map_err(|e| TlsError::Pem {
                what: "crl.pem",
                why: format!("{}: {e}", crl_path.display()),
            })?;
        }
        Ok(Credentials {
            ca_pem,
            own: Some(Pem {
                cert: certs::read_file(&dir.join(certs::NODE_CERT))?,
                key: certs::read_file(&dir.join(certs::NODE_KEY))?,
            }),
            crl_pem,
            dir: Some(dir.to_path_buf()),
        })
    }

    /// When this process's own certificate ends.
    pub fn expiry(&self) -> Result<Expiry, TlsError> {
        let own = self.own.as_ref().ok_or(TlsError::Pem {
            what: "certificate",
            why: "none".into(),
        })?;
        Ok(Expiry::of_pem(&own.cert)?)
    }

    fn crls(&self) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
        match &self.crl_pem {
            Some(crl) => Ok(revocation::load_crls(crl, &self.ca_pem)?),
            None => Ok(Vec::new()),
        }
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
    // With a CRL, only the leaf is looked up in it: the CA is the trust
    // anchor, which no CRL of its own can revoke.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(&creds.ca_pem)?,
        provider(),
    )
    .with_crls(creds.crls()?)
    .only_check_end_entity_revocation()
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
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots(&creds.ca_pem)?,
        provider(),
    )
    .with_crls(creds.crls()?)
    .only_check_end_entity_revocation()
    .build()
    .map_err(|e| TlsError::Quic(e.to_string()))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier);
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
const ALERT_CERTIFICATE_REVOKED: u8 = 44;
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
        Some(a) if a == ALERT_CERTIFICATE_REVOKED as u64 => RefusalReason::Revoked,
        _ => {
            let text = e.to_string();
            if text.contains("no certificates") {
                RefusalReason::NoCert
            } else if text.contains("UnknownIssuer") {
                RefusalReason::UnknownCa
            } else if text.contains("Revoked") {
                RefusalReason::Revoked
            } else if text.contains("Expired") || text.contains("NotValidYet") {
                RefusalReason::Expired
            } else {
                RefusalReason::BadCert
            }
        }
    }
}
