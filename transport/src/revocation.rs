//! Revocation (`keel cert revoke`): the CA's list of the certificates it no
//! longer vouches for, a standard X.509 CRL signed by the CA and re-issued
//! whole at each revocation. It is kept as `crl.pem` in the CA's folder and
//! copied into every process's credentials folder, where the process loads
//! it at start and on reload; rustls then refuses a peer whose certificate
//! it lists, in both directions.

use crate::certs::{self, CertError, CA_CERT, CRL};
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use std::path::Path;
use time::{Duration, OffsetDateTime};

/// Days from a CRL's issue to its announced next update. rustls does not
/// enforce it (a list past its next update still refuses what it lists),
/// so a CA host that is away never locks the cluster out.
pub const CRL_NEXT_UPDATE_DAYS: i64 = 30;

/// What `revoke` did.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// The certificate's serial, hex bytes separated by `:`.
    pub serial: String,
    /// It was listed already (the list is issued again all the same).
    pub already: bool,
    /// Certificates the new list names.
    pub listed: usize,
}

/// `keel cert revoke`: adds the certificate in `cert_file` to the CA's
/// `crl.pem` in `ca_dir` and signs the list again, numbered one more.
/// Refuses a certificate this CA did not issue.
pub fn revoke(ca_dir: &Path, cert_file: &Path, now: OffsetDateTime) -> Result<Revoked, CertError> {
    let ca = certs::load_ca(ca_dir)?;
    let parse = |what: &Path, why: String| CertError::Parse {
        what: what.display().to_string(),
        why,
    };
    let cert_der = CertificateDer::from_pem_slice(certs::read_file(cert_file)?.as_bytes())
        .map_err(|e| parse(cert_file, e.to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
        .map_err(|e| parse(cert_file, e.to_string()))?;
    let ca_der = CertificateDer::from_pem_slice(ca.pem.cert.as_bytes())
        .map_err(|e| parse(&ca_dir.join(CA_CERT), e.to_string()))?;
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der)
        .map_err(|e| parse(&ca_dir.join(CA_CERT), e.to_string()))?;
    if cert.issuer().as_raw() != ca_cert.subject().as_raw()
        || cert.verify_signature(Some(ca_cert.public_key())).is_err()
    {
        return Err(parse(cert_file, "not issued by this CA".into()));
    }
    let serial = cert.raw_serial().to_vec();

    let crl_path = ca_dir.join(CRL);
    let (mut listed, number) = if crl_path.exists() {
        let pem = certs::read_file(&crl_path)?;
        let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| parse(&crl_path, e.to_string()))?;
        let (_, crl) =
            x509_parser::parse_x509_crl(&der).map_err(|e| parse(&crl_path, e.to_string()))?;
        let listed: Vec<RevokedCertParams> = crl
            .iter_revoked_certificates()
            .map(|r| RevokedCertParams {
                serial_number: SerialNumber::from_slice(r.raw_serial()),
                revocation_time: r.revocation_date.to_datetime(),
                reason_code: None,
                invalidity_date: None,
            })
            .collect();
        let number = crl
            .crl_number()
            .and_then(|n| n.to_u64_digits().first().copied())
            .unwrap_or(0);
        (listed, number)
    } else {
        (Vec::new(), 0)
    };
    let serial_number = SerialNumber::from_slice(&serial);
    let already = listed.iter().any(|r| r.serial_number == serial_number);
    if !already {
        listed.push(RevokedCertParams {
            serial_number: serial_number.clone(),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let crl = CertificateRevocationListParams {
        this_update: now,
        next_update: now + Duration::days(CRL_NEXT_UPDATE_DAYS),
        crl_number: SerialNumber::from(number + 1),
        issuing_distribution_point: None,
        revoked_certs: listed,
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(ca.issuer())?;
    let count = crl_count(&crl)?;
    certs::write_file(&crl_path, &crl.pem()?, 0o644)?;
    Ok(Revoked {
        serial: serial_number.to_string(),
        already,
        listed: count,
    })
}

fn crl_count(crl: &rcgen::CertificateRevocationList) -> Result<usize, CertError> {
    let (_, parsed) = x509_parser::parse_x509_crl(crl.der()).map_err(|e| CertError::Parse {
        what: "new CRL".into(),
        why: e.to_string(),
    })?;
    Ok(parsed.iter_revoked_certificates().count())
}

/// The CRLs in `crl_pem`, each checked to be signed by a CA in `ca_pem`: a
/// list from another cluster, or a forged one, is an error at load rather
/// than a handshake failure with every peer.
pub fn load_crls(
    crl_pem: &str,
    ca_pem: &str,
) -> Result<Vec<CertificateRevocationListDer<'static>>, CertError> {
    let parse = |why: String| CertError::Parse {
        what: CRL.into(),
        why,
    };
    let cas = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse(format!("CA certificate: {e}")))?;
    let mut crls = Vec::new();
    for der in CertificateRevocationListDer::pem_slice_iter(crl_pem.as_bytes()) {
        let der = der.map_err(|e| parse(e.to_string()))?;
        let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| parse(e.to_string()))?;
        let signed_by_ours = cas.iter().any(|ca| {
            x509_parser::parse_x509_certificate(ca).is_ok_and(|(_, ca)| {
                ca.subject().as_raw() == crl.issuer().as_raw()
                    && crl.verify_signature(ca.public_key()).is_ok()
            })
        });
        if !signed_by_ours {
            return Err(parse("not signed by this cluster's CA".into()));
        }
        crls.push(der);
    }
    if crls.is_empty() {
        return Err(parse("no CRL found".into()));
    }
    Ok(crls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{init, issue, Validity, NODE_CERT};
    use keel_model::Role;

    fn tmp(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("keel-crl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn revoking_grows_a_signed_numbered_list_and_refuses_foreign_certificates() {
        let dir = tmp("grow");
        let ca_dir = dir.join("ca");
        init(&ca_dir).unwrap();
        for n in ["n1", "n2"] {
            issue(&ca_dir, Role::Sensor, n, &dir.join(n), Validity::days(1)).unwrap();
        }
        let now = OffsetDateTime::now_utc();
        let r1 = revoke(&ca_dir, &dir.join("n1").join(NODE_CERT), now).unwrap();
        assert!(!r1.already);
        assert_eq!(r1.listed, 1);
        let again = revoke(&ca_dir, &dir.join("n1").join(NODE_CERT), now).unwrap();
        assert!(again.already);
        assert_eq!(again.listed, 1);
        let r2 = revoke(&ca_dir, &dir.join("n2").join(NODE_CERT), now).unwrap();
        assert_eq!(r2.listed, 2);
        assert_ne!(r1.serial, r2.serial);

        let pem = certs::read_file(&ca_dir.join(CRL)).unwrap();
        let ca_pem = certs::read_file(&ca_dir.join(CA_CERT)).unwrap();
        let crls = load_crls(&pem, &ca_pem).unwrap();
        let (_, crl) = x509_parser::parse_x509_crl(&crls[0]).unwrap();
        assert_eq!(crl.crl_number().unwrap().to_u64_digits(), vec![3]);
        assert!(crl.next_update().unwrap().to_datetime() > now + Duration::days(29));

        // Another cluster's certificate, and its CA's list, are refused.
        init(&dir.join("other")).unwrap();
        issue(
            &dir.join("other"),
            Role::Sensor,
            "x",
            &dir.join("x"),
            Validity::days(1),
        )
        .unwrap();
        let err = revoke(&ca_dir, &dir.join("x").join(NODE_CERT), now).unwrap_err();
        assert!(err.to_string().contains("not issued by this CA"), "{err}");
        revoke(&dir.join("other"), &dir.join("x").join(NODE_CERT), now).unwrap();
        let foreign = certs::read_file(&dir.join("other").join(CRL)).unwrap();
        let err = load_crls(&foreign, &ca_pem).unwrap_err();
        assert!(err.to_string().contains("not signed by this cluster's CA"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
