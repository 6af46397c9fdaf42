//! The controller's dashboard, on its HTTP port (`--http ADDR`) beside
//! `/metrics`: `GET /` is one self-contained page (`dashboard.html`: plain
//! JS and CSS, nothing fetched from elsewhere) that polls the JSON below
//! every second and redraws without a reload.
//!
//! - `/api/findings`, `/api/actions`, `/api/jobs`, `/api/status`: the bodies
//!   `keel findings`, `keel actions --json`, `keel jobs` and `keel status`
//!   print, read from the replica's actor in this process (page by page, as
//!   those commands do over QUIC), never over the network;
//! - `/api/roles`: the roles this replica knows alive: the correlator hosts
//!   that greet it and the executors connected to it, with their actions.
//!
//! Read-only: nothing here proposes or changes anything. Unauthenticated,
//! like `/metrics`: bind it to loopback or a management interface. A
//! request must name the port by IP address or `localhost` (`host_ok`).

use crate::http::Probe;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keel_actors::controller::pages::{self, PAGE_ITEMS};
use keel_actors::controller::{Applied, ControllerMsg, ControllerState};
use keel_actors::ractor::ActorRef;
use keel_model::Query;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};

/// The page, embedded in the binary.
const PAGE: &str = include_str!("dashboard.html");

/// How long one question to the actor may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// The page's own rules: its inline script and style, and fetches to this
/// port; nothing from elsewhere, and no framing by another site.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'";

/// The replicas a dashboard reads, in order: the first that answers. A
/// controller process has its own; the demo has its three, so that its
/// page lives on after the replica it shows is killed.
type Replicas = Arc<Vec<ActorRef<ControllerMsg>>>;

#[derive(Clone, Copy)]
enum Topic {
    Findings,
    Actions,
    Jobs,
    Status,
    Roles,
}

/// The page and its JSON, over `replicas`.
pub fn router(replicas: Vec<ActorRef<ControllerMsg>>) -> axum::Router {
    let replicas: Replicas = Arc::new(replicas);
    let api = |topic: Topic| {
        let r = replicas.clone();
        get(move |headers: HeaderMap| answer(r.clone(), topic, headers))
    };
    axum::Router::new()
        .route("/", get(page))
        .route("/api/findings", api(Topic::Findings))
        .route("/api/actions", api(Topic::Actions))
        .route("/api/jobs", api(Topic::Jobs))
        .route("/api/status", api(Topic::Status))
        .route("/api/roles", api(Topic::Roles))
}

/// Whether a request names this port by an IP address or `localhost` (or
/// names nothing: not a browser). A hostname is refused: a hostile page
/// whose name was pointed at this port (DNS rebinding) could otherwise read
/// it from an operator's browser.
fn host_ok(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.parse::<std::net::IpAddr>().is_ok() || name.eq_ignore_ascii_case("localhost")
}

fn refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        "the dashboard answers requests for an IP address or localhost only \
         (a hostname could be a rebound one)\n",
    )
        .into_response()
}

async fn page(headers: HeaderMap) -> Response {
    if !host_ok(&headers) {
        return refused();
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
        .into_response()
}

async fn answer(replicas: Replicas, topic: Topic, headers: HeaderMap) -> Response {
    if !host_ok(&headers) {
        return refused();
    }
    for r in replicas.iter() {
        let got = match topic {
            Topic::Findings => findings(r).await,
            Topic::Actions => actions(r).await,
            Topic::Jobs => jobs(r).await,
            Topic::Status => status(r).await,
            Topic::Roles => roles(r).await,
        };
        if let Some(v) = got {
            return (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CACHE_CONTROL, "no-store"),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                v.to_string(),
            )
                .into_response();
        }
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the controller's actor does not answer\n",
    )
        .into_response()
}

/// Runs `f` on the replica's state, inside its actor.
async fn read<T: Send + 'static>(
    a: &ActorRef<ControllerMsg>,
    f: impl FnOnce(&mut ControllerState) -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    a.cast(ControllerMsg::Read(Box::new(move |s| {
        let _ = tx.send(f(s));
    })))
    .ok()?;
    tokio::time::timeout(ASK_TIMEOUT, rx).await.ok()?.ok()
}

/// Every page of a paged list (`items`, `next`), one question a page, so
/// that the actor is never held for the whole list.
async fn all_pages(
    a: &ActorRef<ControllerMsg>,
    page: fn(&ControllerState, usize) -> String,
) -> Option<Value> {
    let mut items = Vec::new();
    let mut offset = 0;
    loop {
        let body = read(a, move |s| page(s, offset)).await?;
        let mut v: Value = serde_json::from_str(&body).ok()?;
        let got = v["items"].as_array_mut().map(std::mem::take);
        items.extend(got.into_iter().flatten());
        match v["next"].as_u64() {
            Some(n) => offset = n as usize,
            None => return Some(Value::Array(items)),
        }
    }
}

/// `keel findings`: every committed finding, open and closed.
async fn findings(a: &ActorRef<ControllerMsg>) -> Option<Value> {
    all_pages(a, |s, offset| pages::findings(s, offset, PAGE_ITEMS)).await
}

/// `keel jobs`: every job record.
async fn jobs(a: &ActorRef<ControllerMsg>) -> Option<Value> {
    all_pages(a, |s, offset| pages::jobs(s, None, offset, PAGE_ITEMS)).await
}

