//! The routing index's sets and how a delta is cut from them.

use super::{Delta, Live, Routing};
use keel_model::Name;
use std::collections::{BTreeMap, HashMap};

/// Jobs in one set (a host's, a node's), by the version of their
/// last change.
#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) at: HashMap<Name, u64>,
    pub(super) by_version: BTreeMap<u64, Name>,
}

impl Index {
    pub(super) fn put(&mut self, job: &Name, version: u64) {
        if let Some(old) = self.at.insert(job.clone(), version) {
            self.by_version.remove(&old);
        }
        self.by_version.insert(version, job.clone());
    }

    pub(super) fn remove(&mut self, job: &Name) {
        if let Some(old) = self.at.remove(job) {
            self.by_version.remove(&old);
        }
    }
}

/// Which set a delta is about.
pub(super) enum Set<'a> {
    Host(&'a str),
    Node(&'a str),
}

impl Routing {
    pub(super) fn delta<T>(
        &self,
        set: Set<'_>,
        epoch: Option<u64>,
        since: u64,
        budget: usize,
        item: impl Fn(&Live) -> T,
        cost: impl Fn(&T) -> usize,
    ) -> Delta<T> {
        let reset = epoch != Some(self.epoch) || since < self.horizon || since > self.version;
        let since = if reset { 0 } else { since };
        let index = match set {
            Set::Host(h) => self.by_host.get(h),
            Set::Node(n) => self.by_node.get(n),
        };
        let mut changed = index
            .map(|i| i.by_version.range(since + 1..))
            .into_iter()
            .flatten()
            .peekable();
        let first = self.removals.partition_point(|r| r.version <= since);
        let mut removals = self
            .removals
            .range(first..)
            .filter(|r| {
                !reset
                    && match set {
                        Set::Host(h) => r.host.as_deref() == Some(h),
                        Set::Node(n) => r.nodes.iter().any(|m| m == n),
                    }
                    && !index.is_some_and(|i| i.at.contains_key(&r.job))
            })
            .peekable();
        let mut out = Delta {
            epoch: self.epoch,
            version: self.version,
            reset,
            more: false,
            changed: Vec::new(),
            removed: Vec::new(),
        };
        let mut used = 0usize;
        loop {
            let next_change = changed.peek().map(|(v, _)| **v);
            let next_removal = removals.peek().map(|r| r.version);
            let version = match (next_change, next_removal) {
                (None, None) => break,
                (Some(c), Some(r)) => c.min(r),
                (Some(c), None) => c,
                (None, Some(r)) => r,
            };
            if used >= budget {
                out.more = true;
                // Everything up to the last item given is given.
                out.version = version - 1;
                break;
            }
            if next_change == Some(version) {
                if let Some((_, job)) = changed.next() {
                    if let Some(l) = self.jobs.get(job) {
                        let t = item(l);
                        used += cost(&t);
                        out.changed.push(t);
                    }
                }
            } else if let Some(r) = removals.next() {
                used += r.job.len() + 4;
                out.removed.push(r.job.clone());
            }
        }
        out
    }
}
