//! What the actor tests share: a temporary folder removed however a test
//! ends, credentials from a CA made by the test, the wall clock, and
//! waiting without wall-clock assertions.

#![allow(dead_code)]

use keel_model::Role;
use keel_transport::certs::{Ca, Validity};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Dir(pub PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh folder `keel-NAME-PID` in the temporary directory.
pub fn tmp(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("keel-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

/// A credentials folder `DIR/ROLE-NAME` for a certificate `ca` issues.
pub fn issue(dir: &Path, ca: &Ca, role: Role, name: &str) -> PathBuf {
    let out = dir.join(format!("{role}-{name}"));
    let pem = ca.issue(role, name, Validity::days(1)).unwrap();
    keel_transport::certs::write_credentials(&out, &ca.pem.cert, &pem).unwrap();
    out
}

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Polls `f` every 100 ms; the bound only ends a failing run.
pub async fn eventually<T>(mut f: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    for _ in 0..300 {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}
