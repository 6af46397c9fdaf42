//! When a process's own certificate stops being valid, and whether it is
//! time to say so. Plain code: `now` is an argument; the process that asks
//! (at start, then daily) does the logging.

use crate::certs::CertError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use time::Duration;
pub use time::OffsetDateTime;

/// A certificate that expires within this many days is warned about.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// How often a running process checks its certificate again.
pub const EXPIRY_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The end of a certificate's validity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub not_after: OffsetDateTime,
}

impl Expiry {
    /// The `not_after` of the first certificate in `cert_pem`.
    pub fn of_pem(cert_pem: &str) -> Result<Expiry, CertError> {
        let parse = |why: String| CertError::Parse {
            what: "certificate".into(),
            why,
        };
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| parse(e.to_string()))?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| parse(e.to_string()))?;
        Ok(Expiry {
            not_after: cert.validity().not_after.to_datetime(),
        })
    }

    /// Whole days from `now` to the end (negative once expired).
    pub fn days_left(&self, now: OffsetDateTime) -> i64 {
        let left = self.not_after - now;
        if left.is_negative() {
            -((-left).whole_days()) - 1
        } else {
            left.whole_days()
        }
    }

    /// Whether a process should warn at `now`: the certificate ends within
    /// [`EXPIRY_WARNING_DAYS`] (or has ended).
    pub fn should_warn(&self, now: OffsetDateTime) -> bool {
        self.not_after - now <= Duration::days(EXPIRY_WARNING_DAYS)
    }

    /// `not_after` as RFC 3339 in UTC, e.g. `2026-03-01T12:00:00Z`.
    pub fn not_after_rfc3339(&self) -> String {
        let t = self.not_after.to_offset(time::UtcOffset::UTC);
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{Ca, Validity};
    use keel_model::Role;

    #[test]
    fn a_warning_starts_thirty_days_before_the_end_and_days_left_counts_down() {
        let ca = Ca::generate(Validity::days(365)).unwrap();
        let pem = ca.issue(Role::Sensor, "n1", Validity::days(90)).unwrap();
        let e = Expiry::of_pem(&pem.cert).unwrap();
        let start = OffsetDateTime::now_utc();
        assert!(!e.should_warn(start));
        assert_eq!(e.days_left(start), 89);
        let near = e.not_after - Duration::days(EXPIRY_WARNING_DAYS) - Duration::hours(1);
        assert!(!e.should_warn(near), "31 days ahead is quiet");
        let within = e.not_after - Duration::days(EXPIRY_WARNING_DAYS) + Duration::hours(1);
        assert!(e.should_warn(within));
        assert_eq!(e.days_left(within), 29);
        let after = e.not_after + Duration::hours(1);
        assert!(e.should_warn(after));
        assert_eq!(e.days_left(after), -1);
        assert!(e.not_after_rfc3339().ends_with('Z'));
        assert_eq!(e.not_after_rfc3339().len(), 20);
    }
}
