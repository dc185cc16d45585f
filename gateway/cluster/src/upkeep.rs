//! Keeping the registry true without touching every session often: the
//! entries live long (`--registry-ttl`, hours) and are refreshed rarely;
//! what makes them go missing is caught by cheaper means, each followed by
//! a rewrite of this node's entries (and its live sockets' recovery
//! states) at once:
//!
//! - a heartbeat key per node, written every second: gone means Redis
//!   lost data (a restart without persistence, an outage longer than the
//!   key's life);
//! - Redis answering again after a failed check, or a registry write that
//!   failed: what was written meanwhile may be missing;
//! - each entry written is checked once, [`VERIFY_AFTER`] later: a
//!   failover that loses the last acknowledged writes of a server loses
//!   them within a second or so, and the check finds them gone (or fails
//!   while the failover lasts, which marks the registry for a rewrite).
//!
//! So an idle session costs Redis nothing between the rare refreshes,
//! however many there are; the per-node cost is one command a second.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use ringway_engineio::Sid;

use crate::store::Entry;

/// How long after its write an entry is checked.
pub const VERIFY_AFTER: Duration = Duration::from_secs(5);
/// Entries waiting for their check; past this the oldest are dropped and
/// a whole rewrite is asked for instead.
const RECENT_MAX: usize = 100_000;

/// Why this node writes its entries again now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    /// The heartbeat key was gone.
    Lost,
    /// Redis answers again after a failed check.
    Returned,
    /// A write failed, or too many writes waited for their check.
    Failed,
}

impl Rewrite {
    /// The metric's `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rewrite::Lost => "lost",
            Rewrite::Returned => "returned",
            Rewrite::Failed => "write_failed",
        }
    }

    /// What the log line says.
    pub fn describe(self) -> &'static str {
        match self {
            Rewrite::Lost => "Redis lost this node's data",
            Rewrite::Returned => "Redis answers again after an outage",
            Rewrite::Failed => "registry writes failed",
        }
    }
}

#[derive(Default)]
pub(crate) struct Upkeep {
    /// A heartbeat has been written (the first finds no key, rightly).
    beat: AtomicBool,
    /// A write failed since the last rewrite.
    failed: AtomicBool,
    /// Entries written, in order, with when.
    recent: Mutex<VecDeque<(Instant, Sid, Entry)>>,
    /// Wakes whoever rewrites (see `Cluster::rewrite_requested`).
    rewrite: Notify,
}

impl Upkeep {
    fn recent(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, Sid, Entry)>> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A registry write that Redis acknowledged: checked later. Only once
    /// heartbeats run (a node with a shared registry; a node alone keeps
    /// its registry in memory and never checks it).
    pub(crate) fn written(&self, sid: Sid, entry: Entry) {
        if !self.beat.load(Ordering::Acquire) {
            return;
        }
        let mut recent = self.recent();
        if recent.len() >= RECENT_MAX {
            recent.pop_front();
            self.failed.store(true, Ordering::Release);
        }
        recent.push_back((Instant::now(), sid, entry));
    }

    pub(crate) fn write_failed(&self) {
        self.failed.store(true, Ordering::Release);
    }

    /// The entries due for their check.
    pub(crate) fn due(&self, now: Instant) -> Vec<(Sid, Entry)> {
        let mut recent = self.recent();
        let mut out = Vec::new();
        while recent
            .front()
            .is_some_and(|(at, _, _)| now.duration_since(*at) >= VERIFY_AFTER)
        {
            if let Some((_, sid, entry)) = recent.pop_front() {
                out.push((sid, entry));
            }
        }
        out
    }

    /// After a heartbeat that Redis answered: whether (and why) to
    /// rewrite. `kept`: the previous heartbeat key was there; `was_down`:
    /// the previous check failed.
    pub(crate) fn after_beat(&self, kept: bool, was_down: bool) -> Option<Rewrite> {
        let first = !self.beat.swap(true, Ordering::AcqRel);
        let failed = self.failed.swap(false, Ordering::AcqRel);
        if !kept && !first {
            Some(Rewrite::Lost)
        } else if was_down {
            Some(Rewrite::Returned)
        } else if failed {
            Some(Rewrite::Failed)
        } else {
            None
        }
    }

    pub(crate) fn request_rewrite(&self) {
        self.rewrite.notify_one();
    }

    pub(crate) async fn rewrite_requested(&self) {
        self.rewrite.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(epoch: u64) -> Entry {
        Entry {
            owner: "n1".into(),
            epoch,
        }
    }

    #[test]
    fn rewrites_follow_losses_returns_and_failures_only() {
        let upkeep = Upkeep::default();
        // The first heartbeat finds no key: nothing was lost.
        assert_eq!(upkeep.after_beat(false, false), None);
        assert_eq!(upkeep.after_beat(true, false), None);
        assert_eq!(upkeep.after_beat(false, false), Some(Rewrite::Lost));
        assert_eq!(upkeep.after_beat(true, true), Some(Rewrite::Returned));
        upkeep.write_failed();
        assert_eq!(upkeep.after_beat(true, false), Some(Rewrite::Failed));
        // Reported once.
        assert_eq!(upkeep.after_beat(true, false), None);
    }

    #[test]
    fn writes_come_due_after_the_delay_in_order() {
        let upkeep = Upkeep::default();
        // Before the first heartbeat (or on a node alone): not kept.
        upkeep.written(Sid::random(), entry(0));
        assert!(upkeep.recent().is_empty());
        upkeep.after_beat(false, false);
        let (a, b) = (Sid::random(), Sid::random());
        upkeep.written(a, entry(1));
        upkeep.written(b, entry(2));
        let now = Instant::now();
        assert!(upkeep.due(now).is_empty());
        let later = now + VERIFY_AFTER;
        assert_eq!(upkeep.due(later), vec![(a, entry(1)), (b, entry(2))]);
        assert!(upkeep.due(later).is_empty());
    }

    #[test]
    fn an_overflowing_backlog_asks_for_a_rewrite() {
        let upkeep = Upkeep::default();
        upkeep.after_beat(false, false);
        for i in 0..=RECENT_MAX {
            upkeep.written(Sid::random(), entry(i as u64));
        }
        assert_eq!(upkeep.recent().len(), RECENT_MAX);
        assert_eq!(upkeep.after_beat(true, false), Some(Rewrite::Failed));
    }
}
