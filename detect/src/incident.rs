//! Findings that belong to one incident: a `network` straggler and the
//! saturation, retransmit storm or credit starvation of its own node's NIC;
//! a `pcie` straggler and its GPU's bus findings; a `host` straggler and its
//! node's CPU findings (and its GPU's skew, fed late by the host); a
//! `network_congestion` and the node-level network findings open with it
//! (and the `network` stragglers), which are its symptoms on the nodes the
//! engine sees. A finding concluded while a related one is open
//! names it (`Finding::related`); the controller resolves the name to the
//! open finding's id, so an operator sees one incident, not two alarms.

use keel_model::{Cause, Finding, FindingKind, Related};

/// Open findings remembered for linking, at most (oldest forgotten first).
pub const OPEN_MAX: usize = 4096;
/// Related findings one finding names, at most: the controller refuses a
/// finding that names more (`keel_consensus`'s `RELATED_MAX`).
pub const RELATED_MAX: usize = 16;

const NETWORK: &[FindingKind] = &[
    FindingKind::NicSaturation,
    FindingKind::RetransmitStorm,
    FindingKind::RdmaCreditStarvation,
    FindingKind::HeadOfLineBlocking,
    FindingKind::EgressBacklog,
    FindingKind::IngressBurstBacklog,
];
const PCIE: &[FindingKind] = &[
    FindingKind::H2dStarvation,
    FindingKind::D2hBacklog,
    FindingKind::IntraNodeGpuSkew,
    FindingKind::PcieSaturation,
];
const HOST: &[FindingKind] = &[FindingKind::HostCpuBottleneck, FindingKind::NoisyNeighbor];

/// Whether `a` (a straggler) is explained by `b`, or `b` by `a`.
fn related(a: &Finding, b: &Finding) -> bool {
    explains(a, b) || explains(b, a) || congested(a, b) || congested(b, a)
}

/// Whether `other` is a symptom of the fabric's `congestion`: a network
/// finding on one of the nodes its evidence names as strained (one line
/// `"{node}: ..."` each, `fabric.rs`).
fn congested(congestion: &Finding, other: &Finding) -> bool {
    let symptom = NETWORK.contains(&other.kind)
        || (other.kind == FindingKind::TpStraggler && other.cause == Cause::Network);
    congestion.kind == FindingKind::NetworkCongestion
        && symptom
        && other.node.as_ref().is_some_and(|n| {
            congestion.evidence.iter().any(|e| {
                e.strip_prefix(n.as_str())
                    .is_some_and(|r| r.starts_with(": "))
            })
        })
}

fn explains(straggler: &Finding, other: &Finding) -> bool {
    if straggler.kind != FindingKind::TpStraggler || straggler.node != other.node {
        return false;
    }
    match straggler.cause {
        Cause::Network => NETWORK.contains(&other.kind) && agree(&straggler.device, &other.device),
        Cause::Pcie => PCIE.contains(&other.kind) && agree(&straggler.gpu, &other.gpu),
        Cause::Host => {
            HOST.contains(&other.kind)
                || (other.kind == FindingKind::IntraNodeGpuSkew
                    && agree(&straggler.gpu, &other.gpu))
        }
        _ => false,
    }
}

/// Two optional fields agree unless both are known and differ.
fn agree<T: PartialEq>(x: &Option<T>, y: &Option<T>) -> bool {
    x.is_none() || y.is_none() || x == y
}

/// The open findings of one engine, for linking the next ones.
#[derive(Debug, Default)]
pub struct Incidents {
    open: Vec<Finding>,
}

impl Incidents {
    /// Links each new finding to the open ones it is related to, then
    /// remembers it as open.
    pub fn link(&mut self, new: &mut [Finding]) {
        for f in new.iter_mut() {
            for g in &self.open {
                if f.related.len() < RELATED_MAX
                    && related(f, g)
                    && !f.related.iter().any(|r| r.names(g))
                {
                    f.related.push(Related::to(g));
                }
            }
        }
        for f in new.iter() {
            if self.open.len() >= OPEN_MAX {
                self.open.remove(0);
            }
            // A congestion keeps the lines that name its nodes.
            let evidence = if f.kind == FindingKind::NetworkCongestion {
                f.evidence.clone()
            } else {
                Vec::new()
            };
            self.open.push(Finding {
                evidence,
                related: Vec::new(),
                ..f.clone()
            });
        }
    }

    /// Forgets findings that have cleared.
    pub fn cleared(&mut self, cleared: &[Finding]) {
        for c in cleared {
            let r = Related::to(c);
            self.open.retain(|g| !r.names(g));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_model::Severity;

    fn finding(kind: FindingKind, cause: Cause, node: &str, device: Option<&str>) -> Finding {
        Finding {
            ts: 1.0,
            kind,
            cause,
            severity: Severity::Warning,
            confidence: 0.9,
            job: (kind == FindingKind::TpStraggler).then(|| "j1".into()),
            node: Some(node.into()),
            rank: (kind == FindingKind::TpStraggler).then_some(3),
            gpu: None,
            device: device.map(Into::into),
            evidence: vec!["x".into()],
            basis: None,
            gpu_instance: None,
            related: Vec::new(),
        }
    }

    #[test]
    fn a_network_straggler_and_its_own_nics_saturation_are_one_incident() {
        let mut inc = Incidents::default();
        let mut nic = vec![finding(
            FindingKind::NicSaturation,
            Cause::Network,
            "n1",
            Some("mlx5_0"),
        )];
        inc.link(&mut nic);
        assert!(nic[0].related.is_empty(), "nothing open before it");
        // Another NIC of the node, another node, another cause: unrelated.
        let mut others = vec![
            finding(
                FindingKind::TpStraggler,
                Cause::Network,
                "n1",
                Some("mlx5_1"),
            ),
            finding(
                FindingKind::TpStraggler,
                Cause::Network,
                "n2",
                Some("mlx5_0"),
            ),
            finding(FindingKind::TpStraggler, Cause::Gpu, "n1", Some("mlx5_0")),
        ];
        inc.link(&mut others);
        assert!(others.iter().all(|f| f.related.is_empty()), "{others:?}");
        let mut straggler = vec![finding(
            FindingKind::TpStraggler,
            Cause::Network,
            "n1",
            Some("mlx5_0"),
        )];
        inc.link(&mut straggler);
        assert_eq!(straggler[0].related, vec![Related::to(&nic[0])]);
        // Once the saturation clears, a new straggler there stands alone.
        inc.cleared(&nic);
        let mut later = vec![finding(
            FindingKind::TpStraggler,
            Cause::Network,
            "n1",
            Some("mlx5_0"),
        )];
        later[0].rank = Some(4);
        inc.link(&mut later);
        assert!(later[0].related.is_empty());
    }
}
