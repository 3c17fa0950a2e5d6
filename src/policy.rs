//! How the connections of one plugin are kept ([`ConnectionPolicy`]): their timeouts,
//! reconnect backoff, health checks and idle and lifetime limits; and how often a key may crash
//! before it is quarantined ([`RestartPolicy`]). Every default is documented on its setter.

use std::time::Duration;

use crate::error::Error;

/// How long each kind of wait may last. Every wait in the crate is bounded by one of these.
///
/// Build it from the defaults with the setters, so that new timeouts can be added without
/// breaking your code: `Timeouts::default().open(Duration::from_secs(5))`.
///
/// Each timeout must be greater than zero and has no upper limit: deadlines, and sums of
/// timeouts, saturate about 30 years ahead, so `Duration::MAX` means "no bound" in practice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// Bound on a plugin's `open`, including the wait for an open slot (see
    /// [`SupervisorConfig::max_concurrent_opens`](crate::SupervisorConfig::max_concurrent_opens)). Defaults to 30 seconds.
    pub open: Duration,
    /// Bound on a command, a `with` closure, a health check, and on any call's wait for its
    /// answer (including the wait for a reconnect). Defaults to 30 seconds.
    pub request: Duration,
    /// Bound on a plugin's `close`. Defaults to 10 seconds.
    pub close: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            open: Duration::from_secs(30),
            request: Duration::from_secs(30),
            close: Duration::from_secs(10),
        }
    }
}

impl Timeouts {
    /// Sets the bound on a plugin's `open` (default 30 s). Greater than zero; no upper limit.
    pub fn open(mut self, timeout: Duration) -> Self {
        self.open = timeout;
        self
    }

    /// Sets the bound on commands, `with` closures, health checks and answers (default 30 s).
    /// Greater than zero; no upper limit.
    pub fn request(mut self, timeout: Duration) -> Self {
        self.request = timeout;
        self
    }

    /// Sets the bound on a plugin's `close` (default 10 s). Greater than zero; no upper limit.
    pub fn close(mut self, timeout: Duration) -> Self {
        self.close = timeout;
        self
    }

    /// The longest a connection actor can be busy with one plugin call before it gets to a
    /// close queued behind it, plus the close itself: the bound on waiting for a close.
    pub(crate) fn close_wait(&self) -> Duration {
        self.open.max(self.request).saturating_add(self.close)
    }
}

/// Exponential backoff with jitter between reconnect attempts, in the spirit of Elixir's
/// DBConnection: attempt `n` waits `min(max, initial * multiplier^(n-1))`, then spread by
/// `±jitter` so that hosts dropped together do not come back in lockstep.
///
/// Build it from the defaults with the setters: `Backoff::default().initial(ms(100))`.
/// [`SupervisorConfig::validate`](crate::SupervisorConfig::validate) refuses values outside the ranges each setter gives; the
/// waits themselves never overflow, whatever the values.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Backoff {
    /// Wait before the first reconnect attempt. Defaults to 500 ms.
    pub initial: Duration,
    /// Upper bound on any wait. Defaults to 30 s.
    pub max: Duration,
    /// Growth per attempt. Defaults to 2.0.
    pub multiplier: f64,
    /// Relative spread, from 0.0 (none) to 1.0. Defaults to 0.2 (±20 %).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// Sets the wait before the first reconnect attempt (default 500 ms). Greater than zero and
    /// at most [`max`](Self::max).
    pub fn initial(mut self, wait: Duration) -> Self {
        self.initial = wait;
        self
    }

    /// Sets the upper bound on any wait (default 30 s). At least [`initial`](Self::initial); no
    /// upper limit.
    pub fn max(mut self, wait: Duration) -> Self {
        self.max = wait;
        self
    }

    /// Sets the growth per attempt (default 2.0). Finite and at least 1.0; a wait that grows
    /// past [`max`](Self::max) is `max`.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Sets the relative spread (default 0.2). Within 0.0..=1.0.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// The wait before attempt `attempt` (1-based) without jitter: at most `max`, and never a
    /// panic, whatever the values (a wait too long for a `Duration` is `max`).
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        self.capped(self.initial.as_secs_f64() * self.multiplier.powi(exponent))
    }

    /// The wait before attempt `attempt`, spread by `unit` (a number in `[0, 1)`) within the
    /// jitter band, never above `max`.
    pub(crate) fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let base = self.base_delay(attempt).as_secs_f64();
        let spread = 1.0 + self.jitter * (2.0 * unit - 1.0);
        self.capped(base * spread)
    }

    /// `secs` as a wait of at most `max`, never a panic: too long for a `Duration` (float seconds
    /// near `Duration::MAX` round past it), infinite or NaN waits `max`; negative waits none.
    fn capped(&self, secs: f64) -> Duration {
        if secs.is_nan() {
            return self.max;
        }
        Duration::try_from_secs_f64(secs.max(0.0)).map_or(self.max, |wait| wait.min(self.max))
    }

    pub(crate) fn validate(&self, scope: &str) -> Result<(), Error> {
        if self.initial.is_zero() || self.max < self.initial {
            return Err(Error::InvalidConfig(format!(
                "{scope}: the backoff needs 0 < initial <= max (got initial {:?} and max {:?})",
                self.initial, self.max
            )));
        }
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            return Err(Error::InvalidConfig(format!(
                "{scope}: the backoff multiplier must be finite and at least 1 (got {:?})",
                self.multiplier
            )));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::InvalidConfig(format!(
                "{scope}: the backoff jitter must be within 0..=1 (got {:?})",
                self.jitter
            )));
        }
        Ok(())
    }
}

