//! The episode state machine every detector shares: a condition is suspected,
//! concluded once it has held long enough (one finding), and the episode
//! closes once the condition has stayed clear long enough. Time is the
//! caller's (trace time), never the wall clock.

use keel_model::Timestamp;

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
}
