//! One authenticated connection, both classes on it.
//!
//! Control: each request rides its own bidirectional stream (one frame each
//! way), so a bad frame costs one stream and never the others. Requests are
//! opened in call order and handed to the application in stream order, so a
//! connection's control messages arrive in the order they were sent.
//! Telemetry: one long-lived unidirectional stream per connection, at a lower
//! priority than control, fed in batches from the drop-oldest queue.
//! Every frame received is checked against the sender's certified role.

use crate::frame::{self, FrameDecoder, FrameError, HEADER_LEN};
pub use crate::reply::Request;
use crate::reply::{write_one, Responder};
use crate::telemetry::TelemetrySender;
use crate::{Options, Peer, RefusalReason, Stats, TransportError};
use keel_model::{Envelope, Message, Role, TelemetryBatch};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex, Notify};

/// Connection close codes.
pub const CLOSE_SHUTDOWN: u32 = 0;
pub const CLOSE_REFUSED: u32 = 1;
/// Stream reset/stop codes name the frame error that ended a stream.
pub const STREAM_OVERSIZE: u32 = 1;
pub const STREAM_BAD_FRAME: u32 = 2;

/// What this process is, as its own certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub role: Role,
    pub name: String,
}

/// Requests and telemetry that peers sent us.
pub struct Inbox {
    pub telemetry: mpsc::Receiver<(Peer, TelemetryBatch)>,
    pub requests: mpsc::Receiver<Request>,
}

#[derive(Clone)]
pub(crate) struct InboxTx {
    telemetry: mpsc::Sender<(Peer, TelemetryBatch)>,
    requests: mpsc::Sender<Request>,
}

pub(crate) fn inbox(capacity: usize) -> (InboxTx, Inbox) {
    let (t_tx, t_rx) = mpsc::channel(capacity.max(1));
    let (r_tx, r_rx) = mpsc::channel(capacity.max(1));
    (
        InboxTx {
            telemetry: t_tx,
            requests: r_tx,
        },
        Inbox {
            telemetry: t_rx,
            requests: r_rx,
        },
    )
}

/// Counts control exchanges under way, so that shutdown can wait for them.
#[derive(Default)]
struct InFlight {
    n: AtomicUsize,
    idle: Notify,
}

pub(crate) struct InFlightGuard(Arc<InFlight>);

impl InFlight {
    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.n.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.n.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

struct Shared {
    conn: quinn::Connection,
    peer: Peer,
    local: Local,
    opts: Options,
    stats: Arc<Stats>,
    open_order: Mutex<()>,
    inflight: Arc<InFlight>,
    closing: AtomicBool,
}

/// A live, authenticated connection. Cheap to clone.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    telemetry: TelemetrySender,
}

impl Connection {
    /// Start serving an authenticated connection: its stream acceptors and its
    /// telemetry pump, which drains `telemetry` (a queue that may outlive it).
    pub(crate) fn start(
        conn: quinn::Connection,
        peer: Peer,
        local: Local,
        opts: Options,
        stats: Arc<Stats>,
        inbox: InboxTx,
        telemetry: TelemetrySender,
    ) -> Connection {
        let shared = Arc::new(Shared {
            conn,
            peer,
            local,
            opts,
            stats,
            open_order: Mutex::new(()),
            inflight: Arc::new(InFlight::default()),
            closing: AtomicBool::new(false),
        });
        tokio::spawn(accept_uni(shared.clone(), inbox.clone()));
        tokio::spawn(accept_bi(shared.clone(), inbox));
        tokio::spawn(pump_telemetry(shared.clone(), telemetry.clone()));
        Connection { shared, telemetry }
    }

    pub fn peer(&self) -> &Peer {
        &self.shared.peer
    }

    /// Queue telemetry for this connection; never blocks.
    pub fn telemetry(&self) -> &TelemetrySender {
        &self.telemetry
    }

    pub fn is_closed(&self) -> bool {
        self.shared.conn.close_reason().is_some()
    }

    pub async fn closed(&self) -> quinn::ConnectionError {
        self.shared.conn.closed().await
    }

    pub fn rtt(&self) -> Duration {
        self.shared.conn.rtt()
    }

