//! quinn endpoints with keel's rules: a [`Server`] that admits only peers the
//! cluster CA vouches for, a [`Client`] that dials one, and a [`Link`] that
//! keeps a client connection up across restarts, with backoff and jitter.

use crate::backoff::Backoff;
use crate::conn::{inbox, Connection, Inbox, InboxTx, Local};
use crate::telemetry::TelemetrySender;
use crate::tls::{self, Credentials, Timing};
use crate::{identity, reload, Options, Peer, RefusalReason, Stats, TransportError};
use keel_model::{Message, Role};
use rand::Rng;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Our own identity, read from our own certificate (so a mislabelled file is
/// caught at start, not by the peers).
pub(crate) fn local_identity(creds: &Credentials) -> Result<Local, TransportError> {
    let pem = creds.own.as_ref().ok_or_else(|| TransportError::Config {
        detail: "no certificate".into(),
    })?;
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.cert.as_bytes())
        .map(|c: rustls::pki_types::CertificateDer<'static>| c)
        .map_err(|e| TransportError::Config {
            detail: format!("own certificate: {e}"),
        })?;
    let (role, name) = identity::from_cert_der(&der).map_err(|e| TransportError::Config {
        detail: format!("own certificate: {e}"),
    })?;
    Ok(Local { role, name })
}

/// The peer's role and name from the certificate rustls verified.
fn peer_identity(conn: &quinn::Connection) -> Result<Peer, String> {
    let certs = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(|| "no peer certificate".to_string())?;
    let leaf = certs
        .first()
        .ok_or_else(|| "empty certificate chain".to_string())?;
    let (role, name) = identity::from_cert_der(leaf).map_err(|e| e.to_string())?;
    Ok(Peer {
        role,
        name,
        addr: conn.remote_address(),
    })
}

/// A server's TLS: what a reload replaces for the connections to come.
pub(crate) struct ServerTls {
    endpoint: quinn::Endpoint,
    timing: Timing,
}

impl ServerTls {
    pub(crate) fn config_for(
        &self,
        creds: &Credentials,
    ) -> Result<quinn::ServerConfig, TransportError> {
        Ok(tls::server_config(creds, &self.timing)?)
    }

    pub(crate) fn install(&self, cfg: quinn::ServerConfig) {
        self.endpoint.set_server_config(Some(cfg));
    }
}

/// Accepts connections from authenticated peers.
pub struct Server {
    endpoint: quinn::Endpoint,
    tls: Arc<ServerTls>,
    accepted: mpsc::Receiver<(Connection, Inbox)>,
    live: Arc<Mutex<Vec<Connection>>>,
    pub stats: Arc<Stats>,
    pub local_role: Role,
    pub local_name: String,
}

impl Server {
    pub fn bind(
        addr: SocketAddr,
        creds: &Credentials,
        opts: Options,
    ) -> Result<Server, TransportError> {
        let creds = &reload::latest(creds);
        let local = local_identity(creds)?;
        let cfg = tls::server_config(creds, &opts.timing)?;
        let endpoint = quinn::Endpoint::server(cfg, addr)
            .map_err(|source| TransportError::Io { addr, source })?;
        let tls = Arc::new(ServerTls {
            endpoint: endpoint.clone(),
            timing: opts.timing.clone(),
        });
        reload::track_server(creds, &tls);
        let stats = Arc::new(Stats::default());
        let (tx, rx) = mpsc::channel(64);
        let live = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(accept_loop(
            endpoint.clone(),
            local.clone(),
            opts,
            stats.clone(),
            tx,
            live.clone(),
        ));
        Ok(Server {
            endpoint,
            tls,
            accepted: rx,
            live,
            stats,
            local_role: local.role,
            local_name: local.name,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.endpoint
            .local_addr()
            .map_err(|source| TransportError::Io {
                addr: ([0, 0, 0, 0], 0).into(),
                source,
            })
    }

    /// Use `creds` for the connections to come (those up are kept); they
    /// must name this server as its certificate did. [`reload::reload_dir`]
    /// does this for every endpoint built from a folder.
    pub fn reload(&self, creds: &Credentials) -> Result<(), TransportError> {
        check_same(&local_identity(creds)?, &self.local_role, &self.local_name)?;
        self.tls.install(self.tls.config_for(creds)?);
        Ok(())
    }

    /// The next authenticated connection; refused ones are counted, not returned.
    pub async fn accept(&mut self) -> Option<(Connection, Inbox)> {
        self.accepted.recv().await
    }

    /// Stop accepting, let control exchanges under way finish (at most
    /// `grace`), close every connection and wait for the peers to be told.
    pub async fn shutdown(self, grace: Duration) {
        // Forgotten by reloads first, so that none takes new peers again.
        drop(self.tls);
        self.endpoint.set_server_config(None);
        let live: Vec<Connection> = self.live.lock().map(|l| l.clone()).unwrap_or_default();
        for c in &live {
            c.close_gracefully(grace).await;
        }
        self.endpoint
            .close(crate::conn::CLOSE_SHUTDOWN.into(), b"shutdown");
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    local: Local,
    opts: Options,
    stats: Arc<Stats>,
    tx: mpsc::Sender<(Connection, Inbox)>,
    live: Arc<Mutex<Vec<Connection>>>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let (local, opts, stats, tx, live) = (
            local.clone(),
            opts.clone(),
            stats.clone(),
            tx.clone(),
            live.clone(),
        );
        tokio::spawn(async move {
            let addr = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    let reason = tls::classify_handshake_error(&e);
                    stats.refuse(&addr.to_string(), reason, &e.to_string());
                    return;
                }
            };
            let peer = match peer_identity(&conn) {
                Ok(p) => p,
                Err(detail) => {
                    stats.refuse(&addr.to_string(), RefusalReason::BadCert, &detail);
                    Connection::refuse(&conn, RefusalReason::BadCert, &detail);
                    return;
                }
            };
            // Past the bound, the peer's oldest connection makes room: a
            // client that exits without closing (a CLI run, a crash) leaves
            // its connection open until the idle timeout, and its next run
            // must still get in; a looping or stolen identity never holds
            // more than the bound.
            let oldest = live.lock().ok().and_then(|mut l| {
                l.retain(|c| !c.is_closed());
                let mine: Vec<&Connection> = l
                    .iter()
                    .filter(|c| c.peer().role == peer.role && c.peer().name == peer.name)
                    .collect();
                (mine.len() >= crate::CONNECTIONS_PER_PEER).then(|| mine[0].clone())
            });
            if let Some(old) = oldest {
                let detail = format!(
                    "{}/{} opened more than {} connections; its oldest is closed",
                    peer.role,
                    peer.name,
                    crate::CONNECTIONS_PER_PEER
                );
                let reason = RefusalReason::TooManyConnections;
                stats.refuse(&old.peer().to_string(), reason, &detail);
                old.refuse_now(reason, &detail);
            }
            stats.accepted.fetch_add(1, Ordering::Relaxed);
            tracing::info!(peer = %peer, "accepted");
            let (inbox_tx, inbox_rx) = inbox(opts.inbox_capacity);
            let telemetry = TelemetrySender::new(opts.telemetry_capacity, stats.clone());
            let c = Connection::start(conn, peer, local, opts, stats, inbox_tx, telemetry);
            if let Ok(mut l) = live.lock() {
                l.retain(|c| !c.is_closed());
                l.push(c.clone());
            }
            let _ = tx.send((c, inbox_rx)).await;
        });
    }
}

/// A client's TLS, shared by its clones: what a reload replaces for the
/// connections to come (a [`Link`] reconnecting included).
pub(crate) struct ClientTls {
    config: RwLock<quinn::ClientConfig>,
    timing: Timing,
}

impl ClientTls {
    pub(crate) fn config_for(
        &self,
        creds: &Credentials,
    ) -> Result<quinn::ClientConfig, TransportError> {
        Ok(tls::client_config(creds, &self.timing)?)
    }

    pub(crate) fn install(&self, cfg: quinn::ClientConfig) {
        if let Ok(mut c) = self.config.write() {
            *c = cfg;
        }
    }

    fn current(&self) -> Result<quinn::ClientConfig, TransportError> {
        self.config
            .read()
            .map(|c| c.clone())
            .map_err(|_| TransportError::Config {
                detail: "client configuration lock poisoned".into(),
            })
    }
}

fn check_same(new: &Local, role: &Role, name: &str) -> Result<(), TransportError> {
    if new.role != *role || new.name != name {
        return Err(TransportError::Config {
            detail: format!(
                "the new certificate says {}/{}, not {role}/{name}; restart to change identity",
                new.role, new.name
            ),
        });
    }
    Ok(())
}

/// Dials servers with this process's certificate.
#[derive(Clone)]
pub struct Client {
    endpoint: quinn::Endpoint,
    tls: Arc<ClientTls>,
    local: Local,
    opts: Options,
    pub stats: Arc<Stats>,
    /// The role the server's certificate must carry (None: any), besides
    /// the name that TLS checks.
    server_role: Option<Role>,
}

impl Client {
    pub fn new(creds: &Credentials, opts: Options) -> Result<Client, TransportError> {
        let creds = &reload::latest(creds);
        // A client without a certificate has no identity; only tests build one.
        let local = local_identity(creds).unwrap_or(Local {
            role: Role::Operator,
            name: "anonymous".into(),
        });
        let cfg = tls::client_config(creds, &opts.timing)?;
        let addr: SocketAddr = ([0, 0, 0, 0], 0).into();
        let endpoint =
            quinn::Endpoint::client(addr).map_err(|source| TransportError::Io { addr, source })?;
        let tls = Arc::new(ClientTls {
            config: RwLock::new(cfg),
            timing: opts.timing.clone(),
        });
        reload::track_client(creds, &tls);
        Ok(Client {
            endpoint,
            tls,
            local,
            opts,
            stats: Arc::new(Stats::default()),
            server_role: None,
        })
    }

    /// This client connects only to servers whose certificate says `role`
    /// (a controller, a correlator host): a certificate of another role
    /// with the expected name is refused.
    pub fn expecting(mut self, role: Role) -> Client {
        self.server_role = Some(role);
        self
    }

    /// Use `creds` for the connections to come, in this client and its
    /// clones; they must name this process as its certificate did.
    pub fn reload(&self, creds: &Credentials) -> Result<(), TransportError> {
        check_same(&local_identity(creds)?, &self.local.role, &self.local.name)?;
        self.tls.install(self.tls.config_for(creds)?);
        Ok(())
    }

    /// Connect to `server_name` (the name in its certificate) at `addr`, and
    /// confirm with a ping that the server admitted us: under TLS 1.3 the
    /// server judges our certificate only after our side of the handshake is done.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<(Connection, Inbox), TransportError> {
        let (tx, rx) = inbox(self.opts.inbox_capacity);
        let telemetry = TelemetrySender::new(self.opts.telemetry_capacity, self.stats.clone());
        let c = self.connect_with(addr, server_name, tx, telemetry).await?;
        Ok((c, rx))
    }

    pub(crate) async fn connect_with(
        &self,
        addr: SocketAddr,
        server_name: &str,
        inbox: InboxTx,
        telemetry: TelemetrySender,
    ) -> Result<Connection, TransportError> {
        let connect_err = |detail: String| TransportError::Connect {
            addr,
            name: server_name.to_string(),
            detail,
        };
        let connecting = self
            .endpoint
            .connect_with(self.tls.current()?, addr, server_name)
            .map_err(|e| connect_err(e.to_string()))?;
        let conn = match tokio::time::timeout(self.opts.connect_timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                // Our side refused the server's certificate (the server
                // refusing ours comes back as a close from it instead).
                if let quinn::ConnectionError::TransportError(t) = &e {
                    if is_crypto(u64::from(t.code)) {
                        let reason = tls::classify_handshake_error(&e);
                        self.stats
                            .refuse(&format!("{server_name}@{addr}"), reason, &e.to_string());
                    }
                }
                return Err(TransportError::from_connection(
                    format!("{server_name}@{addr}"),
                    e,
                ));
            }
            Err(_) => return Err(connect_err("handshake timed out".into())),
        };
        let peer = peer_identity(&conn).map_err(connect_err)?;
        if let Some(role) = self.server_role.filter(|r| *r != peer.role) {
            conn.close(0u32.into(), b"wrong role");
            return Err(connect_err(format!(
                "the server's certificate says {}, not {role}",
                peer.role
            )));
        }
        let c = Connection::start(
            conn,
            peer,
            self.local.clone(),
            self.opts.clone(),
            self.stats.clone(),
            inbox,
            telemetry,
        );
        match c.request(Message::Ping, self.opts.connect_timeout).await? {
            Message::Pong => Ok(c),
            other => Err(connect_err(format!("answered ping with {}", other.kind()))),
        }
    }
}

