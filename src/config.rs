//! How a supervisor behaves: timeouts, reconnect backoff, restart limits, connection limits.
//! Every default is documented on its setter and chosen so that nothing waits forever and
//! nothing retries in a storm.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::connection::ConnectionFactory;
use crate::error::Error;
use crate::policy::{ConnectionPolicy, RestartPolicy, Timeouts};

/// The largest [`SupervisorConfig::event_capacity`]: 2^20 events, about 140 MB allocated up front.
const MAX_EVENT_CAPACITY: usize = 1 << 20;

/// What to do when a new connection would exceed a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AtLimit {
    /// Close the least recently used idle connection in the same scope to make room; refuse
    /// when none is idle. The default.
    #[default]
    EvictIdle,
    /// Refuse the new connection with [`Error::LimitReached`].
    Refuse,
}

/// How to build a supervisor.
///
/// `SupervisorConfig::default()` has no factory (calls that need one fail with
/// [`Error::FactoryNotSet`] until
/// [`ConnectionManager::set_connection_factory`](crate::ConnectionManager::set_connection_factory)),
/// the default [`ConnectionPolicy`] for every plugin, 32 concurrent opens, no connection limit
/// and the default [`RestartPolicy`].
#[derive(Clone)]
pub struct SupervisorConfig {
    pub(crate) factory: Option<Arc<ConnectionFactory>>,
    pub(crate) default_policy: ConnectionPolicy,
    pub(crate) plugin_policies: HashMap<String, ConnectionPolicy>,
    pub(crate) max_concurrent_opens: usize,
    pub(crate) max_handshakes_per_address: usize,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_connections_per_plugin: HashMap<String, usize>,
    pub(crate) at_limit: AtLimit,
    pub(crate) restart: RestartPolicy,
    pub(crate) event_capacity: usize,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            factory: None,
            default_policy: ConnectionPolicy::default(),
            plugin_policies: HashMap::new(),
            max_concurrent_opens: 32,
            max_handshakes_per_address: 8,
            max_connections: None,
            max_connections_per_plugin: HashMap::new(),
            at_limit: AtLimit::default(),
            restart: RestartPolicy::default(),
            event_capacity: 4096,
        }
    }
}

impl SupervisorConfig {
    /// Sets the factory that makes connections.
    pub fn factory(mut self, factory: Arc<ConnectionFactory>) -> Self {
        self.factory = Some(factory);
        self
    }

    /// Sets the policy for every plugin without one of its own.
    pub fn policy(mut self, policy: ConnectionPolicy) -> Self {
        self.default_policy = policy;
        self
    }

    /// Sets the policy for one plugin name.
    pub fn plugin_policy(
        mut self,
        plugin_name: impl Into<String>,
        policy: ConnectionPolicy,
    ) -> Self {
        self.plugin_policies.insert(plugin_name.into(), policy);
        self
    }