/// How the connections of one plugin are kept: timeouts, reconnects, health checks, idle and
/// lifetime limits. Set a default for all plugins and override per plugin name.
///
/// Build it from the defaults with the setters:
/// `ConnectionPolicy::default().reconnect(false).idle_timeout(Duration::from_secs(300))`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ConnectionPolicy {
    /// Timeouts for this plugin's calls.
    pub timeouts: Timeouts,
    /// Whether an open connection that is lost is reopened by itself. Defaults to true.
    pub reconnect: bool,
    /// Waits between reconnect attempts.
    pub backoff: Backoff,
    /// Reconnect attempts that fail with a permanent kind (auth, host key, unknown host) before
    /// the connection is left `Failed`. Defaults to 2. Transient failures retry until the
    /// connection is closed, unless `max_reconnect_attempts` is set.
    pub permanent_failure_attempts: u32,
    /// Gives up reconnecting after this many failed attempts of any kind. Defaults to `None`
    /// (keep trying, with backoff, until closed).
    pub max_reconnect_attempts: Option<u32>,
    /// Requests that may wait for a reconnect at once; more are refused with
    /// [`Error::Overloaded`](crate::Error::Overloaded). Defaults to 1024.
    pub max_waiting_requests: usize,
    /// Attempts of a first open (or any open a caller waits for) that fails transiently
    /// (refused, reset, timed out), with backoff between them, within the caller's open bound.
    /// Defaults to 3; 1 tries once.
    pub first_open_attempts: u32,
    /// Runs the plugin's `health_check` this often while the connection is open. Defaults to
    /// `None`: loss is then noticed when the plugin reports it or a command finds it dead.
    pub health_check_interval: Option<Duration>,
    /// Closes a connection nobody used for this long. Defaults to `None`.
    pub idle_timeout: Option<Duration>,
    /// Closes a connection this long after it was created. Defaults to `None`.
    pub max_lifetime: Option<Duration>,
}

impl Default for ConnectionPolicy {
    fn default() -> Self {
        Self {
            timeouts: Timeouts::default(),
            reconnect: true,
            backoff: Backoff::default(),
            permanent_failure_attempts: 2,
            max_reconnect_attempts: None,
            first_open_attempts: 3,
            max_waiting_requests: 1024,
            health_check_interval: None,
            idle_timeout: None,
            max_lifetime: None,
        }
    }
}

impl ConnectionPolicy {
    /// Sets the timeouts for this plugin's calls.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Sets whether a lost connection is reopened by itself (default true).
    pub fn reconnect(mut self, reconnect: bool) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// Sets the waits between reconnect attempts.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets how many reconnect attempts may fail with a permanent kind before giving up
    /// (default 2). At least 1, up to `u32::MAX`.
    pub fn permanent_failure_attempts(mut self, attempts: u32) -> Self {
        self.permanent_failure_attempts = attempts;
        self
    }

