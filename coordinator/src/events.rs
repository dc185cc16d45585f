//! The recent membership events (joins, restarts, leaves, lapses, the
//! coordinator's own start), kept in memory for operators: the dashboard
//! shows them. Nothing is persisted; a restarted coordinator starts a new
//! log.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Events kept; older ones are dropped.
pub const EVENT_LOG_CAPACITY: usize = 100;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// This coordinator took the lock and started serving (with the view
    /// it restored from Redis, if any).
    Start,
    /// A node joined that was not a member.
    Join,
    /// A member joined again with a new incarnation: its process restarted.
    Restart,
    /// A member joined again, same incarnation, new addresses or state.
    Update,
    /// A member left (drain).
    Leave,
    /// A member's lease lapsed (no heartbeat for a lease TTL): removed.
    Lapse,
}

impl EventKind {
    /// The name in `/api/state` and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Start => "start",
            EventKind::Join => "join",
            EventKind::Restart => "restart",
            EventKind::Update => "update",
            EventKind::Leave => "leave",
            EventKind::Lapse => "lapse",
        }
    }
}

/// One membership event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MembershipEvent {
    /// 1 for the first event of this coordinator process, then +1 each.
    pub id: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub kind: EventKind,
    /// The member concerned; None for `start`.
    pub node_id: Option<String>,
    /// The view epoch after the event.
    pub epoch: u64,
    /// One line for humans (addresses, incarnation, ...).
    pub detail: String,
}

/// The last [`EVENT_LOG_CAPACITY`] events.
#[derive(Debug)]
pub struct EventLog {
    capacity: usize,
    next_id: u64,
    events: VecDeque<MembershipEvent>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::new(EVENT_LOG_CAPACITY)
    }
}

impl EventLog {
    pub fn new(capacity: usize) -> Self {
        EventLog {
            capacity: capacity.max(1),
            next_id: 1,
            events: VecDeque::new(),
        }
    }

    /// Appends an event (dropping the oldest beyond the capacity); its id.
    pub fn push(
        &mut self,
        kind: EventKind,
        node_id: Option<&str>,
        epoch: u64,
        detail: String,
        at: SystemTime,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(MembershipEvent {
            id,
            at_ms: unix_ms(at),
            kind,
            node_id: node_id.map(str::to_owned),
            epoch,
            detail,
        });
        id
    }

    /// The events kept, newest first.
    pub fn recent(&self) -> Vec<MembershipEvent> {
        self.events.iter().rev().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn keeps_the_newest_events_first_up_to_the_capacity() {
        let mut log = EventLog::new(3);
        assert!(log.is_empty());
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        for i in 0..5u64 {
            let id = log.push(EventKind::Join, Some("n1"), i, format!("e{i}"), t);
            assert_eq!(id, i + 1);
        }
        assert_eq!(log.len(), 3);
        let recent = log.recent();
        let ids: Vec<u64> = recent.iter().map(|e| e.id).collect();
        assert_eq!(ids, [5, 4, 3]);
        assert_eq!(recent[0].at_ms, 1_700_000_000_123);
        assert_eq!(recent[0].detail, "e4");
        let json = serde_json::to_value(&recent[0]).expect("serializable");
        assert_eq!(json["kind"], "join");
        assert_eq!(json["node_id"], "n1");
        let start = MembershipEvent {
            kind: EventKind::Start,
            node_id: None,
            ..recent[0].clone()
        };
        let json = serde_json::to_value(&start).expect("serializable");
        assert_eq!(json["kind"], "start");
        assert!(json["node_id"].is_null());
    }

    #[test]
    fn metric_names_of_kinds_are_their_json_names() {
        for kind in [
            EventKind::Start,
            EventKind::Join,
            EventKind::Restart,
            EventKind::Update,
            EventKind::Leave,
            EventKind::Lapse,
        ] {
            assert_eq!(serde_json::to_value(kind).expect("json"), kind.as_str());
        }
    }
}
