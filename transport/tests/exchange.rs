//! Authorised traffic on real endpoints: control both ways, telemetry, a peer
//! restart, and a telemetry flood that must neither grow memory nor hold up
//! control.

mod common;

use common::*;
use keel_model::{Ack, Action, Command, Message, Role};
use keel_transport::{Backoff, Link, Options, RefusalReason, Server};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn command(id: u64) -> Message {
    Message::Command(Command {
        id,
        action: Action::DrainNode,
        target: "node-3".into(),
        params: BTreeMap::new(),
        idempotency_key: format!("drain-node-3-{id}"),
        rollback: false,
    })
}

/// Answer every request with an ack of its id, in the order they come.
fn ack_all(mut inbox: keel_transport::Inbox) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(req) = inbox.requests.recv().await {
            let id = match &req.msg {
                Message::Command(c) => c.id,
                Message::Finding(f) => f.ts as u64,
                _ => 0,
            };
            seen.push(id);
            req.reply(Message::Ack(Ack {
                id,
                ok: true,
                detail: format!("from {}", "peer"),
            }))
            .await
            .unwrap();
        }
        seen
    })
}

#[tokio::test]
async fn control_flows_both_ways_in_order_and_identities_come_from_certificates() {
    let cluster = Cluster::new();
    // The executor dials the controller; the controller then commands it over
    // the same connection.
    let mut server = cluster.server(Role::Controller, "ctl-1", Options::default());
    let addr = server.local_addr().unwrap();
    let client = cluster.client(Role::Executor, "exec-1", Options::default());
    let (to_ctl, exec_inbox) = client.connect(addr, "ctl-1").await.unwrap();
    let (to_exec, _ctl_inbox) = server.accept().await.unwrap();
    assert_eq!(to_exec.peer().role, Role::Executor);
    assert_eq!(to_exec.peer().name, "exec-1");
    assert_eq!(to_ctl.peer().role, Role::Controller);
    assert_eq!(to_ctl.peer().name, "ctl-1");

    let executor = ack_all(exec_inbox);
    let sends = (1..=50).map(|id| {
        let c = to_exec.clone();
        async move { c.request(command(id), GUARD).await }
    });
    // Issued concurrently; the transport still hands them on in call order.
    let replies = futures_join_all(sends).await;
    for (i, r) in replies.into_iter().enumerate() {
        match r.unwrap() {
            Message::Ack(a) => assert_eq!(a.id, i as u64 + 1),
            other => panic!("expected an ack, got {other:?}"),
        }
    }
    assert_eq!(
        to_ctl.request(Message::Ping, GUARD).await.unwrap(),
        Message::Pong
    );
    to_exec.close_gracefully(GUARD).await;
    let seen = tokio::time::timeout(GUARD, executor)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, (1..=50).collect::<Vec<_>>());
    assert_eq!(server.stats.refused_total(), 0);
}

/// Poll a batch of futures to completion in the order given, started together.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_correlator_finding_is_acknowledged_by_the_controller() {
    let cluster = Cluster::new();
    let mut server = cluster.server(Role::Controller, "ctl-1", Options::default());
    let addr = server.local_addr().unwrap();
    let client = cluster.client(Role::Correlator, "corr-1", Options::default());
    let (conn, _inbox) = client.connect(addr, "ctl-1").await.unwrap();
    let (_c, ctl_inbox) = server.accept().await.unwrap();
    let _ctl = ack_all(ctl_inbox);
    let finding: keel_model::Finding = serde_json::from_str(
        r#"{"ts":7.0,"kind":"tp_straggler","cause":"network","severity":"warning","confidence":0.5}"#,
    )
    .unwrap_or_else(|e| panic!("finding fixture: {e}"));
    let reply = conn
        .request(Message::Finding(finding), GUARD)
        .await
        .unwrap();
    assert!(
        matches!(
            reply,
            Message::Ack(Ack {
                id: 7,
                ok: true,
                ..
            })
        ),
        "{reply:?}"
    );
}

