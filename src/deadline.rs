//! [`Deadline`]: when a caller stops waiting, set when the call starts and carried with the
//! request, so that no bound (however large) overflows the clock and no request runs after
//! its caller gave up.

use std::time::{Duration, SystemTime};

/// When a caller stops waiting for a request: set when the call starts and carried with the
/// request, so the actor that takes it late runs it with only the time left, or not at all
/// once the caller has given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: tokio::time::Instant,
    bound: Duration,
}

impl Deadline {
    /// `bound` from now. A bound beyond about thirty years is taken as thirty years, so that no
    /// bound can overflow the clock.
    pub fn after(bound: Duration) -> Self {
        Self {
            at: deadline_after(bound),
            bound,
        }
    }

    /// The instant the caller stops waiting.
    pub fn at(&self) -> tokio::time::Instant {
        self.at
    }

    /// The bound the caller gave, for the error when it runs out.
    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// What is left of it now; zero once it has passed.
    pub fn remaining(&self) -> Duration {
        self.at
            .saturating_duration_since(tokio::time::Instant::now())
    }

    /// Whether it has passed.
    pub fn has_passed(&self) -> bool {
        tokio::time::Instant::now() >= self.at
    }
}

/// About thirty years: the farthest deadline the crate sets. A bound longer than that means "no
/// bound" in practice, and stopping there keeps every `Instant` sum from overflowing.
const FOREVER: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// The instant `bound` from now, saturating at [`FOREVER`] so that no bound (however large)
/// can overflow the clock.
pub(crate) fn deadline_after(bound: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + bound.min(FOREVER)
}

/// The wall-clock time `bound` from now, at most [`FOREVER`] ahead (for statuses and events).
pub(crate) fn wall_deadline_after(bound: Duration) -> SystemTime {
    let now = SystemTime::now();
    // Only a clock set some 290 billion years ahead could fail the add; it then says "now".
    now.checked_add(bound.min(FOREVER)).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn deadlines_saturate_instead_of_overflowing() {
        let year = Duration::from_secs(86_400 * 365);
        let far = deadline_after(Duration::MAX);
        assert!(far > Instant::now() + year * 29 && far < Instant::now() + year * 31);
        let wall = wall_deadline_after(Duration::MAX);
        assert!(wall > SystemTime::now() + year * 29);
        let soon = deadline_after(Duration::from_secs(1));
        assert!(soon <= Instant::now() + Duration::from_secs(1));
    }
}
