//! What the SSH-at-scale benchmark measures a process with: its resident memory, a count of the
//! heap it holds (a counting global allocator), the allocator trimmed before each reading, the
//! open-files limit raised for thousands of sockets, and (feature `metrics`) the supervisor's
//! open-slot waits caught from the `metrics` facade.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// The system allocator, counting what is live: the heap share of a connection is read from it
/// without a profiler, and it counts allocations per connection as well as bytes.
pub struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE_BLOCKS: AtomicI64 = AtomicI64::new(0);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed to `System` unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `System::alloc`, with the caller's layout.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            counted(layout.size() as i64, 1);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `System::alloc_zeroed`, with the caller's layout.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            counted(layout.size() as i64, 1);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (so from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `System::realloc`, with the caller's block and layout.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        new
    }
}

fn counted(bytes: i64, blocks: i64) {
    LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed);
    LIVE_BLOCKS.fetch_add(blocks, Ordering::Relaxed);
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
}

/// The process's memory at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    /// Resident set size, bytes (`/proc/self/statm`).
    pub rss: u64,
    /// Bytes in live heap blocks (as requested, without the allocator's own overhead).
    pub heap: i64,
    /// Live heap blocks.
    pub blocks: i64,
    /// Allocations (and reallocations) made so far.
    pub allocations: u64,
}

/// Trims the allocator (free memory it keeps is handed back to the kernel, so it does not
/// count against, or hide, what the next phase holds), then reads the memory.
pub fn read() -> Reading {
    trim();
    Reading {
        rss: rss_bytes().unwrap_or(0),
        heap: LIVE_BYTES.load(Ordering::Relaxed),
        blocks: LIVE_BLOCKS.load(Ordering::Relaxed),
        allocations: ALLOCATIONS.load(Ordering::Relaxed),
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases free memory glibc holds; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// Resident memory of this process, in bytes.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

/// Raises this process's open-files limit to at least `wanted`: the soft limit up to the hard
/// one, and the hard one too where the process may (root, or `CAP_SYS_RESOURCE`). Returns the
/// soft limit before and after.
// `rlim_t` is `u64` on Linux, not on every Unix.
#[allow(clippy::unnecessary_cast)]
pub fn raise_nofile(wanted: u64) -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let wanted = wanted as libc::rlim_t;
    // SAFETY: getrlimit/setrlimit read and write the one struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return (0, 0);
        }
        let before = limit.rlim_cur;
        if before >= wanted {
            return (before as u64, before as u64);
        }
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max.max(wanted),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return (before as u64, wanted as u64);
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return (before as u64, before as u64);
        }
        (before as u64, limit.rlim_cur as u64)
    }
}

/// Median, 99th percentile and maximum of `samples` (sorted here), in milliseconds.
pub fn percentiles_ms(samples: &mut [f64]) -> serde_json::Value {
    samples.sort_by(f64::total_cmp);
    let at = |p: f64| {
        let i = ((samples.len().saturating_sub(1)) as f64 * p).round() as usize;
        samples.get(i).map(|s| s * 1e3)
    };
    serde_json::json!({
        "count": samples.len(),
        "p50": at(0.5),
        "p90": at(0.9),
        "p99": at(0.99),
        "max": at(1.0),
    })
}

/// The supervisor's own histograms of open-slot waits and open durations, and the most opens
/// that waited for a slot at once, caught from the `metrics` facade.
#[cfg(feature = "metrics")]
pub mod slots {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, OnceLock, PoisonError};

    use metrics::{
        Counter, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
        SharedString, Unit,
    };

    #[derive(Default)]
    struct Samples(Mutex<Vec<f64>>);

    impl HistogramFn for Samples {
        fn record(&self, value: f64) {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(value);
        }
    }

    impl Samples {
        fn take(&self) -> Vec<f64> {
            std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
        }
    }

    /// A gauge that remembers its highest value.
    #[derive(Default)]
    struct Peak {
        now: Mutex<f64>,
        peak: AtomicU64,
    }

    impl Peak {
        fn apply(&self, change: impl FnOnce(f64) -> f64) {
            let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
            *now = change(*now);
            let bits = now.to_bits();
            if *now > f64::from_bits(self.peak.load(Ordering::Relaxed)) {
                self.peak.store(bits, Ordering::Relaxed);
            }
        }
    }

    impl GaugeFn for Peak {
        fn increment(&self, value: f64) {
            self.apply(|now| now + value);
        }
        fn decrement(&self, value: f64) {
            self.apply(|now| now - value);
        }
        fn set(&self, value: f64) {
            self.apply(|_| value);
        }
    }

    #[derive(Default)]
    struct Catch {
        slot_wait: Arc<Samples>,
        open_duration: Arc<Samples>,
        waiting: Arc<Peak>,
    }

    impl Recorder for Catch {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            match key.name() {
                "connection_supervisor_open_slots_waiting" => Gauge::from_arc(self.waiting.clone()),
                _ => Gauge::noop(),
            }
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            match key.name() {
                "connection_supervisor_open_slot_wait_seconds" => {
                    Histogram::from_arc(self.slot_wait.clone())
                }
                "connection_supervisor_open_duration_seconds" => {
                    Histogram::from_arc(self.open_duration.clone())
                }
                _ => Histogram::noop(),
            }
        }
    }

    static CATCH: OnceLock<&'static Catch> = OnceLock::new();

    /// Installs the recorder; call before the supervisor is built.
    pub fn install() {
        let catch: &'static Catch = Box::leak(Box::default());
        if metrics::set_global_recorder(catch).is_ok() {
            let _ = CATCH.set(catch);
        }
    }

    /// What was caught, as JSON: slot waits and open durations (ms percentiles), and the most
    /// opens waiting for a slot at once.
    pub fn report() -> serde_json::Value {
        let Some(catch) = CATCH.get() else {
            return serde_json::Value::Null;
        };
        serde_json::json!({
            "slot_wait_ms": super::percentiles_ms(&mut catch.slot_wait.take()),
            "open_duration_ms": super::percentiles_ms(&mut catch.open_duration.take()),
            "peak_waiting": f64::from_bits(catch.waiting.peak.load(Ordering::Relaxed)),
        })
    }
}
