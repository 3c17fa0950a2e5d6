//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`): the
//! library records, the application installs the exporter it likes (Prometheus, StatsD, ...)
//! **before** it builds its [`ConnectionManager`](crate::ConnectionManager), since each
//! series' handle is taken from the recorder installed when the series is first needed.
//!
//! Handles are registered once (per plugin, when the supervisor first sees it) and kept, so
//! recording is an atomic operation on the handle: no registry lookup, lock or syscall on the
//! command path. Without the feature every handle is a zero-sized no-op.
//!
//! | series | type | labels | what |
//! | --- | --- | --- | --- |
//! | `connection_supervisor_connections` | gauge | `plugin`, `state` | live connections per [`ConnectionState`] (`closed` ones are gone: not counted) |
//! | `connection_supervisor_creates_total` … `_quarantines_total` | counter | `plugin` | the matching [`ConnectionCounters`](crate::ConnectionCounters) field, counted at the same moment |
//! | `connection_supervisor_failed_opens_total` | counter | `plugin`, `kind` | failed open attempts by [`FailureKind::name`] |
//! | `connection_supervisor_open_duration_seconds` | histogram | `plugin` | the plugin's `open`, for opens that succeeded |
//! | `connection_supervisor_command_duration_seconds` | histogram | `plugin` | a command, on the direct route or through the actor, whatever its outcome |
//! | `connection_supervisor_reconnect_duration_seconds` | histogram | `plugin` | from the loss to open again |
//! | `connection_supervisor_open_slot_wait_seconds` | histogram | | an open's wait for its open slots |
//! | `connection_supervisor_open_slots_waiting` | gauge | | opens waiting for a slot now |
//! | `connection_supervisor_parked_requests` | gauge | | requests parked behind reconnects now |

use crate::connection::FailureKind;
use crate::status::ConnectionState;

#[cfg(feature = "metrics")]
pub(crate) use metrics::{Counter, Gauge, Histogram};

#[cfg(not(feature = "metrics"))]
pub(crate) use off::{Counter, Gauge, Histogram};

/// What the handles are without the feature: nothing, at no cost.
#[cfg(not(feature = "metrics"))]
mod off {
    #[derive(Clone, Debug, Default)]
    pub(crate) struct Counter;
    impl Counter {
        pub(crate) fn increment(&self, _: u64) {}
    }

    #[derive(Clone, Debug, Default)]
    pub(crate) struct Gauge;
    impl Gauge {
        pub(crate) fn increment(&self, _: f64) {}
        pub(crate) fn decrement(&self, _: f64) {}
    }

    #[derive(Clone, Debug, Default)]
    pub(crate) struct Histogram;
    impl Histogram {
        pub(crate) fn record(&self, _: f64) {}
    }
}

#[cfg(feature = "metrics")]
const PREFIX: &str = "connection_supervisor_";

/// The states a live connection can be in, each a `state` label of the connections gauge.
const GAUGED_STATES: [ConnectionState; 8] = [
    ConnectionState::Created,
    ConnectionState::Opening,
    ConnectionState::Open,
    ConnectionState::Lost,
    ConnectionState::Reconnecting,
    ConnectionState::Failed,
    ConnectionState::Closing,
    ConnectionState::Quarantined,
];

/// Every failure kind, each a `kind` label of the failed-opens counter.
const KINDS: [FailureKind; 9] = [
    FailureKind::Timeout,
    FailureKind::Refused,
    FailureKind::Auth,
    FailureKind::HostKey,
    FailureKind::Dns,
    FailureKind::Transport,
    FailureKind::Negotiation,
    FailureKind::Config,
    FailureKind::Unknown,
];

