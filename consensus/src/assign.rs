//! Which correlator host holds which job: rendezvous (highest random weight)
//! hashing over the hosts alive now.
//!
//! Every replica computes the same answer from the same host list, with no
//! coordination: a job goes to the host with the highest hash of
//! (host, job). When a host disappears only its own jobs move (each to the
//! host that was its runner-up), and a host that joins takes about its fair
//! share from every other host.

/// The host for `job` among `hosts` (any order); `None` with no host.
pub fn assign<'a>(job: &str, hosts: &[&'a str]) -> Option<&'a str> {
    hosts
        .iter()
        .copied()
        .max_by_key(|host| (weight(host, job), *host))
}

/// FNV-1a over `host`, a separator and `job`, finished with a 64-bit mixer
/// so that hosts with similar names still spread evenly. Stable across
/// builds and machines, unlike `std`'s randomly keyed hasher.
fn weight(host: &str, job: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.bytes().chain([0xff]).chain(job.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs() -> Vec<String> {
        (0..1000).map(|i| format!("job-{i}")).collect()
    }

    #[test]
    fn no_host_no_assignment() {
        assert_eq!(assign("job-1", &[]), None);
    }

    #[test]
    fn order_of_hosts_does_not_matter() {
        for j in jobs() {
            assert_eq!(assign(&j, &["a", "b", "c"]), assign(&j, &["c", "a", "b"]));
        }
    }

    #[test]
    fn jobs_spread_over_hosts() {
        let hosts = ["corr-1", "corr-2", "corr-3"];
        let mut count = [0usize; 3];
        for j in jobs() {
            let h = assign(&j, &hosts).unwrap();
            count[hosts.iter().position(|x| *x == h).unwrap()] += 1;
        }
        for c in count {
            assert!((250..420).contains(&c), "{count:?}");
        }
    }

    #[test]
    fn a_lost_host_moves_only_its_own_jobs() {
        let all = ["corr-1", "corr-2", "corr-3"];
        let left = ["corr-1", "corr-3"];
        let mut moved = 0;
        for j in jobs() {
            let before = assign(&j, &all).unwrap();
            let after = assign(&j, &left).unwrap();
            if before != "corr-2" {
                assert_eq!(before, after, "{j} moved though its host stayed");
            } else {
                moved += 1;
            }
        }
        assert!(moved > 0);
    }
}
