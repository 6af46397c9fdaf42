//! Reloading credentials while running (SIGHUP): every folder this process
//! read credentials from is read again (certificate, key, CA, CRL), and
//! every server and client built from it takes the new TLS configuration
//! for its next connections; connections already up are left alone. The
//! process keeps its identity: a folder whose new certificate names
//! another role or name is refused, and nothing is changed.
//!
//! Endpoints register themselves here when built from a folder; they are
//! held weakly, so one that is dropped is simply forgotten.

use crate::endpoint::{local_identity, ClientTls, ServerTls};
use crate::expiry::Expiry;
use crate::{Credentials, TransportError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

#[derive(Default)]
struct Folder {
    latest: Option<Credentials>,
    servers: Vec<Weak<ServerTls>>,
    clients: Vec<Weak<ClientTls>>,
}

fn folders() -> std::sync::MutexGuard<'static, BTreeMap<PathBuf, Folder>> {
    static FOLDERS: OnceLock<Mutex<BTreeMap<PathBuf, Folder>>> = OnceLock::new();
    FOLDERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Remember what was read from a folder (`Credentials::from_dir`).
pub(crate) fn loaded(creds: &Credentials) {
    if let Some(dir) = &creds.dir {
        folders().entry(dir.clone()).or_default().latest = Some(creds.clone());
    }
}

/// The newest credentials read from the folder `creds` came from (`creds`
/// itself when they came from none): what a server or client built now uses,
/// even when the caller kept an older copy.
pub fn latest(creds: &Credentials) -> Credentials {
    creds
        .dir
        .as_ref()
        .and_then(|dir| folders().get(dir).and_then(|f| f.latest.clone()))
        .unwrap_or_else(|| creds.clone())
}

pub(crate) fn track_server(creds: &Credentials, tls: &Arc<ServerTls>) {
    if let Some(dir) = &creds.dir {
        let mut f = folders();
        let folder = f.entry(dir.clone()).or_default();
        folder.servers.retain(|s| s.strong_count() > 0);
        folder.servers.push(Arc::downgrade(tls));
    }
}

pub(crate) fn track_client(creds: &Credentials, tls: &Arc<ClientTls>) {
    if let Some(dir) = &creds.dir {
        let mut f = folders();
        let folder = f.entry(dir.clone()).or_default();
        folder.clients.retain(|c| c.strong_count() > 0);
        folder.clients.push(Arc::downgrade(tls));
    }
}

/// What a reload changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reloaded {
    pub servers: usize,
    pub clients: usize,
}

/// Read `dir` again and hand the result to every endpoint built from it.
/// Either every endpoint takes the new credentials or, on any error
/// (unreadable files, a CRL the CA did not sign, another identity), none does.
pub fn reload_dir(dir: &Path) -> Result<Reloaded, TransportError> {
    let creds = Credentials::read_dir(dir)?;
    let new_local = local_identity(&creds)?;
    let (old, servers, clients) = {
        let f = folders();
        let Some(folder) = f.get(dir) else {
            return Ok(Reloaded::default());
        };
        let servers: Vec<_> = folder.servers.iter().filter_map(Weak::upgrade).collect();
        let clients: Vec<_> = folder.clients.iter().filter_map(Weak::upgrade).collect();
        (folder.latest.clone(), servers, clients)
    };
    if let Some(old) = old.as_ref().and_then(|o| local_identity(o).ok()) {
        if old != new_local {
            return Err(TransportError::Config {
                detail: format!(
                    "{}: the certificate now says {}/{}, not {}/{}; restart to change identity",
                    dir.display(),
                    new_local.role,
                    new_local.name,
                    old.role,
                    old.name
                ),
            });
        }
    }
    let server_cfgs = servers
        .iter()
        .map(|s| s.config_for(&creds))
        .collect::<Result<Vec<_>, _>>()?;
    let client_cfgs = clients
        .iter()
        .map(|c| c.config_for(&creds))
        .collect::<Result<Vec<_>, _>>()?;
    for (s, cfg) in servers.iter().zip(server_cfgs) {
        s.install(cfg);
    }
    for (c, cfg) in clients.iter().zip(client_cfgs) {
        c.install(cfg);
    }
    loaded(&creds);
    Ok(Reloaded {
        servers: servers.len(),
        clients: clients.len(),
    })
}

/// [`reload_dir`] for every folder this process read credentials from.
pub fn reload_all() -> Vec<(PathBuf, Result<Reloaded, TransportError>)> {
    let dirs: Vec<PathBuf> = folders().keys().cloned().collect();
    dirs.into_iter()
        .map(|d| {
            let r = reload_dir(&d);
            (d, r)
        })
        .collect()
}

/// The end of the current certificate in each folder this process read.
pub fn expiries() -> Vec<(PathBuf, Result<Expiry, TransportError>)> {
    folders()
        .iter()
        .filter_map(|(dir, f)| {
            let creds = f.latest.as_ref()?;
            Some((dir.clone(), creds.expiry().map_err(TransportError::from)))
        })
        .collect()
}
