//! Raft messages larger than a frame (snapshots, in practice), cut into
//! numbered chunks and put back together. Sans-IO: [`split`] turns one
//! encoded message into the chunks to send, and a [`Reassembler`] takes the
//! chunks a replica receives, in any order, duplicates included, and hands
//! back the whole message once every piece is there.
//!
//! Each sender has at most one transfer in flight: a chunk of a new transfer
//! from the same sender drops what was gathered of the old one (raft sends a
//! fresh snapshot after a failed one, never two at once). What one transfer
//! may hold is bounded by [`MAX_TRANSFER_BYTES`], and how many senders may
//! have one open at once by [`MAX_SENDERS`].

use keel_model::RaftChunk;
use std::collections::BTreeMap;
use thiserror::Error;

/// Bytes of message per chunk: with its envelope, a chunk stays far below
/// the transport's 1 MiB frame.
pub const CHUNK_BYTES: usize = 512 * 1024;

/// The largest message a replica reassembles (bytes): bounds the memory one
/// transfer may take. A snapshot larger than this cannot reach a replica.
pub const MAX_TRANSFER_BYTES: u64 = 1 << 30;

/// Senders that may have a transfer open at once; a new sender past this
/// drops the transfer that started longest ago.
pub const MAX_SENDERS: usize = 8;

/// Why a chunk was refused. The transfer it belonged to is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChunkError {
    #[error("transfer of {total} bytes exceeds the bound of {max} bytes")]
    Oversized { total: u64, max: u64 },
    #[error("chunk {index} of {count}: malformed ({why})")]
    Malformed {
        index: u32,
        count: u32,
        why: &'static str,
    },
    #[error("transfer {transfer}: chunk {index} disagrees with the transfer's count or length")]
    Inconsistent { transfer: u64, index: u32 },
    #[error("transfer {transfer}: pieces add up to {have} bytes, {total} announced")]
    Truncated {
        transfer: u64,
        have: u64,
        total: u64,
    },
}

/// Cuts one encoded message into chunks of at most `chunk` bytes (at least
/// one chunk, even for an empty message).
pub fn split(from: u64, to: u64, transfer: u64, bytes: &[u8], chunk: usize) -> Vec<RaftChunk> {
    let chunk = chunk.max(1);
    let count = bytes.len().div_ceil(chunk).max(1) as u32;
    (0..count)
        .map(|i| {
            let start = i as usize * chunk;
            let end = (start + chunk).min(bytes.len());
            RaftChunk {
                to,
                from,
                transfer,
                index: i,
                count,
                total: bytes.len() as u64,
                bytes: bytes[start.min(end)..end].to_vec(),
            }
        })
        .collect()
}

struct Transfer {
    id: u64,
    count: u32,
    total: u64,
    /// Pieces by number; duplicates are not kept twice.
    pieces: BTreeMap<u32, Vec<u8>>,
    have: u64,
    /// When it started, in transfers started here (for eviction).
    started: u64,
}

/// Puts chunked messages back together, one transfer per sender.
#[derive(Default)]
pub struct Reassembler {
    open: BTreeMap<u64, Transfer>,
    started: u64,
    /// Chunks refused (malformed, oversized, inconsistent).
    pub refused: u64,
    /// Incomplete transfers dropped: replaced by a newer one from the same
    /// sender, or evicted by [`MAX_SENDERS`].
    pub dropped: u64,
    /// Chunks received twice (ignored).
    pub duplicates: u64,
}

impl Reassembler {
    /// Takes one chunk from `sender`. `Ok(Some(bytes))` when it completed
    /// its message, `Ok(None)` while pieces are missing; an error drops the
    /// sender's transfer.
    pub fn push(&mut self, sender: u64, c: RaftChunk) -> Result<Option<Vec<u8>>, ChunkError> {
        let r = self.accept(sender, c);
        if r.is_err() {
            self.refused += 1;
            if self.open.remove(&sender).is_some() {
                self.dropped += 1;
            }
        }
        r
    }

    /// Bytes held for incomplete transfers.
    pub fn buffered(&self) -> u64 {
        self.open.values().map(|t| t.have).sum()
    }

