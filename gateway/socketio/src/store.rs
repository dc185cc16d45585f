//! The recovery store, as Socket.IO's connection state recovery uses it:
//! what every node can read. Two things:
//!
//! - the **log**: one ordered sequence of recoverable emits for the whole
//!   cluster. Every entry gets an [`Offset`] (its position) when it is
//!   appended; every node reads the whole log in order (its tail) and
//!   delivers each entry to its own sockets, so every socket receives its
//!   events in log order and the last offset it saw says exactly what it
//!   has seen. Bounded by length and by time.
//! - the **states**: one record per recoverable socket, under its private
//!   id (pid), with a generation that each recovery increments.
//!
//! Memory for a node alone ([`super::memory_store::MemoryRecoveryStore`]);
//! the gateway's cluster brings Redis (a stream and hashes) behind the same
//! trait. The store knows nothing of Socket.IO: entries and states are
//! opaque bytes here (a [`super::log::RecordCodec`] makes them).

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use ringway_engineio::BoxFuture;

/// Why a store call failed, as the store tells it (Redis unreachable, a
/// timeout, a corrupt key): recovery logs it and degrades (delivers
/// without the log, answers a recovery with a fresh socket).
#[derive(Debug)]
pub struct StoreError(Box<dyn std::error::Error + Send + Sync>);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for StoreError {
    fn from(err: E) -> StoreError {
        StoreError(Box::new(err))
    }
}

/// Batches the tail may hold before its reader waits.
pub const TAIL_BATCHES: usize = 64;

/// A position in the log: `<milliseconds>-<sequence>`, ordered as Redis
/// stream ids are. The string form is the offset clients see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset {
    pub ms: u64,
    pub seq: u64,
}

impl Offset {
    pub const ZERO: Offset = Offset { ms: 0, seq: 0 };

    pub fn new(ms: u64, seq: u64) -> Offset {
        Offset { ms, seq }
    }

    /// Parses `ms-seq` (both plain decimal numbers); anything else is
    /// `None`. Client input: strict, no panics.
    pub fn parse(s: &str) -> Option<Offset> {
        let (ms, seq) = s.split_once('-')?;
        let num = |t: &str| -> Option<u64> {
            if t.is_empty() || t.len() > 20 || !t.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            t.parse().ok()
        };
        Some(Offset {
            ms: num(ms)?,
            seq: num(seq)?,
        })
    }

    /// The first offset of a millisecond.
    pub fn at_ms(ms: u64) -> Offset {
        Offset { ms, seq: 0 }
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: Offset,
    pub data: Bytes,
}

/// What [`RecoveryStore::range`] read.
#[derive(Debug, Clone, Default)]
pub struct Range {
    /// Entries after `after`, up to `until`, in order (at most `max`).
    pub records: Vec<Record>,
    /// Whether the log still holds everything after `after`: nothing
    /// after it was trimmed, and the log did not start again after it (a
    /// store that lost its data).
    pub covered: bool,
    /// Whether `records` reaches `until` (false: cut at `max`).
    pub complete: bool,
    /// The last offset the log ever gave.
    pub last: Offset,
}

/// How a state write treats the generation already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateWrite {
    /// Written unless a later generation is stored (the holder's updates).
    Update,
    /// Written only if exactly this generation is stored (a recovery
    /// taking the state over; two nodes recovering the same pid cannot
    /// both win).
    TakeOver { from: u64 },
}

/// A stored state: its generation and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredState {
    pub generation: u64,
    pub data: Bytes,
}

/// The tail of the log: where it started (the end of the log when it was
/// opened) and every entry appended after, in order, in batches.
pub struct Tail {
    pub start: Offset,
    pub batches: mpsc::Receiver<Vec<Record>>,
}

/// How far an append got (it is in the log either way: every node's tail
/// will see it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// As durable as the store was asked to make it (on the replicas it
    /// was to wait for, if any).
    Durable,
    /// The replicas it was to wait for did not confirm in time: a
    /// failover of the primary may lose it.
    Unreplicated,
}

/// What a node's heartbeat says of it: when its current run started and
/// when it last beat (ms since the epoch, its clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSeen {
    pub started_ms: u64,
    pub last_ms: u64,
}

/// Leeway for a heartbeat (one a second) and clocks that differ a little.
const HEARTBEAT_SLACK_MS: u64 = 3_000;