/// `keel status`: this replica's view.
async fn status(a: &ActorRef<ControllerMsg>) -> Option<Value> {
    let (tx, rx) = oneshot::channel();
    a.cast(ControllerMsg::Status(tx, false)).ok()?;
    let body = tokio::time::timeout(ASK_TIMEOUT, rx).await.ok()?.ok()?;
    serde_json::from_str(&body).ok()
}

/// `keel actions --json`: the whole ledger and audit trail, read a page of
/// each at a time (a list read whole is asked from its end: nothing comes).
async fn actions(a: &ActorRef<ControllerMsg>) -> Option<Value> {
    let (mut ledger, mut audit) = (Vec::new(), Vec::new());
    let (mut ledger_at, mut audit_at) = (Some(0u64), Some(0u64));
    let mut last = Value::Null;
    while ledger_at.is_some() || audit_at.is_some() {
        let q = Query {
            id: 0,
            topic: "actions".into(),
            params: BTreeMap::from([
                (
                    "offset".to_string(),
                    ledger_at.unwrap_or(ledger.len() as u64).to_string(),
                ),
                (
                    "audit_offset".to_string(),
                    audit_at.unwrap_or(audit.len() as u64).to_string(),
                ),
            ]),
        };
        let body = read(a, move |s| pages::actions(s, &q)).await?.ok()?;
        let page: Value = serde_json::from_str(&body).ok()?;
        if ledger_at.is_some() {
            ledger.extend(page["ledger"].as_array().into_iter().flatten().cloned());
            ledger_at = page["next"].as_u64();
        }
        if audit_at.is_some() {
            audit.extend(page["audit"].as_array().into_iter().flatten().cloned());
            audit_at = page["audit_next"].as_u64();
        }
        last = page;
    }
    Some(json!({
        "ledger": ledger,
        "audit": audit,
        "audit_dropped": last["audit_dropped"],
        "executors": last["executors"],
    }))
}

/// The roles this replica knows alive: correlator hosts (their greetings,
/// within the routing index's expiry) and executors (connected, with the
/// actions they carry out).
async fn roles(a: &ActorRef<ControllerMsg>) -> Option<Value> {
    read(a, |s| {
        s.routing.index.expire(keel_actors::sources::unix_now());
        let hosts: Vec<String> = s.routing.index.hosts().map(String::from).collect();
        json!({
            "replica": s.cfg.id,
            "correlators": hosts,
            "executors": s.steward.executors(),
        })
    })
    .await
}

/// One probe over several replicas' probes: the first that answers (the
/// demo's port outlives the replica it started on); the metrics each keeps
/// itself come from the one that answered last.
fn first_answering(probes: Vec<Probe>) -> Probe {
    let probes = Arc::new(probes);
    let answered = Arc::new(AtomicUsize::new(0));
    let (p, q, k) = (probes.clone(), probes.clone(), probes);
    let (a, b) = (answered.clone(), answered);
    Probe {
        read: Box::new(move || {
            let (p, a) = (p.clone(), a.clone());
            Box::pin(async move {
                for (i, probe) in p.iter().enumerate() {
                    if let Some(r) = (probe.read)().await {
                        a.store(i, Ordering::Relaxed);
                        return Some(r);
                    }
                }
                None
            })
        }),
        ready: Box::new(move |r| match q.first() {
            Some(probe) => (probe.ready)(r),
            None => Err("no replica".into()),
        }),
        kept: Some(Box::new(move |registry| {
            if let Some(kept) = k
                .get(b.load(Ordering::Relaxed))
                .and_then(|p| p.kept.as_ref())
            {
                kept(registry);
            }
        })),
    }
}

/// `keel demo`: the dashboard, `/metrics`, `/healthz` and `/readyz` of the
/// first replica (of the next one alive once it is killed) on `addr`. A
/// port that cannot be bound is said, and the demo goes on without it.
pub async fn serve_demo(
    addr: SocketAddr,
    replicas: Vec<(ActorRef<ControllerMsg>, broadcast::Sender<Applied>)>,
) {
    let probe = first_answering(
        replicas
            .iter()
            .map(|(a, applied)| crate::probes::controller_probe(a.clone(), applied))
            .collect(),
    );
    let actors = replicas.into_iter().map(|(a, _)| a).collect();
    match crate::http::serve_on(addr, "controller", probe, Some(router(actors))).await {
        Ok(()) => println!("dashboard, /metrics, /healthz, /readyz: http://{addr}/"),
        Err(e) => println!(
            "dashboard: not served: {e:#} (is the port taken? `keel demo --http ADDR` picks another); \
             the demo goes on without it"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_host(host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        h
    }

    #[test]
    fn only_addresses_and_localhost_are_answered() {
        for ok in [
            "127.0.0.1:7480",
            "127.0.0.1",
            "10.1.2.3:80",
            "[::1]:7480",
            "[fe80::1]",
            "localhost:7480",
            "LOCALHOST",
        ] {
            assert!(host_ok(&with_host(ok)), "{ok}");
        }
        for refused in [
            "evil.example.com",
            "evil.example.com:7480",
            "127.0.0.1.nip.io:7480",
            "localhost.evil.example",
            "",
        ] {
            assert!(!host_ok(&with_host(refused)), "{refused}");
        }
        assert!(host_ok(&HeaderMap::new()));
    }
}
