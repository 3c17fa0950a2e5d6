//! Metrics (feature `metrics`): a Prometheus exporter is installed as the global recorder and
//! serves HTTP; a real HTTP client scrapes it while a supervisor opens, loses, reconnects,
//! fails, crashes, quarantines and closes connections, and every series is checked against
//! the supervisor's own counters and statuses at that moment.

#![cfg(feature = "metrics")]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use connection_supervisor::testing::FaultPlugin;
use connection_supervisor::{
    Backoff, ConnectionCounters, ConnectionManager, ConnectionPolicy, ConnectionState, EventKind,
    FailureKind, ResolvedConnectionParams, RestartPolicy, SupervisorConfig,
};
use metrics_exporter_prometheus::PrometheusBuilder;

const WAIT: Duration = Duration::from_secs(30);

/// One scrape: series (name plus its labels, as the exporter prints them) to value.
struct Scrape(HashMap<String, f64>);

impl Scrape {
    /// `GET /metrics` with a real HTTP client, parsed from Prometheus' text format.
    async fn take(addr: SocketAddr) -> Self {
        let url = format!("http://{addr}/metrics");
        let body = tokio::task::spawn_blocking(move || {
            ureq::get(&url)
                .call()
                .expect("the exporter answers")
                .body_mut()
                .read_to_string()
                .expect("a text body")
        })
        .await
        .expect("the scrape task");
        let series = body
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                Some((normalized(series), value.parse().ok()?))
            })
            .collect();
        Self(series)
    }

    /// The value of `name{labels}`, labels in any order; a series never recorded reads 0.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels: Vec<String> = labels
            .iter()
            .map(|(key, value)| format!("{key}=\"{value}\""))
            .collect();
        let series = if labels.is_empty() {
            format!("connection_supervisor_{name}")
        } else {
            format!("connection_supervisor_{name}{{{}}}", labels.join(","))
        };
        self.0.get(&normalized(&series)).copied().unwrap_or(0.0)
    }

    fn total(&self, name: &str, plugin: &str) -> usize {
        self.get(&format!("{name}_total"), &[("plugin", plugin)]) as usize
    }

    fn connections(&self, plugin: &str, state: ConnectionState) -> usize {
        self.get(
            "connections",
            &[("plugin", plugin), ("state", state.name())],
        ) as usize
    }

    fn failed_opens(&self, plugin: &str) -> usize {
        let prefix = "connection_supervisor_failed_opens_total{";
        let plugin = format!("plugin=\"{plugin}\"");
        self.0
            .iter()
            .filter(|(series, _)| series.starts_with(prefix) && series.contains(&plugin))
            .map(|(_, value)| *value as usize)
            .sum()
    }

    /// Every counter series against the supervisor's counters.
    fn assert_counters(&self, plugin: &str, counters: &ConnectionCounters) {
        let pairs = [
            ("creates", counters.create_calls),
            ("opens", counters.open_calls),
            ("closes", counters.close_calls),
            ("losses", counters.losses),
            ("reconnects", counters.reconnects),
            ("crashes", counters.crashes),
            ("restarts", counters.restarts),
            ("quarantines", counters.quarantines),
        ];
        for (name, expected) in pairs {
            assert_eq!(self.total(name, plugin), expected, "{name}_total");
        }
        assert_eq!(self.failed_opens(plugin), counters.failed_open_calls);
    }

    fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.get(&format!("{name}_count"), labels) as usize
    }
}

/// `name{b="2",a="1"}` as `name{a="1",b="2"}`, so lookups need not know the exporter's order
/// (label values here never contain commas).
fn normalized(series: &str) -> String {
    match series.split_once('{') {
        Some((name, labels)) => {
            let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
            labels.sort_unstable();
            format!("{name}{{{}}}", labels.join(","))
        }
        None => series.to_owned(),
    }
}

/// Installs the exporter on a free loopback port, once for this test binary.
fn install_exporter() -> SocketAddr {
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .expect("the exporter installs");
    addr
}

fn params(host: &str) -> ResolvedConnectionParams {
    ResolvedConnectionParams::new(host)
}