    /// Sets the default policy's timeouts.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.default_policy.timeouts = timeouts;
        self
    }

    /// Sets the default policy's open timeout (default 30 s); range as [`Timeouts::open`].
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.default_policy.timeouts.open = timeout;
        self
    }

    /// Sets the default policy's request timeout (default 30 s); range as [`Timeouts::request`].
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.default_policy.timeouts.request = timeout;
        self
    }

    /// Sets the default policy's close timeout (default 10 s); range as [`Timeouts::close`].
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.default_policy.timeouts.close = timeout;
        self
    }

    /// How many opens may run at once across the whole supervisor, in each of two budgets:
    /// opens a caller waits for (`open`, `open_connection`, `retry`), and background
    /// reconnects and reopens. Defaults to 32 each: reconnecting a thousand hosts after an
    /// outage is then a steady stream, not a thundering herd, and an open to a healthy host
    /// never queues behind it. Waiting for a slot counts against the open timeout, and one that
    /// runs out is a timeout with [`Stage::OpenSlot`](crate::Stage::OpenSlot), counted in
    /// `open_slot_timeouts`. So a burst of opens larger than the open timeout times the opens
    /// per second the machine manages ends in timeouts that are no device's fault: the last of
    /// 5,000 embedded SSH devices opened at once on 2 cores waited 15-20 s for its slot
    /// (bench/benches/ssh_scale.rs). Raise the open timeout for such bursts, or feed them in
    /// as slots free up; a larger bound does not help a machine that is busy with handshakes.
    /// From 1 to tokio's semaphore limit,
    /// [`Semaphore::MAX_PERMITS`](tokio::sync::Semaphore::MAX_PERMITS) (`usize::MAX >> 3`).
    pub fn max_concurrent_opens(mut self, opens: usize) -> Self {
        self.max_concurrent_opens = opens;
        self
    }

    /// How many handshakes may run at once to one target address (the params' hostname and
    /// port), whichever keys they are for. Defaults to 8: forty keys behind one server, bastion
    /// or terminal server then stay below OpenSSH's default `MaxStartups` of 10 unauthenticated
    /// connections. From 1 to tokio's semaphore limit.
    pub fn max_handshakes_per_address(mut self, handshakes: usize) -> Self {
        self.max_handshakes_per_address = handshakes;
        self
    }

    /// Caps the number of pooled connections. Defaults to no cap. At least 1; no upper limit.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = Some(connections);
        self
    }

    /// Caps the number of pooled connections of one plugin. Defaults to no cap. At least 1; no
    /// upper limit.
    pub fn max_connections_for(
        mut self,
        plugin_name: impl Into<String>,
        connections: usize,
    ) -> Self {
        self.max_connections_per_plugin
            .insert(plugin_name.into(), connections);
        self
    }

    /// What happens at a limit (default [`AtLimit::EvictIdle`]).
    pub fn at_limit(mut self, at_limit: AtLimit) -> Self {
        self.at_limit = at_limit;
        self
    }

    /// Sets the restart intensity and quarantine.
    pub fn restart_policy(mut self, restart: RestartPolicy) -> Self {
        self.restart = restart;
        self
    }

    /// How many lifecycle events a slow subscriber may fall behind before it misses some
    /// (it is told how many). Defaults to 4096. From 1 to 1,048,576 (2^20): tokio allocates the
    /// buffer up front, rounded up to a power of two, at about 140 bytes an event.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// The timeouts of every plugin with a policy of its own.
    pub(crate) fn plugin_timeouts(&self) -> HashMap<String, Timeouts> {
        self.plugin_policies
            .iter()
            .map(|(plugin, policy)| (plugin.clone(), policy.timeouts))
            .collect()
    }

    /// The policy that applies to `plugin_name`.
    pub fn policy_for(&self, plugin_name: &str) -> &ConnectionPolicy {
        self.plugin_policies
            .get(plugin_name)
            .unwrap_or(&self.default_policy)
    }

    /// Rejects a configuration that cannot work, naming the offending setting.
    pub fn validate(&self) -> Result<(), Error> {
        self.default_policy.validate("default policy")?;
        for (plugin, policy) in &self.plugin_policies {
            policy.validate(&format!("policy for plugin {plugin:?}"))?;
        }
        // Both become tokio structures that panic beyond their limits: the open slots a
        // semaphore, the events a broadcast channel, which allocates every slot up front.
        for (name, value, max, why) in [
            (
                "max_concurrent_opens",
                self.max_concurrent_opens,
                Semaphore::MAX_PERMITS,
                "tokio's semaphore limit",
            ),
            (
                "max_handshakes_per_address",
                self.max_handshakes_per_address,
                Semaphore::MAX_PERMITS,
                "tokio's semaphore limit",
            ),
            (
                "event_capacity",
                self.event_capacity,
                MAX_EVENT_CAPACITY,
                "as tokio allocates its buffer up front",
            ),
        ] {
            if !(1..=max).contains(&value) {
                return Err(invalid(format!(
                    "{name} must be from 1 to {max}, {why} (got {value})"
                )));
            }
        }
        if self.max_connections == Some(0) {
            return Err(invalid("max_connections must be at least 1".into()));
        }
        if let Some((plugin, _)) = self
            .max_connections_per_plugin
            .iter()
            .find(|(_, n)| **n == 0)
        {
            return Err(invalid(format!(
                "max_connections_for({plugin:?}) must be at least 1"
            )));
        }
        for (name, value) in [
            ("window", self.restart.window),
            ("quarantine", self.restart.quarantine),
        ] {
            if value.is_zero() {
                return Err(invalid(format!(
                    "restart policy: the {name} must be greater than zero"
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for SupervisorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorConfig")
            .field("factory", &self.factory.as_ref().map(|_| "<factory>"))
            .field("default_policy", &self.default_policy)
            .field("plugin_policies", &self.plugin_policies)
            .field("max_concurrent_opens", &self.max_concurrent_opens)
            .field(
                "max_handshakes_per_address",
                &self.max_handshakes_per_address,
            )
            .field("max_connections", &self.max_connections)
            .field(
                "max_connections_per_plugin",
                &self.max_connections_per_plugin,
            )
            .field("at_limit", &self.at_limit)
            .field("restart", &self.restart)
            .field("event_capacity", &self.event_capacity)
            .finish()
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidConfig(message)
}