    /// Send one control message and wait for the answer, at most `timeout`.
    /// The message is never dropped by the transport: it is delivered or this
    /// returns an error, and a caller that retries reuses its idempotency key.
    pub async fn request(
        &self,
        msg: Message,
        timeout: Duration,
    ) -> Result<Message, TransportError> {
        let s = &self.shared;
        let peer = s.peer.to_string();
        if s.closing.load(Ordering::SeqCst) {
            return Err(TransportError::Closed { peer });
        }
        let _guard = s.inflight.enter();
        let env = Envelope::new(s.local.name.clone(), msg);
        match tokio::time::timeout(timeout, self.exchange(&env)).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout {
                peer,
                after: timeout,
            }),
        }
    }

    async fn exchange(&self, env: &Envelope) -> Result<Message, TransportError> {
        let s = &self.shared;
        let peer = s.peer.to_string();
        let bytes = frame::encode_envelope(env, s.opts.max_frame).map_err(|source| {
            TransportError::Frame {
                peer: peer.clone(),
                source,
            }
        })?;
        let mut recv = {
            // Open and write under one lock so stream order is call order.
            let _order = s.open_order.lock().await;
            let (mut send, recv) = s.conn.open_bi().await.map_err(|e| self.lost(e))?;
            send.write_all(&bytes).await.map_err(|e| match e {
                quinn::WriteError::ConnectionLost(e) => self.lost(e),
                e => self.stream_error(e.to_string()),
            })?;
            send.finish()
                .map_err(|e| self.stream_error(e.to_string()))?;
            recv
        };
        let reply = recv
            .read_to_end(HEADER_LEN + s.opts.max_frame)
            .await
            .map_err(|e| match e {
                quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(e)) => self.lost(e),
                quinn::ReadToEndError::Read(quinn::ReadError::Reset(code)) => {
                    self.stream_reset(code)
                }
                e => self.stream_error(e.to_string()),
            })?;
        let mut dec = FrameDecoder::new(s.opts.max_frame);
        dec.push(&reply);
        let frame_err = |source| TransportError::Frame {
            peer: peer.clone(),
            source,
        };
        let payload = match dec.next_frame().map_err(frame_err)? {
            Some(p) => p,
            None => {
                return Err(match dec.finish() {
                    Err(e) => frame_err(e),
                    Ok(()) => self.stream_error("peer answered nothing".into()),
                })
            }
        };
        let reply = frame::decode_envelope(&payload).map_err(frame_err)?;
        if !s.peer.role.may_send(&reply.msg) {
            let detail = format!("{} may not send {}", s.peer.role, reply.msg.kind());
            s.stats.refuse(&peer, RefusalReason::WrongRole, &detail);
            return Err(TransportError::Refused {
                peer,
                reason: RefusalReason::WrongRole,
                detail,
            });
        }
        Ok(reply.msg)
    }

    fn lost(&self, e: quinn::ConnectionError) -> TransportError {
        TransportError::from_connection(self.shared.peer.to_string(), e)
    }

    fn stream_error(&self, detail: String) -> TransportError {
        TransportError::Stream {
            peer: self.shared.peer.to_string(),
            detail,
        }
    }

    fn stream_reset(&self, code: quinn::VarInt) -> TransportError {
        let reason = match code.into_inner() {
            c if c == STREAM_OVERSIZE as u64 => RefusalReason::OversizeFrame,
            _ => RefusalReason::BadFrame,
        };
        TransportError::Refused {
            peer: self.shared.peer.to_string(),
            reason,
            detail: "the peer reset the stream".into(),
        }
    }

    /// Refuse new requests, let the ones under way finish (at most `grace`),
    /// then close. Queued telemetry is not waited for: it may be dropped.
    pub async fn close_gracefully(&self, grace: Duration) {
        let s = &self.shared;
        s.closing.store(true, Ordering::SeqCst);
        let _ = tokio::time::timeout(grace, s.inflight.wait_idle()).await;
        s.conn.close(CLOSE_SHUTDOWN.into(), b"shutdown");
    }

    /// Close at once, as a refusal: the peer's error will carry `reason`.
    pub(crate) fn refuse(conn: &quinn::Connection, reason: RefusalReason, detail: &str) {
        conn.close(
            CLOSE_REFUSED.into(),
            format!("{reason}: {detail}").as_bytes(),
        );
    }

    /// Close this connection at once as a refusal (the peer's error will
    /// carry `reason`).
    pub(crate) fn refuse_now(&self, reason: RefusalReason, detail: &str) {
        Connection::refuse(&self.shared.conn, reason, detail);
    }

    /// Raw access for tests of refusals: a stream to write arbitrary bytes on.
    #[doc(hidden)]
    pub async fn open_raw_bi(
        &self,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
        self.shared.conn.open_bi().await.map_err(|e| self.lost(e))
    }
}

