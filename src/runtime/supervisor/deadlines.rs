//! When a creation runs out of time. One timer for every creation under way, armed for the
//! earliest deadline, rather than a timer task per creation: at 100,000 keys spawning and then
//! aborting a task for each creation cost more than the creation's own bookkeeping.
//!
//! A creation that ends (its factory returned) leaves at once; its heap entry stays until it
//! comes due and is then skipped, and the heap is pruned when stale entries outnumber the live
//! ones, so it never holds more than about twice the creations under way.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::connection::ConnectionKey;
use crate::deadline::deadline_after;
use crate::runtime::internal::{Report, ReportKind};
use crate::runtime::messages::SupervisorMessage;

/// Stale entries tolerated before a prune, on top of twice the creations under way.
const SLACK: usize = 1024;

/// The deadlines of the creations under way, and the one timer that reports the earliest.
#[derive(Default)]
pub(super) struct CreationDeadlines {
    /// Creation id → its key, while its factory runs.
    pending: HashMap<u64, Arc<ConnectionKey>>,
    /// (deadline, creation id), earliest first; may hold creations that already ended.
    due: BinaryHeap<Reverse<(Instant, u64)>>,
    /// The armed timer and the deadline it fires at.
    timer: Option<(Instant, JoinHandle<()>)>,
}

impl CreationDeadlines {
    /// Creation `id` of `key` expires `after` from now unless it ends first.
    pub(super) fn start(
        &mut self,
        supervisor: &ActorRef<SupervisorMessage>,
        id: u64,
        key: Arc<ConnectionKey>,
        after: Duration,
    ) {
        let at = deadline_after(after);
        self.pending.insert(id, key);
        self.due.push(Reverse((at, id)));
        if self.due.len() > 2 * self.pending.len() + SLACK {
            let pending = &self.pending;
            self.due.retain(|Reverse((_, id))| pending.contains_key(id));
        }
        self.arm(supervisor);
    }

    /// Creation `id` ended (its factory returned, or it expired): it no longer has a deadline.
    pub(super) fn end(&mut self, id: u64) {
        self.pending.remove(&id);
    }

    /// The timer fired: takes out every creation whose deadline has passed, with its key, and
    /// re-arms the timer for the next one.
    pub(super) fn take_expired(
        &mut self,
        supervisor: &ActorRef<SupervisorMessage>,
    ) -> Vec<(u64, Arc<ConnectionKey>)> {
        self.timer = None;
        let now = Instant::now();
        let mut expired = Vec::new();
        while let Some(&Reverse((at, id))) = self.due.peek() {
            if at > now {
                break;
            }
            self.due.pop();
            if let Some(key) = self.pending.remove(&id) {
                expired.push((id, key));
            }
        }
        self.arm(supervisor);
        expired
    }

    /// Makes sure a timer fires at the earliest deadline.
    fn arm(&mut self, supervisor: &ActorRef<SupervisorMessage>) {
        let Some(&Reverse((at, _))) = self.due.peek() else {
            return;
        };
        if let Some((armed, _)) = &self.timer
            && *armed <= at
        {
            return;
        }
        if let Some((_, old)) = self.timer.take() {
            old.abort();
        }
        let supervisor = supervisor.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let due = ReportKind::CreationsDue;
            let _ = supervisor.cast(SupervisorMessage::Report(Report(due)));
        });
        self.timer = Some((at, timer));
    }
}

impl Drop for CreationDeadlines {
    fn drop(&mut self) {
        if let Some((_, timer)) = self.timer.take() {
            timer.abort();
        }
    }
}
