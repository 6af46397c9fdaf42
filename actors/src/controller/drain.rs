//! Stopping a replica cleanly: requests under way are finished, new ones
//! refused.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Requests being answered, so that a stopping replica can finish them:
/// once `stop_taking` is called, new requests are refused and `idle` waits
/// for the ones under way.
#[derive(Default)]
pub struct Drain {
    stopping: AtomicBool,
    inflight: AtomicUsize,
    idle: Notify,
}

/// Counts one request under way while it lives.
pub struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    /// `None` once stopping: the request is to be refused.
    pub fn enter(self: &Arc<Self>) -> Option<InFlight> {
        if self.stopping.load(Ordering::SeqCst) {
            return None;
        }
        self.inflight.fetch_add(1, Ordering::SeqCst);
        Some(InFlight(self.clone()))
    }

    /// Refuses new requests from now on.
    pub fn stop_taking(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Requests under way.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Waits until no request is under way.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.inflight() == 0 {
                return;
            }
            notified.await;
        }
    }
}
