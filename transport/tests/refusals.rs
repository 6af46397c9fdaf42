//! Every way a peer is turned away, on real endpoints: the refusal is counted
//! under its reason, logged with the peer and the reason, and, where the peer
//! can be told, its error names the reason too.

mod common;

use common::*;
use keel_model::{Action, Command, Message, Role};
use keel_transport::certs::{Ca, Validity};
use keel_transport::frame::{encode_envelope, HEADER_LEN, MAX_FRAME};
use keel_transport::{Client, Credentials, Options, RefusalReason};
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_as_no_cert() {
    let cluster = Cluster::new();
    let creds = Credentials {
        ca_pem: cluster.ca.pem.cert.clone(),
        own: None,
        crl_pem: None,
        dir: None,
    };
    refused_with(cluster, creds, RefusalReason::NoCert).await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_as_unknown_ca() {
    let cluster = Cluster::new();
    let other = Ca::generate(Validity::days(30)).unwrap();
    let creds = Credentials::new(
        cluster.ca.pem.cert.clone(),
        other
            .issue(Role::Controller, "ctl-2", Validity::days(1))
            .unwrap(),
    );
    refused_with(cluster, creds, RefusalReason::UnknownCa).await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused_as_expired() {
    let cluster = Cluster::new();
    let now = time::OffsetDateTime::now_utc();
    let v = Validity {
        not_before: now - time::Duration::days(10),
        not_after: now - time::Duration::days(1),
    };
    let creds = cluster.creds_valid(Role::Sensor, "s-old", v);
    refused_with(cluster, creds, RefusalReason::Expired).await;
}

async fn refused_with(cluster: Cluster, creds: Credentials, reason: RefusalReason) {
    let mut server = cluster.server(Role::Controller, "ctl-1", Options::default());
    let addr = server.local_addr().unwrap();
    let client = Client::new(&creds, Options::default()).unwrap();
    let err = match tokio::time::timeout(GUARD, client.connect(addr, "ctl-1")).await {
        Ok(Ok(_)) => panic!("a peer with a bad certificate was admitted"),
        Ok(Err(e)) => e,
        Err(_) => panic!("connect hung"),
    };
    eventually("the server to count the refusal", || {
        server.stats.refused_total() == 1
    })
    .await;
    assert_eq!(
        server.stats.refused(reason),
        1,
        "counted otherwise: {:?} / {err}",
        refusal_lines(&[])
    );
    let lines = refusal_lines(&[&format!("reason=\"{reason}\""), "127.0.0.1:"]);
    assert!(!lines.is_empty(), "no log line names {reason}");
    assert!(
        err.to_string().contains(reason.as_str()) || err.refusal() == Some(reason),
        "the client's error does not name {reason}: {err}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(50), server.accept())
            .await
            .is_err(),
        "nothing is admitted"
    );
}

#[tokio::test]
async fn a_sensor_sending_a_command_is_refused_as_wrong_role() {
    let cluster = Cluster::new();
    let mut server = cluster.server(Role::Executor, "exec-1", Options::default());
    let addr = server.local_addr().unwrap();
    let client = cluster.client(Role::Sensor, "s-7", Options::default());
    let (conn, _inbox) = client.connect(addr, "exec-1").await.unwrap();
    let (_server_conn, _server_inbox) = server.accept().await.unwrap();
    let cmd = Message::Command(Command {
        id: 1,
        action: Action::DrainNode,
        target: "node-3".into(),
        params: BTreeMap::new(),
        idempotency_key: "k1".into(),
        rollback: false,
    });
    let err = conn.request(cmd, GUARD).await.unwrap_err();
    assert_eq!(err.refusal(), Some(RefusalReason::WrongRole), "{err}");
    assert!(
        err.to_string().contains("sensor may not send command"),
        "{err}"
    );
    assert_eq!(server.stats.refused(RefusalReason::WrongRole), 1);
    let lines = refusal_lines(&["reason=\"wrong_role\"", "sensor/s-7@"]);
    assert!(
        !lines.is_empty(),
        "no log line names the sensor and wrong_role"
    );
}

/// Connect a sensor to a correlator and return the pieces.
async fn sensor_link(
    cluster: &Cluster,
) -> (
    keel_transport::Server,
    keel_transport::Connection,
    keel_transport::Inbox,
) {
    let mut server = cluster.server(Role::Correlator, "corr-1", Options::default());
    let addr = server.local_addr().unwrap();
    let client = cluster.client(Role::Sensor, "s-1", Options::default());
    let (conn, inbox) = client.connect(addr, "corr-1").await.unwrap();
    let _ = server.accept().await.unwrap();
    (server, conn, inbox)
}

#[tokio::test]
async fn an_oversize_frame_closes_its_stream_and_the_connection_lives_on() {
    let cluster = Cluster::new();
    let (server, conn, _inbox) = sensor_link(&cluster).await;
    let (mut send, mut recv) = conn.open_raw_bi().await.unwrap();
    send.write_all(&((MAX_FRAME as u32) + 1).to_be_bytes())
        .await
        .unwrap();
    let read = tokio::time::timeout(GUARD, recv.read_to_end(1024))
        .await
        .unwrap();
    assert!(read.is_err(), "the stream must be reset, got {read:?}");
    assert_eq!(server.stats.refused(RefusalReason::OversizeFrame), 1);
    let lines = refusal_lines(&["reason=\"oversize_frame\"", "sensor/s-1@"]);
    assert!(
        lines.iter().any(|l| l.contains("oversize frame")),
        "{lines:?}"
    );
    assert_eq!(
        conn.request(Message::Ping, GUARD).await.unwrap(),
        Message::Pong
    );
}

#[tokio::test]
async fn garbage_bytes_close_their_stream_and_the_connection_lives_on() {
    let cluster = Cluster::new();
    let (server, conn, _inbox) = sensor_link(&cluster).await;
    // A well-formed length and then bytes that are no MessagePack at all (0xc1
    // is never used), then an unknown message kind, then a truncated frame.
    let mut garbage = 16u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xc1; 16]);
    let mut unknown = Vec::new();
    {
        #[derive(serde::Serialize)]
        struct Env {
            version: u16,
            from: String,
            msg: std::collections::BTreeMap<String, u8>,
        }
        let payload = rmp_serde::to_vec_named(&Env {
            version: 9,
            from: "s-1".into(),
            msg: [("teleport".to_string(), 1)].into(),
        })
        .unwrap();
        unknown.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        unknown.extend_from_slice(&payload);
    }
    let truncated = [0, 0, 0, 200, 1, 2, 3];
    for (i, bytes) in [&garbage[..], &unknown[..], &truncated[..]]
        .iter()
        .enumerate()
    {
        let (mut send, mut recv) = conn.open_raw_bi().await.unwrap();
        send.write_all(bytes).await.unwrap();
        send.finish().unwrap();
        let read = tokio::time::timeout(GUARD, recv.read_to_end(1024))
            .await
            .unwrap();
        assert!(read.is_err(), "stream {i} must be reset, got {read:?}");
        assert_eq!(server.stats.refused(RefusalReason::BadFrame), i as u64 + 1);
    }
    assert!(!refusal_lines(&["reason=\"bad_frame\"", "undecodable"]).is_empty());
    assert!(!refusal_lines(&["reason=\"bad_frame\"", "teleport"]).is_empty());
    assert!(!refusal_lines(&["reason=\"bad_frame\"", "truncated"]).is_empty());
    assert_eq!(
        conn.request(Message::Ping, GUARD).await.unwrap(),
        Message::Pong
    );
    // A well-formed frame on the raw path still works, so only bad ones are refused.
    let ok = encode_envelope(&keel_model::Envelope::new("s-1", Message::Ping), MAX_FRAME).unwrap();
    let (mut send, mut recv) = conn.open_raw_bi().await.unwrap();
    send.write_all(&ok).await.unwrap();
    send.finish().unwrap();
    let reply = recv.read_to_end(1024).await.unwrap();
    let env = keel_transport::frame::decode_envelope(&reply[HEADER_LEN..]).unwrap();
    assert_eq!(env.msg, Message::Pong);
    assert_eq!(server.stats.refused_total(), 3);
}