#[cfg(feature = "metrics")]
fn to_labels(labels: &[(&'static str, String)]) -> Vec<metrics::Label> {
    labels
        .iter()
        .map(|(key, value)| metrics::Label::new(*key, value.clone()))
        .collect()
}

#[cfg(feature = "metrics")]
pub(crate) fn counter(name: &str, labels: &[(&'static str, String)]) -> Counter {
    metrics::counter!(format!("{PREFIX}{name}"), to_labels(labels))
}

#[cfg(feature = "metrics")]
pub(crate) fn gauge(name: &str, labels: &[(&'static str, String)]) -> Gauge {
    metrics::gauge!(format!("{PREFIX}{name}"), to_labels(labels))
}

#[cfg(feature = "metrics")]
pub(crate) fn histogram(name: &str, labels: &[(&'static str, String)]) -> Histogram {
    metrics::histogram!(format!("{PREFIX}{name}"), to_labels(labels))
}

#[cfg(not(feature = "metrics"))]
pub(crate) fn counter(_: &str, _: &[(&'static str, String)]) -> Counter {
    Counter
}

#[cfg(not(feature = "metrics"))]
pub(crate) fn gauge(_: &str, _: &[(&'static str, String)]) -> Gauge {
    Gauge
}

#[cfg(not(feature = "metrics"))]
pub(crate) fn histogram(_: &str, _: &[(&'static str, String)]) -> Histogram {
    Histogram
}

/// One plugin's series.
#[derive(Debug)]
pub(crate) struct PluginMetrics {
    pub(crate) creates: Counter,
    pub(crate) opens: Counter,
    pub(crate) closes: Counter,
    pub(crate) losses: Counter,
    pub(crate) reconnects: Counter,
    pub(crate) crashes: Counter,
    pub(crate) restarts: Counter,
    pub(crate) quarantines: Counter,
    failed_opens: Vec<Counter>,
    connections: Vec<Gauge>,
    pub(crate) open_duration: Histogram,
    pub(crate) command_duration: Histogram,
    pub(crate) reconnect_duration: Histogram,
    /// Not per plugin: every plugin's handle is the same series.
    pub(crate) parked_requests: Gauge,
}

impl PluginMetrics {
    pub(crate) fn new(plugin: &str) -> Self {
        let by_plugin = [("plugin", plugin.to_owned())];
        let total = |what: &str| counter(&format!("{what}_total"), &by_plugin);
        Self {
            creates: total("creates"),
            opens: total("opens"),
            closes: total("closes"),
            losses: total("losses"),
            reconnects: total("reconnects"),
            crashes: total("crashes"),
            restarts: total("restarts"),
            quarantines: total("quarantines"),
            failed_opens: KINDS
                .iter()
                .map(|kind| {
                    counter(
                        "failed_opens_total",
                        &[
                            ("plugin", plugin.to_owned()),
                            ("kind", kind.name().to_owned()),
                        ],
                    )
                })
                .collect(),
            connections: GAUGED_STATES
                .iter()
                .map(|state| {
                    gauge(
                        "connections",
                        &[
                            ("plugin", plugin.to_owned()),
                            ("state", state.name().to_owned()),
                        ],
                    )
                })
                .collect(),
            open_duration: histogram("open_duration_seconds", &by_plugin),
            command_duration: histogram("command_duration_seconds", &by_plugin),
            reconnect_duration: histogram("reconnect_duration_seconds", &by_plugin),
            parked_requests: gauge("parked_requests", &[]),
        }
    }

    pub(crate) fn failed_open(&self, kind: FailureKind) {
        let index = KINDS.iter().position(|k| *k == kind);
        if let Some(counter) = index.and_then(|i| self.failed_opens.get(i)) {
            counter.increment(1);
        }
    }

    /// A connection moved between states; `None` is "not a live connection" (not started yet,
    /// or closed and gone).
    pub(crate) fn moved(&self, from: Option<ConnectionState>, to: Option<ConnectionState>) {
        if from == to {
            return;
        }
        if let Some(gauge) = from.and_then(|state| self.connections_in(state)) {
            gauge.decrement(1.0);
        }
        if let Some(gauge) = to.and_then(|state| self.connections_in(state)) {
            gauge.increment(1.0);
        }
    }

    /// The gauge of live connections in `state` (none for `Closed`).
    pub(crate) fn connections_in(&self, state: ConnectionState) -> Option<&Gauge> {
        let index = GAUGED_STATES.iter().position(|s| *s == state)?;
        self.connections.get(index)
    }
}

/// Adds one to `gauge` for as long as it lives: a wait, a quarantine.
#[derive(Debug)]
pub(crate) struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub(crate) fn new(gauge: &Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
