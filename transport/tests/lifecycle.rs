//! Certificates over their life, on real endpoints and real files: issued
//! from a request whose key never left the node, revoked (and refused in
//! both directions), and reloaded while a server runs.

mod common;

use common::*;
use keel_model::{Message, Role};
use keel_transport::certs::{self, Validity};
use keel_transport::{reload, revocation, Client, Credentials, Options, RefusalReason, Server};
use std::path::{Path, PathBuf};

struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        let dir = std::env::temp_dir().join(format!("keel-life-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        certs::init(&dir.join("ca")).unwrap();
        Tmp(dir)
    }

    fn ca(&self) -> PathBuf {
        self.0.join("ca")
    }

    fn issue(&self, role: Role, name: &str) -> PathBuf {
        let dir = self.0.join(name);
        certs::issue(&self.ca(), role, name, &dir, Validity::days(1)).unwrap();
        dir
    }

    fn revoke(&self, dir: &Path) {
        revocation::revoke(
            &self.ca(),
            &dir.join(certs::NODE_CERT),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
    }

    /// The CA's list, copied into a process's folder as an operator would.
    fn hand_crl_to(&self, dir: &Path) {
        std::fs::copy(self.ca().join(certs::CRL), dir.join(certs::CRL)).unwrap();
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn server(dir: &Path) -> Server {
    Server::bind(
        local(0),
        &Credentials::from_dir(dir).unwrap(),
        Options::default(),
    )
    .unwrap()
}

fn client(dir: &Path) -> Client {
    Client::new(&Credentials::from_dir(dir).unwrap(), Options::default()).unwrap()
}

#[tokio::test]
async fn a_certificate_signed_from_a_request_works_and_its_key_never_left_the_node() {
    logs();
    let tmp = Tmp::new("csr");
    let mut dirs = Vec::new();
    for (role, name) in [(Role::Controller, "ctl-1"), (Role::Sensor, "s-1")] {
        let node = tmp.0.join(name);
        let csr = certs::request(role, name, &node).unwrap();
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(!csr.contains("PRIVATE KEY"));
        // The CA host sees the request only, and writes no key.
        let signed_dir = tmp.0.join(format!("{name}-signed"));
        let signed = certs::sign(
            &tmp.ca(),
            &node.join(certs::REQUEST),
            &signed_dir,
            Validity::days(1),
        )
        .unwrap();
        assert_eq!((signed.role, signed.name.as_str()), (role, name));
        assert!(!signed_dir.join(certs::NODE_KEY).exists());
        for f in [certs::NODE_CERT, certs::CA_CERT] {
            std::fs::copy(signed_dir.join(f), node.join(f)).unwrap();
        }
        dirs.push(node);
    }
    let mut server = server(&dirs[0]);
    let addr = server.local_addr().unwrap();
    let (conn, _inbox) = client(&dirs[1]).connect(addr, "ctl-1").await.unwrap();
    let (seen, _) = server.accept().await.unwrap();
    assert_eq!(
        (seen.peer().role, seen.peer().name.as_str()),
        (Role::Sensor, "s-1")
    );
    assert_eq!(
        conn.request(Message::Ping, GUARD).await.unwrap(),
        Message::Pong
    );

    // Renewing keeps the key: a second request for the same folder is for
    // the same key, and the new certificate gets a serial of its own.
    let key_before = std::fs::read(dirs[1].join(certs::NODE_KEY)).unwrap();
    certs::request(Role::Sensor, "s-1", &dirs[1]).unwrap();
    assert_eq!(
        std::fs::read(dirs[1].join(certs::NODE_KEY)).unwrap(),
        key_before
    );
    let again = tmp.0.join("s-1-renewed");
    certs::sign(
        &tmp.ca(),
        &dirs[1].join(certs::REQUEST),
        &again,
        Validity::days(1),
    )
    .unwrap();
    assert_ne!(
        std::fs::read(again.join(certs::NODE_CERT)).unwrap(),
        std::fs::read(dirs[1].join(certs::NODE_CERT)).unwrap()
    );
}

#[tokio::test]
async fn a_revoked_client_is_refused_and_counted_as_revoked() {
    logs();
    let tmp = Tmp::new("revoked-client");
    let ctl = tmp.issue(Role::Controller, "ctl-1");
    let sensor = tmp.issue(Role::Sensor, "s-9");
    tmp.revoke(&sensor);
    tmp.hand_crl_to(&ctl);
    let mut server = server(&ctl);
    let addr = server.local_addr().unwrap();
    let err = match tokio::time::timeout(GUARD, client(&sensor).connect(addr, "ctl-1")).await {
        Ok(Ok(_)) => panic!("a revoked client was admitted"),
        Ok(Err(e)) => e,
        Err(_) => panic!("connect hung"),
    };
    eventually("the server to count the refusal", || {
        server.stats.refused_total() == 1
    })
    .await;
    assert_eq!(server.stats.refused(RefusalReason::Revoked), 1, "{err}");
    assert_eq!(err.refusal(), Some(RefusalReason::Revoked), "{err}");
    assert!(!refusal_lines(&["reason=\"revoked\""]).is_empty());
    // Another client of the same CA, not on the list, is admitted.
    let ok = tmp.issue(Role::Sensor, "s-10");
    client(&ok).connect(addr, "ctl-1").await.unwrap();
    assert!(server.accept().await.is_some());
}

#[tokio::test]
async fn a_client_refuses_a_revoked_server_and_counts_it() {
    logs();
    let tmp = Tmp::new("revoked-server");
    let ctl = tmp.issue(Role::Controller, "ctl-1");
    let op = tmp.issue(Role::Operator, "op");
    tmp.revoke(&ctl);
    tmp.hand_crl_to(&op);
    let server = server(&ctl);
    let addr = server.local_addr().unwrap();
    let client = client(&op);
    let err = match tokio::time::timeout(GUARD, client.connect(addr, "ctl-1")).await {
        Ok(Ok(_)) => panic!("connected to a revoked server"),
        Ok(Err(e)) => e,
        Err(_) => panic!("connect hung"),
    };
    assert_eq!(err.refusal(), Some(RefusalReason::Revoked), "{err}");
    assert_eq!(client.stats.refused(RefusalReason::Revoked), 1);
}

#[tokio::test]
async fn a_reloaded_server_refuses_a_client_revoked_after_it_started() {
    logs();
    let tmp = Tmp::new("reload");
    let ctl = tmp.issue(Role::Controller, "ctl-1");
    let sensor = tmp.issue(Role::Sensor, "s-3");
    let mut server = server(&ctl);
    let addr = server.local_addr().unwrap();
    let (before, _inbox) = client(&sensor).connect(addr, "ctl-1").await.unwrap();
    let _ = server.accept().await.unwrap();

    tmp.revoke(&sensor);
    tmp.hand_crl_to(&ctl);
    // Not yet read: the running server still admits the sensor.
    client(&sensor).connect(addr, "ctl-1").await.unwrap();
    let _ = server.accept().await.unwrap();

    let reloaded = reload::reload_dir(&ctl).unwrap();
    assert_eq!(reloaded.servers, 1);
    let Err(err) = client(&sensor).connect(addr, "ctl-1").await else {
        panic!("a revoked sensor was admitted after the reload");
    };
    assert_eq!(err.refusal(), Some(RefusalReason::Revoked), "{err}");
    eventually("the refusal to be counted", || {
        server.stats.refused(RefusalReason::Revoked) == 1
    })
    .await;
    // A connection made before the reload is left alone.
    assert_eq!(
        before.request(Message::Ping, GUARD).await.unwrap(),
        Message::Pong
    );

    // A folder whose certificate now names someone else is not taken.
    let other = tmp.issue(Role::Controller, "ctl-2");
    std::fs::copy(other.join(certs::NODE_CERT), ctl.join(certs::NODE_CERT)).unwrap();
    std::fs::copy(other.join(certs::NODE_KEY), ctl.join(certs::NODE_KEY)).unwrap();
    let err = reload::reload_dir(&ctl).unwrap_err().to_string();
    assert!(err.contains("restart to change identity"), "{err}");
    let fresh = tmp.issue(Role::Sensor, "s-4");
    client(&fresh).connect(addr, "ctl-1").await.unwrap();
}
