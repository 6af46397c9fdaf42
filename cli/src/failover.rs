//! Which failures of one controller replica send a question on to the next
//! one of the context: only those where the replica could not be reached
//! (no connection, no handshake, no answer in time, the connection lost
//! before the answer). A replica that answered, refusals included, is never
//! asked around: its answer stands.

use keel_transport::TransportError;

/// What went wrong with one replica, as far as failing over goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection or no handshake (a dead address, a closed port, a
    /// name that does not resolve, another role listening there).
    Unreachable,
    /// Connected, but no answer within the time allowed.
    Timeout,
    /// The connection broke (or the replica is stopping) before it answered.
    Lost,
    /// The replica refused us (our certificate, our role, a bad frame):
    /// every replica of the cluster would.
    Refused,
    /// Our side: credentials unreadable, a bad configuration.
    Local,
}

/// Whether a question goes on to the next replica after this failure.
pub fn fails_over(f: Failure) -> bool {
    matches!(f, Failure::Unreachable | Failure::Timeout | Failure::Lost)
}

/// A transport error, sorted.
pub fn classify(e: &TransportError) -> Failure {
    match e {
        TransportError::Connect { .. } | TransportError::Io { .. } => Failure::Unreachable,
        TransportError::Timeout { .. } => Failure::Timeout,
        TransportError::ConnectionLost { .. }
        | TransportError::Stream { .. }
        | TransportError::Closed { .. } => Failure::Lost,
        TransportError::Refused { .. }
        | TransportError::Frame { .. }
        | TransportError::NotPermitted { .. } => Failure::Refused,
        TransportError::Config { .. } | TransportError::Tls(_) => Failure::Local,
    }
}

/// An error from asking one replica, sorted: a transport error anywhere in
/// its chain is classified; anything else (a refusal in the answer, our own
/// files) stays where it is.
pub fn classify_any(e: &anyhow::Error) -> Failure {
    e.chain()
        .find_map(|c| c.downcast_ref::<TransportError>())
        .map_or(Failure::Local, classify)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_transport::RefusalReason;
    use std::time::Duration;

    fn addr() -> std::net::SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn only_an_unreachable_replica_is_failed_over() {
        assert!(fails_over(Failure::Unreachable));
        assert!(fails_over(Failure::Timeout));
        assert!(fails_over(Failure::Lost));
        assert!(!fails_over(Failure::Refused));
        assert!(!fails_over(Failure::Local));
    }

    #[test]
    fn transport_errors_sort_into_failures() {
        let connect = TransportError::Connect {
            addr: addr(),
            name: "ctl-1".into(),
            detail: "handshake timed out".into(),
        };
        assert_eq!(classify(&connect), Failure::Unreachable);
        let io = TransportError::Io {
            addr: addr(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(classify(&io), Failure::Unreachable);
        let timeout = TransportError::Timeout {
            peer: "ctl-1".into(),
            after: Duration::from_secs(15),
        };
        assert_eq!(classify(&timeout), Failure::Timeout);
        let closed = TransportError::Closed {
            peer: "ctl-1".into(),
        };
        assert_eq!(classify(&closed), Failure::Lost);
        let refused = TransportError::Refused {
            peer: "ctl-1".into(),
            reason: RefusalReason::UnknownCa,
            detail: "unknown_ca".into(),
        };
        assert_eq!(classify(&refused), Failure::Refused);
        assert!(!fails_over(classify(&refused)));
        let config = TransportError::Config {
            detail: "no key".into(),
        };
        assert_eq!(classify(&config), Failure::Local);
    }

    #[test]
    fn a_transport_error_under_context_is_found_and_others_stay_put() {
        let e = anyhow::Error::new(TransportError::Timeout {
            peer: "ctl-2".into(),
            after: Duration::from_secs(1),
        })
        .context("asking ctl-2 at 127.0.0.1:9");
        assert_eq!(classify_any(&e), Failure::Timeout);
        let refusal = anyhow::anyhow!("ctl-2: a operator may not ask `x`");
        assert_eq!(classify_any(&refusal), Failure::Local);
        assert!(!fails_over(classify_any(&refusal)));
    }
}