/// Read one frame-delimited stream's frames as they arrive.
struct FrameReader {
    recv: quinn::RecvStream,
    dec: FrameDecoder,
    done: bool,
}

enum Next {
    Frame(Vec<u8>),
    End,
    Failed(FrameError),
    Gone,
}

impl FrameReader {
    fn new(recv: quinn::RecvStream, max: usize) -> Self {
        FrameReader {
            recv,
            dec: FrameDecoder::new(max),
            done: false,
        }
    }

    async fn next(&mut self) -> Next {
        loop {
            match self.dec.next_frame() {
                Ok(Some(f)) => return Next::Frame(f),
                Ok(None) if self.done => {
                    return match self.dec.finish() {
                        Ok(()) => Next::End,
                        Err(e) => Next::Failed(e),
                    }
                }
                Ok(None) => {}
                Err(e) => return Next::Failed(e),
            }
            match self.recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => self.dec.push(&chunk.bytes),
                Ok(None) => self.done = true,
                Err(_) => return Next::Gone,
            }
        }
    }

    fn stop(&mut self, e: &FrameError) {
        let code = match e {
            FrameError::Oversize { .. } => STREAM_OVERSIZE,
            _ => STREAM_BAD_FRAME,
        };
        let _ = self.recv.stop(code.into());
    }
}

/// Decode a frame and check the sender's role; a refusal is counted here.
fn admit(s: &Shared, payload: &[u8], reader: &mut FrameReader) -> Option<Message> {
    let peer = s.peer.to_string();
    match frame::decode_envelope(payload) {
        Err(e) => {
            s.stats.refuse(&peer, e.reason(), &e.to_string());
            reader.stop(&e);
            None
        }
        Ok(env) if !s.peer.role.may_send(&env.msg) => {
            let detail = format!("{} may not send {}", s.peer.role, env.msg.kind());
            s.stats.refuse(&peer, RefusalReason::WrongRole, &detail);
            Connection::refuse(&s.conn, RefusalReason::WrongRole, &detail);
            None
        }
        Ok(env) => {
            if env.from != s.peer.name {
                tracing::debug!(
                    peer,
                    claimed = env.from,
                    "envelope names another sender; the certificate wins"
                );
            }
            Some(env.msg)
        }
    }
}

fn frame_refused(s: &Shared, reader: &mut FrameReader, e: FrameError) {
    s.stats
        .refuse(&s.peer.to_string(), e.reason(), &e.to_string());
    reader.stop(&e);
}

async fn accept_uni(s: Arc<Shared>, inbox: InboxTx) {
    while let Ok(recv) = s.conn.accept_uni().await {
        tokio::spawn(read_telemetry(s.clone(), inbox.clone(), recv));
    }
}

async fn read_telemetry(s: Arc<Shared>, inbox: InboxTx, recv: quinn::RecvStream) {
    let mut reader = FrameReader::new(recv, s.opts.max_frame);
    loop {
        match reader.next().await {
            Next::Frame(payload) => match admit(&s, &payload, &mut reader) {
                Some(Message::Telemetry(batch)) => {
                    s.stats
                        .telemetry_received
                        .fetch_add(batch.summaries.len() as u64, Ordering::Relaxed);
                    // Waiting here is the backpressure: QUIC flow control then
                    // holds the sender, whose queue drops its oldest.
                    if inbox.telemetry.send((s.peer.clone(), batch)).await.is_err() {
                        return;
                    }
                }
                Some(other) => {
                    let e =
                        FrameError::Undecodable(format!("{} on a telemetry stream", other.kind()));
                    return frame_refused(&s, &mut reader, e);
                }
                None => return,
            },
            Next::Failed(e) => return frame_refused(&s, &mut reader, e),
            Next::End | Next::Gone => return,
        }
    }
}

async fn accept_bi(s: Arc<Shared>, inbox: InboxTx) {
    // Requests are read concurrently but handed on in stream order.
    let (order_tx, mut order_rx) = mpsc::unbounded_channel::<oneshot::Receiver<Request>>();
    let requests = inbox.requests.clone();
    tokio::spawn(async move {
        while let Some(next) = order_rx.recv().await {
            if let Ok(req) = next.await {
                if requests.send(req).await.is_err() {
                    return;
                }
            }
        }
    });
    while let Ok((send, recv)) = s.conn.accept_bi().await {
        let (tx, rx) = oneshot::channel();
        if order_tx.send(rx).is_err() {
            return;
        }
        tokio::spawn(read_request(s.clone(), send, recv, tx));
    }
}

