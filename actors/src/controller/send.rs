//! Sending Raft messages to peer replicas, and telling raft how it went.
//!
//! A message that fits a frame rides as one `raft` request; a larger one (a
//! snapshot of a large state) is cut into chunks ([`super::transfer`]) sent
//! one after another as `raft_chunk` requests, each acknowledged. The result
//! comes back to the actor as [`ControllerMsg::Sent`]: a snapshot is
//! reported to raft as delivered or failed (`report_snapshot`), and any
//! failed send marks the peer unreachable (`report_unreachable`) and is
//! logged at `warn` with its size and peer, at most once per
//! [`WARN_EVERY`] per peer.

use super::transfer::{self, CHUNK_BYTES};
use super::{ControllerMsg, ControllerState};
use keel_consensus::node::encode_message;
use keel_model::{Message, RaftBytes, RaftChunk};
use keel_transport::Link;
use raft::prelude::MessageType;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one Raft request (or one chunk of a transfer) may take.
pub const RAFT_SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one chunk of a transfer may take (512 KiB, acknowledged).
pub const CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed sends to one peer are logged at most this often; the others are
/// counted and the count is logged with the next line.
pub const WARN_EVERY: Duration = Duration::from_secs(5);

/// The sending side's state, owned by the actor.
#[derive(Default)]
pub struct Sending {
    /// The chunked transfer under way to each peer: a new one aborts it.
    transfers: HashMap<u64, tokio::task::AbortHandle>,
    next_transfer: u64,
    warnings: Warnings,
    /// Raft messages that could not be delivered.
    pub failed: u64,
    /// Transfers (chunked messages) started.
    pub transfers_started: u64,
}

/// Rate-limits warnings per peer. Sans-IO: the caller gives the time.
#[derive(Default)]
pub struct Warnings {
    last: HashMap<u64, (Instant, u64)>,
}

impl Warnings {
    /// `Some(suppressed)` when a warning about `peer` may be logged now
    /// (with how many were suppressed since the last one), `None` when it
    /// should be counted and left out.
    pub fn allow(&mut self, peer: u64, now: Instant) -> Option<u64> {
        match self.last.get_mut(&peer) {
            Some((at, suppressed)) if now.duration_since(*at) < WARN_EVERY => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                *at = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                self.last.insert(peer, (now, 0));
                Some(0)
            }
        }
    }
}

/// Sends one Raft message to its peer in the background; the result comes
/// back to the actor as [`ControllerMsg::Sent`].
pub fn raft(state: &mut ControllerState, m: raft::prelude::Message) {
    let to = m.to;
    let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
    let bytes = encode_message(&m);
    let size = bytes.len();
    let Some(link) = state.links.get(&to).cloned() else {
        sent(
            state,
            to,
            size,
            snapshot,
            Err("no link to this replica".into()),
        );
        return;
    };
    let me = state.myself.clone();
    if size <= CHUNK_BYTES {
        tokio::spawn(async move {
            let result = one(
                &link,
                Message::Raft(RaftBytes { to, bytes }),
                RAFT_SEND_TIMEOUT,
            )
            .await;
            let _ = me.cast(ControllerMsg::Sent {
                to,
                bytes: size,
                snapshot,
                result,
            });
        });
        return;
    }
    let s = &mut state.sending;
    s.next_transfer += 1;
    s.transfers_started += 1;
    let chunks = transfer::split(state.cfg.id, to, s.next_transfer, &bytes, CHUNK_BYTES);
    drop(bytes);
    tracing::info!(
        to,
        bytes = size,
        chunks = chunks.len(),
        "sending a raft message in chunks"
    );
    let task = tokio::spawn(async move {
        let result = chunked(&link, chunks).await;
        let _ = me.cast(ControllerMsg::Sent {
            to,
            bytes: size,
            snapshot,
            result,
        });
    });
    if let Some(old) = s.transfers.insert(to, task.abort_handle()) {
        old.abort();
    }
}

async fn one(link: &Link, msg: Message, timeout: Duration) -> Result<(), String> {
    match link.request(msg, timeout).await {
        Ok(Message::Ack(a)) if a.ok => Ok(()),
        Ok(Message::Ack(a)) => Err(format!("refused: {}", a.detail)),
        Ok(other) => Err(format!("answered with {}", other.kind())),
        Err(e) => Err(e.to_string()),
    }
}

async fn chunked(link: &Arc<Link>, chunks: Vec<keel_model::RaftChunk>) -> Result<(), String> {
    let n = chunks.len();
    for c in chunks {
        let i = c.index;
        one(link, Message::RaftChunk(c), CHUNK_TIMEOUT)
            .await
            .map_err(|e| format!("chunk {i} of {n}: {e}"))?;
    }
    Ok(())
}

/// What became of a Raft message: raft learns of a failure (and of a
/// snapshot's fate), the operator of a failure at `warn`.
pub fn sent(
    state: &mut ControllerState,
    to: u64,
    bytes: usize,
    snapshot: bool,
    result: Result<(), String>,
) {
    match result {
        Ok(()) => {
            if snapshot {
                tracing::info!(to, bytes, "snapshot delivered");
                state.node.report_snapshot(to, true);
            }
        }
        Err(error) => {
            state.sending.failed += 1;
            if let Some(suppressed) = state.sending.warnings.allow(to, Instant::now()) {
                tracing::warn!(
                    to,
                    bytes,
                    snapshot,
                    suppressed,
                    failed_total = state.sending.failed,
                    "raft message not delivered: {error}"
                );
            }
            state.node.report_unreachable(to);
            if snapshot {
                state.node.report_snapshot(to, false);
            }
        }
    }
    if snapshot {
        state.sending.transfers.remove(&to);
    }
}

/// Takes one chunk of a large Raft message; steps the message once whole.
pub fn take_chunk(state: &mut ControllerState, c: RaftChunk) -> Result<(), String> {
    if c.to != state.cfg.id {
        return Err(format!(
            "chunk for replica {}, this is {}",
            c.to, state.cfg.id
        ));
    }
    let from = c.from;
    match state.chunks.push(from, c) {
        Ok(None) => Ok(()),
        Ok(Some(bytes)) => match keel_consensus::node::decode_message(&bytes) {
            Ok(m) => {
                tracing::info!(
                    from,
                    bytes = bytes.len(),
                    "large raft message received whole"
                );
                state.node.step(m);
                Ok(())
            }
            Err(e) => Err(format!("reassembled raft message undecodable: {e}")),
        },
        Err(e) => {
            tracing::warn!(
                from,
                refused_total = state.chunks.refused,
                "raft chunk refused: {e}"
            );
            Err(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_rate_limited_per_peer() {
        let mut w = Warnings::default();
        let t0 = Instant::now();
        assert_eq!(w.allow(2, t0), Some(0));
        assert_eq!(w.allow(2, t0 + Duration::from_secs(1)), None);
        assert_eq!(w.allow(2, t0 + Duration::from_secs(2)), None);
        assert_eq!(w.allow(3, t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(w.allow(2, t0 + WARN_EVERY), Some(2));
        assert_eq!(w.allow(2, t0 + WARN_EVERY + Duration::from_secs(1)), None);
    }
}
