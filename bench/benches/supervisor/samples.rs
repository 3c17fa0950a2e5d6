//! A `metrics` recorder that keeps every sample of the two open histograms with the moment it
//! was recorded, for the 20 ms fan-out's timeline (metrics-util's `DebuggingRecorder` keeps the
//! values but not when they came). Every other series is a no-op handle, so recording costs
//! the library what it costs with no recorder. The lock is the benchmark's, taken once per
//! open, never on the command path.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

/// The library's series this recorder keeps.
pub const SLOT_WAIT: &str = "connection_supervisor_open_slot_wait_seconds";
pub const OPEN_DURATION: &str = "connection_supervisor_open_duration_seconds";

/// One series' samples: when each was recorded, and its value in seconds.
#[derive(Default)]
pub struct Series(Mutex<Vec<(Instant, f64)>>);

impl Series {
    /// Takes every sample recorded since the last call.
    pub fn take(&self) -> Vec<(Instant, f64)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl HistogramFn for Series {
    fn record(&self, value: f64) {
        let now = Instant::now();
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((now, value));
    }
}

/// The recorder; [`install`] makes it the process's.
#[derive(Default)]
pub struct Samples {
    pub slot_wait: Arc<Series>,
    pub open_duration: Arc<Series>,
}

impl Recorder for Samples {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        match key.name() {
            SLOT_WAIT => Histogram::from_arc(self.slot_wait.clone()),
            OPEN_DURATION => Histogram::from_arc(self.open_duration.clone()),
            _ => Histogram::noop(),
        }
    }
}

static INSTALLED: OnceLock<(Arc<Series>, Arc<Series>)> = OnceLock::new();

/// Installs the recorder (before any supervisor is built: the library takes its handles when
/// a supervisor starts). Returns false if another recorder was installed first.
pub fn install() -> bool {
    let samples = Samples::default();
    let series = (samples.slot_wait.clone(), samples.open_duration.clone());
    if metrics::set_global_recorder(samples).is_err() {
        return false;
    }
    INSTALLED.set(series).is_ok()
}

/// The slot-wait and open-duration series, if [`install`] succeeded.
pub fn series() -> Option<&'static (Arc<Series>, Arc<Series>)> {
    INSTALLED.get()
}
