//! Answering a control request: one frame back on the request's stream.

use crate::conn::{InFlightGuard, Local};
use crate::frame::{self, FrameError};
use crate::{Peer, TransportError};
use keel_model::{Envelope, Message};
use std::time::Duration;

/// A control request from a peer; answer it with [`Request::reply`].
pub struct Request {
    pub peer: Peer,
    pub msg: Message,
    pub(crate) responder: Responder,
}

pub(crate) struct Responder {
    pub(crate) send: quinn::SendStream,
    pub(crate) local: Local,
    pub(crate) max_frame: usize,
    pub(crate) _inflight: InFlightGuard,
}

impl Request {
    pub async fn reply(self, msg: Message) -> Result<(), TransportError> {
        let peer = self.peer.to_string();
        let r = self.responder;
        if !r.local.role.may_send(&msg) {
            return Err(TransportError::NotPermitted {
                role: r.local.role,
                kind: msg.kind(),
            });
        }
        let env = Envelope::new(r.local.name.clone(), msg);
        let frame_err = |source| TransportError::Frame {
            peer: peer.clone(),
            source,
        };
        let bytes = match frame::encode_envelope(&env, r.max_frame) {
            Ok(bytes) => bytes,
            // An answer larger than a frame would reach the asker as
            // nothing at all; it gets a refusal that says why instead, and
            // the answerer learns of it (an error, and its log).
            Err(FrameError::Oversize { len, max }) => {
                tracing::warn!(
                    peer,
                    kind = env.msg.kind(),
                    len,
                    max,
                    "answer larger than a frame; refused instead"
                );
                let why = format!("answer too large: {len} bytes, a frame holds {max}");
                let refusal = match &env.msg {
                    Message::QueryReply(q) => Message::QueryReply(keel_model::QueryReply {
                        id: q.id,
                        ok: false,
                        body: why,
                    }),
                    _ => Message::Ack(keel_model::Ack {
                        id: 0,
                        ok: false,
                        detail: why,
                    }),
                };
                let refusal = Envelope::new(r.local.name.clone(), refusal);
                let bytes = frame::encode_envelope(&refusal, r.max_frame).map_err(frame_err)?;
                write_bytes(r.send, &bytes, &peer).await?;
                return Err(frame_err(FrameError::Oversize { len, max }));
            }
            Err(e) => return Err(frame_err(e)),
        };
        write_bytes(r.send, &bytes, &peer).await
    }
}

pub(crate) async fn write_one(
    send: quinn::SendStream,
    env: &Envelope,
    max_frame: usize,
    peer: &str,
) -> Result<(), TransportError> {
    let bytes = frame::encode_envelope(env, max_frame).map_err(|source| TransportError::Frame {
        peer: peer.to_string(),
        source,
    })?;
    write_bytes(send, &bytes, peer).await
}

async fn write_bytes(
    mut send: quinn::SendStream,
    bytes: &[u8],
    peer: &str,
) -> Result<(), TransportError> {
    let stream = |detail: String| TransportError::Stream {
        peer: peer.to_string(),
        detail,
    };
    send.write_all(bytes)
        .await
        .map_err(|e| stream(e.to_string()))?;
    send.finish().map_err(|e| stream(e.to_string()))?;
    // Closing now would discard what is not yet acknowledged; wait for it.
    let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    Ok(())
}
