//! keel's wire: how sensors, correlators, controllers, executors and operators
//! talk. QUIC (quinn) with mutual TLS under one cluster CA (rustls, TLS 1.3,
//! ALPN `keel/1`); a peer's role and name come from its certificate's
//! `keel://ROLE/NAME`, and each role may send only its own message kinds
//! (`keel_model::Role::may_send`). Messages are `keel_model::Envelope`s in
//! length-prefixed MessagePack frames. Two classes share a connection:
//! telemetry, batched and dropped oldest-first under pressure, and control,
//! request/response, ordered and never dropped. Everything that can be decided
//! without a socket (framing, backoff, the drop-oldest queue, the role policy,
//! certificate identities) is plain code tested on its own; the quinn parts are
//! thin shells around it.

pub mod backoff;
pub mod certs;
pub mod conn;
pub mod endpoint;
pub mod expiry;
pub mod frame;
pub mod identity;
pub mod refusals;
pub mod reload;
mod reply;
pub mod revocation;
pub mod telemetry;
pub mod tls;

pub use backoff::Backoff;
pub use conn::{Connection, Inbox, Request};
pub use endpoint::{Client, Link, Server};
pub use expiry::Expiry;
pub use frame::{FrameDecoder, FrameError, MAX_FRAME};
pub use identity::Peer;
pub use refusals::{RefusalReason, Stats};
pub use telemetry::TelemetrySender;
pub use tls::{Credentials, Timing};

use keel_model::Role;
use std::net::SocketAddr;
use std::time::Duration;
use thiserror::Error;

/// Connections one certificate identity (role and name) may hold open to one
/// server at once. A new one past the bound closes the identity's oldest,
/// counted as `too_many_connections`: a client that exits without closing
/// (a CLI run, a crash) holds its connection until the QUIC idle timeout, and
/// its next run must still get in, while a stolen or looping identity never
/// holds more than the bound. A role process holds one or two; an operator's
/// scripts may run many commands within an idle timeout.
pub const CONNECTIONS_PER_PEER: usize = 64;

/// Knobs shared by a server's or a client's connections.
#[derive(Debug, Clone)]
pub struct Options {
    /// Largest frame accepted or sent, in bytes of payload.
    pub max_frame: usize,
    /// Summaries a connection's telemetry queue holds before dropping the oldest.
    pub telemetry_capacity: usize,
    /// Summaries per telemetry frame at most.
    pub batch_max: usize,
    /// Batches and requests waiting for the application before the transport
    /// pushes back on the peer.
    pub inbox_capacity: usize,
    /// How long a peer may take to send a whole request once it opened a stream.
    pub request_read_timeout: Duration,
    pub connect_timeout: Duration,
    pub timing: Timing,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_frame: MAX_FRAME,
            telemetry_capacity: telemetry::QUEUE_CAPACITY,
            batch_max: telemetry::BATCH_MAX,
            inbox_capacity: 64,
            request_read_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            timing: Timing::default(),
        }
    }
}

/// Everything that can go wrong on the wire; each names the peer.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("{peer}: refused ({reason}): {detail}")]
    Refused {
        peer: String,
        reason: RefusalReason,
        detail: String,
    },
    #[error("{peer}: no answer within {after:?}")]
    Timeout { peer: String, after: Duration },
    #[error("{peer}: connection lost: {source}")]
    ConnectionLost {
        peer: String,
        source: quinn::ConnectionError,
    },
    #[error("{peer}: stream failed: {detail}")]
    Stream { peer: String, detail: String },
    #[error("{peer}: {source}")]
    Frame { peer: String, source: FrameError },
    #[error("{peer}: closing; no new requests")]
    Closed { peer: String },
    #[error("connecting to {name} at {addr}: {detail}")]
    Connect {
        addr: SocketAddr,
        name: String,
        detail: String,
    },
    #[error("a {role} may not send {kind}")]
    NotPermitted { role: Role, kind: &'static str },
    #[error("{addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("configuration: {detail}")]
    Config { detail: String },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

impl TransportError {
    /// A lost connection, read for what the peer said: a refusal carries its
    /// reason in the close frame (application close) or as a TLS alert.
    pub fn from_connection(peer: String, e: quinn::ConnectionError) -> TransportError {
        match &e {
            quinn::ConnectionError::ApplicationClosed(close)
                if close.error_code == conn::CLOSE_REFUSED.into() =>
            {
                let text = String::from_utf8_lossy(&close.reason).to_string();
                let reason = RefusalReason::ALL
                    .iter()
                    .copied()
                    .find(|r| text.starts_with(r.as_str()))
                    .unwrap_or(RefusalReason::BadCert);
                TransportError::Refused {
                    peer,
                    reason,
                    detail: text,
                }
            }
            quinn::ConnectionError::TransportError(_)
            | quinn::ConnectionError::ConnectionClosed(_) => {
                let reason = tls::classify_handshake_error(&e);
                if reason == RefusalReason::BadCert && !e.to_string().contains("certificate") {
                    TransportError::ConnectionLost { peer, source: e }
                } else {
                    TransportError::Refused {
                        peer,
                        reason,
                        detail: e.to_string(),
                    }
                }
            }
            _ => TransportError::ConnectionLost { peer, source: e },
        }
    }

    pub fn is_connection_lost(&self) -> bool {
        matches!(self, TransportError::ConnectionLost { .. })
    }

    /// The refusal this error reports, if it is one.
    pub fn refusal(&self) -> Option<RefusalReason> {
        match self {
            TransportError::Refused { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}