/// Waits until a scrape satisfies `done` (the exporter's own task serves it), within `WAIT`.
async fn scrape_until(addr: SocketAddr, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let scrape = Scrape::take(addr).await;
        if done(&scrape) || tokio::time::Instant::now() > deadline {
            return scrape;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_agrees_with_the_counters_and_statuses_at_every_stage() {
    let addr = install_exporter();
    // The scripted panics are expected; keep the output readable.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("scripted panic") {
            default_hook(info);
        }
    }));
    let plugin = FaultPlugin::new("fault");
    let policy = ConnectionPolicy::default().backoff(
        Backoff::default()
            .initial(Duration::from_millis(20))
            .max(Duration::from_millis(50))
            .jitter(0.0),
    );
    let restarts = RestartPolicy::default()
        .max_restarts(0)
        .quarantine(Duration::from_secs(600));
    let manager = ConnectionManager::spawn(
        SupervisorConfig::default()
            .factory(plugin.factory())
            .policy(policy)
            .restart_policy(restarts),
    )
    .await
    .expect("supervisor starts");
    let mut events = manager.subscribe().await.expect("subscribe");

    // Three open connections, one command each.
    let mut handles = Vec::new();
    for host in ["r1", "r2", "r3"] {
        let handle = manager
            .open_connection(&plugin.key(host), &params(host))
            .await
            .expect("opens")
            .expect("served");
        handle.execute_command("echo hi").await.expect("runs");
        handles.push(handle);
    }
    let scrape = Scrape::take(addr).await;
    let counters = manager
        .connection_counters_for("fault")
        .await
        .expect("counters")
        .expect("the plugin has connections");
    scrape.assert_counters("fault", &counters);
    assert_eq!(scrape.connections("fault", ConnectionState::Open), 3);
    let labels = [("plugin", "fault")];
    assert_eq!(scrape.histogram_count("open_duration_seconds", &labels), 3);
    assert_eq!(
        scrape.histogram_count("command_duration_seconds", &labels),
        3
    );

    // r1 is lost and cannot come back for now: it reconnects, and a request parks behind it.
    let r1 = plugin.key("r1");
    plugin.fail_opens("r1", Some(FailureKind::Refused));
    plugin.drop_sessions("r1");
    events
        .wait_for_key(&r1, WAIT, |k| matches!(k, EventKind::OpenFailed { .. }))
        .await
        .expect("a reconnect attempt fails");
    let parked = {
        let handle = handles[0].clone();
        tokio::spawn(async move { handle.execute_command("echo later").await })
    };
    handles[0]
        .wait_for_status(WAIT, |status| status.waiting_requests == 1)
        .await
        .expect("the request parks");
    let scrape = scrape_until(addr, |s| s.get("parked_requests", &[]) == 1.0).await;
    assert_eq!(scrape.get("parked_requests", &[]), 1.0);
    assert_eq!(scrape.connections("fault", ConnectionState::Open), 2);
    assert_eq!(
        scrape.connections("fault", ConnectionState::Reconnecting),
        1,
        "r1 is gauged as reconnecting"
    );
    assert!(
        scrape.get(
            "failed_opens_total",
            &[("kind", "refused"), ("plugin", "fault")]
        ) >= 1.0,
        "failed opens are labelled by kind"
    );

    // It comes back: the parked request runs, the reconnect's duration is recorded.
    plugin.fail_opens("r1", None);
    parked
        .await
        .expect("task")
        .expect("runs after the reconnect");
    let scrape = scrape_until(addr, |s| s.connections("fault", ConnectionState::Open) == 3).await;
    let counters = manager
        .connection_counters_for("fault")
        .await
        .expect("counters")
        .expect("the plugin has connections");
    scrape.assert_counters("fault", &counters);
    assert_eq!(counters.reconnects, 1);
    assert_eq!(
        scrape.histogram_count("reconnect_duration_seconds", &labels),
        1
    );
    assert_eq!(scrape.get("parked_requests", &[]), 0.0);

    // r2 panics in a command: with no restart allowed, it is quarantined.
    let r2 = plugin.key("r2");
    plugin.panic_on_next_command("r2");
    let _ = handles[1].execute_command("boom").await;
    events
        .wait_for_key(&r2, WAIT, |k| matches!(k, EventKind::Quarantined { .. }))
        .await
        .expect("quarantined");
    let scrape = scrape_until(addr, |s| {
        s.connections("fault", ConnectionState::Quarantined) == 1
    })
    .await;
    let counters = manager
        .connection_counters_for("fault")
        .await
        .expect("counters")
        .expect("the plugin has connections");
    scrape.assert_counters("fault", &counters);
    assert_eq!((counters.crashes, counters.quarantines), (1, 1));
    assert_eq!(scrape.connections("fault", ConnectionState::Quarantined), 1);
    assert_eq!(scrape.connections("fault", ConnectionState::Open), 2);

    // Everything closes: no live connection is gauged, every close is counted.
    manager.close_all_connections().await.expect("closes");
    manager.shutdown().await.expect("shuts down");
    let scrape = scrape_until(addr, |s| {
        s.connections("fault", ConnectionState::Open) == 0
            && s.connections("fault", ConnectionState::Quarantined) == 0
    })
    .await;
    for state in [
        ConnectionState::Created,
        ConnectionState::Opening,
        ConnectionState::Open,
        ConnectionState::Lost,
        ConnectionState::Reconnecting,
        ConnectionState::Failed,
        ConnectionState::Closing,
        ConnectionState::Quarantined,
    ] {
        assert_eq!(scrape.connections("fault", state), 0, "{state:?}");
    }
    // Three instances were made, the crashed one included, and each was closed once.
    assert_eq!(scrape.total("creates", "fault"), 3);
    assert_eq!(scrape.total("closes", "fault"), 3);
    assert_eq!(scrape.get("open_slots_waiting", &[]), 0.0);
    assert!(scrape.histogram_count("open_slot_wait_seconds", &[]) >= 4);
}