async fn read_request(
    s: Arc<Shared>,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    deliver: oneshot::Sender<Request>,
) {
    let guard = s.inflight.enter();
    let mut reader = FrameReader::new(recv, s.opts.max_frame);
    let payload = match tokio::time::timeout(s.opts.request_read_timeout, reader.next()).await {
        Ok(Next::Frame(p)) => p,
        Ok(Next::Failed(e)) => {
            let code = match e {
                FrameError::Oversize { .. } => STREAM_OVERSIZE,
                _ => STREAM_BAD_FRAME,
            };
            let _ = send.reset(code.into());
            return frame_refused(&s, &mut reader, e);
        }
        Ok(Next::End) => {
            let e = FrameError::Truncated {
                have: 0,
                need: HEADER_LEN,
            };
            let _ = send.reset(STREAM_BAD_FRAME.into());
            return frame_refused(&s, &mut reader, e);
        }
        Ok(Next::Gone) => return,
        Err(_) => {
            let e = FrameError::Truncated {
                have: 0,
                need: HEADER_LEN,
            };
            let _ = send.reset(STREAM_BAD_FRAME.into());
            return frame_refused(&s, &mut reader, e);
        }
    };
    let msg = match admit(&s, &payload, &mut reader) {
        Some(m) => m,
        None => {
            let _ = send.reset(STREAM_BAD_FRAME.into());
            return;
        }
    };
    if matches!(msg, Message::Telemetry(_)) {
        let e = FrameError::Undecodable("telemetry on a control stream".into());
        let _ = send.reset(STREAM_BAD_FRAME.into());
        return frame_refused(&s, &mut reader, e);
    }
    let peer = s.peer.to_string();
    if msg == Message::Ping {
        let env = Envelope::new(s.local.name.clone(), Message::Pong);
        if let Err(e) = write_one(send, &env, s.opts.max_frame, &peer).await {
            tracing::debug!(peer, error = %e, "pong not sent");
        }
        return;
    }
    let req = Request {
        peer: s.peer.clone(),
        msg,
        responder: Responder {
            send,
            local: s.local.clone(),
            max_frame: s.opts.max_frame,
            _inflight: guard,
        },
    };
    let _ = deliver.send(req);
}

async fn pump_telemetry(s: Arc<Shared>, queue: TelemetrySender) {
    let mut stream: Option<quinn::SendStream> = None;
    loop {
        let batch = queue.take(s.opts.batch_max);
        let metrics = queue.take_metrics(s.opts.batch_max);
        let requests = queue.take_requests(s.opts.batch_max);
        if batch.is_empty() && metrics.is_empty() && requests.is_empty() {
            tokio::select! {
                _ = queue.ready.notified() => continue,
                _ = s.conn.closed() => return,
            }
        }
        let n = (batch.len() + metrics.len() + requests.len()) as u64;
        let env = Envelope::new(
            s.local.name.clone(),
            Message::Telemetry(TelemetryBatch {
                summaries: batch,
                metrics,
                requests,
            }),
        );
        let bytes = match frame::encode_envelope(&env, s.opts.max_frame) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(peer = %s.peer, error = %e, "telemetry batch not encodable; dropped");
                s.stats.telemetry_dropped.fetch_add(n, Ordering::Relaxed);
                continue;
            }
        };
        if stream.is_none() {
            match s.conn.open_uni().await {
                Ok(st) => {
                    // Control streams go first when both have data to send.
                    let _ = st.set_priority(-1);
                    stream = Some(st);
                }
                Err(_) => {
                    s.stats.telemetry_dropped.fetch_add(n, Ordering::Relaxed);
                    return;
                }
            }
        }
        if let Some(st) = stream.as_mut() {
            match st.write_all(&bytes).await {
                Ok(()) => {
                    s.stats.telemetry_sent.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    s.stats.telemetry_dropped.fetch_add(n, Ordering::Relaxed);
                    stream = None;
                    if matches!(e, quinn::WriteError::ConnectionLost(_)) {
                        return;
                    }
                }
            }
        }
    }
}
