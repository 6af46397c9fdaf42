//! The reorder window of trace replay: records written up to a few seconds
//! out of order come out in time order, file order among equal times.
//!
//! Two lanes. Records that arrive in order (nearly all of them) are
//! appended to a deque in O(1). A record older than the deque's newest goes
//! to a min-heap instead: inserting it into the deque would move every
//! record after it, and a trace's window holds tens of thousands of records
//! (measured: a few hundred late records in 300,000 cost more than parsing
//! them all). Each release takes the earlier of the two lanes' heads.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

/// One record waiting, with its time (s) and its place in the file.
struct Held<T> {
    ts: f64,
    seq: u64,
    item: T,
}

impl<T> Held<T> {
    fn key(&self) -> (f64, u64) {
        (self.ts, self.seq)
    }
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Held<T> {}
impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Held<T> {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        other.ts.total_cmp(&self.ts).then(other.seq.cmp(&self.seq))
    }
}

/// Holds records until none earlier can still arrive.
pub(crate) struct Reorder<T> {
    window_s: f64,
    in_order: VecDeque<Held<T>>,
    late: BinaryHeap<Held<T>>,
    seq: u64,
    newest: f64,
    released: f64,
}

impl<T> Reorder<T> {
    /// Holds each record until one `window_s` seconds newer has been pushed.
    pub(crate) fn new(window_s: f64) -> Self {
        Reorder {
            window_s,
            in_order: VecDeque::new(),
            late: BinaryHeap::new(),
            seq: 0,
            newest: f64::NEG_INFINITY,
            released: f64::NEG_INFINITY,
        }
    }

    /// Takes a record stamped `ts` (finite, s). One older than a record
    /// already released cannot be put in its place any more: it is handed
    /// back (`Err`) to be passed on as it is.
    pub(crate) fn push(&mut self, ts: f64, item: T) -> Result<(), T> {
        if ts < self.released {
            return Err(item);
        }
        self.newest = self.newest.max(ts);
        self.seq += 1;
        let held = Held {
            ts,
            seq: self.seq,
            item,
        };
        if self.in_order.back().is_none_or(|b| b.ts <= ts) {
            self.in_order.push_back(held);
        } else {
            self.late.push(held);
        }
        Ok(())
    }

    /// Which lane holds the earliest record: `Some(true)` the heap.
    pub(crate) fn earliest(&self) -> Option<bool> {
        match (self.in_order.front(), self.late.peek()) {
            (None, None) => None,
            (Some(_), None) => Some(false),
            (None, Some(_)) => Some(true),
            (Some(a), Some(b)) => Some(b.key() < a.key()),
        }
    }

    /// Takes the head of a lane (`from_late`: the heap) out.
    pub(crate) fn pop(&mut self, from_late: bool) -> Option<T> {
        let held = if from_late {
            self.late.pop()?
        } else {
            self.in_order.pop_front()?
        };
        self.released = self.released.max(held.ts);
        Some(held.item)
    }

    /// The lane of the earliest record, if that record is at least the
    /// window older than the newest pushed.
    pub(crate) fn ready_lane(&self) -> Option<bool> {
        let late = self.earliest()?;
        let ts = if late {
            self.late.peek()?.ts
        } else {
            self.in_order.front()?.ts
        };
        (ts <= self.newest - self.window_s).then_some(late)
    }

    /// The head of a lane (`late`: the heap), where it lies.
    pub(crate) fn head(&self, late: bool) -> Option<&T> {
        if late {
            self.late.peek().map(|h| &h.item)
        } else {
            self.in_order.front().map(|h| &h.item)
        }
    }

    /// Records held, both lanes.
    pub(crate) fn len(&self) -> usize {
        self.in_order.len() + self.late.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// What comes out is what went in, in time order and file order
        /// among equal times, for any input within the window; a record
        /// beyond it is handed back, never lost.
        #[test]
        fn releases_in_stable_time_order(steps in prop::collection::vec((0u32..40, -8i32..2, any::<bool>()), 0..300)) {
            let mut r = Reorder::new(5.0);
            let mut t = 0.0f64;
            let mut out = Vec::new();
            let mut back = Vec::new();
            let mut pushed = Vec::new();
            // Each release either moves the record out or reads it where
            // it lies and then drops it: both give the same.
            let release = |r: &mut Reorder<(f64, usize)>, late: bool, lend: bool| {
                if lend {
                    let x = *r.head(late).unwrap();
                    r.pop(late);
                    x
                } else {
                    r.pop(late).unwrap()
                }
            };
            for (i, (tick, jitter, lend)) in steps.iter().enumerate() {
                t += f64::from(*tick) / 10.0;
                let ts = t + f64::from(*jitter);
                pushed.push((ts, i));
                if let Err(x) = r.push(ts, (ts, i)) {
                    back.push(x);
                }
                while let Some(late) = r.ready_lane() {
                    out.push(release(&mut r, late, *lend));
                }
            }
            while let Some(late) = r.earliest() {
                out.push(release(&mut r, late, out.len() % 2 == 0));
            }
            prop_assert_eq!(out.len() + back.len(), pushed.len());
            for w in out.windows(2) {
                prop_assert!(w[0].0 < w[1].0 || (w[0].0 == w[1].0 && w[0].1 < w[1].1), "{:?}", w);
            }
            if back.is_empty() {
                let mut want = pushed.clone();
                want.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                prop_assert_eq!(out, want);
            }
        }
    }
}
