//! The episode state machine every detector shares: a condition is suspected,
//! concluded once it has held long enough (one finding), and the episode
//! closes once the condition has stayed clear long enough. Time is the
//! caller's (trace time), never the wall clock.

use keel_model::{Finding, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Episode {
    #[default]
    Idle,
    /// The condition holds since `since`, not yet long enough.
    Suspect { since: Timestamp },
    /// Concluded (its finding was emitted); `clear_since` is when the
    /// condition last stopped holding, if it has.
    Open {
        onset: Timestamp,
        clear_since: Option<Timestamp>,
    },
}

/// What one observation did to the episode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    Nothing,
    /// The condition has held for the sustain time: conclude now.
    Concluded {
        since: Timestamp,
    },
    Closed,
}

impl Episode {
    /// Feeds one observation of the condition at `now`.
    pub fn observe(&mut self, holds: bool, now: Timestamp, sustain: f64, clear: f64) -> Step {
        match (*self, holds) {
            (Episode::Idle, false) => Step::Nothing,
            (Episode::Idle, true) => {
                *self = Episode::Suspect { since: now };
                if sustain <= 0.0 {
                    return self.conclude(now);
                }
                Step::Nothing
            }
            (Episode::Suspect { .. }, false) => {
                *self = Episode::Idle;
                Step::Nothing
            }
            (Episode::Suspect { since }, true) => {
                if now - since >= sustain {
                    self.conclude(since)
                } else {
                    Step::Nothing
                }
            }
            (Episode::Open { onset, .. }, true) => {
                *self = Episode::Open {
                    onset,
                    clear_since: None,
                };
                Step::Nothing
            }
            (Episode::Open { onset, clear_since }, false) => {
                let since = clear_since.unwrap_or(now);
                if now - since >= clear {
                    *self = Episode::Idle;
                    Step::Closed
                } else {
                    *self = Episode::Open {
                        onset,
                        clear_since: Some(since),
                    };
                    Step::Nothing
                }
            }
        }
    }

    fn conclude(&mut self, since: Timestamp) -> Step {
        *self = Episode::Open {
            onset: since,
            clear_since: None,
        };
        Step::Concluded { since }
    }

    pub fn is_open(&self) -> bool {
        matches!(self, Episode::Open { .. })
    }

    /// The condition has been suspected since this time (not yet concluded).
    pub fn suspect_since(&self) -> Option<Timestamp> {
        match self {
            Episode::Suspect { since } => Some(*since),
            _ => None,
        }
    }
}

/// The finding an open episode reported. It is kept because its close must
/// name the same place (job, node, rank, GPU, device) as its open did, even
/// when the topology has changed since, so that the controller closes the
/// finding this episode opened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reported(Option<Finding>);

impl Reported {
    pub fn set(&mut self, f: &Finding) {
        self.0 = Some(Finding {
            evidence: Vec::new(),
            job: f.job.clone(),
            node: f.node.clone(),
            device: f.device.clone(),
            related: Vec::new(),
            ..*f
        });
    }

    /// The cause of the reported finding, if one was reported.
    pub fn cause(&self) -> Option<keel_model::Cause> {
        self.0.as_ref().map(|f| f.cause)
    }

    /// The clearing of the reported finding, at `now`; `None` when the
    /// episode reported nothing, since there is nothing to close then.
    pub fn clear(&mut self, now: Timestamp) -> Option<Finding> {
        let f = self.0.take()?;
        let line = format!(
            "{} cleared at {}, {:.1} s after it was reported",
            f.kind.wire(),
            keel_model::Clock(now),
            now - f.ts
        );
        Some(Finding {
            ts: now,
            evidence: vec![line],
            ..f
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concludes_once_after_sustain_and_closes_after_clear() {
        let mut e = Episode::default();
        assert_eq!(e.observe(true, 10.0, 2.0, 3.0), Step::Nothing);
        assert_eq!(e.observe(true, 11.0, 2.0, 3.0), Step::Nothing);
        assert_eq!(
            e.observe(true, 12.0, 2.0, 3.0),
            Step::Concluded { since: 10.0 }
        );
        assert_eq!(e.observe(true, 13.0, 2.0, 3.0), Step::Nothing);
        assert_eq!(e.observe(false, 14.0, 2.0, 3.0), Step::Nothing);
        // a relapse restarts the clearing clock
        assert_eq!(e.observe(true, 15.0, 2.0, 3.0), Step::Nothing);
        assert_eq!(e.observe(false, 16.0, 2.0, 3.0), Step::Nothing);
        assert_eq!(e.observe(false, 18.0, 2.0, 3.0), Step::Nothing);
        assert_eq!(e.observe(false, 19.0, 2.0, 3.0), Step::Closed);
        assert_eq!(e, Episode::Idle);
    }

    #[test]
    fn an_interrupted_suspicion_starts_over() {
        let mut e = Episode::default();
        e.observe(true, 10.0, 2.0, 3.0);
        e.observe(false, 11.0, 2.0, 3.0);
        assert_eq!(e.observe(true, 12.5, 2.0, 3.0), Step::Nothing);
        assert_eq!(
            e.observe(true, 14.5, 2.0, 3.0),
            Step::Concluded { since: 12.5 }
        );
    }

    #[test]
    fn a_clearing_repeats_the_reported_locus_once() {
        use keel_model::{Cause, FindingKind, Severity};
        let mut r = Reported::default();
        assert_eq!(r.clear(5.0), None);
        let f = Finding {
            basis: None,
            gpu_instance: None,
            related: Vec::new(),
            ts: 10.0,
            kind: FindingKind::NicSaturation,
            cause: Cause::Network,
            severity: Severity::Warning,
            confidence: 0.9,
            job: None,
            node: Some("n01".into()),
            rank: None,
            gpu: None,
            device: Some("mlx5_0".into()),
            evidence: vec!["at line rate".into()],
        };
        r.set(&f);
        let c = r.clear(17.5).expect("reported before");
        assert_eq!((c.kind, c.ts), (f.kind, 17.5));
        assert_eq!((&c.node, &c.device), (&f.node, &f.device));
        assert_eq!(c.locus(), f.locus());
        assert_eq!(c.evidence.len(), 1);
        assert!(c.evidence[0].contains("7.5 s"), "{:?}", c.evidence);
        assert_eq!(r.clear(20.0), None);
    }
}
