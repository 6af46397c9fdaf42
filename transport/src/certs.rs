//! The cluster's certificates (`keel cert init`, `keel cert issue`): one CA per
//! cluster, one certificate per process, whose SAN URI `keel://ROLE/NAME` is the
//! process's identity and whose DNS SAN `NAME` lets a standard client check the
//! server it dialled. Private keys are written readable by their owner only.

use crate::identity;
use keel_model::Role;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const NODE_CERT: &str = "cert.pem";
pub const NODE_KEY: &str = "key.pem";
/// A certificate signing request, written next to the key it is for.
pub const REQUEST: &str = "request.csr";
/// The CA's revocation list: kept in the CA's folder, copied into every
/// process's credentials folder.
pub const CRL: &str = "crl.pem";

#[derive(Debug, Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("bad name {name:?}: {why}")]
    BadName { name: String, why: &'static str },
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error("{path}: a private key readable by group or others (mode {mode:o}); `chmod 600` it")]
    KeyReadable { path: PathBuf, mode: u32 },
    #[error("certificate signing request does not parse or its signature is wrong: {0}")]
    Csr(rcgen::Error),
    #[error("certificate signing request refused: {why}")]
    BadRequest { why: String },
    #[error("{what}: {why}")]
    Parse { what: String, why: String },
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From a few minutes ago (clocks differ) for `days` days.
    pub fn days(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::days(days as i64),
        }
    }
}

/// A PEM certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A cluster CA in memory.
pub struct Ca {
    pub pem: Pem,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn generate(validity: Validity) -> Result<Ca, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        // A name of its own, so that a certificate from another keel cluster is
        // refused as signed by an unknown CA, not as a bad signature by ours.
        let id: u64 = rand::random();
        dn.push(DnType::CommonName, format!("keel cluster CA {id:016x}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok(Ca {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    pub fn from_pem(pem: Pem) -> Result<Ca, CertError> {
        let key = KeyPair::from_pem(&pem.key)?;
        let issuer = Issuer::from_ca_cert_pem(&pem.cert, key)?;
        Ok(Ca { pem, issuer })
    }

    /// A certificate for process `name` of `role`, signed by this CA.
    pub fn issue(&self, role: Role, name: &str, validity: Validity) -> Result<Pem, CertError> {
        let params = leaf_params(role, name, validity)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// A certificate for the key in a certificate signing request. Only the
    /// request's public key and its `keel://ROLE/NAME` are taken from it;
    /// everything else (usages, validity, a request to be a CA) is this
    /// CA's, exactly as [`Ca::issue`] would write it.
    pub fn sign(&self, csr_pem: &str, validity: Validity) -> Result<Signed, CertError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(CertError::Csr)?;
        let (role, name) = requested_identity(&csr.params.subject_alt_names)?;
        let signed = CertificateSigningRequestParams {
            params: leaf_params(role, &name, validity)?,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)?;
        Ok(Signed {
            role,
            name,
            cert: signed.pem(),
        })
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }
}

/// What [`Ca::sign`] made of a request.
#[derive(Debug, Clone)]
pub struct Signed {
    pub role: Role,
    pub name: String,
    pub cert: String,
}

/// The role and name a request asks for: exactly one `keel://ROLE/NAME`
/// URI, and the name again as its only DNS name, as [`Ca::issue`] writes them.
fn requested_identity(sans: &[SanType]) -> Result<(Role, String), CertError> {
    let bad = |why: String| CertError::BadRequest { why };
    let mut uris = sans.iter().filter_map(|s| match s {
        SanType::URI(u) => Some(u.as_str()),
        _ => None,
    });
    let uri = uris
        .next()
        .ok_or_else(|| bad("no keel://ROLE/NAME URI".into()))?;
    if uris.next().is_some() {
        return Err(bad("more than one URI".into()));
    }
    let (role, name) = identity::parse_uri(uri).map_err(|e| bad(e.to_string()))?;
    for san in sans {
        match san {
            SanType::URI(_) => {}
            SanType::DnsName(d) if d.as_str() == name => {}
            other => return Err(bad(format!("unexpected name {other:?} besides {uri}"))),
        }
    }
    Ok((role, name))
}

/// The parameters of every process certificate: the name as DNS SAN, the
/// identity as URI SAN, both usages, and a random serial (the CRL names
/// certificates by serial, so two certificates never share one, not even
/// two for the same key).
fn leaf_params(role: Role, name: &str, validity: Validity) -> Result<CertificateParams, CertError> {
    identity::check_name(name).map_err(|why| CertError::BadName {
        name: name.to_string(),
        why,
    })?;
    let mut params = CertificateParams::new(vec![name.to_string()])?;
    params
        .subject_alt_names
        .push(SanType::URI(identity::uri(role, name).try_into()?));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationalUnitName, role.wire());
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every process both dials and accepts, so every certificate serves both.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let mut serial: [u8; 16] = rand::random();
    serial[0] = (serial[0] & 0x7f) | 0x01;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(params)
}

