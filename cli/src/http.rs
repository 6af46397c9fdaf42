//! A role process's HTTP port (`--http ADDR`): `/metrics` in Prometheus's
//! text format (through `prometheus-client`), `/healthz` (the process is
//! up and its actor answers) and `/readyz` (it can do its work: see each
//! role's probe). Served by `axum`; off unless asked for.
//!
//! The metrics are read from the role's own counters at each scrape (the
//! actors keep them; nothing is counted twice), so a scrape costs one
//! message to the actor.

use anyhow::{Context, Result};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

static ADDR: OnceLock<SocketAddr> = OnceLock::new();

/// `--http ADDR` (or `KEEL_HTTP`): where role processes serve their port.
pub fn set_addr(addr: SocketAddr) {
    let _ = ADDR.set(addr);
}

/// One reading: the metric's name (after `keel_`), its help, and value. A
/// name ending in `_total` is a counter (monotonic since the process
/// started), any other a gauge.
pub type Reading = (&'static str, &'static str, f64);

/// A gauge with labels: its name (after `keel_`), help, and each series'
/// labels and value.
pub struct Labeled {
    pub name: &'static str,
    pub help: &'static str,
    pub series: Vec<(Vec<(String, String)>, f64)>,
}

/// What one scrape reads from a role's actor.
#[derive(Default)]
pub struct Readings {
    pub plain: Vec<Reading>,
    pub labeled: Vec<Labeled>,
}

impl From<Vec<Reading>> for Readings {
    fn from(plain: Vec<Reading>) -> Self {
        Readings {
            plain,
            labeled: Vec::new(),
        }
    }
}

impl Readings {
    /// The value of plain reading `name` (None: not read).
    pub fn get(&self, name: &str) -> Option<f64> {
        self.plain.iter().find(|r| r.0 == name).map(|r| r.2)
    }
}

/// Reads a role's counters (None: the actor did not answer).
pub type Read =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Option<Readings>> + Send>> + Send + Sync>;
/// Whether a role is ready, from its readings (Err says why not).
pub type Ready = Box<dyn Fn(&Readings) -> Result<(), String> + Send + Sync>;
/// Registers metrics the role keeps itself (histograms, counters by
/// label, updated as things happen) into each scrape's registry.
pub type Kept = Box<dyn Fn(&mut Registry) + Send + Sync>;

/// What a role answers: its readings, and whether it is ready.
pub struct Probe {
    pub read: Read,
    pub ready: Ready,
    pub kept: Option<Kept>,
}

/// Serves `probe` on the address `--http` gave, if any; the task runs until
/// the process ends.
pub async fn serve(role: &'static str, probe: Probe) -> Result<()> {
    serve_with(role, probe, None).await
}

/// [`serve`], with the dashboard's routes (`crate::dashboard`) on the same
/// port when given.
pub async fn serve_with(
    role: &'static str,
    probe: Probe,
    dashboard: Option<axum::Router>,
) -> Result<()> {
    match ADDR.get().copied() {
        Some(addr) => serve_on(addr, role, probe, dashboard).await,
        None => Ok(()),
    }
}

