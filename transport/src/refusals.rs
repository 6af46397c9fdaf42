//! Why peers were turned away, counted. Every refusal is also a `tracing` warn
//! line naming the peer and the reason, so a count can be traced to its peers.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a peer, a stream or a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// The peer presented no certificate.
    NoCert,
    /// The peer's certificate was not issued by this cluster's CA.
    UnknownCa,
    /// The peer's certificate is outside its validity period.
    Expired,
    /// The peer's certificate is on the CA's revocation list.
    Revoked,
    /// The certificate verified but is unusable otherwise (no `keel://` identity, bad signature...).
    BadCert,
    /// The peer sent a message kind that its role may not send.
    WrongRole,
    /// A frame header announced more than the largest frame allowed.
    OversizeFrame,
    /// A frame that was truncated or did not decode.
    BadFrame,
    /// The certificate opened more than [`CONNECTIONS_PER_PEER`]
    /// connections to this endpoint: its oldest was closed.
    ///
    /// [`CONNECTIONS_PER_PEER`]: crate::CONNECTIONS_PER_PEER
    TooManyConnections,
}

impl RefusalReason {
    pub const ALL: &'static [RefusalReason] = &[
        RefusalReason::NoCert,
        RefusalReason::UnknownCa,
        RefusalReason::Expired,
        RefusalReason::Revoked,
        RefusalReason::BadCert,
        RefusalReason::WrongRole,
        RefusalReason::OversizeFrame,
        RefusalReason::BadFrame,
        RefusalReason::TooManyConnections,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::NoCert => "no_cert",
            RefusalReason::UnknownCa => "unknown_ca",
            RefusalReason::Expired => "expired",
            RefusalReason::Revoked => "revoked",
            RefusalReason::BadCert => "bad_cert",
            RefusalReason::WrongRole => "wrong_role",
            RefusalReason::OversizeFrame => "oversize_frame",
            RefusalReason::BadFrame => "bad_frame",
            RefusalReason::TooManyConnections => "too_many_connections",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters shared by an endpoint and all its connections.
#[derive(Debug, Default)]
pub struct Stats {
    refused: [AtomicU64; 9],
    /// Telemetry summaries dropped, oldest first, because the queue was full.
    pub telemetry_dropped: AtomicU64,
    /// Telemetry summaries written to a stream.
    pub telemetry_sent: AtomicU64,
    /// Telemetry summaries received and passed on.
    pub telemetry_received: AtomicU64,
    /// Connections that passed the handshake and the identity check.
    pub accepted: AtomicU64,
}

impl Stats {
    pub fn refused(&self, reason: RefusalReason) -> u64 {
        self.refused[reason.index()].load(Ordering::Relaxed)
    }

    pub fn refused_total(&self) -> u64 {
        self.refused.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Count a refusal and log it with the peer and the detail.
    pub fn refuse(&self, peer: &str, reason: RefusalReason, detail: &str) {
        self.refused[reason.index()].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer, reason = reason.as_str(), detail, "refused");
    }

    pub fn dropped(&self) -> u64 {
        self.telemetry_dropped.load(Ordering::Relaxed)
    }
}
