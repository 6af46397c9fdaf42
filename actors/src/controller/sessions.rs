//! Client sessions for the proposals a replica makes on a peer's behalf (a
//! sensor's job, a correlator's finding, an operator's command).
//!
//! Each (prefix, peer) gets one session per boot of this replica, named
//! `"{prefix}/{peer}@{replica}.{boot nonce}"`, with sequence numbers from 1
//! up: the replicated state answers a duplicate (client, seq) with its first
//! outcome and refuses one older than the session's window as stale, so a
//! session must never hand out a number twice. A restart draws a new nonce
//! (a new session); so does filling [`SESSIONS_KEPT`], after which every
//! counter starts again under the new nonce.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

/// Sessions (prefix, peer) this replica keeps counters for; past this, it
/// draws a new nonce and starts afresh.
pub const SESSIONS_KEPT: usize = 65_536;

pub struct Sessions {
    replica: u64,
    nonce: u64,
    counters: HashMap<(&'static str, String), u64>,
    /// How many times the counters were started afresh (a new nonce).
    pub renewed: u64,
}

/// A random 64-bit number, different on every call and every boot (the
/// standard library seeds its hashers from the operating system).
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}

impl Sessions {
    pub fn new(replica: u64) -> Sessions {
        Sessions::with_nonce(replica, random_u64())
    }

    pub fn with_nonce(replica: u64, nonce: u64) -> Sessions {
        Sessions {
            replica,
            nonce,
            counters: HashMap::new(),
            renewed: 0,
        }
    }

    /// The (client, seq) for the next proposal made for `peer` under `prefix`.
    pub fn next(&mut self, prefix: &'static str, peer: &str) -> (String, u64) {
        let key = (prefix, peer.to_string());
        if !self.counters.contains_key(&key) && self.counters.len() >= SESSIONS_KEPT {
            self.counters.clear();
            self.nonce = self.nonce.wrapping_add(random_u64() | 1);
            self.renewed += 1;
        }
        let seq = self.counters.entry(key).or_insert(0);
        *seq += 1;
        (
            format!("{prefix}/{peer}@{}.{:016x}", self.replica, self.nonce),
            *seq,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_peer_counts_from_one_in_its_own_session() {
        let mut s = Sessions::with_nonce(2, 0xab);
        assert_eq!(
            s.next("jobs", "n1"),
            ("jobs/n1@2.00000000000000ab".into(), 1)
        );
        assert_eq!(s.next("jobs", "n1").1, 2);
        assert_eq!(s.next("jobs", "n2").1, 1);
        assert_eq!(s.next("findings", "n1").1, 1);
        // Far past the state machine's window, still never a number twice.
        let seqs: Vec<u64> = (0..5_000).map(|_| s.next("jobs", "n1").1).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    }

    #[test]
    fn a_full_table_starts_afresh_under_a_new_nonce() {
        let mut s = Sessions::with_nonce(1, 7);
        let (first, _) = s.next("jobs", "p0");
        for i in 1..SESSIONS_KEPT {
            s.next("jobs", &format!("p{i}"));
        }
        assert_eq!(s.renewed, 0);
        let (client, seq) = s.next("jobs", "one-more");
        assert_eq!(s.renewed, 1);
        assert_eq!(seq, 1);
        let (again, seq) = s.next("jobs", "p0");
        assert_eq!(seq, 1);
        assert_ne!(again, first, "a restarted counter is a new session");
        assert!(client.ends_with(&again[again.find('@').unwrap()..]));
    }

    #[test]
    fn two_boots_are_two_sessions() {
        assert_ne!(
            Sessions::new(1).next("jobs", "a"),
            Sessions::new(1).next("jobs", "a")
        );
    }
}
