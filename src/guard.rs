//! Runs plugin code so that it can neither hang nor unwind into the caller: every plugin call
//! the crate makes (open, commands, `with`, health checks, close, the factory) goes through
//! [`guarded`] or [`sync_guarded`], which bound it and turn a panic into a message. Deadlines
//! come from [`deadline_after`] and [`wall_deadline_after`], which cannot overflow.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use tokio::time::Instant;

/// How far ahead a deadline may lie: about 30 years, what tokio itself takes for "never". A
/// longer bound, up to `Duration::MAX`, is a bound nobody will reach: it saturates here instead
/// of overflowing the clock.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The instant `after` from now on tokio's clock, at most [`FAR_FUTURE`] ahead.
pub(crate) fn deadline_after(after: Duration) -> Instant {
    // Cannot overflow: 30 years past any monotonic clock reading fits, as tokio's own
    // far-future instant relies on.
    Instant::now() + after.min(FAR_FUTURE)
}

/// The wall-clock time `after` from now, at most [`FAR_FUTURE`] ahead (for status and events).
pub(crate) fn wall_deadline_after(after: Duration) -> SystemTime {
    let now = SystemTime::now();
    // Only a clock set some 290 billion years ahead could fail the add; it then says "now".
    now.checked_add(after.min(FAR_FUTURE)).unwrap_or(now)
}

/// How a guarded plugin call ended: it returned, it ran out of time, or it panicked.
pub(crate) enum Outcome<T> {
    Done(T),
    TimedOut(Duration),
    Panicked(String),
}

pub(crate) async fn guarded<T>(bound: Duration, call: impl Future<Output = T>) -> Outcome<T> {
    match tokio::time::timeout(bound, AssertUnwindSafe(call).catch_unwind()).await {
        Ok(Ok(value)) => Outcome::Done(value),
        Ok(Err(payload)) => Outcome::Panicked(panic_message(payload.as_ref())),
        Err(_) => Outcome::TimedOut(bound),
    }
}

pub(crate) fn sync_guarded<T>(call: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(call)).map_err(|p| panic_message(p.as_ref()))
}

/// The text of a caught panic, for error messages.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&'static str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