/// [`serve_with`] on `addr`.
pub async fn serve_on(
    addr: SocketAddr,
    role: &'static str,
    probe: Probe,
    dashboard: Option<axum::Router>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--http {addr}"))?;
    let page = if dashboard.is_some() {
        "the dashboard (/), "
    } else {
        ""
    };
    eprintln!("keel {role}: {page}/metrics, /healthz and /readyz on http://{addr}");
    let probe = Arc::new(probe);
    let (m, h, r) = (probe.clone(), probe.clone(), probe);
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| {
                let p = m.clone();
                async move {
                    // OpenMetrics to who asks for it (Prometheus does), the
                    // classic text format to everyone else (promtool, curl).
                    let open = headers
                        .get(header::ACCEPT)
                        .and_then(|a| a.to_str().ok())
                        .is_some_and(|a| a.contains("application/openmetrics-text"));
                    match (p.read)().await {
                        Some(readings) => {
                            let text = exposition(role, &readings, p.kept.as_ref());
                            if open {
                                (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], text)
                                    .into_response()
                            } else {
                                (
                                    StatusCode::OK,
                                    [(header::CONTENT_TYPE, TEXT_004)],
                                    classic(&text),
                                )
                                    .into_response()
                            }
                        }
                        None => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the actor does not answer\n",
                        )
                            .into_response(),
                    }
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let p = h.clone();
                async move {
                    match (p.read)().await {
                        Some(_) => (StatusCode::OK, "ok\n".to_string()),
                        None => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the actor does not answer\n".into(),
                        ),
                    }
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let p = r.clone();
                async move {
                    match (p.read)().await {
                        None => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the actor does not answer\n".to_string(),
                        ),
                        Some(readings) => match (p.ready)(&readings) {
                            Ok(()) => (StatusCode::OK, "ready\n".into()),
                            Err(why) => (
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!("not ready: {why}\n"),
                            ),
                        },
                    }
                }
            }),
        );
    let app = match dashboard {
        Some(d) => app.merge(d),
        None => app,
    };
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the HTTP port stopped");
        }
    });
    Ok(())
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An OpenMetrics exposition (what `prometheus-client` writes) in
/// Prometheus's classic text format 0.0.4: a counter's `# HELP` and `# TYPE`
/// name its samples' name (with `_total`), and OpenMetrics' own lines
/// (`# UNIT`, `# EOF`, `_created` samples) go.
pub fn classic(open: &str) -> String {
    let mut counters: Vec<&str> = Vec::new();
    for l in open.lines() {
        if let Some(name) = l
            .strip_prefix("# TYPE ")
            .and_then(|r| r.strip_suffix(" counter"))
        {
            counters.push(name);
        }
    }
    let mut out = String::with_capacity(open.len());
    for l in open.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|p| l.strip_prefix(p).map(|rest| (*p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(&name) {
                    out.push_str(&format!("{p}{name}_total {tail}"));
                } else {
                    out.push_str(l);
                }
            }
            None => {
                let name = l.split(['{', ' ']).next().unwrap_or("");
                if counters
                    .iter()
                    .any(|c| name.strip_prefix(c) == Some("_created"))
                {
                    continue;
                }
                out.push_str(l);
            }
        }
        out.push('\n');
    }
    out
}

/// The readings in Prometheus's text format, each `keel_NAME` with the
/// label `role`: a counter where the name ends in `_total`, else a gauge;
/// then the labeled gauges and what the role keeps itself.
pub fn exposition(role: &str, readings: &Readings, kept: Option<&Kept>) -> String {
    let mut registry = Registry::with_prefix_and_labels(
        "keel",
        [(
            std::borrow::Cow::Borrowed("role"),
            std::borrow::Cow::Owned(role.to_string()),
        )]
        .into_iter(),
    );
    for (name, help, value) in &readings.plain {
        match name.strip_suffix("_total") {
            // The encoder adds `_total` back.
            Some(base) => registry.register(base, *help, ConstCounter::new(value.max(0.0))),
            None => {
                let g = Gauge::<f64, AtomicU64>::default();
                g.set(*value);
                registry.register(*name, *help, g);
            }
        }
    }
    for l in &readings.labeled {
        let fam = Family::<Vec<(String, String)>, Gauge<f64, AtomicU64>>::default();
        for (labels, v) in &l.series {
            fam.get_or_create(labels).set(*v);
        }
        registry.register(l.name, l.help, fam);
    }
    if let Some(k) = kept {
        k(&mut registry);
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_openmetrics_counter_reads_as_a_classic_one() {
        let r = Readings::from(vec![
            ("sent_total", "things sent", 3.0),
            ("queue", "things waiting", 2.0),
        ]);
        let open = exposition("sensor", &r, None);
        assert!(open.contains("# TYPE keel_sent counter"), "{open}");
        assert!(open.trim_end().ends_with("# EOF"), "{open}");
        let text = classic(&open);
        assert!(
            text.contains("# HELP keel_sent_total things sent."),
            "{text}"
        );
        assert!(text.contains("# TYPE keel_sent_total counter"), "{text}");
        assert!(
            text.contains("keel_sent_total{role=\"sensor\"} 3"),
            "{text}"
        );
        assert!(text.contains("# TYPE keel_queue gauge"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }
}