impl NodeSeen {
    /// Parses `"<started> <last>"`.
    pub fn parse(s: &str) -> Option<NodeSeen> {
        let (started, last) = s.split_once(' ')?;
        Some(NodeSeen {
            started_ms: started.parse().ok()?,
            last_ms: last.parse().ok()?,
        })
    }

    /// Whether a socket whose state this node wrote at `saved_ms` has
    /// been without its node for more than `window` at `now_ms`: the node
    /// restarted since (the socket died at the latest when the new run
    /// started), or it stopped beating.
    pub fn gone_longer_than(&self, saved_ms: u64, now_ms: u64, window: Duration) -> bool {
        let died = if self.started_ms > saved_ms {
            self.started_ms
        } else {
            self.last_ms
        };
        now_ms > died + window.as_millis() as u64 + HEARTBEAT_SLACK_MS
    }
}

pub trait RecoveryStore: Send + Sync + 'static {
    /// The heartbeat of the node `node` (see [`NodeSeen`]); `None` when
    /// the store keeps none (a node alone) or it is gone.
    fn node_seen(&self, _node: &str) -> BoxFuture<'_, Result<Option<NodeSeen>, StoreError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Appends entries, in order; resolves once they are in the log (and,
    /// for [`Appended::Durable`], on the replicas the store waits for).
    fn append(&self, entries: Vec<Bytes>) -> BoxFuture<'_, Result<Appended, StoreError>>;

    /// Opens the tail. Called once per node, at start.
    fn tail(&self) -> BoxFuture<'_, Result<Tail, StoreError>>;

    /// Entries after `after` up to `until` (inclusive), at most `max`, and
    /// whether the log still covers `after`.
    fn range(
        &self,
        after: Offset,
        until: Offset,
        max: usize,
    ) -> BoxFuture<'_, Result<Range, StoreError>>;

    /// Drops entries older than `window` (and, for memory, expired states).
    fn trim(&self, window: Duration) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Writes a state with a time to live; false if the generation rule
    /// refused it.
    fn put_state(
        &self,
        pid: &str,
        generation: u64,
        data: Bytes,
        ttl: Duration,
        mode: StateWrite,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;

    fn get_state(&self, pid: &str) -> BoxFuture<'_, Result<Option<StoredState>, StoreError>>;

    /// Sets the time to live of a state still at `generation` (a socket
    /// that disconnected: recoverable for `ttl`).
    fn expire_state(
        &self,
        pid: &str,
        generation: u64,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Deletes a state still at `generation` (a socket that left for good).
    fn delete_state(&self, pid: &str, generation: u64) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Extends the life of live sockets' states; returns the pids whose
    /// state is gone (the store lost it: the caller writes it again).
    fn refresh_states(
        &self,
        pids: Vec<String>,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_gone_from_its_last_beat_or_its_restart() {
        let window = Duration::from_secs(60);
        let seen = NodeSeen::parse("1000 500000").unwrap();
        assert_eq!(
            seen,
            NodeSeen {
                started_ms: 1000,
                last_ms: 500_000
            }
        );
        // Alive (beating now): never gone.
        assert!(!seen.gone_longer_than(400_000, 500_500, window));
        // Stopped beating 70 s ago: gone longer than the window.
        assert!(seen.gone_longer_than(400_000, 570_000, window));
        assert!(!seen.gone_longer_than(400_000, 560_000, window));
        // Restarted after the state was written: gone since the restart.
        let restarted = NodeSeen::parse("450000 900000").unwrap();
        assert!(restarted.gone_longer_than(400_000, 900_000, window));
        assert!(!restarted.gone_longer_than(400_000, 500_000, window));
        for bad in ["", "1", "1 x", "x 1", "1  2"] {
            assert_eq!(NodeSeen::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn offsets_parse_strictly_and_order_like_stream_ids() {
        let o = Offset::parse("1701234567890-12").unwrap();
        assert_eq!(o, Offset::new(1_701_234_567_890, 12));
        assert_eq!(o.to_string(), "1701234567890-12");
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1",
            "a-1",
            "1-b",
            "1-1-1",
            " 1-1",
            "1-1 ",
            "+1-1",
            "123456789012345678901-1",
            "99999999999999999999-0",
        ] {
            assert_eq!(Offset::parse(bad), None, "{bad:?}");
        }
        assert!(Offset::new(1, 9) < Offset::new(2, 0));
        assert!(Offset::new(2, 0) < Offset::new(2, 1));
        assert!(Offset::ZERO < Offset::new(0, 1));
    }
}