/// `keel cert init`: a new CA in `out` (`ca.pem`, `ca.key`).
pub fn init(out: &Path) -> Result<Ca, CertError> {
    let key_path = out.join(CA_KEY);
    if key_path.exists() {
        return Err(CertError::Exists { path: key_path });
    }
    let ca = Ca::generate(Validity::days(3650))?;
    create_dir(out)?;
    write_file(&out.join(CA_CERT), &ca.pem.cert, 0o644)?;
    write_file(&key_path, &ca.pem.key, 0o600)?;
    Ok(ca)
}

/// Read the CA that `init` wrote in `dir`.
pub fn load_ca(dir: &Path) -> Result<Ca, CertError> {
    Ca::from_pem(Pem {
        cert: read_file(&dir.join(CA_CERT))?,
        key: read_file(&dir.join(CA_KEY))?,
    })
}

/// `keel cert issue`: `cert.pem`, `key.pem` and a copy of `ca.pem` in `out`,
/// everything a process needs to join the cluster.
pub fn issue(
    ca_dir: &Path,
    role: Role,
    name: &str,
    out: &Path,
    validity: Validity,
) -> Result<Pem, CertError> {
    let ca = load_ca(ca_dir)?;
    let pem = ca.issue(role, name, validity)?;
    write_credentials(out, &ca.pem.cert, &pem)?;
    copy_crl(ca_dir, out)?;
    Ok(pem)
}

/// `keel cert request`, on the node: a key in `out/key.pem` (0600; an
/// existing one, 0600, is kept, so that renewing needs no new key) and a
/// certificate signing request for it in `out/request.csr`, carrying the
/// identity exactly as [`Ca::issue`] would. The key never leaves `out`.
pub fn request(role: Role, name: &str, out: &Path) -> Result<String, CertError> {
    let mut params = leaf_params(role, name, Validity::days(1))?;
    // Not part of a request: the CA chooses them.
    params.serial_number = None;
    params.use_authority_key_identifier_extension = false;
    create_private_dir(out)?;
    let key_path = out.join(NODE_KEY);
    let key = if key_path.exists() {
        check_key_mode(&key_path)?;
        KeyPair::from_pem(&read_file(&key_path)?)?
    } else {
        let key = KeyPair::generate()?;
        write_file(&key_path, &key.serialize_pem(), 0o600)?;
        key
    };
    let csr = params.serialize_request(&key)?.pem()?;
    write_file(&out.join(REQUEST), &csr, 0o644)?;
    Ok(csr)
}

/// `keel cert sign`, on the CA host: a certificate for the request in
/// `csr`, written to `out/cert.pem` with a copy of `ca.pem` (and of the
/// CA's `crl.pem` if it has one). No key is written: it stays on the node.
pub fn sign(
    ca_dir: &Path,
    csr: &Path,
    out: &Path,
    validity: Validity,
) -> Result<Signed, CertError> {
    let ca = load_ca(ca_dir)?;
    let signed = ca.sign(&read_file(csr)?, validity)?;
    create_private_dir(out)?;
    write_file(&out.join(NODE_CERT), &signed.cert, 0o644)?;
    write_file(&out.join(CA_CERT), &ca.pem.cert, 0o644)?;
    copy_crl(ca_dir, out)?;
    Ok(signed)
}

/// The CA's current revocation list travels with every certificate it hands out.
fn copy_crl(ca_dir: &Path, out: &Path) -> Result<(), CertError> {
    let crl = ca_dir.join(CRL);
    if crl.exists() {
        write_file(&out.join(CRL), &read_file(&crl)?, 0o644)?;
    }
    Ok(())
}

fn create_private_dir(out: &Path) -> Result<(), CertError> {
    create_dir(out)?;
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
        CertError::Io {
            path: out.to_path_buf(),
            source,
        }
    })
}

/// Writes a process's credentials folder: `out` itself 0700, `cert.pem`
/// and `ca.pem` 0644, `key.pem` 0600 (set even on a file that existed
/// with a looser mode).
pub fn write_credentials(out: &Path, ca_cert: &str, pem: &Pem) -> Result<(), CertError> {
    create_private_dir(out)?;
    write_file(&out.join(NODE_CERT), &pem.cert, 0o644)?;
    write_file(&out.join(NODE_KEY), &pem.key, 0o600)?;
    write_file(&out.join(CA_CERT), ca_cert, 0o644)
}

