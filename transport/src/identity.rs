//! Who a peer is, read from its certificate: the SAN URI `keel://ROLE/NAME`.
//! Only a certificate that rustls has already verified against the cluster CA
//! is asked, so what this returns is what the CA vouched for.

use keel_model::Role;
use std::fmt;
use std::net::SocketAddr;
use thiserror::Error;

/// The URI scheme of keel identities.
pub const SCHEME: &str = "keel://";

/// A verified peer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    pub role: Role,
    pub name: String,
    pub addr: SocketAddr,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.role, self.name, self.addr)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdentityError {
    #[error("certificate does not parse: {0}")]
    Parse(String),
    #[error("certificate carries no keel:// URI")]
    Missing,
    #[error("certificate carries more than one keel:// URI")]
    Ambiguous,
    #[error("bad keel identity {uri:?}: {why}")]
    Bad { uri: String, why: &'static str },
}

/// Parse `keel://ROLE/NAME`.
pub fn parse_uri(uri: &str) -> Result<(Role, String), IdentityError> {
    let bad = |why| IdentityError::Bad {
        uri: uri.to_string(),
        why,
    };
    let rest = uri.strip_prefix(SCHEME).ok_or_else(|| bad("not keel://"))?;
    let (role, name) = rest.split_once('/').ok_or_else(|| bad("no /NAME"))?;
    let role = Role::from_wire(role).ok_or_else(|| bad("unknown role"))?;
    check_name(name).map_err(bad)?;
    Ok((role, name.to_string()))
}

/// Names are DNS names too (the certificate's DNS SAN), so they use its alphabet.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("name must be 1 to 253 characters");
    }
    let ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    });
    if ok {
        Ok(())
    } else {
        Err("name must be lower-case letters, digits, '-' and '.' (a DNS name)")
    }
}

pub fn uri(role: Role, name: &str) -> String {
    format!("{SCHEME}{role}/{name}")
}

/// The role and name in a DER certificate's `keel://` SAN URI.
pub fn from_cert_der(der: &[u8]) -> Result<(Role, String), IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Parse(e.to_string()))?
        .ok_or(IdentityError::Missing)?;
    let mut found = None;
    for gn in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(u) = gn {
            if u.starts_with(SCHEME) {
                if found.is_some() {
                    return Err(IdentityError::Ambiguous);
                }
                found = Some(parse_uri(u)?);
            }
        }
    }
    found.ok_or(IdentityError::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_and_refuse_what_they_should() {
        assert_eq!(
            parse_uri("keel://sensor/node-17").unwrap(),
            (Role::Sensor, "node-17".to_string())
        );
        assert!(parse_uri("keel://root/x").is_err());
        assert_eq!(
            parse_uri("keel://admin/ops").unwrap(),
            (Role::Admin, "ops".to_string())
        );
        assert!(parse_uri("https://sensor/x").is_err());
        assert!(parse_uri("keel://sensor/").is_err());
        assert!(parse_uri("keel://sensor/a/b").is_err());
        assert!(parse_uri("keel://sensor/Node_1").is_err());
    }
}
