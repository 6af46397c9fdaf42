//! Framing, without I/O: a u32 big-endian length, then that many bytes of
//! MessagePack. The decoder takes whatever chunks a stream hands it and yields
//! whole frames, so the same code serves every stream and is fuzzed on its own.
//! A frame error is final for its stream: after one, the decoder yields that
//! error again rather than guess where the next frame starts.

use keel_model::Envelope;
use thiserror::Error;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Default largest payload a peer may announce. Big enough for a telemetry batch
/// of thousands of summaries; small enough that a lying header costs little.
pub const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("oversize frame: {len} bytes announced, at most {max} allowed")]
    Oversize { len: usize, max: usize },
    #[error("truncated frame: stream ended with {have} of {need} bytes")]
    Truncated { have: usize, need: usize },
    #[error("undecodable frame: {0}")]
    Undecodable(String),
}

impl FrameError {
    /// The refusal this error counts as.
    pub fn reason(&self) -> crate::RefusalReason {
        match self {
            FrameError::Oversize { .. } => crate::RefusalReason::OversizeFrame,
            FrameError::Truncated { .. } | FrameError::Undecodable(_) => {
                crate::RefusalReason::BadFrame
            }
        }
    }
}

/// Append one frame holding `payload` to `out`.
pub fn encode_frame(payload: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), FrameError> {
    if payload.len() > max {
        return Err(FrameError::Oversize {
            len: payload.len(),
            max,
        });
    }
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Encode an envelope as one frame (named fields, so newer peers may add some).
pub fn encode_envelope(env: &Envelope, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&[0; HEADER_LEN]);
    rmp_serde::encode::write_named(&mut out, env)
        .map_err(|e| FrameError::Undecodable(e.to_string()))?;
    let len = out.len() - HEADER_LEN;
    if len > max {
        return Err(FrameError::Oversize { len, max });
    }
    out[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Decode one frame's payload; an unknown message kind is an error here.
pub fn decode_envelope(payload: &[u8]) -> Result<Envelope, FrameError> {
    rmp_serde::from_slice(payload).map_err(|e| FrameError::Undecodable(e.to_string()))
}

/// Reassembles frames from the chunks a stream delivers.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`; compacting lazily keeps pushes cheap.
    start: usize,
    max: usize,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            max,
            failed: None,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole frame's payload, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let pending = &self.buf[self.start..];
        if pending.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
        if len > self.max {
            let e = FrameError::Oversize { len, max: self.max };
            self.failed = Some(e.clone());
            self.buf = Vec::new();
            self.start = 0;
            return Err(e);
        }
        if pending.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let frame = pending[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.start += HEADER_LEN + len;
        Ok(Some(frame))
    }

    /// The stream has ended: anything left over is a truncated frame.
    pub fn finish(&mut self) -> Result<(), FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let pending = &self.buf[self.start..];
        if pending.is_empty() {
            return Ok(());
        }
        let need = if pending.len() < HEADER_LEN {
            HEADER_LEN
        } else {
            HEADER_LEN
                + u32::from_be_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize
        };
        let e = FrameError::Truncated {
            have: pending.len(),
            need,
        };
        self.failed = Some(e.clone());
        Err(e)
    }

    /// Bytes held, waiting for the rest of a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_model::{Message, Summary, TelemetryBatch};
    use proptest::prelude::*;

    fn summary(i: u32) -> Summary {
        Summary {
            node: "node-0017".into(),
            job: "job-42".into(),
            rank: i % 64,
            window: 7,
            window_end: 1_700_000_000.5 + i as f64,
            count: 120,
            step_us: 33_000,
            dur_p50_us: 8_400,
            dur_p99_us: 31_000,
            offset_us: 0,
        }
    }

    #[test]
    fn frames_split_across_chunks_reassemble() {
        let a = encode_envelope(&Envelope::new("s1", Message::Ping), MAX_FRAME).unwrap();
        let b = encode_envelope(&Envelope::new("s1", Message::Pong), MAX_FRAME).unwrap();
        let bytes = [a, b].concat();
        let mut d = FrameDecoder::new(MAX_FRAME);
        let mut got = Vec::new();
        for byte in &bytes {
            d.push(std::slice::from_ref(byte));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(decode_envelope(&f).unwrap().msg);
            }
        }
        d.finish().unwrap();
        assert_eq!(got, vec![Message::Ping, Message::Pong]);
    }

    #[test]
    fn an_oversize_header_is_refused_before_its_body_arrives() {
        let mut d = FrameDecoder::new(1024);
        d.push(&2048u32.to_be_bytes());
        assert_eq!(
            d.next_frame(),
            Err(FrameError::Oversize {
                len: 2048,
                max: 1024
            })
        );
        d.push(&[0; 100]);
        assert!(d.next_frame().is_err(), "a failed stream stays failed");
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn a_stream_ending_mid_frame_is_truncated() {
        let mut d = FrameDecoder::new(MAX_FRAME);
        d.push(&[0, 0, 0, 10, 1, 2]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated { have: 6, need: 14 }));
    }

    #[test]
    fn an_unknown_message_kind_fails_to_decode_and_names_it() {
        #[derive(serde::Serialize)]
        enum Future {
            #[serde(rename = "teleport")]
            Teleport { to: String },
        }
        #[derive(serde::Serialize)]
        struct Env {
            version: u16,
            from: String,
            msg: Future,
        }
        let bytes = rmp_serde::to_vec_named(&Env {
            version: 2,
            from: "x".into(),
            msg: Future::Teleport { to: "mars".into() },
        })
        .unwrap();
        let err = decode_envelope(&bytes).unwrap_err().to_string();
        assert!(err.contains("teleport"), "{err}");
    }

    #[test]
    fn a_newer_peer_may_add_fields() {
        #[derive(serde::Serialize)]
        struct Env {
            version: u16,
            from: String,
            msg: Message,
            trace_id: u64,
        }
        let bytes = rmp_serde::to_vec_named(&Env {
            version: 2,
            from: "x".into(),
            msg: Message::Ping,
            trace_id: 9,
        })
        .unwrap();
        assert_eq!(decode_envelope(&bytes).unwrap().msg, Message::Ping);
    }

    #[test]
    fn a_summary_is_about_64_bytes_on_the_wire() {
        let n = 1000;
        let batch = Message::Telemetry(TelemetryBatch {
            summaries: (0..n).map(summary).collect(),
            metrics: Vec::new(),
            requests: Vec::new(),
        });
        let frame = encode_envelope(&Envelope::new("s1", batch.clone()), MAX_FRAME).unwrap();
        let per = frame.len() / n as usize;
        assert!((56..=72).contains(&per), "{per} bytes per summary");
        let back = decode_envelope(&frame[HEADER_LEN..]).unwrap();
        assert_eq!(back.msg, batch);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16),
            max in 0usize..256,
        ) {
            let mut d = FrameDecoder::new(max);
            for c in &chunks {
                d.push(c);
                while let Ok(Some(f)) = d.next_frame() {
                    prop_assert!(f.len() <= max);
                    let _ = decode_envelope(&f);
                }
            }
            let _ = d.finish();
        }

        #[test]
        fn arbitrary_payloads_never_panic_the_envelope_decoder(
            payload in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let _ = decode_envelope(&payload);
        }
    }
}