    /// Sets the number of failed reconnect attempts of any kind after which to give up;
    /// `None` (the default) keeps trying. Any number: `Some(0)` gives up after the first failed
    /// attempt, as `Some(1)` does.
    pub fn max_reconnect_attempts(mut self, attempts: impl Into<Option<u32>>) -> Self {
        self.max_reconnect_attempts = attempts.into();
        self
    }

    /// Sets how many requests may wait for a reconnect at once (default 1024); more are
    /// refused at once. At least 1.
    pub fn max_waiting_requests(mut self, requests: usize) -> Self {
        self.max_waiting_requests = requests;
        self
    }

    /// Sets how many times an open a caller waits for is tried when it fails transiently
    /// (default 3), with this policy's backoff between tries, within the caller's bound. At
    /// least 1.
    pub fn first_open_attempts(mut self, attempts: u32) -> Self {
        self.first_open_attempts = attempts;
        self
    }

    /// Sets how often the plugin's health check runs while open; `None` (the default) never.
    /// Greater than zero; no upper limit.
    pub fn health_check_interval(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.health_check_interval = interval.into();
        self
    }

    /// Sets how long an unused connection is kept; `None` (the default) for ever. Greater than
    /// zero; no upper limit.
    pub fn idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.idle_timeout = timeout.into();
        self
    }

    /// Sets how long after its creation a connection is closed; `None` (the default) never.
    /// Greater than zero; no upper limit.
    pub fn max_lifetime(mut self, lifetime: impl Into<Option<Duration>>) -> Self {
        self.max_lifetime = lifetime.into();
        self
    }

    pub(crate) fn validate(&self, scope: &str) -> Result<(), Error> {
        for (name, value) in [
            ("open timeout", Some(self.timeouts.open)),
            ("request timeout", Some(self.timeouts.request)),
            ("close timeout", Some(self.timeouts.close)),
            ("health check interval", self.health_check_interval),
            ("idle timeout", self.idle_timeout),
            ("max lifetime", self.max_lifetime),
        ] {
            if value.is_some_and(|value| value.is_zero()) {
                return Err(Error::InvalidConfig(format!(
                    "{scope}: the {name} must be greater than zero"
                )));
            }
        }
        if self.max_waiting_requests == 0 {
            return Err(Error::InvalidConfig(format!(
                "{scope}: max_waiting_requests must be at least 1"
            )));
        }
        if self.first_open_attempts == 0 {
            return Err(Error::InvalidConfig(format!(
                "{scope}: first_open_attempts must be at least 1"
            )));
        }
        if self.permanent_failure_attempts == 0 {
            return Err(Error::InvalidConfig(format!(
                "{scope}: permanent_failure_attempts must be at least 1"
            )));
        }
        self.backoff.validate(scope)
    }
}

/// OTP-style restart intensity: a connection actor that fails more than `max_restarts` times
/// within `window` is not restarted again; its key is quarantined for `quarantine`.
///
/// Build it from the defaults with the setters: `RestartPolicy::default().max_restarts(5)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestartPolicy {
    /// Restarts allowed within `window`. Defaults to 3 (Elixir's default).
    pub max_restarts: u32,
    /// The sliding window. Defaults to 5 s.
    pub window: Duration,
    /// How long a key that crashed too often refuses requests. Defaults to 30 s.
    pub quarantine: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 3,
            window: Duration::from_secs(5),
            quarantine: Duration::from_secs(30),
        }
    }
}

impl RestartPolicy {
    /// Sets the restarts allowed within the window (default 3). Any number: 0 quarantines a key
    /// at its first crash.
    pub fn max_restarts(mut self, restarts: u32) -> Self {
        self.max_restarts = restarts;
        self
    }

    /// Sets the sliding window (default 5 s). Greater than zero; no upper limit.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Sets how long a key that crashed too often refuses requests (default 30 s). Greater than
    /// zero; no upper limit (`Duration::MAX` keeps the key quarantined until it is retried or
    /// closed).
    pub fn quarantine(mut self, quarantine: Duration) -> Self {
        self.quarantine = quarantine;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_jitter_stays_in_band() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.5,
        };
        let bases: Vec<_> = (1..=6).map(|n| backoff.base_delay(n).as_millis()).collect();
        assert_eq!(bases, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.delay(1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff.delay(1, 0.5), Duration::from_millis(100));
        assert!(backoff.delay(6, 0.99) <= backoff.max);
    }
}
