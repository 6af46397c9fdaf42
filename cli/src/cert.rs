//! `keel cert`: the cluster's certificates over their life. `init` makes
//! the CA; `issue` makes a key and certificate in one place (tests, small
//! clusters); `request` on the node and `sign` on the CA host do the same
//! without the key ever leaving the node; `revoke` adds a certificate to the
//! CA's revocation list, which processes read at start and on SIGHUP.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use keel_model::Role;
use keel_transport::certs::{self, Validity};
use keel_transport::expiry::OffsetDateTime;
use keel_transport::revocation;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum CertCommand {
    /// Create a cluster CA: DIR/ca.pem and DIR/ca.key (mode 0600)
    Init {
        /// Folder to write the CA into (created if missing)
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a process certificate whose identity is keel://ROLE/NAME:
    /// DIR/cert.pem, DIR/key.pem (mode 0600) and a copy of DIR/ca.pem
    /// (and of the CA's crl.pem, if it has one)
    Issue {
        /// The folder `keel cert init` wrote
        #[arg(long)]
        ca: PathBuf,
        /// sensor, correlator, controller, executor; for people and scripts:
        /// viewer (reads), approver (approve/reject/cancel, pause/resume),
        /// admin (policy, membership, any command), scheduler (job
        /// register/end: the Slurm prolog and epilog), or operator (all of
        /// those four)
        #[arg(long)]
        role: String,
        /// The process's name, also its DNS name in the certificate (e.g. node-17)
        #[arg(long)]
        name: String,
        /// Folder to write the certificate into (created if missing)
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate stays valid
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// On the node: a key in DIR/key.pem (mode 0600; an existing one is
    /// kept, to renew) and a request for keel://ROLE/NAME in DIR/request.csr
    /// to take to the CA host. The key is never printed nor copied.
    Request {
        /// A role, as for `keel cert issue`
        #[arg(long)]
        role: String,
        /// The process's name, also its DNS name in the certificate
        #[arg(long)]
        name: String,
        /// The process's credentials folder (created 0700 if missing)
        #[arg(long)]
        out: PathBuf,
    },
    /// On the CA host: sign a request from `keel cert request` into
    /// DIR/cert.pem, with copies of ca.pem (and crl.pem); no key is written.
    /// Copy those files into the node's credentials folder.
    Sign {
        /// The folder `keel cert init` wrote
        #[arg(long)]
        ca: PathBuf,
        /// The request (request.csr)
        #[arg(long)]
        csr: PathBuf,
        /// Folder to write the certificate into (created if missing)
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate stays valid
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// On the CA host: add a certificate to CA/crl.pem and sign the list
    /// again. Copy crl.pem into every process's credentials folder and send
    /// the processes SIGHUP: they refuse that certificate from then on.
    Revoke {
        /// The folder `keel cert init` wrote
        #[arg(long)]
        ca: PathBuf,
        /// The certificate to revoke (a cert.pem)
        #[arg(long)]
        cert: PathBuf,
    },
}

fn role(wire: &str) -> Result<Role> {
    match Role::from_wire(wire) {
        Some(r) => Ok(r),
        None => bail!("unknown role {wire:?}: sensor, correlator, controller, executor, viewer, approver, admin, scheduler or operator"),
    }
}

pub fn run(command: CertCommand) -> Result<()> {
    match command {
        CertCommand::Init { out } => {
            certs::init(&out).with_context(|| format!("keel cert init --out {}", out.display()))?;
            eprintln!("{}: cluster CA written", out.display());
        }
        CertCommand::Issue {
            ca,
            role: wire,
            name,
            out,
            days,
        } => {
            certs::issue(&ca, role(&wire)?, &name, &out, Validity::days(days))
                .with_context(|| format!("keel cert issue --role {wire} --name {name}"))?;
            eprintln!(
                "{}: certificate for keel://{wire}/{name}, valid {days} days",
                out.display()
            );
        }
        CertCommand::Request {
            role: wire,
            name,
            out,
        } => {
            certs::request(role(&wire)?, &name, &out)
                .with_context(|| format!("keel cert request --role {wire} --name {name}"))?;
            eprintln!(
                "{}: request for keel://{wire}/{name}; take it to the CA host \
                 (`keel cert sign --csr ...`); the key stays here",
                out.join(certs::REQUEST).display()
            );
        }
        CertCommand::Sign { ca, csr, out, days } => {
            let signed = certs::sign(&ca, &csr, &out, Validity::days(days))
                .with_context(|| format!("keel cert sign --csr {}", csr.display()))?;
            eprintln!(
                "{}: certificate for keel://{}/{}, valid {days} days",
                out.display(),
                signed.role,
                signed.name
            );
        }
        CertCommand::Revoke { ca, cert } => {
            let r = revocation::revoke(&ca, &cert, OffsetDateTime::now_utc())
                .with_context(|| format!("keel cert revoke --cert {}", cert.display()))?;
            eprintln!(
                "{}: serial {} {}; {} certificate(s) listed; copy it to every \
                 credentials folder and send SIGHUP",
                ca.join(certs::CRL).display(),
                r.serial,
                if r.already {
                    "was already revoked"
                } else {
                    "revoked"
                },
                r.listed
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_transport::Credentials;

    /// The operator's path, command by command: init on the CA host,
    /// request on the node, sign on the CA host, files copied back, then
    /// revoke; the node's folder loads as credentials with and without the
    /// list, and a request for an unknown role is refused.
    #[test]
    fn request_sign_and_revoke_as_an_operator_runs_them() {
        let tmp = tempfile::tempdir().unwrap();
        let (ca, node, signed) = (
            tmp.path().join("ca"),
            tmp.path().join("node"),
            tmp.path().join("signed"),
        );
        run(CertCommand::Init { out: ca.clone() }).unwrap();
        run(CertCommand::Request {
            role: "sensor".into(),
            name: "node-17".into(),
            out: node.clone(),
        })
        .unwrap();
        run(CertCommand::Sign {
            ca: ca.clone(),
            csr: node.join(certs::REQUEST),
            out: signed.clone(),
            days: 30,
        })
        .unwrap();
        assert!(!signed.join(certs::NODE_KEY).exists());
        for f in [certs::NODE_CERT, certs::CA_CERT] {
            std::fs::copy(signed.join(f), node.join(f)).unwrap();
        }
        let creds = Credentials::from_dir(&node).unwrap();
        assert!(creds.crl_pem.is_none());
        let days = creds.expiry().unwrap().days_left(OffsetDateTime::now_utc());
        assert_eq!(days, 29);

        run(CertCommand::Revoke {
            ca: ca.clone(),
            cert: node.join(certs::NODE_CERT),
        })
        .unwrap();
        std::fs::copy(ca.join(certs::CRL), node.join(certs::CRL)).unwrap();
        assert!(Credentials::from_dir(&node).unwrap().crl_pem.is_some());

        let err = run(CertCommand::Request {
            role: "root".into(),
            name: "x".into(),
            out: tmp.path().join("x"),
        })
        .unwrap_err();
        assert!(err.to_string().contains("unknown role"), "{err}");
    }
}
