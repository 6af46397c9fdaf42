//! The telemetry class: sensor summaries, batched, never blocking the sender.
//! A bounded queue sits between the sensor and the wire; when the wire cannot
//! keep up (a slow correlator, a lost link), the oldest summaries go first,
//! since a fresher window says more than a stale one, and every drop is counted.

use crate::Stats;
use keel_model::{MetricSample, RequestRecord, Summary};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Default queue bound, in summaries (about 6 MB of summaries).
pub const QUEUE_CAPACITY: usize = 100_000;
/// Queue bound for readings: a few thousand series a node.
pub const METRICS_CAPACITY: usize = 10_000;
/// Queue bound for serving events: seconds of a busy server's requests.
pub const REQUESTS_CAPACITY: usize = 50_000;
/// Default summaries per batch: about 64 KB on the wire.
pub const BATCH_MAX: usize = 1024;

/// A bounded FIFO that drops its oldest entry to make room. No I/O, no locks.
#[derive(Debug)]
pub struct DropOldest<T> {
    items: VecDeque<T>,
    capacity: usize,
    dropped: u64,
}

impl<T> DropOldest<T> {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        DropOldest {
            items: VecDeque::with_capacity(capacity.min(4096)),
            capacity,
            dropped: 0,
        }
    }

    /// Add one item; returns how many old items were dropped to fit it (0 or 1).
    pub fn push(&mut self, item: T) -> u64 {
        let mut dropped = 0;
        if self.items.len() >= self.capacity {
            self.items.pop_front();
            dropped = 1;
        }
        self.items.push_back(item);
        self.dropped += dropped;
        dropped
    }

    /// Up to `max` items from the front, oldest first.
    pub fn take(&mut self, max: usize) -> Vec<T> {
        let n = max.min(self.items.len());
        self.items.drain(..n).collect()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// The sending half a sensor holds. Cloning shares the queue.
#[derive(Clone)]
pub struct TelemetrySender {
    pub(crate) queue: Arc<Mutex<DropOldest<Summary>>>,
    /// The node's readings ride the same stream, in their own bounded
    /// queue, so that a flood of summaries never pushes them out.
    pub(crate) metrics: Arc<Mutex<DropOldest<MetricSample>>>,
    /// Serving events, in a bounded queue of their own.
    pub(crate) requests: Arc<Mutex<DropOldest<RequestRecord>>>,
    pub(crate) ready: Arc<Notify>,
    pub(crate) stats: Arc<Stats>,
}

impl TelemetrySender {
    pub fn new(capacity: usize, stats: Arc<Stats>) -> Self {
        TelemetrySender {
            queue: Arc::new(Mutex::new(DropOldest::new(capacity))),
            metrics: Arc::new(Mutex::new(DropOldest::new(METRICS_CAPACITY))),
            requests: Arc::new(Mutex::new(DropOldest::new(REQUESTS_CAPACITY))),
            ready: Arc::new(Notify::new()),
            stats,
        }
    }

    /// Queue one summary; never waits. Returns false if an older one was dropped.
    pub fn send(&self, s: Summary) -> bool {
        let dropped = match self.queue.lock() {
            Ok(mut q) => q.push(s),
            Err(poisoned) => poisoned.into_inner().push(s),
        };
        if dropped > 0 {
            self.stats
                .telemetry_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
        self.ready.notify_one();
        dropped == 0
    }

    /// Queue many at once, taking the lock once.
    pub fn send_all(&self, summaries: impl IntoIterator<Item = Summary>) {
        self.enqueue(&self.queue, summaries);
    }

    /// Queue readings (exporter samples, counters); never waits.
    pub fn send_metrics(&self, samples: impl IntoIterator<Item = MetricSample>) {
        self.enqueue(&self.metrics, samples);
    }

    /// Queue serving events; never waits.
    pub fn send_requests(&self, records: impl IntoIterator<Item = RequestRecord>) {
        self.enqueue(&self.requests, records);
    }

    /// Puts `items` on `queue` under one lock, counts what the bound
    /// pushed out (`telemetry_dropped`) and wakes the sender.
    fn enqueue<T>(&self, queue: &Mutex<DropOldest<T>>, items: impl IntoIterator<Item = T>) {
        let mut dropped = 0;
        {
            let mut q = match queue.lock() {
                Ok(q) => q,
                Err(p) => p.into_inner(),
            };
            for item in items {
                dropped += q.push(item);
            }
        }
        if dropped > 0 {
            self.stats
                .telemetry_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
        self.ready.notify_one();
    }

    pub(crate) fn take_requests(&self, max: usize) -> Vec<RequestRecord> {
        match self.requests.lock() {
            Ok(mut q) => q.take(max),
            Err(p) => p.into_inner().take(max),
        }
    }

    pub(crate) fn take_metrics(&self, max: usize) -> Vec<MetricSample> {
        match self.metrics.lock() {
            Ok(mut q) => q.take(max),
            Err(p) => p.into_inner().take(max),
        }
    }

    pub fn queued(&self) -> usize {
        self.queue.lock().map(|q| q.len()).unwrap_or(0)
    }

    pub(crate) fn take(&self, max: usize) -> Vec<Summary> {
        match self.queue.lock() {
            Ok(mut q) => q.take(max),
            Err(p) => p.into_inner().take(max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts() {
        let mut q = DropOldest::new(3);
        for i in 0..5 {
            q.push(i);
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.dropped(), 2);
        assert_eq!(q.take(10), vec![2, 3, 4]);
        assert!(q.is_empty());
    }

    #[test]
    fn take_returns_oldest_first_in_batches() {
        let mut q = DropOldest::new(10);
        for i in 0..7 {
            q.push(i);
        }
        assert_eq!(q.take(4), vec![0, 1, 2, 3]);
        assert_eq!(q.take(4), vec![4, 5, 6]);
    }
}