/// Refuses a private key that group or others may read.
pub fn check_key_mode(path: &Path) -> Result<(), CertError> {
    let mode = std::fs::metadata(path)
        .map_err(|source| CertError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(CertError::KeyReadable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

pub(crate) fn read_file(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The mode is set at creation, so a key is never readable by others, not even briefly.
pub(crate) fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    // `mode` applies only when the file is created: set it on one that was there.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_and_issue_write_keys_0600_and_the_identity_is_in_the_cert() {
        let dir = std::env::temp_dir().join(format!("keel-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        init(&dir.join("ca")).unwrap();
        assert!(
            init(&dir.join("ca")).is_err(),
            "init never overwrites a CA key"
        );
        issue(
            &dir.join("ca"),
            Role::Executor,
            "node-9",
            &dir.join("n9"),
            Validity::days(1),
        )
        .unwrap();
        for key in [dir.join("ca").join(CA_KEY), dir.join("n9").join(NODE_KEY)] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        let pem = read_file(&dir.join("n9").join(NODE_CERT)).unwrap();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map(|c: rustls::pki_types::CertificateDer<'static>| c)
            .unwrap();
        assert_eq!(
            identity::from_cert_der(&der).unwrap(),
            (Role::Executor, "node-9".to_string())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_request_is_signed_for_its_identity_only_and_odd_requests_are_refused() {
        let ca = Ca::generate(Validity::days(1)).unwrap();
        let key = KeyPair::generate().unwrap();
        let csr = |sans: Vec<SanType>, is_ca: bool| {
            let mut p = CertificateParams::default();
            p.subject_alt_names = sans;
            if is_ca {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            }
            p.serialize_request(&key).unwrap().pem().unwrap()
        };
        let uri = |u: &str| SanType::URI(u.try_into().unwrap());
        let dns = |d: &str| SanType::DnsName(d.try_into().unwrap());
        // Asking to be a CA is not refused but not granted either.
        let ok = ca
            .sign(
                &csr(vec![uri("keel://sensor/n1"), dns("n1")], true),
                Validity::days(1),
            )
            .unwrap();
        assert_eq!((ok.role, ok.name.as_str()), (Role::Sensor, "n1"));
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(ok.cert.as_bytes())
            .map(|c: rustls::pki_types::CertificateDer<'static>| c)
            .unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(!parsed.is_ca());
        for (sans, why) in [
            (vec![dns("n1")], "no keel://"),
            (vec![uri("keel://root/n1"), dns("n1")], "unknown role"),
            (vec![uri("keel://sensor/N_1")], "name must be"),
            (vec![uri("keel://sensor/n1"), dns("n2")], "unexpected name"),
            (
                vec![uri("keel://sensor/n1"), uri("keel://admin/n1")],
                "more than one URI",
            ),
        ] {
            let err = ca.sign(&csr(sans, false), Validity::days(1)).unwrap_err();
            assert!(err.to_string().contains(why), "{err} lacks {why}");
        }
        assert!(ca.sign("not a request", Validity::days(1)).is_err());
    }

    #[test]
    fn names_outside_the_dns_alphabet_are_refused() {
        let ca = Ca::generate(Validity::days(1)).unwrap();
        assert!(ca
            .issue(Role::Sensor, "Bad Name", Validity::days(1))
            .is_err());
    }
}

#[cfg(test)]
mod mode_tests {
    use super::*;

    #[test]
    fn a_key_others_may_read_is_refused_and_rewriting_tightens_it() {
        let dir = std::env::temp_dir().join(format!("keel-keymode-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = Ca::generate(Validity::days(1)).unwrap();
        let pem = ca.issue(Role::Sensor, "n1", Validity::days(1)).unwrap();
        write_credentials(&dir, &ca.pem.cert, &pem).unwrap();
        let key = dir.join(NODE_KEY);
        assert!(check_key_mode(&key).is_ok());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = crate::Credentials::from_dir(&dir).unwrap_err().to_string();
        assert!(
            err.contains("readable by group or others (mode 644)"),
            "{err}"
        );
        // Written again over the loose file, the key is 0600 again.
        write_credentials(&dir, &ca.pem.cert, &pem).unwrap();
        assert!(check_key_mode(&key).is_ok());
        let d = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(d, 0o700);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
