//! Runs plugin code so that it can neither hang nor unwind into the caller: every plugin call
//! the crate makes (open, commands, `with`, health checks, close, the factory) goes through
//! [`guarded`] or [`sync_guarded`], which bound it and turn a panic into a message.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;

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
