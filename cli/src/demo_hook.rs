//! The demo's router where no `haproxy` is installed: an HTTP endpoint on
//! loopback that records every command keel's webhook executor posts to it
//! (`remap_requests`, as a router behind a webhook would get it), so the
//! demo's loop still closes through a real executor, a real HTTP request
//! and the ledger. It moves no traffic; the demo says so.

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// The most commands kept; later ones are counted in `Told::dropped`.
pub const TOLD_MAX: usize = 256;
/// The largest body accepted (bytes); the executor's are a few hundred.
pub const BODY_MAX: usize = 64 * 1024;

/// What the endpoint was told.
#[derive(Debug, Default)]
pub struct Told {
    /// Each command's JSON body, in arrival order.
    pub commands: Vec<Value>,
    /// Commands past `TOLD_MAX`, or bodies that were not JSON.
    pub dropped: u64,
}

/// A running receiver.
pub struct Receiver {
    /// `http://127.0.0.1:PORT/router`, for `[webhook] url`.
    pub url: String,
    pub told: Arc<Mutex<Told>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the receiver on a free loopback port.
pub async fn start() -> Result<Receiver> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the demo's webhook receiver on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    let told = Arc::new(Mutex::new(Told::default()));
    let app = axum::Router::new()
        .route("/router", axum::routing::post(record))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_MAX))
        .with_state(told.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Receiver {
        url: format!("http://{addr}/router"),
        told,
        task,
    })
}

async fn record(State(told): State<Arc<Mutex<Told>>>, body: Bytes) -> (StatusCode, &'static str) {
    let Ok(mut t) = told.lock() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "unavailable\n");
    };
    match serde_json::from_slice::<Value>(&body) {
        Ok(v) if t.commands.len() < TOLD_MAX => {
            t.commands.push(v);
            (StatusCode::OK, "recorded\n")
        }
        Ok(_) => {
            t.dropped += 1;
            (StatusCode::OK, "recorded (count only)\n")
        }
        Err(_) => {
            t.dropped += 1;
            (StatusCode::BAD_REQUEST, "not JSON\n")
        }
    }
}

/// One line per command: phase, action, target and parameters.
pub fn lines(t: &Told) -> Vec<String> {
    let mut out: Vec<String> = t
        .commands
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("?").to_string();
            format!(
                "{} {} {} {}",
                s("phase"),
                s("action"),
                s("target"),
                c["params"]
            )
        })
        .collect();
    if t.dropped > 0 {
        out.push(format!("({} more not kept)", t.dropped));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_what_it_is_told_and_refuses_what_is_not_json() {
        let r = start().await.unwrap();
        let url = r.url.clone();
        let post = |body: &'static str| {
            let url = url.clone();
            tokio::task::spawn_blocking(move || {
                let addr = url
                    .trim_start_matches("http://")
                    .trim_end_matches("/router")
                    .to_string();
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                write!(
                    s,
                    "POST /router HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
                let mut a = String::new();
                s.read_to_string(&mut a).unwrap();
                a
            })
        };
        let ok = post(r#"{"phase":"apply","action":"remap_requests","target":"job/7","params":{"weight":"50"}}"#)
            .await
            .unwrap();
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        let bad = post("not json").await.unwrap();
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
        let t = r.told.lock().unwrap();
        assert_eq!(t.commands.len(), 1);
        assert_eq!(t.dropped, 1);
        assert_eq!(
            lines(&t)[0],
            r#"apply remap_requests job/7 {"weight":"50"}"#
        );
    }
}