    /// Senders with a transfer under way.
    pub fn in_flight(&self) -> usize {
        self.open.len()
    }

    fn accept(&mut self, sender: u64, c: RaftChunk) -> Result<Option<Vec<u8>>, ChunkError> {
        let malformed = |why| ChunkError::Malformed {
            index: c.index,
            count: c.count,
            why,
        };
        if c.total > MAX_TRANSFER_BYTES {
            return Err(ChunkError::Oversized {
                total: c.total,
                max: MAX_TRANSFER_BYTES,
            });
        }
        if c.count == 0 || c.index >= c.count {
            return Err(malformed("index out of range"));
        }
        // Every piece but an empty message's only one holds a byte at least,
        // so `count` pieces never outnumber the bytes announced.
        if u64::from(c.count) > c.total.max(1) || (c.bytes.is_empty() && c.total > 0) {
            return Err(malformed("more pieces than bytes"));
        }
        if c.bytes.len() as u64 > c.total {
            return Err(malformed("piece longer than the message"));
        }
        if self.open.get(&sender).is_some_and(|t| t.id != c.transfer) {
            self.open.remove(&sender);
            self.dropped += 1;
        }
        if !self.open.contains_key(&sender) && self.open.len() >= MAX_SENDERS {
            if let Some(oldest) = self
                .open
                .iter()
                .min_by_key(|(_, t)| t.started)
                .map(|(k, _)| *k)
            {
                self.open.remove(&oldest);
                self.dropped += 1;
            }
        }
        self.started += 1;
        let started = self.started;
        let t = self.open.entry(sender).or_insert_with(|| Transfer {
            id: c.transfer,
            count: c.count,
            total: c.total,
            pieces: BTreeMap::new(),
            have: 0,
            started,
        });
        if t.count != c.count || t.total != c.total {
            return Err(ChunkError::Inconsistent {
                transfer: c.transfer,
                index: c.index,
            });
        }
        if t.pieces.contains_key(&c.index) {
            self.duplicates += 1;
            return Ok(None);
        }
        let have = t.have + c.bytes.len() as u64;
        if have > t.total {
            return Err(ChunkError::Truncated {
                transfer: c.transfer,
                have,
                total: t.total,
            });
        }
        t.have = have;
        t.pieces.insert(c.index, c.bytes);
        if t.pieces.len() < t.count as usize {
            return Ok(None);
        }
        let t = self.open.remove(&sender).expect("the transfer is open");
        if t.have != t.total {
            return Err(ChunkError::Truncated {
                transfer: t.id,
                have: t.have,
                total: t.total,
            });
        }
        let mut whole = Vec::with_capacity(t.total as usize);
        for piece in t.pieces.into_values() {
            whole.extend_from_slice(&piece);
        }
        Ok(Some(whole))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn chunks_in_order_make_the_message() {
        let m = message(10_000);
        let chunks = split(1, 2, 7, &m, 1024);
        assert_eq!(chunks.len(), 10);
        let mut r = Reassembler::default();
        let mut out = None;
        for c in chunks {
            assert!(out.is_none(), "completed early");
            out = r.push(1, c).unwrap();
        }
        assert_eq!(out, Some(m));
        assert_eq!(r.in_flight(), 0);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn chunks_out_of_order_and_duplicated_make_the_message_once() {
        let m = message(5_000);
        let mut chunks = split(1, 2, 7, &m, 700);
        chunks.reverse();
        let again = chunks[2].clone();
        chunks.insert(4, again);
        let mut r = Reassembler::default();
        let done: Vec<Vec<u8>> = chunks
            .into_iter()
            .filter_map(|c| r.push(1, c).unwrap())
            .collect();
        assert_eq!(done, vec![m]);
        assert_eq!(r.duplicates, 1);
    }

    #[test]
    fn an_empty_message_is_one_empty_chunk() {
        let chunks = split(1, 2, 1, &[], 100);
        assert_eq!(chunks.len(), 1);
        let mut r = Reassembler::default();
        assert_eq!(r.push(1, chunks[0].clone()).unwrap(), Some(Vec::new()));
    }

    #[test]
    fn an_oversized_transfer_is_refused_before_anything_is_kept() {
        let mut c = split(1, 2, 1, &message(10), 4)[0].clone();
        c.total = MAX_TRANSFER_BYTES + 1;
        let mut r = Reassembler::default();
        assert!(matches!(r.push(1, c), Err(ChunkError::Oversized { .. })));
        assert_eq!(r.refused, 1);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn a_truncated_transfer_never_completes() {
        // Pieces that claim the announced count but hold fewer bytes.
        let m = message(100);
        let mut chunks = split(1, 2, 3, &m, 40);
        chunks[1].bytes.truncate(10);
        let mut r = Reassembler::default();
        assert_eq!(r.push(1, chunks[0].clone()), Ok(None));
        assert_eq!(r.push(1, chunks[1].clone()), Ok(None));
        assert!(matches!(
            r.push(1, chunks[2].clone()),
            Err(ChunkError::Truncated { .. })
        ));
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn pieces_longer_than_announced_are_refused() {
        let m = message(100);
        let mut chunks = split(1, 2, 3, &m, 40);
        chunks[0].bytes.extend_from_slice(&[0; 30]);
        let mut r = Reassembler::default();
        assert_eq!(r.push(1, chunks[0].clone()), Ok(None));
        assert!(matches!(
            r.push(1, chunks[1].clone()),
            Err(ChunkError::Truncated { have: 110, .. })
        ));
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn malformed_chunks_are_refused() {
        let good = split(1, 2, 3, &message(100), 40)[0].clone();
        let mut r = Reassembler::default();
        for bad in [
            RaftChunk {
                index: 3,
                ..good.clone()
            },
            RaftChunk {
                count: 0,
                ..good.clone()
            },
            RaftChunk {
                count: 1_000,
                index: 0,
                ..good.clone()
            },
            RaftChunk {
                bytes: Vec::new(),
                ..good.clone()
            },
        ] {
            assert!(r.push(1, bad).is_err());
        }
        assert_eq!(r.refused, 4);
        // A chunk whose count disagrees with its transfer's drops it.
        r.push(1, good.clone()).unwrap();
        let other = RaftChunk {
            index: 1,
            count: 2,
            total: 80,
            ..good
        };
        assert!(matches!(
            r.push(1, other),
            Err(ChunkError::Inconsistent { .. })
        ));
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn a_new_transfer_from_the_same_sender_replaces_the_old() {
        let old = split(1, 2, 1, &message(300), 100);
        let new_msg: Vec<u8> = message(250).into_iter().rev().collect();
        let new = split(1, 2, 2, &new_msg, 100);
        let mut r = Reassembler::default();
        r.push(1, old[0].clone()).unwrap();
        r.push(1, old[1].clone()).unwrap();
        assert_eq!(r.push(1, new[0].clone()), Ok(None));
        assert_eq!(r.dropped, 1);
        assert_eq!(r.buffered(), 100, "nothing of the old transfer is kept");
        assert_eq!(r.push(1, new[1].clone()), Ok(None));
        assert_eq!(r.push(1, new[2].clone()), Ok(Some(new_msg)));
    }

    #[test]
    fn senders_are_independent_and_bounded() {
        let mut r = Reassembler::default();
        let m = message(200);
        let firsts: Vec<RaftChunk> = (0..=MAX_SENDERS as u64)
            .map(|s| split(s, 99, 1, &m, 100)[0].clone())
            .collect();
        for (s, c) in firsts.iter().enumerate() {
            assert_eq!(r.push(s as u64, c.clone()), Ok(None));
        }
        assert_eq!(r.in_flight(), MAX_SENDERS);
        assert_eq!(r.dropped, 1, "the oldest sender's transfer made room");
        // Sender 1 (not evicted) completes; sender 0's was evicted.
        let second = split(1, 99, 1, &m, 100)[1].clone();
        assert_eq!(r.push(1, second), Ok(Some(m.clone())));
        let second0 = split(0, 99, 1, &m, 100)[1].clone();
        assert_eq!(r.push(0, second0), Ok(None));
    }
}