/// QUIC carries TLS alerts as transport error codes 0x100..0x1ff.
fn is_crypto(code: u64) -> bool {
    (0x100..0x200).contains(&code)
}

/// A client connection that comes back by itself. Requests made while it is
/// down wait for it (within their timeout) and are sent again if the link
/// drops mid-request: at-least-once, which is why commands carry an
/// idempotency key. Telemetry queued while down waits in the same bounded
/// queue and drops its oldest when that fills.
pub struct Link {
    current: watch::Receiver<Option<Connection>>,
    telemetry: TelemetrySender,
    pub stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    pub fn start(
        client: Client,
        addr: SocketAddr,
        server_name: &str,
        backoff: Backoff,
    ) -> (Link, Inbox) {
        let (tx, rx) = inbox(client.opts.inbox_capacity);
        let telemetry = TelemetrySender::new(client.opts.telemetry_capacity, client.stats.clone());
        let (cur_tx, cur_rx) = watch::channel(None);
        let stats = client.stats.clone();
        let task = tokio::spawn(keep_up(
            client,
            addr,
            server_name.to_string(),
            backoff,
            tx,
            telemetry.clone(),
            cur_tx,
        ));
        (
            Link {
                current: cur_rx,
                telemetry,
                stats,
                task,
            },
            rx,
        )
    }

