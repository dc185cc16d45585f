//! The session registry: `sid -> (owner node, epoch)`, the source of truth
//! when nodes disagree about where a session lives. Redis in a cluster;
//! in memory for a node alone (same trait, same calls).

mod memory;
pub mod recovery;
mod redis;

use thiserror::Error;

use crate::engineio::{BoxFuture, Sid};

pub use self::memory::MemoryRegistry;
pub use self::redis::RedisRegistry;

/// Where a session lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub owner: String,
    pub epoch: u64,
}

impl Entry {
    /// The stored form: `"<epoch> <owner>"`.
    pub fn encode(&self) -> String {
        format!("{} {}", self.epoch, self.owner)
    }

    pub fn decode(raw: &str) -> Option<Entry> {
        let (epoch, owner) = raw.split_once(' ')?;
        Some(Entry {
            epoch: epoch.parse().ok()?,
            owner: owner.to_owned(),
        })
    }
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("redis did not answer in time")]
    Timeout,
    #[error("malformed registry entry for {0}")]
    Corrupt(String),
}

pub trait Registry: Send + Sync + 'static {
    /// Records that `owner` holds `sid` at `epoch`, unless the registry
    /// already has this or a later epoch for it (then `false`): the
    /// compare-and-set of a handoff, and the first write of a new session.
    fn put(&self, sid: Sid, entry: Entry) -> BoxFuture<'_, Result<bool, StoreError>>;

    fn get(&self, sid: Sid) -> BoxFuture<'_, Result<Option<Entry>, StoreError>>;

    /// Forgets `sid` if the registry still holds exactly `entry` (a session
    /// that moved on is left alone).
    fn remove(&self, sid: Sid, entry: Entry) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Extends the life of these entries (live sessions of this node).
    fn refresh(&self, sids: Vec<Sid>) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Whether the backing store answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let e = Entry {
            owner: "node-1.example".into(),
            epoch: 42,
        };
        assert_eq!(e.encode(), "42 node-1.example");
        assert_eq!(Entry::decode(&e.encode()), Some(e));
        assert_eq!(Entry::decode("x node"), None);
        assert_eq!(Entry::decode("12"), None);
    }
}
