//! Bounded queues in front of actors' mailboxes.
//!
//! ractor's mailboxes (0.15) are unbounded, so an actor slower than what
//! flows into it would grow without limit. Telemetry that comes from
//! outside goes through a [`DropOldest`] queue instead: a producer never
//! waits, and when the queue is full the oldest item goes and is counted
//! (fresh readings matter more than stale ones). One forwarder task moves
//! items from the queue into the actor and waits until the actor has
//! handled each before taking the next, so the mailbox itself holds at
//! most one telemetry message. Control paths do the opposite: they wait
//! (a bounded `tokio::sync::mpsc` or a semaphore), which pushes back on
//! the peer through the transport.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, Notify};

/// Sent (or dropped) by an actor once it has handled a forwarded item.
pub type Done = oneshot::Sender<()>;

/// Spawns the task that hands `queue`'s items to `actor` one at a time,
/// each as `wrap(item, done)`, waiting for `done` before the next: the
/// actor's mailbox holds one such message at most. Ends once the queue is
/// closed and empty, or the actor is gone.
pub fn forward<T, M>(
    queue: Arc<DropOldest<T>>,
    actor: ractor::ActorRef<M>,
    wrap: impl Fn(T, Done) -> M + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    T: Send + 'static,
    M: ractor::Message,
{
    tokio::spawn(async move {
        while let Some(item) = queue.pop().await {
            let (done, handled) = oneshot::channel();
            if actor.cast(wrap(item, done)).is_err() {
                queue.close();
                return;
            }
            let _ = handled.await;
        }
    })
}

/// A bounded multi-producer queue that drops its oldest item when full.
#[derive(Debug)]
pub struct DropOldest<T> {
    items: Mutex<(VecDeque<T>, bool)>,
    ready: Notify,
    bound: usize,
    dropped: AtomicU64,
}

impl<T> DropOldest<T> {
    /// An empty queue that holds at most `bound` items (at least one).
    pub fn new(bound: usize) -> DropOldest<T> {
        DropOldest {
            items: Mutex::new((VecDeque::new(), false)),
            ready: Notify::new(),
            bound: bound.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues `item`, dropping (and counting) the oldest when full. Never
    /// waits. Returns false once the queue is closed (the item is dropped).
    pub fn push(&self, item: T) -> bool {
        {
            let mut q = self.items.lock().unwrap_or_else(|e| e.into_inner());
            if q.1 {
                return false;
            }
            if q.0.len() >= self.bound {
                q.0.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.0.push_back(item);
        }
        self.ready.notify_one();
        true
    }

    /// The oldest item, waiting for one; `None` once closed and empty.
    pub async fn pop(&self) -> Option<T> {
        loop {
            let notified = self.ready.notified();
            {
                let mut q = self.items.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(item) = q.0.pop_front() {
                    return Some(item);
                }
                if q.1 {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// No more items are taken; those queued can still be popped.
    pub fn close(&self) {
        self.items.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.ready.notify_waiters();
        self.ready.notify_one();
    }

    /// Items dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.items.lock().unwrap_or_else(|e| e.into_inner()).0.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most items held.
    pub fn bound(&self) -> usize {
        self.bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_full_queue_drops_its_oldest_and_counts() {
        let q = DropOldest::new(3);
        for i in 0..5 {
            assert!(q.push(i));
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.dropped(), 2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let got: Vec<i32> = rt.block_on(async {
            let mut v = Vec::new();
            while !q.is_empty() {
                v.push(q.pop().await.unwrap());
            }
            v
        });
        assert_eq!(got, [2, 3, 4]);
    }

    #[test]
    fn pop_waits_for_a_push_and_ends_when_closed() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let q = Arc::new(DropOldest::new(8));
            let q2 = q.clone();
            let taker = tokio::spawn(async move {
                let mut v = Vec::new();
                while let Some(x) = q2.pop().await {
                    v.push(x);
                }
                v
            });
            tokio::task::yield_now().await;
            q.push(1);
            q.push(2);
            tokio::task::yield_now().await;
            q.close();
            assert!(!q.push(3));
            assert_eq!(taker.await.unwrap(), [1, 2]);
        });
    }
}