#[tokio::test]
async fn telemetry_batches_arrive_whole_from_a_sensor() {
    let cluster = Cluster::new();
    let mut server = cluster.server(Role::Correlator, "corr-1", Options::default());
    let addr = server.local_addr().unwrap();
    let client = cluster.client(Role::Sensor, "s-1", Options::default());
    let (conn, _inbox) = client.connect(addr, "corr-1").await.unwrap();
    let (_c, mut inbox) = server.accept().await.unwrap();
    let n = 10_000u64;
    conn.telemetry().send_all((0..n).map(summary));
    let mut got = Vec::new();
    while (got.len() as u64) < n {
        let (peer, batch) = tokio::time::timeout(GUARD, inbox.telemetry.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(peer.name, "s-1");
        got.extend(batch.summaries);
    }
    assert_eq!(got, (0..n).map(summary).collect::<Vec<_>>());
    assert_eq!(client.stats.dropped(), 0);
}

#[tokio::test]
async fn a_link_comes_back_after_the_server_restarts_mid_stream() {
    let cluster = Cluster::new();
    let creds = cluster.creds(Role::Controller, "ctl-1");
    let mut server = Server::bind(local(0), &creds, Options::default()).unwrap();
    let addr = server.local_addr().unwrap();
    let client = cluster.client(Role::Executor, "exec-1", Options::default());
    let backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(200));
    let (link, _inbox) = Link::start(client, addr, "ctl-1", backoff);
    assert_eq!(
        link.request(Message::Ping, GUARD).await.unwrap(),
        Message::Pong
    );
    let first = tokio::time::timeout(GUARD, server.accept()).await.unwrap();
    server.shutdown(Duration::from_millis(200)).await;
    // The old socket is released once nothing holds the old connection.
    drop(first);

    // A request made while the server is down waits for it to come back.
    let pending = {
        let link = std::sync::Arc::new(link);
        let l = link.clone();
        (
            link,
            tokio::spawn(async move { l.request(Message::Ping, GUARD).await }),
        )
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = tokio::time::Instant::now();
    let mut server = loop {
        match Server::bind(addr, &creds, Options::default()) {
            Ok(s) => break s,
            Err(e) if start.elapsed() > GUARD => panic!("cannot bind {addr} again: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let (_c2, _i2) = tokio::time::timeout(GUARD, server.accept())
        .await
        .unwrap()
        .unwrap();
    let (link, pending) = pending;
    let reply = tokio::time::timeout(GUARD, pending).await.unwrap();
    assert_eq!(reply.unwrap().unwrap(), Message::Pong);
    assert_eq!(
        link.request(Message::Ping, GUARD).await.unwrap(),
        Message::Pong
    );
}

#[tokio::test]
async fn a_telemetry_flood_is_bounded_and_does_not_hold_up_control() {
    let cluster = Cluster::new();
    let opts = Options {
        telemetry_capacity: 20_000,
        inbox_capacity: 2,
        ..Options::default()
    };
    let mut server = cluster.server(Role::Correlator, "corr-1", opts.clone());
    let addr = server.local_addr().unwrap();
    let client = cluster.client(Role::Sensor, "s-1", opts.clone());
    let (conn, _inbox) = client.connect(addr, "corr-1").await.unwrap();
    // The correlator answers control but never reads telemetry: the worst case.
    let (_c, inbox) = server.accept().await.unwrap();
    let _unread_telemetry = inbox.telemetry;
    let flood = {
        let tx = conn.telemetry().clone();
        tokio::spawn(async move {
            let mut max_queued = 0;
            for round in 0..200u64 {
                tx.send_all((0..10_000).map(|i| summary(round * 10_000 + i)));
                max_queued = max_queued.max(tx.queued());
                tokio::task::yield_now().await;
            }
            max_queued
        })
    };
    for _ in 0..20 {
        let reply = tokio::time::timeout(GUARD, conn.request(Message::Ping, GUARD))
            .await
            .expect("a control request was held up behind telemetry");
        assert_eq!(reply.unwrap(), Message::Pong);
    }
    let max_queued = flood.await.unwrap();
    assert!(max_queued <= 20_000, "queue grew to {max_queued}");
    assert!(client.stats.dropped() > 0, "a flood this size must drop");
    let sent = client.stats.telemetry_sent.load(Ordering::Relaxed);
    let dropped = client.stats.dropped();
    assert!(sent + dropped <= 2_000_000);
    assert_eq!(server.stats.refused(RefusalReason::WrongRole), 0);
}

#[tokio::test]
async fn an_answer_larger_than_a_frame_arrives_as_a_refusal_saying_so() {
    let cluster = Cluster::new();
    let mut server = cluster.server(Role::Controller, "ctl-1", Options::default());
    let addr = server.local_addr().unwrap();
    let client = cluster.client(Role::Operator, "op", Options::default());
    let (conn, _inbox) = client.connect(addr, "ctl-1").await.unwrap();
    let (_to_op, mut inbox) = server.accept().await.unwrap();
    let answered = tokio::spawn(async move {
        let req = inbox.requests.recv().await.unwrap();
        let body = "x".repeat(keel_transport::frame::MAX_FRAME + 1);
        req.reply(Message::QueryReply(keel_model::QueryReply {
            id: 7,
            ok: true,
            body,
        }))
        .await
    });
    let ask = Message::Query(keel_model::Query {
        id: 7,
        topic: "status".into(),
        params: BTreeMap::new(),
    });
    let reply = conn.request(ask, Duration::from_secs(5)).await.unwrap();
    match reply {
        Message::QueryReply(r) => {
            assert_eq!(r.id, 7);
            assert!(!r.ok);
            assert!(r.body.contains("answer too large"), "{}", r.body);
        }
        other => panic!("answered with {other:?}"),
    }
    assert!(
        answered.await.unwrap().is_err(),
        "the answerer learns it failed"
    );
}