/// A client that expects a controller refuses a server whose certificate
/// carries the expected name but another role (a sensor's key on a host
/// that claims to be `ctl-1`).
#[tokio::test]
async fn a_server_with_the_right_name_but_another_role_is_refused() {
    let cluster = Cluster::new();
    let server = cluster.server(Role::Sensor, "ctl-1", Options::default());
    let addr = server.local_addr().unwrap();
    let client = cluster
        .client(Role::Operator, "op", Options::default())
        .expecting(Role::Controller);
    let err = match tokio::time::timeout(GUARD, client.connect(addr, "ctl-1")).await {
        Ok(Ok(_)) => panic!("connected to a sensor posing as a controller"),
        Ok(Err(e)) => e.to_string(),
        Err(_) => panic!("connect hung"),
    };
    assert!(err.contains("says sensor, not controller"), "{err}");
    // Expecting its real role, the same server is reached.
    let ok = cluster
        .client(Role::Operator, "op", Options::default())
        .expecting(Role::Sensor);
    assert!(tokio::time::timeout(GUARD, ok.connect(addr, "ctl-1"))
        .await
        .unwrap()
        .is_ok());
}

#[tokio::test]
async fn one_certificate_holds_at_most_connections_per_peer() {
    use keel_transport::CONNECTIONS_PER_PEER;
    let cluster = Cluster::new();
    let mut server = cluster.server(Role::Controller, "ctl-1", Options::default());
    let addr = server.local_addr().unwrap();
    let client = cluster.client(Role::Sensor, "s-greedy", Options::default());
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS_PER_PEER {
        let c = client.connect(addr, "ctl-1").await.unwrap();
        held.push((c, server.accept().await.unwrap()));
    }
    // One more gets in; the identity's oldest connection is closed for it.
    let (newest, _inbox) = client.connect(addr, "ctl-1").await.unwrap();
    let _accepted = server.accept().await.unwrap();
    eventually("the oldest to be closed and counted", || {
        server.stats.refused(RefusalReason::TooManyConnections) == 1 && held[0].0 .0.is_closed()
    })
    .await;
    let err = held[0]
        .0
         .0
        .request(Message::Ping, GUARD)
        .await
        .expect_err("the oldest connection still served");
    assert!(
        err.to_string().contains("too_many_connections"),
        "the closed connection's error does not name the bound: {err}"
    );
    assert!(
        held[1..].iter().all(|h| !h.0 .0.is_closed()),
        "only the oldest goes"
    );
    newest.request(Message::Ping, GUARD).await.unwrap();
    // Another certificate is not affected by this one's bound.
    let other = cluster.client(Role::Sensor, "s-other", Options::default());
    let (o, _) = other.connect(addr, "ctl-1").await.unwrap();
    let _ = server.accept().await.unwrap();
    o.request(Message::Ping, GUARD).await.unwrap();
    assert_eq!(server.stats.refused(RefusalReason::TooManyConnections), 1);
}