    pub fn telemetry(&self) -> &TelemetrySender {
        &self.telemetry
    }

    pub fn connection(&self) -> Option<Connection> {
        self.current.borrow().clone()
    }

    pub async fn request(
        &self,
        msg: Message,
        timeout: Duration,
    ) -> Result<Message, TransportError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut current = self.current.clone();
        loop {
            let up = |c: &Option<Connection>| matches!(c, Some(c) if !c.is_closed());
            let conn = match tokio::time::timeout_at(deadline, current.wait_for(up)).await {
                Ok(Ok(c)) => c.clone(),
                _ => {
                    return Err(TransportError::Timeout {
                        peer: "link".into(),
                        after: timeout,
                    })
                }
            };
            let Some(conn) = conn else { continue };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match conn.request(msg.clone(), left).await {
                Err(e) if e.is_connection_lost() => {
                    // Resend once the link has noticed and come back.
                    let _ = tokio::time::timeout_at(deadline, conn.closed()).await;
                }
                r => return r,
            }
        }
    }

    /// Let requests under way finish (at most `grace`), then close.
    pub async fn shutdown(self, grace: Duration) {
        self.task.abort();
        if let Some(c) = self.current.borrow().clone() {
            c.close_gracefully(grace).await;
        }
    }
}

impl Drop for Link {
    /// A link nobody holds stops reconnecting.
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep_up(
    client: Client,
    addr: SocketAddr,
    name: String,
    mut backoff: Backoff,
    inbox: InboxTx,
    telemetry: TelemetrySender,
    current: watch::Sender<Option<Connection>>,
) {
    loop {
        match client
            .connect_with(addr, &name, inbox.clone(), telemetry.clone())
            .await
        {
            Ok(conn) => {
                backoff.reset();
                tracing::info!(peer = %conn.peer(), "link up");
                current.send_replace(Some(conn.clone()));
                let why = conn.closed().await;
                current.send_replace(None);
                tracing::warn!(peer = %conn.peer(), reason = %why, "link down");
            }
            Err(e) => {
                let delay = backoff.next_delay(rand::thread_rng().gen());
                tracing::debug!(%addr, error = %e, ?delay, attempt = backoff.attempts(), "connect failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
